//! Turning class probabilities into ranked, named results.

use glimpse_tensor::{DType, Error, Result, Tensor};

/// One class with its probability.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelScore {
    /// Index of the class.
    pub index: usize,
    /// Its name from `id2label`.
    pub label: String,
    /// Softmax probability.
    pub probability: f32,
}

/// The `top_k` largest entries of each row of a `(B, K)` probability matrix, named by
/// `labels`, best first (ties keep index order).
pub fn top_k_rows(probs: &Tensor, top_k: usize, labels: &[String]) -> Result<Vec<Vec<LabelScore>>> {
    if probs.rank() != 2 || probs.dims()[1] != labels.len() {
        return Err(Error::bad_shape(
            "top_k_rows",
            format!("probabilities must be (batch, {})", labels.len()),
            probs.shape(),
        ));
    }
    let k = labels.len();
    let values = probs.to_dtype(DType::F32)?.to_vec::<f32>()?;
    Ok(values
        .chunks(k.max(1))
        .take(probs.dims()[0])
        .map(|row| {
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            order
                .into_iter()
                .take(top_k)
                .map(|i| LabelScore {
                    index: i,
                    label: labels[i].clone(),
                    probability: row[i],
                })
                .collect()
        })
        .collect())
}

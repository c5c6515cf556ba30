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
            top_k_indices(row, top_k)
                .into_iter()
                .map(|i| LabelScore {
                    index: i,
                    label: labels[i].clone(),
                    probability: row[i],
                })
                .collect()
        })
        .collect())
}

/// Indices of the `top_k` largest values of `row`, largest first; ties keep index order.
pub fn top_k_indices(row: &[f32], top_k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order.truncate(top_k);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_indices_is_descending_with_ties_in_index_order() {
        let row = [0.1, 0.5, 0.3, 0.5, f32::NAN];
        // total_cmp puts NaN above every number.
        assert_eq!(top_k_indices(&row, 3), vec![4, 1, 3]);
        assert_eq!(top_k_indices(&row[..4], 10), vec![1, 3, 2, 0]);
        assert!(top_k_indices(&row, 0).is_empty());
    }
}

//! Zero-shot classification and retrieval with a CLIP model.

use glimpse_nn::{LabelScore, top_k_indices, top_k_rows};
use glimpse_tensor::{DType, Error, Result, Tensor};

use crate::model::{ClipModel, l2_normalize};

/// The single prompt of the CLIP paper's basic zero-shot setup.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// A small ensemble of prompt templates in the style of the CLIP paper's ImageNet ensemble
/// (section 3.1.4): averaging the text embeddings of several phrasings of each label gives
/// a better class embedding than any single prompt.
pub const PROMPT_ENSEMBLE: [&str; 8] = [
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a drawing of a {}.",
    "a {} in a video game.",
];

/// Tokenizes a batch of texts into `input_ids` and `attention_mask`, both `(B, L)` `U32` on
/// the model's device. The model crate does not tokenize itself, so that any tokenizer (the
/// `glimpse-processing` one, or a user's) can be plugged in.
pub type Tokenize<'a> = dyn Fn(&[String]) -> Result<(Tensor, Tensor)> + 'a;

/// Class embeddings for a set of labels, built from prompt templates: the zero-shot
/// classifier of the CLIP paper.
#[derive(Clone, Debug)]
pub struct ZeroShotClassifier {
    /// `(K, P)`, unit rows.
    class_embeds: Tensor,
    labels: Vec<String>,
    logit_scale: f64,
}

impl ZeroShotClassifier {
    /// Builds the classifier: every label is put into every template (`{}` marks where), the
    /// texts are encoded in batches of at most `batch_size`, each embedding normalised, the
    /// embeddings of one label averaged and normalised again.
    pub fn new(
        model: &ClipModel,
        labels: &[String],
        templates: &[&str],
        tokenize: &Tokenize<'_>,
        batch_size: usize,
    ) -> Result<Self> {
        const OP: &str = "ZeroShotClassifier";
        if labels.is_empty() || templates.is_empty() || batch_size == 0 {
            return Err(Error::invalid(
                OP,
                "need at least one label, one template and a nonzero batch size",
            ));
        }
        if let Some(t) = templates.iter().find(|t| !t.contains("{}")) {
            return Err(Error::invalid(
                OP,
                format!("template {t:?} has no `{{}}` where the label goes"),
            ));
        }
        let texts: Vec<String> = labels
            .iter()
            .flat_map(|label| templates.iter().map(move |t| t.replace("{}", label)))
            .collect();
        let mut embeds = Vec::new();
        for chunk in texts.chunks(batch_size) {
            let (ids, mask) = tokenize(chunk)?;
            let features = model.get_text_features(&ids, Some(&mask))?;
            embeds.push(l2_normalize(&features.to_dtype(DType::F32)?)?);
        }
        let refs: Vec<&Tensor> = embeds.iter().collect();
        // all is (K * T, P) -> (K, T, P) -> mean over templates -> (K, P)
        let all = Tensor::cat(&refs, 0)?;
        let p = all.dims()[1];
        let mean = all.reshape([labels.len(), templates.len(), p])?.mean(1)?;
        Ok(ZeroShotClassifier {
            class_embeds: l2_normalize(&mean)?,
            labels: labels.to_vec(),
            logit_scale: model.logit_scale(),
        })
    }

    /// The labels, in the order of the class embeddings.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// `(K, P)` unit class embeddings (f32).
    pub fn class_embeds(&self) -> &Tensor {
        &self.class_embeds
    }

    /// Class probabilities `(B, K)` (f32) of image features `(B, P)`: the softmax of the
    /// scaled cosine similarities.
    pub fn probabilities(&self, image_features: &Tensor) -> Result<Tensor> {
        let img = l2_normalize(&image_features.to_dtype(DType::F32)?)?;
        img.matmul(&self.class_embeds.t()?)?
            .affine(self.logit_scale, 0.0)?
            .softmax(-1)
    }

    /// The `top_k` most probable labels of each image, best first.
    pub fn classify(&self, image_features: &Tensor, top_k: usize) -> Result<Vec<Vec<LabelScore>>> {
        top_k_rows(&self.probabilities(image_features)?, top_k, &self.labels)
    }
}

/// One retrieved item: its index in the searched set and its cosine similarity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Index into the searched set.
    pub index: usize,
    /// Cosine similarity with the query.
    pub score: f32,
}

/// For each query row of `queries` `(Q, P)`, the `top_k` rows of `set` `(N, P)` with the
/// highest cosine similarity, best first (ties keep index order). Works for text-to-image
/// and image-to-text retrieval alike.
pub fn retrieve(queries: &Tensor, set: &Tensor, top_k: usize) -> Result<Vec<Vec<Hit>>> {
    if queries.rank() != 2 || set.rank() != 2 || queries.dims()[1] != set.dims()[1] {
        return Err(Error::ShapeMismatch {
            op: "retrieve (queries (Q, P) and set (N, P))",
            lhs: queries.shape().clone(),
            rhs: set.shape().clone(),
        });
    }
    let q = l2_normalize(&queries.to_dtype(DType::F32)?)?;
    let s = l2_normalize(&set.to_dtype(DType::F32)?)?;
    let n = s.dims()[0];
    let sims = q.matmul(&s.t()?)?.to_vec::<f32>()?;
    Ok(sims
        .chunks(n.max(1))
        .take(q.dims()[0])
        .map(|row| {
            top_k_indices(row, top_k)
                .into_iter()
                .map(|index| Hit {
                    index,
                    score: row[index],
                })
                .collect()
        })
        .collect())
}

//! The training tasks the `glimpse train` command runs: a ViT classifier on Fashion-MNIST and
//! a CLIP on the synthetic captioned shapes.

mod clip_shapes;
mod vit_fashion;

pub use clip_shapes::{ClipShapes, ClipShapesSettings};
pub use vit_fashion::{VitFashionMnist, VitFashionSettings};

use std::path::Path;

use glimpse_tensor::{Error, Result, Tensor};

use crate::optim::Param;

/// Writes `config` as `config.json` and the parameters as `model.safetensors` into `dir`
/// (created if needed), both atomically: the layout `from_pretrained` reads.
fn export_model(dir: &Path, config: &serde_json::Value, params: &[Param]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = serde_json::to_string_pretty(config)
        .map_err(|e| Error::invalid("export", e.to_string()))?;
    write_atomic(&dir.join("config.json"), json.as_bytes())?;
    let tensors: Vec<(&str, &Tensor)> =
        params.iter().map(|p| (p.name.as_str(), &p.value)).collect();
    glimpse_tensor::safetensors::save(&tensors, dir.join("model.safetensors"), None)
}

/// Writes `bytes` to `path` atomically.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    glimpse_tensor::write_atomic(path, |f| f.write_all(bytes))
}

/// The number of rows of `logits` (N, C) whose arg-max equals the label.
fn count_correct(logits: &Tensor, labels: &[u32]) -> Result<usize> {
    let pred = logits.argmax(1)?.to_vec::<u32>()?;
    Ok(pred.iter().zip(labels).filter(|(p, l)| p == l).count())
}

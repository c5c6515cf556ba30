//! The subcommands.

pub mod classify;
pub mod embed;
pub mod train;
pub mod zero_shot;

use std::path::PathBuf;

use glimpse_tensor::{DType, Device, Tensor};
use indicatif::ProgressBar;

use crate::error::Result;
use crate::preprocess::Images;

/// Runs `f` on the pixels `(B, C, H, W)` (in `dtype`) of each batch of `paths`, in order, and
/// concatenates what it returns. The progress bar advances by the batch's size.
pub(crate) fn over_image_batches<T>(
    images: &Images,
    paths: &[PathBuf],
    batch_size: usize,
    device: &Device,
    dtype: DType,
    bar: &ProgressBar,
    mut f: impl FnMut(&[PathBuf], &Tensor) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(batch_size) {
        let pixels = images.batch(chunk, device, dtype)?;
        out.extend(f(chunk, &pixels)?);
        bar.inc(chunk.len() as u64);
    }
    Ok(out)
}

/// Names a batch of images in messages: the one image, or the first and how many more.
pub(crate) fn batch_context(paths: &[PathBuf]) -> String {
    match paths {
        [] => "no images".into(),
        [one] => one.display().to_string(),
        [first, rest @ ..] => format!("{} and {} more image(s)", first.display(), rest.len()),
    }
}

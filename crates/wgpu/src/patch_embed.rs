//! Patch embedding (a convolution whose stride equals its kernel) and its gradients.

use glimpse_tensor::{PatchEmbedGrads, PatchEmbedOptions, Result, Tensor, compose};

use crate::backend::WgpuBackend;

pub(crate) fn patch_embed(
    _be: &WgpuBackend,
    images: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &PatchEmbedOptions,
) -> Result<Tensor> {
    compose::patch_embed(images, weight, bias, opts)
}

pub(crate) fn patch_embed_backward(
    _be: &WgpuBackend,
    images: &Tensor,
    weight: &Tensor,
    opts: &PatchEmbedOptions,
    d_out: &Tensor,
    need_images: bool,
) -> Result<PatchEmbedGrads> {
    compose::patch_embed_backward(images, weight, opts, d_out, need_images)
}

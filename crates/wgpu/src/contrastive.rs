//! CLIP's contrastive loss and its backward.

use glimpse_tensor::{ContrastiveGrads, ContrastiveOutput, Result, Tensor, compose};

use crate::backend::WgpuBackend;

pub(crate) fn contrastive_loss(
    _be: &WgpuBackend,
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
) -> Result<ContrastiveOutput> {
    compose::contrastive_loss(image, text, scale)
}

pub(crate) fn contrastive_loss_backward(
    _be: &WgpuBackend,
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
    saved: &ContrastiveOutput,
    d_loss: &Tensor,
) -> Result<ContrastiveGrads> {
    compose::contrastive_loss_backward(image, text, scale, saved, d_loss)
}

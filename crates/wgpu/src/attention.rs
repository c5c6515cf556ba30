//! Fused attention and its backward.

use glimpse_tensor::{AttentionGrads, AttentionOptions, AttentionOutput, Result, Tensor, compose};

use crate::backend::WgpuBackend;

pub(crate) fn attention(
    _be: &WgpuBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<AttentionOutput> {
    compose::attention(q, k, v, opts)
}

pub(crate) fn attention_backward(
    _be: &WgpuBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &AttentionOutput,
    d_out: &Tensor,
    opts: &AttentionOptions,
) -> Result<AttentionGrads> {
    compose::attention_backward(q, k, v, out, d_out, opts)
}

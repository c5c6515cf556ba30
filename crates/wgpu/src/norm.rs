//! Row-wise fused ops: softmax, log-softmax, layer norm and its backward, GELU and its
//! backward.

use glimpse_tensor::{GeluKind, LayerNormGrads, Result, Tensor, compose};

use crate::backend::WgpuBackend;

pub(crate) fn softmax_last_dim(_be: &WgpuBackend, x: &Tensor) -> Result<Tensor> {
    compose::softmax_last_dim(x)
}

pub(crate) fn log_softmax_last_dim(_be: &WgpuBackend, x: &Tensor) -> Result<Tensor> {
    compose::log_softmax_last_dim(x)
}

pub(crate) fn layer_norm(
    _be: &WgpuBackend,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    compose::layer_norm(x, weight, bias, eps)
}

pub(crate) fn layer_norm_backward(
    _be: &WgpuBackend,
    x: &Tensor,
    weight: Option<&Tensor>,
    eps: f64,
    d_out: &Tensor,
) -> Result<LayerNormGrads> {
    compose::layer_norm_backward(x, weight, eps, d_out)
}

pub(crate) fn gelu(_be: &WgpuBackend, x: &Tensor, kind: GeluKind) -> Result<Tensor> {
    x.unary(kind.unary_op())
}

pub(crate) fn gelu_backward(
    _be: &WgpuBackend,
    x: &Tensor,
    d_out: &Tensor,
    kind: GeluKind,
) -> Result<Tensor> {
    compose::gelu_backward(x, d_out, kind)
}

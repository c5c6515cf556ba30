//! Matrix products: the batched, strided `matmul` primitive and the fused `linear` layer.

use glimpse_tensor::{Layout, Result, Tensor, compose};

use crate::backend::WgpuBackend;
use crate::storage::WgpuStorage;

impl WgpuBackend {
    pub(crate) fn op_matmul(
        &self,
        _lhs: &WgpuStorage,
        _lhs_layout: &Layout,
        _rhs: &WgpuStorage,
        _rhs_layout: &Layout,
    ) -> Result<WgpuStorage> {
        Err(glimpse_tensor::Error::backend(
            "wgpu",
            "matmul has no WGSL kernel yet",
        ))
    }
}

/// `x @ weight^T + bias`.
pub(crate) fn linear(
    _be: &WgpuBackend,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    compose::linear(x, weight, bias)
}

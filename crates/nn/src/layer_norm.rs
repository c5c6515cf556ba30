//! Layer normalisation over the last dimension.

use glimpse_tensor::{Result, Tensor, VarBuilder};

use crate::Module;

/// Layer norm over the last dimension with a learned scale (`weight`) and shift (`bias`).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` `(dim)` and `bias` `(dim)` from `vb`.
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get([dim], "weight")?,
            bias: vb.get([dim], "bias")?,
            eps,
        })
    }

    /// The scale, `(dim)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The shift, `(dim)`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The epsilon added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }
}

impl Module for LayerNorm {
    /// `x` is `(..., dim)`; the result has the same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(Some(&self.weight), Some(&self.bias), self.eps)
    }
}

//! A fully connected layer, `y = x W^T + b`.

use glimpse_tensor::{Error, Result, Tensor, VarBuilder};

use crate::Module;

/// A fully connected layer in the Hugging Face (PyTorch) layout: `weight` is
/// `(out_features, in_features)` and `y = x W^T + b`.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` `(out, in)` and, if `bias`, `bias` `(out)` from `vb`.
    pub fn new(
        vb: VarBuilder,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = vb.get([out_features, in_features], "weight")?;
        let bias = if bias {
            Some(vb.get([out_features], "bias")?)
        } else {
            None
        };
        Self::from_weights(weight, bias)
    }

    /// Builds the layer from tensors: `weight` `(out, in)`, `bias` `(out)`.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        if weight.rank() != 2 {
            return Err(Error::bad_shape(
                "Linear",
                "weight must be (out_features, in_features)",
                weight.shape(),
            ));
        }
        if let Some(b) = &bias
            && b.dims() != [weight.dims()[0]]
        {
            return Err(Error::ShapeMismatch {
                op: "Linear (weight vs bias)",
                lhs: weight.shape().clone(),
                rhs: b.shape().clone(),
            });
        }
        Ok(Linear { weight, bias })
    }

    /// The weight, `(out_features, in_features)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `(out_features)`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Number of input features.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Number of output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Module for Linear {
    /// `x` is `(..., in)` with at least one dimension; the result is `(..., out)`. Leading
    /// dimensions are flattened into the rows of one fused
    /// [`Tensor::linear`](glimpse_tensor::Tensor::linear).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out_f, in_f) = (self.out_features(), self.in_features());
        match x.dims().last() {
            Some(&last) if last == in_f => {}
            _ => {
                return Err(Error::bad_shape(
                    "Linear",
                    format!("input must be (..., {in_f}), the layer's in_features"),
                    x.shape(),
                ));
            }
        }
        // x is (..., in) -> rows is (R, in), R the product of the leading dimensions.
        let lead = &x.dims()[..x.rank() - 1];
        let rows: usize = lead.iter().product();
        let x2 = x.reshape([rows, in_f])?;
        // (R, in) @ (in, out) + b -> (R, out), one fused op (backends may keep the weight
        // prepared between calls).
        let y = x2.linear(&self.weight, self.bias.as_ref())?;
        let mut out_dims = lead.to_vec();
        out_dims.push(out_f);
        y.reshape(out_dims)
    }
}

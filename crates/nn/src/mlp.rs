//! The Transformer feed-forward block, `fc2(act(fc1(x)))`.

use glimpse_tensor::{Result, Tensor, VarBuilder};

use crate::{Activation, Linear, Module};

/// Key names of the two projections of an [`Mlp`], relative to the MLP's builder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlpKeys {
    /// The expanding projection, `(hidden, dim)`.
    pub fc1: String,
    /// The contracting projection, `(dim, hidden)`.
    pub fc2: String,
}

impl MlpKeys {
    /// Hugging Face ViT: `intermediate.dense` and `output.dense` (relative to the layer).
    pub fn vit() -> Self {
        MlpKeys {
            fc1: "intermediate.dense".into(),
            fc2: "output.dense".into(),
        }
    }

    /// Hugging Face CLIP: `fc1` and `fc2` (relative to the layer's `mlp`).
    pub fn clip() -> Self {
        MlpKeys {
            fc1: "fc1".into(),
            fc2: "fc2".into(),
        }
    }
}

/// `fc1 -> activation -> fc2`, both projections with bias.
#[derive(Clone, Debug)]
pub struct Mlp {
    fc1: Linear,
    act: Activation,
    fc2: Linear,
}

impl Mlp {
    /// Loads `keys.fc1` `(hidden, dim)` and `keys.fc2` `(dim, hidden)` from `vb`.
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        hidden: usize,
        act: Activation,
        keys: &MlpKeys,
    ) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::new(vb.pp(&keys.fc1), dim, hidden, true)?,
            act,
            fc2: Linear::new(vb.pp(&keys.fc2), hidden, dim, true)?,
        })
    }

    /// The expanding projection.
    pub fn fc1(&self) -> &Linear {
        &self.fc1
    }

    /// The activation.
    pub fn activation(&self) -> Activation {
        self.act
    }

    /// The contracting projection.
    pub fn fc2(&self) -> &Linear {
        &self.fc2
    }
}

impl Module for Mlp {
    /// `x` is `(..., dim)`; the result has the same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // h is (..., hidden)
        let h = self.act.forward(&self.fc1.forward(x)?)?;
        self.fc2.forward(&h)
    }
}

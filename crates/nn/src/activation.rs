//! Element-wise activation functions, named as in Hugging Face configs.

use std::str::FromStr;

use glimpse_tensor::{Error, Result, Tensor};

use crate::Module;

/// An element-wise activation function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` (Hugging Face `gelu`; ViT, BLIP).
    GeluErf,
    /// The tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// `x * sigmoid(1.702 x)` (`quick_gelu`; OpenAI CLIP).
    QuickGelu,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// The names [`from_hf_name`](Self::from_hf_name) accepts.
    pub const HF_NAMES: [&'static str; 5] = [
        "gelu",
        "gelu_new",
        "gelu_pytorch_tanh",
        "quick_gelu",
        "relu",
    ];

    /// The activation a Hugging Face config names in `hidden_act`. An unknown name is an
    /// [`Error::InvalidArgument`] listing the known ones.
    pub fn from_hf_name(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "quick_gelu" => Ok(Activation::QuickGelu),
            "relu" => Ok(Activation::Relu),
            _ => Err(Error::invalid(
                "Activation::from_hf_name",
                format!(
                    "unknown activation `{name}`; known: {}",
                    Self::HF_NAMES.join(", ")
                ),
            )),
        }
    }
}

impl FromStr for Activation {
    type Err = Error;

    /// Same as [`Activation::from_hf_name`].
    fn from_str(s: &str) -> Result<Self> {
        Self::from_hf_name(s)
    }
}

impl Module for Activation {
    /// Element-wise; `x` keeps its shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu_tanh(),
            Activation::QuickGelu => x.quick_gelu(),
            Activation::Relu => x.relu(),
        }
    }
}

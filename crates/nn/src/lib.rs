//! glimpse-nn: the layers that vision-language models are built from.
//!
//! Every layer loads its weights from a [`VarBuilder`](glimpse_tensor::VarBuilder) by the
//! checkpoint's own key names (the Hugging Face layout), so ViT and CLIP checkpoints load
//! unchanged; the key names of the composite layers come from small config structs
//! ([`AttentionKeys`], [`MlpKeys`], [`EncoderLayerKeys`], [`EncoderKeys`]) with `vit()` and
//! `clip()` constructors.
//!
//! * [`Linear`], [`LayerNorm`], [`Embedding`], [`Activation`]: the building blocks.
//! * [`Mlp`]: `fc1 -> activation -> fc2`.
//! * [`MultiHeadAttention`]: self- and cross-attention through one call to the fused
//!   [`Tensor::attention`](glimpse_tensor::Tensor::attention), masked by an [`AttentionMask`].
//! * [`PreNormEncoderLayer`] and [`Encoder`]: the pre-norm Transformer encoder of ViT and CLIP.
//! * [`bicubic_resize_grid`]: position embeddings for another image size.
//! * [`init`]: random weights under published key names, for models without a checkpoint.
//! * [`read_json_config`]: Hugging Face `config.json` files, with errors naming the file.
//!
//! ```
//! # fn main() -> glimpse_tensor::Result<()> {
//! use std::collections::HashMap;
//! use glimpse_nn::{Linear, Module};
//! use glimpse_tensor::{DType, Tensor, VarBuilder};
//! let device = glimpse_cpu::device();
//! let weights = HashMap::from([
//!     ("fc.weight".to_string(), Tensor::ones([4, 3], DType::F32, &device)?),
//!     ("fc.bias".to_string(), Tensor::zeros([4], DType::F32, &device)?),
//! ]);
//! let vb = VarBuilder::from_tensors(weights, DType::F32, &device);
//! let fc = Linear::new(vb.pp("fc"), 3, 4, true)?;
//! // x is (B, N, 3); y is (B, N, 4)
//! let x = Tensor::ones([2, 5, 3], DType::F32, &device)?;
//! assert_eq!(fc.forward(&x)?.dims(), &[2, 5, 4]);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod activation;
mod attention;
mod classify;
mod config;
mod embedding;
mod encoder;
pub mod init;
mod interpolate;
mod layer_norm;
mod linear;
mod mlp;

pub use activation::Activation;
pub use attention::{
    AttentionConfig, AttentionKeys, AttentionMask, MultiHeadAttention, merge_heads, split_heads,
};
pub use classify::{LabelScore, top_k_indices, top_k_rows};
pub use config::{parse_json_config, read_json_config};
pub use embedding::Embedding;
pub use encoder::{Encoder, EncoderConfig, EncoderKeys, EncoderLayerKeys, PreNormEncoderLayer};
pub use interpolate::{bicubic_resize_grid, interpolated_positions};
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use mlp::{Mlp, MlpKeys};

use glimpse_tensor::{Result, Tensor};

/// A layer that maps one tensor to another.
pub trait Module {
    /// Applies the layer to `x`.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

//! glimpse-vit: the Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et
//! al., 2021) as the Hugging Face `ViTModel` and `ViTForImageClassification`.
//!
//! Checkpoints load unchanged: the weight names are the published ones
//! (`vit.embeddings.patch_embeddings.projection.weight`,
//! `vit.encoder.layer.0.attention.attention.query.weight`, ..., `classifier.weight`), the
//! configuration is the checkpoint's `config.json` ([`ViTConfig`]), and outputs match the
//! reference implementation (see the parity tests in `tests/`).
//!
//! The forward pass reads like the paper's figure: the image is cut into patches and
//! embedded by one fused op (a stride-P convolution as a GEMM, with the class token and
//! position embeddings added), then a stack of pre-norm Transformer layers, a final layer
//! norm, and the class token's row goes to the classifier.
//!
//! ```
//! # fn main() -> glimpse_tensor::Result<()> {
//! use std::collections::BTreeMap;
//! use glimpse_tensor::{DType, Tensor};
//! use glimpse_vit::{ViTConfig, ViTForImageClassification, random_weights};
//!
//! let device = glimpse_cpu::device();
//! // A tiny ViT with random weights (a real one comes from `from_pretrained(dir, ..)`).
//! let cfg = ViTConfig {
//!     hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 64,
//!     image_size: glimpse_vit::ImageSize::Square(32), patch_size: 8,
//!     id2label: BTreeMap::from([("0".into(), "cat".into()), ("1".into(), "dog".into())]),
//!     ..ViTConfig::default()
//! };
//! let vb = random_weights(&cfg, true, DType::F32, &device)?;
//! let model = ViTForImageClassification::new(&cfg, vb)?;
//! // pixel_values is (B, 3, 32, 32); logits are (B, 2)
//! let pixels = Tensor::rand_normal(0.0, 1.0, [2, 3, 32, 32], DType::F32, 0, &device)?;
//! assert_eq!(model.forward(&pixels)?.dims(), &[2, 2]);
//! let top = model.classify(&pixels, 1)?;
//! assert_eq!(top.len(), 2);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod config;
mod model;
mod random;

pub use config::{ImageSize, PoolerActivation, ViTConfig};
pub use glimpse_nn::LabelScore;
pub use model::{ViTEmbeddings, ViTForImageClassification, ViTModel, ViTOutput};
pub use random::{random_weights, weight_specs};

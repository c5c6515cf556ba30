//! glimpse-clip: CLIP, "Learning Transferable Visual Models From Natural Language
//! Supervision" (Radford et al., 2021), as the Hugging Face `CLIPModel`.
//!
//! Checkpoints load unchanged (openai/clip-vit-base-patch32 and clip-vit-large-patch14
//! layouts: `vision_model.*`, `text_model.*`, `visual_projection.weight`,
//! `text_projection.weight`, `logit_scale`), and the outputs match the reference
//! implementation (see the parity tests in `tests/`).
//!
//! * [`ClipModel`]: image and text features, the scaled similarity logits.
//! * [`ZeroShotClassifier`]: class embeddings from prompt templates (one, or an ensemble as
//!   in the paper, [`PROMPT_ENSEMBLE`]), then label probabilities for images.
//! * [`retrieve`]: the nearest texts of images, or images of texts, over a set.
//!
//! Tokenizing and image pre-processing live in `glimpse-processing`; this crate takes
//! token ids and pixel tensors.
//!
//! ```
//! # fn main() -> glimpse_tensor::Result<()> {
//! use glimpse_clip::{ClipConfig, ClipModel, random_weights};
//! use glimpse_tensor::{DType, Tensor};
//!
//! let device = glimpse_cpu::device();
//! let mut cfg = ClipConfig::default();
//! // A tiny CLIP with random weights (a real one comes from `from_pretrained(dir, ..)`).
//! cfg.projection_dim = 16;
//! cfg.text_config.vocab_size = 100;
//! cfg.text_config.eos_token_id = Some(99);
//! (cfg.text_config.hidden_size, cfg.text_config.intermediate_size) = (32, 64);
//! (cfg.text_config.num_hidden_layers, cfg.text_config.num_attention_heads) = (2, 4);
//! (cfg.vision_config.hidden_size, cfg.vision_config.intermediate_size) = (32, 64);
//! (cfg.vision_config.num_hidden_layers, cfg.vision_config.num_attention_heads) = (2, 4);
//! (cfg.vision_config.image_size, cfg.vision_config.patch_size) = (32, 8);
//! let model = ClipModel::new(&cfg, random_weights(&cfg, DType::F32, &device)?)?;
//!
//! // pixel_values is (2, 3, 32, 32); input_ids is (3, 5), each row ending in the eos id 99
//! let pixels = Tensor::rand_normal(0.0, 1.0, [2, 3, 32, 32], DType::F32, 0, &device)?;
//! let ids = Tensor::from_vec(
//!     vec![98u32, 5, 6, 7, 99, 98, 8, 99, 0, 0, 98, 9, 10, 11, 99], [3, 5], &device)?;
//! let out = model.forward(&pixels, &ids, None)?;
//! assert_eq!(out.logits_per_image.dims(), &[2, 3]);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod config;
mod model;
mod random;
mod text;
mod vision;
mod zero_shot;

pub use config::{ClipConfig, ClipTextConfig, ClipVisionConfig, EosPooling};
pub use glimpse_nn::LabelScore;
pub use model::{ClipModel, ClipOutput, l2_normalize};
pub use random::{random_weights, weight_specs};
pub use text::{ClipTextOutput, ClipTextTransformer};
pub use vision::{ClipVisionOutput, ClipVisionTransformer};
pub use zero_shot::{
    DEFAULT_TEMPLATE, Hit, PROMPT_ENSEMBLE, Tokenize, ZeroShotClassifier, retrieve,
};

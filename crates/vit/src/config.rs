//! `ViTConfig`, read from a Hugging Face `config.json`.

use std::collections::BTreeMap;
use std::path::Path;

use glimpse_nn::{Activation, EncoderConfig};
use glimpse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};

/// An image size given as one number (square) or as `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageSize {
    /// A square image.
    Square(usize),
    /// `[height, width]`.
    Rect([usize; 2]),
}

impl ImageSize {
    /// `(height, width)`.
    pub fn hw(self) -> (usize, usize) {
        match self {
            ImageSize::Square(s) => (s, s),
            ImageSize::Rect([h, w]) => (h, w),
        }
    }
}

/// The configuration of a ViT, with the field names and defaults of the Hugging Face
/// `ViTConfig` (so a checkpoint's `config.json` deserializes directly). The defaults are
/// [google/vit-base-patch16-224](https://huggingface.co/google/vit-base-patch16-224)'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ViTConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Hidden width of the MLPs.
    pub intermediate_size: usize,
    /// Activation of the MLPs (a Hugging Face name such as `gelu`).
    pub hidden_act: String,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
    /// The image size the position embeddings were trained for.
    pub image_size: ImageSize,
    /// Side of the square patches.
    pub patch_size: usize,
    /// Channels of the input images.
    pub num_channels: usize,
    /// Whether query, key and value projections have biases.
    pub qkv_bias: bool,
    /// Output width of the pooler (the hidden size when absent).
    pub pooler_output_size: Option<usize>,
    /// Activation of the pooler.
    pub pooler_act: String,
    /// Class names by index, as strings (`"0"`, `"1"`, ...) in the JSON.
    pub id2label: BTreeMap<String, String>,
}

impl Default for ViTConfig {
    fn default() -> Self {
        ViTConfig {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            image_size: ImageSize::Square(224),
            patch_size: 16,
            num_channels: 3,
            qkv_bias: true,
            pooler_output_size: None,
            pooler_act: "tanh".into(),
            id2label: BTreeMap::new(),
        }
    }
}

impl ViTConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg: ViTConfig = glimpse_nn::read_json_config(path)?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// ViT-B/16 at 224 pixels (the defaults), with `num_labels` classes named `LABEL_i`.
    pub fn vit_base_patch16_224(num_labels: usize) -> Self {
        ViTConfig {
            id2label: (0..num_labels)
                .map(|i| (i.to_string(), format!("LABEL_{i}")))
                .collect(),
            ..ViTConfig::default()
        }
    }

    /// Checks that the sizes fit together; `origin` names the config in errors.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |msg: String| Err(Error::config(origin, msg));
        let (h, w) = self.image_size.hw();
        if self.hidden_size == 0 || self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            return bad("hidden_size, num_hidden_layers and intermediate_size must be > 0".into());
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.patch_size == 0 || h < self.patch_size || w < self.patch_size {
            return bad(format!(
                "patch_size {} does not fit image_size {h}x{w}",
                self.patch_size
            ));
        }
        if self.num_channels == 0 {
            return bad("num_channels must be > 0".into());
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return bad(format!(
                "layer_norm_eps {} must be > 0",
                self.layer_norm_eps
            ));
        }
        Activation::from_hf_name(&self.hidden_act)
            .map_err(|e| Error::config(origin, e.to_string()))?;
        self.pooler_activation()
            .map_err(|e| Error::config(origin, e.to_string()))?;
        self.labels()
            .map_err(|e| Error::config(origin, e.to_string()))?;
        Ok(())
    }

    /// `(height, width)` of the patch grid at the configured image size.
    pub fn grid(&self) -> (usize, usize) {
        let (h, w) = self.image_size.hw();
        (h / self.patch_size, w / self.patch_size)
    }

    /// The encoder layers' configuration.
    pub fn encoder(&self) -> Result<EncoderConfig> {
        Ok(EncoderConfig {
            dim: self.hidden_size,
            num_heads: self.num_attention_heads,
            mlp_dim: self.intermediate_size,
            activation: Activation::from_hf_name(&self.hidden_act)?,
            layer_norm_eps: self.layer_norm_eps,
            qkv_bias: self.qkv_bias,
        })
    }

    /// The pooler's activation (`tanh` in every published ViT; `relu` and the GELUs also
    /// work).
    pub fn pooler_activation(&self) -> Result<PoolerActivation> {
        match self.pooler_act.as_str() {
            "tanh" => Ok(PoolerActivation::Tanh),
            other => Ok(PoolerActivation::Other(Activation::from_hf_name(other)?)),
        }
    }

    /// Class names in index order. The ids must be exactly `0..n` (an error otherwise).
    pub fn labels(&self) -> Result<Vec<String>> {
        let mut labels = vec![None; self.id2label.len()];
        for (id, name) in &self.id2label {
            let index: usize = id
                .parse()
                .ok()
                .filter(|&i| i < labels.len())
                .ok_or_else(|| {
                    Error::invalid(
                        "ViTConfig",
                        format!("id2label key {id:?} is not an index below {}", labels.len()),
                    )
                })?;
            if labels[index].replace(name.clone()).is_some() {
                return Err(Error::invalid(
                    "ViTConfig",
                    format!("id2label names index {index} twice"),
                ));
            }
        }
        Ok(labels.into_iter().map(Option::unwrap_or_default).collect())
    }
}

/// The pooler's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolerActivation {
    /// `tanh`, as in every published ViT.
    Tanh,
    /// Any activation of [`Activation`].
    Other(Activation),
}

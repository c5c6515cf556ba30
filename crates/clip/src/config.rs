//! `CLIPConfig` and its text and vision parts, read from a Hugging Face `config.json`.

use std::path::Path;

use glimpse_nn::{Activation, EncoderConfig};
use glimpse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};

/// The text tower's configuration (Hugging Face `CLIPTextConfig`, same field names and
/// defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Size of the token vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Hidden width of the MLPs.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Longest token sequence (77 for the published models).
    pub max_position_embeddings: usize,
    /// Activation of the MLPs.
    pub hidden_act: String,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
    /// Id of the padding token.
    pub pad_token_id: Option<u32>,
    /// Id of the start-of-text token.
    pub bos_token_id: Option<u32>,
    /// Id of the end-of-text token. The value 2 selects the legacy pooling rule of the
    /// first published checkpoints (see [`EosPooling`]).
    pub eos_token_id: Option<u32>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: Some(49407),
        }
    }
}

/// Where the text tower takes its pooled output from, by the rule the reference
/// implementation applies to each config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EosPooling {
    /// `eos_token_id == 2` (the first published configs, whose value was wrong): the position
    /// of the largest token id in each row, which is the end-of-text token in CLIP's
    /// vocabulary.
    LargestId,
    /// The first position holding this end-of-text id.
    FirstEos(u32),
}

impl ClipTextConfig {
    /// The pooling rule for this config.
    pub fn eos_pooling(&self) -> EosPooling {
        match self.eos_token_id {
            Some(2) | None => EosPooling::LargestId,
            Some(id) => EosPooling::FirstEos(id),
        }
    }

    /// The encoder layers' configuration.
    pub fn encoder(&self) -> Result<EncoderConfig> {
        encoder_config(
            self.hidden_size,
            self.num_attention_heads,
            self.intermediate_size,
            &self.hidden_act,
            self.layer_norm_eps,
        )
    }

    fn validate(&self, origin: &str) -> Result<()> {
        check_sizes(
            origin,
            "text_config",
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.intermediate_size,
            self.layer_norm_eps,
        )?;
        if self.vocab_size == 0 || self.max_position_embeddings == 0 {
            return Err(Error::config(
                origin,
                "text_config: vocab_size and max_position_embeddings must be > 0",
            ));
        }
        self.encoder()
            .map(|_| ())
            .map_err(|e| Error::config(origin, format!("text_config: {e}")))
    }
}

/// The vision tower's configuration (Hugging Face `CLIPVisionConfig`, same field names and
/// defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Hidden width of the MLPs.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Channels of the input images.
    pub num_channels: usize,
    /// Side of the square images the position embeddings were trained for.
    pub image_size: usize,
    /// Side of the square patches.
    pub patch_size: usize,
    /// Activation of the MLPs.
    pub hidden_act: String,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Side of the patch grid.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// The encoder layers' configuration.
    pub fn encoder(&self) -> Result<EncoderConfig> {
        encoder_config(
            self.hidden_size,
            self.num_attention_heads,
            self.intermediate_size,
            &self.hidden_act,
            self.layer_norm_eps,
        )
    }

    fn validate(&self, origin: &str) -> Result<()> {
        check_sizes(
            origin,
            "vision_config",
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.intermediate_size,
            self.layer_norm_eps,
        )?;
        if self.patch_size == 0 || self.image_size < self.patch_size || self.num_channels == 0 {
            return Err(Error::config(
                origin,
                format!(
                    "vision_config: patch_size {} must fit image_size {} and num_channels must be > 0",
                    self.patch_size, self.image_size
                ),
            ));
        }
        self.encoder()
            .map(|_| ())
            .map_err(|e| Error::config(origin, format!("vision_config: {e}")))
    }
}

/// The configuration of a CLIP model (Hugging Face `CLIPConfig`). The defaults are
/// [openai/clip-vit-base-patch32](https://huggingface.co/openai/clip-vit-base-patch32)'s
/// architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    /// The text tower.
    pub text_config: ClipTextConfig,
    /// The vision tower.
    pub vision_config: ClipVisionConfig,
    /// Width of the joint embedding space.
    pub projection_dim: usize,
    /// Initial value of the learned log logit scale (`ln(1 / 0.07)`).
    pub logit_scale_init_value: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        ClipConfig {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }
}

impl ClipConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg: ClipConfig = glimpse_nn::read_json_config(path)?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// openai/clip-vit-base-patch32's architecture as published (including its legacy
    /// `eos_token_id` of 2 and `bos_token_id` of 0).
    pub fn vit_base_patch32() -> Self {
        let mut cfg = ClipConfig::default();
        cfg.text_config.bos_token_id = Some(0);
        cfg.text_config.eos_token_id = Some(2);
        cfg
    }

    /// openai/clip-vit-large-patch14's architecture as published.
    pub fn vit_large_patch14() -> Self {
        let mut cfg = ClipConfig::vit_base_patch32();
        cfg.projection_dim = 768;
        cfg.text_config.hidden_size = 768;
        cfg.text_config.intermediate_size = 3072;
        cfg.text_config.num_attention_heads = 12;
        cfg.vision_config.hidden_size = 1024;
        cfg.vision_config.intermediate_size = 4096;
        cfg.vision_config.num_hidden_layers = 24;
        cfg.vision_config.num_attention_heads = 16;
        cfg.vision_config.patch_size = 14;
        cfg
    }

    /// Checks that the sizes fit together; `origin` names the config in errors.
    pub fn validate(&self, origin: &str) -> Result<()> {
        self.text_config.validate(origin)?;
        self.vision_config.validate(origin)?;
        if self.projection_dim == 0 {
            return Err(Error::config(origin, "projection_dim must be > 0"));
        }
        Ok(())
    }
}

fn encoder_config(
    dim: usize,
    num_heads: usize,
    mlp_dim: usize,
    act: &str,
    eps: f64,
) -> Result<EncoderConfig> {
    Ok(EncoderConfig {
        dim,
        num_heads,
        mlp_dim,
        activation: Activation::from_hf_name(act)?,
        layer_norm_eps: eps,
        qkv_bias: true,
    })
}

fn check_sizes(
    origin: &str,
    part: &str,
    hidden: usize,
    layers: usize,
    heads: usize,
    mlp: usize,
    eps: f64,
) -> Result<()> {
    if hidden == 0 || layers == 0 || mlp == 0 {
        return Err(Error::config(
            origin,
            format!("{part}: hidden_size, num_hidden_layers and intermediate_size must be > 0"),
        ));
    }
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(Error::config(
            origin,
            format!(
                "{part}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            ),
        ));
    }
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(Error::config(
            origin,
            format!("{part}: layer_norm_eps {eps} must be > 0"),
        ));
    }
    Ok(())
}

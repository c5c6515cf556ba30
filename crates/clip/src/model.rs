//! `CLIPModel`: both towers, their projections into the joint space, and the logit scale.

use std::path::Path;

use glimpse_nn::{Linear, Module};
use glimpse_tensor::{DType, Device, Error, Result, Tensor, VarBuilder, safetensors::Checkpoint};

use crate::config::ClipConfig;
use crate::text::ClipTextTransformer;
use crate::vision::ClipVisionTransformer;

/// Outputs of [`ClipModel::forward`].
#[derive(Clone, Debug)]
pub struct ClipOutput {
    /// `(images, texts)`: `exp(logit_scale) * cos(image, text)`.
    pub logits_per_image: Tensor,
    /// `(texts, images)`: the transpose.
    pub logits_per_text: Tensor,
    /// `(images, P)`, unit length.
    pub image_embeds: Tensor,
    /// `(texts, P)`, unit length.
    pub text_embeds: Tensor,
}

/// CLIP: a vision tower and a text tower projected into one space where matching images and
/// texts have a high cosine similarity.
#[derive(Clone, Debug)]
pub struct ClipModel {
    vision: ClipVisionTransformer,
    text: ClipTextTransformer,
    visual_projection: Linear,
    text_projection: Linear,
    /// `exp(logit_scale)`, read once at load time.
    logit_scale: f64,
    config: ClipConfig,
}

impl ClipModel {
    /// Loads `vision_model.*`, `text_model.*`, `visual_projection.weight`,
    /// `text_projection.weight` and `logit_scale` from `vb`.
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate("ClipConfig")?;
        let p = cfg.projection_dim;
        let logit_scale = vb.get_as(Vec::<usize>::new(), "logit_scale", DType::F32)?;
        let logit_scale = f64::from(logit_scale.to_scalar::<f32>()?).exp();
        if !logit_scale.is_finite() {
            return Err(Error::invalid(
                "ClipModel",
                "logit_scale in the checkpoint is not finite",
            ));
        }
        Ok(ClipModel {
            vision: ClipVisionTransformer::new(&cfg.vision_config, vb.pp("vision_model"))?,
            text: ClipTextTransformer::new(&cfg.text_config, vb.pp("text_model"))?,
            visual_projection: Linear::new(
                vb.pp("visual_projection"),
                cfg.vision_config.hidden_size,
                p,
                false,
            )?,
            text_projection: Linear::new(
                vb.pp("text_projection"),
                cfg.text_config.hidden_size,
                p,
                false,
            )?,
            logit_scale,
            config: cfg.clone(),
        })
    }

    /// Loads a checkpoint directory (`config.json` and `model.safetensors`, or a sharded
    /// index) as published on the Hugging Face hub, in `dtype` on `device`. Every weight must
    /// be used (the `position_ids` buffers older checkpoints carry are allowed).
    pub fn from_pretrained(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = ClipConfig::from_file(dir.join("config.json"))?;
        let vb = VarBuilder::from_checkpoint(Checkpoint::open(dir)?, dtype, device);
        let model = ClipModel::new(&cfg, vb.clone())?;
        vb.allow_unused_if(|k| k.ends_with("embeddings.position_ids"));
        vb.finish_strict()?;
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// `exp(logit_scale)`, the temperature's inverse (100 in the published models).
    pub fn logit_scale(&self) -> f64 {
        self.logit_scale
    }

    /// The vision tower.
    pub fn vision_model(&self) -> &ClipVisionTransformer {
        &self.vision
    }

    /// The text tower.
    pub fn text_model(&self) -> &ClipTextTransformer {
        &self.text
    }

    /// Image features `(B, P)` (projected, not normalised) of `pixel_values` `(B, C, H, W)`.
    pub fn get_image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.get_image_features_with(pixel_values, false)
    }

    /// Like [`get_image_features`](Self::get_image_features), optionally at another image
    /// size with interpolated position embeddings.
    pub fn get_image_features_with(
        &self,
        pixel_values: &Tensor,
        interpolate_pos_encoding: bool,
    ) -> Result<Tensor> {
        let out = self
            .vision
            .forward(pixel_values, interpolate_pos_encoding)?;
        self.visual_projection.forward(&out.pooler_output)
    }

    /// Text features `(B, P)` (projected, not normalised) of `input_ids` `(B, L)` with an
    /// optional `attention_mask`.
    pub fn get_text_features(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let out = self.text.forward(input_ids, attention_mask)?;
        self.text_projection.forward(&out.pooler_output)
    }

    /// Scaled cosine similarities `(images, texts)` of already computed features.
    pub fn logits(&self, image_features: &Tensor, text_features: &Tensor) -> Result<Tensor> {
        let img = l2_normalize(image_features)?;
        let txt = l2_normalize(text_features)?;
        img.matmul(&txt.t()?)?.affine(self.logit_scale, 0.0)
    }

    /// Both towers and the similarity logits, as the reference `CLIPModel.forward`.
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<ClipOutput> {
        let image_embeds = l2_normalize(&self.get_image_features(pixel_values)?)?;
        let text_embeds = l2_normalize(&self.get_text_features(input_ids, attention_mask)?)?;
        let logits_per_text = text_embeds
            .matmul(&image_embeds.t()?)?
            .affine(self.logit_scale, 0.0)?;
        let logits_per_image = logits_per_text.t()?.contiguous()?;
        Ok(ClipOutput {
            logits_per_image,
            logits_per_text,
            image_embeds,
            text_embeds,
        })
    }
}

/// Each row of `(N, D)` divided by its Euclidean norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(-1)?.sqrt()?;
    x.div(&norm)
}

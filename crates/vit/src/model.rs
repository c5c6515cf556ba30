//! ViTModel and ViTForImageClassification.

use std::path::Path;

use glimpse_nn::{
    Encoder, EncoderKeys, LabelScore, LayerNorm, Linear, Module, interpolated_positions, top_k_rows,
};
use glimpse_tensor::{
    DType, Device, Error, PatchEmbedOptions, Result, Tensor, VarBuilder, safetensors::Checkpoint,
};

use crate::config::{PoolerActivation, ViTConfig};

/// Patch embedding, class token and position embeddings (`ViTEmbeddings`).
#[derive(Clone, Debug)]
pub struct ViTEmbeddings {
    /// `(E, C, P, P)`, the convolution whose stride is its kernel.
    patch_weight: Tensor,
    /// `(E)`.
    patch_bias: Tensor,
    /// `(E)`.
    cls_token: Tensor,
    /// `(1 + gh * gw, E)`: the class token's position, then the patch grid row by row.
    position_embeddings: Tensor,
    patch_size: usize,
    image_size: (usize, usize),
}

impl ViTEmbeddings {
    /// Loads `patch_embeddings.projection.{weight,bias}`, `cls_token` and
    /// `position_embeddings` from `vb` (the `embeddings` builder).
    pub fn new(vb: VarBuilder, cfg: &ViTConfig) -> Result<Self> {
        let (e, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let (gh, gw) = cfg.grid();
        let proj = vb.pp("patch_embeddings").pp("projection");
        Ok(ViTEmbeddings {
            patch_weight: proj.get([e, c, p, p], "weight")?,
            patch_bias: proj.get([e], "bias")?,
            cls_token: vb.get([1, 1, e], "cls_token")?.reshape([e])?,
            position_embeddings: vb
                .get([1, 1 + gh * gw, e], "position_embeddings")?
                .reshape([1 + gh * gw, e])?,
            patch_size: p,
            image_size: cfg.image_size.hw(),
        })
    }

    /// The position embeddings for an image of `height x width` pixels, `(1 + rows, E)`:
    /// the trained ones at the trained size, otherwise (with `interpolate`) the patch grid
    /// resized bicubically as the reference implementation does.
    pub fn position_embeddings_for(
        &self,
        height: usize,
        width: usize,
        interpolate: bool,
    ) -> Result<Tensor> {
        interpolated_positions(
            &self.position_embeddings,
            self.image_size,
            self.patch_size,
            (height, width),
            interpolate,
        )
    }

    /// `pixel_values` is `(B, C, H, W)`; returns `(B, 1 + (H/P)(W/P), E)`.
    pub fn forward(&self, pixel_values: &Tensor, interpolate_pos_encoding: bool) -> Result<Tensor> {
        let (h, w) = image_hw(pixel_values, self.patch_weight.dims()[1])?;
        let pos = self.position_embeddings_for(h, w, interpolate_pos_encoding)?;
        Tensor::patch_embed(
            pixel_values,
            &self.patch_weight,
            Some(&self.patch_bias),
            &PatchEmbedOptions {
                patch_size: self.patch_size,
                class_embedding: Some(self.cls_token.clone()),
                position_embedding: Some(pos),
            },
        )
    }
}

/// Checks that `pixel_values` is `(B, channels, H, W)` and returns `(H, W)`.
pub(crate) fn image_hw(pixel_values: &Tensor, channels: usize) -> Result<(usize, usize)> {
    if pixel_values.rank() != 4 || pixel_values.dims()[1] != channels {
        return Err(Error::bad_shape(
            "ViT",
            format!("pixel_values must be (batch, {channels}, height, width)"),
            pixel_values.shape(),
        ));
    }
    Ok((pixel_values.dims()[2], pixel_values.dims()[3]))
}

/// Outputs of [`ViTModel::forward`].
#[derive(Clone, Debug)]
pub struct ViTOutput {
    /// `(B, 1 + patches, E)`: the encoder's output after the final layer norm.
    pub last_hidden_state: Tensor,
    /// `(B, pooler_output_size)`: `tanh(dense(class token))`, when the checkpoint has a pooler.
    pub pooler_output: Option<Tensor>,
}

/// The ViT backbone (`ViTModel`): embeddings, pre-norm encoder, final layer norm, and the
/// optional pooler.
#[derive(Clone, Debug)]
pub struct ViTModel {
    embeddings: ViTEmbeddings,
    encoder: Encoder,
    layernorm: LayerNorm,
    pooler: Option<(Linear, PoolerActivation)>,
    config: ViTConfig,
}

impl ViTModel {
    /// Loads the backbone from `vb`, whose prefix holds `embeddings`, `encoder` and
    /// `layernorm` (for a checkpoint of `ViTForImageClassification`, pass `vb.pp("vit")`).
    /// The pooler is loaded when the checkpoint has `pooler.dense.*` (base-model checkpoints
    /// do; classification ones do not).
    pub fn new(cfg: &ViTConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate("ViTConfig")?;
        let e = cfg.hidden_size;
        let pooler = if vb.contains("pooler.dense.weight") {
            let out = cfg.pooler_output_size.unwrap_or(e);
            Some((
                Linear::new(vb.pp("pooler").pp("dense"), e, out, true)?,
                cfg.pooler_activation()?,
            ))
        } else {
            None
        };
        Ok(ViTModel {
            embeddings: ViTEmbeddings::new(vb.pp("embeddings"), cfg)?,
            encoder: Encoder::new(
                vb.pp("encoder"),
                &cfg.encoder()?,
                cfg.num_hidden_layers,
                &EncoderKeys::vit(),
            )?,
            layernorm: LayerNorm::new(vb.pp("layernorm"), e, cfg.layer_norm_eps)?,
            pooler,
            config: cfg.clone(),
        })
    }

    /// Loads a checkpoint directory (`config.json` and `model.safetensors`, or a sharded
    /// index) as published on the Hugging Face hub, with or without the `vit.` prefix, in
    /// `dtype` on `device`. Every weight must be used except a classification head.
    pub fn from_pretrained(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let (cfg, vb) = open_checkpoint(dir.as_ref(), dtype, device)?;
        let model_vb = backbone_builder(&vb);
        let model = ViTModel::new(&cfg, model_vb)?;
        vb.allow_unused("classifier");
        vb.finish_strict()?;
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &ViTConfig {
        &self.config
    }

    /// The embeddings.
    pub fn embeddings(&self) -> &ViTEmbeddings {
        &self.embeddings
    }

    /// `pixel_values` is `(B, C, H, W)` at the configured image size.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<ViTOutput> {
        self.forward_with(pixel_values, false)
    }

    /// Like [`forward`](Self::forward); with `interpolate_pos_encoding`, images of another
    /// size are accepted and the position embeddings resized to their patch grid.
    pub fn forward_with(
        &self,
        pixel_values: &Tensor,
        interpolate_pos_encoding: bool,
    ) -> Result<ViTOutput> {
        let x = self
            .embeddings
            .forward(pixel_values, interpolate_pos_encoding)?;
        let x = self.encoder.forward(&x)?;
        let last_hidden_state = self.layernorm.forward(&x)?;
        let pooler_output = match &self.pooler {
            Some((dense, act)) => {
                let cls = class_token(&last_hidden_state)?;
                let y = dense.forward(&cls)?;
                Some(match act {
                    PoolerActivation::Tanh => y.tanh()?,
                    PoolerActivation::Other(a) => a.forward(&y)?,
                })
            }
            None => None,
        };
        Ok(ViTOutput {
            last_hidden_state,
            pooler_output,
        })
    }
}

/// `(B, N, E)` -> `(B, E)`: the class token's row.
pub(crate) fn class_token(x: &Tensor) -> Result<Tensor> {
    x.narrow(1, 0, 1)?.squeeze(1)
}

/// Reads `dir/config.json` and opens the weights in `dir`.
fn open_checkpoint(dir: &Path, dtype: DType, device: &Device) -> Result<(ViTConfig, VarBuilder)> {
    let cfg = ViTConfig::from_file(dir.join("config.json"))?;
    let vb = VarBuilder::from_checkpoint(Checkpoint::open(dir)?, dtype, device);
    Ok((cfg, vb))
}

/// The builder of the backbone: `vit.` in classification checkpoints, the root in
/// base-model ones.
fn backbone_builder(vb: &VarBuilder) -> VarBuilder {
    if vb.contains("vit.embeddings.cls_token") {
        vb.pp("vit")
    } else {
        vb.clone()
    }
}

/// ViT with a linear classifier on the class token (`ViTForImageClassification`).
#[derive(Clone, Debug)]
pub struct ViTForImageClassification {
    vit: ViTModel,
    classifier: Linear,
    labels: Vec<String>,
}

impl ViTForImageClassification {
    /// Loads `vit.*` and `classifier.*` from `vb` (the root of a classification checkpoint).
    pub fn new(cfg: &ViTConfig, vb: VarBuilder) -> Result<Self> {
        let labels = cfg.labels()?;
        if labels.is_empty() {
            return Err(Error::config(
                "ViTConfig",
                "id2label is empty: a classifier needs class names",
            ));
        }
        let vit = ViTModel::new(cfg, vb.pp("vit"))?;
        let classifier = Linear::new(vb.pp("classifier"), cfg.hidden_size, labels.len(), true)?;
        Ok(ViTForImageClassification {
            vit,
            classifier,
            labels,
        })
    }

    /// Loads a classification checkpoint directory (`config.json` with `id2label`, and the
    /// weights) in `dtype` on `device`. Every weight must be used (strict).
    pub fn from_pretrained(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let (cfg, vb) = open_checkpoint(dir.as_ref(), dtype, device)?;
        let model = ViTForImageClassification::new(&cfg, vb.clone())?;
        vb.finish_strict()?;
        Ok(model)
    }

    /// The backbone.
    pub fn vit(&self) -> &ViTModel {
        &self.vit
    }

    /// Class names in index order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// `pixel_values` is `(B, C, H, W)`; returns the logits `(B, num_labels)`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.forward_with(pixel_values, false)
    }

    /// Like [`forward`](Self::forward), optionally interpolating position embeddings.
    pub fn forward_with(
        &self,
        pixel_values: &Tensor,
        interpolate_pos_encoding: bool,
    ) -> Result<Tensor> {
        let out = self
            .vit
            .forward_with(pixel_values, interpolate_pos_encoding)?;
        self.classifier
            .forward(&class_token(&out.last_hidden_state)?)
    }

    /// The `top_k` most probable classes of each image, best first.
    pub fn classify(&self, pixel_values: &Tensor, top_k: usize) -> Result<Vec<Vec<LabelScore>>> {
        let probs = self
            .forward(pixel_values)?
            .to_dtype(DType::F32)?
            .softmax(-1)?;
        top_k_rows(&probs, top_k, &self.labels)
    }
}

//! The vision tower (`CLIPVisionTransformer`): a ViT with a layer norm before the encoder
//! (`pre_layrnorm`, spelled as in the checkpoints) and one after it on the class token.

use glimpse_nn::{Encoder, EncoderKeys, LayerNorm, Module, interpolated_positions};
use glimpse_tensor::{Error, PatchEmbedOptions, Result, Tensor, VarBuilder};

use crate::config::ClipVisionConfig;

/// Outputs of [`ClipVisionTransformer::forward`].
#[derive(Clone, Debug)]
pub struct ClipVisionOutput {
    /// `(B, 1 + patches, E)`: the encoder's output (no final layer norm, as in the reference).
    pub last_hidden_state: Tensor,
    /// `(B, E)`: `post_layernorm` of the class token's row.
    pub pooler_output: Tensor,
}

/// The vision tower, loaded from the `vision_model` keys.
#[derive(Clone, Debug)]
pub struct ClipVisionTransformer {
    /// `(E, C, P, P)`; the patch convolution has no bias.
    patch_weight: Tensor,
    /// `(E)`.
    class_embedding: Tensor,
    /// `(1 + grid^2, E)`.
    position_embedding: Tensor,
    pre_layernorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    patch_size: usize,
    image_size: usize,
}

impl ClipVisionTransformer {
    /// Loads `embeddings.*`, `pre_layrnorm.*`, `encoder.layers.*` and `post_layernorm.*`.
    pub fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let (e, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let g = cfg.grid();
        let emb = vb.pp("embeddings");
        Ok(ClipVisionTransformer {
            patch_weight: emb.pp("patch_embedding").get([e, c, p, p], "weight")?,
            class_embedding: emb.get([e], "class_embedding")?,
            position_embedding: emb.pp("position_embedding").get([1 + g * g, e], "weight")?,
            pre_layernorm: LayerNorm::new(vb.pp("pre_layrnorm"), e, cfg.layer_norm_eps)?,
            encoder: Encoder::new(
                vb.pp("encoder"),
                &cfg.encoder()?,
                cfg.num_hidden_layers,
                &EncoderKeys::clip(),
            )?,
            post_layernorm: LayerNorm::new(vb.pp("post_layernorm"), e, cfg.layer_norm_eps)?,
            patch_size: p,
            image_size: cfg.image_size,
        })
    }

    /// `pixel_values` is `(B, C, H, W)` at the configured size, or any size of at least one
    /// patch with `interpolate_pos_encoding` (position embeddings resized bicubically).
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        interpolate_pos_encoding: bool,
    ) -> Result<ClipVisionOutput> {
        let c = self.patch_weight.dims()[1];
        if pixel_values.rank() != 4 || pixel_values.dims()[1] != c {
            return Err(Error::bad_shape(
                "CLIP vision",
                format!("pixel_values must be (batch, {c}, height, width)"),
                pixel_values.shape(),
            ));
        }
        let (h, w) = (pixel_values.dims()[2], pixel_values.dims()[3]);
        let pos = interpolated_positions(
            &self.position_embedding,
            (self.image_size, self.image_size),
            self.patch_size,
            (h, w),
            interpolate_pos_encoding,
        )?;
        // x is (B, 1 + patches, E): class row first, positions added to every row.
        let x = Tensor::patch_embed(
            pixel_values,
            &self.patch_weight,
            None,
            &PatchEmbedOptions {
                patch_size: self.patch_size,
                class_embedding: Some(self.class_embedding.clone()),
                position_embedding: Some(pos),
            },
        )?;
        let x = self.pre_layernorm.forward(&x)?;
        let last_hidden_state = self.encoder.forward(&x)?;
        let cls = last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?;
        let pooler_output = self.post_layernorm.forward(&cls)?;
        Ok(ClipVisionOutput {
            last_hidden_state,
            pooler_output,
        })
    }
}

//! A ViT with random weights under the published key names.

use glimpse_nn::EncoderKeys;
use glimpse_nn::init::{
    Init, WeightSpec, encoder_specs, layer_norm_specs, linear_specs, random_var_builder,
};
use glimpse_tensor::{DType, Device, Result, VarBuilder};

use crate::ViTConfig;

/// Every weight of a `ViTForImageClassification` checkpoint (`with_classifier`, under `vit.`
/// with `classifier.*`) or of a `ViTModel` checkpoint with its pooler (no prefix), with the
/// shapes `cfg` gives them.
pub fn weight_specs(
    cfg: &ViTConfig,
    with_classifier: bool,
) -> glimpse_tensor::Result<Vec<WeightSpec>> {
    let (e, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
    let (gh, gw) = cfg.grid();
    let root = if with_classifier { "vit" } else { "" };
    let at = |name: &str| {
        if root.is_empty() {
            name.to_string()
        } else {
            format!("{root}.{name}")
        }
    };
    let mut v = vec![
        WeightSpec::new(
            &at("embeddings"),
            "cls_token",
            &[1, 1, e],
            Init::Normal(0.02),
        ),
        WeightSpec::new(
            &at("embeddings"),
            "position_embeddings",
            &[1, 1 + gh * gw, e],
            Init::Normal(0.02),
        ),
        WeightSpec::new(
            &at("embeddings.patch_embeddings.projection"),
            "weight",
            &[e, c, p, p],
            Init::Normal(0.02),
        ),
        WeightSpec::new(
            &at("embeddings.patch_embeddings.projection"),
            "bias",
            &[e],
            Init::Normal(0.02),
        ),
    ];
    v.extend(encoder_specs(
        &at("encoder"),
        &cfg.encoder()?,
        &EncoderKeys::vit(),
        cfg.num_hidden_layers,
    ));
    v.extend(layer_norm_specs(&at("layernorm"), e));
    if with_classifier {
        v.extend(linear_specs("classifier", e, cfg.labels()?.len(), true));
    } else {
        v.extend(linear_specs(
            "pooler.dense",
            e,
            cfg.pooler_output_size.unwrap_or(e),
            true,
        ));
    }
    Ok(v)
}

/// A [`VarBuilder`] over random weights for `cfg` (see [`weight_specs`]); seed 0.
pub fn random_weights(
    cfg: &ViTConfig,
    with_classifier: bool,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder> {
    random_var_builder(&weight_specs(cfg, with_classifier)?, dtype, device, 0)
}

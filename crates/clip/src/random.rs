//! A CLIP model with random weights under the published key names.

use glimpse_nn::EncoderKeys;
use glimpse_nn::init::{
    Init, WeightSpec, encoder_specs, layer_norm_specs, linear_specs, random_var_builder,
};
use glimpse_tensor::{DType, Device, Result, VarBuilder};

use crate::ClipConfig;

/// Every weight of a `CLIPModel` checkpoint (`logit_scale` included) with the shapes `cfg`
/// gives them.
pub fn weight_specs(cfg: &ClipConfig) -> Result<Vec<WeightSpec>> {
    let (t, v) = (&cfg.text_config, &cfg.vision_config);
    let (et, ev) = (t.hidden_size, v.hidden_size);
    let g = v.grid();
    let mut s = vec![
        WeightSpec::new(
            "text_model.embeddings.token_embedding",
            "weight",
            &[t.vocab_size, et],
            Init::Normal(0.02),
        ),
        WeightSpec::new(
            "text_model.embeddings.position_embedding",
            "weight",
            &[t.max_position_embeddings, et],
            Init::Normal(0.01),
        ),
    ];
    s.extend(encoder_specs(
        "text_model.encoder",
        &t.encoder()?,
        &EncoderKeys::clip(),
        t.num_hidden_layers,
    ));
    s.extend(layer_norm_specs("text_model.final_layer_norm", et));
    s.extend([
        WeightSpec::new(
            "vision_model.embeddings",
            "class_embedding",
            &[ev],
            Init::Normal(0.02),
        ),
        WeightSpec::new(
            "vision_model.embeddings.patch_embedding",
            "weight",
            &[ev, v.num_channels, v.patch_size, v.patch_size],
            Init::Normal(0.02),
        ),
        WeightSpec::new(
            "vision_model.embeddings.position_embedding",
            "weight",
            &[1 + g * g, ev],
            Init::Normal(0.02),
        ),
    ]);
    s.extend(layer_norm_specs("vision_model.pre_layrnorm", ev));
    s.extend(encoder_specs(
        "vision_model.encoder",
        &v.encoder()?,
        &EncoderKeys::clip(),
        v.num_hidden_layers,
    ));
    s.extend(layer_norm_specs("vision_model.post_layernorm", ev));
    s.extend(linear_specs(
        "visual_projection",
        ev,
        cfg.projection_dim,
        false,
    ));
    s.extend(linear_specs(
        "text_projection",
        et,
        cfg.projection_dim,
        false,
    ));
    s.push(WeightSpec::new(
        "",
        "logit_scale",
        &[],
        Init::Constant(cfg.logit_scale_init_value),
    ));
    Ok(s)
}

/// A [`VarBuilder`] over random weights for `cfg` (seed 0), with `logit_scale` at the
/// config's initial value.
pub fn random_weights(cfg: &ClipConfig, dtype: DType, device: &Device) -> Result<VarBuilder> {
    random_var_builder(&weight_specs(cfg)?, dtype, device, 0)
}

//! Random weights under the published key names: models built without a checkpoint (tests,
//! documentation examples, benchmarks of full-size architectures).

use std::collections::HashMap;

use glimpse_tensor::{DType, Device, Result, Tensor, VarBuilder};

use crate::{EncoderConfig, EncoderKeys};

/// How one weight is initialised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    /// Normal with mean 1 and this standard deviation (layer-norm scales).
    NormalAroundOne(f64),
    /// Every element this value (a scalar parameter such as CLIP's `logit_scale`).
    Constant(f64),
}

/// One weight of a model: its full key, shape and initialisation.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightSpec {
    /// Full key, such as `vit.encoder.layer.0.attention.attention.query.weight`.
    pub key: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Initialisation.
    pub init: Init,
}

impl WeightSpec {
    /// A weight with key `prefix.name` (or `name` when `prefix` is empty).
    pub fn new(prefix: &str, name: &str, shape: &[usize], init: Init) -> Self {
        let key = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        WeightSpec {
            key,
            shape: shape.to_vec(),
            init,
        }
    }
}

/// The standard deviation used for projections and embeddings (the Hugging Face
/// `initializer_range` default).
pub const INIT_STD: f64 = 0.02;

/// The weights of a [`Linear`](crate::Linear) `(out, in)` under `prefix`.
pub fn linear_specs(prefix: &str, inp: usize, out: usize, bias: bool) -> Vec<WeightSpec> {
    let mut v = vec![WeightSpec::new(
        prefix,
        "weight",
        &[out, inp],
        Init::Normal(INIT_STD),
    )];
    if bias {
        v.push(WeightSpec::new(
            prefix,
            "bias",
            &[out],
            Init::Normal(INIT_STD),
        ));
    }
    v
}

/// The weights of a [`LayerNorm`](crate::LayerNorm) of width `dim` under `prefix`.
pub fn layer_norm_specs(prefix: &str, dim: usize) -> Vec<WeightSpec> {
    vec![
        WeightSpec::new(prefix, "weight", &[dim], Init::NormalAroundOne(INIT_STD)),
        WeightSpec::new(prefix, "bias", &[dim], Init::Normal(INIT_STD)),
    ]
}

/// Every weight of an [`Encoder`](crate::Encoder) of `num_layers` layers under `prefix`.
pub fn encoder_specs(
    prefix: &str,
    cfg: &EncoderConfig,
    keys: &EncoderKeys,
    num_layers: usize,
) -> Vec<WeightSpec> {
    let join = |a: &str, b: &str| match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}.{b}"),
    };
    let (e, m, k) = (cfg.dim, cfg.mlp_dim, &keys.layer);
    let mut v = Vec::new();
    for i in 0..num_layers {
        let layer = join(prefix, &format!("{}.{i}", keys.layers));
        v.extend(layer_norm_specs(&join(&layer, &k.ln1), e));
        v.extend(layer_norm_specs(&join(&layer, &k.ln2), e));
        for name in [
            &k.attention.q,
            &k.attention.k,
            &k.attention.v,
            &k.attention.out,
        ] {
            v.extend(linear_specs(&join(&layer, name), e, e, cfg.qkv_bias));
        }
        let mlp = join(&layer, &k.mlp);
        v.extend(linear_specs(&join(&mlp, &k.mlp_keys.fc1), e, m, true));
        v.extend(linear_specs(&join(&mlp, &k.mlp_keys.fc2), m, e, true));
    }
    v
}

/// A [`VarBuilder`] over freshly drawn weights (seeded, so the same `seed` gives the same
/// model), in `dtype` on `device`.
pub fn random_var_builder(
    specs: &[WeightSpec],
    dtype: DType,
    device: &Device,
    seed: u64,
) -> Result<VarBuilder> {
    let mut tensors = HashMap::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let s = seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(i as u64);
        let t = match spec.init {
            Init::Normal(std) => {
                Tensor::rand_normal(0.0, std, spec.shape.clone(), dtype, s, device)?
            }
            Init::NormalAroundOne(std) => {
                Tensor::rand_normal(1.0, std, spec.shape.clone(), dtype, s, device)?
            }
            Init::Constant(value) => Tensor::full(value, spec.shape.clone(), dtype, device)?,
        };
        tensors.insert(spec.key.clone(), t);
    }
    Ok(VarBuilder::from_tensors(tensors, dtype, device))
}

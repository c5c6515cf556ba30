//! Initial weights for training from scratch.

use glimpse_nn::init::{Init, WeightSpec};
use glimpse_tensor::{DType, Device, Result, Tensor};

use crate::optim::Param;

/// Fresh f32 parameters for `specs`, seeded: biases zero, layer-norm scales one, constants
/// (CLIP's `logit_scale`) their value, everything else normal with the spec's standard
/// deviation (0.02, transformers' `initializer_range`). The same seed gives the same weights
/// on every device.
pub fn init_params(specs: &[WeightSpec], seed: u64, device: &Device) -> Result<Vec<Param>> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let s = seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(i as u64);
            let shape = spec.shape.clone();
            let value = match spec.init {
                _ if spec.key.ends_with(".bias") => Tensor::zeros(shape, DType::F32, device)?,
                Init::NormalAroundOne(_) => Tensor::ones(shape, DType::F32, device)?,
                Init::Constant(v) => Tensor::full(v, shape, DType::F32, device)?,
                Init::Normal(std) => Tensor::rand_normal(0.0, std, shape, DType::F32, s, device)?,
            };
            Ok(Param::new(spec.key.clone(), value))
        })
        .collect()
}

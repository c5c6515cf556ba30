//! Dynamic loss scaling for f16 training.

use glimpse_tensor::{DType, Error, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::{check_float_grad, scale_tensor};

/// The settings of a [`LossScaler`]; the defaults are `torch.cuda.amp.GradScaler`'s.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LossScalerConfig {
    /// The scale to start from.
    pub init_scale: f64,
    /// Multiplies the scale after `growth_interval` steps in a row without overflow (> 1).
    pub growth_factor: f64,
    /// Multiplies the scale after an overflow (in (0, 1)).
    pub backoff_factor: f64,
    /// How many overflow-free steps in a row make the scale grow.
    pub growth_interval: u32,
}

impl Default for LossScalerConfig {
    fn default() -> Self {
        LossScalerConfig {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

/// What a [`LossScaler`] needs to resume: its current scale and how many overflow-free steps
/// it has counted towards the next growth. Serialisable for checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScalerState {
    /// The current scale (an f32, as PyTorch keeps it).
    pub scale: f32,
    /// Overflow-free steps since the last growth or backoff.
    pub growth_tracker: u32,
}

/// Dynamic loss scaling, as `torch.cuda.amp.GradScaler`: the loss is multiplied by a large
/// scale before the backward pass so that small f16 gradients do not flush to zero, and the
/// gradients are divided by it before the optimizer step. When some gradient overflowed the
/// step is skipped and the scale halves; after 2000 clean steps it doubles.
///
/// ```
/// # fn main() -> glimpse_tensor::Result<()> {
/// # use glimpse_tensor::{DType, Tensor};
/// # use glimpse_train::optim::LossScaler;
/// # let device = glimpse_cpu::device();
/// let mut scaler = LossScaler::new();
/// # let loss = Tensor::ones((), DType::F32, &device)?;
/// let scaled = scaler.scale_loss(&loss)?;
/// // ... backward pass on `scaled` gives the gradients ...
/// # let mut grads = vec![Some(Tensor::full(65536.0, 2, DType::F32, &device)?)];
/// let finite = scaler.unscale(&mut grads)?;
/// if finite {
///     // clip, then optimizer.step(&mut params, &grads, lr)
/// }
/// scaler.update(!finite);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LossScaler {
    config: LossScalerConfig,
    scale: f32,
    growth_tracker: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            config: LossScalerConfig::default(),
            scale: 65536.0,
            growth_tracker: 0,
        }
    }
}

impl LossScaler {
    /// A scaler with PyTorch's defaults (scale 65536, growth 2 every 2000 steps, backoff 0.5).
    pub fn new() -> LossScaler {
        LossScaler::default()
    }

    /// A scaler with the given settings, checked as PyTorch checks them.
    pub fn with_config(config: LossScalerConfig) -> Result<LossScaler> {
        const OP: &str = "LossScaler::with_config";
        let scale = config.init_scale as f32;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::invalid(
                OP,
                format!(
                    "init_scale must be a positive finite f32, got {}",
                    config.init_scale
                ),
            ));
        }
        if !(config.growth_factor > 1.0 && config.growth_factor.is_finite()) {
            return Err(Error::invalid(
                OP,
                format!(
                    "growth_factor must be finite and > 1, got {}",
                    config.growth_factor
                ),
            ));
        }
        if !(config.backoff_factor > 0.0 && config.backoff_factor < 1.0) {
            return Err(Error::invalid(
                OP,
                format!(
                    "backoff_factor must be in (0, 1), got {}",
                    config.backoff_factor
                ),
            ));
        }
        if config.growth_interval == 0 {
            return Err(Error::invalid(OP, "growth_interval must be > 0"));
        }
        Ok(LossScaler {
            config,
            scale,
            growth_tracker: 0,
        })
    }

    /// The settings.
    pub fn config(&self) -> &LossScalerConfig {
        &self.config
    }

    /// The current scale.
    pub fn scale(&self) -> f64 {
        f64::from(self.scale)
    }

    /// `loss * scale`, the tensor to run the backward pass from.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        if !loss.dtype().is_float() {
            return Err(Error::UnsupportedDType {
                op: "LossScaler::scale_loss",
                dtype: loss.dtype(),
                backend: None,
            });
        }
        scale_tensor(loss, self.scale())
    }

    /// Divides the gradients by the scale, in place, and reports whether they were all
    /// finite. When they were not, skip the optimizer step; either way, call
    /// [`LossScaler::update`] with the negation of the result afterwards.
    ///
    /// As in PyTorch, finiteness is judged on the gradients as they came (scaled), and
    /// `1 / scale` is rounded to f32 once. One host read-back for all gradients.
    pub fn unscale(&self, grads: &mut [Option<Tensor>]) -> Result<bool> {
        const OP: &str = "LossScaler::unscale";
        let present: Vec<&Tensor> = grads.iter().flatten().collect();
        if present.is_empty() {
            return Ok(true);
        }
        for g in &present {
            check_float_grad(OP, g)?;
        }
        // `x * 0` is 0 for finite x and NaN for infinities and NaN, so the sum of all those
        // products is 0 exactly when every gradient is finite.
        let probes = present
            .iter()
            .map(|g| {
                let g = g.to_dtype(g.dtype().compute_dtype())?;
                g.mul(&g.scalar_like(0.0)?)?
                    .sum_all()?
                    .to_dtype(DType::F32)?
                    .reshape(1)
            })
            .collect::<Result<Vec<_>>>()?;
        let probes: Vec<&Tensor> = probes.iter().collect();
        let finite = Tensor::cat(&probes, 0)?.sum_all()?.to_scalar::<f32>()? == 0.0;
        let inv_scale = f64::from((1.0 / f64::from(self.scale)) as f32);
        for g in grads.iter_mut().flatten() {
            *g = scale_tensor(g, inv_scale)?;
        }
        Ok(finite)
    }

    /// Adapts the scale after a step: backs off when `found_inf`, otherwise counts a clean
    /// step and grows the scale after `growth_interval` of them in a row (unless the grown
    /// scale would overflow f32).
    pub fn update(&mut self, found_inf: bool) {
        let c = &self.config;
        if found_inf {
            self.scale = (f64::from(self.scale) * c.backoff_factor) as f32;
            self.growth_tracker = 0;
        } else {
            let successful = self.growth_tracker.saturating_add(1);
            if successful >= c.growth_interval {
                let grown = (f64::from(self.scale) * c.growth_factor) as f32;
                if grown.is_finite() {
                    self.scale = grown;
                }
                self.growth_tracker = 0;
            } else {
                self.growth_tracker = successful;
            }
        }
    }

    /// The state to checkpoint.
    pub fn state(&self) -> LossScalerState {
        LossScalerState {
            scale: self.scale,
            growth_tracker: self.growth_tracker,
        }
    }

    /// Restores a state saved by [`LossScaler::state`]; rejects a scale that is not positive
    /// and finite.
    pub fn load_state(&mut self, state: &LossScalerState) -> Result<()> {
        if !(state.scale.is_finite() && state.scale > 0.0) {
            return Err(Error::invalid(
                "LossScaler::load_state",
                format!("the scale must be positive and finite, got {}", state.scale),
            ));
        }
        self.scale = state.scale;
        self.growth_tracker = state.growth_tracker;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use glimpse_tensor::Device;

    use super::*;

    fn dev() -> Device {
        glimpse_cpu::device()
    }

    #[test]
    fn growth_and_backoff_sequence() -> Result<()> {
        let mut s = LossScaler::new();
        assert_eq!(s.scale(), 65536.0);
        for _ in 0..1999 {
            s.update(false);
        }
        assert_eq!((s.scale(), s.state().growth_tracker), (65536.0, 1999));
        s.update(false);
        assert_eq!((s.scale(), s.state().growth_tracker), (131072.0, 0));
        s.update(false);
        s.update(true);
        assert_eq!((s.scale(), s.state().growth_tracker), (65536.0, 0));
        s.update(true);
        s.update(true);
        assert_eq!(s.scale(), 16384.0);

        let mut small = LossScaler::with_config(LossScalerConfig {
            init_scale: 8.0,
            growth_interval: 3,
            ..LossScalerConfig::default()
        })?;
        let mut seen = Vec::new();
        for found_inf in [false, false, false, false, true, false, false, false] {
            small.update(found_inf);
            seen.push(small.scale());
        }
        assert_eq!(seen, [8.0, 8.0, 16.0, 16.0, 8.0, 8.0, 8.0, 16.0]);

        // The scale never grows past f32's range.
        let mut top = LossScaler::new();
        top.load_state(&LossScalerState {
            scale: f32::MAX,
            growth_tracker: 1999,
        })?;
        top.update(false);
        assert_eq!(top.scale(), f64::from(f32::MAX));
        Ok(())
    }

    #[test]
    fn unscale_and_detect_overflow() -> Result<()> {
        let d = dev();
        let s = LossScaler::new();
        let loss = Tensor::full(0.5, (), DType::F32, &d)?;
        assert_eq!(s.scale_loss(&loss)?.to_scalar::<f32>()?, 32768.0);

        let g = Tensor::full(65536.0 * 0.25, [2, 2], DType::F16, &d)?;
        let mut grads = vec![Some(g), None];
        assert!(s.unscale(&mut grads)?);
        let g = grads[0].as_ref().unwrap();
        assert_eq!(g.dtype(), DType::F16);
        assert_eq!(g.to_f64_vec()?, vec![0.25; 4]);

        for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            let ok = Tensor::ones(3, DType::F32, &d)?;
            let b = Tensor::from_vec(vec![1.0, bad], 2, &d)?.to_dtype(DType::F16)?;
            let mut grads = vec![Some(ok), Some(b)];
            assert!(!s.unscale(&mut grads)?);
        }
        assert!(s.unscale(&mut [None, None])?);
        let ids = Tensor::ones(2, DType::U32, &d)?;
        assert!(s.unscale(&mut [Some(ids)]).is_err());
        Ok(())
    }

    #[test]
    fn state_round_trip_and_config_checks() -> Result<()> {
        let mut s = LossScaler::new();
        s.update(true);
        s.update(false);
        let saved = s.state();
        let json = serde_json::to_string(&saved).unwrap();
        let back: LossScalerState = serde_json::from_str(&json).unwrap();
        let mut t = LossScaler::new();
        t.load_state(&back)?;
        assert_eq!(t.state(), saved);
        assert_eq!(t.scale(), 32768.0);
        let zero = LossScalerState {
            scale: 0.0,
            growth_tracker: 0,
        };
        assert!(t.load_state(&zero).is_err());

        let base = LossScalerConfig::default();
        for bad in [
            LossScalerConfig {
                init_scale: 0.0,
                ..base
            },
            LossScalerConfig {
                init_scale: 1e300,
                ..base
            },
            LossScalerConfig {
                growth_factor: 1.0,
                ..base
            },
            LossScalerConfig {
                backoff_factor: 1.0,
                ..base
            },
            LossScalerConfig {
                growth_interval: 0,
                ..base
            },
        ] {
            assert!(LossScaler::with_config(bad).is_err(), "{bad:?}");
        }
        Ok(())
    }
}

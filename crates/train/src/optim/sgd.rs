//! Stochastic gradient descent with momentum, as `torch.optim.SGD`.

use std::collections::HashMap;

use glimpse_tensor::{Error, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::{
    Optimizer, Param, StateReader, check_state_fits, check_step_args, check_unique_names,
    master_grad, step_entry,
};

/// The hyperparameters of [`Sgd`] (the learning rate comes with each step). The defaults are
/// PyTorch's: plain SGD without momentum or weight decay.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SgdConfig {
    /// Momentum factor (0 disables the momentum buffer).
    pub momentum: f64,
    /// Dampening of the gradient's contribution to the momentum buffer.
    pub dampening: f64,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
    /// L2 penalty added to the gradient (coupled, unlike AdamW's), for parameters whose
    /// [`Param::weight_decay`] is set.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

/// `torch.optim.SGD`, with the same arithmetic per step:
///
/// ```text
/// g = grad + weight_decay * param              (parameters with weight decay)
/// buf = g (first step) | momentum * buf + (1 - dampening) * g
/// g = g + momentum * buf (Nesterov) | buf      (when momentum != 0)
/// param = param - lr * g
/// ```
///
/// Saved state: `optim.step` and `optim.momentum_buffer.{name}` (with momentum only).
#[derive(Debug)]
pub struct Sgd {
    config: SgdConfig,
    momentum_buffers: HashMap<String, Tensor>,
    steps: u64,
}

const MOMENTUM_KEY: &str = "optim.momentum_buffer.";

impl Sgd {
    /// An optimizer with no state yet; rejects hyperparameters PyTorch rejects.
    pub fn new(config: SgdConfig) -> Result<Sgd> {
        let SgdConfig {
            momentum,
            dampening,
            nesterov,
            weight_decay,
        } = config;
        for (name, v) in [
            ("momentum", momentum),
            ("dampening", dampening),
            ("weight_decay", weight_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::invalid(
                    "Sgd::new",
                    format!("{name} must be finite and >= 0, got {v}"),
                ));
            }
        }
        if nesterov && (momentum <= 0.0 || dampening != 0.0) {
            return Err(Error::invalid(
                "Sgd::new",
                format!(
                    "Nesterov momentum needs momentum > 0 and dampening 0, got momentum \
                     {momentum} and dampening {dampening}"
                ),
            ));
        }
        Ok(Sgd {
            config,
            momentum_buffers: HashMap::new(),
            steps: 0,
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut [Param], grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        const OP: &str = "Sgd::step";
        check_step_args(OP, params, grads, lr)?;
        let c = self.config;
        // Computed first and committed only when every parameter succeeded, so that an error
        // leaves parameters and state as they were.
        let mut updates = Vec::new();
        for (i, (param, grad)) in params.iter().zip(grads).enumerate() {
            let Some(grad) = grad else { continue };
            let p = &param.value;
            let mut g = master_grad(OP, param, grad)?;
            // PyTorch's scalar arguments are Python floats: computed in f64, then rounded to
            // the tensor's dtype by the kernel, as `scalar_like` does.
            if param.weight_decay && c.weight_decay != 0.0 {
                // grad.add(param, alpha=weight_decay)
                g = g.add(&p.mul(&p.scalar_like(c.weight_decay)?)?)?;
            }
            let mut buf = None;
            if c.momentum != 0.0 {
                let b = match self.momentum_buffers.get(&param.name) {
                    None => g.clone(),
                    Some(b) => {
                        check_state_fits(OP, param, "momentum buffer", b)?;
                        // buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                        let decayed = b.mul(&b.scalar_like(c.momentum)?)?;
                        decayed.add(&g.mul(&g.scalar_like(1.0 - c.dampening)?)?)?
                    }
                };
                g = if c.nesterov {
                    // grad.add(buf, alpha=momentum)
                    g.add(&b.mul(&b.scalar_like(c.momentum)?)?)?
                } else {
                    b.clone()
                };
                buf = Some(b);
            }
            // param.add_(grad, alpha=-lr)
            let new = p.add(&g.mul(&g.scalar_like(-lr)?)?)?;
            updates.push((i, new, buf));
        }
        for (i, new, buf) in updates {
            if let Some(b) = buf {
                self.momentum_buffers.insert(params[i].name.clone(), b);
            }
            params[i].value = new;
        }
        self.steps += 1;
        Ok(())
    }

    fn state(&self, params: &[Param]) -> Result<Vec<(String, Tensor)>> {
        const OP: &str = "Sgd::state";
        check_unique_names(OP, params)?;
        let mut out: Vec<_> = step_entry(OP, self.steps, params)?.into_iter().collect();
        for p in params {
            if let Some(b) = self.momentum_buffers.get(&p.name) {
                out.push((format!("{MOMENTUM_KEY}{}", p.name), b.clone()));
            }
        }
        Ok(out)
    }

    fn load_state(&mut self, params: &[Param], state: &HashMap<String, Tensor>) -> Result<()> {
        const OP: &str = "Sgd::load_state";
        check_unique_names(OP, params)?;
        let mut reader = StateReader::new(OP, state);
        let steps = reader.take_steps(params)?;
        let mut buffers = HashMap::new();
        if self.config.momentum != 0.0 {
            for p in params {
                if let Some(b) = reader.take_for(&format!("{MOMENTUM_KEY}{}", p.name), p)? {
                    buffers.insert(p.name.clone(), b);
                }
            }
        }
        reader.finish("SGD")?;
        self.momentum_buffers = buffers;
        self.steps = steps;
        Ok(())
    }

    fn steps_taken(&self) -> u64 {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use glimpse_tensor::{DType, Device};
    use proptest::prelude::*;

    use super::*;

    fn dev() -> Device {
        glimpse_cpu::device()
    }

    /// torch.optim.SGD on the host in f32, one scalar operation at a time in PyTorch's order.
    struct RefSgd {
        c: SgdConfig,
        bufs: Vec<Option<Vec<f32>>>,
    }

    impl RefSgd {
        fn step(
            &mut self,
            params: &mut [Vec<f32>],
            decay: &[bool],
            grads: &[Option<Vec<f32>>],
            lr: f64,
        ) {
            let c = self.c;
            for (i, p) in params.iter_mut().enumerate() {
                let Some(grad) = &grads[i] else { continue };
                let mut g = grad.clone();
                if decay[i] && c.weight_decay != 0.0 {
                    let wd = c.weight_decay as f32;
                    g = g.iter().zip(p.iter()).map(|(g, p)| g + p * wd).collect();
                }
                if c.momentum != 0.0 {
                    let (m, damp) = (c.momentum as f32, (1.0 - c.dampening) as f32);
                    let buf = match self.bufs[i].take() {
                        None => g.clone(),
                        Some(b) => b.iter().zip(&g).map(|(b, g)| b * m + g * damp).collect(),
                    };
                    g = if c.nesterov {
                        g.iter().zip(&buf).map(|(g, b)| g + b * m).collect()
                    } else {
                        buf.clone()
                    };
                    self.bufs[i] = Some(buf);
                }
                let neg_lr = -lr as f32;
                for (p, g) in p.iter_mut().zip(&g) {
                    *p += g * neg_lr;
                }
            }
        }
    }

    fn vec_f32(n: usize, seed: u64) -> Vec<f32> {
        // A cheap deterministic generator: values in [-2, 2) with varied magnitudes.
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn run_against_reference(
        c: SgdConfig,
        shapes: &[Vec<usize>],
        steps: usize,
        lr: f64,
        seed: u64,
    ) -> Result<()> {
        let d = dev();
        let mut params = Vec::new();
        let mut host = Vec::new();
        for (i, s) in shapes.iter().enumerate() {
            let n = s.iter().product();
            let v = vec_f32(n, seed + i as u64);
            params.push(Param::new(
                format!("p{i}.weight"),
                Tensor::from_slice(&v, s.clone(), &d)?,
            ));
            host.push(v);
        }
        let decay: Vec<bool> = params.iter().map(|p| p.weight_decay).collect();
        let mut opt = Sgd::new(c)?;
        let mut reference = RefSgd {
            c,
            bufs: vec![None; shapes.len()],
        };
        for step in 0..steps {
            let mut grads = Vec::new();
            let mut host_grads = Vec::new();
            for (i, s) in shapes.iter().enumerate() {
                // Parameter 1 skips every third step, exercising `None`.
                if i == 1 && step % 3 == 1 {
                    grads.push(None);
                    host_grads.push(None);
                    continue;
                }
                let v = vec_f32(s.iter().product(), seed * 31 + (step * 7 + i) as u64);
                grads.push(Some(Tensor::from_slice(&v, s.clone(), &d)?));
                host_grads.push(Some(v));
            }
            opt.step(&mut params, &grads, lr)?;
            reference.step(&mut host, &decay, &host_grads, lr);
        }
        for (p, h) in params.iter().zip(&host) {
            // The same correctly rounded f32 operations in the same order: the same bits
            // (PyTorch's own CPU kernels may fuse a multiply-add, a difference of 1 ulp).
            let got = p.value.to_vec::<f32>()?;
            assert!(
                got.iter().zip(h).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{got:?} vs {h:?}"
            );
        }
        assert_eq!(opt.steps_taken(), steps as u64);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn matches_torch_reference(
            momentum in prop_oneof![Just(0.0), 0.1f64..0.99],
            dampening in prop_oneof![Just(0.0), 0.0f64..0.5],
            nesterov in any::<bool>(),
            weight_decay in prop_oneof![Just(0.0), 0.0f64..0.1],
            lr in 1e-4f64..0.5,
            rows in 1usize..5,
            cols in 1usize..7,
            seed in 0u64..1000,
        ) {
            let nesterov = nesterov && momentum > 0.0;
            let dampening = if nesterov { 0.0 } else { dampening };
            let c = SgdConfig { momentum, dampening, nesterov, weight_decay };
            let shapes = vec![vec![rows, cols], vec![cols], vec![2, rows, cols]];
            run_against_reference(c, &shapes, 6, lr, seed).unwrap();
        }
    }

    #[test]
    fn first_step_and_decay_groups() -> Result<()> {
        let d = dev();
        let c = SgdConfig {
            momentum: 0.9,
            weight_decay: 0.5,
            ..SgdConfig::default()
        };
        let mut opt = Sgd::new(c)?;
        let w = Tensor::from_vec(vec![1.0f32, 2.0], [1, 2], &d)?;
        let b = Tensor::from_vec(vec![1.0f32, 2.0], 2, &d)?;
        let mut params = vec![Param::new("w", w), Param::new("b", b)];
        let g = Tensor::from_vec(vec![1.0f32, 1.0], [1, 2], &d)?;
        let gb = Tensor::from_vec(vec![1.0f32, 1.0], 2, &d)?;
        opt.step(&mut params, &[Some(g), Some(gb)], 0.5)?;
        // w: g + 0.5 w = [1.5, 2]; buf = g; w - 0.5 g.
        assert_eq!(params[0].value.to_vec::<f32>()?, vec![0.25, 1.0]);
        // b is rank 1: no decay.
        assert_eq!(params[1].value.to_vec::<f32>()?, vec![0.5, 1.5]);
        Ok(())
    }

    #[test]
    fn none_grads_leave_params_and_state_alone() -> Result<()> {
        let d = dev();
        let mut opt = Sgd::new(SgdConfig {
            momentum: 0.9,
            ..SgdConfig::default()
        })?;
        let w = Tensor::ones([2, 2], DType::F32, &d)?;
        let mut params = vec![Param::new("a", w.clone()), Param::new("b", w.clone())];
        opt.step(&mut params, &[Some(w.clone()), None], 0.1)?;
        assert!(params[1].value.shares_storage_with(&w));
        let state = opt.state(&params)?;
        let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["optim.step", "optim.momentum_buffer.a"]);
        Ok(())
    }

    #[test]
    fn resume_is_bitwise_identical() -> Result<()> {
        let d = dev();
        let c = SgdConfig {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
            weight_decay: 0.01,
        };
        let shapes = [vec![3, 4], vec![4]];
        let init: Vec<Param> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let v = vec_f32(s.iter().product(), i as u64);
                Ok(Param::new(
                    format!("p{i}"),
                    Tensor::from_slice(&v, s.clone(), &d)?,
                ))
            })
            .collect::<Result<_>>()?;
        let grads_at = |step: usize| -> Result<Vec<Option<Tensor>>> {
            shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let v = vec_f32(s.iter().product(), 100 + (step * 2 + i) as u64);
                    Tensor::from_slice(&v, s.clone(), &d).map(Some)
                })
                .collect()
        };
        let mut straight = init.clone();
        let mut opt = Sgd::new(c)?;
        for step in 0..8 {
            opt.step(&mut straight, &grads_at(step)?, 0.05)?;
        }
        let mut resumed = init.clone();
        let mut first = Sgd::new(c)?;
        for step in 0..3 {
            first.step(&mut resumed, &grads_at(step)?, 0.05)?;
        }
        let state: HashMap<_, _> = first.state(&resumed)?.into_iter().collect();
        let mut second = Sgd::new(c)?;
        second.load_state(&resumed, &state)?;
        assert_eq!(second.steps_taken(), 3);
        for step in 3..8 {
            second.step(&mut resumed, &grads_at(step)?, 0.05)?;
        }
        for (a, b) in straight.iter().zip(&resumed) {
            let (a, b) = (a.value.to_vec::<f32>()?, b.value.to_vec::<f32>()?);
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        Ok(())
    }

    #[test]
    fn load_state_rejects_foreign_state() -> Result<()> {
        let d = dev();
        let c = SgdConfig {
            momentum: 0.5,
            ..SgdConfig::default()
        };
        let w = Tensor::ones([2, 2], DType::F32, &d)?;
        let mut params = vec![Param::new("w", w.clone())];
        let mut opt = Sgd::new(c)?;
        opt.step(&mut params, &[Some(w.clone())], 0.1)?;
        let good: HashMap<_, _> = opt.state(&params)?.into_iter().collect();

        let other = vec![Param::new("v", w.clone())];
        let err = Sgd::new(c)?.load_state(&other, &good).unwrap_err();
        assert!(err.to_string().contains("optim.momentum_buffer.w"), "{err}");

        let bigger = vec![Param::new("w", Tensor::ones([3, 2], DType::F32, &d)?)];
        let err = Sgd::new(c)?.load_state(&bigger, &good).unwrap_err();
        assert!(err.to_string().contains("optim.momentum_buffer.w"), "{err}");

        // Without momentum there is no buffer to load.
        let err = Sgd::new(SgdConfig::default())?
            .load_state(&params, &good)
            .unwrap_err();
        assert!(err.to_string().contains("optim.momentum_buffer.w"), "{err}");

        let mut no_step = good.clone();
        no_step.remove("optim.step");
        assert!(Sgd::new(c)?.load_state(&params, &no_step).is_err());

        // Entries outside `optim.` (model weights in the same checkpoint) are ignored.
        let mut with_weights = good.clone();
        with_weights.insert("w".into(), w.clone());
        let mut fresh = Sgd::new(c)?;
        fresh.load_state(&params, &with_weights)?;
        assert_eq!(fresh.steps_taken(), 1);
        Ok(())
    }

    #[test]
    fn rejects_bad_config_and_inputs() -> Result<()> {
        let bad = [
            SgdConfig {
                momentum: -0.1,
                ..SgdConfig::default()
            },
            SgdConfig {
                weight_decay: f64::NAN,
                ..SgdConfig::default()
            },
            SgdConfig {
                nesterov: true,
                ..SgdConfig::default()
            },
            SgdConfig {
                nesterov: true,
                momentum: 0.9,
                dampening: 0.1,
                ..SgdConfig::default()
            },
        ];
        for c in bad {
            assert!(Sgd::new(c).is_err(), "{c:?}");
        }
        let d = dev();
        let mut opt = Sgd::new(SgdConfig::default())?;
        let w = Tensor::ones([2, 2], DType::F32, &d)?;
        let mut params = vec![Param::new("w", w.clone())];
        let wrong = Tensor::ones([4], DType::F32, &d)?;
        assert!(opt.step(&mut params, &[Some(wrong)], 0.1).is_err());
        assert!(params[0].value.shares_storage_with(&w));
        assert_eq!(opt.steps_taken(), 0);
        // Gradients of another float dtype are cast.
        let half = Tensor::ones([2, 2], DType::F16, &d)?;
        opt.step(&mut params, &[Some(half)], 0.5)?;
        assert_eq!(params[0].value.to_vec::<f32>()?, vec![0.5; 4]);
        Ok(())
    }
}

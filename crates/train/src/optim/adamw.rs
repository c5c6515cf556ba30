//! AdamW (Adam with decoupled weight decay), as `torch.optim.AdamW`.

use std::collections::HashMap;

use glimpse_tensor::{DType, Error, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::{
    Optimizer, Param, StateReader, check_state_fits, check_step_args, check_unique_names,
    count_tensor, master_grad, read_count, step_entry,
};

/// The hyperparameters of [`AdamW`] (the learning rate comes with each step). The defaults
/// are PyTorch's: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    /// Decay rate of the first-moment (mean) estimate.
    pub beta1: f64,
    /// Decay rate of the second-moment (uncentred variance) estimate.
    pub beta2: f64,
    /// Added to the denominator for numerical stability.
    pub eps: f64,
    /// Decoupled weight decay: each step multiplies the parameter by `1 - lr * weight_decay`
    /// (for parameters whose [`Param::weight_decay`] is set).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The moments of one parameter and the number of updates it has received.
#[derive(Clone, Debug)]
struct Moments {
    /// PyTorch counts steps per parameter: a parameter that had no gradient for a while gets
    /// its bias correction from its own updates, not from the global step.
    step: u64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// `torch.optim.AdamW` with PyTorch's single-tensor (`foreach=False`) arithmetic, in the
/// parameter's dtype, with scalars computed in f64 and rounded once as Python floats are:
///
/// ```text
/// param *= 1 - lr * weight_decay                       (parameters with weight decay)
/// exp_avg = exp_avg.lerp(grad, 1 - beta1)
/// exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
/// step_size = lr / (1 - beta1^step)
/// denom = sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps
/// param += -step_size * exp_avg / denom
/// ```
///
/// Saved state: `optim.step` (steps taken), and for every parameter updated at least once
/// `optim.exp_avg.{name}`, `optim.exp_avg_sq.{name}` and `optim.step.{name}` (its own step
/// count, a `U32` scalar).
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    moments: HashMap<String, Moments>,
    steps: u64,
}

const EXP_AVG_KEY: &str = "optim.exp_avg.";
const EXP_AVG_SQ_KEY: &str = "optim.exp_avg_sq.";
const PARAM_STEP_KEY: &str = "optim.step.";

impl AdamW {
    /// An optimizer with no state yet; rejects hyperparameters PyTorch rejects.
    pub fn new(config: AdamWConfig) -> Result<AdamW> {
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = config;
        for (name, beta) in [("beta1", beta1), ("beta2", beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::invalid(
                    "AdamW::new",
                    format!("{name} must be in [0, 1), got {beta}"),
                ));
            }
        }
        for (name, v) in [("eps", eps), ("weight_decay", weight_decay)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::invalid(
                    "AdamW::new",
                    format!("{name} must be finite and >= 0, got {v}"),
                ));
            }
        }
        Ok(AdamW {
            config,
            moments: HashMap::new(),
            steps: 0,
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// One parameter's update: the new value and moments.
    fn update(&self, param: &Param, grad: &Tensor, lr: f64) -> Result<(Tensor, Moments)> {
        let (g, prev, k) = self.prepare(param, grad, lr)?;
        let host_f32 = param.value.dtype() == DType::F32
            && g.dtype() == DType::F32
            && param.value.device().location().backend == "cpu";
        if host_f32 {
            update_host_f32(param, &g, prev, &k)
        } else {
            update_composed(param, &g, prev, &k)
        }
    }

    /// The gradient in the parameter's dtype, the moments so far and the step's coefficients.
    fn prepare(&self, param: &Param, grad: &Tensor, lr: f64) -> Result<(Tensor, Moments, Coeffs)> {
        const OP: &str = "AdamW::step";
        let c = &self.config;
        let g = master_grad(OP, param, grad)?;
        let prev = match self.moments.get(&param.name) {
            Some(m) => {
                check_state_fits(OP, param, "first moment", &m.exp_avg)?;
                check_state_fits(OP, param, "second moment", &m.exp_avg_sq)?;
                m.clone()
            }
            None => Moments {
                step: 0,
                exp_avg: param.value.zeros_like()?,
                exp_avg_sq: param.value.zeros_like()?,
            },
        };
        let step = prev.step + 1;
        // exp_avg.lerp_(grad, 1 - beta1), with PyTorch's two formulas: the one used depends
        // on the weight, for accuracy near either end. PyTorch forms `1 - weight` in the
        // kernel's precision from the already rounded weight (f32 unless the parameter is f64).
        let weight = 1.0 - c.beta1;
        let lerp = if weight.abs() < 0.5 {
            Lerp::FromStart(weight)
        } else {
            Lerp::FromEnd(match param.value.dtype() {
                DType::F64 => 1.0 - weight,
                _ => f64::from(1.0f32 - weight as f32),
            })
        };
        // The step is a float in PyTorch; `powf` is the same libm `pow` Python calls.
        let t = step as f64;
        let bias_correction1 = 1.0 - c.beta1.powf(t);
        let bias_correction2 = 1.0 - c.beta2.powf(t);
        let k = Coeffs {
            step,
            decay: (param.weight_decay && c.weight_decay != 0.0)
                .then_some(1.0 - lr * c.weight_decay),
            lerp,
            beta2: c.beta2,
            one_minus_beta2: 1.0 - c.beta2,
            bias_correction2_sqrt: bias_correction2.sqrt(),
            eps: c.eps,
            neg_step_size: -(lr / bias_correction1),
        };
        Ok((g, prev, k))
    }
}

/// `exp_avg.lerp_(grad, w)` as PyTorch computes it: `m + w (g - m)` for small `w`, else
/// `g - (1 - w) (g - m)` (the value held is the coefficient of that formula).
#[derive(Clone, Copy, Debug)]
enum Lerp {
    FromStart(f64),
    FromEnd(f64),
}

/// The coefficients of one parameter's step, as f64; each is rounded to the parameter's dtype
/// where it is used, as PyTorch does with its Python-float arguments.
#[derive(Clone, Copy, Debug)]
struct Coeffs {
    step: u64,
    /// `1 - lr * weight_decay` where the parameter decays.
    decay: Option<f64>,
    lerp: Lerp,
    beta2: f64,
    one_minus_beta2: f64,
    bias_correction2_sqrt: f64,
    eps: f64,
    /// `-lr / bias_correction1`.
    neg_step_size: f64,
}

/// The update as tensor operations, on any device and dtype.
fn update_composed(
    param: &Param,
    g: &Tensor,
    prev: Moments,
    k: &Coeffs,
) -> Result<(Tensor, Moments)> {
    // `scalar_like(v)` rounds the f64 `v` to the tensor's dtype.
    let s = |v: f64| param.value.scalar_like(v);
    let mut p = param.value.clone();
    if let Some(decay) = k.decay {
        // param.mul_(1 - lr * weight_decay)
        p = p.mul(&s(decay)?)?;
    }
    let m = &prev.exp_avg;
    let diff = g.sub(m)?;
    let exp_avg = match k.lerp {
        Lerp::FromStart(w) => m.add(&diff.mul(&s(w)?)?)?,
        Lerp::FromEnd(c) => g.sub(&diff.mul(&s(c)?)?)?,
    };
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2); addcmul computes
    // `self + value * t1 * t2` left to right.
    let exp_avg_sq = prev
        .exp_avg_sq
        .mul(&s(k.beta2)?)?
        .add(&g.mul(&s(k.one_minus_beta2)?)?.mul(g)?)?;
    // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    let denom = exp_avg_sq
        .sqrt()?
        .div(&s(k.bias_correction2_sqrt)?)?
        .add(&s(k.eps)?)?;
    // param.addcdiv_(exp_avg, denom, value=-step_size): `self + value * t1 / t2`.
    let p = p.add(&exp_avg.mul(&s(k.neg_step_size)?)?.div(&denom)?)?;
    Ok((
        p,
        Moments {
            step: k.step,
            exp_avg,
            exp_avg_sq,
        },
    ))
}

/// The same update for f32 parameters in host memory, in one pass instead of fourteen tensor
/// operations (each of which allocates and walks the whole tensor: for a small model the
/// optimizer was a tenth of a training step). Every element goes through the same f32
/// operations in the same order as [`update_composed`] (Rust never fuses `a * b + c`), so
/// both give the same bits; a test checks it.
fn update_host_f32(
    param: &Param,
    g: &Tensor,
    prev: Moments,
    k: &Coeffs,
) -> Result<(Tensor, Moments)> {
    let f = |v: f64| v as f32;
    let mut p = param.value.to_vec::<f32>()?;
    let g = g.to_vec::<f32>()?;
    let mut m = prev.exp_avg.to_vec::<f32>()?;
    let mut v = prev.exp_avg_sq.to_vec::<f32>()?;
    let decay = k.decay.map(f);
    let (beta2, one_minus_beta2) = (f(k.beta2), f(k.one_minus_beta2));
    let (bc2, eps, neg_step) = (f(k.bias_correction2_sqrt), f(k.eps), f(k.neg_step_size));
    for (((p, &g), m), v) in p.iter_mut().zip(&g).zip(&mut m).zip(&mut v) {
        if let Some(decay) = decay {
            *p *= decay;
        }
        let diff = g - *m;
        *m = match k.lerp {
            Lerp::FromStart(w) => *m + diff * f(w),
            Lerp::FromEnd(c) => g - diff * f(c),
        };
        *v = *v * beta2 + g * one_minus_beta2 * g;
        let denom = v.sqrt() / bc2 + eps;
        *p += *m * neg_step / denom;
    }
    let shape = param.value.shape().clone();
    let device = param.value.device();
    Ok((
        Tensor::from_vec(p, shape.clone(), device)?,
        Moments {
            step: k.step,
            exp_avg: Tensor::from_vec(m, shape.clone(), device)?,
            exp_avg_sq: Tensor::from_vec(v, shape, device)?,
        },
    ))
}

impl Optimizer for AdamW {
    fn step(&mut self, params: &mut [Param], grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        check_step_args("AdamW::step", params, grads, lr)?;
        // Computed first and committed only when every parameter succeeded, so that an error
        // leaves parameters and state as they were.
        let mut updates = Vec::new();
        for (i, (param, grad)) in params.iter().zip(grads).enumerate() {
            if let Some(grad) = grad {
                let (value, moments) = self.update(param, grad, lr)?;
                updates.push((i, value, moments));
            }
        }
        for (i, value, moments) in updates {
            self.moments.insert(params[i].name.clone(), moments);
            params[i].value = value;
        }
        self.steps += 1;
        Ok(())
    }

    fn state(&self, params: &[Param]) -> Result<Vec<(String, Tensor)>> {
        const OP: &str = "AdamW::state";
        check_unique_names(OP, params)?;
        let mut out: Vec<_> = step_entry(OP, self.steps, params)?.into_iter().collect();
        for p in params {
            if let Some(m) = self.moments.get(&p.name) {
                let step = count_tensor(OP, m.step, p.value.device())?;
                out.push((format!("{EXP_AVG_KEY}{}", p.name), m.exp_avg.clone()));
                out.push((format!("{EXP_AVG_SQ_KEY}{}", p.name), m.exp_avg_sq.clone()));
                out.push((format!("{PARAM_STEP_KEY}{}", p.name), step));
            }
        }
        Ok(out)
    }

    fn load_state(&mut self, params: &[Param], state: &HashMap<String, Tensor>) -> Result<()> {
        const OP: &str = "AdamW::load_state";
        check_unique_names(OP, params)?;
        let mut reader = StateReader::new(OP, state);
        let steps = reader.take_steps(params)?;
        let mut moments = HashMap::new();
        for p in params {
            let step_key = format!("{PARAM_STEP_KEY}{}", p.name);
            let exp_avg = reader.take_for(&format!("{EXP_AVG_KEY}{}", p.name), p)?;
            let exp_avg_sq = reader.take_for(&format!("{EXP_AVG_SQ_KEY}{}", p.name), p)?;
            let step = reader.take(&step_key);
            match (exp_avg, exp_avg_sq, step) {
                (Some(exp_avg), Some(exp_avg_sq), Some(step)) => {
                    let step = read_count(OP, &step_key, step)?;
                    moments.insert(
                        p.name.clone(),
                        Moments {
                            step,
                            exp_avg,
                            exp_avg_sq,
                        },
                    );
                }
                (None, None, None) => {}
                _ => {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "incomplete state for parameter `{}`: `{EXP_AVG_KEY}{0}`, \
                             `{EXP_AVG_SQ_KEY}{0}` and `{step_key}` must all be present or \
                             all absent",
                            p.name
                        ),
                    ));
                }
            }
        }
        reader.finish("AdamW")?;
        self.moments = moments;
        self.steps = steps;
        Ok(())
    }

    fn steps_taken(&self) -> u64 {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use glimpse_tensor::Device;
    use proptest::prelude::*;

    use super::*;

    fn dev() -> Device {
        glimpse_cpu::device()
    }

    fn vec_f32(n: usize, seed: u64) -> Vec<f32> {
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

    /// torch.optim.AdamW (foreach=False) on the host: tensor arithmetic in f32, scalars in f64,
    /// one operation at a time in PyTorch's order.
    struct RefAdamW {
        c: AdamWConfig,
        /// Per parameter: (step, exp_avg, exp_avg_sq).
        state: Vec<Option<RefMoments>>,
    }

    type RefMoments = (u64, Vec<f32>, Vec<f32>);

    impl RefAdamW {
        fn step(
            &mut self,
            params: &mut [Vec<f32>],
            decay: &[bool],
            grads: &[Option<Vec<f32>>],
            lr: f64,
        ) {
            let c = self.c;
            for (i, p) in params.iter_mut().enumerate() {
                let Some(g) = &grads[i] else { continue };
                let (mut step, mut m, mut v) =
                    self.state[i]
                        .take()
                        .unwrap_or((0, vec![0.0; p.len()], vec![0.0; p.len()]));
                step += 1;
                if decay[i] {
                    let f = (1.0 - lr * c.weight_decay) as f32;
                    p.iter_mut().for_each(|x| *x *= f);
                }
                let w = (1.0 - c.beta1) as f32;
                for (m, g) in m.iter_mut().zip(g) {
                    *m = if w.abs() < 0.5 {
                        *m + (g - *m) * w
                    } else {
                        g - (g - *m) * (1.0 - w)
                    };
                }
                let (b2, one_minus_b2) = (c.beta2 as f32, (1.0 - c.beta2) as f32);
                for (v, g) in v.iter_mut().zip(g) {
                    *v = *v * b2 + g * one_minus_b2 * g;
                }
                let bc1 = 1.0 - c.beta1.powf(step as f64);
                let bc2 = 1.0 - c.beta2.powf(step as f64);
                let step_size = lr / bc1;
                let bc2_sqrt = bc2.sqrt() as f32;
                for ((p, m), v) in p.iter_mut().zip(&m).zip(&v) {
                    let denom = v.sqrt() / bc2_sqrt + c.eps as f32;
                    *p += -step_size as f32 * m / denom;
                }
                self.state[i] = Some((step, m, v));
            }
        }
    }

    /// The same algorithm entirely in f64, to check the f32 path is not just self-consistent.
    fn adamw_f64(c: AdamWConfig, p: &mut [f64], decay: bool, grads: &[Vec<f64>], lr: f64) {
        let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as f64;
            for i in 0..p.len() {
                if decay {
                    p[i] *= 1.0 - lr * c.weight_decay;
                }
                m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
                v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
                let m_hat = m[i] / (1.0 - c.beta1.powf(t));
                let v_hat = v[i] / (1.0 - c.beta2.powf(t));
                p[i] -= lr * m_hat / (v_hat.sqrt() + c.eps);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn matches_torch_reference(
            beta1 in prop_oneof![Just(0.9), 0.0f64..0.99, Just(0.3)],
            beta2 in prop_oneof![Just(0.999), 0.5f64..0.9999],
            eps in prop_oneof![Just(1e-8), 1e-10f64..1e-3],
            weight_decay in prop_oneof![Just(0.0), 0.0f64..0.3],
            lr in 1e-5f64..0.1,
            rows in 1usize..5,
            cols in 1usize..7,
            seed in 0u64..1000,
        ) {
            let c = AdamWConfig { beta1, beta2, eps, weight_decay };
            let shapes = [vec![rows, cols], vec![cols], vec![2, rows, cols]];
            let d = dev();
            let mut params = Vec::new();
            let mut host = Vec::new();
            for (i, s) in shapes.iter().enumerate() {
                let v = vec_f32(s.iter().product(), seed + i as u64);
                params.push(Param::new(format!("p{i}.weight"), Tensor::from_slice(&v, s.clone(), &d).unwrap()));
                host.push(v);
            }
            let decay: Vec<bool> = params.iter().map(|p| p.weight_decay).collect();
            prop_assert_eq!(&decay, &[true, false, true]);
            let mut opt = AdamW::new(c).unwrap();
            let mut reference = RefAdamW { c, state: vec![None; shapes.len()] };
            for step in 0..7 {
                let mut grads = Vec::new();
                let mut host_grads = Vec::new();
                for (i, s) in shapes.iter().enumerate() {
                    // Parameter 2 has no gradient on the first steps: its own step count
                    // (and so its bias correction) lags the global one.
                    if i == 2 && step < 3 {
                        grads.push(None);
                        host_grads.push(None);
                        continue;
                    }
                    let v = vec_f32(s.iter().product(), seed * 31 + (step * 7 + i) as u64);
                    grads.push(Some(Tensor::from_slice(&v, s.clone(), &d).unwrap()));
                    host_grads.push(Some(v));
                }
                opt.step(&mut params, &grads, lr).unwrap();
                reference.step(&mut host, &decay, &host_grads, lr);
            }
            // The same correctly rounded f32 operations in the same order: the same bits
            // (PyTorch's own CPU kernels fuse the lerp's multiply-add, a difference of 1 ulp).
            for (p, h) in params.iter().zip(&host) {
                for (x, y) in p.value.to_vec::<f32>().unwrap().iter().zip(h) {
                    prop_assert!(x.to_bits() == y.to_bits(), "{} vs {}", x, y);
                }
            }
        }

        /// The one-pass host update and the tensor composition (what other devices and
        /// dtypes run) give the same bits, over several steps of both lerp formulas.
        #[test]
        fn host_pass_matches_composition(
            beta1 in prop_oneof![Just(0.9), 0.0f64..0.99, Just(0.3)],
            weight_decay in prop_oneof![Just(0.0), 0.0f64..0.3],
            lr in 1e-5f64..0.1,
            n in 1usize..40,
            seed in 0u64..1000,
        ) {
            let c = AdamWConfig { beta1, weight_decay, ..AdamWConfig::default() };
            let d = dev();
            let value = Tensor::from_slice(&vec_f32(n, seed), vec![n], &d).unwrap();
            let mut host = AdamW::new(c).unwrap();
            let mut composed = AdamW::new(c).unwrap();
            let (mut p_host, mut p_comp) = (Param::new("w.weight", value.clone()), Param::new("w.weight", value));
            for step in 0..4u64 {
                let g = Tensor::from_slice(&vec_f32(n, seed * 13 + step), vec![n], &d).unwrap();
                for (opt, p, one_pass) in [(&mut host, &mut p_host, true), (&mut composed, &mut p_comp, false)] {
                    let (g, prev, k) = opt.prepare(p, &g, lr).unwrap();
                    let (value, moments) = if one_pass {
                        update_host_f32(p, &g, prev, &k).unwrap()
                    } else {
                        update_composed(p, &g, prev, &k).unwrap()
                    };
                    opt.moments.insert(p.name.clone(), moments);
                    p.value = value;
                }
                let bits = |t: &Tensor| t.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(&p_host.value), bits(&p_comp.value));
                let (mh, mc) = (&host.moments["w.weight"], &composed.moments["w.weight"]);
                prop_assert_eq!(bits(&mh.exp_avg), bits(&mc.exp_avg));
                prop_assert_eq!(bits(&mh.exp_avg_sq), bits(&mc.exp_avg_sq));
            }
        }

        #[test]
        fn close_to_f64_adamw(
            lr in 1e-4f64..1e-2,
            weight_decay in 0.0f64..0.1,
            n in 1usize..20,
            seed in 0u64..1000,
        ) {
            let c = AdamWConfig { weight_decay, ..AdamWConfig::default() };
            let d = dev();
            let init = vec_f32(n, seed);
            let grads: Vec<Vec<f32>> = (0..5).map(|t| vec_f32(n, seed + 100 + t)).collect();
            let mut params = vec![Param::new("w", Tensor::from_slice(&init, [1, n], &d).unwrap())];
            let mut opt = AdamW::new(c).unwrap();
            for g in &grads {
                let g = Tensor::from_slice(g, [1, n], &d).unwrap();
                opt.step(&mut params, &[Some(g)], lr).unwrap();
            }
            let mut expect: Vec<f64> = init.iter().map(|&x| f64::from(x)).collect();
            let grads64: Vec<Vec<f64>> =
                grads.iter().map(|g| g.iter().map(|&x| f64::from(x)).collect()).collect();
            adamw_f64(c, &mut expect, true, &grads64, lr);
            for (x, y) in params[0].value.to_vec::<f32>().unwrap().iter().zip(&expect) {
                prop_assert!((f64::from(*x) - y).abs() <= 1e-5 * (1.0 + y.abs()), "{} vs {}", x, y);
            }
        }
    }

    #[test]
    fn first_step_moves_by_lr() -> Result<()> {
        // With bias correction, the first update is lr * g / (|g| + eps') = lr * sign(g).
        let d = dev();
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        })?;
        let mut params = vec![Param::new("w", Tensor::zeros([1, 3], DType::F32, &d)?)];
        let g = Tensor::from_vec(vec![3.0f32, -0.5, 0.0], [1, 3], &d)?;
        opt.step(&mut params, &[Some(g)], 0.1)?;
        let v = params[0].value.to_vec::<f32>()?;
        assert!((v[0] + 0.1).abs() < 1e-6 && (v[1] - 0.1).abs() < 1e-6 && v[2] == 0.0);
        Ok(())
    }

    #[test]
    fn weight_decay_only_for_flagged_params() -> Result<()> {
        let d = dev();
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: 0.5,
            ..AdamWConfig::default()
        })?;
        let w = Tensor::ones([2, 2], DType::F32, &d)?;
        let mut params = vec![
            Param::new("fc.weight", w.clone()),
            Param::new("ln.weight", w.clone()).with_weight_decay(false),
        ];
        let zero = Tensor::zeros([2, 2], DType::F32, &d)?;
        opt.step(&mut params, &[Some(zero.clone()), Some(zero)], 0.1)?;
        // Zero gradients: only the decay moves the weight, by a factor 1 - 0.1 * 0.5.
        assert_eq!(params[0].value.to_vec::<f32>()?, vec![0.95; 4]);
        assert_eq!(params[1].value.to_vec::<f32>()?, vec![1.0; 4]);
        Ok(())
    }

    #[test]
    fn state_names_and_none_grads() -> Result<()> {
        let d = dev();
        let mut opt = AdamW::new(AdamWConfig::default())?;
        let w = Tensor::ones([2, 2], DType::F32, &d)?;
        let mut params = vec![Param::new("a", w.clone()), Param::new("b", w.clone())];
        opt.step(&mut params, &[None, Some(w.clone())], 0.1)?;
        opt.step(&mut params, &[None, Some(w.clone())], 0.1)?;
        assert!(params[0].value.shares_storage_with(&w));
        let state = opt.state(&params)?;
        let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "optim.step",
                "optim.exp_avg.b",
                "optim.exp_avg_sq.b",
                "optim.step.b"
            ]
        );
        assert_eq!(state[0].1.to_vec::<u32>()?, vec![2]);
        assert_eq!(state[3].1.to_vec::<u32>()?, vec![2]);
        assert_eq!(opt.steps_taken(), 2);
        Ok(())
    }

    fn run(
        opt: &mut AdamW,
        params: &mut [Param],
        steps: std::ops::Range<usize>,
        d: &Device,
    ) -> Result<()> {
        for step in steps {
            let grads = params
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    if i == 1 && step % 2 == 0 {
                        return Ok(None);
                    }
                    let v = vec_f32(p.value.elem_count(), (step * 10 + i) as u64);
                    // Half gradients, as a mixed-precision run produces.
                    Ok(Some(
                        Tensor::from_slice(&v, p.value.shape().clone(), d)?
                            .to_dtype(DType::BF16)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            opt.step(params, &grads, 1e-2 * (1.0 + step as f64).recip())?;
        }
        Ok(())
    }

    #[test]
    fn resume_is_bitwise_identical() -> Result<()> {
        let d = dev();
        let c = AdamWConfig {
            weight_decay: 0.05,
            ..AdamWConfig::default()
        };
        let init = vec![
            Param::new("w", Tensor::from_slice(&vec_f32(12, 1), [3, 4], &d)?),
            Param::new("b", Tensor::from_slice(&vec_f32(4, 2), 4, &d)?),
        ];
        let mut straight = init.clone();
        run(&mut AdamW::new(c)?, &mut straight, 0..9, &d)?;

        let mut resumed = init.clone();
        let mut first = AdamW::new(c)?;
        run(&mut first, &mut resumed, 0..4, &d)?;
        let state: HashMap<_, _> = first.state(&resumed)?.into_iter().collect();
        drop(first);
        let mut second = AdamW::new(c)?;
        second.load_state(&resumed, &state)?;
        assert_eq!(second.steps_taken(), 4);
        run(&mut second, &mut resumed, 4..9, &d)?;
        assert_eq!(second.steps_taken(), 9);
        for (a, b) in straight.iter().zip(&resumed) {
            let (a, b) = (a.value.to_vec::<f32>()?, b.value.to_vec::<f32>()?);
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        Ok(())
    }

    #[test]
    fn load_state_errors() -> Result<()> {
        let d = dev();
        let w = Tensor::ones([2, 3], DType::F32, &d)?;
        let mut params = vec![Param::new("vision.fc.weight", w.clone())];
        let mut opt = AdamW::new(AdamWConfig::default())?;
        opt.step(&mut params, &[Some(w.clone())], 0.1)?;
        let good: HashMap<_, _> = opt.state(&params)?.into_iter().collect();
        AdamW::new(AdamWConfig::default())?.load_state(&params, &good)?;

        let expect_err = |params: &[Param], state: &HashMap<String, Tensor>, needle: &str| {
            let mut fresh = AdamW::new(AdamWConfig::default()).unwrap();
            let err = fresh.load_state(params, state).unwrap_err().to_string();
            assert!(err.contains(needle), "`{err}` should mention `{needle}`");
            assert_eq!(fresh.steps_taken(), 0);
        };
        // Another model: the entry is named.
        let other = vec![Param::new("text.fc.weight", w.clone())];
        expect_err(&other, &good, "optim.exp_avg.vision.fc.weight");
        // Wrong shape and wrong dtype.
        let wide = vec![Param::new(
            "vision.fc.weight",
            Tensor::ones([2, 4], DType::F32, &d)?,
        )];
        expect_err(&wide, &good, "optim.exp_avg.vision.fc.weight");
        let f64s = vec![Param::new("vision.fc.weight", w.to_dtype(DType::F64)?)];
        expect_err(&f64s, &good, "optim.exp_avg.vision.fc.weight");
        // Incomplete per-parameter state.
        let mut partial = good.clone();
        partial.remove("optim.exp_avg_sq.vision.fc.weight");
        expect_err(&params, &partial, "incomplete state");
        // A bad step counter.
        let mut bad_step = good.clone();
        bad_step.insert("optim.step".into(), Tensor::zeros(2, DType::U32, &d)?);
        expect_err(&params, &bad_step, "optim.step");
        let mut no_step = good.clone();
        no_step.remove("optim.step");
        expect_err(&params, &no_step, "optim.step");
        // SGD state is not AdamW state.
        let mut sgd = good.clone();
        sgd.insert("optim.momentum_buffer.vision.fc.weight".into(), w.clone());
        expect_err(&params, &sgd, "optim.momentum_buffer.vision.fc.weight");
        Ok(())
    }

    /// PyTorch's own AdamW steps on tiny ViT and CLIP models (tests/fixtures/train, written by
    /// tests/fixtures/generate/train.py): fed PyTorch's recorded gradients, our AdamW must give
    /// PyTorch's parameters, and `Param::new` its weight-decay groups.
    #[test]
    fn matches_pytorch_fixtures() -> Result<()> {
        use glimpse_tensor::safetensors::SafeTensorsFile;
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/train");
        let d = dev();
        for model in ["vit", "clip"] {
            let dir = root.join(model);
            let info: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("train.json"))
                    .map_err(|e| Error::io(dir.join("train.json"), e))?,
            )
            .map_err(|e| Error::invalid("fixture", e.to_string()))?;
            let num = |k: &str| info[k].as_f64().unwrap();
            let c = AdamWConfig {
                beta1: info["betas"][0].as_f64().unwrap(),
                beta2: info["betas"][1].as_f64().unwrap(),
                eps: num("eps"),
                weight_decay: num("weight_decay"),
            };
            let lr = num("lr");
            let listed = |k: &str| -> Vec<String> {
                info[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            let (decay, no_decay) = (listed("decay"), listed("no_decay"));

            let weights = SafeTensorsFile::open(dir.join("model.safetensors"))?;
            let steps = SafeTensorsFile::open(dir.join("steps.safetensors"))?;
            let mut names: Vec<String> = weights.names().into_iter().map(String::from).collect();
            names.sort();
            let mut params = names
                .iter()
                .map(|n| Ok(Param::new(n.clone(), weights.load(n, &d)?)))
                .collect::<Result<Vec<_>>>()?;
            for p in &params {
                let expected = decay.contains(&p.name);
                assert!(
                    expected || no_decay.contains(&p.name),
                    "{model}: {} in no group",
                    p.name
                );
                assert_eq!(
                    p.weight_decay, expected,
                    "{model}: weight-decay group of {}",
                    p.name
                );
            }

            let mut opt = AdamW::new(c)?;
            for k in 1..=2 {
                let grads = names
                    .iter()
                    .map(|n| steps.load(&format!("step{k}.grad.{n}"), &d).map(Some))
                    .collect::<Result<Vec<_>>>()?;
                opt.step(&mut params, &grads, lr)?;
                let mut worst = 0f32;
                for p in &params {
                    let want = steps
                        .load(&format!("step{k}.param.{}", p.name), &d)?
                        .to_vec::<f32>()?;
                    for (x, y) in p.value.to_vec::<f32>()?.iter().zip(&want) {
                        // PyTorch fuses its lerp's multiply-add (1 ulp), which step 2 compounds.
                        let err = (x - y).abs() / (f32::EPSILON * y.abs().max(1e-3));
                        worst = worst.max(err);
                    }
                }
                assert!(worst <= 4.0, "{model} step {k}: {worst} ulps from PyTorch");
            }
        }
        Ok(())
    }

    #[test]
    fn rejects_bad_config() {
        for c in [
            AdamWConfig {
                beta1: 1.0,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                beta2: -0.1,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                eps: f64::NAN,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                weight_decay: -1.0,
                ..AdamWConfig::default()
            },
        ] {
            assert!(AdamW::new(c).is_err(), "{c:?}");
        }
    }

    #[test]
    fn config_serde_defaults() {
        let c: AdamWConfig = serde_json::from_str(r#"{"weight_decay": 0.1}"#).unwrap();
        assert_eq!(
            c,
            AdamWConfig {
                weight_decay: 0.1,
                ..AdamWConfig::default()
            }
        );
    }
}

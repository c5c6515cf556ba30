//! Gradient clipping by global norm.

use glimpse_tensor::{DType, Error, Result, Tensor};

use super::{check_float_grad, scale_tensor};

/// `torch.nn.utils.clip_grad_norm_` (L2): rescales the gradients in place so that their
/// global norm is at most `max_norm`, and returns the norm they had before clipping.
///
/// As in PyTorch, each gradient's norm is computed on its own (in f32, or f64 for f64
/// gradients), the total is the norm of those norms, and the gradients are multiplied by
/// `max_norm / (total + 1e-6)` only when that is below 1. `None` slots are skipped; with no
/// gradient at all the norm is 0.
///
/// A non-finite total (an overflowed or NaN gradient) is returned, not an error, and the
/// gradients are left untouched: the caller should skip the step (PyTorch would scale every
/// gradient by 0 or NaN). The one host read-back is the total itself.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    const OP: &str = "clip_grad_norm";
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(Error::invalid(
            OP,
            format!("max_norm must be >= 0, got {max_norm}"),
        ));
    }
    let present: Vec<&Tensor> = grads.iter().flatten().collect();
    if present.is_empty() {
        return Ok(0.0);
    }
    for g in &present {
        check_float_grad(OP, g)?;
    }
    let acc = if present.iter().any(|g| g.dtype() == DType::F64) {
        DType::F64
    } else {
        DType::F32
    };
    let norms = present
        .iter()
        .map(|g| g.to_dtype(acc)?.sqr()?.sum_all()?.sqrt()?.reshape(1))
        .collect::<Result<Vec<_>>>()?;
    let norms: Vec<&Tensor> = norms.iter().collect();
    let total_t = Tensor::cat(&norms, 0)?.sqr()?.sum_all()?.sqrt()?;
    let total = match acc {
        DType::F64 => total_t.to_scalar::<f64>()?,
        _ => f64::from(total_t.to_scalar::<f32>()?),
    };
    if !total.is_finite() {
        return Ok(total);
    }
    // PyTorch: `max_norm / (total + 1e-6)` on a tensor of the norm's dtype, which Python
    // evaluates as `(total + 1e-6).reciprocal() * max_norm`.
    let coef = match acc {
        DType::F64 => (total + 1e-6).recip() * max_norm,
        _ => f64::from((total as f32 + 1e-6f32).recip() * max_norm as f32),
    };
    if coef < 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = scale_tensor(g, coef)?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use glimpse_tensor::Device;
    use proptest::prelude::*;

    use super::*;

    fn dev() -> Device {
        glimpse_cpu::device()
    }

    fn grads_from(values: &[Vec<f32>], d: &Device) -> Vec<Option<Tensor>> {
        values
            .iter()
            .map(|v| {
                if v.is_empty() {
                    None
                } else {
                    Some(Tensor::from_slice(v, v.len(), d).unwrap())
                }
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn matches_reference(
            values in prop::collection::vec(prop::collection::vec(-10.0f32..10.0, 0..20), 1..5),
            max_norm in 0.01f64..50.0,
        ) {
            let d = dev();
            let mut grads = grads_from(&values, &d);
            let total = clip_grad_norm(&mut grads, max_norm).unwrap();
            let expect = values
                .iter()
                .flatten()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>()
                .sqrt();
            prop_assert!((total - expect).abs() <= 1e-5 * (1.0 + expect), "{} vs {}", total, expect);
            let coef = max_norm / (expect + 1e-6);
            for (g, v) in grads.iter().zip(&values) {
                match g {
                    None => prop_assert!(v.is_empty()),
                    Some(g) => {
                        let got = g.to_vec::<f32>().unwrap();
                        for (x, y) in got.iter().zip(v) {
                            let want = if coef < 1.0 { f64::from(*y) * coef } else { f64::from(*y) };
                            prop_assert!((f64::from(*x) - want).abs() <= 1e-5 * (1.0 + want.abs()));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn no_clipping_below_threshold() -> Result<()> {
        let d = dev();
        let g = Tensor::from_vec(vec![3.0f32, 4.0], 2, &d)?;
        let mut grads = vec![Some(g.clone()), None];
        assert_eq!(clip_grad_norm(&mut grads, 5.1)?, 5.0);
        // Untouched, not even copied.
        assert!(grads[0].as_ref().unwrap().shares_storage_with(&g));
        assert_eq!(clip_grad_norm(&mut grads, 2.5)?, 5.0);
        let v = grads[0].as_ref().unwrap().to_vec::<f32>()?;
        assert!((v[0] - 1.5).abs() < 1e-6 && (v[1] - 2.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn mixed_dtypes_and_edge_cases() -> Result<()> {
        let d = dev();
        let a = Tensor::from_vec(vec![3.0f32], 1, &d)?.to_dtype(DType::F16)?;
        let b = Tensor::from_vec(vec![4.0f64], [1, 1], &d)?;
        let mut grads = vec![Some(a), Some(b)];
        assert_eq!(clip_grad_norm(&mut grads, 1.0)?, 5.0);
        assert_eq!(grads[0].as_ref().unwrap().dtype(), DType::F16);
        let v0 = grads[0].as_ref().unwrap().to_f64_vec()?[0];
        let v1 = grads[1].as_ref().unwrap().to_f64_vec()?[0];
        assert!((v0 - 0.6).abs() < 1e-3 && (v1 - 0.8).abs() < 1e-6);

        let mut none: Vec<Option<Tensor>> = vec![None, None];
        assert_eq!(clip_grad_norm(&mut none, 1.0)?, 0.0);

        let inf = Tensor::from_vec(vec![f32::INFINITY, 1.0], 2, &d)?;
        let mut grads = vec![Some(inf.clone())];
        assert!(clip_grad_norm(&mut grads, 1.0)?.is_infinite());
        assert!(grads[0].as_ref().unwrap().shares_storage_with(&inf));
        let nan = Tensor::from_vec(vec![f32::NAN], 1, &d)?;
        assert!(clip_grad_norm(&mut [Some(nan)], 1.0)?.is_nan());

        let g = Tensor::ones(2, DType::F32, &d)?;
        assert!(clip_grad_norm(&mut [Some(g.clone())], -1.0).is_err());
        assert!(clip_grad_norm(&mut [Some(g)], f64::NAN).is_err());
        let ids = Tensor::ones(2, DType::U32, &d)?;
        assert!(clip_grad_norm(&mut [Some(ids)], 1.0).is_err());
        Ok(())
    }
}

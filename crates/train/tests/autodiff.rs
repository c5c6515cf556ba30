//! Every gradient rule of the autodiff device against central finite differences, in f64 on
//! the CPU, over random shapes (proptest), broadcast and non-contiguous inputs included.

use glimpse_tensor::{
    AttentionOptions, BinaryOp, DType, Device, GeluKind, PatchEmbedOptions, ReduceOp, Result,
    Tensor, UnaryOp,
};
use glimpse_train::autodiff::{self, Autodiff};
use proptest::prelude::*;

fn cpu() -> Device {
    glimpse_cpu::device()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_normal(0.0, 1.0, shape.to_vec(), DType::F64, seed, &cpu()).unwrap()
}

/// Values in `[lo, hi)`.
fn randu(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Tensor {
    Tensor::rand_uniform(lo, hi, shape.to_vec(), DType::F64, seed, &cpu()).unwrap()
}

/// `c` (a constant of the plain device) on the device of `like`.
fn on(c: &Tensor, like: &Tensor) -> Result<Tensor> {
    if c.device().same_device(like.device()) {
        Ok(c.clone())
    } else {
        Autodiff::lift(like.device(), c)
    }
}

type Op<'a> = dyn Fn(&[Tensor]) -> Result<Tensor> + 'a;

/// The scalar the checks differentiate: `sum(f(inputs) * weights)` with fixed random weights,
/// so that every output element matters with a different factor.
fn weighted(f: &Op<'_>, inputs: &[Tensor], weights: &mut Option<Tensor>) -> Result<Tensor> {
    let out = f(inputs)?;
    let out = if out.dtype() == DType::F64 {
        out
    } else {
        out.to_dtype(DType::F64)?
    };
    let w = match weights {
        Some(w) => w.clone(),
        None => {
            let w = randn(out.dims(), 99);
            *weights = Some(w.clone());
            w
        }
    };
    let w = if out.device().same_device(w.device()) {
        w
    } else {
        Autodiff::lift(out.device(), &w)?
    };
    out.mul(&w)?.sum_all()
}

/// Checks the autodiff gradient of `f` at `inputs` (f64, CPU) against central differences for
/// the inputs listed in `wrt`.
fn check(f: &Op<'_>, inputs: &[Tensor], wrt: &[usize], tol: f64) {
    let mut weights = None;
    // Analytic.
    let ad = Autodiff::wrap(&cpu());
    let vars: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if wrt.contains(&i) {
                Autodiff::var(&ad, t).unwrap()
            } else {
                Autodiff::lift(&ad, t).unwrap()
            }
        })
        .collect();
    let loss = weighted(f, &vars, &mut weights).unwrap();
    let grads = autodiff::backward(&loss).unwrap();
    // The loss on the autodiff device equals the loss on the plain device.
    let plain = weighted(f, inputs, &mut weights)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let recorded = loss.to_scalar::<f64>().unwrap();
    assert!(
        (plain - recorded).abs() <= 1e-12 * (1.0 + plain.abs()),
        "{plain} vs {recorded}"
    );

    for &i in wrt {
        let analytic = grads
            .get(&vars[i])
            .unwrap_or_else(|| panic!("no gradient for input {i}"));
        assert_eq!(analytic.dims(), inputs[i].dims());
        let analytic = analytic.to_vec::<f64>().unwrap();
        let base = inputs[i].contiguous().unwrap().to_vec::<f64>().unwrap();
        let shape = inputs[i].dims().to_vec();
        for j in 0..base.len() {
            let eps = 1e-6 * (1.0 + base[j].abs());
            let mut eval = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut xs = inputs.to_vec();
                xs[i] = Tensor::from_vec(v, shape.clone(), &cpu()).unwrap();
                weighted(f, &xs, &mut weights)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let err = (analytic[j] - numeric).abs();
            assert!(
                err <= tol * (1.0 + numeric.abs()),
                "input {i} element {j}: autodiff {} vs finite difference {numeric}",
                analytic[j]
            );
        }
    }
}

const TOL: f64 = 1e-6;

fn dims() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..5, 1..4)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unary_ops(shape in dims(), seed in 0u64..1000) {
        let general = randn(&shape, seed);
        let positive = randu(&shape, 0.5, 2.0, seed);
        let cases: Vec<(UnaryOp, &Tensor)> = vec![
            (UnaryOp::Neg, &general),
            (UnaryOp::Abs, &general),
            (UnaryOp::Exp, &general),
            (UnaryOp::Log, &positive),
            (UnaryOp::Sqrt, &positive),
            (UnaryOp::Sqr, &general),
            (UnaryOp::Recip, &positive),
            (UnaryOp::Tanh, &general),
            (UnaryOp::Sin, &general),
            (UnaryOp::Cos, &general),
            (UnaryOp::Erf, &general),
            (UnaryOp::Relu, &general),
            (UnaryOp::Sigmoid, &general),
            (UnaryOp::Affine { mul: -1.5, add: 0.25 }, &general),
            (UnaryOp::Powf(2.5), &positive),
            (UnaryOp::Clamp { min: -0.5, max: 0.7 }, &general),
            (UnaryOp::GeluErf, &general),
            (UnaryOp::GeluTanh, &general),
            (UnaryOp::QuickGelu, &general),
        ];
        for (op, x) in cases {
            check(&move |t: &[Tensor]| t[0].unary(op), std::slice::from_ref(x), &[0], TOL);
        }
    }

    #[test]
    fn binary_ops_broadcast_and_transposed(rows in 1usize..5, cols in 1usize..5, seed in 0u64..1000) {
        // lhs is a transposed view, rhs broadcasts along the rows.
        let lhs = randn(&[cols, rows], seed).t().unwrap();
        let rhs = randn(&[cols], seed + 1);
        let rhs_pos = randu(&[cols], 0.5, 2.0, seed + 2);
        let lhs_pos = randu(&[cols, rows], 0.5, 2.0, seed + 3).t().unwrap();
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Maximum, BinaryOp::Minimum] {
            check(&move |t: &[Tensor]| t[0].binary(op, &t[1]), &[lhs.clone(), rhs.clone()], &[0, 1], TOL);
        }
        check(&|t: &[Tensor]| t[0].div(&t[1]), &[lhs.clone(), rhs_pos.clone()], &[0, 1], TOL);
        check(&|t: &[Tensor]| t[0].pow(&t[1]), &[lhs_pos, rhs.clone()], &[0, 1], TOL);
        // The same variable on both sides.
        check(&|t: &[Tensor]| t[0].mul(&t[0]), &[lhs], &[0], TOL);
    }

    #[test]
    fn where_and_reductions(shape in dims(), seed in 0u64..1000) {
        let x = randn(&shape, seed);
        let y = randn(&shape, seed + 1);
        let cond = x.gt(&y).unwrap();
        check(&move |t: &[Tensor]| on(&cond, &t[0])?.where_cond(&t[0], &t[1]), &[x.clone(), y], &[0, 1], TOL);
        for dim in 0..shape.len() {
            for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min] {
                check(&move |t: &[Tensor]| t[0].reduce(op, dim, false), std::slice::from_ref(&x), &[0], TOL);
            }
            check(&move |t: &[Tensor]| t[0].mean(dim), std::slice::from_ref(&x), &[0], TOL);
        }
    }

    #[test]
    fn matmul_batched_broadcast_transposed(b in 1usize..3, m in 1usize..4, k in 1usize..4, n in 1usize..4, seed in 0u64..1000) {
        let a = randn(&[b, m, k], seed);
        // rhs shared by every batch entry (zero batch stride after broadcasting).
        let w = randn(&[k, n], seed + 1);
        check(&|t: &[Tensor]| t[0].matmul(&t[1]), &[a.clone(), w], &[0, 1], TOL);
        // rhs as a transposed view.
        let wt = randn(&[b, n, k], seed + 2).transpose(1, 2).unwrap();
        check(&|t: &[Tensor]| t[0].matmul(&t[1]), &[a, wt], &[0, 1], TOL);
    }

    #[test]
    fn indexing_ops(rows in 1usize..5, cols in 1usize..4, picks in 1usize..6, seed in 0u64..1000) {
        let x = randn(&[rows, cols], seed);
        let ids: Vec<u32> = (0..picks).map(|i| ((i as u64 * 7 + seed) % rows as u64) as u32).collect();
        let ids = Tensor::from_vec(ids, [picks], &cpu()).unwrap();
        let ids2 = ids.clone();
        check(&move |t: &[Tensor]| t[0].index_select(&on(&ids2, &t[0])?, 0), std::slice::from_ref(&x), &[0], TOL);
        // gather along dim 1 with repeated indices
        let gids: Vec<u32> = (0..rows * picks).map(|i| ((i as u64 * 5 + seed) % cols as u64) as u32).collect();
        let gids = Tensor::from_vec(gids, [rows, picks], &cpu()).unwrap();
        let g2 = gids.clone();
        check(&move |t: &[Tensor]| t[0].gather(&on(&g2, &t[0])?, 1), std::slice::from_ref(&x), &[0], TOL);
        // scatter_add into x from src (rows, picks) along dim 1
        let src = randn(&[rows, picks], seed + 3);
        check(&move |t: &[Tensor]| t[0].scatter_add(&on(&gids, &t[0])?, &t[1], 1), &[x.clone(), src], &[0, 1], TOL);
    }

    #[test]
    fn views_concat_copy_cast(rows in 2usize..5, cols in 2usize..5, seed in 0u64..1000) {
        let x = randn(&[rows, cols], seed);
        let y = randn(&[rows, 2], seed + 1);
        check(&|t: &[Tensor]| Tensor::cat(&[&t[0], &t[1]], 1), &[x.clone(), y], &[0, 1], TOL);
        // A narrowed, permuted view copied to contiguous memory (the scatter path of backward).
        check(&|t: &[Tensor]| t[0].narrow(1, 1, 1)?.t()?.contiguous(), std::slice::from_ref(&x), &[0], TOL);
        // A broadcast view summed.
        check(&|t: &[Tensor]| t[0].reshape([rows, 1, cols])?.broadcast_as([rows, 3, cols])?.exp(), std::slice::from_ref(&x), &[0], TOL);
    }

    #[test]
    fn fused_linear_softmax_norm_gelu(m in 1usize..4, k in 1usize..5, n in 1usize..4, seed in 0u64..1000) {
        let x = randn(&[m, k], seed);
        let w = randn(&[n, k], seed + 1);
        let b = randn(&[n], seed + 2);
        check(&|t: &[Tensor]| t[0].linear(&t[1], Some(&t[2])), &[x.clone(), w.clone(), b.clone()], &[0, 1, 2], TOL);
        check(&|t: &[Tensor]| t[0].linear(&t[1], None), &[x.clone(), w], &[0, 1], TOL);
        check(&|t: &[Tensor]| t[0].softmax(-1), std::slice::from_ref(&x), &[0], TOL);
        check(&|t: &[Tensor]| t[0].log_softmax(-1), std::slice::from_ref(&x), &[0], TOL);
        let g = randn(&[k], seed + 3);
        let beta = randn(&[k], seed + 4);
        check(&|t: &[Tensor]| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5), &[x.clone(), g, beta], &[0, 1, 2], 1e-5);
        check(&|t: &[Tensor]| t[0].layer_norm(None, None, 1e-5), std::slice::from_ref(&x), &[0], 1e-5);
        for kind in [GeluKind::Erf, GeluKind::Tanh, GeluKind::Quick] {
            check(&move |t: &[Tensor]| t[0].gelu(kind), std::slice::from_ref(&x), &[0], TOL);
        }
    }

    #[test]
    fn fused_attention(b in 1usize..3, h in 1usize..3, nq in 1usize..5, nk in 1usize..5, d in 1usize..5, causal: bool, seed in 0u64..1000) {
        let q = randn(&[b, h, nq, d], seed);
        let k = randn(&[b, h, nk, d], seed + 1);
        let v = randn(&[b, h, nk, d], seed + 2);
        // The first key always visible so that no row is fully masked.
        let mask: Vec<u32> = (0..b * nk).map(|i| u32::from(i.is_multiple_of(nk) || !(i as u64 + seed).is_multiple_of(3))).collect();
        let mask = Tensor::from_vec(mask, [b, nk], &cpu()).unwrap();
        let causal = causal && nk >= nq;
        check(&move |t: &[Tensor]| {
            let mask = on(&mask, &t[0])?;
            let opts = AttentionOptions { scale: None, causal, key_padding_mask: Some(mask) };
            Ok(Tensor::attention(&t[0], &t[1], &t[2], &opts)?.out)
        }, &[q, k, v], &[0, 1, 2], 1e-5);
    }

    #[test]
    fn fused_patch_embed(b in 1usize..3, c in 1usize..3, gh in 1usize..3, gw in 1usize..3, extra in 0usize..2, cls: bool, seed in 0u64..1000) {
        let p = 2;
        let e = 3;
        // `extra` pixels the convolution never reaches.
        let images = randn(&[b, c, gh * p + extra, gw * p], seed);
        let w = randn(&[e, c, p, p], seed + 1);
        let bias = randn(&[e], seed + 2);
        let rows = gh * gw + usize::from(cls);
        let cls_emb = randn(&[e], seed + 3);
        let pos = randn(&[rows, e], seed + 4);
        check(&move |t: &[Tensor]| {
            let opts = PatchEmbedOptions {
                patch_size: p,
                class_embedding: cls.then(|| t[3].clone()),
                position_embedding: Some(t[4].clone()),
            };
            Tensor::patch_embed(&t[0], &t[1], Some(&t[2]), &opts)
        }, &[images, w, bias, cls_emb, pos], &(if cls { vec![0, 1, 2, 3, 4] } else { vec![0, 1, 2, 4] }), 1e-5);
    }

    #[test]
    fn fused_contrastive(n in 1usize..5, d in 1usize..5, seed in 0u64..1000) {
        let img = randn(&[n, d], seed);
        let txt = randn(&[n, d], seed + 1);
        let scale = Tensor::from_vec(vec![1.7f64], (), &cpu()).unwrap();
        check(&|t: &[Tensor]| Ok(Tensor::contrastive_loss(&t[0], &t[1], &t[2])?.loss), &[img, txt, scale], &[0, 1, 2], 1e-5);
    }
}

#[test]
fn cast_passes_the_gradient_through_in_each_dtype() {
    // d/dx sum(w * f64(f32(x))) = f64(f32(w)): the rule casts the gradient back at each step.
    let ad = Autodiff::wrap(&cpu());
    let x = randn(&[7], 1);
    let w = randn(&[7], 2);
    let v = Autodiff::var(&ad, &x).unwrap();
    let loss = v
        .to_dtype(DType::F32)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .mul(&Autodiff::lift(&ad, &w).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = autodiff::backward(&loss).unwrap().get(&v).unwrap();
    assert_eq!(g.dtype(), DType::F64);
    let expect: Vec<f64> = w
        .to_vec::<f64>()
        .unwrap()
        .iter()
        .map(|&v| f64::from(v as f32))
        .collect();
    assert_eq!(g.to_vec::<f64>().unwrap(), expect);
}

#[test]
fn constants_record_nothing() {
    let ad = Autodiff::wrap(&cpu());
    let x = Autodiff::lift(&ad, &randn(&[3], 1)).unwrap();
    let y = x.exp().unwrap().sum_all().unwrap();
    assert!(!autodiff::requires_grad(&y));
    let v = Autodiff::var(&ad, &randn(&[3], 2)).unwrap();
    assert!(autodiff::requires_grad(&v.exp().unwrap()));
    // Recording off: results are constants even with a variable input.
    let was = Autodiff::of(&ad).unwrap().set_grad_enabled(false);
    assert!(was);
    assert!(!autodiff::requires_grad(&v.exp().unwrap()));
    Autodiff::of(&ad).unwrap().set_grad_enabled(true);
    // A loss that does not depend on a variable gives it no gradient.
    let grads = autodiff::backward(&y).unwrap();
    assert!(grads.get(&v).is_none());
}

#[test]
fn backward_errors() {
    let ad = Autodiff::wrap(&cpu());
    let v = Autodiff::var(&ad, &randn(&[3], 1)).unwrap();
    let err = autodiff::backward(&v.exp().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("one element"), "{err}");
    let plain = randn(&[1], 1);
    let err = autodiff::backward(&plain).unwrap_err().to_string();
    assert!(err.contains("not an autodiff device"), "{err}");
    // Tensors of the plain device do not mix with the autodiff device's.
    assert!(v.add(&randn(&[3], 2)).is_err());
}

#[test]
fn views_of_a_variable_share_its_gradient() {
    // Two narrowed views of one variable, used separately, add up in one gradient.
    let ad = Autodiff::wrap(&cpu());
    let x = randn(&[4, 3], 5);
    let v = Autodiff::var(&ad, &x).unwrap();
    let top = v.narrow(0, 0, 2).unwrap();
    let bottom = v.narrow(0, 1, 3).unwrap();
    let loss = top
        .sum_all()
        .unwrap()
        .add(&bottom.sqr().unwrap().sum_all().unwrap())
        .unwrap();
    let g = autodiff::backward(&loss)
        .unwrap()
        .get(&v)
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    let xs = x.to_vec::<f64>().unwrap();
    for r in 0..4 {
        for c in 0..3 {
            let i = r * 3 + c;
            let expect = f64::from(u8::from(r < 2)) + if r >= 1 { 2.0 * xs[i] } else { 0.0 };
            assert!(
                (g[i] - expect).abs() < 1e-12,
                "{r},{c}: {} vs {expect}",
                g[i]
            );
        }
    }
}

#[test]
fn half_precision_gradients_follow_f32() {
    // bf16 compute: gradients come back in bf16 and agree with f32 to bf16 precision.
    let x = Tensor::rand_normal(0.0, 1.0, [4, 8], DType::F32, 3, &cpu()).unwrap();
    let w = Tensor::rand_normal(0.0, 1.0, [5, 8], DType::F32, 4, &cpu()).unwrap();
    let grad_of = |dtype: DType| {
        let ad = Autodiff::wrap(&cpu());
        let xv = Autodiff::lift(&ad, &x.to_dtype(dtype).unwrap()).unwrap();
        let wv = Autodiff::var(&ad, &w.to_dtype(dtype).unwrap()).unwrap();
        let y = xv
            .linear(&wv, None)
            .unwrap()
            .gelu(GeluKind::Erf)
            .unwrap()
            .softmax(-1)
            .unwrap();
        let r = Tensor::rand_normal(0.0, 1.0, [4, 5], DType::F32, 5, &cpu()).unwrap();
        let r = Autodiff::lift(&ad, &r).unwrap();
        let loss = y
            .to_dtype(DType::F32)
            .unwrap()
            .mul(&r)
            .unwrap()
            .sum_all()
            .unwrap();
        let g = autodiff::backward(&loss).unwrap().get(&wv).unwrap();
        assert_eq!(g.dtype(), dtype);
        g.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap()
    };
    let full = grad_of(DType::F32);
    let half = grad_of(DType::BF16);
    let scale = full.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in full.iter().zip(&half) {
        assert!(
            (a - b).abs() <= 0.03 * scale,
            "{a} vs {b} (largest {scale})"
        );
    }
}

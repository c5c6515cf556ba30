//! The matrix products (`matmul`, `linear`) and the row-wise fused ops (softmax, log-softmax,
//! layer norm and its backward, GELU and its backward) of the wgpu backend against the CPU
//! backend: proptest shapes (odd sizes, edges of the tiles), transposed / narrowed / broadcast
//! views built on both devices, f32 and f16, poisoned outputs.
//!
//! Inputs are built on the CPU and uploaded (`pair`), views are taken on each side.

mod common;

use common::*;
use glimpse_tensor::{DType, Device, GeluKind, Tensor};
use proptest::prelude::*;

/// Proptest cases per property (each case compiles nothing new after the first few: the
/// pipelines are cached, but lavapipe runs the kernels on the CPU).
const CASES: u32 = 40;

/// `|got - want| <= tol(dtype) |want| + tol(F32) f scale` per element, with `f` growing as
/// `sqrt(terms)`: the output's rounding in its dtype plus the f32 accumulation error of a sum
/// of `terms` terms whose absolute values add up to `scale` (both backends compute in f32 and
/// round once, in different orders).
fn assert_sum_close(got: &Tensor, want: &Tensor, scale: &[f64], terms: usize, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: dims");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let t = tol(want.dtype());
    let f = ((terms as f64).sqrt() / 4.0).max(1.0) * tol(DType::F32) / t;
    let scale: Vec<f64> = scale.iter().map(|s| s * f).collect();
    assert_close_scaled(&values(got), &values(want), &scale, t, what);
}

/// `|t|` in f64 on the CPU.
fn abs64(t: &Tensor) -> Tensor {
    t.to_device(&cpu())
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
}

/// `scale + |b|` (`b` on the CPU, broadcast), or `scale` without `b`.
fn plus_abs(scale: Tensor, b: Option<&Pair>) -> Tensor {
    match b {
        Some(b) => scale.add(&abs64(&b.cpu)).unwrap(),
        None => scale,
    }
}

/// `x` as f64 `(rows, cols)` on the CPU, centered per row, and `1 / sqrt(var + eps)` per row
/// `(rows, 1)`: what the sizes of layer-norm terms are measured with.
fn centered_rstd(x: &Tensor, eps: f64) -> (Tensor, Tensor) {
    let cols = *x.dims().last().unwrap();
    let rows = x.elem_count() / cols.max(1);
    let xf = x
        .to_dtype(DType::F64)
        .unwrap()
        .reshape([rows, cols])
        .unwrap();
    let centered = xf.sub(&xf.mean_keepdim(1).unwrap()).unwrap();
    let rstd = centered
        .sqr()
        .unwrap()
        .mean_keepdim(1)
        .unwrap()
        .affine(1.0, eps)
        .unwrap()
        .sqrt()
        .unwrap()
        .recip()
        .unwrap();
    (centered, rstd)
}

/// A pair of `shape` laid out as `kind`, values uniform in `[-1, 1)`.
fn unit_pair(shape: &[usize], dtype: DType, kind: Kind, rng: &mut Gen, g: &Device) -> Pair {
    pair(shape, dtype, kind, Values::Uniform(-1.0, 1.0), rng, g)
}

/// `data` as a contiguous `shape` tensor on the CPU and the same values on the device.
fn uploaded(data: &[f64], shape: &[usize], dtype: DType, g: &Device) -> Pair {
    let cpu = tensor(data, shape, dtype, &cpu());
    Pair {
        gpu: cpu.to_device(g).unwrap(),
        cpu,
    }
}

/// Picks one side of a [`Pair`]: [`on_gpu`] or [`on_cpu`].
type On = fn(&Pair) -> &Tensor;

fn on_gpu(p: &Pair) -> &Tensor {
    &p.gpu
}

fn on_cpu(p: &Pair) -> &Tensor {
    &p.cpu
}

/// `op` run on the device's operands and on the CPU's: `(got, want)`.
fn both<R>(op: impl Fn(On) -> R) -> (R, R) {
    (op(on_gpu), op(on_cpu))
}

/// `op` gives the same result on both sides within `tol(dtype)` ([`assert_matches`]).
fn assert_op(what: &str, op: impl Fn(On) -> glimpse_tensor::Result<Tensor>) {
    let (got, want) = both(op);
    assert_matches(&got.unwrap(), &want.unwrap(), what);
}

/// `f` applied to both sides of `p` (the same view on each device).
fn map(p: &Pair, f: impl Fn(&Tensor) -> Tensor) -> Pair {
    Pair {
        cpu: f(&p.cpu),
        gpu: f(&p.gpu),
    }
}

/// `lead` with `cols` appended.
fn with_cols(lead: &[usize], cols: usize) -> Vec<usize> {
    [lead, &[cols]].concat()
}

/// A property checked on `cases` strategy values on the device, serialised with the other
/// tests of this binary (see [`check`]).
fn prop<S>(name: &str, cases: u32, strategy: S, test: impl Fn(&Device, S::Value))
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let _serial = serial();
    check(name, cases, strategy, |g, v| {
        test(g, v);
        Ok(())
    });
}

/// `test` on the device for each float dtype, serialised with the other tests of this binary;
/// skips without an adapter (see [`gpu`]).
fn each_float(name: &str, test: impl Fn(&Device, DType)) {
    let _serial = serial();
    let Some(g) = gpu(name) else {
        return;
    };
    for dtype in floats() {
        test(&g, dtype);
    }
}

// ---------------------------------------------------------------------------------- matmul

/// An operand `(batch.., rows, cols)` laid out as `kind`, or stored `(batch.., cols, rows)` and
/// transposed, with values uniform in `[-2, 2)`.
#[allow(clippy::too_many_arguments)]
fn operand(
    batch: &[usize],
    rows: usize,
    cols: usize,
    dtype: DType,
    kind: Kind,
    transposed: bool,
    rng: &mut Gen,
    g: &Device,
) -> Pair {
    let vals = Values::Uniform(-2.0, 2.0);
    operand_of(batch, [rows, cols], dtype, kind, transposed, vals, rng, g)
}

/// [`operand`] with values drawn from `vals`.
#[allow(clippy::too_many_arguments)]
fn operand_of(
    batch: &[usize],
    [rows, cols]: [usize; 2],
    dtype: DType,
    kind: Kind,
    transposed: bool,
    vals: Values,
    rng: &mut Gen,
    g: &Device,
) -> Pair {
    let mut shape = batch.to_vec();
    if transposed {
        shape.extend([cols, rows]);
        map(&pair(&shape, dtype, kind, vals, rng, g), |t| t.t().unwrap())
    } else {
        shape.extend([rows, cols]);
        pair(&shape, dtype, kind, vals, rng, g)
    }
}

/// Checks `a @ b` against the CPU, scaled by `|a| @ |b|`.
fn check_matmul(a: &Pair, b: &Pair, what: &str) {
    let (got, want) = both(|on| on(a).matmul(on(b)).unwrap());
    let scale = values(&abs64(&a.cpu).matmul(&abs64(&b.cpu)).unwrap());
    let k = a.cpu.dims()[a.cpu.rank() - 1];
    assert_sum_close(&got, &want, &scale, k, what);
}

#[test]
fn matmul_matches_cpu() {
    prop(
        "matmul_matches_cpu",
        CASES,
        (
            shape_in(0, 2, 0),
            (0usize..70, 0usize..70, 0usize..70),
            any_float(),
            (any_kind(), any_kind()),
            (any::<bool>(), any::<bool>()),
            any::<u64>(),
        ),
        |g, (out_batch, (m, k, n), dtype, (ka, kb), (ta, tb), seed)| {
            let mut rng = Gen::new(seed);
            let ba = broadcastable_to(&out_batch, &mut rng);
            let bb = broadcastable_to(&out_batch, &mut rng);
            let a = operand(&ba, m, k, dtype, ka, ta, &mut rng, g);
            let b = operand(&bb, k, n, dtype, kb, tb, &mut rng, g);
            check_matmul(
                &a,
                &b,
                &format!("{dtype} a {ba:?}+{m}x{k} {ka:?} t{ta}, b {bb:?}+{k}x{n} {kb:?} t{tb}"),
            );
        },
    );
}

#[test]
fn matmul_larger_products() {
    prop(
        "matmul_larger_products",
        6,
        (
            (60usize..200, 60usize..300, 60usize..200),
            1usize..3,
            any_float(),
            (any::<bool>(), any::<bool>()),
            any::<u64>(),
        ),
        |g, ((m, k, n), batch, dtype, (ta, tb), seed)| {
            let mut rng = Gen::new(seed);
            let a = operand(&[batch], m, k, dtype, Kind::Contiguous, ta, &mut rng, g);
            let b = operand(&[], k, n, dtype, Kind::Narrowed, tb, &mut rng, g);
            check_matmul(&a, &b, &format!("{dtype} {batch}x{m}x{k}x{n} t{ta} t{tb}"));
        },
    );
}

#[test]
fn matmul_edge_cases() {
    each_float("matmul_edge_cases", |g, dtype| {
        // k = 0: zeros over a poisoned output.
        let a = Tensor::zeros([2, 3, 0], dtype, g).unwrap();
        let b = Tensor::zeros([0, 4], dtype, g).unwrap();
        let y = a.matmul(&b).unwrap();
        assert_eq!(y.dims(), &[2, 3, 4]);
        assert_eq!(values(&y), vec![0.0; 24], "{dtype} k = 0");
        // Empty outputs.
        let a = Tensor::zeros([0, 5], dtype, g).unwrap();
        let b = Tensor::zeros([5, 3], dtype, g).unwrap();
        assert_eq!(a.matmul(&b).unwrap().dims(), &[0, 3]);
        // Batch dims that do not merge (permuted), and a broadcast rhs batch.
        let mut rng = Gen::new(3);
        let a = unit_pair(&[3, 4, 5, 6], dtype, Kind::Permuted, &mut rng, g);
        let b = unit_pair(&[3, 4, 6, 2], dtype, Kind::PermutedNarrowed, &mut rng, g);
        check_matmul(&a, &b, &format!("{dtype} permuted batches"));
        let b = unit_pair(&[1, 6, 2], dtype, Kind::Narrowed, &mut rng, g);
        let b = map(&b, |t| t.broadcast_as([4, 6, 2]).unwrap());
        let a2 = operand(&[4], 5, 6, dtype, Kind::Contiguous, true, &mut rng, g);
        check_matmul(&a2, &b, &format!("{dtype} broadcast rhs batch"));
        // More batch entries than one dispatch's 65535 workgroups along z.
        let contiguous = Kind::Contiguous;
        let a = operand(&[70_000], 2, 3, dtype, contiguous, false, &mut rng, g);
        let b = operand(&[1], 3, 2, dtype, contiguous, true, &mut rng, g);
        let b = map(&b, |t| t.broadcast_as([70_000, 3, 2]).unwrap());
        check_matmul(&a, &b, &format!("{dtype} 70000 batches"));
    });
}

#[test]
fn matmul_f32_accumulates_exactly_where_the_cpu_does() {
    // Integers: every partial sum is exact in f32, so the products must be equal.
    let name = "matmul_f32_accumulates_exactly_where_the_cpu_does";
    each_float(name, |g, dtype| {
        let rng = &mut Gen::new(9);
        let ints = Values::Ints(-3, 3);
        let a = operand_of(&[2], [67, 45], dtype, Kind::Narrowed, true, ints, rng, g);
        let b = pair(&[2, 45, 33], dtype, Kind::Permuted, ints, rng, g);
        let (got, want) = both(|on| on(&a).matmul(on(&b)).unwrap());
        assert_same(&got, &want, &format!("{dtype} integer products"));
    });
}

// ---------------------------------------------------------------------------------- linear

#[test]
fn linear_matches_cpu() {
    prop(
        "linear_matches_cpu",
        CASES,
        (
            (0usize..70, 0usize..70, 0usize..70),
            any_float(),
            (any_kind(), any_kind(), any::<bool>()),
            prop::option::of(any_kind()),
            any::<u64>(),
        ),
        |g, ((m, k, n), dtype, (kx, kw, tw), kb, seed)| {
            let mut rng = Gen::new(seed);
            let x = operand(&[], m, k, dtype, kx, false, &mut rng, g);
            let w = operand(&[], n, k, dtype, kw, tw, &mut rng, g);
            let b = kb.map(|kb| pair(&[n], dtype, kb, Values::Uniform(-2.0, 2.0), &mut rng, g));
            let (got, want) = both(|on| on(&x).linear(on(&w), b.as_ref().map(on)).unwrap());
            let scale = abs64(&x.cpu).matmul(&abs64(&w.cpu).t().unwrap()).unwrap();
            let scale = plus_abs(scale, b.as_ref());
            assert_sum_close(
                &got,
                &want,
                &values(&scale),
                k + 1,
                &format!("{dtype} x {m}x{k} {kx:?}, w {n}x{k} {kw:?} t{tw}, bias {kb:?}"),
            );
        },
    );
}

#[test]
fn linear_with_leading_dims_and_k_zero() {
    each_float("linear_with_leading_dims_and_k_zero", |g, dtype| {
        let mut rng = Gen::new(5);
        let w = unit_pair(&[7, 9], dtype, Kind::Narrowed, &mut rng, g);
        let b = unit_pair(&[7], dtype, Kind::Contiguous, &mut rng, g);
        // Leading dims that merge in place, and ones that need a copy.
        for kind in [Kind::Contiguous, Kind::Narrowed, Kind::Permuted] {
            let x = unit_pair(&[3, 5, 9], dtype, kind, &mut rng, g);
            let got = g.backend().linear(&x.gpu, &w.gpu, Some(&b.gpu)).unwrap();
            // The composition rounds the product before adding the bias: take its f32 result.
            let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = glimpse_tensor::compose::linear(&f(&x.cpu), &f(&w.cpu), Some(&f(&b.cpu)))
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let scale = abs64(&x.cpu)
                .matmul(&abs64(&w.cpu).t().unwrap())
                .unwrap()
                .add(&abs64(&b.cpu))
                .unwrap();
            assert_sum_close(
                &got,
                &want,
                &values(&scale),
                10,
                &format!("{dtype} {kind:?}"),
            );
        }
        // K = 0: the bias alone (and zeros without one), over poisoned outputs.
        let x = Tensor::zeros([4, 0], dtype, g).unwrap();
        let w0 = Tensor::zeros([7, 0], dtype, g).unwrap();
        let y = x.linear(&w0, Some(&b.gpu)).unwrap();
        let want = b.cpu.broadcast_as([4, 7]).unwrap().contiguous().unwrap();
        assert_same(&y, &want, &format!("{dtype} k = 0 with bias"));
        let y = x.linear(&w0, None).unwrap();
        assert_eq!(values(&y), vec![0.0; 28], "{dtype} k = 0");
    });
}

// ---------------------------------------------------------------------------------- softmax

/// Row lengths: small and odd, or longer than a workgroup (several strides per invocation).
fn cols() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 1usize..70, 1 => 200usize..1200]
}

#[test]
fn softmax_and_log_softmax_match_cpu() {
    prop(
        "softmax_and_log_softmax_match_cpu",
        CASES,
        (
            shape_in(0, 2, 1),
            cols(),
            any_float(),
            any_kind(),
            any::<bool>(),
            any::<u64>(),
        ),
        |g, (lead, cols, dtype, kind, other_dim, seed)| {
            let mut rng = Gen::new(seed);
            let shape = with_cols(&lead, cols);
            let x = pair(&shape, dtype, kind, Values::Uniform(-8.0, 8.0), &mut rng, g);
            // Along another dim: the tensor crate hands the kernel a transposed view.
            let dim = if other_dim && !lead.is_empty() {
                0
            } else {
                shape.len() - 1
            };
            let what = format!("{dtype} {shape:?} {kind:?} dim {dim}");
            assert_op(&format!("softmax {what}"), |on| on(&x).softmax(dim));
            assert_op(&format!("log_softmax {what}"), |on| on(&x).log_softmax(dim));
        },
    );
}

#[test]
fn softmax_masked_rows_and_many_rows() {
    let inf = f64::INFINITY;
    // Row 0: some -inf; row 1: all -inf (zeros / -inf, as the CPU backend); row 2: plain.
    let data = [
        1.0, -inf, 2.0, -inf, 0.5, //
        -inf, -inf, -inf, -inf, -inf, //
        3.0, -1.0, 0.0, 2.5, -7.0,
    ];
    each_float("softmax_masked_rows_and_many_rows", |g, dtype| {
        let x = uploaded(&data, &[3, 5], dtype, g);
        assert_op(&format!("{dtype} masked softmax"), |on| on(&x).softmax(1));
        assert_op(&format!("{dtype} masked log_softmax"), |on| {
            on(&x).log_softmax(1)
        });
        // More rows than one dispatch's 65535 workgroups.
        let mut rng = Gen::new(1);
        let vals = Values::Uniform(-4.0, 4.0);
        let x = pair(&[70_000, 3], dtype, Kind::Narrowed, vals, &mut rng, g);
        assert_op(&format!("{dtype} 70000 rows"), |on| on(&x).softmax(1));
    });
}

// ---------------------------------------------------------------------------------- layer norm

/// A `(cols)` weight or bias laid out as `kind` (Broadcast: one value, stride 0).
fn column(cols: usize, dtype: DType, kind: Kind, rng: &mut Gen, g: &Device) -> Pair {
    pair(&[cols], dtype, kind, Values::Uniform(-2.0, 2.0), rng, g)
}

#[test]
fn layer_norm_matches_cpu() {
    prop(
        "layer_norm_matches_cpu",
        CASES,
        (
            shape_in(0, 2, 0),
            cols(),
            any_float(),
            any_kind(),
            (prop::option::of(any_kind()), prop::option::of(any_kind())),
            prop::sample::select(vec![1e-5, 1e-2, 0.5]),
            any::<u64>(),
        ),
        |g, (lead, cols, dtype, kind, (kw, kb), eps, seed)| {
            let mut rng = Gen::new(seed);
            let shape = with_cols(&lead, cols);
            let x = pair(&shape, dtype, kind, Values::Uniform(-3.0, 3.0), &mut rng, g);
            let w = kw.map(|k| column(cols, dtype, k, &mut rng, g));
            let b = kb.map(|k| column(cols, dtype, k, &mut rng, g));
            let (got, want) = both(|on| {
                let (w, b) = (w.as_ref().map(on), b.as_ref().map(on));
                on(&x).layer_norm(w, b, eps).unwrap()
            });
            // Rounding of x - mean is amplified by rstd (large for nearly constant rows): scale
            // |x| rstd |weight| per element, plus |bias| and 1.
            let (_, rstd) = centered_rstd(&x.cpu, eps);
            let mut scale = abs64(&x.cpu)
                .reshape([rstd.dims()[0], cols])
                .unwrap()
                .mul(&rstd)
                .unwrap()
                .affine(1.0, 1.0)
                .unwrap();
            if let Some(w) = &w {
                scale = scale.mul(&abs64(&w.cpu)).unwrap();
            }
            scale = plus_abs(scale, b.as_ref());
            assert_sum_close(
                &got,
                &want,
                &values(&scale),
                cols,
                &format!("{dtype} {shape:?} {kind:?} w {kw:?} b {kb:?} eps {eps}"),
            );
            assert_eq!(got.dtype(), dtype);
        },
    );
}

#[test]
fn layer_norm_backward_matches_cpu() {
    prop(
        "layer_norm_backward_matches_cpu",
        CASES,
        (
            prop_oneof![3 => shape_in(0, 2, 0), 1 => (300usize..900).prop_map(|r| vec![r])],
            cols(),
            any_float(),
            (any_kind(), any_kind()),
            prop::option::of(any_kind()),
            prop::sample::select(vec![1e-5, 1e-2]),
            any::<u64>(),
        ),
        |g, (lead, cols, dtype, (kx, kg), kw, eps, seed)| {
            let mut rng = Gen::new(seed);
            let shape = with_cols(&lead, cols);
            let x = pair(&shape, dtype, kx, Values::Uniform(-3.0, 3.0), &mut rng, g);
            let d = pair(&shape, dtype, kg, Values::Uniform(-2.0, 2.0), &mut rng, g);
            let w = kw.map(|k| column(cols, dtype, k, &mut rng, g));
            let (got, want) = both(|on| {
                let w = w.as_ref().map(on);
                on(&x).layer_norm_backward(w, eps, on(&d)).unwrap()
            });
            let what = format!("{dtype} {shape:?} x {kx:?} d_out {kg:?} w {kw:?} eps {eps}");
            // dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), scaled by the sizes of
            // its terms; the column sums by the sums of |terms| over the rows.
            let rows = x.cpu.elem_count() / cols;
            let g_abs = abs64(&d.cpu).reshape([rows, cols]).unwrap();
            let (centered, rstd) = centered_rstd(&x.cpu, eps);
            // |xhat| plus the rounding of x - mean amplified by rstd (constant rows).
            let x_abs = abs64(&x.cpu).reshape([rows, cols]).unwrap();
            let xhat = centered
                .abs()
                .unwrap()
                .add(&x_abs)
                .unwrap()
                .mul(&rstd)
                .unwrap();
            let dxhat = match &w {
                Some(w) => g_abs.mul(&abs64(&w.cpu)).unwrap(),
                None => g_abs.clone(),
            };
            let m2 = dxhat.mul(&xhat).unwrap().mean_keepdim(1).unwrap();
            let dx_scale = dxhat
                .add(&dxhat.mean_keepdim(1).unwrap())
                .unwrap()
                .add(&xhat.mul(&m2).unwrap())
                .unwrap()
                .mul(&rstd)
                .unwrap();
            assert_sum_close(
                &got.dx,
                &want.dx,
                &values(&dx_scale),
                cols,
                &format!("dx {what}"),
            );
            let db_scale = values(&g_abs.sum(0).unwrap());
            assert_sum_close(
                &got.dbias,
                &want.dbias,
                &db_scale,
                rows,
                &format!("dbias {what}"),
            );
            assert_eq!(got.dweight.is_some(), w.is_some(), "{what}");
            if let (Some(gw), Some(ww)) = (&got.dweight, &want.dweight) {
                let dw_scale = values(&g_abs.mul(&xhat).unwrap().sum(0).unwrap());
                assert_sum_close(gw, ww, &dw_scale, rows, &format!("dweight {what}"));
            }
        },
    );
}

#[test]
fn layer_norm_edge_cases() {
    each_float("layer_norm_edge_cases", |g, dtype| {
        let mut rng = Gen::new(2);
        // No rows: empty dx, zero column sums.
        let x = Tensor::zeros([0, 6], dtype, g).unwrap();
        let w = Tensor::ones([6], dtype, g).unwrap();
        let grads = x.layer_norm_backward(Some(&w), 1e-5, &x).unwrap();
        assert_eq!(grads.dx.dims(), &[0, 6]);
        assert_eq!(values(&grads.dbias), vec![0.0; 6]);
        assert_eq!(values(&grads.dweight.unwrap()), vec![0.0; 6]);
        assert_eq!(x.layer_norm(Some(&w), None, 1e-5).unwrap().dims(), &[0, 6]);
        // One column: x - mean = 0 everywhere.
        let x = unit_pair(&[5, 1], dtype, Kind::Contiguous, &mut rng, g);
        assert_op(&format!("{dtype} one column"), |on| {
            on(&x).layer_norm(None, None, 1e-5)
        });
        // More rows than one dispatch's 65535 workgroups.
        let x = unit_pair(&[70_000, 3], dtype, Kind::Permuted, &mut rng, g);
        let (got, want) = both(|on| values(&on(&x).layer_norm(None, None, 1e-5).unwrap()));
        assert_close_scaled(
            &got,
            &want,
            &[2.0],
            tol(dtype),
            &format!("{dtype} 70000 rows"),
        );
    });
}

// ---------------------------------------------------------------------------------- gelu

const KINDS_GELU: [GeluKind; 3] = [GeluKind::Erf, GeluKind::Tanh, GeluKind::Quick];

/// GELU of `x` and its backward with `d` as the upstream gradient, against the CPU.
fn check_gelu(x: &Pair, d: &Pair, kind: GeluKind, what: &str) {
    assert_op(&format!("gelu {what}"), |on| on(x).gelu(kind));
    assert_op(&format!("gelu_backward {what}"), |on| {
        on(x).gelu_backward(on(d), kind)
    });
}

#[test]
fn gelu_and_its_gradient_match_cpu() {
    prop(
        "gelu_and_its_gradient_match_cpu",
        CASES,
        (
            shape_in(1, 3, 0),
            any_float(),
            (any_kind(), any_kind()),
            prop::sample::select(KINDS_GELU.to_vec()),
            any::<u64>(),
        ),
        |g, (shape, dtype, (kx, kg), gk, seed)| {
            let mut rng = Gen::new(seed);
            let x = pair(&shape, dtype, kx, Values::Uniform(-6.0, 6.0), &mut rng, g);
            let d = pair(&shape, dtype, kg, Values::Uniform(-2.0, 2.0), &mut rng, g);
            let what = format!("{dtype} {shape:?} {kx:?}/{kg:?} {gk:?}");
            check_gelu(&x, &d, gk, &what);
        },
    );
}

#[test]
fn gelu_special_values() {
    // Both branches of erf and tanh, their switch points, large magnitudes and zeros.
    let xs = [
        -100.0, -20.0, -10.0, -5.0, -3.9, -2.0, -0.93, -0.92, -0.63, -0.62, -1e-3, -1e-6, 0.0,
        1e-6, 1e-3, 0.62, 0.63, 0.92, 0.93, 2.0, 3.9, 4.1, 5.0, 10.0, 20.0, 100.0,
    ];
    let ds = vec![1.5; xs.len()];
    each_float("gelu_special_values", |g, dtype| {
        let x = uploaded(&xs, &[xs.len()], dtype, g);
        let d = uploaded(&ds, &[xs.len()], dtype, g);
        for kind in KINDS_GELU {
            check_gelu(&x, &d, kind, &format!("{dtype} {kind:?}"));
        }
    });
}

// ---------------------------------------------------------------------------------- queue

#[test]
fn no_op_reads_back_before_the_result_is_downloaded() {
    let _serial = serial();
    let Some((g, be)) = wgpu("no_op_reads_back_before_the_result_is_downloaded") else {
        return;
    };
    let mut rng = Gen::new(4);
    let x = unit_pair(&[6, 40], DType::F32, Kind::Permuted, &mut rng, &g);
    let w = unit_pair(&[40, 40], DType::F32, Kind::Contiguous, &mut rng, &g);
    let b = unit_pair(&[40], DType::F32, Kind::Contiguous, &mut rng, &g);
    be.synchronize().unwrap();
    let before = be.stats();
    let y = x.gpu.linear(&w.gpu, Some(&b.gpu)).unwrap();
    let y = y.matmul(&w.gpu).unwrap();
    let y = y
        .layer_norm(
            Some(&w.gpu.narrow(0, 1, 1).unwrap().squeeze(0).unwrap()),
            Some(&b.gpu),
            1e-5,
        )
        .unwrap();
    let y = y.gelu(GeluKind::Tanh).unwrap();
    let grads = y.layer_norm_backward(Some(&b.gpu), 1e-5, &y).unwrap();
    let s = grads.dx.softmax(1).unwrap().log_softmax(0).unwrap();
    let gb = s.gelu_backward(&grads.dx, GeluKind::Erf).unwrap();
    let mid = be.stats();
    assert_eq!(mid.readbacks, before.readbacks, "an op read back");
    assert!(mid.dispatches > before.dispatches);
    assert!(values(&gb).iter().all(|v| v.is_finite()));
    assert!(
        values(&grads.dweight.unwrap())
            .iter()
            .all(|v| v.is_finite())
    );
}

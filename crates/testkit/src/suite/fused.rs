//! The fused ops of a backend against the CPU backend, on the same inputs.
//!
//! Every check draws its inputs on the host, builds the same tensors (same values, same views:
//! permuted, narrowed, misaligned) on both devices, runs the op on each and compares: the
//! device's outputs must be NaN-free (with poisoned allocations an element a kernel forgets to
//! write fails), `-inf` must match `-inf`, and the rest must satisfy
//! `||device - cpu|| <= rtol ||cpu|| + atol sqrt(n)` with per-dtype tolerances. Shapes come from
//! proptest and cross the usual tile boundaries (32, 64, 128 rows; 1024 columns).

use glimpse_tensor::{
    AttentionOptions, DType, Device, GeluKind, Layout, PatchEmbedOptions, Tensor,
};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::{Gen, Target, cpu};

// ---------------------------------------------------------------------------------- setup

/// `n` values uniform in `[lo, hi)`.
fn draw(g: &mut Gen, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|_| g.range(lo, hi) as f32).collect()
}

/// A contiguous tensor of `dtype` holding `data` (rounded once to the dtype) on `dev`.
fn make(data: &[f32], shape: &[usize], dtype: DType, dev: &Device) -> Tensor {
    let t = match dtype {
        DType::F32 => Tensor::from_slice(data, shape, dev),
        DType::F16 => Tensor::from_vec(
            data.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(),
            shape,
            dev,
        ),
        DType::BF16 => Tensor::from_vec(
            data.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(),
            shape,
            dev,
        ),
        other => panic!("no test data for {other}"),
    };
    t.unwrap()
}

/// The same tensor on both devices.
fn both(data: &[f32], shape: &[usize], dtype: DType, gpu: &Device) -> (Tensor, Tensor) {
    (
        make(data, shape, dtype, &cpu()),
        make(data, shape, dtype, gpu),
    )
}

/// A copy of `t` (any device) on `dev`, contiguous.
fn to_dev(t: &Tensor, dev: &Device) -> Tensor {
    let host = t.to_host().unwrap();
    let storage = dev.backend().upload(host.as_slice()).unwrap();
    Tensor::from_storage(storage, Layout::contiguous(t.shape().clone()), dev.clone()).unwrap()
}

/// The spacing of a dtype's values below its normal range (its smallest subnormal).
fn subnormal_step(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2f64.powi(-24),
        DType::BF16 => 2f64.powi(-133),
        DType::F32 => 2f64.powi(-149),
        DType::F64 => f64::from_bits(1),
        DType::U32 => 0.0,
    }
}

/// Relative tolerance (of the norm) and absolute tolerance per element, per dtype, times the
/// target's factor.
fn tols(t: &Target, dtype: DType) -> (f64, f64) {
    let (rtol, atol) = match dtype {
        DType::F32 => (2e-5, 1e-6),
        DType::F16 => (4e-3, 1e-4),
        _ => (2e-2, 1e-3),
    };
    let f = t.factor(dtype);
    (rtol * f, atol * f)
}

/// The absolute floors `(dq and dv, dk)` of an attention-gradient comparison, from the
/// per-element `atol` of the dtype. Each gradient element sums up to max(Nq, Nk) rounded
/// terms. dk can be all cancellation besides (one key: dS = P (dP - delta) is zero up to
/// rounding, so the CPU's dk is pure noise, each term carrying the rounding of a length-D or
/// Dv dot product), so its floor also grows with the dot-product length.
pub fn attention_grad_atols(atol: f64, nq: usize, nk: usize, d: usize, dv: usize) -> (f64, f64) {
    let terms = nq.max(nk).max(1) as f64;
    (
        atol * terms.sqrt(),
        atol * (terms * d.max(dv) as f64).sqrt(),
    )
}

/// Compares the device's result with the CPU's (see the module docs): same dims and dtype, no
/// NaN where the CPU has none, equal infinities, and `||device - cpu|| <= rtol ||cpu|| + atol
/// sqrt(n)` over the finite elements.
pub fn close(
    what: &str,
    got: &Tensor,
    want: &Tensor,
    rtol: f64,
    atol: f64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.dims(), want.dims(), "{}: shapes", what);
    prop_assert_eq!(got.dtype(), want.dtype(), "{}: dtypes", what);
    let g = got.to_f64_vec().unwrap();
    let w = want.to_f64_vec().unwrap();
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        prop_assert!(!a.is_nan(), "{}: NaN at {} (cpu {})", what, i, b);
        if b.is_infinite() || a.is_infinite() {
            prop_assert!(a == b, "{}: at {} device {} vs cpu {}", what, i, a, b);
            continue;
        }
        if b.is_nan() {
            continue;
        }
        diff += (a - b) * (a - b);
        norm += b * b;
    }
    let (diff, norm) = (diff.sqrt(), norm.sqrt());
    let bound = rtol * norm + atol * (g.len() as f64).sqrt();
    prop_assert!(
        diff <= bound,
        "{}: ||device - cpu|| = {:e} > {:e} (||cpu|| = {:e}, {} elements)",
        what,
        diff,
        bound,
        norm,
        g.len()
    );
    Ok(())
}

/// Sizes biased toward tile edges.
fn size(max: usize) -> impl Strategy<Value = usize> {
    let edges: Vec<usize> = [1, 2, 31, 32, 33, 63, 64, 65, 127, 128, 129, 197, 256, 300]
        .into_iter()
        .filter(|&e| e <= max)
        .collect();
    prop_oneof![1..=max, prop::sample::select(edges)]
}

// ---------------------------------------------------------------------------------- norm

#[derive(Clone, Debug)]
struct RowCase {
    rows: usize,
    cols: usize,
    dtype: DType,
    transposed: bool,
    neg_inf: bool,
    seed: u64,
}

fn row_case(t: &Target) -> impl Strategy<Value = RowCase> {
    (
        1..24usize,
        prop_oneof![1..=300usize, 1000..1100usize, 2040..2100usize],
        t.any_float(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(rows, cols, dtype, transposed, neg_inf, seed)| RowCase {
            rows,
            cols,
            dtype,
            transposed,
            neg_inf,
            seed,
        })
}

/// The case's input on both devices: (rows, cols), possibly a transposed view of
/// (cols, rows) data, with some -inf entries and a fully -inf row when asked.
fn row_input(c: &RowCase, gpu: &Device) -> (Tensor, Tensor) {
    let mut g = Gen::new(c.seed);
    let mut data = draw(&mut g, c.rows * c.cols, -6.0, 6.0);
    if c.neg_inf {
        for (i, x) in data.iter_mut().enumerate() {
            if i % 7 == 3 || i / c.cols == 0 {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    if c.transposed {
        let (a, b) = both(&data, &[c.cols, c.rows], c.dtype, gpu);
        (a.t().unwrap(), b.t().unwrap())
    } else {
        both(&data, &[c.rows, c.cols], c.dtype, gpu)
    }
}

/// Softmax and log-softmax over the last dim of (rows, cols) inputs, cols up to 2100
/// (several passes of a row), transposed views, and rows with -inf entries or all -inf.
pub fn softmax_and_log_softmax_match_cpu(t: &Target) {
    t.run(
        "softmax_and_log_softmax_match_cpu",
        48,
        row_case(t),
        |gpu, c| {
            let (x_cpu, x_gpu) = row_input(&c, gpu);
            let (rtol, atol) = tols(t, c.dtype);
            close(
                "softmax",
                &x_gpu.softmax(-1).unwrap(),
                &x_cpu.softmax(-1).unwrap(),
                rtol,
                atol,
            )?;
            close(
                "log_softmax",
                &x_gpu.log_softmax(-1).unwrap(),
                &x_cpu.log_softmax(-1).unwrap(),
                rtol,
                atol * 10.0,
            )
        },
    );
}

/// Layer norm over the last dim, with and without weight and bias, plain and transposed
/// inputs, cols up to 2100.
pub fn layer_norm_matches_cpu(t: &Target) {
    let strategy = (row_case(t), any::<bool>(), any::<bool>());
    t.run(
        "layer_norm_matches_cpu",
        48,
        strategy,
        |gpu, (c, with_w, with_b)| {
            let c = RowCase {
                neg_inf: false,
                ..c
            };
            let (x_cpu, x_gpu) = row_input(&c, gpu);
            let mut g = Gen::new(c.seed.wrapping_add(1));
            let w = draw(&mut g, c.cols, 0.5, 1.5);
            let b = draw(&mut g, c.cols, -1.0, 1.0);
            let (w_cpu, w_gpu) = both(&w, &[c.cols], c.dtype, gpu);
            let (b_cpu, b_gpu) = both(&b, &[c.cols], c.dtype, gpu);
            let pick = |on: bool, x: &Tensor| on.then(|| x.clone());
            let want = x_cpu
                .layer_norm(
                    pick(with_w, &w_cpu).as_ref(),
                    pick(with_b, &b_cpu).as_ref(),
                    1e-5,
                )
                .unwrap();
            let got = x_gpu
                .layer_norm(
                    pick(with_w, &w_gpu).as_ref(),
                    pick(with_b, &b_gpu).as_ref(),
                    1e-5,
                )
                .unwrap();
            let (rtol, atol) = tols(t, c.dtype);
            close("layer_norm", &got, &want, rtol, atol)
        },
    );
}

/// The three gelus (erf, tanh, quick) on plain and transposed inputs.
pub fn gelu_matches_cpu(t: &Target) {
    let kinds = prop::sample::select(vec![GeluKind::Erf, GeluKind::Tanh, GeluKind::Quick]);
    t.run(
        "gelu_matches_cpu",
        32,
        (row_case(t), kinds),
        |gpu, (c, kind)| {
            let c = RowCase {
                neg_inf: false,
                ..c
            };
            let (x_cpu, x_gpu) = row_input(&c, gpu);
            let (rtol, atol) = tols(t, c.dtype);
            close(
                "gelu",
                &x_gpu.gelu(kind).unwrap(),
                &x_cpu.gelu(kind).unwrap(),
                rtol,
                atol,
            )
        },
    );
}

// ---------------------------------------------------------------------------------- attention

/// How the (B, H, N, D) inputs are laid out.
#[derive(Clone, Copy, Debug)]
enum AttnLayout {
    Contiguous,
    /// A permuted (B, N, H, D) tensor, as split heads of a projection.
    Permuted,
    /// The first D of D + 3 columns, from element 3: misaligned rows.
    Narrowed,
}

#[derive(Clone, Debug)]
struct AttnCase {
    b: usize,
    h: usize,
    nq: usize,
    nk: usize,
    d: usize,
    dv: usize,
    dtype: DType,
    causal: bool,
    mask: bool,
    layout: AttnLayout,
    scale: Option<f64>,
    seed: u64,
}

fn attn_case(t: &Target, max_n: usize) -> impl Strategy<Value = AttnCase> {
    let dims = prop::sample::select(vec![32usize, 64, 80, 128, 16, 40, 8]);
    let layouts = prop::sample::select(vec![
        AttnLayout::Contiguous,
        AttnLayout::Permuted,
        AttnLayout::Narrowed,
    ]);
    (
        (1..=2usize, 1..=3usize, size(max_n), size(max_n)),
        (
            dims,
            prop_oneof![
                4 => Just(None),
                1 => prop::sample::select(vec![24usize, 64, 96]).prop_map(Some),
            ],
        ),
        t.any_float(),
        (any::<bool>(), any::<bool>(), layouts),
        (
            prop_oneof![
                3 => Just(None),
                1 => (0.05f64..0.5).prop_map(Some),
                // Negative scales reverse the score order (the largest product gets the least
                // weight): kernels may not take the row max of unscaled scores.
                1 => (-0.5f64..-0.05).prop_map(Some),
            ],
            any::<u64>(),
        ),
    )
        .prop_map(
            |((b, h, nq, nk), (d, dv), dtype, (causal, mask, layout), (scale, seed))| AttnCase {
                b,
                h,
                nq,
                nk,
                d,
                dv: dv.unwrap_or(d),
                dtype,
                causal,
                mask,
                layout,
                scale,
                seed,
            },
        )
}

/// A (B, H, N, D) input of the case's layout on both devices.
fn attn_input(c: &AttnCase, n: usize, d: usize, g: &mut Gen, gpu: &Device) -> (Tensor, Tensor) {
    let (b, h) = (c.b, c.h);
    match c.layout {
        AttnLayout::Contiguous => both(
            &draw(g, b * h * n * d, -2.0, 2.0),
            &[b, h, n, d],
            c.dtype,
            gpu,
        ),
        AttnLayout::Permuted => {
            let (x, y) = both(
                &draw(g, b * n * h * d, -2.0, 2.0),
                &[b, n, h, d],
                c.dtype,
                gpu,
            );
            (
                x.permute(&[0, 2, 1, 3]).unwrap(),
                y.permute(&[0, 2, 1, 3]).unwrap(),
            )
        }
        AttnLayout::Narrowed => {
            let (x, y) = both(
                &draw(g, b * h * n * (d + 3), -2.0, 2.0),
                &[b, h, n, d + 3],
                c.dtype,
                gpu,
            );
            (x.narrow(3, 3, d).unwrap(), y.narrow(3, 3, d).unwrap())
        }
    }
}

struct AttnInputs {
    cpu: [Tensor; 3],
    gpu: [Tensor; 3],
    opts_cpu: AttentionOptions,
    opts_gpu: AttentionOptions,
}

fn attn_inputs(c: &AttnCase, gpu: &Device) -> AttnInputs {
    let mut g = Gen::new(c.seed);
    let (q0, q1) = attn_input(c, c.nq, c.d, &mut g, gpu);
    let (k0, k1) = attn_input(c, c.nk, c.d, &mut g, gpu);
    let (v0, v1) = attn_input(c, c.nk, c.dv, &mut g, gpu);
    let mask = c.mask.then(|| {
        // About a quarter of the keys masked; batch 0 loses every key when the seed says so.
        let all_off = g.next_u64().is_multiple_of(4);
        let m: Vec<u32> = (0..c.b * c.nk)
            .map(|i| {
                let kept = !g.next_u64().is_multiple_of(4);
                let batch0_off = all_off && i < c.nk;
                u32::from(kept && !batch0_off)
            })
            .collect();
        (
            Tensor::from_vec(m.clone(), [c.b, c.nk], &cpu()).unwrap(),
            Tensor::from_vec(m, [c.b, c.nk], gpu).unwrap(),
        )
    });
    let opts = |m: Option<Tensor>| AttentionOptions {
        scale: c.scale,
        causal: c.causal,
        key_padding_mask: m,
    };
    AttnInputs {
        opts_cpu: opts(mask.as_ref().map(|m| m.0.clone())),
        opts_gpu: opts(mask.map(|m| m.1)),
        cpu: [q0, k0, v0],
        gpu: [q1, k1, v1],
    }
}

fn check_attention_forward(t: &Target, c: &AttnCase) -> Result<(), TestCaseError> {
    let gpu = &t.device;
    let x = attn_inputs(c, gpu);
    let [q0, k0, v0] = &x.cpu;
    let [q1, k1, v1] = &x.gpu;
    let want = Tensor::attention(q0, k0, v0, &x.opts_cpu).unwrap();
    let got = Tensor::attention(q1, k1, v1, &x.opts_gpu).unwrap();
    let (rtol, atol) = tols(t, c.dtype);
    close("attention out", &got.out, &want.out, rtol, atol)?;
    let lse_tol = (if c.dtype == DType::F32 { 1e-5 } else { 1e-4 }) * t.factor(c.dtype);
    close("attention lse", &got.lse, &want.lse, lse_tol, lse_tol)
}

/// Attention forward (out and log-sum-exp) on random shapes: batch, heads, query and key
/// counts at and around tile edges (up to 300), head dims 8 to 128 and a different value dim,
/// causal or not, key-padding masks (all keys of batch 0 masked, sometimes), custom scales
/// (negative ones too), contiguous, head-split (permuted) and misaligned (narrowed) inputs.
pub fn attention_forward_matches_cpu(t: &Target) {
    t.run(
        "attention_forward_matches_cpu",
        96,
        attn_case(t, 300),
        |_, c| check_attention_forward(t, &c),
    );
}

/// Attention forward at the target's head dims: more queries than keys with a causal mask
/// (the first rows see nothing), a single key, the ViT-B shape (197 tokens), masked.
pub fn attention_forward_edge_cases(t: &Target) {
    // More queries than keys with a causal mask (the first rows see nothing), a single key,
    // and the ViT-B shape, for every dtype and every head dim of the target (CUDA: those of
    // its tensor-core kernels).
    for &dtype in &t.floats {
        for &d in &t.head_dims {
            for (nq, nk, causal) in [
                (300, 70, true),
                (65, 1, false),
                (197, 197, false),
                (129, 300, true),
            ] {
                let c = AttnCase {
                    b: 2,
                    h: 2,
                    nq,
                    nk,
                    d,
                    dv: d,
                    dtype,
                    causal,
                    mask: true,
                    layout: AttnLayout::Permuted,
                    scale: None,
                    seed: (nq * 1000 + nk + d) as u64,
                };
                check_attention_forward(t, &c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
            }
        }
    }
}

fn check_attention_backward(t: &Target, c: &AttnCase) -> Result<(), TestCaseError> {
    let gpu = &t.device;
    let x = attn_inputs(c, gpu);
    let [q0, k0, v0] = &x.cpu;
    let [q1, k1, v1] = &x.gpu;
    // The same forward results and output gradient on both sides.
    let fwd = Tensor::attention(q0, k0, v0, &x.opts_cpu).unwrap();
    let mut g = Gen::new(c.seed.wrapping_add(7));
    let (g0, g1) = both(
        &draw(&mut g, c.b * c.h * c.nq * c.dv, -1.0, 1.0),
        &[c.b, c.h, c.nq, c.dv],
        c.dtype,
        gpu,
    );
    let fwd_gpu = glimpse_tensor::AttentionOutput {
        out: to_dev(&fwd.out, gpu),
        lse: to_dev(&fwd.lse, gpu),
    };
    let want = Tensor::attention_backward(q0, k0, v0, &fwd, &g0, &x.opts_cpu).unwrap();
    let got = Tensor::attention_backward(q1, k1, v1, &fwd_gpu, &g1, &x.opts_gpu).unwrap();
    let (rtol, atol) = tols(t, c.dtype);
    let (atol, atol_dk) = attention_grad_atols(atol, c.nq, c.nk, c.d, c.dv);
    close("dq", &got.dq, &want.dq, rtol, atol)?;
    close("dk", &got.dk, &want.dk, rtol, atol_dk)?;
    close("dv", &got.dv, &want.dv, rtol, atol)
}

/// Attention backward (dq, dk, dv) from the same forward results and output gradient on
/// both sides, on random shapes as [`attention_forward_matches_cpu`] (up to 200 tokens).
pub fn attention_backward_matches_cpu(t: &Target) {
    t.run(
        "attention_backward_matches_cpu",
        48,
        attn_case(t, 200),
        |_, c| check_attention_backward(t, &c),
    );
}

/// Attention backward at the target's head dims: query and key counts crossing 64-row
/// tiles, causal with Nq != Nk both ways, a single key and query, masks, each input layout.
pub fn attention_backward_edge_cases(t: &Target) {
    // On CUDA: the tensor-core backward (half types, every head dim it takes) and the
    // CUDA-core one (f32). Query and key counts crossing the 64-row tiles, causal with Nq != Nk both ways
    // (the first rows see nothing when Nq > Nk), a single key and query, masks that drop every
    // key of batch 0 (seed dependent), and each input layout.
    let layouts = [
        AttnLayout::Permuted,
        AttnLayout::Contiguous,
        AttnLayout::Narrowed,
    ];
    for &dtype in &t.floats {
        for &d in &t.head_dims {
            for (i, (nq, nk, causal, mask)) in [
                (300, 70, true, true),
                (65, 1, false, false),
                (1, 1, false, false),
                (197, 197, false, true),
                (129, 300, true, false),
                (64, 64, true, true),
            ]
            .into_iter()
            .enumerate()
            {
                let c = AttnCase {
                    b: 2,
                    h: 2,
                    nq,
                    nk,
                    d,
                    dv: d,
                    dtype,
                    causal,
                    mask,
                    layout: layouts[i % layouts.len()],
                    scale: None,
                    seed: (nq * 1000 + nk + d) as u64,
                };
                check_attention_backward(t, &c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------- patch_embed

#[derive(Clone, Debug)]
struct PatchCase {
    b: usize,
    c: usize,
    p: usize,
    h: usize,
    w: usize,
    e: usize,
    dtype: DType,
    bias: bool,
    cls: bool,
    pos: bool,
    /// 0: contiguous; 1: an NHWC tensor permuted to NCHW (W not contiguous); 2: a window of a
    /// larger image (offset rows).
    layout: u8,
    seed: u64,
}

fn patch_case(t: &Target) -> impl Strategy<Value = PatchCase> {
    (
        (
            1..=3usize,
            1..=4usize,
            prop::sample::select(vec![1usize, 3, 8, 14, 16]),
        ),
        (0..=5usize, 0..=4usize, 0..=15usize),
        (size(300), t.any_float()),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0..=2u8,
            any::<u64>(),
        ),
    )
        .prop_map(
            |((b, c, p), (gh, gw, extra), (e, dtype), (bias, cls, pos, layout, seed))| PatchCase {
                b,
                c,
                p,
                h: (gh + 1) * p + extra % p.max(1),
                w: (gw + 1) * p + (extra / 2) % p.max(1),
                e,
                dtype,
                bias,
                cls,
                pos,
                layout,
                seed,
            },
        )
}

/// Patch embedding on random shapes: 1-4 channels, patch sizes 1 to 16, images with
/// partial patches (dropped), embedding dims up to 300, with or without bias, class token and
/// position embeddings, contiguous, NHWC-permuted and windowed (offset) images.
pub fn patch_embed_matches_cpu(t: &Target) {
    t.run("patch_embed_matches_cpu", 64, patch_case(t), |gpu, c| {
        let mut g = Gen::new(c.seed);
        let (img0, img1) = match c.layout {
            0 => both(
                &draw(&mut g, c.b * c.c * c.h * c.w, -1.0, 1.0),
                &[c.b, c.c, c.h, c.w],
                c.dtype,
                gpu,
            ),
            1 => {
                let (x, y) = both(
                    &draw(&mut g, c.b * c.h * c.w * c.c, -1.0, 1.0),
                    &[c.b, c.h, c.w, c.c],
                    c.dtype,
                    gpu,
                );
                (
                    x.permute(&[0, 3, 1, 2]).unwrap(),
                    y.permute(&[0, 3, 1, 2]).unwrap(),
                )
            }
            _ => {
                let (x, y) = both(
                    &draw(&mut g, c.b * c.c * (c.h + 2) * (c.w + 8), -1.0, 1.0),
                    &[c.b, c.c, c.h + 2, c.w + 8],
                    c.dtype,
                    gpu,
                );
                let cut = |t: Tensor| t.narrow(2, 1, c.h).unwrap().narrow(3, 8, c.w).unwrap();
                (cut(x), cut(y))
            }
        };
        let k = c.c * c.p * c.p;
        let (w0, w1) = both(
            &draw(&mut g, c.e * k, -0.5, 0.5),
            &[c.e, c.c, c.p, c.p],
            c.dtype,
            gpu,
        );
        let (b0, b1) = both(&draw(&mut g, c.e, -1.0, 1.0), &[c.e], c.dtype, gpu);
        let (cls0, cls1) = both(&draw(&mut g, c.e, -1.0, 1.0), &[c.e], c.dtype, gpu);
        let rows = (c.h / c.p) * (c.w / c.p) + usize::from(c.cls);
        let (pos0, pos1) = both(
            &draw(&mut g, rows * c.e, -1.0, 1.0),
            &[rows, c.e],
            c.dtype,
            gpu,
        );
        let opts = |cls: &Tensor, pos: &Tensor| PatchEmbedOptions {
            patch_size: c.p,
            class_embedding: c.cls.then(|| cls.clone()),
            position_embedding: c.pos.then(|| pos.clone()),
        };
        let want =
            Tensor::patch_embed(&img0, &w0, c.bias.then_some(&b0), &opts(&cls0, &pos0)).unwrap();
        let got =
            Tensor::patch_embed(&img1, &w1, c.bias.then_some(&b1), &opts(&cls1, &pos1)).unwrap();
        let (rtol, atol) = tols(t, c.dtype);
        close("patch_embed", &got, &want, rtol, atol)
    });
}

/// Patch embedding at the models' shapes: ViT-B/16 at 224 pixels and CLIP-L/14 (a patch
/// size that is not a multiple of 8), with bias, class token and positions.
pub fn patch_embed_vit_shape(t: &Target) {
    let gpu = &t.device;
    // ViT-B/16 at 224 pixels (CUDA's mma path for half types) and CLIP-L/14 (P % 8 != 0).
    for &dtype in &t.floats {
        for (p, e) in [(16usize, 768usize), (14, 1024)] {
            let (b, c, hw) = (2, 3, 224);
            let mut g = Gen::new(p as u64);
            let (img0, img1) = both(
                &draw(&mut g, b * c * hw * hw, -1.0, 1.0),
                &[b, c, hw, hw],
                dtype,
                gpu,
            );
            let (w0, w1) = both(
                &draw(&mut g, e * c * p * p, -0.1, 0.1),
                &[e, c, p, p],
                dtype,
                gpu,
            );
            let (b0, b1) = both(&draw(&mut g, e, -1.0, 1.0), &[e], dtype, gpu);
            let (cls0, cls1) = both(&draw(&mut g, e, -1.0, 1.0), &[e], dtype, gpu);
            let rows = (hw / p) * (hw / p) + 1;
            let (pos0, pos1) = both(&draw(&mut g, rows * e, -1.0, 1.0), &[rows, e], dtype, gpu);
            let opts = |cls: &Tensor, pos: &Tensor| PatchEmbedOptions {
                patch_size: p,
                class_embedding: Some(cls.clone()),
                position_embedding: Some(pos.clone()),
            };
            let want = Tensor::patch_embed(&img0, &w0, Some(&b0), &opts(&cls0, &pos0)).unwrap();
            let got = Tensor::patch_embed(&img1, &w1, Some(&b1), &opts(&cls1, &pos1)).unwrap();
            let (rtol, atol) = tols(t, dtype);
            close(
                &format!("patch_embed {dtype} P{p}"),
                &got,
                &want,
                rtol,
                atol,
            )
            .unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------- contrastive

#[derive(Clone, Debug)]
struct ClipCase {
    n: usize,
    d: usize,
    dtype: DType,
    scale: f64,
    d_loss: f64,
    /// Rows of a wider (N, D + 8) buffer, from column 8 (strided rows).
    strided: bool,
    seed: u64,
}

fn clip_case(t: &Target) -> impl Strategy<Value = ClipCase> {
    (
        size(300),
        prop_oneof![
            1..=100usize,
            prop::sample::select(vec![8usize, 16, 64, 512])
        ],
        t.any_float(),
        (
            prop::sample::select(vec![1.0f64, 14.285, 100.0]),
            -2.0f64..2.0,
        ),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(n, d, dtype, (scale, d_loss), strided, seed)| ClipCase {
            n,
            d,
            dtype,
            scale,
            d_loss,
            strided,
            seed,
        })
}

/// Unit-norm rows, as CLIP's embeddings, on both devices.
fn clip_input(c: &ClipCase, g: &mut Gen, gpu: &Device) -> (Tensor, Tensor) {
    let width = if c.strided { c.d + 8 } else { c.d };
    let mut data = draw(g, c.n * width, -1.0, 1.0);
    for row in data.chunks_mut(width) {
        let norm = row[..c.d]
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(1e-6);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    let (x, y) = both(&data, &[c.n, width], c.dtype, gpu);
    if c.strided {
        (x.narrow(1, 8, c.d).unwrap(), y.narrow(1, 8, c.d).unwrap())
    } else {
        (x, y)
    }
}

fn check_contrastive(t: &Target, c: &ClipCase) -> Result<(), TestCaseError> {
    let gpu = &t.device;
    let mut g = Gen::new(c.seed);
    let (img0, img1) = clip_input(c, &mut g, gpu);
    let (txt0, txt1) = clip_input(c, &mut g, gpu);
    let scale0 = Tensor::from_vec(vec![c.scale as f32], (), &cpu()).unwrap();
    let scale1 = Tensor::from_vec(vec![c.scale as f32], (), gpu).unwrap();
    let want = Tensor::contrastive_loss(&img0, &txt0, &scale0).unwrap();
    let got = Tensor::contrastive_loss(&img1, &txt1, &scale1).unwrap();
    // Logits reach |scale|; their f32 rounding differs between the two sides' products.
    let lse_tol = (if c.dtype == DType::F32 { 2e-6 } else { 1e-5 }) * t.factor(c.dtype);
    close(
        "loss",
        &got.loss,
        &want.loss,
        lse_tol * 10.0,
        lse_tol * c.scale,
    )?;
    close(
        "lse_rows",
        &got.lse_rows,
        &want.lse_rows,
        lse_tol,
        lse_tol * c.scale,
    )?;
    close(
        "lse_cols",
        &got.lse_cols,
        &want.lse_cols,
        lse_tol,
        lse_tol * c.scale,
    )?;

    // Backward from the same saved statistics on both sides.
    let saved_gpu = glimpse_tensor::ContrastiveOutput {
        loss: to_dev(&want.loss, gpu),
        lse_rows: to_dev(&want.lse_rows, gpu),
        lse_cols: to_dev(&want.lse_cols, gpu),
    };
    let dl0 = Tensor::from_vec(vec![c.d_loss as f32], (), &cpu()).unwrap();
    let dl1 = Tensor::from_vec(vec![c.d_loss as f32], (), gpu).unwrap();
    let want_g = Tensor::contrastive_loss_backward(&img0, &txt0, &scale0, &want, &dl0).unwrap();
    let got_g = Tensor::contrastive_loss_backward(&img1, &txt1, &scale1, &saved_gpu, &dl1).unwrap();
    // The logits' rounding (about 1e-7 relative on each side) is multiplied by the scale
    // inside exp(), so f32 gradients agree to about 1e-5, not f32's 1e-6.
    let (rtol, atol) = match c.dtype {
        DType::F32 => (1e-4 * t.factor(c.dtype), 1e-6 * t.factor(c.dtype)),
        dtype => tols(t, dtype),
    };
    // Each side rounds its stored gradients to the dtype's grid, whose step never falls below
    // the smallest subnormal's (f16: 2^-24); a small d_loss puts f16 gradients there, where
    // one step is several percent of an element and the sides may round apart by one.
    let atol = (atol * c.d_loss.abs() * c.scale / c.n as f64).max(subnormal_step(c.dtype));
    close("d_image", &got_g.d_image, &want_g.d_image, rtol, atol)?;
    close("d_text", &got_g.d_text, &want_g.d_text, rtol, atol)?;
    // d_scale sums N^2 terms that largely cancel: compare against their scale.
    let ds_tol = (if c.dtype == DType::F32 { 1e-4 } else { 2e-3 }) * t.factor(c.dtype);
    close(
        "d_scale",
        &got_g.d_scale,
        &want_g.d_scale,
        ds_tol,
        ds_tol * c.d_loss.abs(),
    )
}

/// The CLIP contrastive loss (loss, row and column log-sum-exps) and its gradients (both
/// embeddings, the scale) from the same saved statistics, on random N (up to 300) and D
/// (up to 512), scales up to 100, unit-norm rows, contiguous or strided.
pub fn contrastive_loss_matches_cpu(t: &Target) {
    t.run("contrastive_loss_matches_cpu", 64, clip_case(t), |_, c| {
        check_contrastive(t, &c)
    });
}

/// The contrastive loss and its gradients at a large N (the target's, default 12 000; D = 16),
/// f32 and one 16-bit float (bf16 where the target holds it, else f16): large enough that
/// CUDA's backward holds its gradient weights in 2 (bf16) or 3 (f32) strips, and that any
/// backend tiles both N axes many times.
pub fn contrastive_loss_at_large_n(t: &Target) {
    let half = [DType::BF16, DType::F16].into_iter().find(|&d| t.holds(d));
    for dtype in std::iter::once(DType::F32).chain(half) {
        let c = ClipCase {
            n: t.contrastive_large_n,
            d: 16,
            dtype,
            scale: 14.285,
            d_loss: 0.75,
            strided: false,
            seed: 5,
        };
        check_contrastive(t, &c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

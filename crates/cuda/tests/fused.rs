//! The fused ops of the CUDA backend against the CPU backend, on the same inputs.
//!
//! Every test draws its inputs on the host, builds the same tensors (same values, same views:
//! permuted, narrowed, misaligned) on both devices, runs the op on each and compares: CUDA
//! outputs must be NaN-free (fresh allocations are poisoned with NaN, so an element a kernel
//! forgets to write fails), `-inf` must match `-inf`, and the rest must satisfy
//! `||cuda - cpu|| <= rtol ||cpu|| + atol sqrt(n)` with per-dtype tolerances. Shapes come from
//! proptest and cross the kernels' tile boundaries (32, 64, 128 rows; 1024 columns).
//!
//! Without a usable CUDA device each test prints why it skips and passes;
//! `GLIMPSE_REQUIRE_CUDA=1` makes a missing device a failure.

use glimpse_tensor::{
    AttentionOptions, DType, Device, GeluKind, Layout, PatchEmbedOptions, Tensor,
};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

mod common;

use common::{Gen, cpu, gpu};

// ---------------------------------------------------------------------------------- setup

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// `n` values uniform in `[lo, hi)`.
fn draw(g: &mut Gen, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|_| g.range(lo, hi) as f32).collect()
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

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
fn pair(data: &[f32], shape: &[usize], dtype: DType, gpu: &Device) -> (Tensor, Tensor) {
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

/// Relative tolerance (of the norm) and absolute tolerance per element, per dtype.
fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (2e-5, 1e-6),
        DType::F16 => (4e-3, 1e-4),
        _ => (2e-2, 1e-3),
    }
}

/// Compares a CUDA result with the CPU one (see the module docs).
fn close(
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
            prop_assert!(a == b, "{}: at {} cuda {} vs cpu {}", what, i, a, b);
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
        "{}: ||cuda - cpu|| = {:e} > {:e} (||cpu|| = {:e}, {} elements)",
        what,
        diff,
        bound,
        norm,
        g.len()
    );
    Ok(())
}

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop::sample::select(DTYPES.to_vec())
}

/// Sizes biased toward tile edges.
fn size(max: usize) -> impl Strategy<Value = usize> {
    let edges: Vec<usize> = [1, 2, 31, 32, 33, 63, 64, 65, 127, 128, 129, 197, 256, 300]
        .into_iter()
        .filter(|&e| e <= max)
        .collect();
    prop_oneof![1..=max, prop::sample::select(edges)]
}

// ---------------------------------------------------------------------------------- norm.cu

#[derive(Clone, Debug)]
struct RowCase {
    rows: usize,
    cols: usize,
    dtype: DType,
    transposed: bool,
    neg_inf: bool,
    seed: u64,
}

fn row_case() -> impl Strategy<Value = RowCase> {
    (
        1..24usize,
        prop_oneof![1..=300usize, 1000..1100usize, 2040..2100usize],
        dtype_strategy(),
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
        let (a, b) = pair(&data, &[c.cols, c.rows], c.dtype, gpu);
        (a.t().unwrap(), b.t().unwrap())
    } else {
        pair(&data, &[c.rows, c.cols], c.dtype, gpu)
    }
}

#[test]
fn softmax_and_log_softmax_match_cpu() {
    let Some(gpu) = gpu("softmax_and_log_softmax_match_cpu") else {
        return;
    };
    runner(48)
        .run(&row_case(), |c| {
            let (x_cpu, x_gpu) = row_input(&c, &gpu);
            let (rtol, atol) = tol(c.dtype);
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
        })
        .unwrap();
}

#[test]
fn layer_norm_matches_cpu() {
    let Some(gpu) = gpu("layer_norm_matches_cpu") else {
        return;
    };
    let strategy = (row_case(), any::<bool>(), any::<bool>());
    runner(48)
        .run(&strategy, |(c, with_w, with_b)| {
            let c = RowCase {
                neg_inf: false,
                ..c
            };
            let (x_cpu, x_gpu) = row_input(&c, &gpu);
            let mut g = Gen::new(c.seed.wrapping_add(1));
            let w = draw(&mut g, c.cols, 0.5, 1.5);
            let b = draw(&mut g, c.cols, -1.0, 1.0);
            let (w_cpu, w_gpu) = pair(&w, &[c.cols], c.dtype, &gpu);
            let (b_cpu, b_gpu) = pair(&b, &[c.cols], c.dtype, &gpu);
            let pick = |on: bool, t: &Tensor| on.then(|| t.clone());
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
            let (rtol, atol) = tol(c.dtype);
            close("layer_norm", &got, &want, rtol, atol)
        })
        .unwrap();
}

#[test]
fn gelu_matches_cpu() {
    let Some(gpu) = gpu("gelu_matches_cpu") else {
        return;
    };
    let kinds = prop::sample::select(vec![GeluKind::Erf, GeluKind::Tanh, GeluKind::Quick]);
    runner(32)
        .run(&(row_case(), kinds), |(c, kind)| {
            let c = RowCase {
                neg_inf: false,
                ..c
            };
            let (x_cpu, x_gpu) = row_input(&c, &gpu);
            let (rtol, atol) = tol(c.dtype);
            close(
                "gelu",
                &x_gpu.gelu(kind).unwrap(),
                &x_cpu.gelu(kind).unwrap(),
                rtol,
                atol,
            )
        })
        .unwrap();
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

fn attn_case(max_n: usize) -> impl Strategy<Value = AttnCase> {
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
        dtype_strategy(),
        (any::<bool>(), any::<bool>(), layouts),
        (
            prop_oneof![3 => Just(None), 1 => (0.05f64..0.5).prop_map(Some)],
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
        AttnLayout::Contiguous => pair(
            &draw(g, b * h * n * d, -2.0, 2.0),
            &[b, h, n, d],
            c.dtype,
            gpu,
        ),
        AttnLayout::Permuted => {
            let (x, y) = pair(
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
            let (x, y) = pair(
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

fn check_attention_forward(c: &AttnCase, gpu: &Device) -> Result<(), TestCaseError> {
    let x = attn_inputs(c, gpu);
    let [q0, k0, v0] = &x.cpu;
    let [q1, k1, v1] = &x.gpu;
    let want = Tensor::attention(q0, k0, v0, &x.opts_cpu).unwrap();
    let got = Tensor::attention(q1, k1, v1, &x.opts_gpu).unwrap();
    let (rtol, atol) = tol(c.dtype);
    close("attention out", &got.out, &want.out, rtol, atol)?;
    let lse_tol = if c.dtype == DType::F32 { 1e-5 } else { 1e-4 };
    close("attention lse", &got.lse, &want.lse, lse_tol, lse_tol)
}

#[test]
fn attention_forward_matches_cpu() {
    let Some(gpu) = gpu("attention_forward_matches_cpu") else {
        return;
    };
    runner(96)
        .run(&attn_case(300), |c| check_attention_forward(&c, &gpu))
        .unwrap();
}

#[test]
fn attention_forward_edge_cases() {
    let Some(gpu) = gpu("attention_forward_edge_cases") else {
        return;
    };
    // More queries than keys with a causal mask (the first rows see nothing), a single key,
    // and the ViT-B shape, for every dtype and every tensor-core head dim.
    for dtype in DTYPES {
        for d in [32, 64, 80, 128] {
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
                check_attention_forward(&c, &gpu).unwrap_or_else(|e| panic!("{c:?}: {e}"));
            }
        }
    }
}

fn check_attention_backward(c: &AttnCase, gpu: &Device) -> Result<(), TestCaseError> {
    let x = attn_inputs(c, gpu);
    let [q0, k0, v0] = &x.cpu;
    let [q1, k1, v1] = &x.gpu;
    // The same forward results and output gradient on both sides.
    let fwd = Tensor::attention(q0, k0, v0, &x.opts_cpu).unwrap();
    let mut g = Gen::new(c.seed.wrapping_add(7));
    let (g0, g1) = pair(
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
    let (rtol, atol) = tol(c.dtype);
    // Each gradient element sums up to max(Nq, Nk) rounded terms, and dk can be all
    // cancellation (one key: dS = P (dP - delta) is zero up to rounding), so the absolute floor
    // grows with the square root of the number of terms.
    let atol = atol * (c.nq.max(c.nk) as f64).sqrt();
    close("dq", &got.dq, &want.dq, rtol, atol)?;
    close("dk", &got.dk, &want.dk, rtol, atol)?;
    close("dv", &got.dv, &want.dv, rtol, atol)
}

#[test]
fn attention_backward_matches_cpu() {
    let Some(gpu) = gpu("attention_backward_matches_cpu") else {
        return;
    };
    runner(48)
        .run(&attn_case(200), |c| check_attention_backward(&c, &gpu))
        .unwrap();
}

#[test]
fn attention_backward_edge_cases() {
    let Some(gpu) = gpu("attention_backward_edge_cases") else {
        return;
    };
    // The tensor-core backward (half types, every head dim it takes) and the CUDA-core one
    // (f32): query and key counts crossing the 64-row tiles, causal with Nq != Nk both ways
    // (the first rows see nothing when Nq > Nk), a single key and query, masks that drop every
    // key of batch 0 (seed dependent), and each input layout.
    let layouts = [
        AttnLayout::Permuted,
        AttnLayout::Contiguous,
        AttnLayout::Narrowed,
    ];
    for dtype in DTYPES {
        for d in [32, 64, 80, 128] {
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
                check_attention_backward(&c, &gpu).unwrap_or_else(|e| panic!("{c:?}: {e}"));
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

fn patch_case() -> impl Strategy<Value = PatchCase> {
    (
        (
            1..=3usize,
            1..=4usize,
            prop::sample::select(vec![1usize, 3, 8, 14, 16]),
        ),
        (0..=5usize, 0..=4usize, 0..=15usize),
        (size(300), dtype_strategy()),
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

#[test]
fn patch_embed_matches_cpu() {
    let Some(gpu) = gpu("patch_embed_matches_cpu") else {
        return;
    };
    runner(64)
        .run(&patch_case(), |c| {
            let mut g = Gen::new(c.seed);
            let (img0, img1) = match c.layout {
                0 => pair(
                    &draw(&mut g, c.b * c.c * c.h * c.w, -1.0, 1.0),
                    &[c.b, c.c, c.h, c.w],
                    c.dtype,
                    &gpu,
                ),
                1 => {
                    let (x, y) = pair(
                        &draw(&mut g, c.b * c.h * c.w * c.c, -1.0, 1.0),
                        &[c.b, c.h, c.w, c.c],
                        c.dtype,
                        &gpu,
                    );
                    (
                        x.permute(&[0, 3, 1, 2]).unwrap(),
                        y.permute(&[0, 3, 1, 2]).unwrap(),
                    )
                }
                _ => {
                    let (x, y) = pair(
                        &draw(&mut g, c.b * c.c * (c.h + 2) * (c.w + 8), -1.0, 1.0),
                        &[c.b, c.c, c.h + 2, c.w + 8],
                        c.dtype,
                        &gpu,
                    );
                    let cut = |t: Tensor| t.narrow(2, 1, c.h).unwrap().narrow(3, 8, c.w).unwrap();
                    (cut(x), cut(y))
                }
            };
            let k = c.c * c.p * c.p;
            let (w0, w1) = pair(
                &draw(&mut g, c.e * k, -0.5, 0.5),
                &[c.e, c.c, c.p, c.p],
                c.dtype,
                &gpu,
            );
            let (b0, b1) = pair(&draw(&mut g, c.e, -1.0, 1.0), &[c.e], c.dtype, &gpu);
            let (cls0, cls1) = pair(&draw(&mut g, c.e, -1.0, 1.0), &[c.e], c.dtype, &gpu);
            let rows = (c.h / c.p) * (c.w / c.p) + usize::from(c.cls);
            let (pos0, pos1) = pair(
                &draw(&mut g, rows * c.e, -1.0, 1.0),
                &[rows, c.e],
                c.dtype,
                &gpu,
            );
            let opts = |cls: &Tensor, pos: &Tensor| PatchEmbedOptions {
                patch_size: c.p,
                class_embedding: c.cls.then(|| cls.clone()),
                position_embedding: c.pos.then(|| pos.clone()),
            };
            let want = Tensor::patch_embed(&img0, &w0, c.bias.then_some(&b0), &opts(&cls0, &pos0))
                .unwrap();
            let got = Tensor::patch_embed(&img1, &w1, c.bias.then_some(&b1), &opts(&cls1, &pos1))
                .unwrap();
            let (rtol, atol) = tol(c.dtype);
            close("patch_embed", &got, &want, rtol, atol)
        })
        .unwrap();
}

#[test]
fn patch_embed_vit_shape() {
    let Some(gpu) = gpu("patch_embed_vit_shape") else {
        return;
    };
    // ViT-B/16 at 224 pixels (mma path for half types) and CLIP-L/14 (P % 8 != 0).
    for dtype in DTYPES {
        for (p, e) in [(16usize, 768usize), (14, 1024)] {
            let (b, c, hw) = (2, 3, 224);
            let mut g = Gen::new(p as u64);
            let (img0, img1) = pair(
                &draw(&mut g, b * c * hw * hw, -1.0, 1.0),
                &[b, c, hw, hw],
                dtype,
                &gpu,
            );
            let (w0, w1) = pair(
                &draw(&mut g, e * c * p * p, -0.1, 0.1),
                &[e, c, p, p],
                dtype,
                &gpu,
            );
            let (b0, b1) = pair(&draw(&mut g, e, -1.0, 1.0), &[e], dtype, &gpu);
            let (cls0, cls1) = pair(&draw(&mut g, e, -1.0, 1.0), &[e], dtype, &gpu);
            let rows = (hw / p) * (hw / p) + 1;
            let (pos0, pos1) = pair(&draw(&mut g, rows * e, -1.0, 1.0), &[rows, e], dtype, &gpu);
            let opts = |cls: &Tensor, pos: &Tensor| PatchEmbedOptions {
                patch_size: p,
                class_embedding: Some(cls.clone()),
                position_embedding: Some(pos.clone()),
            };
            let want = Tensor::patch_embed(&img0, &w0, Some(&b0), &opts(&cls0, &pos0)).unwrap();
            let got = Tensor::patch_embed(&img1, &w1, Some(&b1), &opts(&cls1, &pos1)).unwrap();
            let (rtol, atol) = tol(dtype);
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

fn clip_case() -> impl Strategy<Value = ClipCase> {
    (
        size(300),
        prop_oneof![
            1..=100usize,
            prop::sample::select(vec![8usize, 16, 64, 512])
        ],
        dtype_strategy(),
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
    let (x, y) = pair(&data, &[c.n, width], c.dtype, gpu);
    if c.strided {
        (x.narrow(1, 8, c.d).unwrap(), y.narrow(1, 8, c.d).unwrap())
    } else {
        (x, y)
    }
}

fn check_contrastive(c: &ClipCase, gpu: &Device) -> Result<(), TestCaseError> {
    let mut g = Gen::new(c.seed);
    let (img0, img1) = clip_input(c, &mut g, gpu);
    let (txt0, txt1) = clip_input(c, &mut g, gpu);
    let scale0 = Tensor::from_vec(vec![c.scale as f32], (), &cpu()).unwrap();
    let scale1 = Tensor::from_vec(vec![c.scale as f32], (), gpu).unwrap();
    let want = Tensor::contrastive_loss(&img0, &txt0, &scale0).unwrap();
    let got = Tensor::contrastive_loss(&img1, &txt1, &scale1).unwrap();
    // Logits reach |scale|; their f32 rounding differs between the two sides' products.
    let lse_tol = if c.dtype == DType::F32 { 2e-6 } else { 1e-5 };
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
        DType::F32 => (1e-4, 1e-6),
        dtype => tol(dtype),
    };
    let atol = atol * c.d_loss.abs() * c.scale / c.n as f64;
    close("d_image", &got_g.d_image, &want_g.d_image, rtol, atol)?;
    close("d_text", &got_g.d_text, &want_g.d_text, rtol, atol)?;
    // d_scale sums N^2 terms that largely cancel: compare against their scale.
    let ds_tol = if c.dtype == DType::F32 { 1e-4 } else { 2e-3 };
    close(
        "d_scale",
        &got_g.d_scale,
        &want_g.d_scale,
        ds_tol,
        ds_tol * c.d_loss.abs(),
    )
}

#[test]
fn contrastive_loss_matches_cpu() {
    let Some(gpu) = gpu("contrastive_loss_matches_cpu") else {
        return;
    };
    runner(64)
        .run(&clip_case(), |c| check_contrastive(&c, &gpu))
        .unwrap();
}

#[test]
fn contrastive_backward_in_several_strips() {
    let Some(gpu) = gpu("contrastive_backward_in_several_strips") else {
        return;
    };
    // Large enough that the backward holds its gradient weights in 2 (bf16) or 3 (f32) strips.
    for dtype in [DType::F32, DType::BF16] {
        let c = ClipCase {
            n: 12_000,
            d: 16,
            dtype,
            scale: 14.285,
            d_loss: 0.75,
            strided: false,
            seed: 5,
        };
        check_contrastive(&c, &gpu).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

// ---------------------------------------------------------------------------------- timings

/// Median milliseconds of one call of `f`, timed over batches of `reps` calls between device
/// synchronisations (after warm-up, so compilation and first allocations stay out).
fn time_ms(be: &glimpse_cuda::CudaBackend, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    be.synchronize().unwrap();
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                f();
            }
            be.synchronize().unwrap();
            t0.elapsed().as_secs_f64() * 1e3 / reps as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The performance targets of the fused kernels (run alone: it turns poisoning off for the
/// process): `cargo test -p glimpse-cuda --release --test fused -- --ignored fused_timings
/// --nocapture`. Prints milliseconds and the rates they imply; asserts nothing.
#[test]
#[ignore = "timing on a GPU; run explicitly and alone"]
fn fused_timings() {
    let Some(gpu) = gpu("fused_timings") else {
        return;
    };
    let Ok(be) = glimpse_cuda::backend(0) else {
        println!("skipping fused_timings: not on a CUDA device");
        return;
    };
    be.set_poison(false);
    be.set_sync_launches(false);
    println!("device: {}", be.name());

    // Attention forward, bf16, B128 H12 N197 D64 (target: FlashAttention-2's 0.147 ms on H100).
    let (b, h, n, d) = (128, 12, 197, 64);
    let rand = |shape: &[usize], seed| {
        Tensor::rand_normal(0.0, 1.0, shape, DType::BF16, seed, &gpu).unwrap()
    };
    let (q, k, v) = (
        rand(&[b, h, n, d], 1),
        rand(&[b, h, n, d], 2),
        rand(&[b, h, n, d], 3),
    );
    let opts = AttentionOptions::default();
    let ms = time_ms(&be, 50, || {
        Tensor::attention(&q, &k, &v, &opts).unwrap();
    });
    let flop = 4.0 * (b * h * n * n * d) as f64;
    println!(
        "attention fwd bf16 B{b} H{h} N{n} D{d} contiguous: {ms:.4} ms ({:.0} TFLOP/s)",
        flop / ms / 1e9
    );
    let qkv = rand(&[b, n, 3, h, d], 4);
    let split = |i: usize| {
        qkv.narrow(2, i, 1)
            .unwrap()
            .squeeze(2)
            .unwrap()
            .permute(&[0, 2, 1, 3])
            .unwrap()
    };
    let (q2, k2, v2) = (split(0), split(1), split(2));
    let ms = time_ms(&be, 50, || {
        Tensor::attention(&q2, &k2, &v2, &opts).unwrap();
    });
    println!("attention fwd bf16 B{b} H{h} N{n} D{d} from a (B, N, 3, H, D) qkv: {ms:.4} ms");
    let g = rand(&[b, h, n, d], 5);
    let out = Tensor::attention(&q, &k, &v, &opts).unwrap();
    let ms = time_ms(&be, 5, || {
        Tensor::attention_backward(&q, &k, &v, &out, &g, &opts).unwrap();
    });
    println!("attention bwd bf16 B{b} H{h} N{n} D{d} (CUDA cores): {ms:.4} ms");

    // Patch embedding, bf16, batch 256 at 224 px, P16, E768 (target: <= 0.4 ms).
    let (bp, e, p) = (256, 768, 16);
    let images = Tensor::rand_normal(0.0, 1.0, [bp, 3, 224, 224], DType::BF16, 6, &gpu).unwrap();
    let w = Tensor::rand_normal(0.0, 0.02, [e, 3, p, p], DType::BF16, 7, &gpu).unwrap();
    let bias = Tensor::rand_normal(0.0, 0.02, [e], DType::BF16, 8, &gpu).unwrap();
    let cls = Tensor::rand_normal(0.0, 0.02, [e], DType::BF16, 9, &gpu).unwrap();
    let pos = Tensor::rand_normal(0.0, 0.02, [197, e], DType::BF16, 10, &gpu).unwrap();
    let popts = PatchEmbedOptions {
        patch_size: p,
        class_embedding: Some(cls),
        position_embedding: Some(pos),
    };
    let ms = time_ms(&be, 20, || {
        Tensor::patch_embed(&images, &w, Some(&bias), &popts).unwrap();
    });
    let flop = 2.0 * (bp * 196 * e * 3 * p * p) as f64;
    println!(
        "patch_embed bf16 B{bp} 224px P{p} E{e}: {ms:.4} ms ({:.0} TFLOP/s)",
        flop / ms / 1e9
    );

    // Contrastive loss, bf16, N32768 D512, forward + backward (target: <= 15 ms, <= 1 GB).
    let (nc, dc) = (32768, 512);
    let img = Tensor::rand_normal(
        0.0,
        1.0 / (dc as f64).sqrt(),
        [nc, dc],
        DType::BF16,
        11,
        &gpu,
    )
    .unwrap();
    let txt = Tensor::rand_normal(
        0.0,
        1.0 / (dc as f64).sqrt(),
        [nc, dc],
        DType::BF16,
        12,
        &gpu,
    )
    .unwrap();
    let scale = Tensor::from_vec(vec![100.0f32], (), &gpu).unwrap();
    let d_loss = Tensor::from_vec(vec![1.0f32], (), &gpu).unwrap();
    let fwd_ms = time_ms(&be, 3, || {
        Tensor::contrastive_loss(&img, &txt, &scale).unwrap();
    });
    let saved = Tensor::contrastive_loss(&img, &txt, &scale).unwrap();
    let bwd_ms = time_ms(&be, 3, || {
        Tensor::contrastive_loss_backward(&img, &txt, &scale, &saved, &d_loss).unwrap();
    });
    let gemm = 2.0 * (nc * nc * dc) as f64;
    println!(
        "contrastive bf16 N{nc} D{dc}: fwd {fwd_ms:.3} ms ({:.0} TFLOP/s), bwd {bwd_ms:.3} ms \
         ({:.0} TFLOP/s), total {:.3} ms",
        gemm / fwd_ms / 1e9,
        3.0 * gemm / bwd_ms / 1e9,
        fwd_ms + bwd_ms
    );
    // Device memory the two calls hold at their peaks (by construction, not measured): inputs
    // 2 N D, forward partials 4 (N / 128) N f32; backward one 256 MiB strip of weights, the
    // N x D f32 d_text sum, a product of each side and the two outputs.
    let mib = |bytes: usize| bytes as f64 / (1 << 20) as f64;
    let inputs = 2 * nc * dc * 2;
    let fwd_peak = inputs + 4 * nc.div_ceil(128) * nc * 4 + 3 * nc * 4;
    let bwd_peak = inputs + (256 << 20) + nc * dc * 4 + 3 * nc * dc * 2 + (nc / 128).pow(2) * 4;
    println!(
        "contrastive memory by construction: fwd {:.0} MiB, bwd {:.0} MiB (inputs included)",
        mib(fwd_peak),
        mib(bwd_peak)
    );
    be.set_poison(true);
}

//! Fused attention (forward and backward) on the wgpu device against the CPU backend, on the
//! same inputs: the same values in the same views (contiguous, heads permuted out of
//! `(B, N, H, D)`, one third of a packed `(B, N, 3, H, D)` projection, narrowed rows and
//! columns at odd offsets, one head broadcast to all, transposed storage), f32 and f16, head dims 8 to 128 with
//! `Dv != D` sometimes, causal masks with `Nq != Nk` both ways, random key-padding masks that
//! sometimes drop every key of a batch (rows that see nothing: zero output, `-inf` lse), and
//! poisoned output buffers (an element a kernel forgets to write reads as NaN and fails).
//!
//! Results are compared as `||gpu - cpu|| <= rtol ||cpu|| + atol sqrt(n)` per output, after
//! checking that the device has no NaN and that infinities match exactly.

mod common;

use common::{Gen, cpu, tensor, wgpu};
use glimpse_tensor::{AttentionOptions, AttentionOutput, DType, Device, Tensor};
use glimpse_testkit::suite::fused::{attention_grad_atols, close};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// How a `(B, H, N, D)` input sits in memory.
#[derive(Clone, Copy, Debug)]
enum View {
    Contiguous,
    /// A `(B, N, H, D)` tensor with heads permuted out, as after a projection.
    Heads,
    /// The middle third of a packed `(B, N, 3, H, D)` qkv projection, heads permuted out.
    Packed,
    /// Rows `1..N+1` and columns `3..D+3` of a `(B, H, N + 2, D + 3)` tensor.
    Narrowed,
    /// One head `(B, 1, N, D)` broadcast to every head (stride 0).
    SharedHeads,
    /// A `(B, H, D, N)` tensor transposed: columns are not contiguous.
    Transposed,
}

const VIEWS: [View; 6] = [
    View::Contiguous,
    View::Heads,
    View::Packed,
    View::Narrowed,
    View::SharedHeads,
    View::Transposed,
];

#[derive(Clone, Debug)]
struct Case {
    b: usize,
    h: usize,
    nq: usize,
    nk: usize,
    d: usize,
    dv: usize,
    dtype: DType,
    causal: bool,
    mask: bool,
    /// Views of q, k, v (and of d_out, which takes q's).
    views: [View; 3],
    scale: Option<f64>,
    seed: u64,
}

/// Sequence lengths biased toward the kernels' tile edges (4, 8, 16, 32).
fn length(max: usize) -> impl Strategy<Value = usize> {
    let edges: Vec<usize> = [
        1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100,
    ]
    .into_iter()
    .filter(|&n| n <= max)
    .collect();
    prop_oneof![2 => prop::sample::select(edges), 1 => 1..=max]
}

fn case(max_n: usize) -> impl Strategy<Value = Case> {
    let view = || prop::sample::select(VIEWS.to_vec());
    (
        (1..=2usize, 1..=3usize, length(max_n), length(max_n)),
        (
            prop::sample::select(vec![8usize, 16, 32, 64, 80, 128]),
            prop_oneof![3 => Just(None), 1 => prop::sample::select(vec![8usize, 24, 40, 64]).prop_map(Some)],
        ),
        common::any_float(),
        (any::<bool>(), any::<bool>(), [view(), view(), view()]),
        (
            // Negative scales too: they reverse which score is the row's largest.
            prop_oneof![
                3 => Just(None),
                1 => (0.05f64..0.5).prop_map(Some),
                1 => (-0.5f64..-0.05).prop_map(Some),
            ],
            any::<u64>(),
        ),
    )
        .prop_map(
            |((b, h, nq, nk), (d, dv), dtype, (causal, mask, views), (scale, seed))| Case {
                b,
                h,
                nq,
                nk,
                d,
                dv: dv.unwrap_or(d),
                dtype,
                causal,
                mask,
                views,
                scale,
                seed,
            },
        )
}

/// The same `(B, H, n, d)` input on the CPU and on the device, laid out as `view`.
fn input(c: &Case, view: View, n: usize, d: usize, g: &mut Gen, dev: &Device) -> (Tensor, Tensor) {
    let (b, h) = (c.b, c.h);
    let base: Vec<usize> = match view {
        View::Contiguous => vec![b, h, n, d],
        View::Heads => vec![b, n, h, d],
        View::Packed => vec![b, n, 3, h, d],
        View::Narrowed => vec![b, h, n + 2, d + 3],
        View::SharedHeads => vec![b, 1, n, d],
        View::Transposed => vec![b, h, d, n],
    };
    let shape = |t: Tensor| -> Tensor {
        match view {
            View::Contiguous => t,
            View::Heads => t.permute(&[0, 2, 1, 3]).unwrap(),
            View::Packed => t
                .narrow(2, 1, 1)
                .unwrap()
                .squeeze(2)
                .unwrap()
                .permute(&[0, 2, 1, 3])
                .unwrap(),
            View::Narrowed => t.narrow(2, 1, n).unwrap().narrow(3, 3, d).unwrap(),
            View::SharedHeads => t.broadcast_as([b, h, n, d]).unwrap(),
            View::Transposed => t.permute(&[0, 1, 3, 2]).unwrap(),
        }
    };
    let data: Vec<f64> = (0..base.iter().product::<usize>())
        .map(|_| g.range(-2.0, 2.0))
        .collect();
    let x = shape(tensor(&data, &base, c.dtype, &cpu()));
    let y = shape(tensor(&data, &base, c.dtype, dev));
    assert_eq!(x.dims(), [b, h, n, d]);
    assert_eq!(x.layout(), y.layout());
    (x, y)
}

struct Inputs {
    cpu: [Tensor; 3],
    dev: [Tensor; 3],
    opts_cpu: AttentionOptions,
    opts_dev: AttentionOptions,
}

fn inputs(c: &Case, dev: &Device) -> Inputs {
    let mut g = Gen::new(c.seed);
    let (q0, q1) = input(c, c.views[0], c.nq, c.d, &mut g, dev);
    let (k0, k1) = input(c, c.views[1], c.nk, c.d, &mut g, dev);
    let (v0, v1) = input(c, c.views[2], c.nk, c.dv, &mut g, dev);
    let mask = c.mask.then(|| {
        // About a quarter of the keys dropped; one time in three batch 0 loses them all. The
        // mask is contiguous, transposed from (Nk, B) or narrowed from (B, Nk + 3).
        let batch0_off = g.below(3) == 0;
        let keep: Vec<f64> = (0..c.b * c.nk)
            .map(|i| f64::from(u8::from(g.below(4) != 0 && !(batch0_off && i < c.nk))))
            .collect();
        let layout = g.below(3);
        let view = |dev: &Device| -> Tensor {
            let (b, n) = (c.b, c.nk);
            match layout {
                0 => tensor(&keep, &[b, n], DType::U32, dev),
                1 => {
                    let cols: Vec<f64> = (0..n * b).map(|x| keep[(x % b) * n + x / b]).collect();
                    tensor(&cols, &[n, b], DType::U32, dev).t().unwrap()
                }
                _ => {
                    let wide: Vec<f64> = (0..b * (n + 3))
                        .map(|x| {
                            let (row, col) = (x / (n + 3), x % (n + 3));
                            if (2..n + 2).contains(&col) {
                                keep[row * n + col - 2]
                            } else {
                                7.0
                            }
                        })
                        .collect();
                    tensor(&wide, &[b, n + 3], DType::U32, dev)
                        .narrow(1, 2, n)
                        .unwrap()
                }
            }
        };
        (view(&cpu()), view(dev))
    });
    let opts = |m: Option<Tensor>| AttentionOptions {
        scale: c.scale,
        causal: c.causal,
        key_padding_mask: m,
    };
    Inputs {
        opts_cpu: opts(mask.as_ref().map(|m| m.0.clone())),
        opts_dev: opts(mask.map(|m| m.1)),
        cpu: [q0, k0, v0],
        dev: [q1, k1, v1],
    }
}

/// Relative (of the norm) and absolute (per element) tolerance of the outputs.
fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (2e-5, 1e-6),
        _ => (4e-3, 1e-4),
    }
}

fn check_forward(dev: &Device, c: &Case) -> Result<(), TestCaseError> {
    let x = inputs(c, dev);
    let [q0, k0, v0] = &x.cpu;
    let [q1, k1, v1] = &x.dev;
    let want = Tensor::attention(q0, k0, v0, &x.opts_cpu).unwrap();
    let got = Tensor::attention(q1, k1, v1, &x.opts_dev).unwrap();
    let (rtol, atol) = tol(c.dtype);
    close("out", &got.out, &want.out, rtol, atol)?;
    // lse is f32 for both dtypes, from the same (rounded) inputs.
    close("lse", &got.lse, &want.lse, 1e-5, 1e-5)
}

/// The backward on both devices from the CPU's forward results (moved to the device), or
/// from each device's own forward when `own_forward`.
fn check_backward(dev: &Device, c: &Case, own_forward: bool) -> Result<(), TestCaseError> {
    let x = inputs(c, dev);
    let [q0, k0, v0] = &x.cpu;
    let [q1, k1, v1] = &x.dev;
    let fwd0 = Tensor::attention(q0, k0, v0, &x.opts_cpu).unwrap();
    let fwd1 = if own_forward {
        Tensor::attention(q1, k1, v1, &x.opts_dev).unwrap()
    } else if c.seed.is_multiple_of(2) {
        AttentionOutput {
            out: fwd0.out.to_device(dev).unwrap(),
            lse: fwd0.lse.to_device(dev).unwrap(),
        }
    } else {
        // The saved results as views too: heads permuted out of (B, Nq, H, ..) storage.
        let moved = |t: &Tensor, perm: &[usize]| {
            t.permute(perm)
                .unwrap()
                .contiguous()
                .unwrap()
                .to_device(dev)
                .unwrap()
                .permute(perm)
                .unwrap()
        };
        AttentionOutput {
            out: moved(&fwd0.out, &[0, 2, 1, 3]),
            lse: moved(&fwd0.lse, &[0, 2, 1]),
        }
    };
    // d_out in q's view (with Dv columns).
    let mut g = Gen::new(c.seed ^ 0xd0);
    let dc = Case {
        d: c.dv,
        ..c.clone()
    };
    let (g0, g1) = input(&dc, c.views[0], c.nq, c.dv, &mut g, dev);
    let want = Tensor::attention_backward(q0, k0, v0, &fwd0, &g0, &x.opts_cpu).unwrap();
    let got = Tensor::attention_backward(q1, k1, v1, &fwd1, &g1, &x.opts_dev).unwrap();
    let (rtol, atol) = tol(c.dtype);
    let (atol, atol_dk) = attention_grad_atols(atol, c.nq, c.nk, c.d, c.dv);
    // From its own forward the device's out may differ from the CPU's by an f16 rounding.
    let rtol = if own_forward && c.dtype == DType::F16 {
        2.0 * rtol
    } else {
        rtol
    };
    close("dq", &got.dq, &want.dq, rtol, atol)?;
    close("dk", &got.dk, &want.dk, rtol, atol_dk)?;
    close("dv", &got.dv, &want.dv, rtol, atol)
}

/// Runs `check` on `cases` random cases, or skips without an adapter.
fn run(
    name: &str,
    cases: u32,
    max_n: usize,
    check: impl Fn(&Device, &Case) -> Result<(), TestCaseError>,
) {
    let _serial = common::serial();
    let Some((dev, _)) = wgpu(name) else { return };
    common::run_cases(name, &dev, cases, case(max_n), |d, c| check(d, &c));
}

#[test]
fn attention_forward_matches_cpu() {
    run("attention_forward_matches_cpu", 64, 100, check_forward);
}

#[test]
fn attention_backward_matches_cpu() {
    run("attention_backward_matches_cpu", 48, 100, |d, c| {
        check_backward(d, c, false)
    });
}

#[test]
fn attention_backward_after_the_device_forward_matches_cpu() {
    run(
        "attention_backward_after_the_device_forward_matches_cpu",
        16,
        70,
        |d, c| check_backward(d, c, true),
    );
}

/// The shapes of the CUDA edge cases: more queries than keys with a causal mask (the first
/// rows see nothing), a single key, a single query and key, ViT's 197 tokens, fewer queries
/// than keys with a causal mask (with and without padding), tiles that divide evenly; every
/// dtype and the head dims of real models (CLIP text / ViT 64, ViT-L 80, 128) and of tiny
/// test models (8, 32).
fn edge_cases(dev: &Device) -> Vec<Case> {
    let mut out = Vec::new();
    let dtypes = dev
        .backend()
        .supports_dtype(DType::F16)
        .then_some(DType::F16)
        .into_iter()
        .chain([DType::F32]);
    for dtype in dtypes {
        for (i, d) in [8usize, 32, 64, 80, 128].into_iter().enumerate() {
            for (j, (nq, nk, causal, mask)) in [
                (300, 70, true, true),
                (65, 1, false, false),
                (1, 1, false, true),
                (197, 197, false, true),
                (129, 300, true, false),
                (129, 300, true, true),
                (64, 64, true, true),
            ]
            .into_iter()
            .enumerate()
            {
                out.push(Case {
                    b: 2,
                    h: 2,
                    nq,
                    nk,
                    d,
                    dv: d,
                    dtype,
                    causal,
                    mask,
                    views: [
                        VIEWS[(i + j) % VIEWS.len()],
                        VIEWS[(i + j + 1) % VIEWS.len()],
                        VIEWS[(i + 2 * j) % VIEWS.len()],
                    ],
                    scale: None,
                    seed: (nq * 1000 + nk + d) as u64,
                });
            }
        }
    }
    out
}

#[test]
fn attention_forward_edge_cases() {
    let _serial = common::serial();
    let Some((dev, _)) = wgpu("attention_forward_edge_cases") else {
        return;
    };
    for c in edge_cases(&dev) {
        check_forward(&dev, &c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

#[test]
fn attention_backward_edge_cases() {
    let _serial = common::serial();
    let Some((dev, _)) = wgpu("attention_backward_edge_cases") else {
        return;
    };
    for c in edge_cases(&dev) {
        check_backward(&dev, &c, false).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

/// No queries, no keys, an empty value head: empty outputs, or zero outputs and `-inf` lse
/// (no key), and zero gradients.
#[test]
fn attention_with_nothing_to_attend() {
    let _serial = common::serial();
    let Some((dev, _)) = wgpu("attention_with_nothing_to_attend") else {
        return;
    };
    for (nq, nk, dv) in [(5, 0, 8), (0, 5, 8), (0, 0, 8), (5, 7, 0)] {
        for causal in [false, true] {
            let c = Case {
                b: 2,
                h: 3,
                nq,
                nk,
                d: 8,
                dv,
                dtype: DType::F32,
                causal,
                mask: true,
                views: [View::Heads, View::Contiguous, View::Narrowed],
                scale: None,
                seed: 7,
            };
            check_forward(&dev, &c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
            check_backward(&dev, &c, false).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        }
    }
}

/// A mask that drops every key of batch 0: its rows are 0 with lse `-inf` and its gradients
/// 0, while batch 1 (all keys kept) matches the CPU.
#[test]
fn fully_masked_rows_are_zero_with_infinite_lse() {
    let _serial = common::serial();
    let Some((dev, _)) = wgpu("fully_masked_rows_are_zero_with_infinite_lse") else {
        return;
    };
    let (b, h, n, d) = (2, 2, 9, 16);
    let mut g = Gen::new(3);
    let data: Vec<f64> = (0..b * h * n * d).map(|_| g.range(-1.0, 1.0)).collect();
    let q = tensor(&data, &[b, h, n, d], DType::F32, &dev);
    let keep: Vec<f64> = (0..b * n).map(|i| f64::from(u8::from(i >= n))).collect();
    let opts = AttentionOptions {
        scale: None,
        causal: false,
        key_padding_mask: Some(tensor(&keep, &[b, n], DType::U32, &dev)),
    };
    let fwd = Tensor::attention(&q, &q, &q, &opts).unwrap();
    let out = fwd.out.to_f64_vec().unwrap();
    let lse = fwd.lse.to_f64_vec().unwrap();
    let half = h * n;
    assert!(out[..half * d].iter().all(|&x| x == 0.0), "{out:?}");
    assert!(
        lse[..half].iter().all(|&x| x == f64::NEG_INFINITY),
        "{lse:?}"
    );
    assert!(
        out[half * d..]
            .iter()
            .chain(&lse[half..])
            .all(|x| x.is_finite())
    );
    let grads = Tensor::attention_backward(&q, &q, &q, &fwd, &q, &opts).unwrap();
    for (name, t) in [("dq", &grads.dq), ("dk", &grads.dk), ("dv", &grads.dv)] {
        let v = t.to_f64_vec().unwrap();
        assert!(v[..half * d].iter().all(|&x| x == 0.0), "{name}: {v:?}");
        assert!(v[half * d..].iter().all(|x| x.is_finite()), "{name}: {v:?}");
        assert!(v[half * d..].iter().any(|&x| x != 0.0), "{name}: {v:?}");
    }
}

/// Forward and backward record their dispatches and read nothing back to the host.
#[test]
fn attention_reads_nothing_back() {
    let _serial = common::serial();
    let Some((dev, be)) = wgpu("attention_reads_nothing_back") else {
        return;
    };
    let c = Case {
        b: 2,
        h: 2,
        nq: 33,
        nk: 17,
        d: 32,
        dv: 24,
        dtype: DType::F32,
        causal: true,
        mask: true,
        views: [View::Packed, View::Heads, View::Narrowed],
        scale: Some(0.3),
        seed: 11,
    };
    let x = inputs(&c, &dev);
    let [q, k, v] = &x.dev;
    let d_out = Tensor::ones([c.b, c.h, c.nq, c.dv], DType::F32, &dev).unwrap();
    be.synchronize().unwrap();
    let before = be.stats();
    let fwd = Tensor::attention(q, k, v, &x.opts_dev).unwrap();
    let grads = Tensor::attention_backward(q, k, v, &fwd, &d_out, &x.opts_dev).unwrap();
    let after = be.stats();
    assert_eq!(after.readbacks, before.readbacks, "{before:?} -> {after:?}");
    // One forward dispatch and three backward ones, plus the poison fills of the 5 outputs
    // and the backward's scratch buffer.
    assert_eq!(
        after.dispatches - before.dispatches,
        4 + 6,
        "{before:?} -> {after:?}"
    );
    assert!(grads.dq.to_f64_vec().unwrap().iter().all(|x| x.is_finite()));
}

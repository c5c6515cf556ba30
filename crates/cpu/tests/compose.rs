//! The fused ops against naive f64 loops: each default composition (called through
//! `glimpse_tensor::compose` directly, since the CPU backend may override the `Tensor::` entry
//! points with kernels) and the `Tensor::` entry point (whatever the backend runs) are checked
//! against the same reference. Gradients are checked against finite differences in F64.

mod common;

use common::*;
use glimpse_tensor::compose;
use glimpse_tensor::{
    AttentionGrads, AttentionOptions, AttentionOutput, ContrastiveGrads, ContrastiveOutput, DType,
    GeluKind, PatchEmbedOptions, Result, Tensor,
};
use proptest::prelude::*;

const CASES: u32 = 32;

/// A naive reference of an element-wise function.
type RefFn = fn(f64) -> f64;

/// Which implementation of a fused op runs.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// The default composition in `glimpse_tensor::compose`.
    Compose,
    /// `Tensor::...`, i.e. the backend's kernel if it overrides the op.
    Tensor,
}

const VIAS: [Via; 2] = [Via::Compose, Via::Tensor];

// ---------------------------------------------------------------------------------- softmax

/// Applies `f` to every row along `dim`.
fn along(x: &Nd, dim: usize, f: impl Fn(&[f64]) -> Vec<f64>) -> Nd {
    let mut out = x.clone();
    let mut outer = x.shape.clone();
    outer[dim] = 1;
    for flat in 0..numel(&outer) {
        let mut idx = unravel(flat, &outer);
        let row: Vec<f64> = (0..x.shape[dim])
            .map(|j| {
                idx[dim] = j;
                x.at(&idx)
            })
            .collect();
        for (j, v) in f(&row).into_iter().enumerate() {
            idx[dim] = j;
            let at = ravel(&idx, &x.shape);
            out.data[at] = v;
        }
    }
    out
}

fn log_softmax_ref(row: &[f64]) -> Vec<f64> {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    row.iter().map(|v| v - lse).collect()
}

/// An input whose rows (along `dim`) hold some `-inf` entries, never at position 0.
fn with_neg_inf(x: &Input, dim: usize, rng: &mut Gen) -> Input {
    let shape = x.nd.shape.clone();
    let draws: Vec<bool> = (0..numel(&shape)).map(|_| rng.below(3) == 0).collect();
    let hit = Nd::from_fn(&shape, |i| {
        f64::from(u8::from(i[dim] > 0 && draws[ravel(i, &shape)]))
    });
    let mask = tensor(&hit.data, &shape, DType::U32);
    let ninf = Tensor::full(f64::NEG_INFINITY, (), x.t.dtype(), &dev()).unwrap();
    let t = mask.where_cond(&ninf, &x.t).unwrap();
    let data =
        x.nd.data
            .iter()
            .zip(&hit.data)
            .map(|(&v, &h)| if h != 0.0 { f64::NEG_INFINITY } else { v })
            .collect();
    Input {
        t,
        nd: Nd::new(&shape, data),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn softmax_and_log_softmax(
        shape in shape_in(1, 4, 1),
        dtype in any_float(),
        kind in any_kind(),
        neg_inf: bool,
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let rank = shape.len();
        let x = input(&shape, dtype, kind, Values::Uniform(-4.0, 4.0), &mut rng);
        // compositions: along the last dim
        let last = rank - 1;
        let x = if neg_inf { with_neg_inf(&x, last, &mut rng) } else { x };
        let sm = along(&x.nd, last, |r| log_softmax_ref(r).iter().map(|v| v.exp()).collect());
        let lsm = along(&x.nd, last, log_softmax_ref);
        let what = format!("{dtype} {shape:?} {kind:?}");
        for via in VIAS {
            let (s, l) = match via {
                Via::Compose => (compose::softmax_last_dim(&x.t), compose::log_softmax_last_dim(&x.t)),
                Via::Tensor => (x.t.softmax(-1isize), x.t.log_softmax(-1isize)),
            };
            let (s, l) = (s.unwrap(), l.unwrap());
            prop_assert_eq!(s.dims(), &shape[..]);
            prop_assert_eq!(s.dtype(), dtype);
            prop_assert_eq!(l.dtype(), dtype);
            assert_close(&values(&s), &sm.data, dtype, &format!("softmax {via:?} {what}"));
            assert_close(&values(&l), &lsm.data, dtype, &format!("log_softmax {via:?} {what}"));
        }
        // Tensor::softmax along any dim
        let dim = rng.below(rank);
        let x = input(&shape, dtype, kind, Values::Uniform(-4.0, 4.0), &mut rng);
        let sm = along(&x.nd, dim, |r| log_softmax_ref(r).iter().map(|v| v.exp()).collect());
        let lsm = along(&x.nd, dim, log_softmax_ref);
        assert_close(&values(&x.t.softmax(dim).unwrap()), &sm.data, dtype, "softmax(dim)");
        assert_close(&values(&x.t.log_softmax(dim).unwrap()), &lsm.data, dtype, "log_softmax(dim)");
    }
}

// ---------------------------------------------------------------------------------- layer norm

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn layer_norm_matches_reference(
        shape in shape_in(1, 3, 1),
        dtype in any_float(),
        kind in any_kind(),
        affine in (any::<bool>(), any::<bool>()),
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let n = *shape.last().unwrap();
        let eps = 1e-5;
        let x = input(&shape, dtype, kind, Values::Uniform(-3.0, 3.0), &mut rng);
        let w = affine.0.then(|| input(&[n], dtype, Kind::Contiguous, Values::Uniform(-2.0, 2.0), &mut rng));
        let b = affine.1.then(|| input(&[n], dtype, Kind::Contiguous, Values::Uniform(-2.0, 2.0), &mut rng));
        let last = shape.len() - 1;
        let want = along(&x.nd, last, |r| {
            let mean = r.iter().sum::<f64>() / n as f64;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            (0..n)
                .map(|j| {
                    let y = (r[j] - mean) / (var + eps).sqrt();
                    y * w.as_ref().map_or(1.0, |w| w.v()[j]) + b.as_ref().map_or(0.0, |b| b.v()[j])
                })
                .collect()
        });
        // Rounding of the mean is amplified by 1/std: scale the tolerance by max|x| / std.
        let scale = along(&x.nd, last, |r| {
            let mean = r.iter().sum::<f64>() / n as f64;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            let amp = 1.0 + r.iter().fold(0.0f64, |m, v| m.max(v.abs())) / (var + eps).sqrt();
            vec![amp * 2.0 + 2.0; n]
        });
        for via in VIAS {
            let (wt, bt) = (w.as_ref().map(|w| &w.t), b.as_ref().map(|b| &b.t));
            let y = match via {
                Via::Compose => compose::layer_norm(&x.t, wt, bt, eps),
                Via::Tensor => x.t.layer_norm(wt, bt, eps),
            }
            .unwrap();
            prop_assert_eq!(y.dims(), &shape[..]);
            prop_assert_eq!(y.dtype(), dtype);
            assert_close_scaled(&values(&y), &want.data, &scale.data, tol(dtype), &format!("layer_norm {via:?} {dtype}"));
        }
    }

    #[test]
    fn gelus_match_their_formulas(shape in any_shape(), dtype in any_float(), kind in any_kind(), seed: u64) {
        use std::f64::consts::PI;
        let mut rng = Gen::new(seed);
        let x = input(&shape, dtype, kind, Values::Uniform(-6.0, 6.0), &mut rng);
        let kinds: [(GeluKind, RefFn); 3] = [
            (GeluKind::Erf, |x| 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt()))),
            (GeluKind::Tanh, |x| 0.5 * x * (1.0 + ((2.0 / PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())),
            (GeluKind::Quick, |x| x / (1.0 + (-1.702 * x).exp())),
        ];
        for (kind, f) in kinds {
            let want: Vec<f64> = x.v().iter().map(|&v| f(v)).collect();
            for y in [
                x.t.gelu(kind).unwrap(),
                x.t.unary(kind.unary_op()).unwrap(),
                match kind {
                    GeluKind::Erf => x.t.gelu_erf(),
                    GeluKind::Tanh => x.t.gelu_tanh(),
                    GeluKind::Quick => x.t.quick_gelu(),
                }
                .unwrap(),
            ] {
                prop_assert_eq!(y.dtype(), dtype);
                prop_assert_eq!(y.dims(), &shape[..]);
                assert_close(&values(&y), &want, dtype, &format!("{kind:?} {dtype}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------- attention

#[derive(Clone, Debug)]
struct AttnCase {
    dims: [usize; 6], // b, h, nq, nk, d, dv
    causal: bool,
    scale: Option<f64>,
    /// (b, nk) of 0/1
    mask: Option<Nd>,
}

fn attn_case() -> impl Strategy<Value = AttnCase> {
    (
        (
            1usize..3,
            1usize..3,
            0usize..5,
            0usize..5,
            1usize..5,
            1usize..5,
        ),
        any::<bool>(),
        prop::option::of(0.1f64..2.0),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|((b, h, nq, nk, d, dv), causal, scale, masked, seed)| {
            let mut rng = Gen::new(seed);
            let full_row = rng.below(b);
            let mask = masked.then(|| {
                Nd::from_fn(&[b, nk], |i| {
                    // one batch row fully masked half of the time
                    if i[0] == full_row && seed % 2 == 0 {
                        0.0
                    } else {
                        f64::from(u8::from(rng_bit(seed, i[0] * 7 + i[1])))
                    }
                })
            });
            AttnCase {
                dims: [b, h, nq, nk, d, dv],
                causal,
                scale,
                mask,
            }
        })
}

/// A deterministic pseudo-random bit (3 in 4 are set) for position `i`.
fn rng_bit(seed: u64, i: usize) -> bool {
    let mut g = Gen::new(seed.wrapping_add(i as u64 * 0x9e37));
    g.below(4) != 0
}

impl AttnCase {
    fn options(&self) -> AttentionOptions {
        AttentionOptions {
            scale: self.scale,
            causal: self.causal,
            key_padding_mask: self
                .mask
                .as_ref()
                .map(|m| tensor(&m.data, &m.shape, DType::U32)),
        }
    }
}

/// Naive attention per (b, h, i): returns the output `(B, H, Nq, Dv)` and lse `(B, H, Nq)`.
fn attention_ref(c: &AttnCase, q: &Nd, k: &Nd, v: &Nd) -> (Nd, Nd) {
    let [b, h, nq, nk, d, dv] = c.dims;
    let scale = c.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let mut out = Nd::new(&[b, h, nq, dv], vec![0.0; b * h * nq * dv]);
    let mut lse = Nd::new(&[b, h, nq], vec![0.0; b * h * nq]);
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..nq {
                let visible: Vec<usize> = (0..nk)
                    .filter(|&j| !c.causal || j + nq <= i + nk)
                    .filter(|&j| c.mask.as_ref().is_none_or(|m| m.at(&[bi, j]) != 0.0))
                    .collect();
                let l_at = ravel(&[bi, hi, i], &lse.shape);
                if visible.is_empty() {
                    lse.data[l_at] = f64::NEG_INFINITY;
                    continue; // output row stays zero
                }
                let s: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        scale
                            * (0..d)
                                .map(|p| q.at(&[bi, hi, i, p]) * k.at(&[bi, hi, j, p]))
                                .sum::<f64>()
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let l = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                lse.data[l_at] = l;
                for e in 0..dv {
                    let o: f64 = visible
                        .iter()
                        .zip(&s)
                        .map(|(&j, &sj)| (sj - l).exp() * v.at(&[bi, hi, j, e]))
                        .sum();
                    let at = ravel(&[bi, hi, i, e], &out.shape);
                    out.data[at] = o;
                }
            }
        }
    }
    (out, lse)
}

fn run_attention(
    via: Via,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &AttentionOptions,
) -> Result<AttentionOutput> {
    match via {
        Via::Compose => compose::attention(q, k, v, o),
        Via::Tensor => Tensor::attention(q, k, v, o),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn attention_matches_naive_loop(
        c in attn_case(),
        dtype in any_float(),
        kinds in (any_kind(), any_kind(), any_kind()),
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let [b, h, nq, nk, d, dv] = c.dims;
        let vals = Values::Uniform(-2.0, 2.0);
        let q = input(&[b, h, nq, d], dtype, kinds.0, vals, &mut rng);
        let k = input(&[b, h, nk, d], dtype, kinds.1, vals, &mut rng);
        let v = input(&[b, h, nk, dv], dtype, kinds.2, vals, &mut rng);
        let (want, want_lse) = attention_ref(&c, &q.nd, &k.nd, &v.nd);
        let opts = c.options();
        for via in VIAS {
            let r = run_attention(via, &q.t, &k.t, &v.t, &opts).unwrap();
            let what = format!("{via:?} {dtype} {c:?}");
            prop_assert_eq!(r.out.dims(), &[b, h, nq, dv][..]);
            prop_assert_eq!(r.out.dtype(), dtype);
            prop_assert_eq!(r.lse.dims(), &[b, h, nq][..]);
            prop_assert_eq!(r.lse.dtype(), dtype.compute_dtype());
            // The output is a convex combination of rows of v (|v| <= 2).
            assert_close_scaled(&values(&r.out), &want.data, &[2.0], tol(dtype), &what);
            // lse is computed and kept in the compute dtype; scores are O(d * 4 * scale).
            assert_close_scaled(&values(&r.lse), &want_lse.data, &[4.0 * d as f64], tol(dtype), &what);
        }
    }
}

/// `sum(g * out)` for the naive attention: the scalar whose gradient is checked.
fn attn_functional(c: &AttnCase, q: &Nd, k: &Nd, v: &Nd, g: &Nd) -> f64 {
    let (out, _) = attention_ref(c, q, k, v);
    out.data.iter().zip(&g.data).map(|(a, b)| a * b).sum()
}

/// Central finite differences of `f` with respect to every element of `x`.
fn finite_diff(x: &Nd, f: impl Fn(&Nd) -> f64) -> Vec<f64> {
    let h = 1e-6;
    (0..x.data.len())
        .map(|i| {
            let (mut p, mut m) = (x.clone(), x.clone());
            p.data[i] += h;
            m.data[i] -= h;
            (f(&p) - f(&m)) / (2.0 * h)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn attention_backward_matches_finite_differences(c in attn_case(), kinds in (any_kind(), any_kind()), seed: u64) {
        let mut rng = Gen::new(seed);
        let [b, h, nq, nk, d, dv] = c.dims;
        let f64v = Values::Uniform(-1.5, 1.5);
        let q = input(&[b, h, nq, d], DType::F64, kinds.0, f64v, &mut rng);
        let k = input(&[b, h, nk, d], DType::F64, kinds.1, f64v, &mut rng);
        let v = input(&[b, h, nk, dv], DType::F64, Kind::Contiguous, f64v, &mut rng);
        let g = input(&[b, h, nq, dv], DType::F64, Kind::Contiguous, f64v, &mut rng);
        let want_dq = finite_diff(&q.nd, |x| attn_functional(&c, x, &k.nd, &v.nd, &g.nd));
        let want_dk = finite_diff(&k.nd, |x| attn_functional(&c, &q.nd, x, &v.nd, &g.nd));
        let want_dv = finite_diff(&v.nd, |x| attn_functional(&c, &q.nd, &k.nd, x, &g.nd));
        let opts = c.options();
        for via in VIAS {
            let out = run_attention(via, &q.t, &k.t, &v.t, &opts).unwrap();
            let grads: AttentionGrads = match via {
                Via::Compose => compose::attention_backward(&q.t, &k.t, &v.t, &out, &g.t, &opts),
                Via::Tensor => Tensor::attention_backward(&q.t, &k.t, &v.t, &out, &g.t, &opts),
            }
            .unwrap();
            let what = format!("{via:?} {c:?}");
            prop_assert_eq!(grads.dq.dims(), q.t.dims());
            prop_assert_eq!(grads.dk.dims(), k.t.dims());
            prop_assert_eq!(grads.dv.dims(), v.t.dims());
            // Finite differences with h = 1e-6 are good to ~1e-9.
            assert_close_scaled(&values(&grads.dq), &want_dq, &[1.0], 1e-6, &format!("dq {what}"));
            assert_close_scaled(&values(&grads.dk), &want_dk, &[1.0], 1e-6, &format!("dk {what}"));
            assert_close_scaled(&values(&grads.dv), &want_dv, &[1.0], 1e-6, &format!("dv {what}"));
        }
    }
}

// ---------------------------------------------------------------------------------- patch embed

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn patch_embed_matches_naive_convolution(
        bcpe in (1usize..3, 1usize..4, 1usize..4, 1usize..5),
        extra in (0usize..6, 0usize..6),
        opts in (any::<bool>(), any::<bool>(), any::<bool>()),
        dtype in any_float(),
        kind in any_kind(),
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let (b, c, p, e) = bcpe;
        // H and W from P to 3P + 2: mostly not multiples of P
        let (hh, ww) = (p + extra.0 * p / 2 + extra.0 % 3, p + extra.1 * p / 2 + extra.1 % 2);
        let (gh, gw) = (hh / p, ww / p);
        let (with_bias, with_cls, with_pos) = opts;
        let rows = gh * gw + usize::from(with_cls);
        let vals = Values::Uniform(-1.0, 1.0);
        let img = input(&[b, c, hh, ww], dtype, kind, vals, &mut rng);
        let w = input(&[e, c, p, p], dtype, Kind::Permuted, vals, &mut rng);
        let bias = with_bias.then(|| input(&[e], dtype, Kind::Contiguous, vals, &mut rng));
        let cls = with_cls.then(|| input(&[e], dtype, Kind::Contiguous, vals, &mut rng));
        let pos = with_pos.then(|| input(&[rows, e], dtype, Kind::Narrowed, vals, &mut rng));
        let (want, scale) = {
            let mut want = Nd::new(&[b, rows, e], vec![0.0; b * rows * e]);
            let mut scale = want.clone();
            for bi in 0..b {
                for r in 0..rows {
                    for ei in 0..e {
                        let (mut y, mut s) = (0.0, 0.0);
                        let patch = if with_cls { r.checked_sub(1) } else { Some(r) };
                        match patch {
                            None => {
                                let v = cls.as_ref().unwrap().v()[ei];
                                y += v;
                                s += v.abs();
                            }
                            Some(pi) => {
                                let (py, px) = (pi / gw, pi % gw);
                                for ci in 0..c {
                                    for dy in 0..p {
                                        for dx in 0..p {
                                            let t = w.nd.at(&[ei, ci, dy, dx]) * img.nd.at(&[bi, ci, py * p + dy, px * p + dx]);
                                            y += t;
                                            s += t.abs();
                                        }
                                    }
                                }
                                if let Some(bias) = &bias {
                                    y += bias.v()[ei];
                                    s += bias.v()[ei].abs();
                                }
                            }
                        }
                        if let Some(pos) = &pos {
                            y += pos.nd.at(&[r, ei]);
                            s += pos.nd.at(&[r, ei]).abs();
                        }
                        let at = ravel(&[bi, r, ei], &want.shape);
                        want.data[at] = y;
                        scale.data[at] = s;
                    }
                }
            }
            (want, scale)
        };
        let o = PatchEmbedOptions {
            patch_size: p,
            class_embedding: cls.as_ref().map(|c| c.t.clone()),
            position_embedding: pos.as_ref().map(|p| p.t.clone()),
        };
        for via in VIAS {
            let bt = bias.as_ref().map(|b| &b.t);
            let y = match via {
                Via::Compose => compose::patch_embed(&img.t, &w.t, bt, &o),
                Via::Tensor => Tensor::patch_embed(&img.t, &w.t, bt, &o),
            }
            .unwrap();
            prop_assert_eq!(y.dims(), &[b, rows, e][..]);
            prop_assert_eq!(y.dtype(), dtype);
            assert_close_scaled(&values(&y), &want.data, &scale.data, tol(dtype), &format!("patch_embed {via:?} {dtype}"));
        }
    }
}

// ---------------------------------------------------------------------------------- contrastive

/// Naive CLIP loss: `(loss, lse_rows, lse_cols)`.
fn contrastive_ref(img: &Nd, txt: &Nd, s: f64) -> (f64, Vec<f64>, Vec<f64>) {
    let (n, d) = (img.shape[0], img.shape[1]);
    let logit = |i: usize, j: usize| {
        s * (0..d)
            .map(|p| img.at(&[i, p]) * txt.at(&[j, p]))
            .sum::<f64>()
    };
    let lse = |xs: Vec<f64>| {
        let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    };
    let rows: Vec<f64> = (0..n)
        .map(|i| lse((0..n).map(|j| logit(i, j)).collect()))
        .collect();
    let cols: Vec<f64> = (0..n)
        .map(|j| lse((0..n).map(|i| logit(i, j)).collect()))
        .collect();
    let row_loss = (0..n).map(|i| rows[i] - logit(i, i)).sum::<f64>() / n as f64;
    let col_loss = (0..n).map(|j| cols[j] - logit(j, j)).sum::<f64>() / n as f64;
    (0.5 * (row_loss + col_loss), rows, cols)
}

fn run_contrastive(via: Via, i: &Tensor, t: &Tensor, s: &Tensor) -> Result<ContrastiveOutput> {
    match via {
        Via::Compose => compose::contrastive_loss(i, t, s),
        Via::Tensor => Tensor::contrastive_loss(i, t, s),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn contrastive_loss_matches_naive_loops(
        nd in (1usize..6, 1usize..6),
        dtype in any_float(),
        scale_dtype in any_float(),
        kinds in (any_kind(), any_kind()),
        s in 0.5f64..5.0,
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let (n, d) = nd;
        let img = input(&[n, d], dtype, kinds.0, Values::Uniform(-1.0, 1.0), &mut rng);
        let txt = input(&[n, d], dtype, kinds.1, Values::Uniform(-1.0, 1.0), &mut rng);
        // the scale is used after conversion to the image dtype
        let s = round_to(dtype, round_to(scale_dtype, s));
        let st = tensor(&[round_to(scale_dtype, s)], &[], scale_dtype);
        let (loss, rows, cols) = contrastive_ref(&img.nd, &txt.nd, s);
        let mag = [s * d as f64 + 1.0];
        for via in VIAS {
            let r = run_contrastive(via, &img.t, &txt.t, &st).unwrap();
            let what = format!("{via:?} {dtype} n {n} d {d}");
            prop_assert_eq!(r.loss.dims(), &[] as &[usize]);
            prop_assert_eq!(r.lse_rows.dims(), &[n][..]);
            prop_assert_eq!(r.lse_cols.dims(), &[n][..]);
            assert_close_scaled(&values(&r.loss), &[loss], &mag, tol(dtype), &what);
            assert_close_scaled(&values(&r.lse_rows), &rows, &mag, tol(dtype), &what);
            assert_close_scaled(&values(&r.lse_cols), &cols, &mag, tol(dtype), &what);
        }
    }

    #[test]
    fn contrastive_backward_matches_finite_differences(
        nd in (1usize..5, 1usize..5),
        kinds in (any_kind(), any_kind()),
        s in 0.5f64..4.0,
        g in -2.0f64..2.0,
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let (n, d) = nd;
        let img = input(&[n, d], DType::F64, kinds.0, Values::Uniform(-1.0, 1.0), &mut rng);
        let txt = input(&[n, d], DType::F64, kinds.1, Values::Uniform(-1.0, 1.0), &mut rng);
        let st = tensor(&[s], &[], DType::F64);
        let gt = tensor(&[g], &[], DType::F64);
        let want_di = finite_diff(&img.nd, |x| g * contrastive_ref(x, &txt.nd, s).0);
        let want_dt = finite_diff(&txt.nd, |x| g * contrastive_ref(&img.nd, x, s).0);
        let sn = Nd::new(&[1], vec![s]);
        let want_ds = finite_diff(&sn, |x| g * contrastive_ref(&img.nd, &txt.nd, x.data[0]).0);
        for via in VIAS {
            let saved = run_contrastive(via, &img.t, &txt.t, &st).unwrap();
            let grads: ContrastiveGrads = match via {
                Via::Compose => compose::contrastive_loss_backward(&img.t, &txt.t, &st, &saved, &gt),
                Via::Tensor => Tensor::contrastive_loss_backward(&img.t, &txt.t, &st, &saved, &gt),
            }
            .unwrap();
            let what = format!("{via:?} n {n} d {d} s {s} g {g}");
            prop_assert_eq!(grads.d_image.dims(), &[n, d][..]);
            prop_assert_eq!(grads.d_text.dims(), &[n, d][..]);
            prop_assert_eq!(grads.d_scale.elem_count(), 1);
            assert_close_scaled(&values(&grads.d_image), &want_di, &[1.0], 1e-6, &format!("d_image {what}"));
            assert_close_scaled(&values(&grads.d_text), &want_dt, &[1.0], 1e-6, &format!("d_text {what}"));
            assert_close_scaled(&values(&grads.d_scale), &want_ds, &[1.0], 1e-6, &format!("d_scale {what}"));
        }
    }
}

/// Rows that see no key give a zero output and `-inf` log-sum-exp, on every path.
#[test]
fn attention_fully_masked_rows_are_zero_with_neg_inf_lse() {
    for dtype in FLOATS {
        let q = Tensor::ones([2, 1, 3, 2], dtype, &dev()).unwrap();
        let k = Tensor::ones([2, 1, 2, 2], dtype, &dev()).unwrap();
        let v = Tensor::ones([2, 1, 2, 3], dtype, &dev()).unwrap();
        // batch 0: every key masked; batch 1: causal with nq > nk hides keys from query 0
        let mask = tensor(&[0.0, 0.0, 1.0, 1.0], &[2, 2], DType::U32);
        let opts = AttentionOptions {
            scale: None,
            causal: true,
            key_padding_mask: Some(mask),
        };
        for via in VIAS {
            let r = run_attention(via, &q, &k, &v, &opts).unwrap();
            let out = values(&r.out);
            let lse = values(&r.lse);
            assert!(
                out[..9].iter().all(|&x| x == 0.0),
                "{via:?} {dtype} {out:?}"
            );
            assert!(lse[..3].iter().all(|&x| x == f64::NEG_INFINITY), "{lse:?}");
            assert!(
                out[9..12].iter().all(|&x| x == 0.0) && lse[3] == f64::NEG_INFINITY,
                "{out:?} {lse:?}"
            );
            assert!(out[12..].iter().all(|&x| x == 1.0), "{out:?}");
            let g = r.out.ones_like().unwrap();
            let grads = match via {
                Via::Compose => compose::attention_backward(&q, &k, &v, &r, &g, &opts),
                Via::Tensor => Tensor::attention_backward(&q, &k, &v, &r, &g, &opts),
            }
            .unwrap();
            for t in [&grads.dq, &grads.dk, &grads.dv] {
                assert!(values(t).iter().all(|x| x.is_finite()), "{via:?} {dtype}");
            }
        }
    }
}

//! Scaled dot-product attention, FlashAttention-2 style, forward and backward, on the CPU.
//!
//! Shapes: `q` is `(B, H, Nq, D)`, `k` is `(B, H, Nk, D)`, `v` is `(B, H, Nk, Dv)`, read through
//! [`AttnView`] strides (the last dimension contiguous, so permuted `(B, N, H, D)` tensors need no
//! copy); `out` is `(B, H, Nq, Dv)` and `lse` `(B, H, Nq)`, both contiguous.
//!
//! Semantics: `s_ij = scale * q_i . k_j`; with `causal`, query `i` sees key `j` iff
//! `j <= i + (Nk - Nq)` (bottom-right aligned, as FlashAttention); with `key_mask` (`(B, Nk)`,
//! nonzero = attend) masked keys are excluded. `lse_i = ln sum_{visible j} e^{s_ij}` and
//! `out_i = sum_j softmax_ij v_j`. A row without any visible key gets `out_i = 0`,
//! `lse_i = -inf` (torch gives NaN there).
//!
//! Forward algorithm: rayon tasks over `(b, h, query tile)` (tiles of <= 64 rows). Each task
//! streams key/value tiles (the whole key range at once when `Nk <= 1024`, else tiles of <= 256
//! keys): `S = scale Q K^T` via [`sgemm`], masking, online softmax (running max `m`, running sum
//! `l`, rescaling the accumulator by `e^{m_old - m_new}`), `acc += P V` via [`sgemm`]. Key tiles
//! entirely above the causal diagonal are skipped. Scratch per task is `O(tile^2)`; no `N x N`
//! buffer exists.
//!
//! Backward algorithm (FlashAttention-2): rayon tasks over `(b, h)`, each owning its slices of
//! `dq`, `dk`, `dv`. `delta_i = dO_i . O_i`; for each (query tile, key tile): recompute
//! `P = e^{S - lse}`, `dV += P^T dO`, `dP = dO V^T`, `dS = P * (dP - delta)`,
//! `dQ += scale dS K`, `dK += scale dS^T Q`.

use rayon::prelude::*;

use super::simd::{self, multiversion};
use crate::gemm::{MatRef, sgemm};

/// A read-only `(B, H, N, D)` tensor view: element `(b, h, i, d)` is
/// `data[b * batch_stride + h * head_stride + i * row_stride + d]`.
#[derive(Clone, Copy, Debug)]
pub struct AttnView<'a> {
    pub data: &'a [f32],
    pub batch_stride: usize,
    pub head_stride: usize,
    pub row_stride: usize,
}

impl<'a> AttnView<'a> {
    /// A contiguous `(B, heads, n, d)` tensor.
    pub fn contiguous(data: &'a [f32], heads: usize, n: usize, d: usize) -> Self {
        AttnView {
            data,
            batch_stride: heads * n * d,
            head_stride: n * d,
            row_stride: d,
        }
    }

    /// Offset of element `(b, h, i, 0)`.
    #[inline]
    fn offset(&self, b: usize, h: usize, i: usize) -> usize {
        b * self.batch_stride + h * self.head_stride + i * self.row_stride
    }

    /// The `rows x d` matrix starting at row `i` of head `(b, h)`.
    #[inline]
    fn rows(&self, b: usize, h: usize, i: usize) -> MatRef<'a> {
        MatRef::new(&self.data[self.offset(b, h, i)..], self.row_stride, 1)
    }

    /// The transpose (`d x rows`) of the rows starting at row `i` of head `(b, h)`.
    #[inline]
    fn rows_t(&self, b: usize, h: usize, i: usize) -> MatRef<'a> {
        MatRef::new(&self.data[self.offset(b, h, i)..], 1, self.row_stride)
    }

    /// Row `i` of head `(b, h)`, `d` long.
    #[inline]
    fn row(&self, b: usize, h: usize, i: usize, d: usize) -> &'a [f32] {
        let o = self.offset(b, h, i);
        &self.data[o..o + d]
    }

    fn check(&self, name: &str, batch: usize, heads: usize, n: usize, d: usize) {
        if batch == 0 || heads == 0 || n == 0 {
            return;
        }
        let last = self.offset(batch - 1, heads - 1, n - 1) + d;
        assert!(
            last <= self.data.len(),
            "attention: view {name} addresses element {last} beyond its {} elements",
            self.data.len()
        );
        assert!(
            self.row_stride >= d || n == 1,
            "attention: {name} rows overlap"
        );
    }
}

/// Problem sizes of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub batch: usize,
    pub heads: usize,
    pub n_q: usize,
    pub n_k: usize,
    pub head_dim: usize,
    pub v_dim: usize,
}

impl AttnDims {
    /// Panics unless `q`, `k`, `v`, the key mask and the log-sum-exp length fit these sizes.
    fn check_inputs(
        &self,
        q: &AttnView<'_>,
        k: &AttnView<'_>,
        v: &AttnView<'_>,
        key_mask: Option<&[u32]>,
        lse_len: usize,
    ) {
        let AttnDims {
            batch,
            heads,
            n_q,
            n_k,
            head_dim,
            v_dim,
        } = *self;
        assert!(
            head_dim > 0 && v_dim > 0,
            "attention: head_dim and v_dim must be positive"
        );
        q.check("q", batch, heads, n_q, head_dim);
        k.check("k", batch, heads, n_k, head_dim);
        v.check("v", batch, heads, n_k, v_dim);
        assert_eq!(lse_len, batch * heads * n_q, "attention: lse length");
        if let Some(km) = key_mask {
            assert_eq!(km.len(), batch * n_k, "attention: key_mask length");
        }
    }
}

/// Query rows per tile (upper bound; tiles are evened out).
const BQ: usize = 64;
/// Keys processed in one tile when `Nk <= SINGLE_KV` (the whole range).
const SINGLE_KV: usize = 1024;
/// Key tile (upper bound) when `Nk > SINGLE_KV`.
const BK: usize = 256;
/// Key tile of the backward pass.
const BK_BWD: usize = 128;

/// Splits `n` into tiles of at most `max` (evenly sized), returning the tile size.
fn even_tile(n: usize, max: usize) -> usize {
    let tiles = n.div_ceil(max).max(1);
    n.div_ceil(tiles).max(1)
}

/// Exclusive end of the keys visible to some query in `[i0, i1)` (all when not causal).
#[inline]
fn causal_end(causal: bool, i1: usize, n_q: usize, n_k: usize) -> usize {
    if !causal {
        return n_k;
    }
    // The last row `i1 - 1` sees keys `j <= i1 - 1 + n_k - n_q`.
    (i1 + n_k).saturating_sub(n_q).min(n_k)
}

/// Sets the invisible entries of the `rows x cols` score tile (queries from `i0`, keys from
/// `j0`) to `-inf`.
#[allow(clippy::too_many_arguments)]
fn apply_masks(
    s: &mut [f32],
    ld: usize,
    rows: usize,
    cols: usize,
    i0: usize,
    j0: usize,
    causal: bool,
    n_q: usize,
    n_k: usize,
    key_mask: Option<&[u32]>,
) {
    if let Some(km) = key_mask {
        let km = &km[j0..j0 + cols];
        if km.contains(&0) {
            for r in 0..rows {
                for (x, &keep) in s[r * ld..r * ld + cols].iter_mut().zip(km) {
                    if keep == 0 {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
        }
    }
    if causal {
        for r in 0..rows {
            // Visible keys: j < i + 1 + n_k - n_q.
            let lim = (i0 + r + 1 + n_k).saturating_sub(n_q);
            let start = lim.saturating_sub(j0).min(cols);
            s[r * ld + start..r * ld + cols].fill(f32::NEG_INFINITY);
        }
    }
}

multiversion! {
    /// Online-softmax update of one score tile (see the module docs); leaves `P` in `s`.
    fn online_softmax(
        s: &mut [f32],
        ld: usize,
        rows: usize,
        cols: usize,
        m: &mut [f32],
        l: &mut [f32],
        acc: &mut [f32],
        dv: usize,
    ) => online_softmax_impl;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn online_softmax_impl<const FMA: bool>(
    s: &mut [f32],
    ld: usize,
    rows: usize,
    cols: usize,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
    dv: usize,
) {
    for r in 0..rows {
        let row = &mut s[r * ld..r * ld + cols];
        let rm = simd::max(row);
        if rm == f32::NEG_INFINITY {
            // Nothing visible in this tile: P row = 0, state unchanged.
            row.fill(0.0);
            continue;
        }
        let m_new = simd::fmax(m[r], rm);
        let sum = simd::exp_shift_sum_inplace::<FMA>(row, m_new);
        if m[r] != m_new {
            let alpha = simd::exp::<FMA>(m[r] - m_new);
            l[r] = l[r] * alpha + sum;
            simd::scale(&mut acc[r * dv..(r + 1) * dv], alpha);
            m[r] = m_new;
        } else {
            l[r] += sum;
        }
    }
}

/// Attention forward (see the module docs for shapes, semantics and algorithm).
///
/// # Panics
/// If a view addresses elements outside its slice, `head_dim` or `v_dim` is 0, `out` is not
/// `B * H * Nq * Dv` long, `lse` not `B * H * Nq`, or `key_mask` not `B * Nk`.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    q: AttnView<'_>,
    k: AttnView<'_>,
    v: AttnView<'_>,
    dims: AttnDims,
    scale: f32,
    causal: bool,
    key_mask: Option<&[u32]>,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let AttnDims {
        batch,
        heads,
        n_q,
        n_k,
        head_dim: d,
        v_dim: dv,
    } = dims;
    dims.check_inputs(&q, &k, &v, key_mask, lse.len());
    assert_eq!(out.len(), batch * heads * n_q * dv, "attention: out length");
    if n_q == 0 || batch == 0 || heads == 0 {
        return;
    }
    let bq = even_tile(n_q, BQ);
    let bk = if n_k <= SINGLE_KV {
        n_k.max(1)
    } else {
        even_tile(n_k, BK)
    };

    let mut tasks = Vec::with_capacity(batch * heads * n_q.div_ceil(bq));
    for (bh, (o, l)) in out
        .chunks_mut(n_q * dv)
        .zip(lse.chunks_mut(n_q))
        .enumerate()
    {
        for (t, (o, l)) in o.chunks_mut(bq * dv).zip(l.chunks_mut(bq)).enumerate() {
            tasks.push((bh, t * bq, o, l));
        }
    }
    let scratch = || {
        (
            vec![0.0f32; bq * bk],
            vec![0.0f32; bq * dv],
            vec![0.0f32; 2 * bq],
        )
    };
    tasks
        .into_par_iter()
        .for_each_init(scratch, |(s, acc, ml), (bh, i0, o, lse)| {
            let (b, h) = (bh / heads, bh % heads);
            let rows = lse.len();
            let (m, l) = ml.split_at_mut(bq);
            let (m, l) = (&mut m[..rows], &mut l[..rows]);
            let acc = &mut acc[..rows * dv];
            m.fill(f32::NEG_INFINITY);
            l.fill(0.0);
            acc.fill(0.0);
            let km = key_mask.map(|km| &km[b * n_k..(b + 1) * n_k]);
            let kv_end = causal_end(causal, i0 + rows, n_q, n_k);
            let qm = q.rows(b, h, i0);
            let mut j0 = 0;
            while j0 < kv_end {
                let cols = bk.min(kv_end - j0);
                if km.is_some_and(|km| km[j0..j0 + cols].iter().all(|&x| x == 0)) {
                    j0 += cols;
                    continue;
                }
                sgemm(
                    rows,
                    cols,
                    d,
                    scale,
                    qm,
                    k.rows_t(b, h, j0),
                    false,
                    s,
                    bk,
                    false,
                );
                apply_masks(s, bk, rows, cols, i0, j0, causal, n_q, n_k, km);
                online_softmax(s, bk, rows, cols, m, l, acc, dv);
                sgemm(
                    rows,
                    dv,
                    cols,
                    1.0,
                    MatRef::new(s, bk, 1),
                    v.rows(b, h, j0),
                    true,
                    acc,
                    dv,
                    false,
                );
                j0 += cols;
            }
            for r in 0..rows {
                let orow = &mut o[r * dv..(r + 1) * dv];
                if l[r] > 0.0 {
                    let inv = 1.0 / l[r];
                    for (o, &a) in orow.iter_mut().zip(&acc[r * dv..(r + 1) * dv]) {
                        *o = a * inv;
                    }
                    lse[r] = m[r] + l[r].ln();
                } else {
                    orow.fill(0.0);
                    lse[r] = f32::NEG_INFINITY;
                }
            }
        });
}

multiversion! {
    /// `P = e^{S - lse}` in place (0 where `S = -inf` or `lse = -inf`).
    fn probs_from_lse(s: &mut [f32], ld: usize, rows: usize, cols: usize, lse: &[f32]) => probs_impl;
}

#[inline(always)]
fn probs_impl<const FMA: bool>(s: &mut [f32], ld: usize, rows: usize, cols: usize, lse: &[f32]) {
    for r in 0..rows {
        let row = &mut s[r * ld..r * ld + cols];
        if lse[r] == f32::NEG_INFINITY {
            row.fill(0.0);
        } else {
            simd::exp_shift_sum_inplace::<FMA>(row, lse[r]);
        }
    }
}

/// `dS = P * (dP - delta)` into `dp`.
fn dsoftmax(p: &[f32], dp: &mut [f32], ld: usize, rows: usize, cols: usize, delta: &[f32]) {
    for r in 0..rows {
        let dl = delta[r];
        for (g, &p) in dp[r * ld..r * ld + cols]
            .iter_mut()
            .zip(&p[r * ld..r * ld + cols])
        {
            *g = p * (*g - dl);
        }
    }
}

/// Attention backward: gradients of `out` (from [`attention_forward`], with its `lse`) with
/// respect to `q`, `k` and `v`, given `d_out`.
///
/// `out` and `d_out` are `(B, H, Nq, Dv)` views; `lse` is `(B, H, Nq)` contiguous; `dq` is
/// written as contiguous `(B, H, Nq, D)`, `dk` `(B, H, Nk, D)`, `dv` `(B, H, Nk, Dv)`
/// (overwritten, not accumulated). Rows without visible keys contribute nothing.
///
/// # Panics
/// As [`attention_forward`], and if an output slice has the wrong length.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: AttnView<'_>,
    k: AttnView<'_>,
    v: AttnView<'_>,
    out: AttnView<'_>,
    d_out: AttnView<'_>,
    lse: &[f32],
    dims: AttnDims,
    scale: f32,
    causal: bool,
    key_mask: Option<&[u32]>,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let AttnDims {
        batch,
        heads,
        n_q,
        n_k,
        head_dim: d,
        v_dim: dvd,
    } = dims;
    dims.check_inputs(&q, &k, &v, key_mask, lse.len());
    out.check("out", batch, heads, n_q, dvd);
    d_out.check("d_out", batch, heads, n_q, dvd);
    assert_eq!(dq.len(), batch * heads * n_q * d, "attention: dq length");
    assert_eq!(dk.len(), batch * heads * n_k * d, "attention: dk length");
    assert_eq!(dv.len(), batch * heads * n_k * dvd, "attention: dv length");
    dq.fill(0.0);
    dk.fill(0.0);
    dv.fill(0.0);
    if batch == 0 || heads == 0 || n_q == 0 || n_k == 0 {
        return;
    }
    let bq = even_tile(n_q, BQ);
    let bk = even_tile(n_k, BK_BWD);
    dq.par_chunks_mut(n_q * d)
        .zip(dk.par_chunks_mut(n_k * d))
        .zip(dv.par_chunks_mut(n_k * dvd))
        .enumerate()
        .for_each(|(bh, ((dq, dk), dvo))| {
            let (b, h) = (bh / heads, bh % heads);
            let lse = &lse[bh * n_q..(bh + 1) * n_q];
            let km = key_mask.map(|km| &km[b * n_k..(b + 1) * n_k]);
            let delta: Vec<f32> = (0..n_q)
                .map(|i| {
                    let (o, g) = (out.row(b, h, i, dvd), d_out.row(b, h, i, dvd));
                    o.iter().zip(g).map(|(&a, &b)| a * b).sum()
                })
                .collect();
            let mut s = vec![0.0f32; bq * bk];
            let mut dp = vec![0.0f32; bq * bk];
            for i0 in (0..n_q).step_by(bq) {
                let rows = bq.min(n_q - i0);
                let kv_end = causal_end(causal, i0 + rows, n_q, n_k);
                let (qm, gm) = (q.rows(b, h, i0), d_out.rows(b, h, i0));
                let dq_t = &mut dq[i0 * d..];
                for j0 in (0..kv_end).step_by(bk) {
                    let cols = bk.min(kv_end - j0);
                    if km.is_some_and(|km| km[j0..j0 + cols].iter().all(|&x| x == 0)) {
                        continue;
                    }
                    sgemm(
                        rows,
                        cols,
                        d,
                        scale,
                        qm,
                        k.rows_t(b, h, j0),
                        false,
                        &mut s,
                        bk,
                        false,
                    );
                    apply_masks(&mut s, bk, rows, cols, i0, j0, causal, n_q, n_k, km);
                    probs_from_lse(&mut s, bk, rows, cols, &lse[i0..i0 + rows]);
                    // dV_j += P^T dO_i
                    let pt = MatRef::new(&s, 1, bk);
                    sgemm(
                        cols,
                        dvd,
                        rows,
                        1.0,
                        pt,
                        gm,
                        true,
                        &mut dvo[j0 * dvd..],
                        dvd,
                        false,
                    );
                    // dP = dO_i V_j^T, then dS = P (dP - delta)
                    sgemm(
                        rows,
                        cols,
                        dvd,
                        1.0,
                        gm,
                        v.rows_t(b, h, j0),
                        false,
                        &mut dp,
                        bk,
                        false,
                    );
                    dsoftmax(&s, &mut dp, bk, rows, cols, &delta[i0..i0 + rows]);
                    // dQ_i += scale dS K_j; dK_j += scale dS^T Q_i
                    let ds = MatRef::new(&dp, bk, 1);
                    sgemm(
                        rows,
                        d,
                        cols,
                        scale,
                        ds,
                        k.rows(b, h, j0),
                        true,
                        dq_t,
                        d,
                        false,
                    );
                    let dst = MatRef::new(&dp, 1, bk);
                    sgemm(
                        cols,
                        d,
                        rows,
                        scale,
                        dst,
                        qm,
                        true,
                        &mut dk[j0 * d..],
                        d,
                        false,
                    );
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::rand_vec;
    use proptest::prelude::*;

    /// A `(B, H, N, D)` tensor stored permuted as `(B, N, H, D + pad)`.
    struct Strided {
        data: Vec<f32>,
        b_s: usize,
        h_s: usize,
        r_s: usize,
    }

    impl Strided {
        fn new(b: usize, h: usize, n: usize, d: usize, pad: usize, seed: u64) -> Self {
            let dp = d + pad;
            Strided {
                data: rand_vec(b * n * h * dp + 3, seed, 1.0),
                b_s: n * h * dp,
                h_s: dp,
                r_s: h * dp,
            }
        }
        fn view(&self) -> AttnView<'_> {
            AttnView {
                data: &self.data,
                batch_stride: self.b_s,
                head_stride: self.h_s,
                row_stride: self.r_s,
            }
        }
        fn at(&self, b: usize, h: usize, i: usize, d: usize) -> f64 {
            self.data[b * self.b_s + h * self.h_s + i * self.r_s + d] as f64
        }
    }

    struct Case {
        dims: AttnDims,
        causal: bool,
        mask: Option<Vec<u32>>,
        q: Strided,
        k: Strided,
        v: Strided,
        scale: f32,
    }

    impl std::fmt::Debug for Case {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{:?} causal={} mask={:?} strides q=({},{},{})",
                self.dims,
                self.causal,
                self.mask
                    .as_ref()
                    .map(|m| m.iter().filter(|&&x| x == 0).count()),
                self.q.b_s,
                self.q.h_s,
                self.q.r_s
            )
        }
    }

    fn visible(c: &Case, b: usize, i: usize, j: usize) -> bool {
        let AttnDims { n_q, n_k, .. } = c.dims;
        (!c.causal || j + n_q <= i + n_k) && c.mask.as_ref().is_none_or(|m| m[b * n_k + j] != 0)
    }

    /// f64 probabilities `(Nq, Nk)` and lse of head (b, h).
    fn ref_probs(c: &Case, b: usize, h: usize) -> (Vec<f64>, Vec<f64>) {
        let AttnDims {
            n_q,
            n_k,
            head_dim: d,
            ..
        } = c.dims;
        let mut p = vec![0.0; n_q * n_k];
        let mut lse = vec![f64::NEG_INFINITY; n_q];
        for i in 0..n_q {
            let s: Vec<f64> = (0..n_k)
                .map(|j| {
                    if !visible(c, b, i, j) {
                        return f64::NEG_INFINITY;
                    }
                    c.scale as f64
                        * (0..d)
                            .map(|x| c.q.at(b, h, i, x) * c.k.at(b, h, j, x))
                            .sum::<f64>()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let sum: f64 = s.iter().map(|&x| (x - m).exp()).sum();
            lse[i] = m + sum.ln();
            for j in 0..n_k {
                p[i * n_k + j] = (s[j] - lse[i]).exp();
            }
        }
        (p, lse)
    }

    fn case_strategy() -> impl Strategy<Value = Case> {
        (
            1usize..3,
            1usize..3,
            1usize..140,
            1usize..300,
            prop_oneof![Just(32usize), Just(64), Just(80), Just(128), 1usize..20],
            prop_oneof![Just(0usize), 1usize..40],
            0usize..5,
            any::<bool>(),
            0u8..3,
            any::<u64>(),
        )
            .prop_map(
                |(batch, heads, n_q, n_k, d, dv_extra, pad, causal, mask_kind, seed)| {
                    let dv = if dv_extra == 0 { d } else { dv_extra };
                    let mask = match mask_kind {
                        0 => None,
                        // Random mask; batch 0 fully masked.
                        1 => Some(
                            (0..batch * n_k)
                                .map(|i| {
                                    u32::from(
                                        i >= n_k && !(i * 31 + seed as usize).is_multiple_of(3),
                                    )
                                })
                                .collect(),
                        ),
                        _ => Some(
                            (0..batch * n_k)
                                .map(|i| u32::from(!(i * 17 + seed as usize).is_multiple_of(4)))
                                .collect(),
                        ),
                    };
                    Case {
                        dims: AttnDims {
                            batch,
                            heads,
                            n_q,
                            n_k,
                            head_dim: d,
                            v_dim: dv,
                        },
                        causal,
                        mask,
                        q: Strided::new(batch, heads, n_q, d, pad, seed),
                        k: Strided::new(batch, heads, n_k, d, pad + 1, seed ^ 11),
                        v: Strided::new(batch, heads, n_k, dv, pad, seed ^ 22),
                        scale: 1.5 / (d as f32).sqrt(),
                    }
                },
            )
    }

    fn run_forward(c: &Case) -> (Vec<f32>, Vec<f32>) {
        let AttnDims {
            batch,
            heads,
            n_q,
            v_dim,
            ..
        } = c.dims;
        let mut out = vec![f32::NAN; batch * heads * n_q * v_dim];
        let mut lse = vec![f32::NAN; batch * heads * n_q];
        attention_forward(
            c.q.view(),
            c.k.view(),
            c.v.view(),
            c.dims,
            c.scale,
            c.causal,
            c.mask.as_deref(),
            &mut out,
            &mut lse,
        );
        (out, lse)
    }

    fn check_forward(c: &Case) {
        let AttnDims {
            batch,
            heads,
            n_q,
            n_k,
            v_dim: dv,
            ..
        } = c.dims;
        let (out, lse) = run_forward(c);
        for b in 0..batch {
            for h in 0..heads {
                let (p, rl) = ref_probs(c, b, h);
                for i in 0..n_q {
                    let row = (b * heads + h) * n_q + i;
                    if rl[i] == f64::NEG_INFINITY {
                        assert_eq!(lse[row], f32::NEG_INFINITY);
                    } else {
                        assert!(
                            (lse[row] as f64 - rl[i]).abs() < 2e-5 * (1.0 + rl[i].abs()),
                            "lse {} vs {}",
                            lse[row],
                            rl[i]
                        );
                    }
                    for x in 0..dv {
                        let want: f64 = (0..n_k).map(|j| p[i * n_k + j] * c.v.at(b, h, j, x)).sum();
                        let got = out[row * dv + x] as f64;
                        assert!(
                            (got - want).abs() < 2e-5,
                            "out ({b},{h},{i},{x}) {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    // Tolerances: out abs 2e-5 (|v| <= 1, out is a convex combination); lse abs 2e-5 (1 + |lse|);
    // gradients abs 1e-4 + rel 1e-3 against an f64 naive backward.
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn forward_matches_reference(c in case_strategy()) {
            check_forward(&c);
        }

        #[test]
        fn backward_matches_reference(c in case_strategy()) {
            check_backward(&c);
        }
    }

    #[test]
    fn long_keys_multi_tile() {
        // n_k > SINGLE_KV (1024) exercises the streamed online softmax.
        for (causal, mask) in [(false, false), (true, false), (true, true)] {
            let (b, h, nq, nk, d) = (1, 2, 70, 1300, 64);
            let c = Case {
                dims: AttnDims {
                    batch: b,
                    heads: h,
                    n_q: nq,
                    n_k: nk,
                    head_dim: d,
                    v_dim: d,
                },
                causal,
                mask: mask.then(|| {
                    (0..nk)
                        .map(|j| u32::from(j % 5 != 1 && !(300..600).contains(&j)))
                        .collect()
                }),
                q: Strided::new(b, h, nq, d, 0, 1),
                k: Strided::new(b, h, nk, d, 0, 2),
                v: Strided::new(b, h, nk, d, 0, 3),
                scale: 4.0 / (d as f32).sqrt(),
            };
            check_forward(&c);
            check_backward(&c);
        }
    }

    fn check_backward(c: &Case) {
        let AttnDims {
            batch,
            heads,
            n_q,
            n_k,
            head_dim: d,
            v_dim: dv,
        } = c.dims;
        let (out, lse) = run_forward(c);
        let d_out = rand_vec(out.len(), 77, 1.0);
        let mut dq = vec![f32::NAN; batch * heads * n_q * d];
        let mut dk = vec![f32::NAN; batch * heads * n_k * d];
        let mut dvv = vec![f32::NAN; batch * heads * n_k * dv];
        let ov = AttnView::contiguous(&out, heads, n_q, dv);
        let gv = AttnView::contiguous(&d_out, heads, n_q, dv);
        attention_backward(
            c.q.view(),
            c.k.view(),
            c.v.view(),
            ov,
            gv,
            &lse,
            c.dims,
            c.scale,
            c.causal,
            c.mask.as_deref(),
            &mut dq,
            &mut dk,
            &mut dvv,
        );
        let close = |g: f32, w: f64, what: &str| {
            assert!(
                (g as f64 - w).abs() <= 1e-4 + 1e-3 * w.abs(),
                "{what}: {g} vs {w}"
            );
        };
        let sc = c.scale as f64;
        for b in 0..batch {
            for h in 0..heads {
                let bh = b * heads + h;
                let (p, _) = ref_probs(c, b, h);
                let go = |i: usize, x: usize| d_out[(bh * n_q + i) * dv + x] as f64;
                // dP, dS
                let mut ds = vec![0.0; n_q * n_k];
                for i in 0..n_q {
                    let dp: Vec<f64> = (0..n_k)
                        .map(|j| (0..dv).map(|x| go(i, x) * c.v.at(b, h, j, x)).sum())
                        .collect();
                    let delta: f64 = (0..n_k).map(|j| p[i * n_k + j] * dp[j]).sum();
                    for j in 0..n_k {
                        ds[i * n_k + j] = p[i * n_k + j] * (dp[j] - delta);
                    }
                }
                for j in 0..n_k {
                    for x in 0..dv {
                        let w: f64 = (0..n_q).map(|i| p[i * n_k + j] * go(i, x)).sum();
                        close(dvv[(bh * n_k + j) * dv + x], w, "dv");
                    }
                    for x in 0..d {
                        let w: f64 = sc
                            * (0..n_q)
                                .map(|i| ds[i * n_k + j] * c.q.at(b, h, i, x))
                                .sum::<f64>();
                        close(dk[(bh * n_k + j) * d + x], w, "dk");
                    }
                }
                for i in 0..n_q {
                    for x in 0..d {
                        let w: f64 = sc
                            * (0..n_k)
                                .map(|j| ds[i * n_k + j] * c.k.at(b, h, j, x))
                                .sum::<f64>();
                        close(dq[(bh * n_q + i) * d + x], w, "dq");
                    }
                }
            }
        }
    }
}

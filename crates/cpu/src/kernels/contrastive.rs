//! CLIP symmetric contrastive loss over `logits = scale * img @ txt^T`, without an `N x N` buffer.
//!
//! Shapes: `img` and `txt` are `(N, D)` row-major, paired (the label of row `i` is column `i`);
//! `lse_rows`, `lse_cols` are `(N)`. The loss is
//! `(mean_i (lse_row_i - logit_ii) + mean_j (lse_col_j - logit_jj)) / 2`, i.e. torch's
//! `(cross_entropy(logits, arange) + cross_entropy(logits.T, arange)) / 2`.
//!
//! Forward algorithm: rayon tasks over blocks of 256 rows; each task walks the column tiles
//! (256 wide), computing the logits tile with [`sgemm`] into per-task scratch, then updating
//! the running row log-sum-exp (max `m`, sum `l`, rescaled online) and a per-task partial column
//! log-sum-exp (tile column max, then sums of `e^{s - max}`), all in f32 with max rescaling.
//! The partial column statistics are merged after the parallel loop. Memory: `O(N * D)` inputs
//! plus `O(tasks * N + tile^2)` scratch.
//!
//! Backward: `dlogits_ij = d_loss / (2N) * (softmax_row_ij + softmax_col_ij - 2 [i == j])`,
//! recomputed tile by tile from the saved `lse`s; `d_img = scale * dlogits @ txt`,
//! `d_txt = scale * dlogits^T @ img`, `d_scale = sum_ij dlogits_ij (img_i . txt_j)`. Rayon tasks
//! over contiguous groups of row blocks (one group per thread) own their `d_img` rows and
//! accumulate a private `d_txt` (N x D), summed at the end.

use rayon::prelude::*;

use super::simd::{self, LANES, multiversion};
use crate::gemm::{MatRef, sgemm};

/// Rows per task (and tile height).
const TI: usize = 512;
/// Tile width (columns of the logits tile).
const TJ: usize = 256;

/// Merges two (max, sum) log-sum-exp states.
#[inline]
fn merge(m1: f32, l1: f32, m2: f32, l2: f32) -> (f32, f32) {
    if m2 == f32::NEG_INFINITY {
        return (m1, l1);
    }
    if m1 == f32::NEG_INFINITY {
        return (m2, l2);
    }
    let m = m1.max(m2);
    (m, l1 * (m1 - m).exp() + l2 * (m2 - m).exp())
}

multiversion! {
    /// Row and column log-sum-exp updates for one `rows x cols` logits tile (row-major, `ld`).
    #[allow(clippy::too_many_arguments)]
    fn lse_tile(
        s: &[f32],
        ld: usize,
        rows: usize,
        cols: usize,
        row_m: &mut [f32],
        row_l: &mut [f32],
        col_m: &mut [f32],
        col_l: &mut [f32],
        tmp: &mut [f32],
    ) => lse_tile_impl;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn lse_tile_impl<const FMA: bool>(
    s: &[f32],
    ld: usize,
    rows: usize,
    cols: usize,
    row_m: &mut [f32],
    row_l: &mut [f32],
    col_m: &mut [f32],
    col_l: &mut [f32],
    tmp: &mut [f32],
) {
    // Rows.
    for r in 0..rows {
        let row = &s[r * ld..r * ld + cols];
        let rm = simd::max(row);
        let mut acc = [0.0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let mut tail = 0.0;
        for &x in chunks.remainder() {
            tail += simd::exp::<FMA>(x - rm);
        }
        for c in chunks {
            for l in 0..LANES {
                acc[l] += simd::exp::<FMA>(c[l] - rm);
            }
        }
        let (m, l) = merge(row_m[r], row_l[r], rm, simd::hsum(&acc) + tail);
        row_m[r] = m;
        row_l[r] = l;
    }
    // Columns: tile max per column, then sums of e^{s - max}.
    let (cm, cs) = tmp[..2 * cols].split_at_mut(cols);
    cm.fill(f32::NEG_INFINITY);
    cs.fill(0.0);
    for r in 0..rows {
        for (m, &x) in cm.iter_mut().zip(&s[r * ld..r * ld + cols]) {
            *m = simd::fmax(*m, x);
        }
    }
    for r in 0..rows {
        for ((sum, &m), &x) in cs.iter_mut().zip(cm.iter()).zip(&s[r * ld..r * ld + cols]) {
            *sum += simd::exp::<FMA>(x - m);
        }
    }
    for j in 0..cols {
        let (m, l) = merge(col_m[j], col_l[j], cm[j], cs[j]);
        col_m[j] = m;
        col_l[j] = l;
    }
}

/// `scale * img_i . txt_i` for every `i`.
fn diagonal(img: &[f32], txt: &[f32], n: usize, d: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            let (a, b) = (&img[i * d..(i + 1) * d], &txt[i * d..(i + 1) * d]);
            scale * a.iter().zip(b).map(|(&x, &y)| x * y).sum::<f32>()
        })
        .collect()
}

/// CLIP loss forward: returns the loss and fills the row and column log-sum-exps of the logits
/// (needed by [`contrastive_backward`]). `n == 0` gives 0.
///
/// # Panics
/// If `img` / `txt` are not `n * d` long or `lse_rows` / `lse_cols` not `n`.
pub fn contrastive_forward(
    img: &[f32],
    txt: &[f32],
    n: usize,
    d: usize,
    scale: f32,
    lse_rows: &mut [f32],
    lse_cols: &mut [f32],
) -> f32 {
    assert_eq!(img.len(), n * d, "contrastive: img length");
    assert_eq!(txt.len(), n * d, "contrastive: txt length");
    assert_eq!(lse_rows.len(), n, "contrastive: lse_rows length");
    assert_eq!(lse_cols.len(), n, "contrastive: lse_cols length");
    if n == 0 {
        return 0.0;
    }
    let partial_cols: Vec<Vec<f32>> = lse_rows
        .par_chunks_mut(TI)
        .enumerate()
        .map(|(bi, lse_r)| {
            let i0 = bi * TI;
            let rows = lse_r.len();
            simd::with_scratch(rows * TJ, |s| {
                let mut tmp = vec![0.0f32; 2 * TJ];
                let mut row_m = vec![f32::NEG_INFINITY; rows];
                let mut row_l = vec![0.0f32; rows];
                // Column state: first n = max, last n = sum.
                let mut col = vec![0.0f32; 2 * n];
                col[..n].fill(f32::NEG_INFINITY);
                let (col_m, col_l) = col.split_at_mut(n);
                let a = MatRef::row_major(&img[i0 * d..], d);
                for j0 in (0..n).step_by(TJ) {
                    let cols = TJ.min(n - j0);
                    let bt = MatRef::new(&txt[j0 * d..], 1, d);
                    sgemm(rows, cols, d, scale, a, bt, false, s, TJ, false);
                    lse_tile(
                        s,
                        TJ,
                        rows,
                        cols,
                        &mut row_m,
                        &mut row_l,
                        &mut col_m[j0..j0 + cols],
                        &mut col_l[j0..j0 + cols],
                        &mut tmp,
                    );
                }
                for ((o, &m), &l) in lse_r.iter_mut().zip(&row_m).zip(&row_l) {
                    *o = m + l.ln();
                }
                col
            })
        })
        .collect();
    lse_cols.par_iter_mut().enumerate().for_each(|(j, o)| {
        let (mut m, mut l) = (f32::NEG_INFINITY, 0.0);
        for p in &partial_cols {
            (m, l) = merge(m, l, p[j], p[n + j]);
        }
        *o = m + l.ln();
    });
    let diag = diagonal(img, txt, n, d, scale);
    let mut total = 0.0f64;
    for i in 0..n {
        total += (lse_rows[i] as f64 - diag[i] as f64) + (lse_cols[i] as f64 - diag[i] as f64);
    }
    (total / (2.0 * n as f64)) as f32
}

multiversion! {
    /// Turns a tile of raw products `img_i . txt_j` into `dlogits` in place, returning
    /// `sum dlogits * raw` (the tile's share of `d_scale`).
    #[allow(clippy::too_many_arguments)]
    fn dlogits_tile(
        s: &mut [f32],
        ld: usize,
        rows: usize,
        cols: usize,
        diag_col0: isize,
        scale: f32,
        g: f32,
        lse_r: &[f32],
        lse_c: &[f32],
    ) -> f64 => dlogits_tile_impl;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dlogits_tile_impl<const FMA: bool>(
    s: &mut [f32],
    ld: usize,
    rows: usize,
    cols: usize,
    diag_col0: isize,
    scale: f32,
    g: f32,
    lse_r: &[f32],
    lse_c: &[f32],
) -> f64 {
    let mut total = 0.0f64;
    for r in 0..rows {
        let row = &mut s[r * ld..r * ld + cols];
        // Column of the diagonal element in this row, if inside the tile.
        let dc = diag_col0 + r as isize;
        let diag_raw = (0..cols as isize).contains(&dc).then(|| row[dc as usize]);
        let lr = lse_r[r];
        let mut acc = [0.0f32; LANES];
        let mut xc = row.chunks_exact_mut(LANES);
        let mut lc = lse_c[..cols].chunks_exact(LANES);
        for (x, lcv) in (&mut xc).zip(&mut lc) {
            for l in 0..LANES {
                let raw = x[l];
                let z = raw * scale;
                let gv = g * (simd::exp::<FMA>(z - lr) + simd::exp::<FMA>(z - lcv[l]));
                acc[l] = simd::madd::<FMA>(gv, raw, acc[l]);
                x[l] = gv;
            }
        }
        let mut tail = 0.0f32;
        for (x, &lcv) in xc.into_remainder().iter_mut().zip(lc.remainder()) {
            let raw = *x;
            let z = raw * scale;
            let gv = g * (simd::exp::<FMA>(z - lr) + simd::exp::<FMA>(z - lcv));
            tail += gv * raw;
            *x = gv;
        }
        total += (simd::hsum(&acc) + tail) as f64;
        if let Some(raw) = diag_raw {
            row[dc as usize] -= 2.0 * g;
            total -= 2.0 * g as f64 * raw as f64;
        }
    }
    total
}

/// CLIP loss backward: writes `d_img`, `d_txt` (`(N, D)`, overwritten) for the upstream gradient
/// `d_loss` and returns the gradient with respect to `scale`. `lse_rows` / `lse_cols` come from
/// [`contrastive_forward`] with the same inputs.
///
/// # Panics
/// If a slice length does not match `n` / `d`.
#[allow(clippy::too_many_arguments)]
pub fn contrastive_backward(
    img: &[f32],
    txt: &[f32],
    n: usize,
    d: usize,
    scale: f32,
    lse_rows: &[f32],
    lse_cols: &[f32],
    d_loss: f32,
    d_img: &mut [f32],
    d_txt: &mut [f32],
) -> f32 {
    assert_eq!(img.len(), n * d, "contrastive: img length");
    assert_eq!(txt.len(), n * d, "contrastive: txt length");
    assert_eq!(lse_rows.len(), n, "contrastive: lse_rows length");
    assert_eq!(lse_cols.len(), n, "contrastive: lse_cols length");
    assert_eq!(d_img.len(), n * d, "contrastive: d_img length");
    assert_eq!(d_txt.len(), n * d, "contrastive: d_txt length");
    d_img.fill(0.0);
    d_txt.fill(0.0);
    if n == 0 || d == 0 {
        return 0.0;
    }
    let g = d_loss / (2.0 * n as f32);
    let blocks = n.div_ceil(TI);
    let groups = rayon::current_num_threads().clamp(1, blocks);
    let rows_per_group = blocks.div_ceil(groups) * TI;
    let results: Vec<(Vec<f32>, f64)> = d_img
        .par_chunks_mut(rows_per_group * d)
        .enumerate()
        .map(|(gi, d_img_g)| {
            let mut part = vec![0.0f32; n * d];
            let mut s = vec![0.0f32; TI * TJ];
            let mut dscale = 0.0f64;
            let g0 = gi * rows_per_group;
            let g_rows = d_img_g.len() / d;
            for i0 in (g0..g0 + g_rows).step_by(TI) {
                let rows = TI.min(g0 + g_rows - i0);
                let a = MatRef::row_major(&img[i0 * d..], d);
                let d_img_t = &mut d_img_g[(i0 - g0) * d..];
                for j0 in (0..n).step_by(TJ) {
                    let cols = TJ.min(n - j0);
                    sgemm(
                        rows,
                        cols,
                        d,
                        1.0,
                        a,
                        MatRef::new(&txt[j0 * d..], 1, d),
                        false,
                        &mut s,
                        TJ,
                        false,
                    );
                    dscale += dlogits_tile(
                        &mut s,
                        TJ,
                        rows,
                        cols,
                        i0 as isize - j0 as isize,
                        scale,
                        g,
                        &lse_rows[i0..i0 + rows],
                        &lse_cols[j0..j0 + cols],
                    );
                    let gm = MatRef::new(&s, TJ, 1);
                    sgemm(
                        rows,
                        d,
                        cols,
                        scale,
                        gm,
                        MatRef::row_major(&txt[j0 * d..], d),
                        true,
                        d_img_t,
                        d,
                        false,
                    );
                    let gt = MatRef::new(&s, 1, TJ);
                    sgemm(
                        cols,
                        d,
                        rows,
                        scale,
                        gt,
                        a,
                        true,
                        &mut part[j0 * d..],
                        d,
                        false,
                    );
                }
            }
            (part, dscale)
        })
        .collect();
    let chunk = 1 << 14;
    d_txt.par_chunks_mut(chunk).enumerate().for_each(|(ci, o)| {
        for (part, _) in &results {
            o.iter_mut()
                .zip(&part[ci * chunk..])
                .for_each(|(o, &p)| *o += p);
        }
    });
    results.iter().map(|r| r.1).sum::<f64>() as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::rand_vec;
    use proptest::prelude::*;

    /// f64 loss of `(img, txt, scale)` via the full logits matrix.
    fn ref_loss(
        img: &[f64],
        txt: &[f64],
        n: usize,
        d: usize,
        scale: f64,
    ) -> (f64, Vec<f64>, Vec<f64>) {
        let mut s = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                s[i * n + j] = scale * (0..d).map(|x| img[i * d + x] * txt[j * d + x]).sum::<f64>();
            }
        }
        let lse = |v: &mut dyn Iterator<Item = f64>| {
            let v: Vec<f64> = v.collect();
            let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
        };
        let lr: Vec<f64> = (0..n)
            .map(|i| lse(&mut (0..n).map(|j| s[i * n + j])))
            .collect();
        let lc: Vec<f64> = (0..n)
            .map(|j| lse(&mut (0..n).map(|i| s[i * n + j])))
            .collect();
        let loss = (0..n)
            .map(|i| lr[i] + lc[i] - 2.0 * s[i * n + i])
            .sum::<f64>()
            / (2.0 * n as f64);
        (loss, lr, lc)
    }

    // Tolerances: loss and lse abs 1e-4 (1 + |x|) with |logits| up to ~50; gradients against
    // central finite differences of the f64 reference loss: abs 2e-4 * d_loss + rel 2e-3.
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn matches_reference(n in 1usize..300, d in 1usize..40, seed in any::<u64>(), scale in 0.5f32..20.0) {
            let amp = (2.0 / d as f32).sqrt();
            let img = rand_vec(n * d, seed, amp);
            let txt = rand_vec(n * d, seed ^ 9, amp);
            let (mut lr, mut lc) = (vec![0.0; n], vec![0.0; n]);
            let loss = contrastive_forward(&img, &txt, n, d, scale, &mut lr, &mut lc);
            let f64v = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            let (img64, txt64) = (f64v(&img), f64v(&txt));
            let (wl, wr, wc) = ref_loss(&img64, &txt64, n, d, scale as f64);
            prop_assert!((loss as f64 - wl).abs() < 1e-4 * (1.0 + wl.abs()), "loss {} vs {}", loss, wl);
            for i in 0..n {
                prop_assert!((lr[i] as f64 - wr[i]).abs() < 1e-4 * (1.0 + wr[i].abs()));
                prop_assert!((lc[i] as f64 - wc[i]).abs() < 1e-4 * (1.0 + wc[i].abs()));
            }
            // Backward vs analytic f64 gradient.
            let d_loss = 1.7f32;
            let (mut gi, mut gt) = (vec![0.0; n * d], vec![0.0; n * d]);
            let gs = contrastive_backward(&img, &txt, n, d, scale, &lr, &lc, d_loss, &mut gi, &mut gt);
            let sc = scale as f64;
            let mut wgi = vec![0.0; n * d];
            let mut wgt = vec![0.0; n * d];
            let mut wgs = 0.0;
            for i in 0..n {
                for j in 0..n {
                    let raw: f64 = (0..d).map(|x| img64[i * d + x] * txt64[j * d + x]).sum();
                    let s = sc * raw;
                    let g = d_loss as f64 / (2.0 * n as f64)
                        * ((s - wr[i]).exp() + (s - wc[j]).exp() - if i == j { 2.0 } else { 0.0 });
                    wgs += g * raw;
                    for x in 0..d {
                        wgi[i * d + x] += sc * g * txt64[j * d + x];
                        wgt[j * d + x] += sc * g * img64[i * d + x];
                    }
                }
            }
            let tol = |w: f64| 2e-4 * d_loss as f64 / n as f64 * sc + 2e-3 * w.abs();
            for x in 0..n * d {
                prop_assert!((gi[x] as f64 - wgi[x]).abs() <= tol(wgi[x]), "d_img {} vs {}", gi[x], wgi[x]);
                prop_assert!((gt[x] as f64 - wgt[x]).abs() <= tol(wgt[x]), "d_txt {} vs {}", gt[x], wgt[x]);
            }
            prop_assert!((gs as f64 - wgs).abs() <= 1e-4 * d_loss as f64 * (1.0 + wgs.abs() * 10.0), "d_scale {} vs {}", gs, wgs);
        }
    }

    #[test]
    fn finite_differences() {
        // Check the analytic f64 formula used above against finite differences once.
        let (n, d, scale) = (5, 3, 3.0f64);
        let img = rand_vec(n * d, 1, 1.0)
            .iter()
            .map(|&x| x as f64)
            .collect::<Vec<_>>();
        let txt = rand_vec(n * d, 2, 1.0)
            .iter()
            .map(|&x| x as f64)
            .collect::<Vec<_>>();
        let img32: Vec<f32> = img.iter().map(|&x| x as f32).collect();
        let txt32: Vec<f32> = txt.iter().map(|&x| x as f32).collect();
        let (mut lr, mut lc) = (vec![0.0; n], vec![0.0; n]);
        contrastive_forward(&img32, &txt32, n, d, scale as f32, &mut lr, &mut lc);
        let (mut gi, mut gt) = (vec![0.0; n * d], vec![0.0; n * d]);
        let gs = contrastive_backward(
            &img32,
            &txt32,
            n,
            d,
            scale as f32,
            &lr,
            &lc,
            1.0,
            &mut gi,
            &mut gt,
        );
        let h = 1e-6;
        for x in 0..n * d {
            let mut p = img.clone();
            p[x] += h;
            let mut m = img.clone();
            m[x] -= h;
            let fd =
                (ref_loss(&p, &txt, n, d, scale).0 - ref_loss(&m, &txt, n, d, scale).0) / (2.0 * h);
            assert!(
                (gi[x] as f64 - fd).abs() < 1e-4,
                "d_img[{x}] {} vs fd {fd}",
                gi[x]
            );
            let mut p = txt.clone();
            p[x] += h;
            let mut m = txt.clone();
            m[x] -= h;
            let fd =
                (ref_loss(&img, &p, n, d, scale).0 - ref_loss(&img, &m, n, d, scale).0) / (2.0 * h);
            assert!(
                (gt[x] as f64 - fd).abs() < 1e-4,
                "d_txt[{x}] {} vs fd {fd}",
                gt[x]
            );
        }
        let fd = (ref_loss(&img, &txt, n, d, scale + 1e-6).0
            - ref_loss(&img, &txt, n, d, scale - 1e-6).0)
            / 2e-6;
        assert!((gs as f64 - fd).abs() < 1e-4, "d_scale {gs} vs fd {fd}");
    }
}

//! Layer normalization over the last dimension of contiguous rows, as
//! `torch.nn.functional.layer_norm(x, (cols,), weight, bias, eps)`.
//!
//! `x` and `out` are `(rows, cols)` row-major; `weight` and `bias` are `(cols)`. Per row, with two
//! vectorized passes over the (cache-resident) row: `mean = sum(x) / cols`, then the biased
//! variance `var = sum((x - mean)^2) / cols` (exact two-pass, no `E[x^2] - mean^2`
//! cancellation), then `out = (x - mean) * rsqrt(var + eps) * weight + bias`. Rows are split
//! over rayon tasks of about 32K elements.

use rayon::prelude::*;

use super::simd::{self, LANES, multiversion};

/// Layer norm of each `cols`-long row of `x` into `out`; `weight`/`bias` default to 1/0.
///
/// # Panics
/// If `cols == 0`, `x.len()` is not a multiple of `cols`, `out.len() != x.len()`, or `weight` /
/// `bias` are not `cols` long.
pub fn layer_norm_rows(
    x: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
    cols: usize,
) {
    assert!(cols > 0, "layer_norm: cols must be positive");
    assert_eq!(
        x.len() % cols,
        0,
        "layer_norm: x.len() is not a multiple of cols"
    );
    assert_eq!(x.len(), out.len(), "layer_norm: x and out lengths differ");
    assert!(
        weight.is_none_or(|w| w.len() == cols),
        "layer_norm: weight length"
    );
    assert!(
        bias.is_none_or(|b| b.len() == cols),
        "layer_norm: bias length"
    );
    let chunk = simd::rows_per_task(cols) * cols;
    if x.len() <= chunk {
        ln_block(x, weight, bias, eps, out, cols);
    } else {
        x.par_chunks(chunk)
            .zip(out.par_chunks_mut(chunk))
            .for_each(|(x, o)| ln_block(x, weight, bias, eps, o, cols));
    }
}

/// Gradients of [`layer_norm_rows`]: `dx` (same layout as `x`) into `dx`, and the column
/// sums `sum_rows(g * xhat)` and `sum_rows(g)` (the weight and bias gradients) returned in f64
/// (they add up over every row). Statistics are recomputed per row in f64.
///
/// # Panics
/// If `cols == 0` or the lengths do not fit `(rows, cols)`.
pub fn layer_norm_backward_rows(
    x: &[f32],
    g: &[f32],
    weight: Option<&[f32]>,
    eps: f32,
    dx: &mut [f32],
    cols: usize,
) -> (Vec<f64>, Vec<f64>) {
    assert!(
        cols > 0 && x.len().is_multiple_of(cols),
        "layer_norm_backward: shape"
    );
    assert!(
        x.len() == g.len() && x.len() == dx.len(),
        "layer_norm_backward: lengths"
    );
    assert!(
        weight.is_none_or(|w| w.len() == cols),
        "layer_norm_backward: weight"
    );
    let chunk = simd::rows_per_task(cols) * cols;
    let block = |x: &[f32], g: &[f32], dx: &mut [f32]| {
        // Column sums in f32 within one task (a few hundred rows at most), in f64 across tasks.
        let mut dw = vec![0f32; cols];
        let mut db = vec![0f32; cols];
        ln_backward_block(x, g, weight, eps, dx, &mut dw, &mut db, cols);
        (
            dw.into_iter().map(f64::from).collect::<Vec<_>>(),
            db.into_iter().map(f64::from).collect::<Vec<_>>(),
        )
    };
    let add = |(mut a, mut b): (Vec<f64>, Vec<f64>), (c, d): (Vec<f64>, Vec<f64>)| {
        a.iter_mut().zip(&c).for_each(|(a, c)| *a += c);
        b.iter_mut().zip(&d).for_each(|(b, d)| *b += d);
        (a, b)
    };
    if x.len() <= chunk {
        block(x, g, dx)
    } else {
        x.par_chunks(chunk)
            .zip(g.par_chunks(chunk))
            .zip(dx.par_chunks_mut(chunk))
            .map(|((x, g), dx)| block(x, g, dx))
            .reduce(|| (vec![0f64; cols], vec![0f64; cols]), add)
    }
}

multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn ln_backward_block(
        x: &[f32],
        g: &[f32],
        weight: Option<&[f32]>,
        eps: f32,
        dx: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
        cols: usize,
    ) => ln_backward_block_impl;
}

/// One block of rows of the layer-norm backward: statistics by the forward's two passes, then
/// `dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))` with `dxhat = g * weight`.
///
/// The per-row sums (variance, `mean(dxhat)`, `mean(dxhat * xhat)`) are serial chains, one
/// add per column; rows go through [`ln_backward_rows`] in groups of [`GROUP`] so that the
/// chains of different rows overlap instead of each waiting on the add latency. Each row's
/// sums, and each column's weight/bias sums (rows in order), are formed in the same order as
/// one row at a time, so the grouping changes no bits.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn ln_backward_block_impl<const FMA: bool>(
    x: &[f32],
    g: &[f32],
    weight: Option<&[f32]>,
    eps: f32,
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    cols: usize,
) {
    let full = x.len() / (GROUP * cols) * (GROUP * cols);
    for ((x, g), dx) in x[..full]
        .chunks_exact(GROUP * cols)
        .zip(g[..full].chunks_exact(GROUP * cols))
        .zip(dx[..full].chunks_exact_mut(GROUP * cols))
    {
        ln_backward_rows::<GROUP, FMA>(x, g, weight, eps, dx, dw, db, cols);
    }
    for ((x, g), dx) in x[full..]
        .chunks_exact(cols)
        .zip(g[full..].chunks_exact(cols))
        .zip(dx[full..].chunks_exact_mut(cols))
    {
        ln_backward_rows::<1, FMA>(x, g, weight, eps, dx, dw, db, cols);
    }
}

/// Rows whose per-row reductions run side by side in [`ln_backward_block_impl`].
const GROUP: usize = 8;

/// The backward of `R` consecutive rows (`x`, `g`, `dx` hold `R * cols` values).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn ln_backward_rows<const R: usize, const FMA: bool>(
    x: &[f32],
    g: &[f32],
    weight: Option<&[f32]>,
    eps: f32,
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    cols: usize,
) {
    let inv_n = 1.0 / cols as f32;
    let (x, g) = (&x[..R * cols], &g[..R * cols]);
    let dx = &mut dx[..R * cols];
    let (dw, db) = (&mut dw[..cols], &mut db[..cols]);
    let mean: [f32; R] = core::array::from_fn(|r| simd::sum(&x[r * cols..][..cols]) * inv_n);
    let mut var = [0.0f32; R];
    for j in 0..cols {
        for r in 0..R {
            let d = x[r * cols + j] - mean[r];
            var[r] = simd::madd::<FMA>(d, d, var[r]);
        }
    }
    let rstd: [f32; R] = core::array::from_fn(|r| 1.0 / (var[r] * inv_n + eps).sqrt());
    // dx holds dxhat for now.
    let (mut m1, mut m2) = ([0.0f32; R], [0.0f32; R]);
    for j in 0..cols {
        let w = weight.map(|w| w[j]);
        for r in 0..R {
            let xh = (x[r * cols + j] - mean[r]) * rstd[r];
            let gj = g[r * cols + j];
            let dxh = w.map_or(gj, |w| gj * w);
            dx[r * cols + j] = dxh;
            m1[r] += dxh;
            m2[r] = simd::madd::<FMA>(dxh, xh, m2[r]);
            dw[j] = simd::madd::<FMA>(gj, xh, dw[j]);
            db[j] += gj;
        }
    }
    for r in 0..R {
        let (m1, m2) = (m1[r] * inv_n, m2[r] * inv_n);
        for j in 0..cols {
            let xh = (x[r * cols + j] - mean[r]) * rstd[r];
            let d = &mut dx[r * cols + j];
            *d = rstd[r] * (*d - m1 - xh * m2);
        }
    }
}

multiversion! {
    fn ln_block(
        x: &[f32],
        weight: Option<&[f32]>,
        bias: Option<&[f32]>,
        eps: f32,
        out: &mut [f32],
        cols: usize,
    ) => ln_block_impl;
}

#[inline(always)]
fn ln_block_impl<const FMA: bool>(
    x: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
    cols: usize,
) {
    let inv_n = 1.0 / cols as f32;
    for (row, o) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let mean = simd::sum(row) * inv_n;
        let mut acc = [0.0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let mut tail = 0.0f32;
        for &v in chunks.remainder() {
            let d = v - mean;
            tail = simd::madd::<FMA>(d, d, tail);
        }
        for c in chunks {
            for l in 0..LANES {
                let d = c[l] - mean;
                acc[l] = simd::madd::<FMA>(d, d, acc[l]);
            }
        }
        let var = (simd::hsum(&acc) + tail) * inv_n;
        let rstd = 1.0 / (var + eps).sqrt();
        match (weight, bias) {
            (Some(w), Some(b)) => {
                for (((o, &v), &w), &b) in o.iter_mut().zip(row).zip(w).zip(b) {
                    *o = simd::madd::<FMA>((v - mean) * rstd, w, b);
                }
            }
            (Some(w), None) => {
                for ((o, &v), &w) in o.iter_mut().zip(row).zip(w) {
                    *o = (v - mean) * rstd * w;
                }
            }
            (None, Some(b)) => {
                for ((o, &v), &b) in o.iter_mut().zip(row).zip(b) {
                    *o = (v - mean) * rstd + b;
                }
            }
            (None, None) => {
                for (o, &v) in o.iter_mut().zip(row) {
                    *o = (v - mean) * rstd;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{assert_close, rand_vec};
    use proptest::prelude::*;

    fn reference(
        x: &[f32],
        w: Option<&[f32]>,
        b: Option<&[f32]>,
        eps: f32,
        cols: usize,
    ) -> Vec<f32> {
        let mut out = Vec::new();
        for row in x.chunks(cols) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            for (j, &v) in row.iter().enumerate() {
                let y = (v as f64 - mean) * rstd * w.map_or(1.0, |w| w[j] as f64)
                    + b.map_or(0.0, |b| b[j] as f64);
                out.push(y as f32);
            }
        }
        out
    }

    // Tolerance: abs 2e-5 + rel 1e-5 (outputs are O(1..10); f32 row statistics).
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_reference(rows in 1usize..30, cols in 1usize..800, seed in any::<u64>(),
                             offset in -100.0f32..100.0, which in 0u8..4) {
            let x: Vec<f32> = rand_vec(rows * cols, seed, 3.0).iter().map(|v| v + offset).collect();
            let w = rand_vec(cols, seed ^ 1, 2.0);
            let b = rand_vec(cols, seed ^ 2, 1.0);
            let (w, b) = match which { 0 => (Some(&w[..]), Some(&b[..])), 1 => (Some(&w[..]), None),
                2 => (None, Some(&b[..])), _ => (None, None) };
            let mut out = vec![0.0; x.len()];
            layer_norm_rows(&x, w, b, 1e-5, &mut out, cols);
            assert_close(&out, &reference(&x, w, b, 1e-5, cols), 2e-4, 1e-4, "layer_norm");
        }
    }

    #[test]
    fn large_parallel() {
        let cols = 768;
        let x = rand_vec(cols * 200, 9, 4.0);
        let w = rand_vec(cols, 10, 1.0);
        let b = rand_vec(cols, 11, 1.0);
        let mut out = vec![0.0; x.len()];
        layer_norm_rows(&x, Some(&w), Some(&b), 1e-6, &mut out, cols);
        assert_close(
            &out,
            &reference(&x, Some(&w), Some(&b), 1e-6, cols),
            2e-5,
            1e-5,
            "ln",
        );
    }
}

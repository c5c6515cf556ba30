//! Row-wise softmax and log-softmax over contiguous rows.
//!
//! `x` and `out` are `(rows, cols)` row-major with `rows = x.len() / cols`. Per row (three passes,
//! vectorized): `m = max(row)`, `e = exp(row - m)` (written to `out`) with `s = sum(e)`, then
//! `out = e / s` (softmax) or `out = row - m - ln(s)` (log-softmax). Rows are split over rayon
//! tasks of about 32K elements.
//!
//! Special values: a row whose entries are all `-inf` (a fully masked row) gives all zeros
//! (softmax) and all `-inf` (log-softmax) instead of torch's NaN; `-inf` entries in other rows
//! give exactly 0 / `-inf`. A `+inf` or NaN entry makes the row NaN (as in torch).

use rayon::prelude::*;

use super::simd::{self, multiversion};

/// Softmax of each `cols`-long row of `x` into `out` (same shape).
///
/// # Panics
/// If `cols == 0`, `x.len()` is not a multiple of `cols`, or `out.len() != x.len()`.
pub fn softmax_rows(x: &[f32], out: &mut [f32], cols: usize) {
    run_rows(x, out, cols, softmax_block);
}

/// Log-softmax of each `cols`-long row of `x` into `out` (same shape).
///
/// # Panics
/// As [`softmax_rows`].
pub fn log_softmax_rows(x: &[f32], out: &mut [f32], cols: usize) {
    run_rows(x, out, cols, log_softmax_block);
}

fn run_rows(x: &[f32], out: &mut [f32], cols: usize, f: fn(&[f32], &mut [f32], usize)) {
    assert!(cols > 0, "softmax: cols must be positive");
    assert_eq!(
        x.len() % cols,
        0,
        "softmax: x.len() is not a multiple of cols"
    );
    assert_eq!(x.len(), out.len(), "softmax: x and out lengths differ");
    let chunk = simd::rows_per_task(cols) * cols;
    if x.len() <= chunk {
        f(x, out, cols);
    } else {
        x.par_chunks(chunk)
            .zip(out.par_chunks_mut(chunk))
            .for_each(|(x, o)| f(x, o, cols));
    }
}

multiversion! {
    fn softmax_block(x: &[f32], out: &mut [f32], cols: usize) => softmax_block_impl;
}

multiversion! {
    fn log_softmax_block(x: &[f32], out: &mut [f32], cols: usize) => log_softmax_block_impl;
}

#[inline(always)]
fn softmax_block_impl<const FMA: bool>(x: &[f32], out: &mut [f32], cols: usize) {
    for (row, o) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let m = simd::max(row);
        if m == f32::NEG_INFINITY {
            o.fill(0.0);
            continue;
        }
        let s = simd::exp_shift_sum::<FMA>(row, m, o);
        simd::scale(o, 1.0 / s);
    }
}

#[inline(always)]
fn log_softmax_block_impl<const FMA: bool>(x: &[f32], out: &mut [f32], cols: usize) {
    for (row, o) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let m = simd::max(row);
        if m == f32::NEG_INFINITY {
            o.fill(f32::NEG_INFINITY);
            continue;
        }
        let s = simd::exp_shift_sum::<FMA>(row, m, o);
        let shift = m + s.ln();
        for (o, &v) in o.iter_mut().zip(row) {
            *o = v - shift;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{assert_close, rand_vec};
    use proptest::prelude::*;

    fn reference(x: &[f32], cols: usize, log: bool) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(cols) {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            if m == f64::NEG_INFINITY {
                out.extend(
                    row.iter()
                        .map(|_| if log { f32::NEG_INFINITY } else { 0.0 }),
                );
                continue;
            }
            let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            for &v in row {
                let l = v as f64 - m - s.ln();
                out.push(if log { l as f32 } else { l.exp() as f32 });
            }
        }
        out
    }

    // Tolerance: softmax abs 1e-6 + rel 1e-5; log-softmax abs 2e-5 + rel 1e-6 (values up to ~30).
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_reference(rows in 1usize..40, cols in 1usize..300, seed in any::<u64>(), mask in 0u32..4) {
            let mut x = rand_vec(rows * cols, seed, 8.0);
            // Mask some entries with -inf; mask == 3 masks whole rows too.
            for (i, v) in x.iter_mut().enumerate() {
                let r = i / cols;
                if (mask >= 1 && (i * 7 + seed as usize).is_multiple_of(5)) || (mask == 3 && r % 3 == 0) {
                    *v = f32::NEG_INFINITY;
                }
            }
            let mut out = vec![0.0; x.len()];
            softmax_rows(&x, &mut out, cols);
            assert_close(&out, &reference(&x, cols, false), 1e-6, 1e-5, "softmax");
            log_softmax_rows(&x, &mut out, cols);
            assert_close(&out, &reference(&x, cols, true), 2e-5, 1e-6, "log_softmax");
        }
    }

    #[test]
    fn large_parallel_and_extremes() {
        let cols = 197;
        let mut x = rand_vec(cols * 500, 3, 50.0);
        x[5] = 1e30;
        x[cols + 1] = -1e30;
        let mut out = vec![0.0; x.len()];
        softmax_rows(&x, &mut out, cols);
        assert_close(&out, &reference(&x, cols, false), 1e-6, 1e-5, "softmax");
        log_softmax_rows(&x, &mut out, cols);
        assert_close(&out, &reference(&x, cols, true), 1e-4, 1e-6, "log_softmax");
    }
}

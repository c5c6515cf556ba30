//! Matrix-vector products for the skinny cases (`m == 1`, or `n == 1` seen transposed). They are
//! bound by the bandwidth of reading the matrix once, so instead of packing we stream it in its
//! natural order: AXPY sweeps over contiguous rows, or dot products over contiguous columns.

use super::{Isa, MatRef};

/// Matrix elements (n * k) below which the product stays on one thread.
const PAR_MIN_ELEMS: usize = 1 << 16;
/// Output elements per parallel task, at least.
const MIN_CHUNK: usize = 64;

/// `out[j * os] = alpha * sum_p x(p) * mat(p, j) (+ out[j * os])` for `j < n`, where
/// `x(p) = xs.0[p * xs.1]`. Views are already bounds-checked; `n, k >= 1`.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemv(
    isa: Isa,
    n: usize,
    k: usize,
    alpha: f32,
    xs: (&[f32], usize),
    mat: MatRef<'_>,
    accumulate: bool,
    out: &mut [f32],
    os: usize,
    parallel: bool,
) {
    // A contiguous copy of x keeps every inner loop unit-stride.
    let x: Vec<f32> = (0..k).map(|p| xs.0[p * xs.1]).collect();
    let mut y = vec![0.0f32; n];
    let threads = if parallel && n * k >= PAR_MIN_ELEMS {
        rayon::current_num_threads()
    } else {
        1
    };
    if threads > 1 && n >= 2 * MIN_CHUNK {
        use rayon::prelude::*;
        let chunk = n.div_ceil(threads).max(MIN_CHUNK);
        y.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(t, yc)| columns(isa, &x, mat, t * chunk, yc));
    } else {
        columns(isa, &x, mat, 0, &mut y);
    }
    for (j, &v) in y.iter().enumerate() {
        let d = &mut out[j * os];
        *d = if accumulate {
            alpha * v + *d
        } else {
            alpha * v
        };
    }
}

/// `y[j] = sum_p x[p] * mat(p, j0 + j)`, compiled for the best instruction set available.
fn columns(isa: Isa, x: &[f32], mat: MatRef<'_>, j0: usize, y: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only selected when the CPU reports AVX-512F.
        Isa::Avx512 => unsafe { columns_avx512(x, mat, j0, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only selected when the CPU reports AVX2 and FMA.
        Isa::Avx2 => unsafe { columns_avx2(x, mat, j0, y) },
        Isa::Portable => columns_impl(x, mat, j0, y),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn columns_avx512(x: &[f32], mat: MatRef<'_>, j0: usize, y: &mut [f32]) {
    columns_impl(x, mat, j0, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn columns_avx2(x: &[f32], mat: MatRef<'_>, j0: usize, y: &mut [f32]) {
    columns_impl(x, mat, j0, y)
}

#[inline(always)]
fn columns_impl(x: &[f32], mat: MatRef<'_>, j0: usize, y: &mut [f32]) {
    let (rs, cs, d) = (mat.row_stride, mat.col_stride, mat.data);
    let n = y.len();
    let k = x.len();
    if cs == 1 {
        // Rows of the matrix are contiguous: y += x[p] * row p, four rows per sweep of y.
        let mut p = 0;
        while p + 4 <= k {
            let r0 = &d[p * rs + j0..][..n];
            let r1 = &d[(p + 1) * rs + j0..][..n];
            let r2 = &d[(p + 2) * rs + j0..][..n];
            let r3 = &d[(p + 3) * rs + j0..][..n];
            let (x0, x1, x2, x3) = (x[p], x[p + 1], x[p + 2], x[p + 3]);
            for j in 0..n {
                y[j] += x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j];
            }
            p += 4;
        }
        for (p, &xp) in x.iter().enumerate().skip(p) {
            let r = &d[p * rs + j0..][..n];
            for (yj, &v) in y.iter_mut().zip(r) {
                *yj += xp * v;
            }
        }
    } else if rs == 1 {
        // Columns are contiguous: one dot product each.
        for (j, yj) in y.iter_mut().enumerate() {
            *yj = dot(x, &d[(j0 + j) * cs..][..k]);
        }
    } else {
        for p in 0..k {
            let xp = x[p];
            for (j, yj) in y.iter_mut().enumerate() {
                *yj += xp * d[p * rs + (j0 + j) * cs];
            }
        }
    }
}

/// Dot product with 32 independent lanes so the loop vectorizes without reassociation.
#[inline(always)]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    const L: usize = 32;
    let mut acc = [0.0f32; L];
    let (xc, yc) = (x.chunks_exact(L), y.chunks_exact(L));
    let (xt, yt) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..L {
            acc[l] += a[l] * b[l];
        }
    }
    let tail: f32 = xt.iter().zip(yt).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f32>() + tail
}

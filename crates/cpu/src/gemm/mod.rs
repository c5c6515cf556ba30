//! Single-precision matrix products: `C = alpha * A @ B (+ C)`.
//!
//! A and B are read through arbitrary (non-negative) row and column strides, so transposed and
//! permuted views need no copy; C is row-major with a leading dimension.
//!
//! # Algorithm
//!
//! [`sgemm`] follows the Goto/BLIS scheme (see `driver.rs`):
//!
//! ```text
//! for jc in n by NC:                 B panel  kc x nc  packed, stays in L2
//!   for pc in k by KC:
//!     pack B[pc.., jc..]             micro-panels of NR columns, zero-padded
//!     for ic in m by MC:
//!       pack A[ic.., pc..]           micro-panels of MR rows
//!       for ir in mc by MR:          A micro-panel  mr x kc  stays in L1
//!         for jr in nc by NR:        B micro-panels stream from L2
//!           micro-kernel: MR x NR register tile, kc rank-1 updates, then
//!           C = alpha * tile (+ C)   (first pc block honours `accumulate`, later ones add)
//! ```
//!
//! Packing reads through the views' strides (with unit-stride fast paths), which is what makes
//! transposed operands free. Edge tiles are handled inside the kernels: rows by instantiating the
//! kernel for the exact row count, columns by masked loads/stores.
//!
//! Micro-kernels and blocking, chosen once per process from the CPU's features:
//!
//! | kernel           | MR x NR | KC  | MC  | NC   |
//! |------------------|---------|-----|-----|------|
//! | AVX-512F         | 14 x 32 | 384 | 168 | 768  |
//! | AVX2 + FMA       | 6 x 16  | 256 | 144 | 512  |
//! | portable (other) | 4 x 16  | 256 | 64  | 1024 |
//!
//! (AVX-512 sizes measured on Zen 4 with 2 threads: KC 256..768 x NC 512..1024 were all within
//! ~5%; KC = 384 keeps the 14 x KC A micro-panel at 21 KiB, inside L1, and 384 x 768 of B near the
//! 1 MiB L2.) The AVX-512 kernel also packs row-major A and transposed B with an in-register
//! 16 x 16 transpose rather than scalar strided stores.
//!
//! [`sgemm_packed_b`] runs the same loop nest with B packed ahead of time ([`PackedB`]: every
//! `KC x NC` block in the layout `pack B` writes), so an operand multiplied many times (a
//! weight) is packed once rather than per call.
//!
//! With `parallel`, C is split over the rayon pool along its larger dimension in whole register
//! tiles, one chunk per thread, each chunk running the loop nest above with its own thread-local
//! packing buffers. `m == 1` and `n == 1` go to a streaming matrix-vector path (`gemv.rs`)
//! instead, since packing would cost as much as the product.

mod driver;
mod gemv;
#[cfg(target_arch = "x86_64")]
mod kernel_avx2;
#[cfg(target_arch = "x86_64")]
mod kernel_avx512;
mod kernel_portable;

use std::mem::MaybeUninit;
use std::sync::OnceLock;

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
    sgemm_isa(
        detected_isa(),
        m,
        n,
        k,
        alpha,
        a,
        b,
        accumulate,
        c,
        ldc,
        parallel,
    );
}

/// The instruction sets the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

/// The best instruction set this CPU supports, detected once.
fn detected_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// The micro-kernel and its blocking for `isa`.
fn kernel_for(isa: Isa) -> driver::Kernel {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => driver::Kernel {
            run: kernel_avx512::kernel,
            mr: kernel_avx512::MR,
            nr: kernel_avx512::NR,
            kc: 384,
            mc: 168,
            nc: 768,
            transpose: Some(kernel_avx512::transpose_pack),
            run_strided: Some(kernel_avx512::kernel_strided),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => driver::Kernel {
            run: kernel_avx2::kernel,
            mr: kernel_avx2::MR,
            nr: kernel_avx2::NR,
            kc: 256,
            mc: 144,
            nc: 512,
            transpose: None,
            run_strided: None,
        },
        Isa::Portable => driver::Kernel {
            run: kernel_portable::kernel,
            mr: kernel_portable::MR,
            nr: kernel_portable::NR,
            kc: 256,
            mc: 64,
            nc: 1024,
            transpose: None,
            run_strided: None,
        },
    }
}

/// Panics unless every element `(i, j)`, `i < rows`, `j < cols` of `v` lies in its slice
/// (`rows, cols >= 1`).
fn check_view(v: &MatRef<'_>, rows: usize, cols: usize, name: &str) {
    let last = (rows - 1).checked_mul(v.row_stride).and_then(|r| {
        (cols - 1)
            .checked_mul(v.col_stride)
            .and_then(|c| r.checked_add(c))
    });
    match last {
        Some(l) if l < v.data.len() => {}
        _ => panic!(
            "sgemm: {name} view ({rows} x {cols}, strides {} / {}) exceeds its slice of {}",
            v.row_stride,
            v.col_stride,
            v.data.len()
        ),
    }
}

/// [`sgemm`] with the instruction set chosen by the caller (tests cover every kernel the CPU
/// can run this way).
#[allow(clippy::too_many_arguments)]
fn sgemm_isa(
    isa: Isa,
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
    if !check_c(m, n, k, (!accumulate).then_some(0.0), c, ldc) {
        return;
    }
    check_view(&a, m, k, "A");
    check_view(&b, k, n, "B");
    if m == 1 {
        // A row times B.
        gemv::gemv(
            isa,
            n,
            k,
            alpha,
            (a.data, a.col_stride),
            b,
            accumulate,
            c,
            1,
            parallel,
        );
    } else if n == 1 {
        // Transposed: C^T = B^T @ A^T, a row (B's column) times A^T, written down C's column.
        let at = MatRef::new(a.data, a.col_stride, a.row_stride);
        gemv::gemv(
            isa,
            m,
            k,
            alpha,
            (b.data, b.row_stride),
            at,
            accumulate,
            c,
            ldc,
            parallel,
        );
    } else {
        driver::gemm(
            &kernel_for(isa),
            m,
            n,
            k,
            alpha,
            a,
            driver::BSrc::View(b),
            accumulate,
            as_uninit(c),
            ldc,
            parallel,
        );
    }
}

/// A `k x n` right-hand operand packed once, ahead of time, into the blocked panel layout of the
/// micro-kernel this CPU runs, for reuse across many [`sgemm_packed_b`] calls (e.g. a weight
/// multiplied by many activation blocks).
///
/// Holds `k * n` floats rounded up to the kernel's register tile width.
pub struct PackedB {
    inner: driver::PackedPanels,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedB")
            .field("k", &self.inner.k)
            .field("n", &self.inner.n)
            .field("nr", &self.inner.kern.nr)
            .finish_non_exhaustive()
    }
}

impl PackedB {
    /// Packs the `k x n` matrix `b` (read through its strides, so a transposed view costs
    /// nothing extra).
    ///
    /// # Panics
    /// If `b` addresses elements outside its slice.
    pub fn new(k: usize, n: usize, b: MatRef<'_>) -> Self {
        Self::new_isa(detected_isa(), k, n, b)
    }

    /// [`PackedB::new`] for the kernel of `isa`.
    fn new_isa(isa: Isa, k: usize, n: usize, b: MatRef<'_>) -> Self {
        if k > 0 && n > 0 {
            check_view(&b, k, n, "B");
        }
        PackedB {
            inner: driver::PackedPanels::new(kernel_for(isa), k, n, b),
        }
    }

    /// Rows (the depth of the products it takes part in).
    pub fn k(&self) -> usize {
        self.inner.k
    }

    /// Columns.
    pub fn n(&self) -> usize {
        self.inner.n
    }
}

/// [`sgemm`] with a pre-packed B: `c[i * ldc + j] = alpha * sum_p a(i, p) * b(p, j) +
/// (accumulate ? c[i * ldc + j] : 0)` for `i < m`, `j < b.n()`, `p < b.k()`.
///
/// `parallel` spreads the work over the rayon pool; pass `false` when calling from inside a
/// parallel loop.
///
/// # Panics
/// If `a` (`m x b.k()`) or C addresses elements outside its slice.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed_b(
    m: usize,
    alpha: f32,
    a: MatRef<'_>,
    b: &PackedB,
    accumulate: bool,
    c: &mut [f32],
    ldc: usize,
    parallel: bool,
) {
    let (n, k) = (b.n(), b.k());
    if !check_c(m, n, k, (!accumulate).then_some(0.0), c, ldc) {
        return;
    }
    check_view(&a, m, k, "A");
    driver::gemm(
        &b.inner.kern,
        m,
        n,
        k,
        alpha,
        a,
        driver::BSrc::Packed {
            b: &b.inner,
            col0: 0,
        },
        accumulate,
        as_uninit(c),
        ldc,
        parallel,
    );
}

/// `c` viewed as possibly-uninitialised memory, for the driver, which only writes floats.
fn as_uninit(c: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the driver writes only
    // initialised floats through the view, so `c` stays initialised.
    unsafe { &mut *(c as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// `C = alpha * A @ B` into `c`, which need not be initialised: every element of the `m x n`
/// block (leading dimension `ldc`) is written, the rest of `c` is left as it is. Saves the
/// pass that zeroing a fresh output would cost.
///
/// # Panics
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub fn sgemm_uninit(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
    parallel: bool,
) {
    if !check_c(m, n, k, Some(MaybeUninit::new(0.0)), c, ldc) {
        return;
    }
    // The vector paths take initialised memory: a row is zeroed in place, a column (whose
    // elements are `ldc` apart) goes through a small buffer.
    if m == 1 {
        let row = &mut c[..n];
        row.fill(MaybeUninit::new(0.0));
        // SAFETY: every element of `row` was just initialised, and `MaybeUninit<f32>` has the
        // layout of `f32`.
        let row = unsafe { &mut *(row as *mut [MaybeUninit<f32>] as *mut [f32]) };
        sgemm(m, n, k, alpha, a, b, false, row, ldc, parallel);
        return;
    }
    if n == 1 {
        let mut col = vec![0.0f32; m];
        sgemm(m, n, k, alpha, a, b, false, &mut col, 1, parallel);
        for (i, x) in col.into_iter().enumerate() {
            c[i * ldc] = MaybeUninit::new(x);
        }
        return;
    }
    check_view(&a, m, k, "A");
    check_view(&b, k, n, "B");
    let kern = kernel_for(detected_isa());
    let b = driver::BSrc::View(b);
    driver::gemm(&kern, m, n, k, alpha, a, b, false, c, ldc, parallel);
}

/// As [`sgemm_uninit`] with a packed right-hand operand (see [`sgemm_packed_b`]).
///
/// # Panics
/// As [`sgemm_packed_b`].
pub fn sgemm_packed_b_uninit(
    m: usize,
    alpha: f32,
    a: MatRef<'_>,
    b: &PackedB,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
    parallel: bool,
) {
    let (n, k) = (b.n(), b.k());
    if !check_c(m, n, k, Some(MaybeUninit::new(0.0)), c, ldc) {
        return;
    }
    check_view(&a, m, k, "A");
    let packed = driver::BSrc::Packed {
        b: &b.inner,
        col0: 0,
    };
    driver::gemm(
        &b.inner.kern,
        m,
        n,
        k,
        alpha,
        a,
        packed,
        false,
        c,
        ldc,
        parallel,
    );
}

/// Checks C (`m x n`, leading dimension `ldc`) against its slice and handles the degenerate
/// shapes: returns `false` when nothing is left to compute (`m`, `n` or `k` zero; for
/// `k == 0` the block is set to `zero`, or left as it is when `zero` is `None`, i.e. when
/// accumulating). `T` is `f32`, or `MaybeUninit<f32>` for the uninitialised-output entry
/// points.
fn check_c<T: Copy>(
    m: usize,
    n: usize,
    k: usize,
    zero: Option<T>,
    c: &mut [T],
    ldc: usize,
) -> bool {
    if m == 0 || n == 0 {
        return false;
    }
    // Rows of C must not overlap (tasks write them concurrently) and must fit the slice.
    assert!(m == 1 || ldc >= n, "sgemm: ldc {ldc} < n {n}");
    let c_end = (m - 1).checked_mul(ldc).and_then(|x| x.checked_add(n));
    assert!(
        c_end.is_some_and(|e| e <= c.len()),
        "sgemm: C ({m} x {n}, ldc {ldc}) exceeds its slice of {}",
        c.len()
    );
    if k == 0 {
        if let Some(zero) = zero {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(zero);
            }
        }
        return false;
    }
    true
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every instruction set this CPU can run, best first.
    fn isas() -> Vec<Isa> {
        let mut v = vec![detected_isa()];
        #[cfg(target_arch = "x86_64")]
        if v[0] == Isa::Avx512
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            v.push(Isa::Avx2);
        }
        if v[0] != Isa::Portable {
            v.push(Isa::Portable);
        }
        v
    }

    /// Deterministic values in [-1, 1).
    fn fill(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// A `rows x cols` view with layout `trans` (column-major when true) and `pad` extra
    /// elements per leading dimension.
    fn layout(rows: usize, cols: usize, trans: bool, pad: usize) -> (usize, usize, usize) {
        if trans {
            let ld = rows + pad;
            (1, ld, ld * cols.max(1))
        } else {
            let ld = cols + pad;
            (ld, 1, ld * rows.max(1))
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        isa: Isa,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        (ta, pa): (bool, usize),
        (tb, pb): (bool, usize),
        accumulate: bool,
        ldc_pad: usize,
        parallel: bool,
        packed: bool,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let (ars, acs, alen) = layout(m, k, ta, pa);
        let (brs, bcs, blen) = layout(k, n, tb, pb);
        let ad = fill(alen, seed);
        let bd = fill(blen, seed + 1);
        let a = MatRef::new(&ad, ars, acs);
        let b = MatRef::new(&bd, brs, bcs);
        let ldc = n + ldc_pad;
        let c0 = fill(m.max(1) * ldc, seed + 2);
        let mut want = c0.clone();
        let mut got = c0.clone();
        naive_gemm(m, n, k, alpha, a, b, accumulate, &mut want, ldc);
        if packed {
            let pb = PackedB::new_isa(isa, k, n, b);
            sgemm_packed_b(m, alpha, a, &pb, accumulate, &mut got, ldc, parallel);
        } else {
            sgemm_isa(
                isa, m, n, k, alpha, a, b, accumulate, &mut got, ldc, parallel,
            );
        }
        // Elements are in [-1, 1): the error of a k-term sum grows at most ~ k * eps.
        let tol = 1e-5 * (k as f32 + 1.0) * (alpha.abs() + 1.0);
        for i in 0..m.max(1) {
            for j in 0..ldc {
                let (w, g) = (want[i * ldc + j], got[i * ldc + j]);
                if i >= m || j >= n {
                    prop_assert_eq!(g, c0[i * ldc + j], "padding touched at ({}, {})", i, j);
                } else {
                    prop_assert!(
                        (w - g).abs() <= tol * (1.0 + w.abs()),
                        "{:?} packed={} m={} n={} k={} at ({}, {}): want {} got {}",
                        isa,
                        packed,
                        m,
                        n,
                        k,
                        i,
                        j,
                        w,
                        g
                    );
                }
            }
        }
        Ok(())
    }

    fn dim() -> impl Strategy<Value = usize> {
        prop_oneof![0usize..4, 1usize..80, 1usize..300]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn matches_naive(
            m in dim(), n in dim(), k in dim(),
            alpha in prop_oneof![Just(1.0f32), -2.0f32..2.0],
            ta: bool, tb: bool, pa in 0usize..3, pb in 0usize..3, ldc_pad in 0usize..3,
            accumulate: bool, parallel: bool, seed: u64,
        ) {
            for isa in isas() {
                check(isa, m, n, k, alpha, (ta, pa), (tb, pb), accumulate, ldc_pad, parallel, false, seed)?;
            }
        }

        #[test]
        fn packed_b_matches_naive(
            m in dim(), n in dim(), k in dim(),
            alpha in prop_oneof![Just(1.0f32), -2.0f32..2.0],
            ta: bool, tb: bool, pa in 0usize..3, pb in 0usize..3, ldc_pad in 0usize..3,
            accumulate: bool, parallel: bool, seed: u64,
        ) {
            for isa in isas() {
                check(isa, m, n, k, alpha, (ta, pa), (tb, pb), accumulate, ldc_pad, parallel, true, seed)?;
            }
        }
    }

    /// The uninitialised-output entry points write the whole block (NaN "garbage" in C never
    /// reaches the result) and nothing outside it, on the driver, vector and `k = 0` paths.
    #[test]
    fn uninit_outputs_are_fully_written() {
        use std::mem::MaybeUninit;
        for &(m, n, k) in &[
            (37, 45, 29),
            (1, 40, 17),
            (33, 1, 12),
            (20, 30, 0),
            (300, 70, 64),
        ] {
            for (ta, tb) in [(false, false), (true, true)] {
                let (ars, acs, alen) = layout(m, k, ta, 1);
                let (brs, bcs, blen) = layout(k, n, tb, 2);
                let (ad, bd) = (fill(alen, 3), fill(blen, 4));
                let (a, b) = (MatRef::new(&ad, ars, acs), MatRef::new(&bd, brs, bcs));
                let ldc = n + 3;
                let mut want = vec![0.0f32; m * ldc];
                naive_gemm(m, n, k, 1.5, a, b, false, &mut want, ldc);
                let mut packed_out = vec![MaybeUninit::new(f32::NAN); m * ldc];
                let mut view_out = vec![MaybeUninit::new(f32::NAN); m * ldc];
                sgemm_uninit(m, n, k, 1.5, a, b, &mut view_out, ldc, true);
                let pb = PackedB::new(k, n, b);
                sgemm_packed_b_uninit(m, 1.5, a, &pb, &mut packed_out, ldc, true);
                for (name, out) in [("view", &view_out), ("packed", &packed_out)] {
                    for i in 0..m {
                        for j in 0..ldc {
                            // SAFETY: every element was initialised (NaN) before the call.
                            let g = unsafe { out[i * ldc + j].assume_init() };
                            if j < n {
                                let w = want[i * ldc + j];
                                let tol = 1e-5 * (k as f32 + 1.0) * 2.5 * (1.0 + w.abs());
                                assert!(
                                    (w - g).abs() <= tol,
                                    "{name} {m}x{n}x{k} ({i}, {j}): {w} vs {g}"
                                );
                            } else {
                                assert!(
                                    g.is_nan(),
                                    "{name} {m}x{n}x{k}: wrote past the block at ({i}, {j})"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Views the in-place paths must handle or leave to packing: stride-0 (broadcast) rows,
    /// a row-major B too far apart to read in place, and an A with neither stride 1.
    #[test]
    fn unusual_strides_match_naive() {
        let data = fill(80_000, 11);
        let (m, n, k) = (23, 45, 37);
        let cases: [(&str, MatRef<'_>, MatRef<'_>); 5] = [
            (
                "broadcast A rows",
                MatRef::new(&data, 0, 1),
                MatRef::new(&data[100..], n, 1),
            ),
            (
                "broadcast B rows",
                MatRef::new(&data, k, 1),
                MatRef::new(&data[100..], 0, 1),
            ),
            (
                "column-major A",
                MatRef::new(&data, 1, m),
                MatRef::new(&data[100..], n, 1),
            ),
            (
                "wide-stride B",
                MatRef::new(&data, k, 1),
                MatRef::new(&data[100..], 1500, 1),
            ),
            (
                "general A",
                MatRef::new(&data, 2 * k, 2),
                MatRef::new(&data[100..], 1, k),
            ),
        ];
        for isa in isas() {
            for (name, a, b) in cases {
                for accumulate in [false, true] {
                    let mut want = fill(m * n, 5);
                    let mut got = want.clone();
                    naive_gemm(m, n, k, 0.75, a, b, accumulate, &mut want, n);
                    sgemm_isa(isa, m, n, k, 0.75, a, b, accumulate, &mut got, n, false);
                    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                        assert!(
                            (w - g).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{isa:?} {name}: element {i}: want {w} got {g}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn larger_than_one_block() {
        // Crosses KC, MC and NC boundaries and the parallel split.
        for isa in isas() {
            for &(m, n, k) in &[
                (300, 1100, 600),
                (1, 3000, 700),
                (700, 1, 513),
                (200, 2100, 300),
                // A wide block (A packed) then a narrow tail block (row-major A read in place).
                (50, 868, 70),
            ] {
                for &(ta, tb, acc) in &[(false, false, true), (true, true, false)] {
                    for packed in [false, true] {
                        check(isa, m, n, k, 0.5, (ta, 1), (tb, 0), acc, 3, true, packed, 7)
                            .unwrap();
                    }
                }
            }
        }
    }

    #[test]
    fn packed_b_reused_and_parallel_column_split() {
        // One packing reused across calls; n > m forces the parallel split over columns,
        // whose task boundaries fall inside packed NC blocks.
        for isa in isas() {
            for &(m, n, k) in &[(40, 2500, 700), (3, 1600, 400), (1, 900, 50), (90, 1, 500)] {
                for tb in [false, true] {
                    for parallel in [false, true] {
                        check(
                            isa,
                            m,
                            n,
                            k,
                            -1.5,
                            (false, 0),
                            (tb, 2),
                            true,
                            1,
                            parallel,
                            true,
                            3,
                        )
                        .unwrap();
                    }
                }
            }
            let bd = fill(300 * 200, 9);
            let b = MatRef::new(&bd, 1, 300);
            let pb = PackedB::new_isa(isa, 300, 200, b);
            for m in [1, 7, 50] {
                let ad = fill(m * 300, m as u64);
                let a = MatRef::row_major(&ad, 300);
                let (mut want, mut got) = (vec![0.0; m * 200], vec![0.0; m * 200]);
                naive_gemm(m, 200, 300, 1.0, a, b, false, &mut want, 200);
                sgemm_packed_b(m, 1.0, a, &pb, false, &mut got, 200, true);
                for (w, g) in want.iter().zip(&got) {
                    assert!((w - g).abs() <= 1e-3 * (1.0 + w.abs()), "{isa:?} m={m}");
                }
            }
        }
    }

    #[test]
    fn packed_b_k_zero_clears_or_keeps() {
        let pb = PackedB::new(0, 3, MatRef::row_major(&[], 3));
        let a = MatRef::row_major(&[], 0);
        let mut c = vec![3.0f32; 6];
        sgemm_packed_b(2, 1.0, a, &pb, true, &mut c, 3, false);
        assert!(c.iter().all(|&x| x == 3.0));
        sgemm_packed_b(2, 1.0, a, &pb, false, &mut c, 3, false);
        assert!(c.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn k_zero_clears_or_keeps() {
        let a = MatRef::row_major(&[], 0);
        let mut c = vec![3.0f32; 6];
        sgemm(2, 3, 0, 1.0, a, a, true, &mut c, 3, false);
        assert!(c.iter().all(|&x| x == 3.0));
        sgemm(2, 3, 0, 1.0, a, a, false, &mut c, 3, false);
        assert!(c.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn overwrite_ignores_nan_in_c() {
        let a = vec![1.0f32; 20 * 20];
        let mut c = vec![f32::NAN; 20 * 20];
        let v = MatRef::row_major(&a, 20);
        sgemm(20, 20, 20, 1.0, v, v, false, &mut c, 20, true);
        assert!(c.iter().all(|&x| x == 20.0));
    }

    #[test]
    #[should_panic(expected = "exceeds its slice")]
    fn out_of_bounds_view_panics() {
        let a = vec![0.0f32; 10];
        let mut c = vec![0.0f32; 16];
        sgemm(
            4,
            4,
            4,
            1.0,
            MatRef::row_major(&a, 4),
            MatRef::row_major(&a, 4),
            false,
            &mut c,
            4,
            false,
        );
    }
}

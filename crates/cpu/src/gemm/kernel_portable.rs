//! Portable micro-kernel (no intrinsics): a `4 x 16` tile of plain multiply-adds laid out so
//! the compiler can vectorize each row with whatever baseline SIMD the target has.

/// Rows of the register tile (and of a packed A micro-panel).
pub(super) const MR: usize = 4;
/// Columns of the register tile (and of a packed B micro-panel).
pub(super) const NR: usize = 16;

/// Computes the `mr x nr` tile `C = alpha * Ap @ Bp (+ C)`.
///
/// # Safety
/// `a` must be readable for `kc * MR` floats, `b` for `kc * NR` floats, `c` writable at
/// `c[i * ldc + j]` for `i < mr`, `j < nr`; `mr <= MR`, `nr <= NR`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    accumulate: bool,
) {
    // SAFETY: the caller guarantees both packed panels are readable for these lengths.
    let (a, b) = unsafe {
        (
            core::slice::from_raw_parts(a, kc * MR),
            core::slice::from_raw_parts(b, kc * NR),
        )
    };
    let mut acc = [[0.0f32; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (acc_row, &ai) in acc.iter_mut().zip(ap) {
            for (x, &bj) in acc_row.iter_mut().zip(bp) {
                *x += ai * bj;
            }
        }
    }
    for (i, acc_row) in acc.iter().enumerate().take(mr) {
        for (j, &x) in acc_row.iter().enumerate().take(nr) {
            // SAFETY: `i < mr`, `j < nr` lie in the caller-guaranteed writable tile.
            unsafe {
                let p = c.add(i * ldc + j);
                *p = if accumulate {
                    alpha * x + *p
                } else {
                    alpha * x
                };
            }
        }
    }
}

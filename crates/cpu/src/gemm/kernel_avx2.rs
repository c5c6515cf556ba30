//! AVX2+FMA micro-kernel: a `6 x 16` register tile (two ymm accumulators per row, 12 in all,
//! leaving 4 of the 16 ymm registers for the B row and the broadcast).

use core::arch::x86_64::*;

/// Rows of the register tile (and of a packed A micro-panel).
pub(super) const MR: usize = 6;
const NV: usize = 2;
/// Columns of the register tile (and of a packed B micro-panel).
pub(super) const NR: usize = NV * 8;

/// Computes the `mr x nr` tile `C = alpha * Ap @ Bp (+ C)`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `a` must be readable for `kc * MR` floats, `b` 32-byte
/// aligned and readable for `kc * NR` floats; `c` writable at `c[i * ldc + j]` for `i < mr`,
/// `j < nr`; `1 <= mr <= MR`, `1 <= nr <= NR`.
#[target_feature(enable = "avx2,fma")]
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
    macro_rules! rows {
        ($($r:literal)*) => {
            match mr {
                // SAFETY: the caller's contract is forwarded unchanged; `$r == mr <= MR`.
                $($r => unsafe { tile::<$r>(kc, a, b, c, ldc, nr, alpha, accumulate) },)*
                _ => unreachable!("mr out of range"),
            }
        };
    }
    rows!(1 2 3 4 5 6);
}

/// # Safety
/// As [`kernel`], with `mr == R`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    kc: usize,
    mut a: *const f32,
    mut b: *const f32,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    alpha: f32,
    accumulate: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); NV]; R];
    for _ in 0..kc {
        // SAFETY: `b` stays within the `kc * NR` packed floats, rows are 64-byte aligned.
        let bv: [__m256; NV] = core::array::from_fn(|v| unsafe { _mm256_load_ps(b.add(8 * v)) });
        for (i, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: `i < R <= MR` and `a` stays within the `kc * MR` packed floats.
            let ai = _mm256_set1_ps(unsafe { *a.add(i) });
            for v in 0..NV {
                acc_row[v] = _mm256_fmadd_ps(ai, bv[v], acc_row[v]);
            }
        }
        a = a.wrapping_add(MR);
        b = b.wrapping_add(NR);
    }
    let va = _mm256_set1_ps(alpha);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (i, acc_row) in acc.iter().enumerate() {
        for (v, &x) in acc_row.iter().enumerate() {
            let rem = nr.saturating_sub(8 * v).min(8);
            if rem == 0 {
                break;
            }
            // SAFETY: row `i < mr`, columns `8 * v .. 8 * v + rem <= nr` lie in the writable
            // tile; the masked variants touch only those `rem` lanes.
            unsafe {
                let p = c.add(i * ldc + 8 * v);
                if rem == 8 {
                    let r = if accumulate {
                        _mm256_fmadd_ps(x, va, _mm256_loadu_ps(p))
                    } else {
                        _mm256_mul_ps(x, va)
                    };
                    _mm256_storeu_ps(p, r);
                } else {
                    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem as i32), lanes);
                    let r = if accumulate {
                        _mm256_fmadd_ps(x, va, _mm256_maskload_ps(p, mask))
                    } else {
                        _mm256_mul_ps(x, va)
                    };
                    _mm256_maskstore_ps(p, mask, r);
                }
            }
        }
    }
}

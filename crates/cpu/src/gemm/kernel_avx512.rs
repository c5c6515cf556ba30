//! AVX-512F micro-kernel: an `MR x 32` register tile (two zmm accumulators per row).
//!
//! Per step of `k` the kernel loads one 32-wide row of the packed B micro-panel (two zmm loads)
//! and broadcasts `MR` values of the packed A micro-panel (folded into the FMAs as embedded
//! broadcasts), issuing `2 * MR` independent FMAs: with `MR = 14` that is 28 accumulators, enough
//! to hide the 4-cycle FMA latency on both pipes.

use core::arch::x86_64::*;

/// Rows of the register tile (and of a packed A micro-panel).
pub(super) const MR: usize = 14;
/// zmm vectors per tile row.
const NV: usize = 2;
/// Columns of the register tile (and of a packed B micro-panel).
pub(super) const NR: usize = NV * 16;

/// Computes the `mr x nr` tile `C = alpha * Ap @ Bp (+ C)`.
///
/// # Safety
/// The CPU must support AVX-512F; `a` must be readable for `kc * MR` floats, `b` 64-byte aligned
/// and readable for `kc * NR` floats; `c` must be writable at `c[i * ldc + j]` for `i < mr`,
/// `j < nr`; `1 <= mr <= MR`, `1 <= nr <= NR`.
#[target_feature(enable = "avx512f")]
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
    // SAFETY: the caller's contract; zero strides say both operands are packed.
    unsafe { kernel_strided(kc, a, 0, 0, b, 0, c, ldc, mr, nr, alpha, accumulate) }
}

/// As [`kernel`], reading either operand in place instead of from a packed micro-panel: A
/// when `a_ps > 0` (element `(i, p)` at `a[i * a_rs + p * a_ps]`, so a row-major or a
/// column-major matrix), B when `ldb > 0` (row-major, element `(p, j)` at `b[p * ldb + j]`,
/// any alignment). For a narrow product (few register tiles per packed panel) packing costs
/// about as much as the multiply it feeds.
///
/// # Safety
/// As [`kernel`], except that an in-place A must be readable at `a[i * a_rs + p * a_ps]` for
/// `i < mr`, `p < kc`, and an in-place B at `b[p * ldb + j]` for `p < kc`, `j < nr`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel_strided(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_ps: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    accumulate: bool,
) {
    let ops = Operands {
        a,
        a_rs,
        a_ps,
        b,
        ldb,
    };
    // Each arm forwards the caller's contract to the instantiation that addresses A and B
    // the way `a_ps` and `ldb` say.
    match (a_ps > 0, ldb > 0) {
        // SAFETY: both operands packed, as the caller promises for `a_ps == 0`, `ldb == 0`.
        (false, false) => unsafe {
            dispatch::<false, false>(kc, ops, c, ldc, mr, nr, alpha, accumulate)
        },
        // SAFETY: A in place at the caller's strides, B packed.
        (true, false) => unsafe {
            dispatch::<true, false>(kc, ops, c, ldc, mr, nr, alpha, accumulate)
        },
        // SAFETY: A packed, B in place at the caller's row stride.
        (false, true) => unsafe {
            dispatch::<false, true>(kc, ops, c, ldc, mr, nr, alpha, accumulate)
        },
        // SAFETY: both in place at the caller's strides.
        (true, true) => unsafe {
            dispatch::<true, true>(kc, ops, c, ldc, mr, nr, alpha, accumulate)
        },
    }
}

/// Where the tile reads A and B, and with which strides (see [`kernel_strided`]).
#[derive(Clone, Copy)]
struct Operands {
    a: *const f32,
    a_rs: usize,
    a_ps: usize,
    b: *const f32,
    ldb: usize,
}

/// Picks the tile instantiation for `mr` rows and `nr` columns.
///
/// # Safety
/// As [`kernel_strided`], with `A_STRIDED` / `B_STRIDED` saying which operands are in place.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn dispatch<const A_STRIDED: bool, const B_STRIDED: bool>(
    kc: usize,
    ops: Operands,
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
                // A column edge of at most 16 needs only one vector per row.
                $($r if nr <= 16 => unsafe {
                    tile::<$r, 1, A_STRIDED, B_STRIDED>(kc, ops, c, ldc, nr, alpha, accumulate)
                },)*
                // SAFETY: as above.
                $($r => unsafe {
                    tile::<$r, NV, A_STRIDED, B_STRIDED>(kc, ops, c, ldc, nr, alpha, accumulate)
                },)*
                _ => unreachable!("mr out of range"),
            }
        };
    }
    rows!(1 2 3 4 5 6 7 8 9 10 11 12 13 14);
}

/// The register tile for a fixed row count `R` and `V` vectors per row (edge tiles instantiate
/// smaller `R` / `V`, so little work is wasted on padding).
///
/// With `A_STRIDED`, A is read at `a + i * a_rs + p * a_ps`, else from a packed micro-panel
/// (row step 1, depth step `MR`); with `B_STRIDED`, B row `p` is read (masked to `nr` columns)
/// at `b + p * ldb`, else from a packed, aligned micro-panel (row step `NR`).
///
/// # Safety
/// As [`dispatch`], with `mr == R` and `nr <= 16 * V`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const V: usize, const A_STRIDED: bool, const B_STRIDED: bool>(
    kc: usize,
    ops: Operands,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    alpha: f32,
    accumulate: bool,
) {
    let (mut a, mut b) = (ops.a, ops.b);
    let (a_rs, a_step) = if A_STRIDED {
        (ops.a_rs, ops.a_ps)
    } else {
        (1, MR)
    };
    let b_step = if B_STRIDED { ops.ldb } else { NR };
    // Lanes of each vector inside the tile's `nr` columns (an in-place B row may end there).
    let lanes: [__mmask16; V] = core::array::from_fn(|v| {
        let rem = nr.saturating_sub(16 * v).min(16);
        ((1u32 << rem) - 1) as __mmask16
    });
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    // Warm the C tile while the product is accumulated.
    for i in 0..R {
        let row = c.wrapping_add(i * ldc);
        _mm_prefetch::<_MM_HINT_T0>(row as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(16 * V - 1) as *const i8);
    }
    for _ in 0..kc {
        let bv: [__m512; V] = core::array::from_fn(|v| {
            if B_STRIDED {
                // SAFETY: row `p < kc` of the in-place B; the mask keeps the load to the
                // tile's `nr` columns (masked-off lanes never fault).
                unsafe { _mm512_maskz_loadu_ps(lanes[v], b.add(16 * v)) }
            } else {
                // SAFETY: `b` stays within the `kc * NR` packed floats and every row of the
                // packed panel starts on a 64-byte boundary (aligned panel, NR * 4 = 128).
                unsafe { _mm512_load_ps(b.add(16 * v)) }
            }
        });
        for (i, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: `i < R <= mr` at a depth below `kc`: inside the packed panel's
            // `kc * MR` floats, or an element of the in-place A the caller vouches for.
            let ai = _mm512_set1_ps(unsafe { *a.add(i * a_rs) });
            for v in 0..V {
                acc_row[v] = _mm512_fmadd_ps(ai, bv[v], acc_row[v]);
            }
        }
        // Advancing past the end on the last step is never dereferenced.
        a = a.wrapping_add(a_step);
        b = b.wrapping_add(b_step);
    }
    let va = _mm512_set1_ps(alpha);
    if nr == NR {
        for (i, acc_row) in acc.iter().enumerate() {
            for (v, &x) in acc_row.iter().enumerate() {
                // SAFETY: row `i < mr` and columns `16 * v .. 16 * v + 16 <= nr` are in the
                // caller-guaranteed writable tile.
                unsafe {
                    let p = c.add(i * ldc + 16 * v);
                    let r = if accumulate {
                        _mm512_fmadd_ps(x, va, _mm512_loadu_ps(p))
                    } else {
                        _mm512_mul_ps(x, va)
                    };
                    _mm512_storeu_ps(p, r);
                }
            }
        }
    } else {
        for (i, acc_row) in acc.iter().enumerate() {
            for (v, &x) in acc_row.iter().enumerate() {
                let rem = nr.saturating_sub(16 * v).min(16);
                if rem == 0 {
                    break;
                }
                let mask = ((1u32 << rem) - 1) as __mmask16;
                // SAFETY: column `16 * v < nr` is inside the tile, and the masked load/store
                // touch only the `rem` lanes that are also inside it (masked-off lanes never
                // fault).
                unsafe {
                    let p = c.add(i * ldc + 16 * v);
                    let r = if accumulate {
                        _mm512_fmadd_ps(x, va, _mm512_maskz_loadu_ps(mask, p))
                    } else {
                        _mm512_mul_ps(x, va)
                    };
                    _mm512_mask_storeu_ps(p, mask, r);
                }
            }
        }
    }
}

/// Transposing copy used by the packers: `dst[p * ds + i] = src[i * ss + p]` for `i < r`,
/// `p < len`; lanes `i >= r` of `dst` are not written.
///
/// Works on 16 x 16 blocks: 16 row loads, a transpose in registers (unpack within 128-bit lanes,
/// then two rounds of 128-bit block shuffles) and 16 masked stores, instead of one scalar store
/// per element.
///
/// # Safety
/// The CPU must support AVX-512F; `r <= 16`; `src[i * ss + p]` readable and `dst[p * ds + i]`
/// writable for `i < r`, `p < len`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_pack(
    src: *const f32,
    ss: usize,
    r: usize,
    len: usize,
    dst: *mut f32,
    ds: usize,
) {
    debug_assert!(r <= 16);
    let row_mask = ((1u32 << r) - 1) as __mmask16;
    let mut p = 0;
    while p < len {
        let w = (len - p).min(16);
        let col_mask = ((1u32 << w) - 1) as __mmask16;
        let mut rows = [_mm512_setzero_ps(); 16];
        for (i, row) in rows.iter_mut().enumerate().take(r) {
            // SAFETY: row `i < r`, columns `p .. p + w` are readable; the masked load touches
            // only those `w` lanes.
            *row = unsafe { _mm512_maskz_loadu_ps(col_mask, src.add(i * ss + p)) };
        }
        let cols = transpose16(&rows);
        for (j, col) in cols.iter().enumerate().take(w) {
            // SAFETY: depth `p + j < len`, lanes `i < r` (the mask) are writable.
            unsafe { _mm512_mask_storeu_ps(dst.add((p + j) * ds), row_mask, *col) };
        }
        p += w;
    }
}

/// Transposes a 16 x 16 block held as 16 row vectors.
#[target_feature(enable = "avx512f")]
fn transpose16(r: &[__m512; 16]) -> [__m512; 16] {
    // Within each group of four rows, 4 x 4 transposes inside every 128-bit lane: u[4g + c]
    // lane L then holds rows 4g .. 4g + 4 of column 4L + c.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (r0, r1, r2, r3) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
        let a0 = _mm512_castps_pd(_mm512_unpacklo_ps(r0, r1));
        let a1 = _mm512_castps_pd(_mm512_unpackhi_ps(r0, r1));
        let a2 = _mm512_castps_pd(_mm512_unpacklo_ps(r2, r3));
        let a3 = _mm512_castps_pd(_mm512_unpackhi_ps(r2, r3));
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
    }
    // For each c, a 4 x 4 transpose of 128-bit blocks across the groups: column 4L + c gathers
    // lane L of u[c], u[4 + c], u[8 + c], u[12 + c].
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let (u0, u1, u2, u3) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
        let x0 = _mm512_shuffle_f32x4::<0x44>(u0, u1);
        let x1 = _mm512_shuffle_f32x4::<0xEE>(u0, u1);
        let x2 = _mm512_shuffle_f32x4::<0x44>(u2, u3);
        let x3 = _mm512_shuffle_f32x4::<0xEE>(u2, u3);
        out[c] = _mm512_shuffle_f32x4::<0x88>(x0, x2);
        out[4 + c] = _mm512_shuffle_f32x4::<0xDD>(x0, x2);
        out[8 + c] = _mm512_shuffle_f32x4::<0x88>(x1, x3);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(x1, x3);
    }
    out
}

//! Shared building blocks of the fused kernels: runtime ISA dispatch and branch-free scalar math
//! (`exp`, `erf`, `tanh`) written so that loops calling them auto-vectorize.
//!
//! Every kernel body is an `#[inline(always)]` function generic over `const FMA: bool`; the
//! [`multiversion!`] macro compiles it three times — for AVX-512 (+FMA), for AVX2 (+FMA) and for
//! the baseline target — and picks one at run time. Inside the AVX variants LLVM vectorizes the
//! branch-free loops to 16- (or 8-) lane code; `FMA` selects `mul_add` (a single instruction
//! there) versus a plain multiply-add (the portable path, where `mul_add` would be a libm call).

/// Whether the CPU supports the AVX-512 variant (F, BW, DQ, VL and FMA).
#[inline]
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            // The AVX-512 variants are compiled with avx2 and fma enabled too.
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU supports the AVX2 + FMA variant.
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `fn $name(args) -> ret` that runs `$imp::<FMA>(args)` compiled for the best ISA the
/// CPU offers (see the module docs).
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? => $imp:ident;) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v512($($a: $t),*) $(-> $r)? {
                    $imp::<true>($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v256($($a: $t),*) $(-> $r)? {
                    $imp::<true>($($a),*)
                }
                if $crate::kernels::simd::has_avx512() {
                    // SAFETY: `v512` only requires the CPU features that were just detected.
                    return unsafe { v512($($a),*) };
                }
                if $crate::kernels::simd::has_avx2() {
                    // SAFETY: `v256` only requires the CPU features that were just detected.
                    return unsafe { v256($($a),*) };
                }
            }
            $imp::<false>($($a),*)
        }
    };
}
pub(crate) use multiversion;

/// Lanes of the manual accumulators used by the reductions (one zmm register of f32).
pub(crate) const LANES: usize = 16;

/// `a * b + c`, fused when `FMA`.
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `if a > b { a } else { b }` (maps to one `max` instruction; NaN handling unspecified).
#[inline(always)]
pub(crate) fn fmax(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// `if a < b { a } else { b }`.
#[inline(always)]
pub(crate) fn fmin(a: f32, b: f32) -> f32 {
    if a < b { a } else { b }
}

/// `x * 2^n` for an integer-valued `n` in `[-126, 127]` given as `t = n + ROUND_MAGIC`.
#[inline(always)]
fn pow2_from_magic(t: f32) -> f32 {
    let n = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    f32::from_bits((n.wrapping_add(127) << 23) as u32)
}

/// `1.5 * 2^23`: adding it rounds an `|x| < 2^22` to the nearest integer (in the low mantissa).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `e^x`, relative error about 2e-7 on `[-87.3, 88.3]`.
///
/// Below `ln(f32::MIN_POSITIVE) ≈ -87.34` (denormal results, `-inf` included) it returns `0`;
/// above `88.37` it saturates at `e^88.37 ≈ 2.4e38` (`+inf` included, so it never returns
/// `inf`); NaN propagates.
#[inline(always)]
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    const LO: f32 = -87.336_54;
    const HI: f32 = 88.376_26;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n * LN2_HI` is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Least-squares fit of (e^r - 1 - r) / r^2 on [-ln2/2, ln2/2].
    const C0: f32 = 0.499_999_88;
    const C1: f32 = 0.166_665_18;
    const C2: f32 = 0.041_669_533;
    const C3: f32 = 0.008_368_919;
    const C4: f32 = 0.001_375_140_9;
    let xc = fmin(fmax(x, LO), HI);
    let t = madd::<FMA>(xc, LOG2E, ROUND_MAGIC);
    let n = t - ROUND_MAGIC;
    let r = madd::<FMA>(n, -LN2_HI, xc);
    let r = madd::<FMA>(n, -LN2_LO, r);
    let mut p = madd::<FMA>(C4, r, C3);
    p = madd::<FMA>(p, r, C2);
    p = madd::<FMA>(p, r, C1);
    p = madd::<FMA>(p, r, C0);
    let e = madd::<FMA>(p, r * r, r) + 1.0;
    let y = e * pow2_from_magic(t);
    // `fmax` above maps NaN to LO in some lowerings; restore NaN and the underflow to 0.
    if x < LO {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// The error function, max abs error about 1.2e-7 over all of f32 (NaN propagates).
///
/// `|x| < 0.921875`: `x * P(x^2)` (degree 5 in `x^2`); otherwise `1 - e^{-x^2} Q(|x| - 2)`
/// (degree 8, `|x|` clamped to 4 where `erf` rounds to 1 in f32). Both are least-squares fits
/// made for this crate; both branches are computed and selected without branching so loops
/// vectorize.
#[inline(always)]
pub(crate) fn erf<const FMA: bool>(x: f32) -> f32 {
    const T: f32 = 0.921_875;
    #[allow(clippy::approx_constant)] // a fitted value, one ulp from 2/sqrt(pi)
    const S: [f32; 6] = [
        1.128_379_1,
        -0.376_123_46,
        0.112_808_43,
        -0.026_740_445,
        0.004_962_436_4,
        -0.000_585_958_65,
    ];
    const L: [f32; 9] = [
        0.255_395_56,
        -0.106_798_12,
        0.041_802_45,
        -0.015_436_808,
        0.005_477_356,
        -0.001_875_547_1,
        0.000_489_432,
        -0.000_191_251_1,
        0.000_117_060_49,
    ];
    let a = x.abs();
    // Small branch.
    let u = x * x;
    let mut ps = S[5];
    ps = madd::<FMA>(ps, u, S[4]);
    ps = madd::<FMA>(ps, u, S[3]);
    ps = madd::<FMA>(ps, u, S[2]);
    ps = madd::<FMA>(ps, u, S[1]);
    ps = madd::<FMA>(ps, u, S[0]);
    let small = x * ps;
    // Large branch.
    let ac = fmin(a, 4.0);
    let z = ac - 2.0;
    let mut pl = L[8];
    pl = madd::<FMA>(pl, z, L[7]);
    pl = madd::<FMA>(pl, z, L[6]);
    pl = madd::<FMA>(pl, z, L[5]);
    pl = madd::<FMA>(pl, z, L[4]);
    pl = madd::<FMA>(pl, z, L[3]);
    pl = madd::<FMA>(pl, z, L[2]);
    pl = madd::<FMA>(pl, z, L[1]);
    pl = madd::<FMA>(pl, z, L[0]);
    let large = 1.0 - exp::<FMA>(-(ac * ac)) * pl;
    let large = f32::from_bits(large.to_bits() | (x.to_bits() & 0x8000_0000));
    if a < T {
        small
    } else if x.is_nan() {
        x
    } else {
        large
    }
}

/// `tanh(x)`, max abs error about 2e-7 (NaN propagates): `1 - 2 / (e^{2|x|} + 1)` with the
/// sign restored, `|x|` clamped to 10 (where tanh rounds to 1).
#[inline(always)]
pub(crate) fn tanh<const FMA: bool>(x: f32) -> f32 {
    let a = fmin(x.abs(), 10.0);
    let e = exp::<FMA>(2.0 * a);
    let t = 1.0 - 2.0 / (e + 1.0);
    let t = f32::from_bits(t.to_bits() | (x.to_bits() & 0x8000_0000));
    if x.is_nan() { x } else { t }
}

/// `1 / (1 + e^{-x})` (0 for x below about -88, 1 above about 17; NaN propagates).
#[inline(always)]
pub(crate) fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp::<FMA>(-x))
}

/// Sum of a slice with `LANES` independent accumulators (vectorizes; order differs from a
/// sequential sum).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    let mut s = 0.0;
    for &v in tail {
        s += v;
    }
    hsum(&acc) + s
}

/// Maximum of a slice (`-inf` for an empty slice; NaN handling unspecified).
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = fmax(acc[l], c[l]);
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in tail {
        m = fmax(m, v);
    }
    for &v in &acc {
        m = fmax(m, v);
    }
    m
}

/// Pairwise sum of the accumulator lanes.
#[inline(always)]
pub(crate) fn hsum(acc: &[f32; LANES]) -> f32 {
    let mut h = [0.0f32; LANES / 2];
    for l in 0..LANES / 2 {
        h[l] = acc[l] + acc[l + LANES / 2];
    }
    let mut q = [0.0f32; LANES / 4];
    for l in 0..LANES / 4 {
        q[l] = h[l] + h[l + LANES / 4];
    }
    (q[0] + q[2]) + (q[1] + q[3])
}

/// `out[i] = e^{x[i] - shift}`, returning the sum of the outputs.
#[inline(always)]
pub(crate) fn exp_shift_sum<const FMA: bool>(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    let n = x.len().min(out.len());
    let (x, out) = (&x[..n], &mut out[..n]);
    let mut acc = [0.0f32; LANES];
    let mut xc = x.chunks_exact(LANES);
    let mut oc = out.chunks_exact_mut(LANES);
    for (c, o) in (&mut xc).zip(&mut oc) {
        for l in 0..LANES {
            let e = exp::<FMA>(c[l] - shift);
            o[l] = e;
            acc[l] += e;
        }
    }
    let mut s = 0.0;
    for (&v, o) in xc.remainder().iter().zip(oc.into_remainder()) {
        let e = exp::<FMA>(v - shift);
        *o = e;
        s += e;
    }
    hsum(&acc) + s
}

/// In place `x[i] = e^{x[i] - shift}`, returning the sum.
#[inline(always)]
pub(crate) fn exp_shift_sum_inplace<const FMA: bool>(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut xc = x.chunks_exact_mut(LANES);
    for c in &mut xc {
        for l in 0..LANES {
            let e = exp::<FMA>(c[l] - shift);
            c[l] = e;
            acc[l] += e;
        }
    }
    let mut s = 0.0;
    for v in xc.into_remainder() {
        let e = exp::<FMA>(*v - shift);
        *v = e;
        s += e;
    }
    hsum(&acc) + s
}

/// `x[i] *= s`.
#[inline(always)]
pub(crate) fn scale(x: &mut [f32], s: f32) {
    for v in x {
        *v *= s;
    }
}

/// Elements per parallel chunk of the element-wise kernels.
pub(crate) const PAR_CHUNK: usize = 1 << 15;

/// Rows per parallel task for a row-wise kernel with `cols` columns (about `PAR_CHUNK` elements).
pub(crate) fn rows_per_task(cols: usize) -> usize {
    (PAR_CHUNK / cols.max(1)).max(1)
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with a zero-initialized-once (contents unspecified) scratch slice of `len` floats,
/// reused across calls on the same thread (large fresh allocations would be `mmap`ed and
/// page-faulted every time). Falls back to a fresh buffer if the thread's scratch is in use.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

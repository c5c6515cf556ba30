// common.wgsl: declarations every glimpse WGSL kernel shares. The wgpu backend builds each
// shader module as: a type header (`enable f16;` when needed, then `alias T = ...;` and
// `alias U = ...;`, the element types of the variant), this file, then the kernel's file.
// Kernels are written once against `T` (and `U` where a second element type is involved);
// arithmetic is carried out in f32 and converted with `f32(x)` / `T(y)`.
//
// Parameters: binding 0 of group 0 holds this dispatch's parameter words (its own slice of
// one buffer per submission). Floats travel as their bits (`pf`).
//
// Strided views in the parameters: at word `at`, `p[at]` is the rank r, `p[at + 1]` the
// offset (in elements), then `dims[r]`, then `strides[r]`; `view_words(r) = 2 + 2 r` words.
// The backend merges dimensions before writing a view, so r stays small.

@group(0) @binding(0) var<storage, read> p: array<u32>;

// Parameter word `i` read as an f32.
fn pf(i: u32) -> f32 {
    return bitcast<f32>(p[i]);
}

// Storage index of the `i`-th element (row-major order) of the view at word `at`.
fn strided_index(at: u32, i: u32) -> u32 {
    let rank = p[at];
    var idx = p[at + 1u];
    var rest = i;
    for (var d = i32(rank) - 1; d >= 0; d--) {
        let size = p[at + 2u + u32(d)];
        let stride = p[at + 2u + rank + u32(d)];
        idx += (rest % size) * stride;
        rest /= size;
    }
    return idx;
}

// Number of parameter words of a view of rank `r`.
fn view_words(at: u32) -> u32 {
    return 2u + 2u * p[at];
}

// Storage index of element i of the view at word `at`: rank-0 and rank-1 views (contiguous,
// broadcast or evenly strided after merging) skip the div/mod walk of `strided_index`.
fn vidx(at: u32, i: u32) -> u32 {
    let rank = p[at];
    if (rank == 1u) {
        return p[at + 1u] + i * p[at + 3u];
    }
    if (rank == 0u) {
        return p[at + 1u];
    }
    return strided_index(at, i);
}

// The element types, as constants the compiler folds: whether T / U are floats (else u32),
// and whether they are f16 (2049 is not an f16 value).
const T_FLOAT: bool = T(0.5) != T(0.0);
const U_FLOAT: bool = U(0.5) != U(0.0);
const T_HALF: bool = f32(T(2049.0)) != 2049.0;
const U_HALF: bool = f32(U(2049.0)) != 2049.0;

// NaN test on the bits (drivers may assume floats are never NaN, so `x != x` is not reliable).
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// NaN and +infinity built at run time (a constant NaN or infinity is a shader-creation error).
fn nan_f32() -> f32 {
    var bits = 0x7fc00000u;
    return bitcast<f32>(bits);
}

fn inf_f32() -> f32 {
    var bits = 0x7f800000u;
    return bitcast<f32>(bits);
}

// |x| with the sign of s (bitwise, so -0 and NaN signs carry over).
fn copysign(x: f32, s: f32) -> f32 {
    return bitcast<f32>((bitcast<u32>(x) & 0x7fffffffu) | (bitcast<u32>(s) & 0x80000000u));
}

// y rounded to the nearest f16 value (ties to even; subnormals kept; |y| >= 65520 becomes
// infinity, NaN stays NaN), as an f32 that converts to f16 exactly.
fn round_f16(y: f32) -> f32 {
    let a = abs(y);
    if (!(a < 65520.0)) {
        if (is_nan(y)) {
            return y;
        }
        return copysign(inf_f32(), y);
    }
    // The f16 spacing at a: 2^(e - 10) with e the exponent of a, at least -14 (subnormals).
    let e = max(i32((bitcast<u32>(a) >> 23u) & 0xffu) - 127, -14);
    let r = ldexp(round(ldexp(a, 10 - e)), e - 10);
    return copysign(r, y);
}

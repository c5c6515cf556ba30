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

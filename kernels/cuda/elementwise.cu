// elementwise.cu: the element-wise primitives of the CUDA backend.
//
// What: fill, strided copy (also concat, which copies each part into a strided window of the
// output), cast between every pair of f16/bf16/f32/u32, unary ops, binary ops (arithmetic and
// comparisons, broadcasting through zero strides) and where_cond.
//
// Shapes: every kernel produces `n` elements. Inputs are strided views (`GlLayout`, rank <= 8
// after the backend merged contiguous dimensions, zero strides for broadcast) of that many
// elements in row-major order; outputs are contiguous (`out[i]`) except for `copy_*`, whose
// destination is a view too.
//
// Launch: 1-D grid of 256-thread blocks, grid-stride loop over `n` (one output element per
// thread and iteration). Dense fast paths: where every view is one unit-stride run (and, for
// copies, where the source repeats one row of a dense destination, as a broadcast bias) and
// every start is 16-byte aligned, each thread moves 16 bytes (8 halves or 4 floats) per
// iteration; the host launches one thread per 16 bytes of output for the kernels that have
// such a path, and their strided path covers the rest by looping.
//
// Algorithm: out[i] = f(in[gl_index(layout, i)]). Half types are loaded to f32, computed in
// f32 and rounded once when stored. Data movers (fill, copy, where) work on the raw 16- or
// 32-bit patterns (`_b16` / `_b32`), so they serve every dtype of that width.
//
// Op codes (must match crates/cuda/src/ops.rs):
//   unary:  0 neg, 1 abs, 2 exp, 3 log, 4 sqrt, 5 sqr, 6 recip, 7 tanh, 8 sin, 9 cos, 10 erf,
//           11 relu, 12 sigmoid, 13 affine(p0 * x + p1), 14 powf(p0), 15 clamp(p0, p1),
//           16 gelu (erf), 17 gelu (tanh), 18 quick gelu
//   binary: 0 add, 1 sub, 2 mul, 3 div, 4 maximum, 5 minimum, 6 pow
//   compare: 0 eq, 1 ne, 2 lt, 3 le, 4 gt, 5 ge

// ------------------------------------------------------------------------ fill and copy

extern "C" __global__ void fill_b16(gl_u16 value, gl_u16* out, gl_u64 n) {
    GL_GRID_STRIDE(i, n) { out[i] = value; }
}

extern "C" __global__ void fill_b32(gl_u32 value, gl_u32* out, gl_u64 n) {
    GL_GRID_STRIDE(i, n) { out[i] = value; }
}

// 16 bytes as one vector or as elements.
template <class T>
union GlVec16 {
    uint4 v;
    T e[16 / sizeof(T)];
};

__device__ __forceinline__ bool gl_aligned16(const void* p) { return ((gl_u64)p & 15) == 0; }

// Whether `l` is one unit-stride run (the host merges a dense view down to rank 1).
__device__ __forceinline__ bool gl_unit_run(const GlLayout& l) {
    return l.rank == 1 && l.strides[0] == 1;
}

// Whether `l` is row-major dense over its dims (any rank).
__device__ __forceinline__ bool gl_row_major(const GlLayout& l) {
    gl_u64 want = 1;
    for (int d = (int)l.rank - 1; d >= 0; --d) {
        if (l.dims[d] != 1 && l.strides[d] != want) return false;
        want *= l.dims[d];
    }
    return true;
}

// out[gl_index(dst, i)] = x[gl_index(src, i)]; `src` and `dst` have the same dims.
// Fast paths: a dense destination filled from a dense source, or from one row repeated (src
// strides (0, 1), a broadcast bias), with 16-byte aligned starts and rows.
template <class T>
__device__ void copy_impl(const GlLayout& src, const T* x, const GlLayout& dst, T* out,
                          gl_u64 n) {
    constexpr int V = 16 / sizeof(T);
    T* o = out + dst.offset;
    const T* xs = x + src.offset;
    const bool dst_dense = gl_row_major(dst) && gl_aligned16(o) && gl_aligned16(xs);
    if (dst_dense && gl_unit_run(src)) {
        const gl_u64 nv = n / V;
        GL_GRID_STRIDE(i, nv) { ((uint4*)o)[i] = ((const uint4*)xs)[i]; }
        GL_GRID_STRIDE(i, n - nv * V) { o[nv * V + i] = xs[nv * V + i]; }
        return;
    }
    if (dst_dense && src.rank == 2 && src.strides[0] == 0 && src.strides[1] == 1 &&
        src.dims[1] % V == 0) {
        const gl_u64 row_v = src.dims[1] / V;
        GL_GRID_STRIDE(i, n / V) { ((uint4*)o)[i] = ((const uint4*)xs)[i % row_v]; }
        return;
    }
    GL_GRID_STRIDE(i, n) { out[gl_index(dst, i)] = x[gl_index(src, i)]; }
}

extern "C" __global__ void copy_b16(GlLayout src, const gl_u16* x, GlLayout dst, gl_u16* out,
                                    gl_u64 n) {
    copy_impl<gl_u16>(src, x, dst, out, n);
}

extern "C" __global__ void copy_b32(GlLayout src, const gl_u32* x, GlLayout dst, gl_u32* out,
                                    gl_u64 n) {
    copy_impl<gl_u32>(src, x, dst, out, n);
}

// ------------------------------------------------------------------------ cast

template <class S, class D>
__device__ __forceinline__ typename D::T gl_convert(typename S::T v) {
    if constexpr (S::is_int) {
        return D::from_u32((gl_u32)v);
    } else {
        return D::store(S::load(v));
    }
}

template <class S, class D>
__device__ void cast_impl(const GlLayout& src, const typename S::T* x, typename D::T* out,
                          gl_u64 n) {
    GL_GRID_STRIDE(i, n) { out[i] = gl_convert<S, D>(x[gl_index(src, i)]); }
}

#define GL_CAST(sname, S, dname, D)                                                          \
    extern "C" __global__ void cast_##sname##_##dname(GlLayout src, const S::T* x, D::T* out, \
                                                      gl_u64 n) {                             \
        cast_impl<S, D>(src, x, out, n);                                                      \
    }

GL_CAST(f16, GlF16, f16, GlF16)
GL_CAST(f16, GlF16, bf16, GlBF16)
GL_CAST(f16, GlF16, f32, GlF32)
GL_CAST(f16, GlF16, u32, GlU32)
GL_CAST(bf16, GlBF16, f16, GlF16)
GL_CAST(bf16, GlBF16, bf16, GlBF16)
GL_CAST(bf16, GlBF16, f32, GlF32)
GL_CAST(bf16, GlBF16, u32, GlU32)
GL_CAST(f32, GlF32, f16, GlF16)
GL_CAST(f32, GlF32, bf16, GlBF16)
GL_CAST(f32, GlF32, f32, GlF32)
GL_CAST(f32, GlF32, u32, GlU32)
GL_CAST(u32, GlU32, f16, GlF16)
GL_CAST(u32, GlU32, bf16, GlBF16)
GL_CAST(u32, GlU32, f32, GlF32)
GL_CAST(u32, GlU32, u32, GlU32)

// ------------------------------------------------------------------------ unary

// `a` and `b` are the op's parameters rounded to f32 (affine: mul, add; powf: exponent;
// clamp: min, max). Products and sums that the CPU computes unfused use the `_rn` intrinsics
// so that no fused multiply-add changes the rounding.
__device__ __forceinline__ float gl_unary_f32(gl_u32 op, float x, float a, float b) {
    switch (op) {
        case 0: return -x;
        case 1: return fabsf(x);
        case 2: return expf(x);
        case 3: return logf(x);
        case 4: return sqrtf(x);
        case 5: return __fmul_rn(x, x);
        case 6: return 1.0f / x;
        case 7: return tanhf(x);
        case 8: return sinf(x);
        case 9: return cosf(x);
        case 10: return erff(x);
        case 11: return x > 0.0f ? x : 0.0f;
        case 12: return 1.0f / (1.0f + expf(-x));
        case 13: return __fadd_rn(__fmul_rn(x, a), b);
        case 14: return powf(x, a);
        case 15: return x < a ? a : (x > b ? b : x);
        case 16: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
        case 17: {
            const float k = 0.79788456080286535588f;  // sqrt(2 / pi)
            return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
        }
        case 18: return x / (1.0f + expf(-(1.702f * x)));
        default: return __int_as_float(0x7fffffff);
    }
}

// The dense path of a unary op: 16 bytes per thread and step, then the tail. OP >= 0 fixes
// the op at compile time (the activations, where the op's switch inside the loop would cost
// as much as the arithmetic); OP < 0 reads it from `op`.
template <class E, int OP>
__device__ __forceinline__ void unary_dense(gl_u32 op, float a, float b, const typename E::T* xs,
                                            typename E::T* out, gl_u64 n) {
    typedef typename E::T T;
    constexpr int V = 16 / sizeof(T);
    const gl_u32 code = OP >= 0 ? (gl_u32)OP : op;
    const gl_u64 nv = n / V;
    GL_GRID_STRIDE(i, nv) {
        GlVec16<T> in, res;
        in.v = ((const uint4*)xs)[i];
#pragma unroll
        for (int j = 0; j < V; ++j) res.e[j] = E::store(gl_unary_f32(code, E::load(in.e[j]), a, b));
        ((uint4*)out)[i] = res.v;
    }
    GL_GRID_STRIDE(i, n - nv * V) {
        const gl_u64 j = nv * V + i;
        out[j] = E::store(gl_unary_f32(code, E::load(xs[j]), a, b));
    }
}

template <class E>
__device__ void unary_impl(gl_u32 op, double p0, double p1, const GlLayout& src,
                           const typename E::T* x, typename E::T* out, gl_u64 n) {
    const float a = gl_f64_to_f32(p0);
    const float b = gl_f64_to_f32(p1);
    const typename E::T* xs = x + src.offset;
    if (gl_unit_run(src) && gl_aligned16(xs) && gl_aligned16(out)) {
        switch (op) {
            case 16: unary_dense<E, 16>(op, a, b, xs, out, n); break;
            case 17: unary_dense<E, 17>(op, a, b, xs, out, n); break;
            case 18: unary_dense<E, 18>(op, a, b, xs, out, n); break;
            default: unary_dense<E, -1>(op, a, b, xs, out, n); break;
        }
        return;
    }
    GL_GRID_STRIDE(i, n) { out[i] = E::store(gl_unary_f32(op, E::load(x[gl_index(src, i)]), a, b)); }
}

extern "C" __global__ void unary_f16(gl_u32 op, double p0, double p1, GlLayout src,
                                     const gl_u16* x, gl_u16* out, gl_u64 n) {
    unary_impl<GlF16>(op, p0, p1, src, x, out, n);
}

extern "C" __global__ void unary_bf16(gl_u32 op, double p0, double p1, GlLayout src,
                                      const gl_u16* x, gl_u16* out, gl_u64 n) {
    unary_impl<GlBF16>(op, p0, p1, src, x, out, n);
}

extern "C" __global__ void unary_f32(gl_u32 op, double p0, double p1, GlLayout src,
                                     const float* x, float* out, gl_u64 n) {
    unary_impl<GlF32>(op, p0, p1, src, x, out, n);
}

// The ops u32 supports: abs and relu (identity), sqr (wrapping), affine and clamp (computed in
// f64, then truncated and saturated, as the CPU backend).
extern "C" __global__ void unary_u32(gl_u32 op, double p0, double p1, GlLayout src,
                                     const gl_u32* x, gl_u32* out, gl_u64 n) {
    GL_GRID_STRIDE(i, n) {
        const gl_u32 v = x[gl_index(src, i)];
        gl_u32 r;
        switch (op) {
            case 5: r = v * v; break;
            case 13: r = gl_f64_to_u32(__dadd_rn(__dmul_rn((double)v, p0), p1)); break;
            case 15: r = gl_f64_to_u32(fmin(fmax((double)v, p0), p1)); break;
            default: r = v; break;  // abs, relu
        }
        out[i] = r;
    }
}

// ------------------------------------------------------------------------ binary

__device__ __forceinline__ float gl_binary_f32(gl_u32 op, float x, float y) {
    switch (op) {
        case 0: return x + y;
        case 1: return x - y;
        case 2: return x * y;
        case 3: return x / y;
        case 4: return (x != x || x > y) ? x : y;  // NaN propagates, as in PyTorch
        case 5: return (x != x || x < y) ? x : y;
        case 6: return powf(x, y);
        default: return __int_as_float(0x7fffffff);
    }
}

template <class A>
__device__ __forceinline__ gl_u32 gl_compare(gl_u32 op, A x, A y) {
    switch (op) {
        case 0: return x == y;
        case 1: return x != y;
        case 2: return x < y;
        case 3: return x <= y;
        case 4: return x > y;
        case 5: return x >= y;
        default: return 0u;
    }
}

template <class E>
__device__ void binary_impl(gl_u32 op, const GlLayout& la, const typename E::T* a,
                            const GlLayout& lb, const typename E::T* b, typename E::T* out,
                            gl_u64 n) {
    typedef typename E::T T;
    constexpr int V = 16 / sizeof(T);
    const T* as = a + la.offset;
    const T* bs = b + lb.offset;
    if (gl_unit_run(la) && gl_unit_run(lb) && gl_aligned16(as) && gl_aligned16(bs) &&
        gl_aligned16(out)) {
        const gl_u64 nv = n / V;
        GL_GRID_STRIDE(i, nv) {
            GlVec16<T> x, y, res;
            x.v = ((const uint4*)as)[i];
            y.v = ((const uint4*)bs)[i];
#pragma unroll
            for (int j = 0; j < V; ++j)
                res.e[j] = E::store(gl_binary_f32(op, E::load(x.e[j]), E::load(y.e[j])));
            ((uint4*)out)[i] = res.v;
        }
        GL_GRID_STRIDE(i, n - nv * V) {
            const gl_u64 j = nv * V + i;
            out[j] = E::store(gl_binary_f32(op, E::load(as[j]), E::load(bs[j])));
        }
        return;
    }
    GL_GRID_STRIDE(i, n) {
        const float x = E::load(a[gl_index(la, i)]);
        const float y = E::load(b[gl_index(lb, i)]);
        out[i] = E::store(gl_binary_f32(op, x, y));
    }
}

template <class E>
__device__ void compare_impl(gl_u32 op, const GlLayout& la, const typename E::T* a,
                             const GlLayout& lb, const typename E::T* b, gl_u32* out, gl_u64 n) {
    GL_GRID_STRIDE(i, n) {
        const float x = E::load(a[gl_index(la, i)]);
        const float y = E::load(b[gl_index(lb, i)]);
        out[i] = gl_compare<float>(op, x, y);
    }
}

#define GL_BINARY_FLOAT(name, E)                                                               \
    extern "C" __global__ void binary_##name(gl_u32 op, GlLayout la, const E::T* a, GlLayout lb, \
                                             const E::T* b, E::T* out, gl_u64 n) {             \
        binary_impl<E>(op, la, a, lb, b, out, n);                                              \
    }                                                                                          \
    extern "C" __global__ void compare_##name(gl_u32 op, GlLayout la, const E::T* a,           \
                                              GlLayout lb, const E::T* b, gl_u32* out,         \
                                              gl_u64 n) {                                      \
        compare_impl<E>(op, la, a, lb, b, out, n);                                             \
    }

GL_BINARY_FLOAT(f16, GlF16)
GL_BINARY_FLOAT(bf16, GlBF16)
GL_BINARY_FLOAT(f32, GlF32)

// Wrapping u32 arithmetic. A zero divisor sets `*div_by_zero` (the backend reports it as an
// error) and yields 0.
extern "C" __global__ void binary_u32(gl_u32 op, GlLayout la, const gl_u32* a, GlLayout lb,
                                      const gl_u32* b, gl_u32* out, gl_u64 n,
                                      gl_u32* div_by_zero) {
    GL_GRID_STRIDE(i, n) {
        const gl_u32 x = a[gl_index(la, i)];
        const gl_u32 y = b[gl_index(lb, i)];
        gl_u32 r;
        switch (op) {
            case 0: r = x + y; break;
            case 1: r = x - y; break;
            case 2: r = x * y; break;
            case 3:
                if (y == 0u) {
                    atomicOr(div_by_zero, 1u);
                    r = 0u;
                } else {
                    r = x / y;
                }
                break;
            case 4: r = x > y ? x : y; break;
            case 5: r = x < y ? x : y; break;
            case 6: {
                // wrapping power by squaring
                gl_u32 base = x, e = y;
                r = 1u;
                while (e != 0u) {
                    if (e & 1u) r *= base;
                    base *= base;
                    e >>= 1;
                }
                break;
            }
            default: r = 0u; break;
        }
        out[i] = r;
    }
}

extern "C" __global__ void compare_u32(gl_u32 op, GlLayout la, const gl_u32* a, GlLayout lb,
                                       const gl_u32* b, gl_u32* out, gl_u64 n) {
    GL_GRID_STRIDE(i, n) { out[i] = gl_compare<gl_u32>(op, a[gl_index(la, i)], b[gl_index(lb, i)]); }
}

// ------------------------------------------------------------------------ where_cond

extern "C" __global__ void where_b16(GlLayout lc, const gl_u32* c, GlLayout lt, const gl_u16* t,
                                     GlLayout lf, const gl_u16* f, gl_u16* out, gl_u64 n) {
    GL_GRID_STRIDE(i, n) { out[i] = c[gl_index(lc, i)] != 0u ? t[gl_index(lt, i)] : f[gl_index(lf, i)]; }
}

extern "C" __global__ void where_b32(GlLayout lc, const gl_u32* c, GlLayout lt, const gl_u32* t,
                                     GlLayout lf, const gl_u32* f, gl_u32* out, gl_u64 n) {
    GL_GRID_STRIDE(i, n) { out[i] = c[gl_index(lc, i)] != 0u ? t[gl_index(lt, i)] : f[gl_index(lf, i)]; }
}

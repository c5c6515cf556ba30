// reduce.cu: reductions of one dimension (sum, max, min, argmax, argmin).
//
// Shapes: the input is a strided view; the backend splits it into `rows` rows (every position
// of the other dimensions, described by the `outer` GlLayout whose row-major order is the
// output's order) of `len` elements `row_start + j * stride` (j < len). Output: one value per
// row, contiguous (`out[row]`); the tensor layer keeps or drops the size-1 dimension.
//
// Launch: one block per row (grid-stride over rows when there are more rows than blocks),
// blockDim a power of two in 32..=256 (GL_REDUCE_THREADS at most), no dynamic shared memory.
//
// Algorithm: each thread folds elements j = tid, tid + blockDim, ... in registers, then a
// shared-memory tree halves the partial results down to thread 0. Floats accumulate in f32
// (half types too) and are rounded once when stored; u32 sums wrap.
//
// * sum: plain addition; max / min: NaN propagates (a row with a NaN gives NaN), as the CPU.
// * argmax / argmin: the index of the first best element, as the CPU's sequential scan, which
//   keeps its first element unless a later one is strictly better. Under NaN that scan means:
//   a NaN at index 0 is never replaced; a NaN elsewhere is never chosen. Candidates are
//   therefore ranked by a class (2: NaN at index 0, 1: a number, 0: NaN elsewhere, -1: no
//   candidate), then by value, then by the smaller index; that order is total, so the tree
//   gives the scan's answer whatever the order of the combines.
//
// Op codes (must match crates/cuda/src/ops.rs): reduce_*: 0 sum, 1 max, 2 min;
// argreduce_*: 0 argmax, 1 argmin.

#define GL_REDUCE_THREADS 256
#define GL_NO_INDEX 0xffffffffu

template <class A>
struct GlAcc;

template <>
struct GlAcc<float> {
    static __device__ __forceinline__ float identity(gl_u32 op) {
        const float inf = __int_as_float(0x7f800000);
        return op == 0 ? 0.0f : (op == 1 ? -inf : inf);
    }
    static __device__ __forceinline__ float combine(gl_u32 op, float a, float b) {
        if (op == 0) return a + b;
        if (a != a) return a;
        if (b != b) return b;
        if (op == 1) return b > a ? b : a;
        return b < a ? b : a;
    }
    static __device__ __forceinline__ int klass(float v, gl_u32 i) {
        if (i == GL_NO_INDEX) return -1;
        if (v != v) return i == 0 ? 2 : 0;
        return 1;
    }
};

template <>
struct GlAcc<gl_u32> {
    static __device__ __forceinline__ gl_u32 identity(gl_u32 op) {
        return op == 2 ? 0xffffffffu : 0u;
    }
    static __device__ __forceinline__ gl_u32 combine(gl_u32 op, gl_u32 a, gl_u32 b) {
        if (op == 0) return a + b;
        if (op == 1) return b > a ? b : a;
        return b < a ? b : a;
    }
    static __device__ __forceinline__ int klass(gl_u32, gl_u32 i) {
        return i == GL_NO_INDEX ? -1 : 1;
    }
};

// Float traits load to f32; u32 stays u32.
template <class E>
struct GlReduceElem {
    typedef float A;
    static __device__ __forceinline__ A load(typename E::T v) { return E::load(v); }
    static __device__ __forceinline__ typename E::T store(A v) { return E::store(v); }
};

template <>
struct GlReduceElem<GlU32> {
    typedef gl_u32 A;
    static __device__ __forceinline__ A load(gl_u32 v) { return v; }
    static __device__ __forceinline__ gl_u32 store(A v) { return v; }
};

// True if candidate (v1, i1) is preferred to (v2, i2) for argmax (op 0) or argmin (op 1).
template <class A>
__device__ __forceinline__ bool gl_arg_better(gl_u32 op, A v1, gl_u32 i1, A v2, gl_u32 i2) {
    const int c1 = GlAcc<A>::klass(v1, i1);
    const int c2 = GlAcc<A>::klass(v2, i2);
    if (c1 != c2) return c1 > c2;
    if (c1 == 1 && v1 != v2) return op == 0 ? v1 > v2 : v1 < v2;
    return i1 < i2;
}

template <class E>
__device__ void reduce_impl(gl_u32 op, const GlLayout& outer, gl_u64 rows, gl_u64 len,
                            gl_u64 stride, const typename E::T* x, typename E::T* out) {
    typedef GlReduceElem<E> R;
    typedef typename R::A A;
    __shared__ A part[GL_REDUCE_THREADS];
    const unsigned t = threadIdx.x;
    for (gl_u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const gl_u64 base = gl_index(outer, row);
        A acc = GlAcc<A>::identity(op);
        for (gl_u64 j = t; j < len; j += blockDim.x) {
            acc = GlAcc<A>::combine(op, acc, R::load(x[base + j * stride]));
        }
        part[t] = acc;
        __syncthreads();
        for (unsigned step = blockDim.x / 2; step > 0; step /= 2) {
            if (t < step) {
                part[t] = GlAcc<A>::combine(op, part[t], part[t + step]);
            }
            __syncthreads();
        }
        if (t == 0) {
            out[row] = R::store(part[0]);
        }
        __syncthreads();  // part[] is reused by the next row
    }
}

template <class E>
__device__ void argreduce_impl(gl_u32 op, const GlLayout& outer, gl_u64 rows, gl_u64 len,
                               gl_u64 stride, const typename E::T* x, gl_u32* out) {
    typedef GlReduceElem<E> R;
    typedef typename R::A A;
    __shared__ A vals[GL_REDUCE_THREADS];
    __shared__ gl_u32 idxs[GL_REDUCE_THREADS];
    const unsigned t = threadIdx.x;
    for (gl_u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const gl_u64 base = gl_index(outer, row);
        A best = GlAcc<A>::identity(0);
        gl_u32 best_i = GL_NO_INDEX;
        for (gl_u64 j = t; j < len; j += blockDim.x) {
            const A v = R::load(x[base + j * stride]);
            if (gl_arg_better<A>(op, v, (gl_u32)j, best, best_i)) {
                best = v;
                best_i = (gl_u32)j;
            }
        }
        vals[t] = best;
        idxs[t] = best_i;
        __syncthreads();
        for (unsigned step = blockDim.x / 2; step > 0; step /= 2) {
            if (t < step && gl_arg_better<A>(op, vals[t + step], idxs[t + step], vals[t], idxs[t])) {
                vals[t] = vals[t + step];
                idxs[t] = idxs[t + step];
            }
            __syncthreads();
        }
        if (t == 0) {
            out[row] = idxs[0] == GL_NO_INDEX ? 0u : idxs[0];
        }
        __syncthreads();
    }
}

#define GL_REDUCE(name, E)                                                                   \
    extern "C" __global__ void reduce_##name(gl_u32 op, GlLayout outer, gl_u64 rows,          \
                                             gl_u64 len, gl_u64 stride, const E::T* x,        \
                                             E::T* out) {                                     \
        reduce_impl<E>(op, outer, rows, len, stride, x, out);                                \
    }                                                                                        \
    extern "C" __global__ void argreduce_##name(gl_u32 op, GlLayout outer, gl_u64 rows,       \
                                                gl_u64 len, gl_u64 stride, const E::T* x,     \
                                                gl_u32* out) {                                \
        argreduce_impl<E>(op, outer, rows, len, stride, x, out);                             \
    }

GL_REDUCE(f16, GlF16)
GL_REDUCE(bf16, GlBF16)
GL_REDUCE(f32, GlF32)
GL_REDUCE(u32, GlU32)

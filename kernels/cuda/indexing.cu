// indexing.cu: index_select, gather and scatter_add along one dimension `dim`.
//
// Shapes (the backend passes every view as a GlLayout, rank <= 8):
// * index_select: `src` has the OUTPUT dims (the source's dims with dims[dim] = number of ids)
//   and the source's strides and offset; `ids` is the 1-D u32 index view. For output position
//   c: out[c] = x[offset + sum_d c'_d * strides_d] with c'_dim = ids[c_dim].
// * gather: `src` has the dims of `ids` (= the output's) and the source's strides; `ids` is
//   the u32 index view of the same dims. out[c] = x[... c'_dim = ids[c] ...].
// * scatter_add: `out` is a contiguous copy of the destination, made by the backend first;
//   `dst` holds the source's dims with the output's contiguous strides; `src` and `ids` are
//   views of the source's dims. out[c'] += src[c] with c'_dim = ids[c], for every c.
// `size` is the size of `dim` in the indexed tensor. Bad indices (>= size) are recorded in
// `*err` (first one by position, see gl_report_index) and the backend turns them into
// Error::IndexOutOfRange; the kernel reads or writes nothing through a bad index.
//
// Launch: 1-D grid of 256-thread blocks, grid-stride loop, one output (index_select, gather)
// or source (scatter_add) element per thread and iteration.
//
// Algorithm: direct index arithmetic. scatter_add accumulates with atomics: atomicAdd for f32
// and u32 (wrapping); for f16 / bf16 an atomicCAS loop on the aligned 32-bit word holding the
// element, adding in f32 and rounding once per addition (the CPU also rounds after every
// addition; the order of additions to one element is not fixed). The output buffer must be
// 4-byte aligned, which every device allocation is.

// Storage index of row-major position `flat` of `l`, with the coordinate of dimension `dim`
// replaced by `id(coordinate)`; returns false (and leaves *index alone) when that id is bad.
template <class IdOf>
__device__ __forceinline__ bool gl_index_with(const GlLayout& l, gl_u64 flat, gl_u32 dim,
                                              IdOf id_of, gl_u64* index) {
    gl_u64 idx = l.offset;
    bool ok = true;
    for (int d = (int)l.rank - 1; d >= 0; --d) {
        const gl_u64 n = l.dims[d];
        gl_u64 c = flat % n;
        flat /= n;
        if ((gl_u32)d == dim) {
            gl_u64 id;
            ok = id_of(c, &id);
            c = id;
        }
        idx += c * l.strides[d];
    }
    *index = idx;
    return ok;
}

template <class T>
__device__ void index_select_impl(GlLayout src, gl_u32 dim, gl_u64 size, GlLayout ids,
                                  const gl_u32* id, const T* x, T* out, gl_u64 n, gl_u64* err) {
    GL_GRID_STRIDE(i, n) {
        gl_u64 at = 0;
        const bool ok = gl_index_with(src, i, dim,
                                      [&](gl_u64 c, gl_u64* v) {
                                          const gl_u32 k = id[gl_index(ids, c)];
                                          if (k >= size) {
                                              gl_report_index(err, c, k);
                                              *v = 0;
                                              return false;
                                          }
                                          *v = k;
                                          return true;
                                      },
                                      &at);
        out[i] = ok ? x[at] : (T)0;
    }
}

template <class T>
__device__ void gather_impl(GlLayout src, gl_u32 dim, gl_u64 size, GlLayout ids,
                            const gl_u32* id, const T* x, T* out, gl_u64 n, gl_u64* err) {
    GL_GRID_STRIDE(i, n) {
        const gl_u32 k = id[gl_index(ids, i)];
        gl_u64 at = 0;
        const bool ok = gl_index_with(src, i, dim,
                                      [&](gl_u64, gl_u64* v) {
                                          if (k >= size) {
                                              gl_report_index(err, i, k);
                                              *v = 0;
                                              return false;
                                          }
                                          *v = k;
                                          return true;
                                      },
                                      &at);
        out[i] = ok ? x[at] : (T)0;
    }
}

#define GL_INDEX_OPS(name, T)                                                                  \
    extern "C" __global__ void index_select_##name(GlLayout src, gl_u32 dim, gl_u64 size,       \
                                                   GlLayout ids, const gl_u32* id, const T* x,   \
                                                   T* out, gl_u64 n, gl_u64* err) {              \
        index_select_impl<T>(src, dim, size, ids, id, x, out, n, err);                          \
    }                                                                                          \
    extern "C" __global__ void gather_##name(GlLayout src, gl_u32 dim, gl_u64 size,             \
                                             GlLayout ids, const gl_u32* id, const T* x, T* out, \
                                             gl_u64 n, gl_u64* err) {                            \
        gather_impl<T>(src, dim, size, ids, id, x, out, n, err);                                \
    }

GL_INDEX_OPS(b16, gl_u16)
GL_INDEX_OPS(b32, gl_u32)

// ------------------------------------------------------------------------ scatter_add

__device__ __forceinline__ void gl_atomic_add(float* at, float v) { atomicAdd(at, v); }

__device__ __forceinline__ void gl_atomic_add(gl_u32* at, gl_u32 v) { atomicAdd(at, v); }

// Adds `v` to the 16-bit float at `at` (F = GlF16 or GlBF16) with a CAS loop on its word.
template <class F>
__device__ __forceinline__ void gl_atomic_add_half(gl_u16* at, float v) {
    const unsigned long long addr = (unsigned long long)at;
    gl_u32* word = (gl_u32*)(addr & ~3ull);
    const unsigned shift = (addr & 2ull) ? 16u : 0u;
    gl_u32 old = *word;
    while (true) {
        const gl_u16 cur = (gl_u16)(old >> shift);
        const gl_u16 sum = F::store(F::load(cur) + v);
        const gl_u32 next = (old & ~(0xffffu << shift)) | ((gl_u32)sum << shift);
        const gl_u32 seen = atomicCAS(word, old, next);
        if (seen == old) break;
        old = seen;
    }
}

template <class E>
__device__ void scatter_add_impl(GlLayout dst, gl_u32 dim, gl_u64 size, GlLayout src,
                                 const typename E::T* s, GlLayout ids, const gl_u32* id,
                                 typename E::T* out, gl_u64 n, gl_u64* err) {
    GL_GRID_STRIDE(i, n) {
        const gl_u32 k = id[gl_index(ids, i)];
        gl_u64 at = 0;
        const bool ok = gl_index_with(dst, i, dim,
                                      [&](gl_u64, gl_u64* v) {
                                          if (k >= size) {
                                              gl_report_index(err, i, k);
                                              *v = 0;
                                              return false;
                                          }
                                          *v = k;
                                          return true;
                                      },
                                      &at);
        if (ok) {
            const typename E::T v = s[gl_index(src, i)];
            if constexpr (E::is_int) {
                gl_atomic_add(&out[at], v);
            } else if constexpr (sizeof(typename E::T) == 4) {
                gl_atomic_add(&out[at], v);
            } else {
                gl_atomic_add_half<E>(&out[at], E::load(v));
            }
        }
    }
}

#define GL_SCATTER_ADD(name, E)                                                                \
    extern "C" __global__ void scatter_add_##name(GlLayout dst, gl_u32 dim, gl_u64 size,        \
                                                  GlLayout src, const E::T* s, GlLayout ids,     \
                                                  const gl_u32* id, E::T* out, gl_u64 n,         \
                                                  gl_u64* err) {                                 \
        scatter_add_impl<E>(dst, dim, size, src, s, ids, id, out, n, err);                      \
    }

GL_SCATTER_ADD(f16, GlF16)
GL_SCATTER_ADD(bf16, GlBF16)
GL_SCATTER_ADD(f32, GlF32)
GL_SCATTER_ADD(u32, GlU32)

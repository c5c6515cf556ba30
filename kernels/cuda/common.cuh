// common.cuh: declarations shared by every CUDA source of glimpse. The CUDA backend puts this
// file in front of each `.cu` file before compiling it with NVRTC, so sources never include it.
//
// No #include of any CUDA header: NVRTC in CI has no CUDA headers. Everything here is plain
// C++ plus NVRTC's built-in device functions and inline PTX:
//
// * dtype loads and stores: f16 and bf16 travel as their 16-bit patterns (`unsigned short`)
//   and are converted to f32 for arithmetic (`cvt.f32.f16` / `cvt.rn.f16.f32`; bf16 by bit
//   shifts with round-to-nearest-even). Every half-type computation is carried out in f32 and
//   rounded once when stored, as the CPU backend does.
// * `GlLayout`: a strided view (rank <= GL_MAX_RANK, dims and strides in elements, offset),
//   passed to kernels by value; `gl_index` maps a row-major position of the view to its
//   storage index. It mirrors `KLayout` in crates/cuda/src/klayout.rs field for field.
// * conversions with the CPU backend's exact rounding rules (float to u32 truncates and
//   saturates, NaN gives 0; u32 and f64 to the half types round once, correctly).
// * `GL_GRID_STRIDE`: the grid-stride loop every element-wise kernel uses.

#define GL_MAX_RANK 8

typedef unsigned short gl_u16;
typedef unsigned int gl_u32;
typedef unsigned long long gl_u64;

// A strided view of a storage. `rank` dims and strides are used; the rest are ignored.
struct GlLayout {
    gl_u32 rank;
    gl_u32 pad_;
    gl_u64 offset;
    gl_u64 dims[GL_MAX_RANK];
    gl_u64 strides[GL_MAX_RANK];
};

// Storage index of row-major position `flat` of the view `l` (flat < product of dims).
// A contiguous view (rank 1 after the host merged its dimensions) needs no division; other
// views divide in 32 bits whenever the operands fit, several times cheaper on the GPU than the
// 64-bit division routine.
__device__ __forceinline__ gl_u64 gl_index(const GlLayout& l, gl_u64 flat) {
    if (l.rank == 1) return l.offset + flat * l.strides[0];
    gl_u64 idx = l.offset;
    for (int d = (int)l.rank - 1; d >= 0; --d) {
        const gl_u64 n = l.dims[d];
        if (((flat | n) >> 32) == 0) {
            const gl_u32 f = (gl_u32)flat, n32 = (gl_u32)n;
            idx += (gl_u64)(f % n32) * l.strides[d];
            flat = f / n32;
        } else {
            idx += (flat % n) * l.strides[d];
            flat /= n;
        }
    }
    return idx;
}

// for (i = global thread id; i < n; i += total threads)
#define GL_GRID_STRIDE(i, n)                                                              \
    for (gl_u64 i = (gl_u64)blockIdx.x * blockDim.x + threadIdx.x; i < (gl_u64)(n);       \
         i += (gl_u64)blockDim.x * gridDim.x)

// ------------------------------------------------------------------------ scalar conversions

__device__ __forceinline__ float gl_f16_to_f32(gl_u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ gl_u16 gl_f32_to_f16(float f) {
    gl_u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float gl_bf16_to_f32(gl_u16 b) {
    return __uint_as_float(((gl_u32)b) << 16);
}

// Round to nearest, ties to even; NaN stays a (quiet) NaN with its sign, as the `half` crate.
__device__ __forceinline__ gl_u16 gl_f32_to_bf16(float f) {
    gl_u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (gl_u16)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (gl_u16)(u >> 16);
}

// Truncates toward zero and saturates to 0..=u32::MAX; NaN gives 0 (PTX semantics of cvt from
// f32 to an integer, which are Rust's `as`).
__device__ __forceinline__ gl_u32 gl_f32_to_u32(float f) {
    gl_u32 u;
    asm("cvt.rzi.u32.f32 %0, %1;" : "=r"(u) : "f"(f));
    return u;
}

// As above from f64 (PTX turns an f64 NaN into 2^31, so NaN is handled first).
__device__ __forceinline__ gl_u32 gl_f64_to_u32(double v) {
    if (v != v) {
        return 0u;
    }
    gl_u32 u;
    asm("cvt.rzi.u32.f64 %0, %1;" : "=r"(u) : "d"(v));
    return u;
}

// Round to nearest even (exact for every u32 the f32 can hold).
__device__ __forceinline__ float gl_u32_to_f32(gl_u32 x) {
    float f;
    asm("cvt.rn.f32.u32 %0, %1;" : "=f"(f) : "r"(x));
    return f;
}

// `x` as an f32 rounded to odd (truncated, last bit set when inexact). A later
// round-to-nearest to f16 or bf16 then gives the correctly rounded value of `x`.
__device__ __forceinline__ float gl_u32_to_f32_round_odd(gl_u32 x) {
    float f;
    asm("cvt.rz.f32.u32 %0, %1;" : "=f"(f) : "r"(x));
    gl_u32 back;
    asm("cvt.rzi.u32.f32 %0, %1;" : "=r"(back) : "f"(f));
    if (back != x) {
        f = __uint_as_float(__float_as_uint(f) | 1u);
    }
    return f;
}

// `v` as an f32 rounded to odd; infinities and NaN pass through (the CPU backend's
// `f64_to_f32_round_odd`).
__device__ __forceinline__ float gl_f64_to_f32_round_odd(double v) {
    float f;
    asm("cvt.rz.f32.f64 %0, %1;" : "=f"(f) : "d"(v));
    const bool finite = (v - v) == 0.0;
    if (finite && (double)f != v) {
        f = __uint_as_float(__float_as_uint(f) | 1u);
    }
    return f;
}

__device__ __forceinline__ float gl_f64_to_f32(double v) {
    float f;
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(f) : "d"(v));
    return f;
}

// ------------------------------------------------------------------------ dtype traits
//
// Each trait has: `T` (the storage type), `load` (to f32), `store` (from f32, rounding once),
// `from_u32` (correctly rounded), `from_f64` (correctly rounded), `to_f64` (exact) and
// `is_int`.

struct GlF32 {
    typedef float T;
    static const bool is_int = false;
    static __device__ __forceinline__ float load(T v) { return v; }
    static __device__ __forceinline__ T store(float v) { return v; }
    static __device__ __forceinline__ T from_u32(gl_u32 v) { return gl_u32_to_f32(v); }
    static __device__ __forceinline__ T from_f64(double v) { return gl_f64_to_f32(v); }
    static __device__ __forceinline__ double to_f64(T v) { return (double)v; }
};

struct GlF16 {
    typedef gl_u16 T;
    static const bool is_int = false;
    static __device__ __forceinline__ float load(T v) { return gl_f16_to_f32(v); }
    static __device__ __forceinline__ T store(float v) { return gl_f32_to_f16(v); }
    static __device__ __forceinline__ T from_u32(gl_u32 v) {
        return gl_f32_to_f16(gl_u32_to_f32_round_odd(v));
    }
    static __device__ __forceinline__ T from_f64(double v) {
        return gl_f32_to_f16(gl_f64_to_f32_round_odd(v));
    }
    static __device__ __forceinline__ double to_f64(T v) { return (double)gl_f16_to_f32(v); }
};

struct GlBF16 {
    typedef gl_u16 T;
    static const bool is_int = false;
    static __device__ __forceinline__ float load(T v) { return gl_bf16_to_f32(v); }
    static __device__ __forceinline__ T store(float v) { return gl_f32_to_bf16(v); }
    static __device__ __forceinline__ T from_u32(gl_u32 v) {
        return gl_f32_to_bf16(gl_u32_to_f32_round_odd(v));
    }
    static __device__ __forceinline__ T from_f64(double v) {
        return gl_f32_to_bf16(gl_f64_to_f32_round_odd(v));
    }
    static __device__ __forceinline__ double to_f64(T v) { return (double)gl_bf16_to_f32(v); }
};

struct GlU32 {
    typedef gl_u32 T;
    static const bool is_int = true;
    static __device__ __forceinline__ float load(T v) { return gl_u32_to_f32(v); }
    static __device__ __forceinline__ T store(float v) { return gl_f32_to_u32(v); }
    static __device__ __forceinline__ T from_u32(gl_u32 v) { return v; }
    static __device__ __forceinline__ T from_f64(double v) { return gl_f64_to_u32(v); }
    static __device__ __forceinline__ double to_f64(T v) { return (double)v; }
};

// ------------------------------------------------------------------------ error reporting

// Records the first bad index (lowest `position`) of an index op: `*err` starts at all ones and
// keeps `position << 32 | index` of the smallest position seen.
__device__ __forceinline__ void gl_report_index(gl_u64* err, gl_u64 position, gl_u32 index) {
    const gl_u64 pos = position > 0xffffffffull ? 0xffffffffull : position;
    atomicMin(err, (pos << 32) | (gl_u64)index);
}

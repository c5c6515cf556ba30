// norm.cu: row-wise fused ops over the last dimension.
//
// What it computes (all arithmetic in f32, inputs and outputs f32 / f16 / bf16):
//   layer_norm_<dt>:   out = (x - mean) / sqrt(var + eps) * weight + bias per row, with the
//                      biased variance (two passes: mean first, then sum((x - mean)^2)), as
//                      torch.nn.functional.layer_norm; weight / bias may be null (1 / 0).
//   softmax_<dt>:      out = exp(x - max) / sum(exp(x - max)); a row whose max is -inf gives 0.
//   log_softmax_<dt>:  out = x - max - log(sum(exp(x - max))); a row whose max is -inf gives -inf.
// (The GELU activations are element-wise ops 16..18 of elementwise.cu, whose 16-byte dense
// path streams them at memory speed.)
//
// Shapes: x and out are (rows, cols) contiguous (the Rust side makes them so); weight and bias
// are (cols) contiguous.
//
// Launch shape (row ops): 256 threads per block (8 warps).
//   cols <= NM_WARP_COLS (1024): one warp per row, the row kept in registers (32 per lane);
//                                grid = ceil(rows / 8).
//   cols >  NM_WARP_COLS:        one block per row, statistics by block reductions over
//                                re-reads of the row (L1/L2 resident); grid = rows.
// The kernel picks its mode from cols, so the host must launch the matching grid
// (fused.rs: norm_launch).
//
// No CUDA headers: 16-bit types travel as unsigned short and convert through inline PTX.

#define NM_WARP_COLS 1024
#define NM_PER_LANE (NM_WARP_COLS / 32)
#define NM_THREADS 256

__device__ __forceinline__ float nm_neg_inf() { return __int_as_float(0xff800000); }

struct NmF32 {
    typedef float raw;
    static __device__ __forceinline__ float ld(const float* p) { return *p; }
    static __device__ __forceinline__ void st(float* p, float v) { *p = v; }
};

struct NmF16 {
    typedef unsigned short raw;
    static __device__ __forceinline__ float ld(const unsigned short* p) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(*p));
        return f;
    }
    static __device__ __forceinline__ void st(unsigned short* p, float v) {
        unsigned short h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
        *p = h;
    }
};

struct NmBF16 {
    typedef unsigned short raw;
    static __device__ __forceinline__ float ld(const unsigned short* p) {
        return __uint_as_float(((unsigned int)*p) << 16);
    }
    static __device__ __forceinline__ void st(unsigned short* p, float v) {
        unsigned short h;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
        *p = h;
    }
};

__device__ __forceinline__ float nm_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float nm_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum or max over NM_THREADS threads; every thread gets the result. `scratch` holds
// at least 8 floats; the function syncs before returning and before reusing `scratch`.
__device__ __forceinline__ float nm_block_reduce(float v, bool is_max, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = is_max ? nm_warp_max(v) : nm_warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = scratch[0];
#pragma unroll
    for (int w = 1; w < NM_THREADS / 32; ++w) r = is_max ? fmaxf(r, scratch[w]) : r + scratch[w];
    return r;
}

// ------------------------------------------------------------------------------ layer norm

template <class D>
__device__ void nm_layer_norm(const typename D::raw* __restrict__ x,
                              const typename D::raw* __restrict__ weight,
                              const typename D::raw* __restrict__ bias,
                              typename D::raw* __restrict__ out, long long rows, int cols,
                              float eps) {
    __shared__ float scratch[NM_THREADS / 32];
    const float inv_n = 1.0f / (float)cols;
    if (cols <= NM_WARP_COLS) {
        long long row = (long long)blockIdx.x * (NM_THREADS / 32) + (threadIdx.x >> 5);
        int lane = threadIdx.x & 31;
        if (row >= rows) return;  // whole warp leaves together: no block barrier in this mode
        const typename D::raw* xr = x + row * cols;
        typename D::raw* orow = out + row * cols;
        float v[NM_PER_LANE];
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < NM_PER_LANE; ++i) {
            int c = lane + 32 * i;
            v[i] = c < cols ? D::ld(xr + c) : 0.0f;
            s += v[i];
        }
        float mean = nm_warp_sum(s) * inv_n;
        float q = 0.0f;
#pragma unroll
        for (int i = 0; i < NM_PER_LANE; ++i) {
            int c = lane + 32 * i;
            float d = v[i] - mean;
            q += c < cols ? d * d : 0.0f;
        }
        float rstd = rsqrtf(nm_warp_sum(q) * inv_n + eps);
#pragma unroll
        for (int i = 0; i < NM_PER_LANE; ++i) {
            int c = lane + 32 * i;
            if (c < cols) {
                float y = (v[i] - mean) * rstd;
                if (weight) y *= D::ld(weight + c);
                if (bias) y += D::ld(bias + c);
                D::st(orow + c, y);
            }
        }
    } else {
        long long row = blockIdx.x;
        if (row >= rows) return;  // uniform over the block
        const typename D::raw* xr = x + row * cols;
        typename D::raw* orow = out + row * cols;
        float s = 0.0f;
        for (int c = threadIdx.x; c < cols; c += NM_THREADS) s += D::ld(xr + c);
        float mean = nm_block_reduce(s, false, scratch) * inv_n;
        float q = 0.0f;
        for (int c = threadIdx.x; c < cols; c += NM_THREADS) {
            float d = D::ld(xr + c) - mean;
            q += d * d;
        }
        float rstd = rsqrtf(nm_block_reduce(q, false, scratch) * inv_n + eps);
        for (int c = threadIdx.x; c < cols; c += NM_THREADS) {
            float y = (D::ld(xr + c) - mean) * rstd;
            if (weight) y *= D::ld(weight + c);
            if (bias) y += D::ld(bias + c);
            D::st(orow + c, y);
        }
    }
}

// ------------------------------------------------------------------------------ softmax

template <class D, bool LOG>
__device__ void nm_softmax(const typename D::raw* __restrict__ x, typename D::raw* __restrict__ out,
                           long long rows, int cols) {
    __shared__ float scratch[NM_THREADS / 32];
    if (cols <= NM_WARP_COLS) {
        long long row = (long long)blockIdx.x * (NM_THREADS / 32) + (threadIdx.x >> 5);
        int lane = threadIdx.x & 31;
        if (row >= rows) return;
        const typename D::raw* xr = x + row * cols;
        typename D::raw* orow = out + row * cols;
        float v[NM_PER_LANE];
        float m = nm_neg_inf();
#pragma unroll
        for (int i = 0; i < NM_PER_LANE; ++i) {
            int c = lane + 32 * i;
            v[i] = c < cols ? D::ld(xr + c) : nm_neg_inf();
            m = fmaxf(m, v[i]);
        }
        m = nm_warp_max(m);
        if (m == nm_neg_inf()) {
#pragma unroll
            for (int i = 0; i < NM_PER_LANE; ++i) {
                int c = lane + 32 * i;
                if (c < cols) D::st(orow + c, LOG ? nm_neg_inf() : 0.0f);
            }
            return;
        }
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < NM_PER_LANE; ++i) {
            int c = lane + 32 * i;
            float e = c < cols ? __expf(v[i] - m) : 0.0f;
            if (!LOG) v[i] = e;
            s += e;
        }
        s = nm_warp_sum(s);
        if (LOG) {
            float shift = m + __logf(s);
#pragma unroll
            for (int i = 0; i < NM_PER_LANE; ++i) {
                int c = lane + 32 * i;
                if (c < cols) D::st(orow + c, v[i] - shift);
            }
        } else {
            float inv = 1.0f / s;
#pragma unroll
            for (int i = 0; i < NM_PER_LANE; ++i) {
                int c = lane + 32 * i;
                if (c < cols) D::st(orow + c, v[i] * inv);
            }
        }
    } else {
        long long row = blockIdx.x;
        if (row >= rows) return;
        const typename D::raw* xr = x + row * cols;
        typename D::raw* orow = out + row * cols;
        float m = nm_neg_inf();
        for (int c = threadIdx.x; c < cols; c += NM_THREADS) m = fmaxf(m, D::ld(xr + c));
        m = nm_block_reduce(m, true, scratch);
        if (m == nm_neg_inf()) {
            for (int c = threadIdx.x; c < cols; c += NM_THREADS)
                D::st(orow + c, LOG ? nm_neg_inf() : 0.0f);
            return;
        }
        float s = 0.0f;
        for (int c = threadIdx.x; c < cols; c += NM_THREADS) s += __expf(D::ld(xr + c) - m);
        s = nm_block_reduce(s, false, scratch);
        if (LOG) {
            float shift = m + __logf(s);
            for (int c = threadIdx.x; c < cols; c += NM_THREADS)
                D::st(orow + c, D::ld(xr + c) - shift);
        } else {
            float inv = 1.0f / s;
            for (int c = threadIdx.x; c < cols; c += NM_THREADS)
                D::st(orow + c, __expf(D::ld(xr + c) - m) * inv);
        }
    }
}

// ------------------------------------------------------------------------------ entry points

#define NM_ROW_KERNELS(SUF, D)                                                                  \
    extern "C" __global__ void __launch_bounds__(NM_THREADS)                                  \
        layer_norm_##SUF(const D::raw* x, const D::raw* weight, const D::raw* bias,            \
                         D::raw* out, long long rows, int cols, float eps) {                   \
        nm_layer_norm<D>(x, weight, bias, out, rows, cols, eps);                               \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(NM_THREADS)                                  \
        softmax_##SUF(const D::raw* x, D::raw* out, long long rows, int cols) {                \
        nm_softmax<D, false>(x, out, rows, cols);                                              \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(NM_THREADS)                                  \
        log_softmax_##SUF(const D::raw* x, D::raw* out, long long rows, int cols) {            \
        nm_softmax<D, true>(x, out, rows, cols);                                               \
    }

NM_ROW_KERNELS(f32, NmF32)
NM_ROW_KERNELS(f16, NmF16)
NM_ROW_KERNELS(bf16, NmBF16)

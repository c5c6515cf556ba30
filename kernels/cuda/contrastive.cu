// contrastive.cu: CLIP's symmetric contrastive loss over logits = scale * img @ txt^T, tile by
// tile, never holding the N x N logits (forward) and holding at most a strip of R x N
// gradients (backward).
//
// What it computes (as glimpse_tensor::compose::contrastive_loss{,_backward}):
//   lse_rows_i = ln sum_j e^{z_ij}, lse_cols_j = ln sum_i e^{z_ij}, z = scale * img txt^T,
//   loss = (mean_i (lse_rows_i - z_ii) + mean_j (lse_cols_j - z_jj)) / 2;
//   dz_ij = d_loss / (2N) * (e^{z_ij - lse_rows_i} + e^{z_ij - lse_cols_j} - 2 [i == j]),
//   d_img = scale * dz @ txt, d_txt = scale * dz^T @ img, d_scale = sum_ij dz_ij (img_i . txt_j).
// The backward writes w_ij = e^{z_ij - lse_rows_i} + e^{z_ij - lse_cols_j} - 2 [i == j] (in
// [-2, 2], safe from f16 underflow) to the strip; the factor cs = scale * d_loss / (2N) is
// applied in f32 after the matrix products.
// `scale` and `d_loss` are read on the device from one-element f32 buffers.
//
// Shapes: img and txt are (N, D) with row strides lda / ldb (elements, last dim contiguous);
// row_part / col_part are (n_t, N) float2 (running max, sum of e^{z - max}) per 128-wide tile;
// diag, lse_rows, lse_cols are (N) f32; loss is one f32; strip is (R, N) in the input dtype.
//
// Tiles: every tile kernel computes one 128 x 128 block of sims = img txt^T with 256 threads:
//   *_mma_{f16,bf16}, *_mma32_{f16,bf16}: tensor cores (mma.sync.m16n8k16, f32
//       accumulators), 8 warps as 2 x 4, warp tile 64 x 32, K in steps of 64 (mma) or 32
//       (mma32) through a 3-stage cp.async pipeline (16-byte copies: D % 8 == 0 and 16-byte
//       aligned rows, checked by the host), ldmatrix fragments, rows padded by 8 halves
//       (conflict-free ldmatrix).
//   *_simt_{f32,f16,bf16}: CUDA cores, any D and alignment, 8 x 8 outputs per thread, K in
//       steps of 16 through shared memory (f32).
//   Dynamic shared memory (opt-in above 48 KB): CT_PIPE_BYTES(64) (110592) for the mma
//       kernels, CT_TILE_BYTES (69632) for mma32 and simt. The host takes mma where a block
//       may have that much (Hopper, A100) and mma32 elsewhere (99 KB on Ada).
// Kernels and launch shapes (1-D grids):
//   contrastive_fwd_{mma,mma32,simt}_<dt>: grid n_t * n_t (n_t = ceil(N / 128)), block
//       (ti, tj) = (bid / n_t, bid % n_t). Tensor cores: the statistics come straight from the
//       accumulators (warp shuffles, then 4 row and 2 column partials per block merged
//       through shared memory, see ct_fwd_stats_mma). CUDA cores: the logits tile goes to
//       shared memory; each warp reduces 16 rows, thread pairs reduce columns. Either way the
//       block writes row_part[tj][i] and col_part[ti][j]; diagonal tiles also write diag.
//   contrastive_fwd_merge: grid ceil(N / 256) x 256: merges the partials into lse_rows/cols.
//   contrastive_fwd_loss: one block of 1024 threads: the loss, summed in f64.
//   contrastive_bwd_{mma,mma32,simt}_<dt>: grid ceil(rows / 128) * n_t for the strip of rows
//       [r0, r0 + rows) (r0 a multiple of 128): recomputes sims, writes w to the strip
//       ((rows, N), staged through shared memory for 16-byte stores) and a per-block partial
//       of d_scale (dscale_part[(r0 / 128 + bid / n_t) * n_t + bid % n_t]).
//   contrastive_bwd_dscale: one block of 1024 threads: d_scale = sum of the partials (f64).
//   contrastive_scale_<dt>: grid-stride, out = cs * part (d_img rows of a strip, or d_txt).
//   contrastive_accum_<dt>: grid-stride, acc (f32) = (first ? 0 : acc) + part.
//   contrastive_cast_scaled_<dt>: grid-stride, out = cs * acc converted to the dtype.
// The host multiplies the strip by txt / img with the backend's matrix product (cuBLAS):
// d_img[strip] = cs * (strip @ txt), d_txt = cs * sum over strips of strip^T @ img[strip].
//
// No CUDA headers: 16-bit types travel as unsigned short and convert through inline PTX.

#define CT_BM 128
#define CT_BN 128
#define CT_STAGES 3
#define CT_THREADS 256
#define CT_SBK 16
#define CT_SLD (CT_BM + 4)
#define CT_LDS (CT_BN + 4)  // f32 logits tile row stride
// Shared memory: the tensor-core pipeline for K steps of BK (3 stages of 128 + 128 rows of
// BK + 8 halves), and the f32 logits tile with its column statistics (the CUDA-core forward).
// A kernel is launched with the larger of what it uses (see the header).
#define CT_PIPE_BYTES(BK) (CT_STAGES * (CT_BM + CT_BN) * ((BK) + 8) * 2)
#define CT_TILE_BYTES (CT_BM * CT_LDS * 4 + 4 * CT_BN * 4)

__device__ __forceinline__ float ct_neg_inf() { return __int_as_float(0xff800000); }

// ------------------------------------------------------------------------------ dtypes

struct CtF32 {
    typedef float raw;
    static __device__ __forceinline__ float ld(const float* p) { return *p; }
    static __device__ __forceinline__ void st(float* p, float v) { *p = v; }
    static __device__ __forceinline__ float cvt(float v) { return v; }
};

struct CtF16 {
    typedef unsigned short raw;
    static __device__ __forceinline__ float ld(const unsigned short* p) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(*p));
        return f;
    }
    static __device__ __forceinline__ unsigned short cvt(float v) {
        unsigned short h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
        return h;
    }
    static __device__ __forceinline__ void st(unsigned short* p, float v) { *p = cvt(v); }
    static __device__ __forceinline__ void mma(float* c, const unsigned* a, unsigned b0,
                                               unsigned b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

struct CtBF16 {
    typedef unsigned short raw;
    static __device__ __forceinline__ float ld(const unsigned short* p) {
        return __uint_as_float(((unsigned int)*p) << 16);
    }
    static __device__ __forceinline__ unsigned short cvt(float v) {
        unsigned short h;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
        return h;
    }
    static __device__ __forceinline__ void st(unsigned short* p, float v) { *p = cvt(v); }
    static __device__ __forceinline__ void mma(float* c, const unsigned* a, unsigned b0,
                                               unsigned b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

// ------------------------------------------------------------------------------ PTX helpers

__device__ __forceinline__ unsigned ct_smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ct_cp16(unsigned dst, const void* src, bool valid) {
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n)
                 : "memory");
}

__device__ __forceinline__ void ct_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void ct_cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ct_ldsm_x4(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

__device__ __forceinline__ void ct_merge(float& m, float& l, float m2, float l2) {
    if (m2 == ct_neg_inf()) return;
    if (m == ct_neg_inf()) {
        m = m2;
        l = l2;
        return;
    }
    float mn = fmaxf(m, m2);
    l = l * __expf(m - mn) + l2 * __expf(m2 - mn);
    m = mn;
}

// ------------------------------------------------------------------------------ tile engines

// Tensor-core engine: sims for rows [i0, i0 + 128) of A and rows [j0, j0 + 128) of B (both
// (rows, K) row-major with leading dimensions lda / ldb; rows past the ends read as zeros).
// acc[mt][nt][e] holds row wm*64 + mt*16 + g + (e/2)*8, column wn*32 + nt*8 + tig*2 + e%2.
// Ends with every cp.async retired and a block barrier, so the caller may reuse `smem`.
template <class T, int BK>
__device__ __forceinline__ void ct_tile_mma(float (&acc)[4][4][4], const unsigned short* A,
                                            long long lda, int rows_a, const unsigned short* B,
                                            long long ldb, int rows_b, int K,
                                            unsigned short* smem) {
    constexpr int LDK = BK + 8;  // row stride in halves: conflict-free ldmatrix
    unsigned short* As = smem;                             // [STAGES][BM][LDK]
    unsigned short* Bs = smem + CT_STAGES * CT_BM * LDK;  // [STAGES][BN][LDK]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3;
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b][0] = acc[a][b][1] = acc[a][b][2] = acc[a][b][3] = 0.0f;
    const int nk = (K + BK - 1) / BK;

    // 128 rows x BK / 8 chunks of 8 elements per operand: BK / 16 chunks per thread each.
    constexpr int CPR = BK / 8;  // chunks per row
    auto load = [&](int stage, int k0) {
        unsigned short* ad = As + stage * CT_BM * LDK;
        unsigned short* bd = Bs + stage * CT_BN * LDK;
#pragma unroll
        for (int u = 0; u < CT_BM * CPR / CT_THREADS; ++u) {
            int c = tid + u * CT_THREADS;
            int r = c / CPR, cc = c % CPR;
            int k = k0 + cc * 8;
            bool oka = r < rows_a && k < K;
            bool okb = r < rows_b && k < K;
            ct_cp16(ct_smem_addr(ad + r * LDK + cc * 8), A + (oka ? r * lda + k : 0), oka);
            ct_cp16(ct_smem_addr(bd + r * LDK + cc * 8), B + (okb ? r * ldb + k : 0), okb);
        }
    };

#pragma unroll
    for (int s = 0; s < CT_STAGES - 1; ++s) {
        if (s < nk) load(s, s * BK);
        ct_cp_commit();
    }
    for (int kt = 0; kt < nk; ++kt) {
        ct_cp_wait<CT_STAGES - 2>();
        __syncthreads();
        {
            int pf = kt + CT_STAGES - 1;  // its stage was last read in iteration kt - 1
            if (pf < nk) load(pf % CT_STAGES, pf * BK);
            ct_cp_commit();
        }
        const unsigned short* At = As + (kt % CT_STAGES) * CT_BM * LDK;
        const unsigned short* Bt = Bs + (kt % CT_STAGES) * CT_BN * LDK;
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks) {
            unsigned af[4][4], bfr[4][2];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) {
                int row = wm * 64 + mt * 16 + (lane & 15);
                int col = ks * 16 + (lane >> 4) * 8;
                ct_ldsm_x4(af[mt], ct_smem_addr(At + row * LDK + col));
            }
#pragma unroll
            for (int np = 0; np < 2; ++np) {
                unsigned x[4];
                int row = wn * 32 + np * 16 + ((lane >> 4) & 1) * 8 + (lane & 7);
                int col = ks * 16 + ((lane >> 3) & 1) * 8;
                ct_ldsm_x4(x, ct_smem_addr(Bt + row * LDK + col));
                bfr[2 * np][0] = x[0];
                bfr[2 * np][1] = x[1];
                bfr[2 * np + 1][0] = x[2];
                bfr[2 * np + 1][1] = x[3];
            }
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) T::mma(acc[mt][nt], af[mt], bfr[nt][0], bfr[nt][1]);
        }
    }
    ct_cp_wait<0>();
    __syncthreads();
}

// CUDA-core engine, any dtype and alignment: acc[i][j] holds row ty + 16 i, column tx + 16 j
// (tx = tid % 16, ty = tid / 16). Ends with a block barrier.
template <class T>
__device__ __forceinline__ void ct_tile_simt(float (&acc)[8][8], const typename T::raw* A,
                                             long long lda, int rows_a,
                                             const typename T::raw* B, long long ldb, int rows_b,
                                             int K, float* smem) {
    float* As = smem;                // [SBK][SLD]
    float* Bs = smem + CT_SBK * CT_SLD;  // [SBK][SLD]
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += CT_SBK) {
        __syncthreads();
        for (int c = tid; c < CT_BM * CT_SBK; c += CT_THREADS) {
            int r = c / CT_SBK, kk = c - r * CT_SBK;
            int k = k0 + kk;
            As[kk * CT_SLD + r] = (r < rows_a && k < K) ? T::ld(A + r * lda + k) : 0.0f;
            Bs[kk * CT_SLD + r] = (r < rows_b && k < K) ? T::ld(B + r * ldb + k) : 0.0f;
        }
        __syncthreads();
#pragma unroll 4
        for (int kk = 0; kk < CT_SBK; ++kk) {
            float a[8], b[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) a[i] = As[kk * CT_SLD + ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 8; ++j) b[j] = Bs[kk * CT_SLD + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
        }
    }
    __syncthreads();
}

// Runs the engine for the tile and hands every element to emit(row, col, sims).
template <class T, bool MMA, int BK>
struct CtTile;

template <class T, int BK>
struct CtTile<T, true, BK> {
    template <class F>
    static __device__ __forceinline__ void run(const unsigned short* A, long long lda, int rows_a,
                                               const unsigned short* B, long long ldb,
                                               int rows_b, int K, unsigned char* smem, F emit) {
        float acc[4][4][4];
        ct_tile_mma<T, BK>(acc, A, lda, rows_a, B, ldb, rows_b, K, (unsigned short*)smem);
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, tig = lane & 3;
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    emit(wm * 64 + mt * 16 + g + (e >> 1) * 8, wn * 32 + nt * 8 + tig * 2 + (e & 1),
                         acc[mt][nt][e]);
    }
};

template <class T, int BK>
struct CtTile<T, false, BK> {
    template <class F>
    static __device__ __forceinline__ void run(const typename T::raw* A, long long lda,
                                               int rows_a, const typename T::raw* B,
                                               long long ldb, int rows_b, int K,
                                               unsigned char* smem, F emit) {
        float acc[8][8];
        ct_tile_simt<T>(acc, A, lda, rows_a, B, ldb, rows_b, K, (float*)smem);
        const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) emit(ty + 16 * i, tx + 16 * j, acc[i][j]);
    }
};

// ------------------------------------------------------------------------------ forward

// (max, sum of e^{v - max}) over a thread's 8 values (-inf: masked) and the lanes that differ
// from it in the xor bits FIRST .. LAST / 2 (shuffles); (-inf, 0) when every value is masked.
template <int FIRST, int LAST>
__device__ __forceinline__ float2 ct_lane_stats(const float (&v)[8]) {
    const float ninf = ct_neg_inf();
    float mx = ninf;
#pragma unroll
    for (int i = 0; i < 4; ++i) mx = fmaxf(mx, fmaxf(v[2 * i], v[2 * i + 1]));
#pragma unroll
    for (int o = FIRST; o < LAST; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.0f;
    if (mx != ninf) {
#pragma unroll
        for (int i = 0; i < 8; ++i) sum += v[i] == ninf ? 0.0f : __expf(v[i] - mx);
    }
#pragma unroll
    for (int o = FIRST; o < LAST; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    return make_float2(mx, sum);
}

// The tensor-core forward's statistics straight from the accumulators, without the logits
// tile in shared memory. Thread (warp w = 4 wm + wn, lane = 4 g + tig) holds rows
// wm * 64 + mt * 16 + g + 8 h and columns wn * 32 + nt * 8 + 2 tig + l (mt, nt < 4; h, l < 2).
// Rows: max and sum of e^{z - max} over the thread's 8 columns, then over the 4 lanes of a
// row (shuffles), giving one partial per row and column warp (4 per row); columns: over the
// thread's 8 rows, then the 8 lanes of a column, one partial per row warp (2 per column). The
// partials meet in shared memory and are merged into row_part / col_part (already offset to
// this block's tile row / column). Diagonal tiles also write diag.
template <class T, int BK>
__device__ __forceinline__ void ct_fwd_stats_mma(const unsigned short* A, long long lda,
                                                 const unsigned short* B, long long ldb, int N,
                                                 int D, int i0, int j0, bool diagonal,
                                                 float scale, unsigned char* smem,
                                                 float2* __restrict__ row_part,
                                                 float2* __restrict__ col_part,
                                                 float* __restrict__ diag) {
    float acc[4][4][4];
    ct_tile_mma<T, BK>(acc, A, lda, N - i0, B, ldb, N - j0, D, (unsigned short*)smem);
    // ct_tile_mma ends with a barrier: its pipeline buffers are free again.
    float2* rstat = (float2*)smem;       // [4][BM]: per column warp
    float2* cstat = rstat + 4 * CT_BM;   // [2][BN]: per row warp
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, tig = lane & 3;
    const float ninf = ct_neg_inf();

    // Scale and mask: z = -inf outside the N x N matrix.
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = wm * 64 + mt * 16 + g + (e >> 1) * 8;
                const int c = wn * 32 + nt * 8 + tig * 2 + (e & 1);
                const float z = acc[mt][nt][e] * scale;
                acc[mt][nt][e] = (i0 + r < N && j0 + c < N) ? z : ninf;
                if (diagonal && r == c && i0 + r < N) diag[i0 + r] = z;
            }

    // Rows: lanes 4 g .. 4 g + 3 share a row (shuffles over xor 1, 2).
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float v[8];
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                v[2 * nt] = acc[mt][nt][2 * h];
                v[2 * nt + 1] = acc[mt][nt][2 * h + 1];
            }
            const float2 st = ct_lane_stats<1, 4>(v);
            if (tig == 0) rstat[wn * CT_BM + wm * 64 + mt * 16 + g + h * 8] = st;
        }

    // Columns: lanes tig, tig + 4, .. share a column (shuffles over xor 4, 8, 16).
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int l = 0; l < 2; ++l) {
            float v[8];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) {
                v[2 * mt] = acc[mt][nt][l];
                v[2 * mt + 1] = acc[mt][nt][2 + l];
            }
            const float2 st = ct_lane_stats<4, 32>(v);
            if (g == 0) cstat[wm * CT_BN + wn * 32 + nt * 8 + tig * 2 + l] = st;
        }
    __syncthreads();

    if (tid < CT_BM) {
        if (i0 + tid < N) {
            float m = ninf, l = 0.0f;
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                const float2 p = rstat[w * CT_BM + tid];
                ct_merge(m, l, p.x, p.y);
            }
            row_part[i0 + tid] = make_float2(m, l);
        }
    } else {
        const int c = tid - CT_BM;
        if (j0 + c < N) {
            float m = ninf, l = 0.0f;
#pragma unroll
            for (int w = 0; w < 2; ++w) {
                const float2 p = cstat[w * CT_BN + c];
                ct_merge(m, l, p.x, p.y);
            }
            col_part[j0 + c] = make_float2(m, l);
        }
    }
}

template <class T, bool MMA, int BK>
__device__ __forceinline__ void ct_fwd(const typename T::raw* __restrict__ img,
                                       const typename T::raw* __restrict__ txt, int N, int D,
                                       long long lda, long long ldb,
                                       const float* __restrict__ scale_p,
                                       float2* __restrict__ row_part, float2* __restrict__ col_part,
                                       float* __restrict__ diag) {
    extern __shared__ __align__(16) unsigned char ct_smem[];
    const int n_t = (N + CT_BM - 1) / CT_BM;
    const int ti = blockIdx.x / n_t, tj = blockIdx.x - ti * n_t;
    const int i0 = ti * CT_BM, j0 = tj * CT_BN;
    const float scale = *scale_p;
    float* Ss = (float*)ct_smem;             // [BM][LDS] logits, after the engine
    float* cstat = Ss + CT_BM * CT_LDS;      // [2][BN] max, [2][BN] sum

    if constexpr (MMA) {
        ct_fwd_stats_mma<T, BK>(img + (long long)i0 * lda, lda, txt + (long long)j0 * ldb, ldb, N,
                                D, i0, j0, ti == tj, scale, ct_smem, row_part + (long long)tj * N,
                                col_part + (long long)ti * N, diag);
    } else {
        CtTile<T, MMA, BK>::run(img + (long long)i0 * lda, lda, N - i0,
                                txt + (long long)j0 * ldb, ldb, N - j0, D, ct_smem,
                                [&](int r, int c, float v) { Ss[r * CT_LDS + c] = v * scale; });
        __syncthreads();

        const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
        // Row statistics: warp w takes rows 16 w .. 16 w + 15.
        for (int rr = 0; rr < 16; ++rr) {
            const int r = warp * 16 + rr;
            float v[4];
            float mx = ct_neg_inf();
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                int c = lane + 32 * u;
                v[u] = j0 + c < N ? Ss[r * CT_LDS + c] : ct_neg_inf();
                mx = fmaxf(mx, v[u]);
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            float s = 0.0f;
#pragma unroll
            for (int u = 0; u < 4; ++u) s += v[u] == ct_neg_inf() ? 0.0f : __expf(v[u] - mx);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0 && i0 + r < N) row_part[(long long)tj * N + i0 + r] = make_float2(mx, s);
        }
        // Column statistics: thread pairs (c, half) over 64 rows each.
        {
            const int c = tid & (CT_BN - 1), half = tid >> 7;
            const int r_lo = half * 64;
            const int r_hi = min(r_lo + 64, N - i0);
            float mx = ct_neg_inf();
            for (int r = r_lo; r < r_hi; ++r) mx = fmaxf(mx, Ss[r * CT_LDS + c]);
            float s = 0.0f;
            if (mx != ct_neg_inf())
                for (int r = r_lo; r < r_hi; ++r) s += __expf(Ss[r * CT_LDS + c] - mx);
            cstat[half * CT_BN + c] = mx;
            cstat[2 * CT_BN + half * CT_BN + c] = s;
        }
        __syncthreads();
        if (tid < CT_BN && j0 + tid < N) {
            float m = cstat[tid], l = cstat[2 * CT_BN + tid];
            ct_merge(m, l, cstat[CT_BN + tid], cstat[3 * CT_BN + tid]);
            col_part[(long long)ti * N + j0 + tid] = make_float2(m, l);
        }
        if (ti == tj && tid < CT_BM && i0 + tid < N) diag[i0 + tid] = Ss[tid * CT_LDS + tid];
    }
}

extern "C" __global__ void __launch_bounds__(256)
    contrastive_fwd_merge(const float2* row_part, const float2* col_part, int n_t, int N,
                          float* lse_rows, float* lse_cols) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    float m = ct_neg_inf(), l = 0.0f;
    for (int t = 0; t < n_t; ++t) {
        float2 p = row_part[(long long)t * N + i];
        ct_merge(m, l, p.x, p.y);
    }
    lse_rows[i] = m + __logf(l);
    m = ct_neg_inf();
    l = 0.0f;
    for (int t = 0; t < n_t; ++t) {
        float2 p = col_part[(long long)t * N + i];
        ct_merge(m, l, p.x, p.y);
    }
    lse_cols[i] = m + __logf(l);
}

// Sums `n` doubles-worth of per-thread values over one 1024-thread block; returns on thread 0.
__device__ __forceinline__ double ct_block_sum_f64(double v) {
    __shared__ double red[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    double t = 0.0;
    if (threadIdx.x == 0)
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += red[w];
    return t;
}

extern "C" __global__ void __launch_bounds__(1024)
    contrastive_fwd_loss(const float* lse_rows, const float* lse_cols, const float* diag, int N,
                         float* loss) {
    double s = 0.0;
    for (int i = threadIdx.x; i < N; i += blockDim.x)
        s += ((double)lse_rows[i] - diag[i]) + ((double)lse_cols[i] - diag[i]);
    double t = ct_block_sum_f64(s);
    if (threadIdx.x == 0) loss[0] = (float)(t / (2.0 * (double)N));
}

// ------------------------------------------------------------------------------ backward

template <class T, bool MMA, int BK>
__device__ __forceinline__ void ct_bwd(const typename T::raw* __restrict__ img,
                                       const typename T::raw* __restrict__ txt, int N, int D,
                                       long long lda, long long ldb,
                                       const float* __restrict__ scale_p,
                                       const float* __restrict__ dloss_p,
                                       const float* __restrict__ lse_rows,
                                       const float* __restrict__ lse_cols, int r0, int rows,
                                       typename T::raw* __restrict__ strip,
                                       float* __restrict__ dscale_part) {
    extern __shared__ __align__(16) unsigned char ct_smem[];
    typedef typename T::raw raw;
    const int n_t = (N + CT_BN - 1) / CT_BN;
    const int tm = blockIdx.x / n_t, tj = blockIdx.x - tm * n_t;
    const int i0 = r0 + tm * CT_BM, j0 = tj * CT_BN;
    const int i_end = min(r0 + rows, N);  // rows of this strip
    const float scale = *scale_p;
    const float coef = *dloss_p * (0.5f / (float)N);
    constexpr int LDT = CT_BN + 16 / (int)sizeof(raw);  // staged tile row, padded by 16 bytes
    raw* Ts = (raw*)ct_smem;                             // [BM][LDT], after the engine

    float dsc = 0.0f;
    CtTile<T, MMA, BK>::run(img + (long long)i0 * lda, lda, i_end - i0, txt + (long long)j0 * ldb,
                            ldb, N - j0, D, ct_smem, [&](int r, int c, float sims) {
                            const int i = i0 + r, j = j0 + c;
                            float w = 0.0f;
                            if (i < i_end && j < N) {
                                float z = sims * scale;
                                w = __expf(z - lse_rows[i]) + __expf(z - lse_cols[j]);
                                if (i == j) w -= 2.0f;
                                dsc += w * sims;
                            }
                            Ts[r * LDT + c] = T::cvt(w);
                        });
    __syncthreads();

    // Coalesced stores of the staged tile: 16 bytes per thread where rows allow it.
    const int tid = threadIdx.x;
    constexpr int VEC = 16 / (int)sizeof(raw);
    const int n_rows = min(CT_BM, i_end - i0), n_cols = min(CT_BN, N - j0);
    const bool vec_ok = (N % VEC) == 0;  // every strip row then starts 16-byte aligned
    if (vec_ok) {
        const int cpr = CT_BN / VEC;  // chunks per tile row
        for (int c = tid; c < n_rows * cpr; c += CT_THREADS) {
            int r = c / cpr, cc = (c - r * cpr) * VEC;
            if (cc < n_cols)  // n_cols is a multiple of VEC here
                *(uint4*)(strip + (long long)(i0 - r0 + r) * N + j0 + cc) =
                    *(const uint4*)(Ts + r * LDT + cc);
        }
    } else {
        for (int c = tid; c < n_rows * CT_BN; c += CT_THREADS) {
            int r = c / CT_BN, cc = c - r * CT_BN;
            if (cc < n_cols) strip[(long long)(i0 - r0 + r) * N + j0 + cc] = Ts[r * LDT + cc];
        }
    }

    // d_scale partial for this block, reduced in a fixed order.
    __shared__ float red[CT_THREADS / 32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) dsc += __shfl_xor_sync(0xffffffffu, dsc, o);
    if ((tid & 31) == 0) red[tid >> 5] = dsc;
    __syncthreads();
    if (tid == 0) {
        float t = 0.0f;
        for (int w = 0; w < CT_THREADS / 32; ++w) t += red[w];
        dscale_part[(long long)(i0 / CT_BM) * n_t + tj] = t * coef;
    }
}

extern "C" __global__ void __launch_bounds__(1024)
    contrastive_bwd_dscale(const float* part, long long n, float* d_scale) {
    double s = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) s += (double)part[i];
    double t = ct_block_sum_f64(s);
    if (threadIdx.x == 0) d_scale[0] = (float)t;
}

template <class T>
__device__ __forceinline__ void ct_accum(float* __restrict__ acc,
                                         const typename T::raw* __restrict__ part, long long n,
                                         int first) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        acc[i] = (first ? 0.0f : acc[i]) + T::ld(part + i);
}

// cs = scale * d_loss / (2N), the factor the strip's weights leave out.
__device__ __forceinline__ float ct_cs(const float* scale_p, const float* dloss_p, int N) {
    return *scale_p * (*dloss_p * (0.5f / (float)N));
}

template <class T>
__device__ __forceinline__ void ct_scale(const typename T::raw* __restrict__ part,
                                         const float* __restrict__ scale_p,
                                         const float* __restrict__ dloss_p, int N,
                                         typename T::raw* __restrict__ out, long long n) {
    const float cs = ct_cs(scale_p, dloss_p, N);
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        T::st(out + i, cs * T::ld(part + i));
}

template <class T>
__device__ __forceinline__ void ct_cast_scaled(const float* __restrict__ acc,
                                               const float* __restrict__ scale_p,
                                               const float* __restrict__ dloss_p, int N,
                                               typename T::raw* __restrict__ out, long long n) {
    const float cs = ct_cs(scale_p, dloss_p, N);
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        T::st(out + i, cs * acc[i]);
}

// ------------------------------------------------------------------------------ entry points

// contrastive_{fwd,bwd}_mma_<dt>: K steps of 64; contrastive_{fwd,bwd}_mma32_<dt>: K steps of
// 32, for devices whose blocks cannot have CT_PIPE_BYTES(64) of shared memory.
#define CT_TILE_KERNELS(KIND, SUF, T, MMA, BK)                                                  \
    extern "C" __global__ void __launch_bounds__(CT_THREADS) contrastive_fwd_##KIND##_##SUF(    \
        const T::raw* img, const T::raw* txt, int N, int D, long long lda, long long ldb,       \
        const float* scale, float2* row_part, float2* col_part, float* diag) {                 \
        ct_fwd<T, MMA, BK>(img, txt, N, D, lda, ldb, scale, row_part, col_part, diag);          \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(CT_THREADS) contrastive_bwd_##KIND##_##SUF(    \
        const T::raw* img, const T::raw* txt, int N, int D, long long lda, long long ldb,       \
        const float* scale, const float* d_loss, const float* lse_rows, const float* lse_cols, \
        int r0, int rows, T::raw* strip, float* dscale_part) {                                 \
        ct_bwd<T, MMA, BK>(img, txt, N, D, lda, ldb, scale, d_loss, lse_rows, lse_cols, r0,     \
                           rows, strip, dscale_part);                                           \
    }

CT_TILE_KERNELS(mma, f16, CtF16, true, 64)
CT_TILE_KERNELS(mma, bf16, CtBF16, true, 64)
CT_TILE_KERNELS(mma32, f16, CtF16, true, 32)
CT_TILE_KERNELS(mma32, bf16, CtBF16, true, 32)
CT_TILE_KERNELS(simt, f32, CtF32, false, 32)
CT_TILE_KERNELS(simt, f16, CtF16, false, 32)
CT_TILE_KERNELS(simt, bf16, CtBF16, false, 32)

#define CT_ELEMENTWISE(SUF, T)                                                                 \
    extern "C" __global__ void contrastive_scale_##SUF(const T::raw* part, const float* scale, \
                                                       const float* d_loss, int N, T::raw* out, \
                                                       long long n) {                          \
        ct_scale<T>(part, scale, d_loss, N, out, n);                                           \
    }                                                                                          \
    extern "C" __global__ void contrastive_accum_##SUF(float* acc, const T::raw* part,         \
                                                       long long n, int first) {               \
        ct_accum<T>(acc, part, n, first);                                                      \
    }                                                                                          \
    extern "C" __global__ void contrastive_cast_scaled_##SUF(                                  \
        const float* acc, const float* scale, const float* d_loss, int N, T::raw* out,         \
        long long n) {                                                                         \
        ct_cast_scaled<T>(acc, scale, d_loss, N, out, n);                                      \
    }

CT_ELEMENTWISE(f32, CtF32)
CT_ELEMENTWISE(f16, CtF16)
CT_ELEMENTWISE(bf16, CtBF16)

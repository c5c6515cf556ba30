// patch_embed.cu: patch embedding, a convolution whose stride equals its kernel (P), as one
// GEMM whose A tiles are gathered from the NCHW image on the fly (no im2col buffer).
//
// What it computes (as glimpse_tensor::compose::patch_embed):
//   out[b, cls + p, e] = sum_{c, ky, kx} img[b, c, py P + ky, px P + kx] w[e, c, ky, kx]
//                        + bias[e] + pos[cls + p, e]                  (p = py * gw + px)
//   out[b, 0, e]       = class[e] + pos[0, e]                         (when a class row is given)
// with bias, class and pos optional (null). Pixels past the last full patch are never read.
//
// Shapes: img is (B, C, H, W) read through its strides (sb, sc, sh; unit stride along W);
// w is (E, K) contiguous with K = C P P (the (E, C, P, P) weight flattened); bias, class are
// (E); pos is (rows, E) contiguous with rows = [1 +] gh gw; out is (B, rows, E) contiguous.
// The GEMM: M = B gh gw patch rows (m = (b, py, px)), N = E, K = C P P (k = (c, ky, kx)).
//
// Kernels and launch shapes (256 threads, 1-D grid of m_tiles * n_tiles blocks of 128 x 128
// outputs, block = (bid / n_tiles, bid % n_tiles)):
//   patch_embed_mma_{f16,bf16}: tensor cores (mma.sync.m16n8k16, f32 accumulators), 8 warps as
//       2 x 4 (warp tile 64 x 32), K in steps of 32 through a 4-stage cp.async pipeline:
//       every 16-byte chunk of A is 8 consecutive pixels of one image row, which needs
//       P % 8 == 0 and 16-byte aligned rows (sb, sc, sh and the offset multiples of 8); the
//       host checks this. Fragments by ldmatrix from rows padded to 40 halves.
//   patch_embed_mma64_{f16,bf16}: the same with K steps of 64 through a 3-stage pipeline
//       (rows of 72 halves): half the barriers. A candidate (the host uses it only when
//       asked to, until it has run on a GPU), for devices where two blocks of
//       PE_SMEM64_BYTES (110592) fit a multiprocessor.
//   patch_embed_simt_{f32,f16,bf16}: CUDA cores, any P and strides: A and B tiles of 16 k
//       gathered element by element into shared memory (f32), 8 x 8 outputs per thread.
//   The epilogue adds bias and position rows to the f32 accumulators, rounds once (pairs of
//   adjacent outputs stored together when E is even), and the thread owning the first patch
//   of an image also writes that image's class row.
//   Dynamic shared memory: PE_SMEM_BYTES (81920; opt-in above 48 KB) for mma and simt,
//   PE_SMEM64_BYTES for mma64.
//
// No CUDA headers: 16-bit types travel as unsigned short and convert through inline PTX.

#define PE_BM 128
#define PE_BN 128
#define PE_THREADS 256
#define PE_SBK 16
#define PE_SLD (PE_BM + 4)
// The tensor-core pipeline: STAGES tiles of BM + BN rows of BK + 8 halves. K steps of 32 in 4
// stages (mma; simt fits in the same), or of 64 in 3 (the candidate patch_embed_mma64_*).
#define PE_PIPE_BYTES(BK, STAGES) ((STAGES) * (PE_BM + PE_BN) * ((BK) + 8) * 2)
#define PE_SMEM_BYTES PE_PIPE_BYTES(32, 4)
#define PE_SMEM64_BYTES PE_PIPE_BYTES(64, 3)

// ------------------------------------------------------------------------------ dtypes

struct PeF32 {
    typedef float raw;
    static __device__ __forceinline__ float ld(const float* p) { return *p; }
    static __device__ __forceinline__ void st(float* p, float v) { *p = v; }
    // Two adjacent elements; p is 8-byte aligned.
    static __device__ __forceinline__ void st2(float* p, float v0, float v1) {
        *(float2*)p = make_float2(v0, v1);
    }
};

struct PeF16 {
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
    // Two adjacent elements; p is 4-byte aligned.
    static __device__ __forceinline__ void st2(unsigned short* p, float v0, float v1) {
        unsigned r;
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(v1), "f"(v0));
        *(unsigned*)p = r;
    }
    static __device__ __forceinline__ void mma(float* c, const unsigned* a, unsigned b0,
                                               unsigned b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

struct PeBF16 {
    typedef unsigned short raw;
    static __device__ __forceinline__ float ld(const unsigned short* p) {
        return __uint_as_float(((unsigned int)*p) << 16);
    }
    static __device__ __forceinline__ void st(unsigned short* p, float v) {
        unsigned short h;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
        *p = h;
    }
    static __device__ __forceinline__ void st2(unsigned short* p, float v0, float v1) {
        unsigned r;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(v1), "f"(v0));
        *(unsigned*)p = r;
    }
    static __device__ __forceinline__ void mma(float* c, const unsigned* a, unsigned b0,
                                               unsigned b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

// ------------------------------------------------------------------------------ PTX helpers

__device__ __forceinline__ unsigned pe_smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void pe_cp16(unsigned dst, const void* src, bool valid) {
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n)
                 : "memory");
}

__device__ __forceinline__ void pe_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void pe_cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ void pe_ldsm_x4(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

// ------------------------------------------------------------------------------ problem

template <class T>
struct PeArgs {
    const typename T::raw* img;
    long long sb, sc, sh;
    const typename T::raw* w;
    const typename T::raw* bias;
    const typename T::raw* cls;
    const typename T::raw* pos;
    typename T::raw* out;
    int C, P, gw, E, K, npatch, rows;  // rows = npatch + has_cls
    long long M;
    int has_cls;
};

// Storage index of img[b, c, py P + ky, px P + kx] for patch row m and reduction index k.
template <class T>
__device__ __forceinline__ long long pe_row_base(const PeArgs<T>& a, long long m) {
    long long b = m / a.npatch;
    int p = (int)(m - b * a.npatch);
    int py = p / a.gw, px = p - py * a.gw;
    return b * a.sb + (long long)py * a.P * a.sh + (long long)px * a.P;
}

template <class T>
__device__ __forceinline__ long long pe_k_offset(const PeArgs<T>& a, int k) {
    const int pp = a.P * a.P;
    int c = k / pp, rem = k - c * pp;
    int ky = rem / a.P, kx = rem - ky * a.P;
    return (long long)c * a.sc + (long long)ky * a.sh + kx;
}

// The epilogue for output element (m, e) of the GEMM.
template <class T>
__device__ __forceinline__ void pe_emit(const PeArgs<T>& a, long long m, int e, float v) {
    if (m >= a.M || e >= a.E) return;
    long long b = m / a.npatch;
    int p = (int)(m - b * a.npatch);
    int row = a.has_cls + p;
    if (a.bias) v += T::ld(a.bias + e);
    if (a.pos) v += T::ld(a.pos + (long long)row * a.E + e);
    T::st(a.out + (b * a.rows + row) * a.E + e, v);
    if (a.has_cls && p == 0) {
        float c = T::ld(a.cls + e);
        if (a.pos) c += T::ld(a.pos + e);
        T::st(a.out + b * a.rows * a.E + e, c);
    }
}

// ------------------------------------------------------------------------------ tensor cores

// BK is the K step and STAGES the depth of the cp.async pipeline: 32 and 4 (rows of 40
// halves, PE_SMEM_BYTES), or 64 and 3 (rows of 72, PE_SMEM64_BYTES: half the barriers per
// product, where two such blocks fit a multiprocessor).
template <class T, int BK, int STAGES>
__device__ __forceinline__ void pe_mma(const PeArgs<T>& a) {
    constexpr int LDK = BK + 8;  // row pitch in halves: ldmatrix rows fall in distinct banks
    constexpr int CH = BK / 8;   // 16-byte chunks per tile row and K step (4 or 8)
    constexpr int CH_LOG2 = CH == 8 ? 3 : 2;
    static_assert(CH == 4 || CH == 8, "K steps of 32 or 64");
    constexpr int RP = PE_THREADS / CH;  // tile rows one pass of the block's threads covers
    constexpr int NU = PE_BM / RP;       // passes per operand tile
    extern __shared__ __align__(16) unsigned char pe_smem[];
    unsigned short* As = (unsigned short*)pe_smem;     // [STAGES][BM][LDK]
    unsigned short* Bs = As + STAGES * PE_BM * LDK;     // [STAGES][BN][LDK]
    static_assert(STAGES * (PE_BM + PE_BN) * LDK * 2 == PE_PIPE_BYTES(BK, STAGES),
                  "the layout above is PE_PIPE_BYTES");
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, tig = lane & 3;
    const int n_tiles = (a.E + PE_BN - 1) / PE_BN;
    const long long m0 = (long long)(blockIdx.x / n_tiles) * PE_BM;
    const int n0 = (int)(blockIdx.x % n_tiles) * PE_BN;

    // This thread's NU chunks per operand: tile rows r_u = (tid + 256 u) / CH, chunk tid % CH.
    const int cc = tid & (CH - 1);
    long long a_base[NU];
    bool a_ok[NU], b_ok[NU];
#pragma unroll
    for (int u = 0; u < NU; ++u) {
        int r = (tid + u * PE_THREADS) >> CH_LOG2;
        long long m = m0 + r;
        a_ok[u] = m < a.M;
        a_base[u] = a_ok[u] ? pe_row_base(a, m) : 0;
        b_ok[u] = n0 + r < a.E;
    }
    auto load = [&](int stage, int k0) {
        unsigned short* ad = As + stage * PE_BM * LDK;
        unsigned short* bd = Bs + stage * PE_BN * LDK;
        const int k = k0 + cc * 8;
        const bool k_ok = k < a.K;
        const long long koff = k_ok ? pe_k_offset(a, k) : 0;
#pragma unroll
        for (int u = 0; u < NU; ++u) {
            int r = (tid + u * PE_THREADS) >> CH_LOG2;
            bool oka = a_ok[u] && k_ok, okb = b_ok[u] && k_ok;
            pe_cp16(pe_smem_addr(ad + r * LDK + cc * 8),
                    (const unsigned short*)a.img + (oka ? a_base[u] + koff : 0), oka);
            pe_cp16(pe_smem_addr(bd + r * LDK + cc * 8),
                    (const unsigned short*)a.w + (okb ? (long long)(n0 + r) * a.K + k : 0), okb);
        }
    };

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
    const int nk = (a.K + BK - 1) / BK;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nk) load(s, s * BK);
        pe_cp_commit();
    }
    for (int kt = 0; kt < nk; ++kt) {
        pe_cp_wait<STAGES - 2>();
        __syncthreads();
        {
            int pf = kt + STAGES - 1;  // its stage was last read in iteration kt - 1
            if (pf < nk) load(pf % STAGES, pf * BK);
            pe_cp_commit();
        }
        const unsigned short* At = As + (kt % STAGES) * PE_BM * LDK;
        const unsigned short* Bt = Bs + (kt % STAGES) * PE_BN * LDK;
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks) {
            unsigned af[4][4], bfr[4][2];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) {
                int row = wm * 64 + mt * 16 + (lane & 15);
                int col = ks * 16 + (lane >> 4) * 8;
                pe_ldsm_x4(af[mt], pe_smem_addr(At + row * LDK + col));
            }
#pragma unroll
            for (int np = 0; np < 2; ++np) {
                unsigned x[4];
                int row = wn * 32 + np * 16 + ((lane >> 4) & 1) * 8 + (lane & 7);
                int col = ks * 16 + ((lane >> 3) & 1) * 8;
                pe_ldsm_x4(x, pe_smem_addr(Bt + row * LDK + col));
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
    pe_cp_wait<0>();

    // Epilogue: the row bookkeeping once per accumulator row (8 per thread), then pairs of
    // adjacent columns (one 2-element store when E is even, so the pair is aligned).
    const bool pairs = (a.E & 1) == 0;
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const long long m = m0 + wm * 64 + mt * 16 + g + hf * 8;
            if (m >= a.M) continue;
            const long long b = m / a.npatch;
            const int p = (int)(m - b * a.npatch);
            const int row = a.has_cls + p;
            typename T::raw* orow = a.out + (b * a.rows + row) * a.E;
            const typename T::raw* prow = a.pos ? a.pos + (long long)row * a.E : 0;
            typename T::raw* crow = (a.has_cls && p == 0) ? a.out + b * a.rows * a.E : 0;
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                const int col = n0 + wn * 32 + nt * 8 + tig * 2;
                float v[2] = {acc[mt][nt][2 * hf], acc[mt][nt][2 * hf + 1]};
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int e = col + j;
                    if (e < a.E) {
                        if (a.bias) v[j] += T::ld(a.bias + e);
                        if (prow) v[j] += T::ld(prow + e);
                    }
                }
                if (pairs && col + 1 < a.E) {
                    T::st2(orow + col, v[0], v[1]);
                } else {
#pragma unroll
                    for (int j = 0; j < 2; ++j)
                        if (col + j < a.E) T::st(orow + col + j, v[j]);
                }
                if (crow) {
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const int e = col + j;
                        if (e < a.E) {
                            float c = T::ld(a.cls + e);
                            if (prow) c += T::ld(a.pos + e);
                            T::st(crow + e, c);
                        }
                    }
                }
            }
        }
}

// ------------------------------------------------------------------------------ CUDA cores

template <class T>
__device__ __forceinline__ void pe_simt(const PeArgs<T>& a) {
    extern __shared__ __align__(16) unsigned char pe_smem[];
    float* As = (float*)pe_smem;       // [SBK][SLD]
    float* Bs = As + PE_SBK * PE_SLD;  // [SBK][SLD]
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int n_tiles = (a.E + PE_BN - 1) / PE_BN;
    const long long m0 = (long long)(blockIdx.x / n_tiles) * PE_BM;
    const int n0 = (int)(blockIdx.x % n_tiles) * PE_BN;

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < a.K; k0 += PE_SBK) {
        __syncthreads();
        for (int c = tid; c < PE_BM * PE_SBK; c += PE_THREADS) {
            int r = c / PE_SBK, kk = c - r * PE_SBK;
            int k = k0 + kk;
            long long m = m0 + r;
            float va = 0.0f, vb = 0.0f;
            if (k < a.K) {
                if (m < a.M) va = T::ld(a.img + pe_row_base(a, m) + pe_k_offset(a, k));
                if (n0 + r < a.E) vb = T::ld(a.w + (long long)(n0 + r) * a.K + k);
            }
            As[kk * PE_SLD + r] = va;
            Bs[kk * PE_SLD + r] = vb;
        }
        __syncthreads();
#pragma unroll 4
        for (int kk = 0; kk < PE_SBK; ++kk) {
            float x[8], y[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) x[i] = As[kk * PE_SLD + ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 8; ++j) y[j] = Bs[kk * PE_SLD + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] += x[i] * y[j];
        }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) pe_emit(a, m0 + ty + 16 * i, n0 + tx + 16 * j, acc[i][j]);
}

// ------------------------------------------------------------------------------ entry points

#define PE_KERNEL(KIND, SUF, T, BODY)                                                          \
    extern "C" __global__ void __launch_bounds__(PE_THREADS) patch_embed_##KIND##_##SUF(        \
        const T::raw* img, long long sb, long long sc, long long sh, const T::raw* w,          \
        const T::raw* bias, const T::raw* cls, const T::raw* pos, T::raw* out, int C, int P,   \
        int gw, int E, int npatch, long long M, int has_cls) {                                 \
        PeArgs<T> a;                                                                           \
        a.img = img;                                                                           \
        a.sb = sb;                                                                             \
        a.sc = sc;                                                                             \
        a.sh = sh;                                                                             \
        a.w = w;                                                                               \
        a.bias = bias;                                                                         \
        a.cls = cls;                                                                           \
        a.pos = pos;                                                                           \
        a.out = out;                                                                           \
        a.C = C;                                                                               \
        a.P = P;                                                                               \
        a.gw = gw;                                                                             \
        a.E = E;                                                                               \
        a.K = C * P * P;                                                                       \
        a.npatch = npatch;                                                                     \
        a.rows = npatch + has_cls;                                                             \
        a.M = M;                                                                               \
        a.has_cls = has_cls;                                                                   \
        BODY(a);                                                                               \
    }

PE_KERNEL(mma, f16, PeF16, (pe_mma<PeF16, 32, 4>))
PE_KERNEL(mma, bf16, PeBF16, (pe_mma<PeBF16, 32, 4>))
PE_KERNEL(mma64, f16, PeF16, (pe_mma<PeF16, 64, 3>))
PE_KERNEL(mma64, bf16, PeBF16, (pe_mma<PeBF16, 64, 3>))
PE_KERNEL(simt, f32, PeF32, pe_simt<PeF32>)
PE_KERNEL(simt, f16, PeF16, pe_simt<PeF16>)
PE_KERNEL(simt, bf16, PeBF16, pe_simt<PeBF16>)

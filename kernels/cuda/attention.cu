// attention.cu: fused scaled dot-product attention, forward and backward (FlashAttention-2
// style: no N x N buffer anywhere).
//
// What it computes: s_ij = scale * q_i . k_j; query i sees key j iff the key is kept by the
// key-padding mask (nonzero) and, when causal, j <= i + Nk - Nq (bottom-right aligned).
// lse_i = ln sum_{visible j} e^{s_ij}; out_i = sum_j e^{s_ij - lse_i} v_j. A query that sees
// no key gets out_i = 0 and lse_i = -inf. The backward recomputes P = e^{S - lse} and returns
// dq = scale dS k, dk = scale dS^T q, dv = P^T dO with dS = P * (dO v^T - delta),
// delta_i = dO_i . O_i.
//
// Shapes: q is (B, H, Nq, D), k is (B, H, Nk, D), v is (B, H, Nk, Dv), each read through its
// (batch, head, row) strides in elements with the last dimension contiguous (permuted
// (B, N, H, D) projections need no copy); key_mask is (B, Nk) u32 contiguous or null;
// out is (B, H, Nq, Dv) contiguous in the input dtype, lse (B, H, Nq) f32 contiguous.
// Backward: o and d_out are (B, H, Nq, Dv) strided like q; dq (B, H, Nq, D), dk (B, H, Nk, D),
// dv (B, H, Nk, Dv) contiguous; delta (B, H, Nq) f32 and dq_acc (B, H, Nq, D) f32 are scratch.
//
// Kernels and launch shapes (grid is 1-D, block index = (b * H + h) * tiles + tile):
//   attention_fwd_mma_d{32,64,80,128}_{f16,bf16}, attention_fwd_mma2_d..: tensor cores.
//       128 threads (4 warps), one block per BQ query rows of one (b, h): BQ = 64 (mma, each
//       warp owns 16 rows) or 128 (mma2, each warp owns two 16-row tiles, so every K/V
//       fragment read from shared memory feeds two multiplies). K/V tiles of BC keys (64; 32
//       for mma2 at D = 128, 64 in the candidate attention_fwd_mma2_k64_d128_*) are
//       double-buffered in shared memory with cp.async (16-byte
//       copies, zero-filled past Nk; the host guarantees 16-byte aligned rows: strides and
//       offsets multiples of 8 elements). Q fragments are loaded by ldmatrix, once when they
//       fit in registers (BQ * D <= 8192), else at every k-step; S = Q K^T and O += P V use
//       mma.sync.m16n8k16 (f32 accumulators; V fragments by ldmatrix.trans); the online softmax
//       runs in the log2 domain on the S accumulators, which are re-packed in registers as the
//       A operand of P V (P rounded to the input dtype, as FlashAttention-2). Needs D == Dv.
//       Dynamic shared memory: (BQ + 4 BC) * (D + 8) * 2 + 8 BC bytes (opt-in above 48 KB).
//   attention_fwd_simt_{f32,f16,bf16}: CUDA cores, any D, Dv <= 128. 128 threads, one block per
//       32 query rows; 4 threads per query row (each owning every 4th output column), key tiles
//       of 32 in shared memory (f32, rows padded by one word), the same online softmax.
//       Dynamic shared memory: (32 (D + 1) * 2 + 32 (Dv + 1) + 32 * 33 + 32) * 4 bytes.
//   attention_bwd_prep_{f32,f16,bf16}: one warp per query row (8 rows per 256-thread block):
//       delta = dO . O and zeroes that row of dq_acc.
//   attention_bwd_simt_{f32,f16,bf16}: CUDA cores (f32 and the shapes the mma kernel does not
//       take), any D, Dv <= 128. 128 threads, one block per 32 keys of one (b, h): 4 threads
//       per key own every 4th column of dk and dv in registers; the block walks the query
//       tiles of 32 that can see its keys, recomputes S and P from lse, builds dS in shared
//       memory and adds scale * dS K into dq_acc with f32 atomicAdd. dk and dv are written
//       once at the end.
//       Dynamic shared memory: (32 (2 D + 2 Dv + 4) + 2 * 32 * 33 + 96) * 4 bytes.
//   attention_bwd_mma_d{32,64,80,128}_{f16,bf16}: tensor cores, D == Dv. 128 threads (4 warps),
//       one block per 64 keys of one (b, h), walking the 64-row query tiles that can see them
//       (details at the kernel). Host guarantees 16-byte aligned rows of q, k, v, dout.
//       Dynamic shared memory: 4 * 64 * (D + 8) * 2 + 64 * 72 * 2 + 3 * 64 * 4 bytes.
//   attention_bwd_dq_{f32,f16,bf16}: dq = dq_acc converted to the dtype (grid-stride).
//
// No CUDA headers: 16-bit types travel as unsigned short and convert through inline PTX.

#define AT_LOG2E 1.4426950408889634f
#define AT_LN2 0.6931471805599453f

__device__ __forceinline__ float at_neg_inf() { return __int_as_float(0xff800000); }

// ------------------------------------------------------------------------------ dtypes

struct AtF32 {
    typedef float raw;
    static __device__ __forceinline__ float ld(const float* p) { return *p; }
    static __device__ __forceinline__ void st(float* p, float v) { *p = v; }
};

struct AtF16 {
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
    // Two floats as one register: `lo` in bits 0..15, `hi` in bits 16..31.
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        unsigned r;
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
    }
    static __device__ __forceinline__ void mma(float* c, const unsigned* a, unsigned b0,
                                               unsigned b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

struct AtBF16 {
    typedef unsigned short raw;
    static __device__ __forceinline__ float ld(const unsigned short* p) {
        return __uint_as_float(((unsigned int)*p) << 16);
    }
    static __device__ __forceinline__ void st(unsigned short* p, float v) {
        unsigned short h;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
        *p = h;
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        unsigned r;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
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

__device__ __forceinline__ unsigned at_smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// 16-byte global -> shared copy; copies zeros instead when `valid` is false (src not read).
__device__ __forceinline__ void at_cp16(unsigned dst, const void* src, bool valid) {
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n)
                 : "memory");
}

__device__ __forceinline__ void at_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void at_cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ void at_ldsm_x4(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

__device__ __forceinline__ void at_ldsm_x4_t(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

// Largest key index + 1 that any query in [q0, q0 + rows) can see.
__device__ __forceinline__ int at_kv_end(int causal, int q0, int rows, int Nq, int Nk) {
    if (!causal) return Nk;
    long long lim = (long long)q0 + rows + Nk - Nq;
    return lim < 0 ? 0 : (lim < Nk ? (int)lim : Nk);
}

// ------------------------------------------------------------------------------ forward, mma

#define AT_MMA_BC 64
#define AT_MMA_THREADS 128
// Keys per tile of the forward with MT row tiles per warp: 64, or 32 where 64 would spill
// (MT = 2 at D = 128).
#define AT_FWD_MMA_BC(D, MT) ((MT) == 2 && (D) >= 128 ? 32 : AT_MMA_BC)
// Dynamic shared memory of the tensor-core forward (the layout at the top of at_fwd_mma).
// The host launches with the same figure (fused.rs: attn_mma_smem); an NVRTC test compares
// the two.
#define AT_FWD_MMA_SMEM(D, BQ, BC) (((BQ) + 4 * (BC)) * ((D) + 8) * 2 + 2 * (BC) * 4)

// Rows r0 .. r0 + ROWS - 1 of two row-major operands with D columns, a and b (row strides
// as and bs), into the shared tiles ad and bd (rows of D + 8 halves) by 16-byte cp.async; rows
// at or past n are zero-filled and not read. The caller commits the group.
template <int D, int ROWS>
__device__ __forceinline__ void at_cp_rows2(int r0, int n, const unsigned short* a, long long as,
                                            unsigned short* ad, const unsigned short* b,
                                            long long bs, unsigned short* bd) {
    constexpr int LD = D + 8, DC = D / 8;
    for (int c = threadIdx.x; c < ROWS * DC; c += AT_MMA_THREADS) {
        int r = c / DC, cc = c - r * DC;
        bool ok = r0 + r < n;
        long long row = ok ? r0 + r : 0;
        at_cp16(at_smem_addr(ad + r * LD + cc * 8), a + row * as + cc * 8, ok);
        at_cp16(at_smem_addr(bd + r * LD + cc * 8), b + row * bs + cc * 8, ok);
    }
}

// MT is the number of 16-row tiles each warp owns (block rows BQ = 64 * MT). Two tiles per
// warp let every K and V fragment read from shared memory (ldmatrix) feed two mma.sync
// instead of one, halving the shared-memory traffic per multiply, which otherwise limits the
// kernel; one tile wastes less work when Nq is small. Q fragments stay in registers unless
// that would crowd the accumulators (MT * D > 128), in which case each k-step reloads them
// from shared memory. BC is the key tile: 64, or 32 where 64 would spill many registers
// (MT = 2 with D = 128). SKIP leaves out the multiplies and exponentials of padding rows and
// keys (see `np_lim` and `live`); without it they are computed and masked.
template <class T, int D, int MT, int BC, bool SKIP>
__device__ __forceinline__ void at_fwd_mma(
    const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,
    const unsigned short* __restrict__ v, const unsigned* __restrict__ key_mask,
    unsigned short* __restrict__ out, float* __restrict__ lse, int H, int Nq, int Nk,
    long long qsb, long long qsh, long long qsn, long long ksb, long long ksh, long long ksn,
    long long vsb, long long vsh, long long vsn, float scale_log2, int causal, int q_tiles) {
    constexpr int BQ = 64 * MT, LD = D + 8, DC = D / 8, NT = AT_MMA_THREADS;
    constexpr int KD = D / 16;  // k-steps of Q K^T, and pairs of 8-wide output tiles
    constexpr int NS = BC / 8;  // 8-wide score tiles per key tile
    constexpr bool QREG = MT * D <= 128;
    constexpr int QF = QREG ? MT * KD : 1;
    extern __shared__ __align__(16) unsigned char at_smem[];
    unsigned short* Qs = (unsigned short*)at_smem;  // [BQ][LD]
    unsigned short* Ks = Qs + BQ * LD;              // [2][BC][LD]
    unsigned short* Vs = Ks + 2 * BC * LD;          // [2][BC][LD]
    float* kval = (float*)(Vs + 2 * BC * LD);       // [2][BC]: 1 = key kept, 0 = masked/out
    static_assert((BQ + 4 * BC) * LD * 2 + 2 * BC * 4 == AT_FWD_MMA_SMEM(D, BQ, BC),
                  "the layout above is AT_FWD_MMA_SMEM");

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, tig = lane & 3;
    const int bid = blockIdx.x;
    const int qt = q_tiles - 1 - (bid % q_tiles);  // heavier causal tiles first
    const int bh = bid / q_tiles;
    const int b = bh / H, h = bh - b * H;
    const int q0 = qt * BQ;
    const int wrow = warp * 16 * MT;  // this warp's first row in the block
    const int kv_end = at_kv_end(causal, q0, BQ, Nq, Nk);
    const int n_tiles = (kv_end + BC - 1) / BC;
    const unsigned short* qb = q + b * qsb + h * qsh;
    const unsigned short* kb = k + b * ksb + h * ksh;
    const unsigned short* vb = v + b * vsb + h * vsh;
    const unsigned* mrow = key_mask ? key_mask + (long long)b * Nk : 0;

    float o[MT][2 * KD][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int i = 0; i < 2 * KD; ++i) o[m][i][0] = o[m][i][1] = o[m][i][2] = o[m][i][3] = 0.0f;
    float m_run[MT][2], l_run[MT][2];
    bool live[MT];  // row tile m of this warp holds at least one query
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        m_run[m][0] = m_run[m][1] = at_neg_inf();
        l_run[m][0] = l_run[m][1] = 0.0f;
        live[m] = q0 + wrow + m * 16 < Nq;
    }

    if (n_tiles > 0) {
        // Q tile and the first K/V tile: one commit group.
        for (int c = tid; c < BQ * DC; c += NT) {
            int r = c / DC, cc = c - r * DC;
            bool ok = q0 + r < Nq;
            at_cp16(at_smem_addr(Qs + r * LD + cc * 8), qb + (ok ? q0 + r : 0) * qsn + cc * 8, ok);
        }
    }
    unsigned qf[QF][4];  // [m * KD + kk] when QREG
    for (int t = 0; t < n_tiles; ++t) {
        // Issue tile t (first iteration) and t + 1 (prefetch); stage of tile i is i & 1.
        for (int tile = (t == 0 ? 0 : t + 1); tile <= t + 1 && tile < n_tiles; ++tile) {
            const int st = tile & 1, kv0 = tile * BC;
            unsigned short* Kd = Ks + st * BC * LD;
            unsigned short* Vd = Vs + st * BC * LD;
            for (int c = tid; c < BC * DC; c += NT) {
                int r = c / DC, cc = c - r * DC;
                bool ok = kv0 + r < Nk;
                long long row = ok ? kv0 + r : 0;
                at_cp16(at_smem_addr(Kd + r * LD + cc * 8), kb + row * ksn + cc * 8, ok);
                at_cp16(at_smem_addr(Vd + r * LD + cc * 8), vb + row * vsn + cc * 8, ok);
            }
            for (int j = tid; j < BC; j += NT) {
                int kv = kv0 + j;
                kval[st * BC + j] = (kv < Nk && (!mrow || mrow[kv] != 0u)) ? 1.0f : 0.0f;
            }
            at_cp_commit();
        }
        // Everything but the newest group (tile t + 1, if issued) has landed.
        if (t + 1 < n_tiles) at_cp_wait<1>(); else at_cp_wait<0>();
        __syncthreads();

        if (QREG && t == 0) {
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int kk = 0; kk < KD; ++kk) {
                    int row = wrow + m * 16 + (lane & 15);
                    int col = kk * 16 + (lane >> 4) * 8;
                    at_ldsm_x4(qf[QREG ? m * KD + kk : 0], at_smem_addr(Qs + row * LD + col));
                }
        }

        const int st = t & 1, kv0 = t * BC;
        const unsigned short* Kt = Ks + st * BC * LD;
        const unsigned short* Vt = Vs + st * BC * LD;
        const float* kv_ok = kval + st * BC;
        // SKIP: padding is skipped instead of computed and masked (N = 197 pads to 256 in both
        // directions, a third more work): pairs of 8-key score tiles from `np_lim` on hold no
        // key this block may see (past Nk or the causal limit), and a row tile past Nq holds
        // no query. Both bounds are warp-uniform; the skipped scores would all have been
        // masked to a probability of exactly 0, so the results are the same.
        const int np_lim = kv_end - kv0 >= BC ? NS / 2 : (kv_end - kv0 + 15) / 16;

        // S = Q K^T for this warp's 16 * MT rows and the tile's BC keys.
        float s[MT][NS][4];
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int i = 0; i < NS; ++i) s[m][i][0] = s[m][i][1] = s[m][i][2] = s[m][i][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
            unsigned qs[QREG ? 1 : MT][4];
            if (!QREG) {
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    int row = wrow + m * 16 + (lane & 15);
                    int col = kk * 16 + (lane >> 4) * 8;
                    at_ldsm_x4(qs[QREG ? 0 : m], at_smem_addr(Qs + row * LD + col));
                }
            }
#pragma unroll
            for (int np = 0; np < NS / 2; ++np) {
                if (SKIP && np >= np_lim) break;
                unsigned kf[4];
                int key = np * 16 + ((lane >> 4) & 1) * 8 + (lane & 7);
                int col = kk * 16 + ((lane >> 3) & 1) * 8;
                at_ldsm_x4(kf, at_smem_addr(Kt + key * LD + col));
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    if (SKIP && !live[m]) continue;
                    const unsigned* a = QREG ? qf[QREG ? m * KD + kk : 0] : qs[QREG ? 0 : m];
                    T::mma(s[m][2 * np], a, kf[0], kf[1]);
                    T::mma(s[m][2 * np + 1], a, kf[2], kf[3]);
                }
            }
        }

        // Warp-uniform: every key of the tile exists, none is masked, and even the warp's
        // first row sees the tile's last key. With a positive scale such a tile keeps the raw
        // scores: their max times the scale is the max of the scaled scores (rounding is
        // monotone), and the scaling folds into the exponent's fused multiply-add.
        const bool full = kv0 + BC <= Nk && !mrow &&
                          (!causal || kv0 + BC - 1 <= q0 + wrow + Nk - Nq);
        const bool raw = full && scale_log2 > 0.0f;
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            if (SKIP && !live[m]) continue;
            // Mask (and, unless `raw`, scale into the log2 domain); update the running max.
            const int qi0 = q0 + wrow + m * 16 + g;  // rows qi0 (c0, c1) and qi0 + 8 (c2, c3)
            float mx[2] = {at_neg_inf(), at_neg_inf()};
            if (raw) {
#pragma unroll
                for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], s[m][nt][e]);
                }
                mx[0] *= scale_log2;
                mx[1] *= scale_log2;
            } else if (full) {
#pragma unroll
                for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float x = s[m][nt][e] * scale_log2;
                        s[m][nt][e] = x;
                        mx[e >> 1] = fmaxf(mx[e >> 1], x);
                    }
                }
            } else {
#pragma unroll
                for (int nt = 0; nt < NS; ++nt) {
                    if (SKIP && nt >= 2 * np_lim) break;
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        int col = nt * 8 + tig * 2 + (e & 1);
                        int qi = qi0 + (e >> 1) * 8;
                        bool vis = kv_ok[col] != 0.0f && (!causal || kv0 + col <= qi + Nk - Nq);
                        float x = vis ? s[m][nt][e] * scale_log2 : at_neg_inf();
                        s[m][nt][e] = x;
                        mx[e >> 1] = fmaxf(mx[e >> 1], x);
                    }
                }
            }
            float alpha[2], m_use[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                float m_new = fmaxf(m_run[m][r], mx[r]);
                m_use[r] = m_new == at_neg_inf() ? 0.0f : m_new;
                alpha[r] = exp2f(m_run[m][r] - m_use[r]);  // 0 while nothing was visible
                m_run[m][r] = m_new;
                l_run[m][r] *= alpha[r];
            }
            // Once the running max settles, alpha is exactly 1 for every row of the warp, and
            // the rescale (a multiply per output accumulator) is skipped.
            if (!__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
                for (int nt = 0; nt < 2 * KD; ++nt) {
                    o[m][nt][0] *= alpha[0];
                    o[m][nt][1] *= alpha[0];
                    o[m][nt][2] *= alpha[1];
                    o[m][nt][3] *= alpha[1];
                }
            }
            if (raw) {
#pragma unroll
                for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float p = exp2f(fmaf(s[m][nt][e], scale_log2, -m_use[e >> 1]));
                        s[m][nt][e] = p;
                        l_run[m][e >> 1] += p;
                    }
                }
            } else {
#pragma unroll
                for (int nt = 0; nt < NS; ++nt) {
                    if (SKIP && nt >= 2 * np_lim) break;
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float p = exp2f(s[m][nt][e] - m_use[e >> 1]);
                        s[m][nt][e] = p;
                        l_run[m][e >> 1] += p;
                    }
                }
            }
        }

        // O += P V: the S accumulators of key tiles 2 t2, 2 t2 + 1 are the A fragment.
#pragma unroll
        for (int t2 = 0; t2 < NS / 2; ++t2) {
            if (SKIP && t2 >= np_lim) break;
            unsigned pa[MT][4];
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                pa[m][0] = T::pack(s[m][2 * t2][0], s[m][2 * t2][1]);
                pa[m][1] = T::pack(s[m][2 * t2][2], s[m][2 * t2][3]);
                pa[m][2] = T::pack(s[m][2 * t2 + 1][0], s[m][2 * t2 + 1][1]);
                pa[m][3] = T::pack(s[m][2 * t2 + 1][2], s[m][2 * t2 + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < KD; ++dp) {
                unsigned vf[4];
                int key = t2 * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
                int col = dp * 16 + ((lane >> 4) & 1) * 8;
                at_ldsm_x4_t(vf, at_smem_addr(Vt + key * LD + col));
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    if (SKIP && !live[m]) continue;
                    T::mma(o[m][2 * dp], pa[m], vf[0], vf[1]);
                    T::mma(o[m][2 * dp + 1], pa[m], vf[2], vf[3]);
                }
            }
        }
        // The next iteration's prefetch overwrites the stage read two iterations from now;
        // this barrier keeps it from overwriting this tile's stage while warps still read it.
        __syncthreads();
    }

    // Normalise and write: rows qi0 and qi0 + 8 of each of this warp's row tiles.
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float l = l_run[m][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const int qi = q0 + wrow + m * 16 + g + r * 8;
            if (qi < Nq) {
                const float inv = l > 0.0f ? 1.0f / l : 0.0f;
                unsigned short* orow = out + ((long long)bh * Nq + qi) * D;
#pragma unroll
                for (int nt = 0; nt < 2 * KD; ++nt) {
                    unsigned packed = T::pack(o[m][nt][2 * r] * inv, o[m][nt][2 * r + 1] * inv);
                    *(unsigned*)(orow + nt * 8 + tig * 2) = packed;
                }
                if (tig == 0)
                    lse[(long long)bh * Nq + qi] =
                        l > 0.0f ? m_run[m][r] * AT_LN2 + __logf(l) : at_neg_inf();
            }
        }
    }
}

// attention_fwd_mma_d<D>_<dt>: 64 query rows per block (MT = 1), key tiles of 64;
// attention_fwd_mma2_d<D>_<dt>: 128 query rows per block (MT = 2), key tiles of 64 below
// D = 128 and 32 at D = 128; attention_fwd_mma_skip_d<D>_<dt>, attention_fwd_mma2_skip_..:
// the same with SKIP (a candidate: the host uses them only when asked to, until they have
// run on a GPU). Same arguments.
#define AT_FWD_MMA_KERNEL(NAME, D, SUF, T, MT, BC, SKIP)                                     \
    extern "C" __global__ void __launch_bounds__(AT_MMA_THREADS) NAME##_d##D##_##SUF(          \
        const unsigned short* q, const unsigned short* k, const unsigned short* v,             \
        const unsigned* key_mask, unsigned short* out, float* lse, int H, int Nq, int Nk,      \
        long long qsb, long long qsh, long long qsn, long long ksb, long long ksh,             \
        long long ksn, long long vsb, long long vsh, long long vsn, float scale_log2,          \
        int causal, int q_tiles) {                                                             \
        at_fwd_mma<T, D, MT, BC, SKIP>(q, k, v, key_mask, out, lse, H, Nq, Nk, qsb, qsh, qsn,  \
                                       ksb, ksh, ksn, vsb, vsh, vsn, scale_log2, causal,       \
                                       q_tiles);                                               \
    }
#define AT_FWD_MMA(D, SUF, T)                                                                  \
    AT_FWD_MMA_KERNEL(attention_fwd_mma, D, SUF, T, 1, AT_FWD_MMA_BC(D, 1), false)             \
    AT_FWD_MMA_KERNEL(attention_fwd_mma2, D, SUF, T, 2, AT_FWD_MMA_BC(D, 2), false)            \
    AT_FWD_MMA_KERNEL(attention_fwd_mma_skip, D, SUF, T, 1, AT_FWD_MMA_BC(D, 1), true)         \
    AT_FWD_MMA_KERNEL(attention_fwd_mma2_skip, D, SUF, T, 2, AT_FWD_MMA_BC(D, 2), true)

AT_FWD_MMA(32, f16, AtF16)
AT_FWD_MMA(64, f16, AtF16)
AT_FWD_MMA(80, f16, AtF16)
AT_FWD_MMA(128, f16, AtF16)
AT_FWD_MMA(32, bf16, AtBF16)
AT_FWD_MMA(64, bf16, AtBF16)
AT_FWD_MMA(80, bf16, AtBF16)
AT_FWD_MMA(128, bf16, AtBF16)

// attention_fwd_mma2_k64_d128_<dt>: 128 query rows per block with 64-key tiles at D = 128,
// padding skipped (a candidate): half the tiles, so half the barriers and softmax
// bookkeeping per key. With SKIP it fits in 244 registers without spilling; without it the
// compiler spills, which is why the default mma2 kernel takes 32-key tiles at D = 128.
AT_FWD_MMA_KERNEL(attention_fwd_mma2_k64, 128, f16, AtF16, 2, AT_MMA_BC, true)
AT_FWD_MMA_KERNEL(attention_fwd_mma2_k64, 128, bf16, AtBF16, 2, AT_MMA_BC, true)

// ------------------------------------------------------------------------------ backward, mma

// One block per 64 keys of one (b, h), 4 warps; warp w owns keys w * 16 .. w * 16 + 15 of the
// tile. K and V stay in shared memory; the block walks the 64-row query tiles that can see its
// keys. Per tile every warp computes S^T = K Q^T and dP^T = V dO^T for its 16 keys (the keys
// are the rows of the accumulators, the queries the columns), P^T = 2^(S^T scale log2e -
// lse log2e) (0 where not visible), dS^T = P^T (dP^T - delta), then dV += P^T dO and
// dK += dS^T Q with the rounded P^T / dS^T accumulators re-packed as A fragments (B = dO, Q by
// ldmatrix.trans). dS (rounded to the dtype) goes to shared memory as [query][key]; after a
// barrier warp w computes rows w * 16 .. of dS K (B = K by ldmatrix.trans) and adds scale times
// them into dq_acc with f32 atomicAdd. Single-stage loads, a barrier on either side of every
// shared-memory phase.
// PF (prefetch, a candidate): the dQ phase reads only dS and K, so the next query tile's Q, dO,
// lse and delta are requested right after the barrier that completes dS and land while the
// dQ products and atomics run; the barrier that used to open every tile goes (the one after
// the loads also orders the previous dQ phase's reads of dS before the next writes).
// Dynamic shared memory: 4 * 64 * (D + 8) * 2 + 64 * 72 * 2 + 3 * 64 * 4 bytes.
#define AT_BWD_LDS 72
#define AT_MMA_BQ 64  // query rows per tile the backward walks
// Dynamic shared memory of the tensor-core backward (the layout at the top of at_bwd_mma;
// fused.rs: attn_bwd_mma_smem).
#define AT_BWD_MMA_SMEM(D) \
    ((2 * AT_MMA_BC + 2 * AT_MMA_BQ) * ((D) + 8) * 2 + AT_MMA_BQ * AT_BWD_LDS * 2 + \
     (2 * AT_MMA_BQ + AT_MMA_BC) * 4)

// The backward's query tile i0: Q and dO rows into Qs / Gs (cp.async, one commit group; zeros
// past Nq), lse in the log2 domain into lse_s and delta into del_s (plain stores).
template <int D>
__device__ __forceinline__ void at_bwd_load_q_tile(
    int i0, int Nq, const unsigned short* qb, const unsigned short* gb, long long qsn,
    long long gsn, const float* lse_b, const float* del_b, unsigned short* Qs, unsigned short* Gs,
    float* lse_s, float* del_s) {
    constexpr int BQ = AT_MMA_BQ;
    at_cp_rows2<D, BQ>(i0, Nq, qb, qsn, Qs, gb, gsn, Gs);
    at_cp_commit();
    for (int r = threadIdx.x; r < BQ; r += AT_MMA_THREADS) {
        bool ok = i0 + r < Nq;
        float l = ok ? lse_b[i0 + r] : at_neg_inf();
        // 2^(x - inf) = 0: rows past Nq and fully masked rows contribute nothing.
        lse_s[r] = l == at_neg_inf() ? __int_as_float(0x7f800000) : l * AT_LOG2E;
        del_s[r] = ok ? del_b[i0 + r] : 0.0f;
    }
}

// Adds (a, b) to p[0], p[1] in global memory (p 8-byte aligned) as one vector reduction on
// sm_90 and later (`red.global.add.v2.f32`: half the atomic requests), as two f32 atomicAdd
// before.
__device__ __forceinline__ void at_red2(float* p, float a, float b) {
#if __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
    atomicAdd(p, a);
    atomicAdd(p + 1, b);
#endif
}

template <class T, int D, bool PF, bool RED2>
__device__ __forceinline__ void at_bwd_mma(
    const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,
    const unsigned short* __restrict__ v, const unsigned short* __restrict__ dout,
    const float* __restrict__ lse, const float* __restrict__ delta,
    const unsigned* __restrict__ key_mask, float* __restrict__ dq_acc,
    unsigned short* __restrict__ dk, unsigned short* __restrict__ dv, int H, int Nq, int Nk,
    long long qsb, long long qsh, long long qsn, long long ksb, long long ksh, long long ksn,
    long long vsb, long long vsh, long long vsn, long long gsb, long long gsh, long long gsn,
    float scale, int causal, int k_tiles) {
    constexpr int BQ = AT_MMA_BQ, BC = AT_MMA_BC, LD = D + 8, NT = AT_MMA_THREADS;
    constexpr int KD = D / 16;  // k-steps over the head dim, and pairs of 8-wide output tiles
    constexpr int NS = BQ / 8;  // 8-wide query tiles of S^T
    constexpr int LDS = AT_BWD_LDS;
    extern __shared__ __align__(16) unsigned char at_smem[];
    unsigned short* Ks = (unsigned short*)at_smem;  // [BC][LD]
    unsigned short* Vs = Ks + BC * LD;              // [BC][LD]
    unsigned short* Qs = Vs + BC * LD;              // [BQ][LD]
    unsigned short* Gs = Qs + BQ * LD;              // [BQ][LD]  (dO)
    unsigned short* dSs = Gs + BQ * LD;             // [BQ][LDS] (dS, query-major)
    float* lse_s = (float*)(dSs + BQ * LDS);        // [BQ]: lse log2e, +inf = no contribution
    float* del_s = lse_s + BQ;                      // [BQ]
    float* kval = del_s + BQ;                       // [BC]: 1 = key kept, 0 = masked/out
    static_assert((2 * BC + 2 * BQ) * LD * 2 + BQ * LDS * 2 + (2 * BQ + BC) * 4 ==
                      AT_BWD_MMA_SMEM(D),
                  "the layout above is AT_BWD_MMA_SMEM");

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, tig = lane & 3;
    const int bid = blockIdx.x;
    const int kt = bid % k_tiles;
    const int bh = bid / k_tiles;
    const int b = bh / H, h = bh - b * H;
    const int j0 = kt * BC;
    const float scale_log2 = scale * AT_LOG2E;
    const unsigned short* qb = q + b * qsb + h * qsh;
    const unsigned short* kb = k + b * ksb + h * ksh;
    const unsigned short* vb = v + b * vsb + h * vsh;
    const unsigned short* gb = dout + b * gsb + h * gsh;
    const unsigned* mrow = key_mask ? key_mask + (long long)b * Nk : 0;
    const float* lse_b = lse + (long long)bh * Nq;
    const float* del_b = delta + (long long)bh * Nq;
    float* dq_b = dq_acc + (long long)bh * Nq * D;

    // K and V tiles (zero rows past Nk) and the key flags.
    at_cp_rows2<D, BC>(j0, Nk, kb, ksn, Ks, vb, vsn, Vs);
    at_cp_commit();
    for (int j = tid; j < BC; j += NT) {
        int kv = j0 + j;
        kval[j] = (kv < Nk && (!mrow || mrow[kv] != 0u)) ? 1.0f : 0.0f;
    }

    float dka[2 * KD][4], dva[2 * KD][4];
#pragma unroll
    for (int i = 0; i < 2 * KD; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[i][e] = dva[i][e] = 0.0f;

    // First query that can see key j0: i + Nk - Nq >= j0.
    int i_start = 0;
    if (causal) {
        long long first = (long long)j0 - Nk + Nq;
        i_start = first <= 0 ? 0 : (first >= Nq ? Nq : (int)(first / BQ) * BQ);
    }
    const int key_r0 = warp * 16 + g;  // this thread's accumulator rows: keys key_r0, key_r0 + 8

    if (PF && i_start < Nq)
        at_bwd_load_q_tile<D>(i_start, Nq, qb, gb, qsn, gsn, lse_b, del_b, Qs, Gs, lse_s, del_s);

    for (int i0 = i_start; i0 < Nq; i0 += BQ) {
        if (!PF) {
            __syncthreads();  // the previous tile's Qs, Gs, dSs, lse_s, del_s fully consumed
            at_bwd_load_q_tile<D>(i0, Nq, qb, gb, qsn, gsn, lse_b, del_b, Qs, Gs, lse_s, del_s);
        }
        at_cp_wait<0>();
        __syncthreads();

        // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys and the tile's 64 queries.
        float s[NS][4], dp[NS][4];
#pragma unroll
        for (int i = 0; i < NS; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[i][e] = dp[i][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
            unsigned ka[4], va[4];
            {
                int row = warp * 16 + (lane & 15);
                int col = kk * 16 + (lane >> 4) * 8;
                at_ldsm_x4(ka, at_smem_addr(Ks + row * LD + col));
                at_ldsm_x4(va, at_smem_addr(Vs + row * LD + col));
            }
#pragma unroll
            for (int np = 0; np < NS / 2; ++np) {
                unsigned qf[4], gf[4];
                int qr = np * 16 + ((lane >> 4) & 1) * 8 + (lane & 7);
                int col = kk * 16 + ((lane >> 3) & 1) * 8;
                at_ldsm_x4(qf, at_smem_addr(Qs + qr * LD + col));
                at_ldsm_x4(gf, at_smem_addr(Gs + qr * LD + col));
                T::mma(s[2 * np], ka, qf[0], qf[1]);
                T::mma(s[2 * np + 1], ka, qf[2], qf[3]);
                T::mma(dp[2 * np], va, gf[0], gf[1]);
                T::mma(dp[2 * np + 1], va, gf[2], gf[3]);
            }
        }

        // P^T and dS^T in place (s becomes P, dp becomes dS).
        const bool kok0 = kval[key_r0] != 0.0f, kok1 = kval[key_r0 + 8] != 0.0f;
#pragma unroll
        for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int col = nt * 8 + tig * 2 + (e & 1);  // query row within the tile
                int key = j0 + key_r0 + (e >> 1) * 8;
                bool vis = ((e >> 1) ? kok1 : kok0) && (!causal || key <= i0 + col + Nk - Nq);
                float p = vis ? exp2f(s[nt][e] * scale_log2 - lse_s[col]) : 0.0f;
                s[nt][e] = p;
                dp[nt][e] = p * (dp[nt][e] - del_s[col]);
            }
        }

        // dV += P^T dO and dK += dS^T Q; the k dimension is the tile's queries.
#pragma unroll
        for (int t2 = 0; t2 < NS / 2; ++t2) {
            unsigned pa[4], da[4];
            pa[0] = T::pack(s[2 * t2][0], s[2 * t2][1]);
            pa[1] = T::pack(s[2 * t2][2], s[2 * t2][3]);
            pa[2] = T::pack(s[2 * t2 + 1][0], s[2 * t2 + 1][1]);
            pa[3] = T::pack(s[2 * t2 + 1][2], s[2 * t2 + 1][3]);
            da[0] = T::pack(dp[2 * t2][0], dp[2 * t2][1]);
            da[1] = T::pack(dp[2 * t2][2], dp[2 * t2][3]);
            da[2] = T::pack(dp[2 * t2 + 1][0], dp[2 * t2 + 1][1]);
            da[3] = T::pack(dp[2 * t2 + 1][2], dp[2 * t2 + 1][3]);
            // dS as [query][key] for the dQ product: element (key, query) of this thread.
            {
                const int qc = t2 * 16 + tig * 2;
                unsigned short* d0 = dSs + qc * LDS + key_r0;
                d0[0] = (unsigned short)(da[0] & 0xffffu);
                d0[LDS] = (unsigned short)(da[0] >> 16);
                d0[8] = (unsigned short)(da[1] & 0xffffu);
                d0[LDS + 8] = (unsigned short)(da[1] >> 16);
                unsigned short* d1 = d0 + 8 * LDS;
                d1[0] = (unsigned short)(da[2] & 0xffffu);
                d1[LDS] = (unsigned short)(da[2] >> 16);
                d1[8] = (unsigned short)(da[3] & 0xffffu);
                d1[LDS + 8] = (unsigned short)(da[3] >> 16);
            }
#pragma unroll
            for (int dd = 0; dd < KD; ++dd) {
                unsigned gf[4], qf[4];
                int qr = t2 * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
                int col = dd * 16 + ((lane >> 4) & 1) * 8;
                at_ldsm_x4_t(gf, at_smem_addr(Gs + qr * LD + col));
                at_ldsm_x4_t(qf, at_smem_addr(Qs + qr * LD + col));
                T::mma(dva[2 * dd], pa, gf[0], gf[1]);
                T::mma(dva[2 * dd + 1], pa, gf[2], gf[3]);
                T::mma(dka[2 * dd], da, qf[0], qf[1]);
                T::mma(dka[2 * dd + 1], da, qf[2], qf[3]);
            }
        }
        __syncthreads();  // dSs complete; with PF, also Qs, Gs, lse_s and del_s free
        if (PF && i0 + BQ < Nq)
            at_bwd_load_q_tile<D>(i0 + BQ, Nq, qb, gb, qsn, gsn, lse_b, del_b, Qs, Gs, lse_s,
                                  del_s);

        // dQ rows warp * 16 .. + 15 of the tile += scale * dS K (k dimension: the tile's keys).
        {
            unsigned sa[BC / 16][4];
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) {
                int row = warp * 16 + (lane & 15);
                int col = kk * 16 + (lane >> 4) * 8;
                at_ldsm_x4(sa[kk], at_smem_addr(dSs + row * LDS + col));
            }
            const int qa = i0 + warp * 16 + g;  // rows qa (c0, c1) and qa + 8 (c2, c3)
#pragma unroll
            for (int dd = 0; dd < KD; ++dd) {
                float acc[2][4];
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[0][e] = acc[1][e] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < BC / 16; ++kk) {
                    unsigned kf[4];
                    int key = kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
                    int col = dd * 16 + ((lane >> 4) & 1) * 8;
                    at_ldsm_x4_t(kf, at_smem_addr(Ks + key * LD + col));
                    T::mma(acc[0], sa[kk], kf[0], kf[1]);
                    T::mma(acc[1], sa[kk], kf[2], kf[3]);
                }
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int col = dd * 16 + j * 8 + tig * 2;
                    // RED2 (a candidate): one vector reduction per pair of columns.
                    if (qa < Nq) {
                        float* r = dq_b + (long long)qa * D + col;
                        if (RED2) {
                            at_red2(r, acc[j][0] * scale, acc[j][1] * scale);
                        } else {
                            atomicAdd(r, acc[j][0] * scale);
                            atomicAdd(r + 1, acc[j][1] * scale);
                        }
                    }
                    if (qa + 8 < Nq) {
                        float* r = dq_b + (long long)(qa + 8) * D + col;
                        if (RED2) {
                            at_red2(r, acc[j][2] * scale, acc[j][3] * scale);
                        } else {
                            atomicAdd(r, acc[j][2] * scale);
                            atomicAdd(r + 1, acc[j][3] * scale);
                        }
                    }
                }
            }
        }
    }
    at_cp_wait<0>();  // the K/V copies, when no query tile was visited

    // dK (times scale) and dV rows: keys j0 + key_r0 (c0, c1) and j0 + key_r0 + 8 (c2, c3).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int kj = j0 + key_r0 + r * 8;
        if (kj < Nk) {
            unsigned short* dkr = dk + ((long long)bh * Nk + kj) * D;
            unsigned short* dvr = dv + ((long long)bh * Nk + kj) * D;
#pragma unroll
            for (int nt = 0; nt < 2 * KD; ++nt) {
                *(unsigned*)(dkr + nt * 8 + tig * 2) =
                    T::pack(dka[nt][2 * r] * scale, dka[nt][2 * r + 1] * scale);
                *(unsigned*)(dvr + nt * 8 + tig * 2) = T::pack(dva[nt][2 * r], dva[nt][2 * r + 1]);
            }
        }
    }
}

// attention_bwd_mma_d<D>_<dt>, and the candidates (the host uses them only when asked to,
// until they have run on a GPU) attention_bwd_mma_pf_d<D>_<dt> with PF,
// attention_bwd_mma_red2_d<D>_<dt> with RED2 (dQ added by vector reductions, see at_red2)
// and attention_bwd_mma_pf_red2_d<D>_<dt> with both. Same arguments.
#define AT_BWD_MMA_KERNEL(NAME, D, SUF, T, PF, RED2)                                           \
    extern "C" __global__ void __launch_bounds__(AT_MMA_THREADS) NAME##_d##D##_##SUF(          \
        const unsigned short* q, const unsigned short* k, const unsigned short* v,             \
        const unsigned short* dout, const float* lse, const float* delta,                      \
        const unsigned* key_mask, float* dq_acc, unsigned short* dk, unsigned short* dv, int H, \
        int Nq, int Nk, long long qsb, long long qsh, long long qsn, long long ksb,            \
        long long ksh, long long ksn, long long vsb, long long vsh, long long vsn,             \
        long long gsb, long long gsh, long long gsn, float scale, int causal, int k_tiles) {   \
        at_bwd_mma<T, D, PF, RED2>(q, k, v, dout, lse, delta, key_mask, dq_acc, dk, dv, H, Nq, \
                                   Nk, qsb, qsh, qsn, ksb, ksh, ksn, vsb, vsh, vsn, gsb, gsh,   \
                                   gsn, scale, causal, k_tiles);                               \
    }
#define AT_BWD_MMA(D, SUF, T)                                                                  \
    AT_BWD_MMA_KERNEL(attention_bwd_mma, D, SUF, T, false, false)                              \
    AT_BWD_MMA_KERNEL(attention_bwd_mma_pf, D, SUF, T, true, false)                            \
    AT_BWD_MMA_KERNEL(attention_bwd_mma_red2, D, SUF, T, false, true)                          \
    AT_BWD_MMA_KERNEL(attention_bwd_mma_pf_red2, D, SUF, T, true, true)

AT_BWD_MMA(32, f16, AtF16)
AT_BWD_MMA(64, f16, AtF16)
AT_BWD_MMA(80, f16, AtF16)
AT_BWD_MMA(128, f16, AtF16)
AT_BWD_MMA(32, bf16, AtBF16)
AT_BWD_MMA(64, bf16, AtBF16)
AT_BWD_MMA(80, bf16, AtBF16)
AT_BWD_MMA(128, bf16, AtBF16)

// ------------------------------------------------------------------------------ forward, SIMT

#define AT_SIMT_B 32
#define AT_SIMT_THREADS 128
#define AT_SIMT_MAXD 128
#define AT_SIMT_PER (AT_SIMT_MAXD / 4)
// Dynamic shared memory of the CUDA-core forward and backward for head dims D and Dv (the
// layouts at the top of at_fwd_simt and at_bwd_simt; fused.rs: attn_simt_smem,
// attn_bwd_smem).
#define AT_SIMT_FWD_SMEM(D, DV) \
    ((AT_SIMT_B * ((D) + 1) * 2 + AT_SIMT_B * ((DV) + 1) + AT_SIMT_B * 33 + AT_SIMT_B) * 4)
#define AT_SIMT_BWD_SMEM(D, DV)                                                            \
    ((AT_SIMT_B * (2 * ((D) + 1) + 2 * ((DV) + 1)) + 2 * AT_SIMT_B * 33 + 3 * AT_SIMT_B) * \
     4)

template <class T>
__device__ __forceinline__ void at_fwd_simt(
    const typename T::raw* __restrict__ q, const typename T::raw* __restrict__ k,
    const typename T::raw* __restrict__ v, const unsigned* __restrict__ key_mask,
    typename T::raw* __restrict__ out, float* __restrict__ lse, int H, int Nq, int Nk, int D,
    int Dv, long long qsb, long long qsh, long long qsn, long long ksb, long long ksh,
    long long ksn, long long vsb, long long vsh, long long vsn, float scale_log2, int causal,
    int q_tiles) {
    constexpr int BQ = AT_SIMT_B, BC = AT_SIMT_B, NT = AT_SIMT_THREADS;
    extern __shared__ __align__(16) unsigned char at_smem[];
    const int LQ = D + 1, LV = Dv + 1;
    float* Qs = (float*)at_smem;  // [BQ][LQ]
    float* Kt = Qs + BQ * LQ;     // [BC][LQ]
    float* Vt = Kt + BC * LQ;     // [BC][LV]
    float* Ps = Vt + BC * LV;     // [BQ][33]
    float* kv_ok = Ps + BQ * 33;  // [BC]

    const int tid = threadIdx.x, r = tid >> 2, cg = tid & 3;
    const int bid = blockIdx.x;
    const int qt = q_tiles - 1 - (bid % q_tiles);
    const int bh = bid / q_tiles;
    const int b = bh / H, h = bh - b * H;
    const int q0 = qt * BQ;
    const int kv_end = at_kv_end(causal, q0, BQ, Nq, Nk);
    const typename T::raw* qb = q + b * qsb + h * qsh;
    const typename T::raw* kb = k + b * ksb + h * ksh;
    const typename T::raw* vb = v + b * vsb + h * vsh;
    const unsigned* mrow = key_mask ? key_mask + (long long)b * Nk : 0;

    for (int i = tid; i < BQ * D; i += NT) {
        int rr = i / D, d = i - rr * D;
        Qs[rr * LQ + d] = q0 + rr < Nq ? T::ld(qb + (long long)(q0 + rr) * qsn + d) : 0.0f;
    }
    float acc[AT_SIMT_PER];
#pragma unroll
    for (int i = 0; i < AT_SIMT_PER; ++i) acc[i] = 0.0f;
    float m_run = at_neg_inf(), l_run = 0.0f;
    const int qi = q0 + r;

    for (int kv0 = 0; kv0 < kv_end; kv0 += BC) {
        __syncthreads();  // previous tile fully consumed (and Qs written, first time)
        for (int i = tid; i < BC * D; i += NT) {
            int j = i / D, d = i - j * D;
            Kt[j * LQ + d] = kv0 + j < Nk ? T::ld(kb + (long long)(kv0 + j) * ksn + d) : 0.0f;
        }
        for (int i = tid; i < BC * Dv; i += NT) {
            int j = i / Dv, d = i - j * Dv;
            Vt[j * LV + d] = kv0 + j < Nk ? T::ld(vb + (long long)(kv0 + j) * vsn + d) : 0.0f;
        }
        for (int j = tid; j < BC; j += NT) {
            int kv = kv0 + j;
            kv_ok[j] = (kv < Nk && (!mrow || mrow[kv] != 0u)) ? 1.0f : 0.0f;
        }
        __syncthreads();

        float s[BC / 4];
        float mx = at_neg_inf();
#pragma unroll
        for (int c4 = 0; c4 < BC / 4; ++c4) {
            int c = cg + 4 * c4;
            const float* qr = Qs + r * LQ;
            const float* kr = Kt + c * LQ;
            float dot = 0.0f;
            for (int d = 0; d < D; ++d) dot += qr[d] * kr[d];
            bool vis = kv_ok[c] != 0.0f && (!causal || kv0 + c <= qi + Nk - Nq);
            s[c4] = vis ? dot * scale_log2 : at_neg_inf();
            mx = fmaxf(mx, s[c4]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float m_new = fmaxf(m_run, mx);
        float m_use = m_new == at_neg_inf() ? 0.0f : m_new;
        float alpha = exp2f(m_run - m_use);
        m_run = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int c4 = 0; c4 < BC / 4; ++c4) {
            float p = exp2f(s[c4] - m_use);
            sum += p;
            Ps[r * 33 + cg + 4 * c4] = p;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        l_run = l_run * alpha + sum;
        __syncwarp();  // row r of Ps is written and read by the same 4 lanes of one warp
#pragma unroll
        for (int i = 0; i < AT_SIMT_PER; ++i) acc[i] *= alpha;
        for (int j = 0; j < BC; ++j) {
            float p = Ps[r * 33 + j];
            const float* vr = Vt + j * LV;
#pragma unroll
            for (int i = 0; i < AT_SIMT_PER; ++i) {
                int d = cg + 4 * i;
                if (d < Dv) acc[i] += p * vr[d];
            }
        }
    }

    if (qi < Nq) {
        const float inv = l_run > 0.0f ? 1.0f / l_run : 0.0f;
        typename T::raw* orow = out + ((long long)bh * Nq + qi) * Dv;
#pragma unroll
        for (int i = 0; i < AT_SIMT_PER; ++i) {
            int d = cg + 4 * i;
            if (d < Dv) T::st(orow + d, acc[i] * inv);
        }
        if (cg == 0)
            lse[(long long)bh * Nq + qi] =
                l_run > 0.0f ? m_run * AT_LN2 + __logf(l_run) : at_neg_inf();
    }
}

// ------------------------------------------------------------------------------ backward, SIMT

// delta = rowsum(dO * O) for each query row, and that row of dq_acc zeroed. 256 threads, one
// warp per row.
template <class T>
__device__ __forceinline__ void at_bwd_prep(const typename T::raw* __restrict__ o,
                                            const typename T::raw* __restrict__ dout,
                                            float* __restrict__ delta, float* __restrict__ dq_acc,
                                            int H, int Nq, int D, int Dv, long long osb,
                                            long long osh, long long osn, long long gsb,
                                            long long gsh, long long gsn) {
    long long row = (long long)blockIdx.x * 8 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    // row = (b * H + h) * Nq + i; the entry point has checked row < B * H * Nq.
    const long long bh = row / Nq;
    const int i = (int)(row - bh * Nq);
    const long long b = bh / H, h = bh - b * H;
    const typename T::raw* orow = o + b * osb + h * osh + (long long)i * osn;
    const typename T::raw* grow = dout + b * gsb + h * gsh + (long long)i * gsn;
    float s = 0.0f;
    for (int d = lane; d < Dv; d += 32) s += T::ld(orow + d) * T::ld(grow + d);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) delta[row] = s;
    float* dq = dq_acc + row * D;
    for (int d = lane; d < D; d += 32) dq[d] = 0.0f;
}

template <class T>
__device__ __forceinline__ void at_bwd_simt(
    const typename T::raw* __restrict__ q, const typename T::raw* __restrict__ k,
    const typename T::raw* __restrict__ v, const typename T::raw* __restrict__ dout,
    const float* __restrict__ lse, const float* __restrict__ delta,
    const unsigned* __restrict__ key_mask, float* __restrict__ dq_acc,
    typename T::raw* __restrict__ dk, typename T::raw* __restrict__ dv, int H, int Nq, int Nk,
    int D, int Dv, long long qsb, long long qsh, long long qsn, long long ksb, long long ksh,
    long long ksn, long long vsb, long long vsh, long long vsn, long long gsb, long long gsh,
    long long gsn, float scale, int causal, int k_tiles) {
    constexpr int BQ = AT_SIMT_B, BC = AT_SIMT_B, NT = AT_SIMT_THREADS;
    extern __shared__ __align__(16) unsigned char at_smem[];
    const int LK = D + 1, LV = Dv + 1;
    float* Ks = (float*)at_smem;   // [BC][LK]
    float* Vs = Ks + BC * LK;      // [BC][LV]
    float* Qs = Vs + BC * LV;      // [BQ][LK]
    float* Gs = Qs + BQ * LK;      // [BQ][LV]  (dO)
    float* Ps = Gs + BQ * LV;      // [BQ][33]
    float* dSs = Ps + BQ * 33;     // [BQ][33]
    float* lse_s = dSs + BQ * 33;  // [BQ]
    float* del_s = lse_s + BQ;     // [BQ]
    float* kv_ok = del_s + BQ;     // [BC]

    const int tid = threadIdx.x, c = tid >> 2, cg = tid & 3;
    const int bid = blockIdx.x;
    const int kt = bid % k_tiles;
    const int bh = bid / k_tiles;
    const int b = bh / H, h = bh - b * H;
    const int j0 = kt * BC;
    const typename T::raw* qb = q + b * qsb + h * qsh;
    const typename T::raw* kb = k + b * ksb + h * ksh;
    const typename T::raw* vb = v + b * vsb + h * vsh;
    const typename T::raw* gb = dout + b * gsb + h * gsh;
    const unsigned* mrow = key_mask ? key_mask + (long long)b * Nk : 0;
    const float* lse_b = lse + (long long)bh * Nq;
    const float* del_b = delta + (long long)bh * Nq;
    float* dq_b = dq_acc + (long long)bh * Nq * D;

    for (int i = tid; i < BC * D; i += NT) {
        int j = i / D, d = i - j * D;
        Ks[j * LK + d] = j0 + j < Nk ? T::ld(kb + (long long)(j0 + j) * ksn + d) : 0.0f;
    }
    for (int i = tid; i < BC * Dv; i += NT) {
        int j = i / Dv, d = i - j * Dv;
        Vs[j * LV + d] = j0 + j < Nk ? T::ld(vb + (long long)(j0 + j) * vsn + d) : 0.0f;
    }
    for (int j = tid; j < BC; j += NT) {
        int kv = j0 + j;
        kv_ok[j] = (kv < Nk && (!mrow || mrow[kv] != 0u)) ? 1.0f : 0.0f;
    }

    float dk_acc[AT_SIMT_PER], dv_acc[AT_SIMT_PER];
#pragma unroll
    for (int i = 0; i < AT_SIMT_PER; ++i) dk_acc[i] = dv_acc[i] = 0.0f;

    // First query that can see key j0: i + Nk - Nq >= j0.
    int i_start = 0;
    if (causal) {
        long long first = (long long)j0 - Nk + Nq;
        i_start = first <= 0 ? 0 : (first >= Nq ? Nq : (int)(first / BQ) * BQ);
    }
    for (int i0 = i_start; i0 < Nq; i0 += BQ) {
        __syncthreads();  // previous tile's Qs/Gs/Ps/dSs fully consumed (and K/V/kv_ok written)
        for (int i = tid; i < BQ * D; i += NT) {
            int rr = i / D, d = i - rr * D;
            Qs[rr * LK + d] = i0 + rr < Nq ? T::ld(qb + (long long)(i0 + rr) * qsn + d) : 0.0f;
        }
        for (int i = tid; i < BQ * Dv; i += NT) {
            int rr = i / Dv, d = i - rr * Dv;
            Gs[rr * LV + d] = i0 + rr < Nq ? T::ld(gb + (long long)(i0 + rr) * gsn + d) : 0.0f;
        }
        for (int rr = tid; rr < BQ; rr += NT) {
            bool ok = i0 + rr < Nq;
            float l = ok ? lse_b[i0 + rr] : at_neg_inf();
            lse_s[rr] = l == at_neg_inf() ? 0.0f : l;  // a fully masked row has P = 0 anyway
            del_s[rr] = ok ? del_b[i0 + rr] : 0.0f;
        }
        __syncthreads();

        // This thread: key c, query rows rr = cg + 4 i.
        const float* kr = Ks + c * LK;
        const float* vr = Vs + c * LV;
        const bool key_ok = kv_ok[c] != 0.0f;
#pragma unroll 2
        for (int i4 = 0; i4 < BQ / 4; ++i4) {
            int rr = cg + 4 * i4;
            int qi = i0 + rr;
            bool vis = key_ok && qi < Nq && (!causal || j0 + c <= qi + Nk - Nq);
            float p = 0.0f, ds = 0.0f;
            if (vis) {
                const float* qr = Qs + rr * LK;
                const float* gr = Gs + rr * LV;
                float dot = 0.0f;
                for (int d = 0; d < D; ++d) dot += qr[d] * kr[d];
                float dp = 0.0f;
                for (int d = 0; d < Dv; ++d) dp += gr[d] * vr[d];
                p = __expf(dot * scale - lse_s[rr]);
                ds = p * (dp - del_s[rr]);
            }
            Ps[rr * 33 + c] = p;
            dSs[rr * 33 + c] = ds;
        }
        __syncthreads();

        // dV[c] += sum_r P[r][c] dO[r];  dK[c] += sum_r dS[r][c] Q[r]  (scale at the end).
        for (int rr = 0; rr < BQ; ++rr) {
            float p = Ps[rr * 33 + c], ds = dSs[rr * 33 + c];
            const float* gr = Gs + rr * LV;
            const float* qr = Qs + rr * LK;
#pragma unroll
            for (int i = 0; i < AT_SIMT_PER; ++i) {
                int d = cg + 4 * i;
                if (d < Dv) dv_acc[i] += p * gr[d];
                if (d < D) dk_acc[i] += ds * qr[d];
            }
        }
        // dQ[r] += scale * sum_c dS[r][c] K[c]: thread = (row rr = tid / 4, columns cg + 4 i).
        {
            const int rr = tid >> 2;
            const int qi = i0 + rr;
            if (qi < Nq) {
                float part[AT_SIMT_PER];
#pragma unroll
                for (int i = 0; i < AT_SIMT_PER; ++i) part[i] = 0.0f;
                for (int cc = 0; cc < BC; ++cc) {
                    float ds = dSs[rr * 33 + cc];
                    const float* kr2 = Ks + cc * LK;
#pragma unroll
                    for (int i = 0; i < AT_SIMT_PER; ++i) {
                        int d = cg + 4 * i;
                        if (d < D) part[i] += ds * kr2[d];
                    }
                }
                float* dqr = dq_b + (long long)qi * D;
#pragma unroll
                for (int i = 0; i < AT_SIMT_PER; ++i) {
                    int d = cg + 4 * i;
                    if (d < D) atomicAdd(dqr + d, part[i] * scale);
                }
            }
        }
    }

    const int kj = j0 + c;
    if (kj < Nk) {
        typename T::raw* dkr = dk + ((long long)bh * Nk + kj) * D;
        typename T::raw* dvr = dv + ((long long)bh * Nk + kj) * Dv;
#pragma unroll
        for (int i = 0; i < AT_SIMT_PER; ++i) {
            int d = cg + 4 * i;
            if (d < D) T::st(dkr + d, dk_acc[i] * scale);
            if (d < Dv) T::st(dvr + d, dv_acc[i]);
        }
    }
}

template <class T>
__device__ __forceinline__ void at_bwd_dq(const float* __restrict__ acc,
                                          typename T::raw* __restrict__ dq, long long n) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        T::st(dq + i, acc[i]);
}

#define AT_GENERIC(SUF, T)                                                                     \
    extern "C" __global__ void __launch_bounds__(AT_SIMT_THREADS) attention_fwd_simt_##SUF(    \
        const T::raw* q, const T::raw* k, const T::raw* v, const unsigned* key_mask,           \
        T::raw* out, float* lse, int H, int Nq, int Nk, int D, int Dv, long long qsb,          \
        long long qsh, long long qsn, long long ksb, long long ksh, long long ksn,             \
        long long vsb, long long vsh, long long vsn, float scale_log2, int causal,              \
        int q_tiles) {                                                                         \
        at_fwd_simt<T>(q, k, v, key_mask, out, lse, H, Nq, Nk, D, Dv, qsb, qsh, qsn, ksb, ksh, \
                       ksn, vsb, vsh, vsn, scale_log2, causal, q_tiles);                       \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) attention_bwd_prep_##SUF(                \
        const T::raw* o, const T::raw* dout, float* delta, float* dq_acc, int H, int Nq,       \
        int D, int Dv, long long osb, long long osh, long long osn, long long gsb,             \
        long long gsh, long long gsn, long long rows) {                                        \
        if ((long long)blockIdx.x * 8 + (threadIdx.x >> 5) >= rows) return;                    \
        at_bwd_prep<T>(o, dout, delta, dq_acc, H, Nq, D, Dv, osb, osh, osn, gsb, gsh, gsn);    \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(AT_SIMT_THREADS) attention_bwd_simt_##SUF(    \
        const T::raw* q, const T::raw* k, const T::raw* v, const T::raw* dout,                 \
        const float* lse, const float* delta, const unsigned* key_mask, float* dq_acc,         \
        T::raw* dk, T::raw* dv, int H, int Nq, int Nk, int D, int Dv, long long qsb,           \
        long long qsh, long long qsn, long long ksb, long long ksh, long long ksn,             \
        long long vsb, long long vsh, long long vsn, long long gsb, long long gsh,             \
        long long gsn, float scale, int causal, int k_tiles) {                                 \
        at_bwd_simt<T>(q, k, v, dout, lse, delta, key_mask, dq_acc, dk, dv, H, Nq, Nk, D, Dv,  \
                       qsb, qsh, qsn, ksb, ksh, ksn, vsb, vsh, vsn, gsb, gsh, gsn, scale,      \
                       causal, k_tiles);                                                       \
    }                                                                                          \
    extern "C" __global__ void attention_bwd_dq_##SUF(const float* acc, T::raw* dq,            \
                                                      long long n) {                           \
        at_bwd_dq<T>(acc, dq, n);                                                              \
    }

AT_GENERIC(f32, AtF32)
AT_GENERIC(f16, AtF16)
AT_GENERIC(bf16, AtBF16)

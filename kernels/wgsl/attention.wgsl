// attention.wgsl: fused scaled dot-product attention, forward (FlashAttention-2 style: no
// Nq x Nk buffer in device memory), with causal and key-padding masks and the log-sum-exp.
//
// What it computes: s_ij = scale * q_i . k_j; query i sees key j iff the key-padding mask keeps
// key j (nonzero) and, when causal, j <= i + Nk - Nq (aligned bottom right, tested as
// j + Nq <= i + Nk in u32). lse_i = ln sum_{visible j} e^{s_ij} (f32),
// out_i = sum_j e^{s_ij - lse_i} v_j. A query that sees no key gets out_i = 0, lse_i = -inf.
//
// Shapes: q is (B, H, Nq, D), k is (B, H, Nk, D), v is (B, H, Nk, DV), each read through its
// four strides (any view: heads permuted out of (B, N, H, D), narrowed rows, broadcasts);
// mask is (B, Nk) u32 read through its two strides; out is (B, H, Nq, DV) contiguous in T,
// lse (B, H, Nq) contiguous f32 (written as its bits, so -inf needs no infinite arithmetic).
//
// Params (u32 words; the backward file uses the same first 25 words):
//   0 H, 1 Nq, 2 Nk, 3 scale (f32 bits), 4 causal (0/1), 5 has_mask (0/1), 6 B,
//   7..12 q view: offset, stride b, stride h, stride n, stride d; 12..17 k view; 17..22 v view;
//   22..25 mask view: offset, stride b, stride n (unused when has_mask is 0).
//
// Overrides: D and DV (head dims: loop bounds known when the pipeline is built), BQ (query rows
// per workgroup), BK (keys per tile), TR (invocations per query row). The host picks the tiles
// so that the workgroup arrays fit, BK % TR == 0, BK / TR <= MAX_SC and ceil(DV / TR) <= MAX_ACC.
//
// Launch: workgroups (ceil(Nq / BQ), H, B) of BQ * TR invocations.
//
// variants (T/U): f32/f32 f16/f16

override D: u32 = 64u;
override DV: u32 = 64u;
override BQ: u32 = 16u;
override BK: u32 = 16u;
override TR: u32 = 8u;

override WG: u32 = BQ * TR;
// Rows of the workgroup arrays have an odd stride in words, so that invocations reading
// different rows at the same column hit different banks.
override QS: u32 = D | 1u;
override VS: u32 = DV | 1u;
// Divisor of the DV-wide tile loads, which do not run when DV is 0 (a zero constant
// divisor does not validate).
override DV1: u32 = max(DV, 1u);
override PS: u32 = BK + 1u;
// Output columns each invocation owns (every TR-th from its lane) and keys it scores per tile.
override NA: u32 = (DV + TR - 1u) / TR;
override NS: u32 = BK / TR;
override Q_WORDS: u32 = BQ * QS;
override K_WORDS: u32 = BK * QS;
override V_WORDS: u32 = BK * VS;
override P_WORDS: u32 = BQ * PS;

const MAX_ACC: u32 = 32u;
const MAX_SC: u32 = 8u;
// The score of a masked key and the running max before any key: finite, so that no infinity
// ever enters the arithmetic (WGSL lets implementations assume there is none).
const NEG_BIG: f32 = -1.0e30;
const NEG_INF_BITS: u32 = 0xff800000u;

const P_Q: u32 = 7u;
const P_K: u32 = 12u;
const P_V: u32 = 17u;
const P_MASK: u32 = 22u;

@group(0) @binding(1) var<storage, read_write> out: array<T>;
@group(0) @binding(2) var<storage, read_write> lse: array<u32>;
@group(0) @binding(3) var<storage, read> q: array<T>;
@group(0) @binding(4) var<storage, read> k: array<T>;
@group(0) @binding(5) var<storage, read> v: array<T>;
@group(0) @binding(6) var<storage, read> mask: array<u32>;

// q_sh is (BQ, D): the workgroup's query rows; k_sh (BK, D) and v_sh (BK, DV): one key tile;
// s_sh and p_sh (BQ, BK): scores and probabilities of the tile; keep_sh (BK): keys the padding
// mask keeps (and that exist).
var<workgroup> q_sh: array<f32, Q_WORDS>;
var<workgroup> k_sh: array<f32, K_WORDS>;
var<workgroup> v_sh: array<f32, V_WORDS>;
var<workgroup> s_sh: array<f32, P_WORDS>;
var<workgroup> p_sh: array<f32, P_WORDS>;
var<workgroup> keep_sh: array<u32, BK>;

// attention_fwd: one workgroup per BQ query rows of one (b, h) = (workgroup_id.z, .y); TR
// invocations per row (lane t of row r owns output columns t, t + TR, ...). Algorithm: stage
// the Q rows in workgroup memory once; stream K and V in tiles of BK keys (only up
// to the last key the tile's last row sees when causal); per tile each invocation scores BK / TR
// keys of its row, the row's max comes from s_sh, the probabilities e^{s - m_new} go to p_sh,
// and each invocation rescales its accumulators by e^{m_old - m_new} and adds P V for its
// columns (online softmax, all in f32). Finally out = acc / l and lse = m + ln l.
@compute @workgroup_size(WG)
fn attention_fwd(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let heads = p[0];
    let nq = p[1];
    let nk = p[2];
    let scale = pf(3u);
    let causal = p[4] != 0u;
    let has_mask = p[5] != 0u;
    let b = wid.z;
    let h = wid.y;
    let row0 = wid.x * BQ;
    let r = tid / TR;
    let t = tid % TR;
    let i = row0 + r;

    // Not shared with attention_backward.wgsl's stage_*: other bindings, and bases hoisted here.
    // q rows of this (b, h): q[qb + n * qn + d * qd].
    let qb = p[P_Q] + b * p[P_Q + 1u] + h * p[P_Q + 2u];
    let qn = p[P_Q + 3u];
    let qd = p[P_Q + 4u];
    let kb = p[P_K] + b * p[P_K + 1u] + h * p[P_K + 2u];
    let kn = p[P_K + 3u];
    let kd = p[P_K + 4u];
    let vb = p[P_V] + b * p[P_V + 1u] + h * p[P_V + 2u];
    let vn = p[P_V + 3u];
    let vd = p[P_V + 4u];
    let mb = p[P_MASK] + b * p[P_MASK + 1u];
    let mn = p[P_MASK + 2u];

    for (var x = tid; x < BQ * D; x += WG) {
        let rr = x / D;
        let d = x % D;
        var val = 0.0;
        if (row0 + rr < nq) {
            val = f32(q[qb + (row0 + rr) * qn + d * qd]);
        }
        q_sh[rr * QS + d] = val;
    }

    // Keys past kend are invisible to every row of the tile (causal: the tile's last row
    // sees keys j < last + 1 + Nk - Nq).
    var kend = nk;
    if (causal) {
        let last1 = min(row0 + BQ, nq);
        kend = select(0u, min(nk, last1 + nk - nq), last1 + nk > nq);
    }

    var m = NEG_BIG;
    var l = 0.0;
    // Function-scope variables start zeroed.
    var acc: array<f32, MAX_ACC>;
    var sc: array<f32, MAX_SC>;
    for (var k0 = 0u; k0 < kend; k0 += BK) {
        // Stage the key tile: k_sh is (BK, D), v_sh (BK, DV), zero past Nk.
        for (var x = tid; x < BK * D; x += WG) {
            let j = x / D;
            let d = x % D;
            var val = 0.0;
            if (k0 + j < nk) {
                val = f32(k[kb + (k0 + j) * kn + d * kd]);
            }
            k_sh[j * QS + d] = val;
        }
        for (var x = tid; x < BK * DV; x += WG) {
            let j = x / DV1;
            let e = x % DV1;
            var val = 0.0;
            if (k0 + j < nk) {
                val = f32(v[vb + (k0 + j) * vn + e * vd]);
            }
            v_sh[j * VS + e] = val;
        }
        for (var x = tid; x < BK; x += WG) {
            var keep = k0 + x < kend;
            if (keep && has_mask) {
                keep = mask[mb + (k0 + x) * mn] != 0u;
            }
            keep_sh[x] = select(0u, 1u, keep);
        }
        workgroupBarrier();

        // Scores of this lane's keys j = t, t + TR, ... (NEG_BIG where masked).
        for (var c = 0u; c < NS; c++) {
            let j = t + c * TR;
            var s = NEG_BIG;
            if (keep_sh[j] != 0u && (!causal || k0 + j + nq <= i + nk)) {
                var dot = 0.0;
                for (var d = 0u; d < D; d++) {
                    dot += q_sh[r * QS + d] * k_sh[j * QS + d];
                }
                s = dot * scale;
            }
            sc[c] = s;
            s_sh[r * PS + j] = s;
        }
        workgroupBarrier();

        var m_new = m;
        for (var j = 0u; j < BK; j++) {
            m_new = max(m_new, s_sh[r * PS + j]);
        }
        for (var c = 0u; c < NS; c++) {
            p_sh[r * PS + t + c * TR] = select(0.0, exp(sc[c] - m_new), sc[c] > NEG_BIG);
        }
        workgroupBarrier();

        // exp(NEG_BIG - finite) is 0: the first visible key drops the (empty) history.
        let corr = exp(m - m_new);
        var rs = 0.0;
        for (var j = 0u; j < BK; j++) {
            rs += p_sh[r * PS + j];
        }
        l = l * corr + rs;
        for (var c = 0u; c < NA; c++) {
            let e = t + c * TR;
            if (e < DV) {
                var a = acc[c] * corr;
                for (var j = 0u; j < BK; j++) {
                    a += p_sh[r * PS + j] * v_sh[j * VS + e];
                }
                acc[c] = a;
            }
        }
        m = m_new;
        // The next tile overwrites k_sh, v_sh, s_sh, p_sh and keep_sh.
        workgroupBarrier();
    }

    if (i < nq) {
        // out and lse are contiguous: row (b, h, i).
        let row = (b * heads + h) * nq + i;
        let seen = l > 0.0;
        let inv = select(0.0, 1.0 / l, seen);
        for (var c = 0u; c < NA; c++) {
            let e = t + c * TR;
            if (e < DV) {
                out[row * DV + e] = T(acc[c] * inv);
            }
        }
        if (t == 0u) {
            lse[row] = select(NEG_INF_BITS, bitcast<u32>(m + log(max(l, 1.0e-30))), seen);
        }
    }
}

// attention_backward.wgsl: gradients of fused attention (attention.wgsl) with respect to q, k
// and v, recomputing the probabilities from the saved log-sum-exp (FlashAttention-2 style: no
// Nq x Nk buffer, no atomics; dK/dV and dQ come from two kernels that each recompute S).
//
// What it computes, with s_ij = scale * q_i . k_j over the keys query i sees (the forward's
// masks) and P_ij = e^{s_ij - lse_i} (0 where masked or where lse_i = -inf):
//   delta_i = dO_i . O_i, dS_ij = P_ij (dO_i . v_j - delta_i),
//   dq_i = scale sum_j dS_ij k_j, dk_j = scale sum_i dS_ij q_i, dv_j = sum_i P_ij dO_i.
//
// Shapes: q is (B, H, Nq, D), k is (B, H, Nk, D), v is (B, H, Nk, DV), o and dout are
// (B, H, Nq, DV), all read through their four strides; lse is (B, H, Nq) f32 read as bits
// through three strides; mask (B, Nk) u32 through two. dq (B, H, Nq, D), dk (B, H, Nk, D),
// dv (B, H, Nk, DV) are contiguous in T. aux is f32 scratch of 2 * B * H * Nq + B * Nk words:
// (lse_i or +BIG where lse_i = -inf, delta_i) per query row (b, h, i), then 1.0 or 0.0 per key
// (b, j) for the padding mask, so that the two gradient kernels bind 7 buffers at most.
//
// Params (u32 words; 0..25 as in attention.wgsl):
//   0 H, 1 Nq, 2 Nk, 3 scale (f32 bits), 4 causal (0/1), 5 has_mask (0/1), 6 B,
//   7..12 q view: offset, stride b, stride h, stride n, stride d; 12..17 k view; 17..22 v view;
//   22..25 mask view: offset, stride b, stride n; 25..30 o view; 30..35 dout view;
//   35..39 lse view: offset, stride b, stride h, stride n.
//
// Overrides: D and DV (head dims), BQ (query rows per tile), BK (keys per tile), TR
// (invocations per owned row), WG_PREP. The host picks the tiles so that the workgroup arrays
// fit and ceil(D / TR), ceil(DV / TR) <= MAX_ACC (the per-invocation accumulators).
//
// Launch, in this order:
//   attention_bwd_prep: 1-D grid-stride, WG_PREP invocations per workgroup, over
//       B * H * Nq + B * Nk items.
//   attention_bwd_dkdv: workgroups (ceil(Nk / BK), H, B) of BK * TR invocations.
//   attention_bwd_dq: workgroups (ceil(Nq / BQ), H, B) of BQ * TR invocations.
// The three entry points share one module; each binds its own buffers from binding 1 on (the
// prep's variables reuse binding numbers of the others'; no entry point uses both sets).
//
// variants (T/U): f32/f32 f16/f16

override D: u32 = 64u;
override DV: u32 = 64u;
override BQ: u32 = 16u;
override BK: u32 = 16u;
override TR: u32 = 8u;
override WG_PREP: u32 = 256u;

override WG_Q: u32 = BQ * TR;
override WG_K: u32 = BK * TR;
// Odd row strides (in words) of the workgroup arrays, against bank conflicts.
override QS: u32 = D | 1u;
override VS: u32 = DV | 1u;
// Divisor of the DV-wide tile loads, which do not run when DV is 0 (a zero constant
// divisor does not validate).
override DV1: u32 = max(DV, 1u);
override PS_Q: u32 = BK + 1u;
override PS_K: u32 = BQ + 1u;
// Columns of dq / dk (NA_D) and of dv (NA_V) each invocation owns: every TR-th from its lane.
override NA_D: u32 = (D + TR - 1u) / TR;
override NA_V: u32 = (DV + TR - 1u) / TR;
override Q_WORDS: u32 = BQ * QS;
override DO_WORDS: u32 = BQ * VS;
override K_WORDS: u32 = BK * QS;
override V_WORDS: u32 = BK * VS;
override DSQ_WORDS: u32 = BQ * PS_Q;
override DSK_WORDS: u32 = BK * PS_K;

const MAX_ACC: u32 = 32u;
// Stands in for lse = -inf: e^{s - BIG} is 0 for every finite score.
const BIG: f32 = 1.0e30;
const EXP_MASK: u32 = 0x7f800000u;

const P_Q: u32 = 7u;
const P_K: u32 = 12u;
const P_V: u32 = 17u;
const P_MASK: u32 = 22u;
const P_O: u32 = 25u;
const P_DO: u32 = 30u;
const P_LSE: u32 = 35u;

// attention_bwd_prep's buffers.
@group(0) @binding(1) var<storage, read_write> aux_out: array<f32>;
@group(0) @binding(2) var<storage, read> o_in: array<T>;
@group(0) @binding(3) var<storage, read> dout_prep: array<T>;
@group(0) @binding(4) var<storage, read> lse_in: array<u32>;
@group(0) @binding(5) var<storage, read> mask: array<u32>;

// attention_bwd_dq's (bindings 1..6) and attention_bwd_dkdv's (1..7). grad is dq or dk.
@group(0) @binding(1) var<storage, read_write> grad: array<T>;
@group(0) @binding(2) var<storage, read> q: array<T>;
@group(0) @binding(3) var<storage, read> k: array<T>;
@group(0) @binding(4) var<storage, read> v: array<T>;
@group(0) @binding(5) var<storage, read> dout: array<T>;
@group(0) @binding(6) var<storage, read> aux: array<f32>;
@group(0) @binding(7) var<storage, read_write> dv_out: array<T>;

// Tiles in workgroup memory: q_sh (BQ, D) and do_sh (BQ, DV) query rows, k_sh (BK, D) and
// v_sh (BK, DV) keys; dq: ds_q (BQ, BK); dkdv: p_k and ds_k (BK, BQ), row statistics
// lse_sh and delta_sh (BQ); keep_sh (BK) the mask flags of a key tile.
var<workgroup> q_sh: array<f32, Q_WORDS>;
var<workgroup> do_sh: array<f32, DO_WORDS>;
var<workgroup> k_sh: array<f32, K_WORDS>;
var<workgroup> v_sh: array<f32, V_WORDS>;
var<workgroup> ds_q: array<f32, DSQ_WORDS>;
var<workgroup> p_k: array<f32, DSK_WORDS>;
var<workgroup> ds_k: array<f32, DSK_WORDS>;
var<workgroup> lse_sh: array<f32, BQ>;
var<workgroup> delta_sh: array<f32, BQ>;
var<workgroup> keep_sh: array<f32, BK>;

// Storage index of element (b, h, n, d) of the 4-D view at word `at`.
fn at4(at: u32, b: u32, h: u32, n: u32, d: u32) -> u32 {
    return p[at] + b * p[at + 1u] + h * p[at + 2u] + n * p[at + 3u] + d * p[at + 4u];
}

// Whether query i sees key j by position (causal, bottom-right aligned).
fn in_window(i: u32, j: u32) -> bool {
    return p[4] == 0u || j + p[1] <= i + p[2];
}

// grad[row, d] = scale * acc for the columns d = t, t + TR, ... lane t owns.
fn store_grad(row: u32, t: u32, acc: array<f32, MAX_ACC>, scale: f32) {
    for (var c = 0u; c < NA_D; c++) {
        let d = t + c * TR;
        if (d < D) {
            grad[row * D + d] = T(acc[c] * scale);
        }
    }
}

// Stages query rows i0.. of (b, h) into q_sh (BQ, D) and do_sh (BQ, DV), zero past Nq; `step`
// is the workgroup size of the calling entry point.
fn stage_queries(tid: u32, step: u32, b: u32, h: u32, i0: u32, nq: u32) {
    for (var x = tid; x < BQ * D; x += step) {
        let ii = x / D;
        let d = x % D;
        var val = 0.0;
        if (i0 + ii < nq) {
            val = f32(q[at4(P_Q, b, h, i0 + ii, d)]);
        }
        q_sh[ii * QS + d] = val;
    }
    for (var x = tid; x < BQ * DV; x += step) {
        let ii = x / DV1;
        let e = x % DV1;
        var val = 0.0;
        if (i0 + ii < nq) {
            val = f32(dout[at4(P_DO, b, h, i0 + ii, e)]);
        }
        do_sh[ii * VS + e] = val;
    }
}

// Stages keys k0.. of (b, h) into k_sh (BK, D) and v_sh (BK, DV), zero past Nk.
fn stage_keys(tid: u32, step: u32, b: u32, h: u32, k0: u32, nk: u32) {
    for (var x = tid; x < BK * D; x += step) {
        let jj = x / D;
        let d = x % D;
        var val = 0.0;
        if (k0 + jj < nk) {
            val = f32(k[at4(P_K, b, h, k0 + jj, d)]);
        }
        k_sh[jj * QS + d] = val;
    }
    for (var x = tid; x < BK * DV; x += step) {
        let jj = x / DV1;
        let e = x % DV1;
        var val = 0.0;
        if (k0 + jj < nk) {
            val = f32(v[at4(P_V, b, h, k0 + jj, e)]);
        }
        v_sh[jj * VS + e] = val;
    }
}

// dS of staged query row ii against staged key row jj: P (dO . v - delta) with
// P = e^{scale q . k - lse}; (P, dS) of a visible pair (the caller checks visibility).
fn p_ds(ii: u32, jj: u32, scale: f32, lse_row: f32, delta_row: f32) -> vec2<f32> {
    var s = 0.0;
    for (var d = 0u; d < D; d++) {
        s += q_sh[ii * QS + d] * k_sh[jj * QS + d];
    }
    let pv = exp(s * scale - lse_row);
    var dp = 0.0;
    for (var e = 0u; e < DV; e++) {
        dp += do_sh[ii * VS + e] * v_sh[jj * VS + e];
    }
    return vec2<f32>(pv, pv * (dp - delta_row));
}

// attention_bwd_prep: one invocation per item. Items < B*H*Nq are query rows (b, h, i): delta =
// sum_e dO * O over DV in f32 and the row's lse (+BIG for -inf, recognised by its exponent
// bits) go to aux[2 row], aux[2 row + 1]. The next B*Nk items are keys (b, j): aux[2 B H Nq +
// b Nk + j] = 1 if the padding mask keeps the key (or there is no mask), else 0.
@compute @workgroup_size(WG_PREP)
fn attention_bwd_prep(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let heads = p[0];
    let nq = p[1];
    let nk = p[2];
    let has_mask = p[5] != 0u;
    let batch = p[6];
    let rows = batch * heads * nq;
    let n = rows + batch * nk;
    for (var x = gid.x; x < n; x += nwg.x * WG_PREP) {
        if (x < rows) {
            let i = x % nq;
            let bh = x / nq;
            let b = bh / heads;
            let h = bh % heads;
            var delta = 0.0;
            for (var e = 0u; e < DV; e++) {
                delta += f32(dout_prep[at4(P_DO, b, h, i, e)]) * f32(o_in[at4(P_O, b, h, i, e)]);
            }
            let bits = lse_in[p[P_LSE] + b * p[P_LSE + 1u] + h * p[P_LSE + 2u] + i * p[P_LSE + 3u]];
            let finite = (bits & EXP_MASK) != EXP_MASK;
            aux_out[2u * x] = select(BIG, bitcast<f32>(bits), finite);
            aux_out[2u * x + 1u] = delta;
        } else {
            let y = x - rows;
            let b = y / nk;
            let j = y % nk;
            var keep = true;
            if (has_mask) {
                keep = mask[p[P_MASK] + b * p[P_MASK + 1u] + j * p[P_MASK + 2u]] != 0u;
            }
            aux_out[x + rows] = select(0.0, 1.0, keep);
        }
    }
}

// attention_bwd_dkdv: one workgroup per BK keys of one (b, h) = (workgroup_id.z, .y); TR
// invocations per key (lane t of key row r owns dk and dv columns t, t + TR, ...). Algorithm:
// stage the K and V rows once; walk the query tiles of BQ rows that can see the tile (from the
// first row the causal window lets see its first key); per tile stage Q, dO, lse and delta,
// each invocation recomputes for BQ / TR queries of its key s, P = e^{s - lse} and
// dS = P (dO . v - delta) into p_k / ds_k, then adds P dO to its dv columns and dS Q to its dk
// columns (f32). dk is scaled by `scale` once at the end.
@compute @workgroup_size(WG_K)
fn attention_bwd_dkdv(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let heads = p[0];
    let nq = p[1];
    let nk = p[2];
    let scale = pf(3u);
    let rows = p[6] * heads * nq;
    let b = wid.z;
    let h = wid.y;
    let k0 = wid.x * BK;
    let r = tid / TR;
    let t = tid % TR;
    let j = k0 + r;

    stage_keys(tid, WG_K, b, h, k0, nk);
    // Whether this invocation's key exists and the padding mask keeps it.
    var keep = false;
    if (j < nk) {
        keep = aux[2u * rows + b * nk + j] != 0.0;
    }

    // The first query that sees key k0 when causal: i >= k0 + Nq - Nk.
    var i_start = 0u;
    if (p[4] != 0u && k0 + nq > nk) {
        i_start = k0 + nq - nk;
    }
    let row_base = (b * heads + h) * nq;
    var dk_acc: array<f32, MAX_ACC>;
    var dv_acc: array<f32, MAX_ACC>;
    for (var i0 = i_start; i0 < nq; i0 += BQ) {
        // Stage the query tile: q_sh (BQ, D), do_sh (BQ, DV), lse and delta; zero past Nq.
        stage_queries(tid, WG_K, b, h, i0, nq);
        for (var x = tid; x < BQ; x += WG_K) {
            var l = BIG;
            var dl = 0.0;
            if (i0 + x < nq) {
                l = aux[2u * (row_base + i0 + x)];
                dl = aux[2u * (row_base + i0 + x) + 1u];
            }
            lse_sh[x] = l;
            delta_sh[x] = dl;
        }
        workgroupBarrier();

        // P and dS of this lane's queries ii = t, t + TR, ... against key j.
        for (var ii = t; ii < BQ; ii += TR) {
            var pv = 0.0;
            var ds = 0.0;
            if (keep && i0 + ii < nq && in_window(i0 + ii, j)) {
                let pd = p_ds(ii, r, scale, lse_sh[ii], delta_sh[ii]);
                pv = pd.x;
                ds = pd.y;
            }
            p_k[r * PS_K + ii] = pv;
            ds_k[r * PS_K + ii] = ds;
        }
        workgroupBarrier();

        for (var c = 0u; c < NA_V; c++) {
            let e = t + c * TR;
            if (e < DV) {
                var a = dv_acc[c];
                for (var ii = 0u; ii < BQ; ii++) {
                    a += p_k[r * PS_K + ii] * do_sh[ii * VS + e];
                }
                dv_acc[c] = a;
            }
        }
        for (var c = 0u; c < NA_D; c++) {
            let d = t + c * TR;
            if (d < D) {
                var a = dk_acc[c];
                for (var ii = 0u; ii < BQ; ii++) {
                    a += ds_k[r * PS_K + ii] * q_sh[ii * QS + d];
                }
                dk_acc[c] = a;
            }
        }
        // The next tile overwrites every query-side array.
        workgroupBarrier();
    }

    if (j < nk) {
        // dk and dv are contiguous: row (b, h, j).
        let row = (b * heads + h) * nk + j;
        store_grad(row, t, dk_acc, scale);
        for (var c = 0u; c < NA_V; c++) {
            let e = t + c * TR;
            if (e < DV) {
                dv_out[row * DV + e] = T(dv_acc[c]);
            }
        }
    }
}

// attention_bwd_dq: one workgroup per BQ query rows of one (b, h); TR invocations per row
// (lane t of row r owns dq columns t, t + TR, ...). Algorithm: stage the Q and dO rows once,
// read the row's lse and delta; stream K and V in tiles of BK keys (up to the last key the
// tile's last row sees when causal); per tile each invocation recomputes s, P and
// dS = P (dO . v - delta) for BK / TR keys of its row into ds_q, then adds dS K to its dq
// columns (f32). dq is scaled by `scale` once at the end.
@compute @workgroup_size(WG_Q)
fn attention_bwd_dq(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let heads = p[0];
    let nq = p[1];
    let nk = p[2];
    let scale = pf(3u);
    let rows = p[6] * heads * nq;
    let b = wid.z;
    let h = wid.y;
    let row0 = wid.x * BQ;
    let r = tid / TR;
    let t = tid % TR;
    let i = row0 + r;

    stage_queries(tid, WG_Q, b, h, row0, nq);
    let row = (b * heads + h) * nq + i;
    var lse_i = BIG;
    var delta_i = 0.0;
    if (i < nq) {
        lse_i = aux[2u * row];
        delta_i = aux[2u * row + 1u];
    }

    var kend = nk;
    if (p[4] != 0u) {
        let last1 = min(row0 + BQ, nq);
        kend = select(0u, min(nk, last1 + nk - nq), last1 + nk > nq);
    }
    var dq_acc: array<f32, MAX_ACC>;
    for (var k0 = 0u; k0 < kend; k0 += BK) {
        stage_keys(tid, WG_Q, b, h, k0, nk);
        for (var x = tid; x < BK; x += WG_Q) {
            var keep = 0.0;
            if (k0 + x < kend) {
                keep = aux[2u * rows + b * nk + k0 + x];
            }
            keep_sh[x] = keep;
        }
        workgroupBarrier();

        for (var jj = t; jj < BK; jj += TR) {
            var ds = 0.0;
            if (keep_sh[jj] != 0.0 && i < nq && in_window(i, k0 + jj)) {
                ds = p_ds(r, jj, scale, lse_i, delta_i).y;
            }
            ds_q[r * PS_Q + jj] = ds;
        }
        workgroupBarrier();

        for (var c = 0u; c < NA_D; c++) {
            let d = t + c * TR;
            if (d < D) {
                var a = dq_acc[c];
                for (var jj = 0u; jj < BK; jj++) {
                    a += ds_q[r * PS_Q + jj] * k_sh[jj * QS + d];
                }
                dq_acc[c] = a;
            }
        }
        // The next tile overwrites k_sh, v_sh, keep_sh and ds_q.
        workgroupBarrier();
    }

    if (i < nq) {
        store_grad(row, t, dq_acc, scale);
    }
}

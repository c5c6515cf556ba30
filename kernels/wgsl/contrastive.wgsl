// contrastive.wgsl: CLIP's contrastive loss (the mean of the row-wise and column-wise
// cross-entropies of the logits scale * image @ text^T, diagonal as labels) and its gradients,
// without ever materialising the N x N logits.
//
// Shapes: x, y (N, D) of T, any strides (image and text, or text and image for the column
// pass); scale, d_loss one-element tensors and lse_rows, lse_cols (N) of f32 or f16, gathered
// first into one f32 `stats` buffer by contrastive_prep. S = scale * x @ y^T (N, N) is only
// ever held as one BM x BN tile. Memory beyond the inputs and outputs: O(N) f32 (stats, the
// diagonal, the per-row-tile partial sums of d_scale) plus one (N, D) f32 accumulator.
//
// Entry points:
//   contrastive_prep:  stats = concat of up to 4 segments (len, offset, stride, is_f16), each
//                      read from a buffer of f32 or f16 words; params 4 x (len, off, stride, half).
//   contrastive_lse:   lse[i] = logsumexp_j S[i, j] (f32), diag[i] = S[i, i] when p[8] = 1;
//                      one workgroup per BM rows walks every BN column tile: S tile by a tiled
//                      GEMM over D (BK at a time), then each thread folds its TM x TN values into
//                      per-row online (max, sum) pairs, combined across the TX threads of a row
//                      at the end. Called twice: (image, text) gives lse_rows and the diagonal,
//                      (text, image) lse_cols. Params N, D, x (off, s0, s1), y (off, s0, s1),
//                      write_diag; stats[0] = scale.
//   contrastive_loss:  loss = sum_i (lse_rows[i] + lse_cols[i] - 2 diag[i]) / (2N): one
//                      workgroup, tree reduction in f32. Params N.
//   contrastive_grad:  with W[i, j] = d_loss / (2N) * (exp(S[i,j] - lse_x[i])
//                      + exp(S[i,j] - lse_y[j]) - 2 [i == j]) (the logits' gradient),
//                      dx = scale * W @ y, and per row tile part[t] = sum W[i, j] (x_i . y_j)
//                      (d_scale's terms) when p[10] = 1. One workgroup per BM rows walks every
//                      BN column tile: S tile as in contrastive_lse, W tile into workgroup
//                      memory, then W @ y[tile] in D chunks of BN columns added to the f32
//                      accumulator `acc` (N, D) (rows owned by this workgroup: no races); the
//                      last column tile writes dx = T(scale * acc). Called twice with the roles
//                      of image and text (and of lse_rows and lse_cols) swapped: W^T for the
//                      text is W of the swapped call. Params N, D, x view, y view (as
//                      contrastive_lse), 8 lse_x at stats[p[8]..], 9 lse_y at stats[p[9]..],
//                      10 write_part; stats[0] = scale, stats[1] = d_loss.
//   contrastive_dscale: d_scale = sum of the n parts, stored in the scale's dtype (f32, or f16
//                      in the low half of the word); one workgroup. Params n, is_f16.
//
// Tiles: workgroups of TX x TY threads (overrides, default 16 x 16), TM x TN = 2 x 2 (consts)
// elements per thread: BM = TY*TM = BN = TX*TN = 32; BK (override, 16) of D per GEMM step.
// Workgroup memory: 2 BK x 32 operand tiles, a 32 x 32 W tile and a 32 x 32 y chunk (12 KiB).
// The row-tile kernels need BM == BN (the diagonal and the D chunks use the column mapping).
//
// Launch: contrastive_lse / contrastive_grad (any, 1, 1) workgroups, grid-stride over the
// ceil(N / BM) row tiles; contrastive_prep 1-D, WG threads, grid-stride; contrastive_loss and
// contrastive_dscale one workgroup of TX x TY threads.
//
// variants (T/U): f32/f32 f16/f16

override TX: u32 = 16u;
override TY: u32 = 16u;
override BK: u32 = 16u;
const TM: u32 = 2u;
const TN: u32 = 2u;
override BM: u32 = TY * TM;
override BN: u32 = TX * TN;
override XS: u32 = BK * BM;
override YS: u32 = BK * BN;
override WS: u32 = BM * BN;
override RED: u32 = BM * TX;
override THREADS: u32 = TX * TY;
override WG: u32 = 256u;

// The most negative finite f32: the running max before any value (exp(NEG - m) is 0 for any
// finite m, where -inf would give NaN for an all -inf row).
const NEG: f32 = -3.4028234e38;

// contrastive_prep
@group(0) @binding(1) var<storage, read_write> stats_out: array<f32>;
@group(0) @binding(2) var<storage, read> src0: array<u32>;
@group(0) @binding(3) var<storage, read> src1: array<u32>;
@group(0) @binding(4) var<storage, read> src2: array<u32>;
@group(0) @binding(5) var<storage, read> src3: array<u32>;

// contrastive_lse and contrastive_grad both read x and y at bindings 3 and 4.
@group(0) @binding(3) var<storage, read> x_in: array<T>;
@group(0) @binding(4) var<storage, read> y_in: array<T>;

// contrastive_lse
@group(0) @binding(1) var<storage, read_write> lse: array<f32>;
@group(0) @binding(2) var<storage, read_write> diag: array<f32>;
@group(0) @binding(5) var<storage, read> lstats: array<f32>;

// contrastive_loss
@group(0) @binding(1) var<storage, read_write> loss: array<f32>;
@group(0) @binding(2) var<storage, read> lse_r: array<f32>;
@group(0) @binding(3) var<storage, read> lse_c: array<f32>;
@group(0) @binding(4) var<storage, read> diag_in: array<f32>;

// contrastive_grad
@group(0) @binding(1) var<storage, read_write> dx: array<T>;
@group(0) @binding(2) var<storage, read_write> acc_g: array<f32>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>;
@group(0) @binding(6) var<storage, read> gstats: array<f32>;

// contrastive_dscale
@group(0) @binding(1) var<storage, read_write> dscale: array<u32>;
@group(0) @binding(2) var<storage, read> part_in: array<f32>;

var<workgroup> xs: array<f32, XS>;
var<workgroup> ys: array<f32, YS>;
var<workgroup> wt: array<f32, WS>;
var<workgroup> yc: array<f32, WS>;
var<workgroup> red_m: array<f32, RED>;
var<workgroup> red_s: array<f32, RED>;
var<workgroup> red: array<f32, THREADS>;

// Element `i` of a buffer of f32 (half = 0) or f16 (half = 1) words.
fn word_value(w: u32, i: u32, half: u32) -> f32 {
    if half == 1u {
        return unpack2x16float(w)[i & 1u];
    }
    return bitcast<f32>(w);
}

fn word_index(i: u32, half: u32) -> u32 {
    return select(i, i >> 1u, half == 1u);
}

// Gathers the segments into stats (see the header).
@compute @workgroup_size(WG)
fn contrastive_prep(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let total = p[0] + p[4] + p[8] + p[12];
    for (var t = gid.x; t < total; t += nwg.x * WG) {
        var seg = 0u;
        var k = t;
        while k >= p[seg * 4u] {
            k -= p[seg * 4u];
            seg++;
        }
        let idx = p[seg * 4u + 1u] + k * p[seg * 4u + 2u];
        let half = p[seg * 4u + 3u];
        let wi = word_index(idx, half);
        var w: u32;
        switch seg {
            case 0u: { w = src0[wi]; }
            case 1u: { w = src1[wi]; }
            case 2u: { w = src2[wi]; }
            default: { w = src3[wi]; }
        }
        stats_out[t] = word_value(w, idx, half);
    }
}

// Row-major-ish index of x[i, d] / y[j, d] in their views (params at `at`: off, s0, s1).
fn view_at(at: u32, i: u32, d: u32) -> u32 {
    return p[at] + i * p[at + 1u] + d * p[at + 2u];
}

// acc += xs^T ys over the BK steps of the operand tiles.
fn tile_product(acc: ptr<function, array<f32, TM * TN>>, tx: u32, ty: u32) {
    for (var l = 0u; l < BK; l++) {
        var a: array<f32, TM>;
        for (var r = 0u; r < TM; r++) {
            a[r] = xs[l * BM + ty + r * TY];
        }
        for (var c = 0u; c < TN; c++) {
            let b = ys[l * BN + tx + c * TX];
            for (var r = 0u; r < TM; r++) {
                (*acc)[r * TN + c] += a[r] * b;
            }
        }
    }
}

// acc = the (i0.., j0..) tile of x @ y^T (zero outside N x N): xs[l][i] = x[i0 + i, d0 + l],
// ys[l][j] = y[j0 + j, d0 + l] (d fastest) staged BK columns of D at a time.
fn dot_tile(acc: ptr<function, array<f32, TM * TN>>, lid: vec3<u32>, i0: u32, j0: u32, N: u32, D: u32) {
    let tid = lid.y * TX + lid.x;
    for (var d0 = 0u; d0 < D; d0 += BK) {
        workgroupBarrier();
        for (var t = tid; t < XS; t += THREADS) {
            let l = t % BK;
            let i = t / BK;
            var v = 0.0;
            if i0 + i < N && d0 + l < D {
                v = f32(x_in[view_at(2u, i0 + i, d0 + l)]);
            }
            xs[l * BM + i] = v;
        }
        for (var t = tid; t < YS; t += THREADS) {
            let l = t % BK;
            let j = t / BK;
            var v = 0.0;
            if j0 + j < N && d0 + l < D {
                v = f32(y_in[view_at(5u, j0 + j, d0 + l)]);
            }
            ys[l * BN + j] = v;
        }
        workgroupBarrier();
        tile_product(acc, lid.x, lid.y);
    }
}

// Row log-sum-exps of S = scale * x @ y^T by row tiles (see the header).
@compute @workgroup_size(TX, TY)
fn contrastive_lse(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let N = p[0];
    let D = p[1];
    let scale = lstats[0];
    let write_diag = p[8] == 1u;
    let tid = lid.y * TX + lid.x;
    let nt = TX * TY;
    let tiles = (N + BM - 1u) / BM;
    for (var rt = wid.x; rt < tiles; rt += nwg.x) {
        let i0 = rt * BM;
        // Online (max, sum of exp(v - max)) of each of this thread's TM rows.
        var m: array<f32, TM>;
        var s: array<f32, TM>;
        for (var r = 0u; r < TM; r++) {
            m[r] = NEG;
        }
        for (var j0 = 0u; j0 < N; j0 += BN) {
            var acc: array<f32, TM * TN>;
            dot_tile(&acc, lid, i0, j0, N, D);
            for (var r = 0u; r < TM; r++) {
                let i = i0 + lid.y + r * TY;
                for (var c = 0u; c < TN; c++) {
                    let j = j0 + lid.x + c * TX;
                    if j >= N {
                        continue;
                    }
                    let v = scale * acc[r * TN + c];
                    if v > m[r] {
                        s[r] = s[r] * exp(m[r] - v) + 1.0;
                        m[r] = v;
                    } else {
                        s[r] += exp(v - m[r]);
                    }
                    if write_diag && i == j {
                        diag[i] = v;
                    }
                }
            }
        }
        // Combine the TX partial (max, sum) pairs of each row.
        for (var r = 0u; r < TM; r++) {
            let row = lid.y + r * TY;
            red_m[row * TX + lid.x] = m[r];
            red_s[row * TX + lid.x] = s[r];
        }
        workgroupBarrier();
        for (var row = tid; row < BM; row += nt) {
            if i0 + row < N {
                var mx = NEG;
                for (var q = 0u; q < TX; q++) {
                    mx = max(mx, red_m[row * TX + q]);
                }
                var sum = 0.0;
                for (var q = 0u; q < TX; q++) {
                    sum += red_s[row * TX + q] * exp(red_m[row * TX + q] - mx);
                }
                lse[i0 + row] = mx + log(sum);
            }
        }
        workgroupBarrier();
    }
}

// The sum of `v` over the TX x TY threads of the workgroup (a tree: each round folds the upper
// half of the live width onto the lower, for any thread count).
fn workgroup_sum(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var width = THREADS; width > 1u; width = (width + 1u) / 2u) {
        let half = (width + 1u) / 2u;
        if tid < width - half {
            red[tid] += red[tid + half];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

// The scalar loss from the two log-sum-exps and the diagonal (one workgroup).
@compute @workgroup_size(TX, TY)
fn contrastive_loss(@builtin(local_invocation_id) lid: vec3<u32>) {
    let N = p[0];
    let tid = lid.y * TX + lid.x;
    var s = 0.0;
    for (var i = tid; i < N; i += THREADS) {
        s += (lse_r[i] - diag_in[i]) + (lse_c[i] - diag_in[i]);
    }
    let total = workgroup_sum(tid, s);
    if tid == 0u {
        loss[0] = total / f32(2u * N);
    }
}

// Gradient of x by row tiles, and d_scale's partial sums (see the header).
@compute @workgroup_size(TX, TY)
fn contrastive_grad(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let N = p[0];
    let D = p[1];
    let scale = gstats[0];
    let g = gstats[1] * 0.5 / f32(N);
    let lse_x = p[8];
    let lse_y = p[9];
    let write_part = p[10] == 1u;
    let tid = lid.y * TX + lid.x;
    let nt = TX * TY;
    let tiles = (N + BM - 1u) / BM;
    for (var rt = wid.x; rt < tiles; rt += nwg.x) {
        let i0 = rt * BM;
        var ds = 0.0;
        for (var j0 = 0u; j0 < N; j0 += BN) {
            // The dot-product tile, as in contrastive_lse.
            var acc: array<f32, TM * TN>;
            dot_tile(&acc, lid, i0, j0, N, D);
            // wt[i][j] = W[i0 + i, j0 + j] (zero outside the matrix).
            workgroupBarrier();
            for (var r = 0u; r < TM; r++) {
                let i = i0 + lid.y + r * TY;
                for (var c = 0u; c < TN; c++) {
                    let j = j0 + lid.x + c * TX;
                    var w = 0.0;
                    if i < N && j < N {
                        let dot = acc[r * TN + c];
                        let v = scale * dot;
                        let eye = select(0.0, 2.0, i == j);
                        w = (exp(v - gstats[lse_x + i]) + exp(v - gstats[lse_y + j]) - eye) * g;
                        ds += w * dot;
                    }
                    wt[(lid.y + r * TY) * BN + lid.x + c * TX] = w;
                }
            }
            // acc_g[i0.., d] += W tile @ y[j0.., d] for D chunks of BN columns.
            let last = j0 + BN >= N;
            for (var c0 = 0u; c0 < D; c0 += BN) {
                workgroupBarrier();
                // yc[l][d] = y[j0 + l, c0 + d] (d fastest).
                for (var t = tid; t < WS; t += nt) {
                    let d = t % BN;
                    let l = t / BN;
                    var v = 0.0;
                    if j0 + l < N && c0 + d < D {
                        v = f32(y_in[view_at(5u, j0 + l, c0 + d)]);
                    }
                    yc[l * BN + d] = v;
                }
                workgroupBarrier();
                var o: array<f32, TM * TN>;
                for (var l = 0u; l < BN; l++) {
                    var a: array<f32, TM>;
                    for (var r = 0u; r < TM; r++) {
                        a[r] = wt[(lid.y + r * TY) * BN + l];
                    }
                    for (var c = 0u; c < TN; c++) {
                        let b = yc[l * BN + lid.x + c * TX];
                        for (var r = 0u; r < TM; r++) {
                            o[r * TN + c] += a[r] * b;
                        }
                    }
                }
                for (var r = 0u; r < TM; r++) {
                    let i = i0 + lid.y + r * TY;
                    for (var c = 0u; c < TN; c++) {
                        let d = c0 + lid.x + c * TX;
                        if i < N && d < D {
                            let at = i * D + d;
                            var v = o[r * TN + c];
                            if j0 > 0u {
                                v += acc_g[at];
                            }
                            if last {
                                dx[at] = T(scale * v);
                            } else {
                                acc_g[at] = v;
                            }
                        }
                    }
                }
            }
        }
        // This row tile's share of d_scale.
        let total = workgroup_sum(tid, ds);
        if tid == 0u && write_part {
            part[rt] = total;
        }
    }
}

// d_scale = the sum of the row tiles' parts, stored in the scale's dtype (one workgroup).
@compute @workgroup_size(TX, TY)
fn contrastive_dscale(@builtin(local_invocation_id) lid: vec3<u32>) {
    let n = p[0];
    let tid = lid.y * TX + lid.x;
    var s = 0.0;
    for (var i = tid; i < n; i += THREADS) {
        s += part_in[i];
    }
    let total = workgroup_sum(tid, s);
    if tid == 0u {
        if p[1] == 1u {
            dscale[0] = pack2x16float(vec2<f32>(total, 0.0));
        } else {
            dscale[0] = bitcast<u32>(total);
        }
    }
}

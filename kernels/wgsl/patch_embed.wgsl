// patch_embed.wgsl: patch embedding (a convolution whose stride equals its kernel, flattened to
// rows, with bias, class row and position embedding) and its gradients; patches are gathered
// from the images on the fly, never stored (no im2col buffer).
//
// Shapes: images (B, C, H, W) of any strides; weight (E, C, P, P) of any strides, read as the
// matrix W (E, K) with K = C*P*P and k = (c*P + py)*P + px; gh = H / P, gw = W / P, np = gh*gw
// patches per image (pixels at or below row gh*P or right of column gw*P belong to no patch);
// patch row m = b*np + gy*gw + gx; patches (B*np, K) [m, k] = src2[b, c, gy*P + py, gx*P + px].
// `first` is 1 with a class row, else 0; rows = first + np; out and d_out are (B, rows, E), and
// G (B*np, E) is the patch rows of d_out. Outputs are contiguous; arithmetic is f32.
//
// Entry points (all tiles and sums accumulate in f32, outputs are rounded to T once):
//   patch_embed_fwd:     out[b, first + i] = patches[b*np + i] @ W^T + bias + pos[first + i];
//                        out[b, 0] = cls + pos[0] (the class row).
//   patch_embed_dweight: d_weight (E, K) = G^T @ patches.
//   patch_embed_dimages: d_images[b, c, gy*P + py, gx*P + px] = (G @ W)[m, k], scattered back
//                        (every pixel belongs to at most one patch: plain stores, no atomics).
//   patch_embed_edge:    d_images = 0 on the pixels no patch covers.
//   patch_embed_colsum:  column sums of d_out (d_bias, d_class, d_position).
//
// The three GEMMs share one tiling: a workgroup of TX x TY threads computes a BM x BN tile of
// C = L @ R (BM = TY*TM, BN = TX*TN), stepping through the reduction dimension BK at a time; the
// L and R tiles are gathered from global memory into f32 workgroup memory (`ls` [l][i] and `rs`
// [l][j]) and thread (tx, ty) accumulates the TM x TN elements at rows ty + r*TY, columns
// tx + c*TX in registers. Row tiles go along grid y and z (tile = y + z * num_workgroups.y),
// column tiles along x. TX, TY, BK are overrides (defaults 16, 16, 16: 64 x 64 tiles, 256
// threads, 8 KiB of workgroup memory); TM = TN = 4 are consts (register arrays need them).
//
// Params (words) of the GEMM kernels:
//   0 B, 1 C, 2 P, 3 gw, 4 np, 5 E, 6 first, 7 flags (1: bias, 2: pos), 8 H, 9 W,
//   10..15 images: offset, strides (b, c, y, x); 15..20 weight: offset, strides (e, c, y, x),
//   fwd: 20, 21 bias offset, stride; 22, 23 cls offset, stride; 24..27 pos offset, strides (r, e);
//   backward: 20..24 d_out offset, strides (b, r, e).
// patch_embed_colsum: out[j] = sum_{i < R} src[base + (j / J2)*sj1 + (j % J2)*sj2
//   + (i / R2)*si1 + (i % R2)*si2] for j < J; params J, J2, R, R2, base, sj1, sj2, si1, si2.
// patch_embed_edge: params planes (B*C), H, W, gh*P, gw*P.
//
// Launch: GEMMs (ceil(cols / BN), y, z) workgroups with y*z >= ceil(rows / BM);
// colsum (any, 1, 1) workgroups of CW x CR threads (grid-stride over column groups);
// edge 1-D, WG threads, any number of workgroups (grid-stride).
//
// variants (T/U): f32/f32 f16/f16

override TX: u32 = 16u;
override TY: u32 = 16u;
override BK: u32 = 16u;
const TM: u32 = 4u;
const TN: u32 = 4u;
override BM: u32 = TY * TM;
override BN: u32 = TX * TN;
override LS: u32 = BK * BM;
override RS: u32 = BK * BN;

override CW: u32 = 32u;
override CR: u32 = 8u;
override CS: u32 = CW * CR;
override WG: u32 = 256u;

// Word positions of the params.
const IMG: u32 = 10u;
const WT: u32 = 15u;
const BIAS: u32 = 20u;
const CLS: u32 = 22u;
const POS: u32 = 24u;
const DOUT: u32 = 20u;

@group(0) @binding(1) var<storage, read_write> out: array<T>;
// The images (patch_embed_fwd, patch_embed_dweight) or d_out (patch_embed_dimages,
// patch_embed_colsum): one variable, so that the shared tile loaders (`operand`) bind the same
// slot in every entry point.
@group(0) @binding(2) var<storage, read> src2: array<T>;
// The weight (patch_embed_fwd, patch_embed_dimages) or d_out (patch_embed_dweight).
@group(0) @binding(3) var<storage, read> src3: array<T>;
@group(0) @binding(4) var<storage, read> bias: array<T>;
@group(0) @binding(5) var<storage, read> cls: array<T>;
@group(0) @binding(6) var<storage, read> pos: array<T>;

var<workgroup> ls: array<f32, LS>;
var<workgroup> rs: array<f32, RS>;
var<workgroup> colpart: array<f32, CS>;

// Storage index of the first pixel (c = py = px = 0) of patch row m < B*np.
fn patch_origin(m: u32) -> u32 {
    let P = p[2];
    let gw = p[3];
    let i = m % p[4];
    return p[IMG] + (m / p[4]) * p[IMG + 1u] + (i / gw) * P * p[IMG + 3u]
        + (i % gw) * P * p[IMG + 4u];
}

// Offset of element k = (c, py, px) of a patch for the strides (c, y, x) at word `at`.
fn patch_offset(k: u32, at: u32) -> u32 {
    let P = p[2];
    let pp = P * P;
    let r = k % pp;
    return (k / pp) * p[at] + (r / P) * p[at + 1u] + (r % P) * p[at + 2u];
}

// Storage index of weight element W[e, k].
fn weight_index(e: u32, k: u32) -> u32 {
    return p[WT] + e * p[WT + 1u] + patch_offset(k, WT + 2u);
}

// Storage index of G[m, e]: d_out[b, first + i, e] for patch row m = b*np + i.
fn grad_index(m: u32, e: u32) -> u32 {
    let np = p[4];
    return p[DOUT] + (m / np) * p[DOUT + 1u] + (p[6] + m % np) * p[DOUT + 2u] + e * p[DOUT + 3u];
}

// The row tile of this workgroup (grid y and z).
fn row_tile(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y + wid.z * nwg.y;
}

// acc += ls^T rs over the BK reduction steps of the tiles in workgroup memory.
fn tile_product(acc: ptr<function, array<f32, TM * TN>>, tx: u32, ty: u32) {
    for (var l = 0u; l < BK; l++) {
        var a: array<f32, TM>;
        for (var r = 0u; r < TM; r++) {
            a[r] = ls[l * BM + ty + r * TY];
        }
        for (var c = 0u; c < TN; c++) {
            let b = rs[l * BN + tx + c * TX];
            for (var r = 0u; r < TM; r++) {
                (*acc)[r * TN + c] += a[r] * b;
            }
        }
    }
}

// The GEMM operands, read at (a, b) with b the coordinate that is contiguous (or nearly) in
// memory: output rows by k (class rows read zero), patch rows by k, W (e, k), and G (m, e)
// from d_out at binding 2 (src2) or at binding 3 (src3).
const SRC_OUT_ROWS: u32 = 0u;
const SRC_PATCHES: u32 = 1u;
const SRC_WEIGHT: u32 = 2u;
const SRC_GRAD2: u32 = 3u;
const SRC_GRAD3: u32 = 4u;

fn operand(src: u32, a: u32, b: u32) -> f32 {
    switch src {
        case 0u: {
            let rows = p[6] + p[4];
            let r = a % rows;
            if r < p[6] {
                return 0.0;
            }
            let m = (a / rows) * p[4] + r - p[6];
            return f32(src2[patch_origin(m) + patch_offset(b, IMG + 2u)]);
        }
        case 1u: {
            return f32(src2[patch_origin(a) + patch_offset(b, IMG + 2u)]);
        }
        case 2u: {
            return f32(src3[weight_index(a, b)]);
        }
        case 3u: {
            return f32(src2[grad_index(a, b)]);
        }
        default: {
            return f32(src3[grad_index(a, b)]);
        }
    }
}

// Element t of a BK x `width` operand tile: its slot l * width + i and the value of operand
// `src` at (a0 + i, b0 + l) when l_is_b (l fastest), else at (a0 + l, b0 + i) (i fastest);
// zero outside a < a_end, b < b_end. b varies fastest across threads either way.
struct TileElem {
    slot: u32,
    v: f32,
}

fn tile_element(src: u32, t: u32, width: u32, a0: u32, a_end: u32, b0: u32, b_end: u32, l_is_b: bool) -> TileElem {
    var l: u32;
    var i: u32;
    var a: u32;
    var b: u32;
    if l_is_b {
        l = t % BK;
        i = t / BK;
        a = a0 + i;
        b = b0 + l;
    } else {
        i = t % width;
        l = t / width;
        a = a0 + l;
        b = b0 + i;
    }
    var v = 0.0;
    if a < a_end && b < b_end {
        v = operand(src, a, b);
    }
    return TileElem(l * width + i, v);
}

// Gathers the ls tile (BK x BM) and the rs tile (BK x BN) of one reduction step (see
// tile_element for the arguments of each).
fn stage_ls(tid: u32, src: u32, a0: u32, a_end: u32, b0: u32, b_end: u32, l_is_b: bool) {
    for (var t = tid; t < LS; t += TX * TY) {
        let e = tile_element(src, t, BM, a0, a_end, b0, b_end, l_is_b);
        ls[e.slot] = e.v;
    }
}

fn stage_rs(tid: u32, src: u32, a0: u32, a_end: u32, b0: u32, b_end: u32, l_is_b: bool) {
    for (var t = tid; t < RS; t += TX * TY) {
        let e = tile_element(src, t, BN, a0, a_end, b0, b_end, l_is_b);
        rs[e.slot] = e.v;
    }
}

// Forward: a tiled GEMM over the B*rows output rows (class rows read zero patches and take
// cls instead of the bias) by the E columns, reducing over K; A tiles gathered from the images,
// W tiles from the weight, both with k fastest across threads (contiguous pixels / weight rows).
@compute @workgroup_size(TX, TY)
fn patch_embed_fwd(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let B = p[0];
    let K = p[1] * p[2] * p[2];
    let np = p[4];
    let E = p[5];
    let first = p[6];
    let rows = first + np;
    let mrows = B * rows;
    let m0 = row_tile(wid, nwg) * BM;
    if m0 >= mrows {
        return;
    }
    let n0 = wid.x * BN;
    let tid = lid.y * TX + lid.x;
    var acc: array<f32, TM * TN>;
    for (var k0 = 0u; k0 < K; k0 += BK) {
        workgroupBarrier();
        // ls[l][i] = patches row of output row m0 + i, column k0 + l (zero for class rows).
        stage_ls(tid, SRC_OUT_ROWS, m0, mrows, k0, K, true);
        // rs[l][j] = W[n0 + j, k0 + l].
        stage_rs(tid, SRC_WEIGHT, n0, E, k0, K, true);
        workgroupBarrier();
        tile_product(&acc, lid.x, lid.y);
    }
    let has_bias = (p[7] & 1u) != 0u;
    let has_pos = (p[7] & 2u) != 0u;
    for (var r = 0u; r < TM; r++) {
        let row = m0 + lid.y + r * TY;
        if row >= mrows {
            continue;
        }
        let rr = row % rows;
        for (var c = 0u; c < TN; c++) {
            let e = n0 + lid.x + c * TX;
            if e >= E {
                continue;
            }
            var v = acc[r * TN + c];
            if rr < first {
                v = f32(cls[p[CLS] + e * p[CLS + 1u]]);
            } else if has_bias {
                v += f32(bias[p[BIAS] + e * p[BIAS + 1u]]);
            }
            if has_pos {
                v += f32(pos[p[POS] + rr * p[POS + 1u] + e * p[POS + 2u]]);
            }
            out[row * E + e] = T(v);
        }
    }
}

// Weight gradient: a tiled GEMM over E rows by K columns, reducing over the B*np patch rows;
// G tiles read with e fastest, patch tiles gathered with k fastest.
@compute @workgroup_size(TX, TY)
fn patch_embed_dweight(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let M = p[0] * p[4];
    let K = p[1] * p[2] * p[2];
    let E = p[5];
    let e0 = row_tile(wid, nwg) * BM;
    if e0 >= E {
        return;
    }
    let k0 = wid.x * BN;
    let tid = lid.y * TX + lid.x;
    var acc: array<f32, TM * TN>;
    for (var m0 = 0u; m0 < M; m0 += BK) {
        workgroupBarrier();
        // ls[l][i] = G[m0 + l, e0 + i].
        stage_ls(tid, SRC_GRAD3, m0, M, e0, E, false);
        // rs[l][j] = patches[m0 + l, k0 + j].
        stage_rs(tid, SRC_PATCHES, m0, M, k0, K, false);
        workgroupBarrier();
        tile_product(&acc, lid.x, lid.y);
    }
    for (var r = 0u; r < TM; r++) {
        let e = e0 + lid.y + r * TY;
        for (var c = 0u; c < TN; c++) {
            let k = k0 + lid.x + c * TX;
            if e < E && k < K {
                out[e * K + k] = T(acc[r * TN + c]);
            }
        }
    }
}

// Images gradient: a tiled GEMM over the B*np patch rows by K columns, reducing over E;
// G tiles read with e fastest, W tiles with k fastest; each (m, k) is stored at its pixel.
@compute @workgroup_size(TX, TY)
fn patch_embed_dimages(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let C = p[1];
    let P = p[2];
    let gw = p[3];
    let np = p[4];
    let M = p[0] * np;
    let K = C * P * P;
    let E = p[5];
    let H = p[8];
    let W = p[9];
    let m0 = row_tile(wid, nwg) * BM;
    if m0 >= M {
        return;
    }
    let k0 = wid.x * BN;
    let tid = lid.y * TX + lid.x;
    var acc: array<f32, TM * TN>;
    for (var e0 = 0u; e0 < E; e0 += BK) {
        workgroupBarrier();
        // ls[l][i] = G[m0 + i, e0 + l].
        stage_ls(tid, SRC_GRAD2, m0, M, e0, E, true);
        // rs[l][j] = W[e0 + l, k0 + j].
        stage_rs(tid, SRC_WEIGHT, e0, E, k0, K, false);
        workgroupBarrier();
        tile_product(&acc, lid.x, lid.y);
    }
    let pp = P * P;
    for (var r = 0u; r < TM; r++) {
        let m = m0 + lid.y + r * TY;
        if m >= M {
            continue;
        }
        let b = m / np;
        let i = m % np;
        let y0 = (i / gw) * P;
        let x0 = (i % gw) * P;
        for (var c = 0u; c < TN; c++) {
            let k = k0 + lid.x + c * TX;
            if k >= K {
                continue;
            }
            let ch = k / pp;
            let rem = k % pp;
            let y = y0 + rem / P;
            let x = x0 + rem % P;
            out[((b * C + ch) * H + y) * W + x] = T(acc[r * TN + c]);
        }
    }
}

// Zeroes the pixels of d_images no patch covers: per (b, c) plane, rows gh*P.. (all columns),
// then columns gw*P.. of the rows above.
@compute @workgroup_size(WG)
fn patch_embed_edge(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let planes = p[0];
    let H = p[1];
    let W = p[2];
    let hp = p[3];
    let wp = p[4];
    let below = (H - hp) * W;
    let per_plane = below + hp * (W - wp);
    let n = planes * per_plane;
    for (var t = gid.x; t < n; t += nwg.x * WG) {
        let plane = t / per_plane;
        let q = t % per_plane;
        var y: u32;
        var x: u32;
        if q < below {
            y = hp + q / W;
            x = q % W;
        } else {
            let q2 = q - below;
            y = q2 / (W - wp);
            x = wp + q2 % (W - wp);
        }
        out[(plane * H + y) * W + x] = T(0.0);
    }
}

// Column sums (see the header): CW columns per workgroup, CR threads per column each summing
// every CR-th row, then one thread per column adds the CR partial sums in order.
@compute @workgroup_size(CW, CR)
fn patch_embed_colsum(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let J = p[0];
    let J2 = p[1];
    let R = p[2];
    let R2 = p[3];
    let groups = (J + CW - 1u) / CW;
    for (var g = wid.x; g < groups; g += nwg.x) {
        let j = g * CW + lid.x;
        var s = 0.0;
        if j < J {
            let col = p[4] + (j / J2) * p[5] + (j % J2) * p[6];
            for (var i = lid.y; i < R; i += CR) {
                s += f32(src2[col + (i / R2) * p[7] + (i % R2) * p[8]]);
            }
        }
        colpart[lid.y * CW + lid.x] = s;
        workgroupBarrier();
        if lid.y == 0u && j < J {
            var total = 0.0;
            for (var r = 0u; r < CR; r++) {
                total += colpart[r * CW + lid.x];
            }
            out[j] = T(total);
        }
        workgroupBarrier();
    }
}

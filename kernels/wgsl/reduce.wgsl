// reduce.wgsl: sum, max, min, argmax and argmin over one dimension of a strided view.
//
// Shapes: the input is `rows` rows of `len` elements; row r starts at `vidx(outer, r)` (the
// outer view: the input's other dimensions, merged, with its offset) and its element j is
// `stride * j` further (`stride` is the reduced dimension's stride, 0 when it is broadcast). The
// output holds one element per row, contiguous: T for sum / max / min, u32 for the arg ops.
//
// Semantics (the CPU backend's): floats accumulate in f32 (U; u32 sums wrap), an f16 sum is
// rounded once to nearest even at the end. Max / min return NaN when the row holds one. Arg ops
// return the first index of the extremum, skipping NaNs, except that a NaN first element wins
// (the CPU keeps its first element until a strictly better one comes, and nothing compares
// better than NaN). NaN tests use the bits: drivers may assume floats are never NaN.
//
// Algorithms:
//   *_rows     one invocation per row walks it in order (the CPU's order, so f32 sums agree to
//              the bit); for short rows, or many rows where neighbouring rows are neighbours in
//              memory (a reduced leading dimension), which keeps loads coalesced.
//   *_wg       one workgroup per row (grid-stride over rows): WG invocations each fold the
//              elements j = lid, lid + WG, ..., then a tree in workgroup memory folds the WG
//              partial results; for long rows. Max / min fold with an associative
//              NaN-propagating step, arg ops with a strict order on (value, index) that picks
//              the CPU's answer whatever the folding order. WG is a power of two (32..256).
//   *_wg_parts then *_parts: two passes for very long rows: the first folds segments of `seg`
//              elements (one workgroup per segment, partial results in f32 / u32, or (value,
//              index) pairs), the second folds each row's `segs` partial results in order, one
//              invocation per row. This spreads a long row over many workgroups, and keeps each
//              invocation under llvmpipe's limit of 65535 loop iterations.
//
// Params: rows, len, stride, op, seg, segs, outer view (word 6). op: reduce_* / *_parts
// 0 sum, 1 max, 2 min; argreduce_* 0 argmax, 1 argmin. seg >= len and segs = 1 except for
// the two-pass kernels.
// Bindings: *_rows, *_wg: 1 out (T, u32 for arg ops), 2 x. reduce_wg_parts: 1 parts (U), 2 x.
// argreduce_wg_parts: 1 indices (u32), 2 x, 3 values (U). reduce_parts: 1 out, 2 parts.
// argreduce_parts: 1 out (u32), 2 values, 3 indices.
// Launch: 1-D; *_rows, *_parts: WG invocations per workgroup, any number of workgroups
// (grid-stride over rows); *_wg*: WG invocations per workgroup, any number of workgroups
// (grid-stride over rows x segments).
//
// variants (T/U): f32/f32 f16/f32 u32/u32

override WG: u32 = 256u;

@group(0) @binding(1) var<storage, read_write> out: array<T>;
@group(0) @binding(1) var<storage, read_write> out_idx: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<T>;
// The two-pass kernels' partial results (see the top).
@group(0) @binding(1) var<storage, read_write> parts: array<U>;
@group(0) @binding(3) var<storage, read_write> part_v: array<U>;
@group(0) @binding(2) var<storage, read> parts_in: array<U>;
@group(0) @binding(2) var<storage, read> part_v_in: array<U>;
@group(0) @binding(3) var<storage, read> part_i_in: array<u32>;

var<workgroup> sv: array<U, WG>;
var<workgroup> si: array<u32, WG>;

// An index no element has: the arg fold's "nothing yet".
const NONE: u32 = 0xffffffffu;

// Whether v is NaN (never for u32). vidx, is_nan, round_f16 and the type constants are in
// common.wgsl.
fn nan_u(v: U) -> bool {
    return U_FLOAT && is_nan(f32(v));
}

fn to_t(v: U) -> T {
    if (T_HALF) {
        return T(round_f16(f32(v)));
    }
    return T(v);
}

// The start value of a fold: 0 for sums, -inf / 0 for max, +inf / u32::MAX for min.
fn identity(op: u32) -> U {
    if (op == 0u) {
        return U(0u);
    }
    if (U_FLOAT) {
        return U(select(inf_f32(), -inf_f32(), op == 1u));
    }
    return U(select(0xffffffffu, 0u, op == 1u));
}

// acc folded with v (v comes after acc): sum, or max / min keeping acc unless v is strictly
// better or NaN; a NaN acc stays.
fn fold(op: u32, acc: U, v: U) -> U {
    if (op == 0u) {
        return acc + v;
    }
    if (nan_u(acc)) {
        return acc;
    }
    let better = select((v < acc), (v > acc), op == 1u);
    return select(acc, v, nan_u(v) || better);
}

// Whether (va, ia) comes before (vb, ib) in the arg ops' order: an empty slot never, a NaN at
// index 0 first, other NaNs last, then by value (larger for argmax, op 0), then by index.
fn arg_beats(op: u32, va: U, ia: u32, vb: U, ib: u32) -> bool {
    if (ia == NONE) {
        return false;
    }
    if (ib == NONE) {
        return true;
    }
    let na = nan_u(va);
    let nb = nan_u(vb);
    if (na || nb) {
        if (na && ia == 0u) {
            return true;
        }
        if (nb && ib == 0u) {
            return false;
        }
        return nb && !na;
    }
    if (va == vb) {
        return ia < ib;
    }
    return select((va < vb), (va > vb), op == 0u);
}

@compute @workgroup_size(WG)
fn reduce_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // out (rows) = fold over row r, one invocation per row.
    let rows = p[0];
    let len = p[1];
    let stride = p[2];
    let op = p[3];
    for (var r = gid.x; r < rows; r += nwg.x * WG) {
        let base = vidx(6u, r);
        var acc = identity(op);
        for (var j = 0u; j < len; j++) {
            acc = fold(op, acc, U(x[base + j * stride]));
        }
        out[r] = to_t(acc);
    }
}

@compute @workgroup_size(WG)
fn argreduce_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // out_idx (rows) = arg extremum of row r, one invocation per row walking it in order:
    // exactly the CPU's loop (replace only when strictly better, NaNs never are).
    let rows = p[0];
    let len = p[1];
    let stride = p[2];
    let op = p[3];
    for (var r = gid.x; r < rows; r += nwg.x * WG) {
        let base = vidx(6u, r);
        var best = U(x[base]);
        var bi = 0u;
        for (var j = 1u; j < len; j++) {
            let v = U(x[base + j * stride]);
            let better = select((v < best), (v > best), op == 0u);
            if (!nan_u(v) && !nan_u(best) && better) {
                best = v;
                bi = j;
            }
        }
        out_idx[r] = bi;
    }
}

// Folds the elements j in [lo, hi) of the row at `base`, the WG invocations together (uniform
// control flow only); every invocation gets the result.
fn wg_fold(op: u32, base: u32, stride: u32, lo: u32, hi: u32, lid: u32) -> U {
    var acc = identity(op);
    for (var j = lo + lid; j < hi; j += WG) {
        acc = fold(op, acc, U(x[base + j * stride]));
    }
    sv[lid] = acc;
    workgroupBarrier();
    // Slot lid holds lower indices than slot lid + s, as fold wants.
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            sv[lid] = fold(op, sv[lid], sv[lid + s]);
        }
        workgroupBarrier();
    }
    let r = sv[0];
    // sv is rewritten by the next call only after every invocation has read it.
    workgroupBarrier();
    return r;
}

// The best (value, index) of the elements j in [lo, hi) of the row at `base` (as wg_fold).
struct Best {
    v: U,
    i: u32,
}

fn wg_argfold(op: u32, base: u32, stride: u32, lo: u32, hi: u32, lid: u32) -> Best {
    var best = U(0u);
    var bi = NONE;
    for (var j = lo + lid; j < hi; j += WG) {
        let v = U(x[base + j * stride]);
        if (arg_beats(op, v, j, best, bi)) {
            best = v;
            bi = j;
        }
    }
    sv[lid] = best;
    si[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s && arg_beats(op, sv[lid + s], si[lid + s], sv[lid], si[lid])) {
            sv[lid] = sv[lid + s];
            si[lid] = si[lid + s];
        }
        workgroupBarrier();
    }
    let r = Best(sv[0], si[0]);
    workgroupBarrier();
    return r;
}

// Work item `item` of the workgroup kernels: segment item % segs of row item / segs, as
// (row start, first j, end j).
fn segment(item: u32) -> vec3<u32> {
    let len = p[1];
    let seg = p[4];
    let segs = p[5];
    let lo = (item % segs) * seg;
    return vec3<u32>(vidx(6u, item / segs), lo, min(len, lo + seg));
}

@compute @workgroup_size(WG)
fn reduce_wg(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    // out (rows) = fold of row r, one workgroup per row (segs = 1).
    let items = p[0] * p[5];
    for (var item = wid.x; item < items; item += nwg.x) {
        let g = segment(item);
        let v = wg_fold(p[3], g.x, p[2], g.y, g.z, lid.x);
        if (lid.x == 0u) {
            out[item] = to_t(v);
        }
    }
}

@compute @workgroup_size(WG)
fn reduce_wg_parts(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    // parts (rows, segs) = fold of each segment of each row, one workgroup per segment.
    let items = p[0] * p[5];
    for (var item = wid.x; item < items; item += nwg.x) {
        let g = segment(item);
        let v = wg_fold(p[3], g.x, p[2], g.y, g.z, lid.x);
        if (lid.x == 0u) {
            parts[item] = v;
        }
    }
}

@compute @workgroup_size(WG)
fn argreduce_wg(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    // out_idx (rows) = arg extremum of row r, one workgroup per row (segs = 1).
    let items = p[0] * p[5];
    for (var item = wid.x; item < items; item += nwg.x) {
        let g = segment(item);
        let b = wg_argfold(p[3], g.x, p[2], g.y, g.z, lid.x);
        if (lid.x == 0u) {
            out_idx[item] = b.i;
        }
    }
}

@compute @workgroup_size(WG)
fn argreduce_wg_parts(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    // (part_v, out_idx) (rows, segs) = best (value, index in the row) of each segment.
    let items = p[0] * p[5];
    for (var item = wid.x; item < items; item += nwg.x) {
        let g = segment(item);
        let b = wg_argfold(p[3], g.x, p[2], g.y, g.z, lid.x);
        if (lid.x == 0u) {
            out_idx[item] = b.i;
            part_v[item] = b.v;
        }
    }
}

@compute @workgroup_size(WG)
fn reduce_parts(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // out (rows) = fold of the row's segs partial results (rows, segs), in order.
    let rows = p[0];
    let op = p[3];
    let segs = p[5];
    for (var r = gid.x; r < rows; r += nwg.x * WG) {
        var acc = identity(op);
        for (var s = 0u; s < segs; s++) {
            acc = fold(op, acc, parts_in[r * segs + s]);
        }
        out[r] = to_t(acc);
    }
}

@compute @workgroup_size(WG)
fn argreduce_parts(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // out_idx (rows) = the best of the row's segs partial (value, index) pairs.
    let rows = p[0];
    let op = p[3];
    let segs = p[5];
    for (var r = gid.x; r < rows; r += nwg.x * WG) {
        var best = part_v_in[r * segs];
        var bi = part_i_in[r * segs];
        for (var s = 1u; s < segs; s++) {
            let v = part_v_in[r * segs + s];
            let i = part_i_in[r * segs + s];
            if (arg_beats(op, v, i, best, bi)) {
                best = v;
                bi = i;
            }
        }
        out_idx[r] = bi;
    }
}

// indexing.wgsl: index_select, gather and scatter_add along one dimension, and the index check
// they share.
//
// Shapes (every view is written by `Params::view`, dimensions merged by the backend with the
// indexed dimension kept alone at merged position `kdim`; `size` is that dimension's size in the
// indexed tensor):
//   index_select  out = src with dimension kdim picked by the 1-D ids: the src view has the
//                 OUTPUT dims (kdim has n_ids) and the source's strides; for output position i
//                 with coordinate c at kdim, out[i] = src[view(i) with c -> ids[c]].
//   gather        out[i] = src[view(i) with coordinate kdim -> ids[i]]: the src and ids views
//                 have the dims of ids (= the output's).
//   scatter_add   out (a contiguous copy of dst, made first) += src at the ids along kdim: the
//                 out, src and ids views have the dims of ids; out[view(c) with c_kdim ->
//                 ids[c]] += src[c] for every position c.
//   check_range   flags the first element v of a u32 view with v - lo >= span (wrapping), for
//                 index checks where an op has nothing to compute (lo 0, span size) and for
//                 u32 divisors (lo 1, span u32::MAX: flags zeros).
//
// Bad indices (>= size) are never followed: the position (row-major, in ids) of the first bad
// one is kept in `err[0]` (atomicMin; the backend fills the two-word cell with u32::MAX first)
// and the output element is 0. record_bad_value then copies the offending value into
// `err[1]`, and the backend reads the cell with the next read-back to raise
// Error::IndexOutOfRange: no op waits for the device.
//
// scatter_add without float atomics (WGSL has none): one invocation per COLUMN, i.e. per
// coordinate of every dimension but kdim, walks j = 0..n_ids in order and adds src[.., j, ..]
// into out[.., ids[.., j, ..], ..]. Two columns never touch the same output element (they differ
// outside kdim), so there is no race and no atomic, and every output element receives its
// additions in increasing j, the CPU backend's order: f32 sums agree to the bit, f16 sums round
// after every addition as the CPU's do, u32 sums wrap. Work is one pass over src; the parallelism
// is the number of columns (an embedding gradient (V, D) from N tokens runs D invocations of N
// steps each). The backend splits j into ranges of at most 32768, one dispatch each (in order,
// so the order of additions stands): llvmpipe (lavapipe) ends an invocation's loops after 65535
// iterations in all, and long dispatches trip GPU watchdogs.
//
// Params:
//   index_select  n, kdim, size, inner (product of the merged dims after kdim), src view
//                 (word 4), ids view
//   gather        n, kdim, size, src view (word 3), ids view
//   scatter_add   columns, kdim, size, n_ids, inner, j0, j1 (this dispatch's range of j),
//                 out view (word 7), src view, ids view
//   check_range   n, lo, span, view (word 3)
//   record_bad_value  the view of the checked values (word 0)
// Bindings: index_select / gather: 1 out, 2 src, 3 ids, 4 err; scatter_add: 1 out, 2 src,
// 3 ids, 4 err; check_range and record_bad_value: 1 err, 2 values.
// Launch: 1-D, WG invocations per workgroup, any number of workgroups (grid-stride loops; one
// element per invocation and step, one column for scatter_add).
//
// variants (T/U): f32/f32 f16/f16 u32/u32

override WG: u32 = 256u;

@group(0) @binding(1) var<storage, read_write> out: array<T>;
@group(0) @binding(2) var<storage, read> src: array<T>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> err: array<atomic<u32>>;
// check_range binds these instead.
@group(0) @binding(1) var<storage, read_write> err_cell: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read> vals: array<u32>;

// Storage index of row-major position i of the view at `at`, its coordinate at dimension kd
// replaced by k.
fn index_with(at: u32, i: u32, kd: u32, k: u32) -> u32 {
    let rank = p[at];
    var idx = p[at + 1u];
    var rest = i;
    for (var d = rank; d > 0u; d--) {
        let size = p[at + 1u + d];
        let stride = p[at + 1u + rank + d];
        let c = select(rest % size, k, d - 1u == kd);
        rest /= size;
        idx += c * stride;
    }
    return idx;
}

// a + b as the CPU adds: in f32 rounded once to T for floats, wrapping for u32.
fn add_t(a: T, b: T) -> T {
    if (!T_FLOAT) {
        return T(u32(a) + u32(b));
    }
    let s = f32(a) + f32(b);
    if (T_HALF) {
        return T(round_f16(s));
    }
    return T(s);
}

@compute @workgroup_size(WG)
fn index_select(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // out (output dims, n elements) = src with coordinate kdim looked up in ids.
    let n = p[0];
    let kd = p[1];
    let size = p[2];
    let inner = p[3];
    let n_ids = p[4u + 2u + kd];
    let vi = 4u + view_words(4u);
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        let c = (i / inner) % n_ids;
        let k = ids[vidx(vi, c)];
        if (k >= size) {
            atomicMin(&err[0], c);
            out[i] = T(0u);
        } else {
            out[i] = src[index_with(4u, i, kd, k)];
        }
    }
}

@compute @workgroup_size(WG)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // out (ids dims, n elements) = src with coordinate kdim replaced by ids at the same place.
    let n = p[0];
    let kd = p[1];
    let size = p[2];
    let vi = 3u + view_words(3u);
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        let k = ids[vidx(vi, i)];
        if (k >= size) {
            atomicMin(&err[0], i);
            out[i] = T(0u);
        } else {
            out[i] = src[index_with(3u, i, kd, k)];
        }
    }
}

@compute @workgroup_size(WG)
fn scatter_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // out[.., ids[.., j, ..], ..] += src[.., j, ..] for j0 <= j < j1, one invocation per column
    // (see the top).
    let cols = p[0];
    let kd = p[1];
    let size = p[2];
    let n_ids = p[3];
    let inner = p[4];
    let j0 = p[5];
    let j1 = p[6];
    let vo = 7u;
    let vs = vo + view_words(vo);
    let vi = vs + view_words(vs);
    let rank = p[vo];
    for (var col = gid.x; col < cols; col += nwg.x * WG) {
        // The column's start in each view: its coordinates, every dimension but kd.
        var ob = p[vo + 1u];
        var sb = p[vs + 1u];
        var ib = p[vi + 1u];
        var rest = col;
        for (var d = rank; d > 0u; d--) {
            if (d - 1u == kd) {
                continue;
            }
            let size_d = p[vo + 1u + d];
            let c = rest % size_d;
            rest /= size_d;
            ob += c * p[vo + 1u + rank + d];
            sb += c * p[vs + 1u + rank + d];
            ib += c * p[vi + 1u + rank + d];
        }
        let o_k = p[vo + 2u + rank + kd];
        let s_k = p[vs + 2u + rank + kd];
        let i_k = p[vi + 2u + rank + kd];
        // Row-major position in ids of (column, j): (outer * n_ids + j) * inner + in.
        let first = (col / inner) * n_ids * inner + col % inner;
        for (var j = j0; j < j1; j++) {
            let k = ids[ib + j * i_k];
            if (k >= size) {
                atomicMin(&err[0], first + j * inner);
                continue;
            }
            let at = ob + k * o_k;
            out[at] = add_t(out[at], src[sb + j * s_k]);
        }
    }
}

@compute @workgroup_size(WG)
fn check_range(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // err_cell = min(position i with values[view(i)] - lo >= span), n elements.
    let n = p[0];
    let lo = p[1];
    let span = p[2];
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        if (vals[vidx(3u, i)] - lo >= span) {
            atomicMin(&err_cell[0], i);
        }
    }
}

@compute @workgroup_size(1)
fn record_bad_value() {
    // err_cell[1] = values[view(err_cell[0])] when a bad position was recorded.
    let pos = atomicLoad(&err_cell[0]);
    if (pos != 0xffffffffu) {
        atomicStore(&err_cell[1], vals[vidx(0u, pos)]);
    }
}

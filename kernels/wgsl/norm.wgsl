// norm.wgsl: row-wise fused ops over the last dimension: softmax, log-softmax, layer norm and
// the layer-norm backward (T is f32 or f16; every statistic is computed in f32).
//
// Shapes: x is (rows, cols), read in place through any strides: row r starts at
// strided_index(view, r) (the host merges the leading dims into that view) and its elements
// are `col_stride` apart. Outputs are contiguous (rows, cols); weight and bias are (cols) with
// their own offset and stride (0 broadcasts).
//
//   softmax:         out = exp(x - max) / sum(exp(x - max)); a row whose max is -inf (fully
//                    masked) gives zeros, as the CPU backend.
//   log_softmax:     out = x - (max + log(sum(exp(x - max)))); a fully masked row gives -inf.
//   layer_norm:      out = (x - mean) / sqrt(var + eps) * weight + bias, biased variance by
//                    two passes (mean first, then sum((x - mean)^2)), as torch.
//   ln_bwd_rows:     with xhat = (x - mean) * rstd and dxhat = d_out * weight,
//                    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)); also writes
//                    (mean, rstd) per row to `stats` (f32, rows x 2) for the column sums.
//   ln_bwd_partial:  column sums of d_out * xhat and d_out over one chunk of rows: partial
//                    (f32, chunks x 2 x cols) = [sum d_out * xhat; sum d_out] per chunk.
//   ln_bwd_finish:   dweight = sum over chunks of partial[., 0, .], dbias = of partial[., 1, .]
//                    (ln_bwd_finish_bias: dbias only). Deterministic: no float atomics.
//
// Algorithm of the row kernels: one workgroup of WG invocations (a power of two) per row,
// looping over rows (row += number of workgroups); each pass over the row strides by WG and
// ends in a tree reduction in workgroup memory.
//
// Params (words; "view" is a row view as common.wgsl describes it):
//   softmax, log_softmax: 0 rows, 1 cols, 2 col_stride, 3.. x view.
//   layer_norm:           0 rows, 1 cols, 2 eps (f32 bits), 3 flags (1 weight, 2 bias),
//                         4 w_off, 5 w_stride, 6 b_off, 7 b_stride, 8 col_stride, 9.. x view.
//   ln_bwd_rows:          0 rows, 1 cols, 2 eps, 3 has_weight, 4 w_off, 5 w_stride,
//                         6 x col_stride, 7 d_out col_stride, 8.. x view, then d_out view.
//   ln_bwd_partial:       0 rows, 1 cols, 2 rows per chunk, 3 x col_stride,
//                         4 d_out col_stride, 5.. x view, then d_out view.
//   ln_bwd_finish(_bias): 0 cols, 1 chunks.
// Bindings (each entry point uses 1..n):
//   softmax, log_softmax: 1 out, 2 x.
//   layer_norm:           1 out, 2 x, 3 weight, 4 bias (any T buffer where the flag is off).
//   ln_bwd_rows:          1 dx, 2 x, 3 weight (any T buffer without), 4 d_out, 5 stats.
//   ln_bwd_partial:       1 partial, 2 x, 3 stats, 4 d_out.
//   ln_bwd_finish:        1 dbias, 2 partial, 3 dweight; ln_bwd_finish_bias: 1 dbias, 2 partial.
// Launch: row kernels: WG invocations per workgroup, 1-D grid of at most 65535 (grid-stride
// over rows). ln_bwd_partial: workgroup (CW, RW), grid (column blocks, chunks). Finish: 1-D
// grid-stride over columns, WG per workgroup.
//
// variants (T/U): f32/f32 f16/f16

override WG: u32 = 256u;
override CW: u32 = 32u;
override RW: u32 = 8u;

@group(0) @binding(1) var<storage, read_write> out: array<T>;
@group(0) @binding(2) var<storage, read> x: array<T>;
@group(0) @binding(3) var<storage, read> weight: array<T>;
@group(0) @binding(4) var<storage, read> ln_bias: array<T>;
@group(0) @binding(4) var<storage, read> grad: array<T>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;

@group(0) @binding(1) var<storage, read_write> partial: array<f32>;
@group(0) @binding(3) var<storage, read> stats_in: array<f32>;

@group(0) @binding(2) var<storage, read> partial_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> dweight: array<T>;

var<workgroup> red: array<f32, WG>;
var<workgroup> red2: array<f32, WG>;
var<workgroup> col_w: array<f32, CW * RW>;
var<workgroup> col_b: array<f32, CW * RW>;

// Sum of `v` over the workgroup, returned to every invocation.
fn wg_sum(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if li < s {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Sums of `v.x` and `v.y` over the workgroup.
fn wg_sum2(li: u32, v: vec2<f32>) -> vec2<f32> {
    red[li] = v.x;
    red2[li] = v.y;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if li < s {
            red[li] += red[li + s];
            red2[li] += red2[li + s];
        }
        workgroupBarrier();
    }
    let r = vec2<f32>(red[0], red2[0]);
    workgroupBarrier();
    return r;
}

// Maximum of `v` over the workgroup.
fn wg_max(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if li < s {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Softmax (or log-softmax) of every row of x (rows, cols) into out.
fn softmax_rows(li: u32, first: u32, step: u32, is_log: bool) {
    let rows = p[0];
    let cols = p[1];
    let cs = p[2];
    for (var row = first; row < rows; row += step) {
        let base = strided_index(3u, row);
        var m = -inf_f32();
        for (var j = li; j < cols; j += WG) {
            m = max(m, f32(x[base + j * cs]));
        }
        m = wg_max(li, m);
        var s = 0.0;
        if m != -inf_f32() {
            for (var j = li; j < cols; j += WG) {
                s += exp(f32(x[base + j * cs]) - m);
            }
        }
        s = wg_sum(li, s);
        let o = row * cols;
        if m == -inf_f32() {
            // A fully masked row.
            let fill = select(0.0, -inf_f32(), is_log);
            for (var j = li; j < cols; j += WG) {
                out[o + j] = T(fill);
            }
        } else if is_log {
            let shift = m + log(s);
            for (var j = li; j < cols; j += WG) {
                out[o + j] = T(f32(x[base + j * cs]) - shift);
            }
        } else {
            let inv = 1.0 / s;
            for (var j = li; j < cols; j += WG) {
                out[o + j] = T(exp(f32(x[base + j * cs]) - m) * inv);
            }
        }
    }
}

// Softmax over the last dimension: one workgroup per row.
@compute @workgroup_size(WG)
fn softmax(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    softmax_rows(li, wid.x, nwg.x, false);
}

// Log-softmax over the last dimension: one workgroup per row.
@compute @workgroup_size(WG)
fn log_softmax(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    softmax_rows(li, wid.x, nwg.x, true);
}

// Layer norm of every row of x (rows, cols) with optional weight (cols) and bias (cols).
@compute @workgroup_size(WG)
fn layer_norm(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let rows = p[0];
    let cols = p[1];
    let eps = pf(2u);
    let has_w = (p[3] & 1u) != 0u;
    let has_b = (p[3] & 2u) != 0u;
    let cs = p[8];
    let inv_n = 1.0 / f32(cols);
    for (var row = wid.x; row < rows; row += nwg.x) {
        let base = strided_index(9u, row);
        var s = 0.0;
        for (var j = li; j < cols; j += WG) {
            s += f32(x[base + j * cs]);
        }
        let mean = wg_sum(li, s) * inv_n;
        var q = 0.0;
        for (var j = li; j < cols; j += WG) {
            let d = f32(x[base + j * cs]) - mean;
            q = fma(d, d, q);
        }
        let rstd = 1.0 / sqrt(wg_sum(li, q) * inv_n + eps);
        let o = row * cols;
        for (var j = li; j < cols; j += WG) {
            var y = (f32(x[base + j * cs]) - mean) * rstd;
            if has_w {
                y *= f32(weight[p[4] + j * p[5]]);
            }
            if has_b {
                y += f32(ln_bias[p[6] + j * p[7]]);
            }
            out[o + j] = T(y);
        }
    }
}

// Layer-norm backward, per row: dx (rows, cols) and the row statistics (mean, rstd).
@compute @workgroup_size(WG)
fn ln_bwd_rows(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let rows = p[0];
    let cols = p[1];
    let eps = pf(2u);
    let has_w = p[3] != 0u;
    let xcs = p[6];
    let gcs = p[7];
    let gview = 8u + view_words(8u);
    let inv_n = 1.0 / f32(cols);
    for (var row = wid.x; row < rows; row += nwg.x) {
        let xb = strided_index(8u, row);
        let gb = strided_index(gview, row);
        var s = 0.0;
        for (var j = li; j < cols; j += WG) {
            s += f32(x[xb + j * xcs]);
        }
        let mean = wg_sum(li, s) * inv_n;
        var q = 0.0;
        for (var j = li; j < cols; j += WG) {
            let d = f32(x[xb + j * xcs]) - mean;
            q = fma(d, d, q);
        }
        let rstd = 1.0 / sqrt(wg_sum(li, q) * inv_n + eps);
        // mean(dxhat) and mean(dxhat * xhat)
        var acc = vec2<f32>(0.0, 0.0);
        for (var j = li; j < cols; j += WG) {
            let xh = (f32(x[xb + j * xcs]) - mean) * rstd;
            var dxh = f32(grad[gb + j * gcs]);
            if has_w {
                dxh *= f32(weight[p[4] + j * p[5]]);
            }
            acc += vec2<f32>(dxh, dxh * xh);
        }
        let mm = wg_sum2(li, acc) * inv_n;
        let o = row * cols;
        for (var j = li; j < cols; j += WG) {
            let xh = (f32(x[xb + j * xcs]) - mean) * rstd;
            var dxh = f32(grad[gb + j * gcs]);
            if has_w {
                dxh *= f32(weight[p[4] + j * p[5]]);
            }
            out[o + j] = T(rstd * (dxh - mm.x - xh * mm.y));
        }
        if li == 0u {
            stats[2u * row] = mean;
            stats[2u * row + 1u] = rstd;
        }
    }
}

// Layer-norm backward, column sums over one chunk of rows (workgroup id y) for CW columns at a
// time: invocation (lx, ly) sums rows ly, ly + RW, ... of column lx, then the RW partial sums
// of each column are added in workgroup memory.
@compute @workgroup_size(CW, RW)
fn ln_bwd_partial(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let rows = p[0];
    let cols = p[1];
    let rpc = p[2];
    let xcs = p[3];
    let gcs = p[4];
    let gview = 5u + view_words(5u);
    let r0 = wid.y * rpc;
    let r1 = min(rows, r0 + rpc);
    for (var cb = wid.x; cb * CW < cols; cb += nwg.x) {
        let col = cb * CW + lid.x;
        var dw = 0.0;
        var db = 0.0;
        if col < cols {
            for (var r = r0 + lid.y; r < r1; r += RW) {
                let xv = f32(x[strided_index(5u, r) + col * xcs]);
                let gv = f32(grad[strided_index(gview, r) + col * gcs]);
                let xh = (xv - stats_in[2u * r]) * stats_in[2u * r + 1u];
                dw = fma(gv, xh, dw);
                db += gv;
            }
        }
        col_w[li] = dw;
        col_b[li] = db;
        workgroupBarrier();
        for (var s = RW / 2u; s > 0u; s >>= 1u) {
            if lid.y < s {
                col_w[li] += col_w[li + s * CW];
                col_b[li] += col_b[li + s * CW];
            }
            workgroupBarrier();
        }
        if lid.y == 0u && col < cols {
            partial[2u * wid.y * cols + col] = col_w[lid.x];
            partial[(2u * wid.y + 1u) * cols + col] = col_b[lid.x];
        }
        workgroupBarrier();
    }
}

// Sums of the chunks' partial column sums of column j: (dweight, dbias).
fn chunk_sums(j: u32, cols: u32, chunks: u32) -> vec2<f32> {
    var s = vec2<f32>(0.0, 0.0);
    for (var c = 0u; c < chunks; c++) {
        s += vec2<f32>(partial_in[2u * c * cols + j], partial_in[(2u * c + 1u) * cols + j]);
    }
    return s;
}

// Layer-norm backward: dweight and dbias (cols) from the partial column sums.
@compute @workgroup_size(WG)
fn ln_bwd_finish(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let cols = p[0];
    for (var j = gid.x; j < cols; j += nwg.x * WG) {
        let s = chunk_sums(j, cols, p[1]);
        dweight[j] = T(s.x);
        out[j] = T(s.y);
    }
}

// Layer-norm backward without weight: dbias (cols) from the partial column sums.
@compute @workgroup_size(WG)
fn ln_bwd_finish_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let cols = p[0];
    for (var j = gid.x; j < cols; j += nwg.x * WG) {
        out[j] = T(chunk_sums(j, cols, p[1]).y);
    }
}

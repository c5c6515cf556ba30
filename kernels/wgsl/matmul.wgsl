// matmul.wgsl: batched matrix products C = A B (+ bias), f32 accumulation (T is f32 or f16).
//
// Shapes: A is (batch.., m, k), B is (batch.., k, n), C is (batch.., m, n) contiguous. A and B
// are read in place through any strides: element (i, l) of batch b of A is
// a[a_base(b) + i * a_rs + l * a_cs] (a transposed view swaps the two strides, a broadcast
// one is 0), likewise for B, so no operand is copied first. The batch dims (merged by the
// host) have their own strides per operand (0 for a broadcast batch).
// With has_bias, C[.., i, j] = sum_l A[i, l] B[l, j] + bias[bias_off + j * bias_stride]: the
// epilogue of a linear layer (x (M, K) @ weight (N, K)^T + bias (N)).
//
// Algorithm: register-blocked tiling. A workgroup of WX x WY invocations owns a BM x BN tile
// of C (BM = TM * WY rows, BN = TN * WX columns). K advances in steps of BK: the workgroup
// stages the BM x BK tile of A and the BK x BN tile of B in workgroup memory as f32 (zeros
// outside the matrices, so edges need no special case), then each invocation accumulates a
// TM x TN block of C in registers. Invocation (lx, ly) owns rows ly + ii * WY and columns
// lx + jj * WX (interleaved, so that neighbouring invocations read neighbouring workgroup
// words and store neighbouring C elements). Tiles are loaded along the operand's unit-stride
// direction (k for a row-major A, m for a transposed one) to keep global reads coalesced.
// k = 0 leaves the accumulators at 0 (C = 0, or the bias rows).
//
// Params:
//   0 m, 1 k, 2 n, 3 a_rs, 4 a_cs, 5 b_rs, 6 b_cs, 7 a_off, 8 b_off,
//   9 first column tile, 10 first row tile, 11 first batch (of this dispatch),
//   12 has_bias, 13 bias_off, 14 bias_stride,
//   15 batch rank r, 16.. dims[r], then A's batch strides[r], then B's batch strides[r].
// Bindings: 1 C (out), 2 A, 3 B, 4 bias (any T buffer when has_bias is 0).
// Launch: workgroup (WX, WY); grid (column tiles, row tiles, batches), split by the host into
// dispatches of at most 65535 workgroups per dimension (the "first" params say where each
// starts). Every index must fit in 32 bits (checked by the host).
//
// variants (T/U): f32/f32 f16/f16

override WX: u32 = 16u;
override WY: u32 = 16u;
override BK: u32 = 16u;
// Per-invocation register block (function-scope arrays need constant sizes).
const TM: u32 = 4u;
const TN: u32 = 4u;

@group(0) @binding(1) var<storage, read_write> c: array<T>;
@group(0) @binding(2) var<storage, read> a: array<T>;
@group(0) @binding(3) var<storage, read> b: array<T>;
@group(0) @binding(4) var<storage, read> bias: array<T>;

// A tile (BK, BM) k-major: as_tile[l * (BM + 1) + i]; B tile (BK, BN): bs_tile[l * (BN + 1) + j].
// The padding word per row keeps the stores of a tile loaded along k free of bank conflicts.
var<workgroup> as_tile: array<f32, BK * (TM * WY + 1u)>;
var<workgroup> bs_tile: array<f32, BK * (TN * WX + 1u)>;

// One BM x BN tile of C for one batch entry.
@compute @workgroup_size(WX, WY)
fn matmul(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let m = p[0];
    let k = p[1];
    let n = p[2];
    let a_rs = p[3];
    let a_cs = p[4];
    let b_rs = p[5];
    let b_cs = p[6];
    let bm = TM * WY;
    let bn = TN * WX;
    let bmp = bm + 1u;
    let bnp = bn + 1u;
    let threads = WX * WY;
    let col0 = (p[9] + wid.x) * bn;
    let row0 = (p[10] + wid.y) * bm;
    let batch = p[11] + wid.z;

    // Base offsets of this batch entry: decompose `batch` over the merged batch dims.
    let rank = p[15];
    var a_base = p[7];
    var b_base = p[8];
    var rest = batch;
    for (var d = i32(rank) - 1; d >= 0; d--) {
        let size = p[16u + u32(d)];
        let i = rest % size;
        rest /= size;
        a_base += i * p[16u + rank + u32(d)];
        b_base += i * p[16u + 2u * rank + u32(d)];
    }

    // Load along the unit-stride direction of each operand (a heuristic for coalescing).
    let a_k_fast = a_cs <= a_rs;
    let b_n_fast = b_cs <= b_rs;

    var acc: array<f32, TM * TN>;
    for (var e = 0u; e < TM * TN; e++) {
        acc[e] = 0.0;
    }

    for (var k0 = 0u; k0 < k; k0 += BK) {
        // A tile: BM rows x BK columns.
        for (var e = li; e < bm * BK; e += threads) {
            var i: u32;
            var l: u32;
            if a_k_fast {
                i = e / BK;
                l = e % BK;
            } else {
                l = e / bm;
                i = e % bm;
            }
            let row = row0 + i;
            let kk = k0 + l;
            var v = 0.0;
            if row < m && kk < k {
                v = f32(a[a_base + row * a_rs + kk * a_cs]);
            }
            as_tile[l * bmp + i] = v;
        }
        // B tile: BK rows x BN columns.
        for (var e = li; e < BK * bn; e += threads) {
            var l: u32;
            var j: u32;
            if b_n_fast {
                l = e / bn;
                j = e % bn;
            } else {
                j = e / BK;
                l = e % BK;
            }
            let col = col0 + j;
            let kk = k0 + l;
            var v = 0.0;
            if col < n && kk < k {
                v = f32(b[b_base + kk * b_rs + col * b_cs]);
            }
            bs_tile[l * bnp + j] = v;
        }
        workgroupBarrier();

        for (var l = 0u; l < BK; l++) {
            var av: array<f32, TM>;
            var bv: array<f32, TN>;
            for (var ii = 0u; ii < TM; ii++) {
                av[ii] = as_tile[l * bmp + lid.y + ii * WY];
            }
            for (var jj = 0u; jj < TN; jj++) {
                bv[jj] = bs_tile[l * bnp + lid.x + jj * WX];
            }
            for (var ii = 0u; ii < TM; ii++) {
                for (var jj = 0u; jj < TN; jj++) {
                    acc[ii * TN + jj] = fma(av[ii], bv[jj], acc[ii * TN + jj]);
                }
            }
        }
        workgroupBarrier();
    }

    // Epilogue: bias, rounding to T, bounds.
    let has_bias = p[12] != 0u;
    let c_base = batch * m * n;
    for (var jj = 0u; jj < TN; jj++) {
        let col = col0 + lid.x + jj * WX;
        if col >= n {
            continue;
        }
        var add = 0.0;
        if has_bias {
            add = f32(bias[p[13] + col * p[14]]);
        }
        for (var ii = 0u; ii < TM; ii++) {
            let row = row0 + lid.y + ii * WY;
            if row < m {
                c[c_base + row * n + col] = T(acc[ii * TN + jj] + add);
            }
        }
    }
}

//! Fused attention and its backward: the WGSL kernels of `kernels/wgsl/attention.wgsl`
//! (forward: online softmax over streamed key tiles, log-sum-exp saved) and
//! `kernels/wgsl/attention_backward.wgsl` (a prep pass for `delta = rowsum(dO * O)` and the
//! mask flags, then dK/dV per key tile and dQ per query tile, both recomputing the
//! probabilities from the saved log-sum-exp). No `Nq x Nk` buffer, no atomics, no read-back.
//!
//! * Inputs are read in place through their strides: `q`, `k`, `v`, `out`, `d_out` as 4-D
//!   views, `lse` as a 3-D view, the key-padding mask as a 2-D view (heads permuted out of a
//!   `(B, N, H, D)` projection, narrowed or broadcast inputs need no copy). Outputs are fresh
//!   contiguous tensors in the input dtype (`lse` in F32). f16 inputs are computed in f32.
//! * Tiles: each kernel owns a tile of rows (queries for the forward and dQ, keys for dK/dV),
//!   with `tr` invocations per row (each owning every `tr`-th output column) and streams tiles
//!   of the other side through workgroup memory. The largest tile shape of [`TILES`] whose
//!   workgroup arrays fit [`WORKGROUP_BYTES`] is used, e.g. for `D = Dv = 64` the forward takes
//!   16 queries x 16 keys with 8 invocations per query, for 128 it takes 8 x 8 x 8. The head
//!   dims are override constants (one pipeline per head dim); any `D, Dv <= 128` works, larger
//!   ones as long as a tile shape fits, and the composition is the fallback otherwise (or when
//!   an index would pass 32 bits).

use glimpse_tensor::{
    AttentionGrads, AttentionOptions, AttentionOutput, DType, Result, Tensor, compose,
};

use crate::backend::{Kernel, Params, WgpuBackend, workgroups_for};
use crate::storage::storage_of;

const FWD: &str = "attention.wgsl";
const BWD: &str = "attention_backward.wgsl";

/// Workgroup memory the kernels use at most: WebGPU's default
/// `maxComputeWorkgroupStorageSize`, which every adapter offers.
const WORKGROUP_BYTES: usize = 16 * 1024;

/// The kernels' `MAX_ACC` (output columns per invocation) and `MAX_SC` (streamed rows per
/// invocation and tile).
const MAX_ACC: usize = 32;
const MAX_SC: usize = 8;

/// Threads per workgroup of `attention_bwd_prep`.
const WG_PREP: u32 = 256;

/// Tile shapes, best first (largest workgroups and tiles): (owned rows, streamed rows per
/// tile, invocations per owned row).
const TILES: [(usize, usize, usize); 9] = [
    (32, 32, 4),
    (16, 32, 8),
    (16, 16, 8),
    (8, 16, 8),
    (8, 8, 8),
    (8, 8, 4),
    (4, 8, 8),
    (4, 8, 4),
    (4, 4, 4),
];

#[derive(Clone, Copy, Debug)]
struct Tiles {
    own: usize,
    stream: usize,
    tr: usize,
}

/// The first tile shape whose workgroup arrays (`words(own, stream)` f32 words) fit and whose
/// per-invocation arrays hold `d` and `dv` columns.
fn pick(d: usize, dv: usize, words: impl Fn(usize, usize) -> usize) -> Option<Tiles> {
    TILES
        .into_iter()
        .map(|(own, stream, tr)| Tiles { own, stream, tr })
        .find(|t| {
            t.stream.is_multiple_of(t.tr)
                && t.stream / t.tr <= MAX_SC
                && d.div_ceil(t.tr) <= MAX_ACC
                && dv.div_ceil(t.tr) <= MAX_ACC
                && words(t.own, t.stream) * 4 <= WORKGROUP_BYTES
        })
}

/// Odd row strides of the workgroup arrays (the kernels' `QS`, `VS`).
fn strides(d: usize, dv: usize) -> (usize, usize) {
    (d | 1, dv | 1)
}

/// Workgroup words of `attention_fwd` with `bq` queries and `bk` keys per tile: Q, K, V
/// tiles, scores and probabilities (rows of `bk + 1`), key flags.
fn fwd_words(d: usize, dv: usize, bq: usize, bk: usize) -> usize {
    let (qs, vs) = strides(d, dv);
    bq * qs + bk * (qs + vs) + 2 * bq * (bk + 1) + bk
}

/// Workgroup words of `attention_bwd_dq`: Q, dO, K, V tiles, dS (rows of `bk + 1`), flags.
fn dq_words(d: usize, dv: usize, bq: usize, bk: usize) -> usize {
    let (qs, vs) = strides(d, dv);
    (bq + bk) * (qs + vs) + bq * (bk + 1) + bk
}

/// Workgroup words of `attention_bwd_dkdv` with `bk` keys owned and `bq` queries per tile:
/// K, V, Q, dO tiles, P and dS (rows of `bq + 1`), lse and delta.
fn dkdv_words(d: usize, dv: usize, bk: usize, bq: usize) -> usize {
    let (qs, vs) = strides(d, dv);
    (bq + bk) * (qs + vs) + 2 * bk * (bq + 1) + 2 * bq
}

/// Whether every index the kernels compute into `t` fits in 32 bits.
fn fits_u32(t: &Tensor) -> bool {
    t.layout()
        .checked_max_index()
        .is_some_and(|m| m <= u32::MAX as usize)
}

/// Pushes a view's offset, then its strides (one per dimension).
fn push_strides(p: &mut Params, t: &Tensor) -> Result<()> {
    p.usize(t.layout().offset())?;
    for &s in t.layout().strides() {
        p.usize(s)?;
    }
    Ok(())
}

/// The parameter words 0..25 both kernel files share (see attention.wgsl).
fn common_params(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Params> {
    let (bsz, heads, nq, d) = (q.dims()[0], q.dims()[1], q.dims()[2], q.dims()[3]);
    let nk = k.dims()[2];
    let mut p = Params::new();
    p.usize(heads)?.usize(nq)?.usize(nk)?;
    p.f32(opts.scale_for(d) as f32)
        .u32(u32::from(opts.causal))
        .u32(u32::from(opts.key_padding_mask.is_some()));
    p.usize(bsz)?;
    for t in [q, k, v] {
        push_strides(&mut p, t)?;
    }
    match &opts.key_padding_mask {
        // (B, Nk): offset, batch stride, key stride.
        Some(mask) => push_strides(&mut p, mask)?,
        None => {
            p.u32(0).u32(0).u32(0);
        }
    }
    Ok(p)
}

/// The override constants of a tiled kernel: head dims, the tile shape under the names the
/// kernel gives its owned (`own`) and streamed (`stream`) rows.
fn constants(
    d: usize,
    dv: usize,
    t: Tiles,
    own: &'static str,
    stream: &'static str,
) -> [(&'static str, u32); 5] {
    [
        ("D", d as u32),
        ("DV", dv as u32),
        (own, t.own as u32),
        (stream, t.stream as u32),
        ("TR", t.tr as u32),
    ]
}

/// The workgroup grid of a tiled kernel: (row tiles, H, B).
fn grid(rows: usize, own: usize, heads: usize, bsz: usize) -> [u32; 3] {
    let clamp = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
    [clamp(rows.div_ceil(own)), clamp(heads), clamp(bsz)]
}

pub(crate) fn attention(
    be: &WgpuBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<AttentionOutput> {
    // q is (B, H, Nq, D), k is (B, H, Nk, D), v is (B, H, Nk, Dv).
    let (bsz, heads, nq, d) = (q.dims()[0], q.dims()[1], q.dims()[2], q.dims()[3]);
    let dv = v.dims()[3];
    let dtype = q.dtype();
    let t = be.elem(dtype, "attention")?;
    let tiles = pick(d, dv, |bq, bk| fwd_words(d, dv, bq, bk));
    let mask = opts.key_padding_mask.as_ref();
    let rows = bsz * heads * nq;
    let (Some(tiles), true) = (
        tiles,
        [q, k, v].into_iter().chain(mask).all(fits_u32) && rows * dv.max(1) <= u32::MAX as usize,
    ) else {
        return compose::attention(q, k, v, opts);
    };
    // out is (B, H, Nq, Dv) in the input dtype, lse (B, H, Nq) f32; both contiguous.
    let out = be.alloc(dtype, rows * dv)?;
    let lse = be.alloc(DType::F32, rows)?;
    if rows > 0 {
        let p = common_params(q, k, v, opts)?;
        let (qs, ks, vs) = (storage_of(q)?, storage_of(k)?, storage_of(v)?);
        // Without a mask the kernel never reads binding 6: q's buffer stands in.
        let mask_buf = match mask {
            Some(m) => storage_of(m)?.buffer(),
            None => qs.buffer(),
        };
        let consts = constants(d, dv, tiles, "BQ", "BK");
        be.dispatch(
            &Kernel::new(FWD, "attention_fwd", t).with_constants(&consts),
            &p,
            &[
                out.buffer(),
                lse.buffer(),
                qs.buffer(),
                ks.buffer(),
                vs.buffer(),
                mask_buf,
            ],
            grid(nq, tiles.own, heads, bsz),
        )?;
    }
    Ok(AttentionOutput {
        out: out.into_tensor([bsz, heads, nq, dv], q)?,
        lse: lse.into_tensor([bsz, heads, nq], q)?,
    })
}

pub(crate) fn attention_backward(
    be: &WgpuBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &AttentionOutput,
    d_out: &Tensor,
    opts: &AttentionOptions,
) -> Result<AttentionGrads> {
    // q is (B, H, Nq, D), k is (B, H, Nk, D), v is (B, H, Nk, Dv); out.out and d_out are
    // (B, H, Nq, Dv), out.lse is (B, H, Nq).
    let (bsz, heads, nq, d) = (q.dims()[0], q.dims()[1], q.dims()[2], q.dims()[3]);
    let (nk, dv) = (k.dims()[2], v.dims()[3]);
    let dtype = q.dtype();
    let t = be.elem(dtype, "attention_backward")?;
    let dq_tiles = pick(d, dv, |bq, bk| dq_words(d, dv, bq, bk));
    let kv_tiles = pick(d, dv, |bk, bq| dkdv_words(d, dv, bk, bq));
    let mask = opts.key_padding_mask.as_ref();
    let rows = bsz * heads * nq;
    let keys = bsz * heads * nk;
    let aux_len = 2 * rows + bsz * nk;
    let fits = [q, k, v, &out.out, d_out, &out.lse]
        .into_iter()
        .chain(mask)
        .all(fits_u32)
        && [rows * d, keys * d.max(dv), aux_len]
            .iter()
            .all(|&n| n <= u32::MAX as usize);
    let (Some(dq_tiles), Some(kv_tiles), true, DType::F32) =
        (dq_tiles, kv_tiles, fits, out.lse.dtype())
    else {
        return compose::attention_backward(q, k, v, out, d_out, opts);
    };
    // dq (B, H, Nq, D), dk (B, H, Nk, D), dv (B, H, Nk, Dv): contiguous, input dtype.
    let dq = be.alloc(dtype, rows * d)?;
    let dk = be.alloc(dtype, keys * d)?;
    let dv_grad = be.alloc(dtype, keys * dv)?;
    if aux_len > 0 {
        let mut p = common_params(q, k, v, opts)?;
        for t in [&out.out, d_out, &out.lse] {
            push_strides(&mut p, t)?;
        }
        let (qs, ks, vs) = (storage_of(q)?, storage_of(k)?, storage_of(v)?);
        let (os, gs, ls) = (
            storage_of(&out.out)?,
            storage_of(d_out)?,
            storage_of(&out.lse)?,
        );
        // aux: (lse or +BIG, delta) per query row, then a keep flag per (b, key).
        let aux = be.alloc(DType::F32, aux_len)?;
        // Without a mask the prep never reads binding 5: lse's buffer stands in.
        let mask_buf = match mask {
            Some(m) => storage_of(m)?.buffer(),
            None => ls.buffer(),
        };
        let prep = [("D", d as u32), ("DV", dv as u32), ("WG_PREP", WG_PREP)];
        be.dispatch(
            &Kernel::new(BWD, "attention_bwd_prep", t).with_constants(&prep),
            &p,
            &[
                aux.buffer(),
                os.buffer(),
                gs.buffer(),
                ls.buffer(),
                mask_buf,
            ],
            workgroups_for(rows + bsz * nk, WG_PREP),
        )?;
        // With no queries dk and dv are zeros, which this kernel writes too.
        if keys > 0 {
            let consts = constants(d, dv, kv_tiles, "BK", "BQ");
            be.dispatch(
                &Kernel::new(BWD, "attention_bwd_dkdv", t).with_constants(&consts),
                &p,
                &[
                    dk.buffer(),
                    qs.buffer(),
                    ks.buffer(),
                    vs.buffer(),
                    gs.buffer(),
                    aux.buffer(),
                    dv_grad.buffer(),
                ],
                grid(nk, kv_tiles.own, heads, bsz),
            )?;
        }
        // With no keys dq is zeros, which this kernel writes too.
        if rows > 0 {
            let consts = constants(d, dv, dq_tiles, "BQ", "BK");
            be.dispatch(
                &Kernel::new(BWD, "attention_bwd_dq", t).with_constants(&consts),
                &p,
                &[
                    dq.buffer(),
                    qs.buffer(),
                    ks.buffer(),
                    vs.buffer(),
                    gs.buffer(),
                    aux.buffer(),
                ],
                grid(nq, dq_tiles.own, heads, bsz),
            )?;
        }
    }
    Ok(AttentionGrads {
        dq: dq.into_tensor([bsz, heads, nq, d], q)?,
        dk: dk.into_tensor([bsz, heads, nk, d], q)?,
        dv: dv_grad.into_tensor([bsz, heads, nk, dv], q)?,
    })
}

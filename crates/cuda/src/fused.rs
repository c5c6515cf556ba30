//! The fused ops of the CUDA backend: hand-written kernels of `kernels/cuda/{norm,attention,
//! patch_embed,contrastive}.cu` and their launches.
//!
//! # For `backend.rs`: the functions to wire the `Backend` methods to
//!
//! Each takes the backend and the `Backend` method's own arguments, and falls back to
//! `glimpse_tensor::compose` for the cases its kernels do not cover (listed per function):
//!
//! * [`softmax_last_dim`]`(be, x)`, [`log_softmax_last_dim`]`(be, x)`
//! * [`layer_norm`]`(be, x, weight, bias, eps)`
//! * [`attention`]`(be, q, k, v, opts)`, [`attention_backward`]`(be, q, k, v, out, d_out, opts)`
//! * [`patch_embed`]`(be, images, weight, bias, opts)`
//! * [`contrastive_loss`]`(be, image, text, scale)`,
//!   [`contrastive_loss_backward`]`(be, image, text, scale, saved, d_loss)`
//!
//! (`linear` is not here: cuBLAS's matrix product plus a bias add is what a kernel would do.)
//!
//! Inputs are brought to the form each kernel assumes here, not in the kernels: row-wise ops
//! and patch weights want contiguous data (`.contiguous()`), attention and the contrastive
//! loss read strided rows with a contiguous last dimension, and the tensor-core kernels (which
//! copy 16-byte chunks with `cp.async`) need row strides and offsets that are multiples of 8
//! elements; anything else is copied first (`.copy()`). Half types use tensor cores
//! (`mma.sync`) for attention's forward and backward (head dims 32, 64, 80, 128 with
//! `Dv == D`), patch embedding (`P % 8 == 0`) and the contrastive loss (`D % 8 == 0`); every
//! other case runs a CUDA-core kernel that accepts any size in its range. Every launch checks
//! its result through `CudaBackend::check_launch`.

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaFunction, CudaView, CudaViewMut, LaunchArgs, LaunchConfig, PushKernelArg,
};
use glimpse_tensor::{
    AttentionGrads, AttentionOptions, AttentionOutput, ContrastiveGrads, ContrastiveOutput, DType,
    Error, PatchEmbedOptions, Result, Shape, Tensor, compose,
};
use half::{bf16, f16};

use crate::backend::{BLOCK, CudaBackend, KernelCandidates, drv, grid_for};
use crate::ops::suffix;
use crate::storage::{CudaData, CudaStorage, storage_of};

// ---------------------------------------------------------------------------------- helpers

/// Rows of the row-wise kernels up to this length are kept in registers, one warp per row
/// (`NM_WARP_COLS` in norm.cu); longer rows take one 256-thread block each.
const NORM_WARP_COLS: usize = 1024;
/// Rows per 256-thread block in the one-warp-per-row mode.
const NORM_ROWS_PER_BLOCK: usize = 8;
/// Threads of the row-wise kernels (`NM_THREADS`).
const NORM_THREADS: u32 = 256;

/// Head dims with tensor-core attention kernels (`attention_{fwd,bwd}_mma_d<D>_*`).
const ATTN_MMA_DIMS: [usize; 4] = [32, 64, 80, 128];
/// Query rows per tile of the tensor-core backward (`AT_MMA_BQ`), and the key tile
/// (`AT_MMA_BC`) of both directions (the two-tile forward at D = 128 takes 32 keys at a time).
const ATTN_MMA_BQ: usize = 64;
const ATTN_MMA_BC: usize = 64;
/// Threads of the tensor-core forward (`AT_MMA_THREADS`).
const ATTN_MMA_THREADS: u32 = 128;
/// Query (and key) rows per block of the CUDA-core kernels (`AT_SIMT_B`), their threads
/// (`AT_SIMT_THREADS`) and the largest head dim they take (`AT_SIMT_MAXD`).
const ATTN_SIMT_B: usize = 32;
const ATTN_SIMT_THREADS: u32 = 128;
const ATTN_SIMT_MAXD: usize = 128;

/// Tile of the GEMM-shaped kernels (`CT_BM` = `CT_BN` = `PE_BM` = `PE_BN`) and their threads.
const TILE: usize = 128;
const TILE_THREADS: u32 = 256;
/// Dynamic shared memory of the contrastive tile kernels: the tensor-core kernels with K steps
/// of 64 (`contrastive_*_mma_*`: 3 pipeline stages of 256 rows of 72 halves,
/// `CT_PIPE_BYTES(64)`), and the rest (`contrastive_*_mma32_*`, whose pipeline of rows of 40
/// halves is smaller, and the CUDA-core kernels: the f32 logits tile of 128 rows of 132 with
/// its column statistics, `CT_TILE_BYTES`).
const CT_MMA64_SMEM_BYTES: u32 = (3 * 256 * 72 * 2) as u32;
const CT_TILE_SMEM_BYTES: u32 = (128 * 132 * 4 + 4 * 128 * 4) as u32;

/// The contrastive tile kernels' variant (`mma`, `mma32` or `simt`) and dynamic shared memory:
/// K steps of 64 where a block may have `CT_MMA64_SMEM_BYTES` (Hopper, A100), else of 32
/// (the 99 KB of Ada and consumer Ampere).
fn contrastive_tiles(be: &CudaBackend, mma: bool) -> (&'static str, u32) {
    if !mma {
        ("simt", CT_TILE_SMEM_BYTES)
    } else if be.max_shared_memory_per_block() >= CT_MMA64_SMEM_BYTES as usize {
        ("mma", CT_MMA64_SMEM_BYTES)
    } else {
        ("mma32", CT_TILE_SMEM_BYTES)
    }
}
/// Dynamic shared memory of the patch-embedding kernels `mma` and `simt` (`PE_SMEM_BYTES`: 4
/// pipeline stages of 128 + 128 rows of 40 halves) and of the candidate `mma64`
/// (`PE_SMEM64_BYTES`: 3 stages of rows of 72 halves).
const PE_SMEM_BYTES: u32 = (4 * (128 + 128) * 40 * 2) as u32;
const PE_SMEM64_BYTES: u32 = (3 * (128 + 128) * 72 * 2) as u32;
/// Whether two blocks with `smem` bytes of dynamic shared memory each (and the 1 KB per block
/// the driver reserves) fit one multiprocessor, as the default kernels' blocks do: the gate of
/// the candidates with larger tiles (Hopper yes; an A100 would hold one, Ada's 99 KB blocks
/// none).
fn two_blocks_fit(be: &CudaBackend, smem: u32) -> bool {
    be.max_shared_memory_per_block() >= 2 * (smem as usize + 1024)
}

/// Largest strip of contrastive gradient weights the backward holds at once.
const CT_STRIP_BYTES: usize = 256 << 20;

/// The largest 1-D grid the driver accepts.
const MAX_GRID: usize = i32::MAX as usize;
/// Default dynamic shared memory limit; above it a kernel must opt in.
const SMEM_DEFAULT: u32 = 48 * 1024;

/// Pointer arguments that are absent (bias, mask, ...): a null device pointer.
static NULL: u64 = 0;

/// Whether the kernels handle this dtype (f64 never reaches this backend; u32 is no float).
fn kernel_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// Whether this device can run the fused kernels: every source uses sm_80 instructions
/// (`cp.async`, bf16 conversions, bf16 `mma.sync`), so older devices use the compositions.
fn device_ok(be: &CudaBackend) -> bool {
    be.arch() >= 80
}

fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// Whether every value fits the kernels' 32-bit `int` parameters.
fn fits_i32(values: &[usize]) -> bool {
    values.iter().all(|&v| v <= i32::MAX as usize)
}

/// A read-only typed device view of a tensor's storage, starting at its layout's offset.
enum View<'a> {
    F16(CudaView<'a, f16>),
    BF16(CudaView<'a, bf16>),
    F32(CudaView<'a, f32>),
    U32(CudaView<'a, u32>),
}

fn view(t: &Tensor) -> Result<View<'_>> {
    let off = t.layout().offset();
    Ok(match storage_of(t)?.data() {
        CudaData::F16(s) => View::F16(s.slice(off..)),
        CudaData::BF16(s) => View::BF16(s.slice(off..)),
        CudaData::F32(s) => View::F32(s.slice(off..)),
        CudaData::U32(s) => View::U32(s.slice(off..)),
    })
}

fn arg_view<'a, 'b: 'a>(b: &mut LaunchArgs<'a>, v: &'a View<'b>) {
    match v {
        View::F16(s) => b.arg(s),
        View::BF16(s) => b.arg(s),
        View::F32(s) => b.arg(s),
        View::U32(s) => b.arg(s),
    };
}

fn arg_opt<'a, 'b: 'a>(b: &mut LaunchArgs<'a>, v: Option<&'a View<'b>>) {
    match v {
        Some(v) => arg_view(b, v),
        None => {
            b.arg(&NULL);
        }
    }
}

fn arg_out<'a>(b: &mut LaunchArgs<'a>, d: &'a mut CudaData) {
    match d {
        CudaData::F16(s) => b.arg(s),
        CudaData::BF16(s) => b.arg(s),
        CudaData::F32(s) => b.arg(s),
        CudaData::U32(s) => b.arg(s),
    };
}

/// A writable typed view of an output buffer from element `start`.
enum ViewMut<'a> {
    F16(CudaViewMut<'a, f16>),
    BF16(CudaViewMut<'a, bf16>),
    F32(CudaViewMut<'a, f32>),
    U32(CudaViewMut<'a, u32>),
}

fn view_mut(d: &mut CudaData, start: usize) -> ViewMut<'_> {
    match d {
        CudaData::F16(s) => ViewMut::F16(s.slice_mut(start..)),
        CudaData::BF16(s) => ViewMut::BF16(s.slice_mut(start..)),
        CudaData::F32(s) => ViewMut::F32(s.slice_mut(start..)),
        CudaData::U32(s) => ViewMut::U32(s.slice_mut(start..)),
    }
}

fn arg_view_mut<'a, 'b: 'a>(b: &mut LaunchArgs<'a>, v: &'a mut ViewMut<'b>) {
    match v {
        ViewMut::F16(s) => b.arg(s),
        ViewMut::BF16(s) => b.arg(s),
        ViewMut::F32(s) => b.arg(s),
        ViewMut::U32(s) => b.arg(s),
    };
}

/// The kernel `name` of `source`, allowed `bytes` of dynamic shared memory per block (kernels
/// above 48 KB must opt in). A kernel that needs more than the device gives a block
/// ([`CudaBackend::max_shared_memory_per_block`], which `GLIMPSE_CUDA_SMEM_LIMIT` may lower)
/// is an error here rather than a failed launch.
fn smem_function(
    be: &CudaBackend,
    source: &'static str,
    name: &str,
    bytes: u32,
) -> Result<CudaFunction> {
    if bytes as usize > be.max_shared_memory_per_block() {
        return Err(Error::backend(
            "cuda",
            format!(
                "kernel {name} needs {bytes} bytes of shared memory per block; this device \
                 allows {}",
                be.max_shared_memory_per_block()
            ),
        ));
    }
    let f = be.function(source, name)?;
    if bytes > SMEM_DEFAULT {
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(|e| drv("raising the shared-memory limit", e))?;
    }
    Ok(f)
}

fn cfg_1d(blocks: usize, threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    }
}

/// `t` itself when its last dimension is contiguous, else a contiguous copy.
fn unit_last(t: &Tensor) -> Result<Tensor> {
    let l = t.layout();
    let last = t.rank() - 1;
    if l.dims()[last] <= 1 || l.strides()[last] == 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// `t` itself when every dimension of more than one element but the last has a stride that is
/// a multiple of 8 elements, the last is contiguous and the offset is a multiple of 8 (so that
/// every row starts 16 bytes aligned for half types); else a fresh contiguous copy (whose rows
/// are aligned when the last dimension is a multiple of 8).
fn aligned_rows(t: &Tensor) -> Result<Tensor> {
    let l = t.layout();
    let last = t.rank() - 1;
    let rows_ok = l
        .dims()
        .iter()
        .zip(l.strides())
        .take(last)
        .all(|(&d, &s)| d <= 1 || s.is_multiple_of(8));
    if rows_ok && l.strides()[last] == 1 && l.offset().is_multiple_of(8) {
        Ok(t.clone())
    } else {
        t.copy()
    }
}

/// Whether `t` has rows as `aligned_rows` makes them.
fn rows_aligned(t: &Tensor) -> bool {
    let l = t.layout();
    let last = t.rank() - 1;
    l.strides()[last] == 1
        && l.offset().is_multiple_of(8)
        && l.dims()
            .iter()
            .zip(l.strides())
            .take(last)
            .all(|(&d, &s)| d <= 1 || s.is_multiple_of(8))
}

/// A one-element contiguous f32 copy of a scalar tensor (for kernels that read it on the
/// device, so the host never waits for it).
fn scalar_f32(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)?.contiguous()
}

/// Wraps a freshly written buffer as a contiguous tensor of `shape`.
fn output(data: CudaData, shape: impl Into<Shape>, like: &Tensor) -> Result<Tensor> {
    let shape = shape.into();
    let n = shape.elem_count();
    CudaStorage::new(data, n).into_tensor(shape, like)
}

// ---------------------------------------------------------------------------------- norm.cu

/// Rows, columns and launch shape of a row-wise kernel over `x`'s last dimension; `None` when
/// the kernels cannot take it (no elements, or sizes past their 32-bit grid and arguments).
fn row_launch(x: &Tensor) -> Option<(usize, usize, LaunchConfig)> {
    let cols = *x.dims().last()?;
    let n = x.elem_count();
    if cols == 0 || n == 0 || cols > i32::MAX as usize {
        return None;
    }
    let rows = n / cols;
    let blocks = if cols <= NORM_WARP_COLS {
        rows.div_ceil(NORM_ROWS_PER_BLOCK)
    } else {
        rows
    };
    (blocks <= MAX_GRID).then(|| (rows, cols, cfg_1d(blocks, NORM_THREADS, 0)))
}

fn softmax_impl(be: &CudaBackend, x: &Tensor, log: bool) -> Result<Tensor> {
    let fallback = || {
        if log {
            compose::log_softmax_last_dim(x)
        } else {
            compose::softmax_last_dim(x)
        }
    };
    if !device_ok(be) || !kernel_dtype(x.dtype()) {
        return fallback();
    }
    let Some((rows, cols, cfg)) = row_launch(x) else {
        return fallback();
    };
    let x = x.contiguous()?;
    let name = format!(
        "{}_{}",
        if log { "log_softmax" } else { "softmax" },
        suffix(x.dtype())
    );
    let f = be.function("norm.cu", &name)?;
    let mut out = be.alloc_data(x.dtype(), rows * cols)?;
    {
        let xv = view(&x)?;
        let (rows64, cols32) = (rows as i64, cols as i32);
        let mut b = be.stream().launch_builder(&f);
        arg_view(&mut b, &xv);
        arg_out(&mut b, &mut out);
        b.arg(&rows64);
        b.arg(&cols32);
        // SAFETY: (log_)softmax_<dt>(const T* x, T* out, long long rows, int cols): x is the
        // contiguous (rows, cols) input of dtype <dt> from its offset, out a fresh buffer of
        // rows * cols elements of the same dtype; the grid is the one norm.cu's mode for
        // `cols` expects (row_launch), so every row is written exactly once.
        let launched = unsafe { b.launch(cfg) }.map(|_| ());
        be.check_launch(&name, launched)?;
    }
    output(out, x.shape().clone(), &x)
}

/// Softmax over the last dimension (f32/f16/bf16; anything else or empty: the composition).
pub(crate) fn softmax_last_dim(be: &CudaBackend, x: &Tensor) -> Result<Tensor> {
    softmax_impl(be, x, false)
}

/// Log-softmax over the last dimension (as [`softmax_last_dim`]).
pub(crate) fn log_softmax_last_dim(be: &CudaBackend, x: &Tensor) -> Result<Tensor> {
    softmax_impl(be, x, true)
}

/// Layer norm over the last dimension with optional weight and bias (f32/f16/bf16).
pub(crate) fn layer_norm(
    be: &CudaBackend,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    if !device_ok(be) || !kernel_dtype(x.dtype()) {
        return compose::layer_norm(x, weight, bias, eps);
    }
    let Some((rows, cols, cfg)) = row_launch(x) else {
        return compose::layer_norm(x, weight, bias, eps);
    };
    let x = x.contiguous()?;
    let w = weight.map(Tensor::contiguous).transpose()?;
    let bi = bias.map(Tensor::contiguous).transpose()?;
    let name = format!("layer_norm_{}", suffix(x.dtype()));
    let f = be.function("norm.cu", &name)?;
    let mut out = be.alloc_data(x.dtype(), rows * cols)?;
    {
        let xv = view(&x)?;
        let wv = w.as_ref().map(view).transpose()?;
        let bv = bi.as_ref().map(view).transpose()?;
        let (rows64, cols32, eps32) = (rows as i64, cols as i32, eps as f32);
        let mut b = be.stream().launch_builder(&f);
        arg_view(&mut b, &xv);
        arg_opt(&mut b, wv.as_ref());
        arg_opt(&mut b, bv.as_ref());
        arg_out(&mut b, &mut out);
        b.arg(&rows64);
        b.arg(&cols32);
        b.arg(&eps32);
        // SAFETY: layer_norm_<dt>(const T* x, const T* weight, const T* bias, T* out,
        // long long rows, int cols, float eps): x contiguous (rows, cols) of dtype <dt>;
        // weight and bias contiguous (cols) of the same dtype (checked by the tensor crate)
        // or null; out a fresh rows * cols buffer; the grid matches norm.cu's mode for cols.
        let launched = unsafe { b.launch(cfg) }.map(|_| ());
        be.check_launch(&name, launched)?;
    }
    output(out, x.shape().clone(), &x)
}

// ---------------------------------------------------------------------------------- attention

/// The (batch, head, row) strides of a 4-D tensor, as the kernels' `long long`s.
fn strides3(t: &Tensor) -> [i64; 3] {
    let s = t.layout().strides();
    [s[0] as i64, s[1] as i64, s[2] as i64]
}

fn attn_simt_smem(d: usize, dv: usize) -> u32 {
    let b = ATTN_SIMT_B;
    ((b * (d + 1) * 2 + b * (dv + 1) + b * 33 + b) * 4) as u32
}

fn attn_bwd_smem(d: usize, dv: usize) -> u32 {
    let b = ATTN_SIMT_B;
    ((b * (2 * d + 2 * dv + 4) + 2 * b * 33 + 3 * b) * 4) as u32
}

/// Dynamic shared memory of `attention_bwd_mma_d<D>_*`: K, V, Q, dO tiles of 64 rows of
/// `D + 8`, dS as 64 x `AT_BWD_LDS` (72) halves, and three 64-float vectors.
fn attn_bwd_mma_smem(d: usize) -> u32 {
    (4 * ATTN_MMA_BC * (d + 8) * 2 + ATTN_MMA_BQ * 72 * 2 + 3 * ATTN_MMA_BC * 4) as u32
}

/// Dynamic shared memory of the tensor-core forward with `rows` query rows per block and
/// `wide` key tiles (the `attn-fwd-k64` candidate): the Q tile, two stages of K and V tiles
/// (rows of `D + 8`) and two key-validity vectors.
fn attn_mma_smem(d: usize, rows: usize, wide: bool) -> u32 {
    let bc = attn_fwd_key_tile(d, rows, wide);
    ((rows + 4 * bc) * (d + 8) * 2 + 2 * bc * 4) as u32
}

/// The tensor-core backward kernel for head dim `d` and dtype suffix `sfx`, with the
/// candidates `_pf` (attn-bwd-prefetch) and `_red2` (attn-bwd-red2) that are on.
fn attn_bwd_mma_name(c: KernelCandidates, d: usize, sfx: &str) -> String {
    let pf = if c.attention_backward_prefetch {
        "_pf"
    } else {
        ""
    };
    let red2 = if c.attention_backward_vector_atomics {
        "_red2"
    } else {
        ""
    };
    format!("attention_bwd_mma{pf}{red2}_d{d}_{sfx}")
}

/// Keys per tile of the tensor-core forward (`AT_FWD_MMA_BC` in attention.cu): 64, or 32 for
/// 128 rows at D = 128 unless `wide` (`attention_fwd_mma2_k64_d128_*`).
fn attn_fwd_key_tile(d: usize, rows: usize, wide: bool) -> usize {
    if rows == 128 && d >= 128 && !wide {
        32
    } else {
        ATTN_MMA_BC
    }
}

/// Query rows per block of the tensor-core forward: 128 (two 16-row tiles per warp, half the
/// shared-memory reads per multiply) when there are enough rows to fill the blocks without
/// more padding than 64-row blocks would need (beyond an eighth of Nq) and enough blocks to
/// give every multiprocessor one; else 64. The backend's fixed setting wins.
fn attn_fwd_rows(be: &CudaBackend, bh: usize, nq: usize) -> usize {
    if let Some(rows) = be.attention_forward_rows() {
        return rows;
    }
    let pad = |rows: usize| nq.div_ceil(rows) * rows - nq;
    let fills = bh * nq.div_ceil(128) >= be.sm_count();
    if nq > 64 && fills && pad(128) <= pad(64) + nq / 8 {
        128
    } else {
        64
    }
}

/// Scaled dot-product attention. Kernels for f32/f16/bf16 with head dims `D, Dv <= 128`:
/// tensor cores for half types with `D == Dv` in {32, 64, 80, 128}, CUDA cores otherwise. No
/// queries or no keys, larger head dims and sizes past 32 bits use the composition.
pub(crate) fn attention(
    be: &CudaBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<AttentionOutput> {
    let (bsz, heads, nq, d) = (q.dims()[0], q.dims()[1], q.dims()[2], q.dims()[3]);
    let (nk, dv) = (k.dims()[2], v.dims()[3]);
    let dtype = q.dtype();
    if !device_ok(be)
        || !kernel_dtype(dtype)
        || bsz * heads == 0
        || nq == 0
        || nk == 0
        || d > ATTN_SIMT_MAXD
        || dv > ATTN_SIMT_MAXD
        || !fits_i32(&[heads, nq, nk, bsz * heads * nq.div_ceil(ATTN_SIMT_B)])
    {
        return compose::attention(q, k, v, opts);
    }
    let mma = is_half(dtype) && d == dv && ATTN_MMA_DIMS.contains(&d);
    let prep = |t: &Tensor| if mma { aligned_rows(t) } else { unit_last(t) };
    let (q, k, v) = (prep(q)?, prep(k)?, prep(v)?);
    let mask = opts
        .key_padding_mask
        .as_ref()
        .map(Tensor::contiguous)
        .transpose()?;
    let scale_log2 = (opts.scale_for(d) * std::f64::consts::LOG2_E) as f32;
    let causal = i32::from(opts.causal);
    let rows = if mma {
        attn_fwd_rows(be, bsz * heads, nq)
    } else {
        ATTN_SIMT_B
    };
    let tiles = nq.div_ceil(rows);
    let blocks = bsz * heads * tiles;
    let (name, cfg) = if mma {
        let candidates = be.kernel_candidates();
        // The 64-key kernel exists for 128 rows at D = 128 only (below, mma2 has 64 already).
        let wide = candidates.attention_forward_wide_key_tiles
            && rows == 128
            && d == 128
            && two_blocks_fit(be, attn_mma_smem(d, rows, true));
        let kernel = match (rows, wide, candidates.attention_forward_skip_padding) {
            (_, true, _) => "mma2_k64",
            (128, false, true) => "mma2_skip",
            (128, false, false) => "mma2",
            (_, _, true) => "mma_skip",
            (_, _, false) => "mma",
        };
        (
            format!("attention_fwd_{kernel}_d{d}_{}", suffix(dtype)),
            cfg_1d(blocks, ATTN_MMA_THREADS, attn_mma_smem(d, rows, wide)),
        )
    } else {
        (
            format!("attention_fwd_simt_{}", suffix(dtype)),
            cfg_1d(blocks, ATTN_SIMT_THREADS, attn_simt_smem(d, dv)),
        )
    };
    let f = smem_function(be, "attention.cu", &name, cfg.shared_mem_bytes)?;
    let mut out = be.alloc_data(dtype, bsz * heads * nq * dv)?;
    let mut lse = CudaData::F32(be.alloc::<f32>(bsz * heads * nq)?);
    {
        let (qv, kv, vv) = (view(&q)?, view(&k)?, view(&v)?);
        let mv = mask.as_ref().map(view).transpose()?;
        let [qsb, qsh, qsn] = strides3(&q);
        let [ksb, ksh, ksn] = strides3(&k);
        let [vsb, vsh, vsn] = strides3(&v);
        let (h32, nq32, nk32, d32, dv32, tiles32) = (
            heads as i32,
            nq as i32,
            nk as i32,
            d as i32,
            dv as i32,
            tiles as i32,
        );
        let mut b = be.stream().launch_builder(&f);
        arg_view(&mut b, &qv);
        arg_view(&mut b, &kv);
        arg_view(&mut b, &vv);
        arg_opt(&mut b, mv.as_ref());
        arg_out(&mut b, &mut out);
        arg_out(&mut b, &mut lse);
        b.arg(&h32);
        b.arg(&nq32);
        b.arg(&nk32);
        if !mma {
            b.arg(&d32);
            b.arg(&dv32);
        }
        for s in [&qsb, &qsh, &qsn, &ksb, &ksh, &ksn, &vsb, &vsh, &vsn] {
            b.arg(s);
        }
        b.arg(&scale_log2);
        b.arg(&causal);
        b.arg(&tiles32);
        // SAFETY: attention_fwd_{mma,mma2}{,_skip}_d<D>_<dt> and attention_fwd_mma2_k64_d128_<dt>
        // (q, k, v, key_mask, out, lse, int H,
        // int Nq, int Nk, 9 x long long strides, float scale_log2, int causal, int q_tiles) and
        // attention_fwd_simt_<dt>(same, with int D, int Dv after Nk): q, k, v are
        // (B, H, N, D) views of dtype <dt> from their offsets whose strides are passed (last
        // dimension contiguous; for the mma kernel D == Dv == <D> and rows 16-byte aligned,
        // aligned_rows); key_mask is the contiguous (B, Nk) u32 mask or null; out is a fresh
        // B*H*Nq*Dv buffer of <dt>, lse a fresh B*H*Nq f32 buffer; the grid is B*H*q_tiles
        // blocks with the threads and dynamic shared memory the kernel's header gives.
        let launched = unsafe { b.launch(cfg) }.map(|_| ());
        be.check_launch(&name, launched)?;
    }
    Ok(AttentionOutput {
        out: output(out, [bsz, heads, nq, dv], &q)?,
        lse: output(lse, [bsz, heads, nq], &q)?,
    })
}

/// Gradients of [`attention`], recomputing probabilities from the saved log-sum-exp: tensor
/// cores for half types with `D == Dv` in {32, 64, 80, 128}, CUDA cores for the rest with
/// `D, Dv <= 128`; otherwise the composition.
pub(crate) fn attention_backward(
    be: &CudaBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &AttentionOutput,
    d_out: &Tensor,
    opts: &AttentionOptions,
) -> Result<AttentionGrads> {
    let (bsz, heads, nq, d) = (q.dims()[0], q.dims()[1], q.dims()[2], q.dims()[3]);
    let (nk, dv) = (k.dims()[2], v.dims()[3]);
    let dtype = q.dtype();
    let rows = bsz * heads * nq;
    if !device_ok(be)
        || !kernel_dtype(dtype)
        || bsz * heads == 0
        || nq == 0
        || nk == 0
        || d > ATTN_SIMT_MAXD
        || dv > ATTN_SIMT_MAXD
        || !fits_i32(&[
            heads,
            nq,
            nk,
            bsz * heads * nk.div_ceil(ATTN_SIMT_B),
            rows.div_ceil(8),
        ])
    {
        return compose::attention_backward(q, k, v, out, d_out, opts);
    }
    let mma = is_half(dtype) && d == dv && ATTN_MMA_DIMS.contains(&d);
    let prep = |t: &Tensor| if mma { aligned_rows(t) } else { unit_last(t) };
    let (q, k, v) = (prep(q)?, prep(k)?, prep(v)?);
    let (o, g) = (unit_last(&out.out)?, prep(d_out)?);
    let lse = out.lse.to_dtype(DType::F32)?.contiguous()?;
    let mask = opts
        .key_padding_mask
        .as_ref()
        .map(Tensor::contiguous)
        .transpose()?;
    let scale = opts.scale_for(d) as f32;
    let causal = i32::from(opts.causal);
    let sfx = suffix(dtype);
    let (h32, nq32, nk32, d32, dv32) = (heads as i32, nq as i32, nk as i32, d as i32, dv as i32);

    // delta = rowsum(dO * O), and dq_acc zeroed row by row.
    let mut delta = CudaData::F32(be.alloc::<f32>(rows)?);
    let mut dq_acc = CudaData::F32(be.alloc::<f32>(rows * d)?);
    {
        let name = format!("attention_bwd_prep_{sfx}");
        let f = be.function("attention.cu", &name)?;
        let (ov, gv) = (view(&o)?, view(&g)?);
        let [osb, osh, osn] = strides3(&o);
        let [gsb, gsh, gsn] = strides3(&g);
        let rows64 = rows as i64;
        let mut b = be.stream().launch_builder(&f);
        arg_view(&mut b, &ov);
        arg_view(&mut b, &gv);
        arg_out(&mut b, &mut delta);
        arg_out(&mut b, &mut dq_acc);
        for x in [&h32, &nq32, &d32, &dv32] {
            b.arg(x);
        }
        for s in [&osb, &osh, &osn, &gsb, &gsh, &gsn, &rows64] {
            b.arg(s);
        }
        let cfg = cfg_1d(rows.div_ceil(8), 256, 0);
        // SAFETY: attention_bwd_prep_<dt>(const T* o, const T* dout, float* delta,
        // float* dq_acc, int H, int Nq, int D, int Dv, 6 x long long strides, long long rows):
        // o and dout are (B, H, Nq, Dv) views of <dt> (last dim contiguous) with their
        // strides; delta (rows) and dq_acc (rows * D) are fresh f32 buffers; one warp per row
        // over ceil(rows / 8) blocks of 256 threads, rows past the end return.
        let launched = unsafe { b.launch(cfg) }.map(|_| ());
        be.check_launch(&name, launched)?;
    }

    let mut dk = be.alloc_data(dtype, bsz * heads * nk * d)?;
    let mut dvv = be.alloc_data(dtype, bsz * heads * nk * dv)?;
    {
        let (name, key_block, threads, smem) = if mma {
            (
                attn_bwd_mma_name(be.kernel_candidates(), d, sfx),
                ATTN_MMA_BC,
                ATTN_MMA_THREADS,
                attn_bwd_mma_smem(d),
            )
        } else {
            (
                format!("attention_bwd_simt_{sfx}"),
                ATTN_SIMT_B,
                ATTN_SIMT_THREADS,
                attn_bwd_smem(d, dv),
            )
        };
        let f = smem_function(be, "attention.cu", &name, smem)?;
        let (qv, kv, vv, gv, lv) = (view(&q)?, view(&k)?, view(&v)?, view(&g)?, view(&lse)?);
        let mv = mask.as_ref().map(view).transpose()?;
        let [qsb, qsh, qsn] = strides3(&q);
        let [ksb, ksh, ksn] = strides3(&k);
        let [vsb, vsh, vsn] = strides3(&v);
        let [gsb, gsh, gsn] = strides3(&g);
        let k_tiles = nk.div_ceil(key_block);
        let k_tiles32 = k_tiles as i32;
        let mut b = be.stream().launch_builder(&f);
        arg_view(&mut b, &qv);
        arg_view(&mut b, &kv);
        arg_view(&mut b, &vv);
        arg_view(&mut b, &gv);
        arg_view(&mut b, &lv);
        arg_out(&mut b, &mut delta);
        arg_opt(&mut b, mv.as_ref());
        arg_out(&mut b, &mut dq_acc);
        arg_out(&mut b, &mut dk);
        arg_out(&mut b, &mut dvv);
        for x in [&h32, &nq32, &nk32] {
            b.arg(x);
        }
        if !mma {
            b.arg(&d32);
            b.arg(&dv32);
        }
        for s in [
            &qsb, &qsh, &qsn, &ksb, &ksh, &ksn, &vsb, &vsh, &vsn, &gsb, &gsh, &gsn,
        ] {
            b.arg(s);
        }
        b.arg(&scale);
        b.arg(&causal);
        b.arg(&k_tiles32);
        let cfg = cfg_1d(bsz * heads * k_tiles, threads, smem);
        // SAFETY: attention_bwd_simt_<dt>(q, k, v, dout, const float* lse, const float* delta,
        // const unsigned* key_mask, float* dq_acc, T* dk, T* dv, int H, int Nq, int Nk, int D,
        // int Dv, 12 x long long strides, float scale, int causal, int k_tiles) and
        // attention_bwd_mma{,_pf}{,_red2}_d<D>_<dt>(same without int D, int Dv): q, k, v, dout
        // are (B, H, N, D) views of <dt> with their strides (last dim contiguous; for the mma
        // kernel D == Dv == <D> and rows 16-byte aligned, aligned_rows); lse is the
        // contiguous (B, H, Nq) f32 copy, delta the prep kernel's output, key_mask the
        // contiguous (B, Nk) u32 mask or null; dq_acc (B*H*Nq*D f32) was zeroed by the prep
        // kernel earlier on this stream; dk, dv are fresh (B, H, Nk, D|Dv) buffers of <dt>;
        // B*H*k_tiles blocks (64 keys each for mma, 32 for simt) of 128 threads with the
        // attn_bwd_mma_smem / attn_bwd_smem bytes of dynamic shared memory.
        let launched = unsafe { b.launch(cfg) }.map(|_| ());
        be.check_launch(&name, launched)?;
    }

    let dq = if dtype == DType::F32 {
        dq_acc
    } else {
        let n = rows * d;
        let name = format!("attention_bwd_dq_{sfx}");
        let f = be.function("attention.cu", &name)?;
        let mut dq = be.alloc_data(dtype, n)?;
        {
            let n64 = n as i64;
            let mut b = be.stream().launch_builder(&f);
            arg_out(&mut b, &mut dq_acc);
            arg_out(&mut b, &mut dq);
            b.arg(&n64);
            // SAFETY: attention_bwd_dq_<dt>(const float* acc, T* dq, long long n): acc is the
            // n-element f32 dq accumulator, dq a fresh n-element buffer of <dt>; grid-stride.
            let launched = unsafe { b.launch(grid_for(n)) }.map(|_| ());
            be.check_launch(&name, launched)?;
        }
        dq
    };
    Ok(AttentionGrads {
        dq: output(dq, [bsz, heads, nq, d], &q)?,
        dk: output(dk, [bsz, heads, nk, d], &q)?,
        dv: output(dvv, [bsz, heads, nk, dv], &q)?,
    })
}

// ---------------------------------------------------------------------------------- patch_embed

/// Patch embedding as one GEMM over gathered patches with bias, position rows and the class
/// row in the epilogue (f32/f16/bf16; tensor cores for half types when `P % 8 == 0` and the
/// image rows are 16-byte aligned). Empty batches or embeddings use the composition.
pub(crate) fn patch_embed(
    be: &CudaBackend,
    images: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &PatchEmbedOptions,
) -> Result<Tensor> {
    let dtype = images.dtype();
    let (bsz, c, h, w) = (
        images.dims()[0],
        images.dims()[1],
        images.dims()[2],
        images.dims()[3],
    );
    let p = opts.patch_size;
    let e = weight.dims()[0];
    let (gh, gw) = (h / p, w / p);
    let npatch = gh * gw;
    let has_cls = usize::from(opts.class_embedding.is_some());
    let rows = npatch + has_cls;
    let m = bsz * npatch;
    let k = c * p * p;
    let blocks = m.div_ceil(TILE) * e.div_ceil(TILE);
    if !device_ok(be)
        || !kernel_dtype(dtype)
        || m == 0
        || e == 0
        || blocks > MAX_GRID
        || !fits_i32(&[c, p, gw, e, npatch, k])
    {
        return compose::patch_embed(images, weight, bias, opts);
    }
    let img = unit_last(images)?;
    let mma = is_half(dtype) && p.is_multiple_of(8) && rows_aligned(&img);
    let wt = if mma {
        aligned_rows(&weight.contiguous()?.reshape([e, k])?)?
    } else {
        weight.contiguous()?
    };
    let bi = bias.map(Tensor::contiguous).transpose()?;
    let cls = opts
        .class_embedding
        .as_ref()
        .map(Tensor::contiguous)
        .transpose()?;
    let pos = opts
        .position_embedding
        .as_ref()
        .map(Tensor::contiguous)
        .transpose()?;
    let k64 = mma && be.kernel_candidates().patch_embed_k64 && two_blocks_fit(be, PE_SMEM64_BYTES);
    let (kind, smem) = match (mma, k64) {
        (true, true) => ("mma64", PE_SMEM64_BYTES),
        (true, false) => ("mma", PE_SMEM_BYTES),
        (false, _) => ("simt", PE_SMEM_BYTES),
    };
    let name = format!("patch_embed_{kind}_{}", suffix(dtype));
    let f = smem_function(be, "patch_embed.cu", &name, smem)?;
    let mut out = be.alloc_data(dtype, bsz * rows * e)?;
    {
        let (iv, wv) = (view(&img)?, view(&wt)?);
        let bv = bi.as_ref().map(view).transpose()?;
        let cv = cls.as_ref().map(view).transpose()?;
        let pv = pos.as_ref().map(view).transpose()?;
        let s = img.layout().strides();
        let (sb, sc, sh) = (s[0] as i64, s[1] as i64, s[2] as i64);
        let (c32, p32, gw32, e32, np32, cls32) = (
            c as i32,
            p as i32,
            gw as i32,
            e as i32,
            npatch as i32,
            has_cls as i32,
        );
        let m64 = m as i64;
        let mut b = be.stream().launch_builder(&f);
        arg_view(&mut b, &iv);
        b.arg(&sb);
        b.arg(&sc);
        b.arg(&sh);
        arg_view(&mut b, &wv);
        arg_opt(&mut b, bv.as_ref());
        arg_opt(&mut b, cv.as_ref());
        arg_opt(&mut b, pv.as_ref());
        arg_out(&mut b, &mut out);
        for x in [&c32, &p32, &gw32, &e32, &np32] {
            b.arg(x);
        }
        b.arg(&m64);
        b.arg(&cls32);
        let cfg = cfg_1d(blocks, TILE_THREADS, smem);
        // SAFETY: patch_embed_{mma,mma64,simt}_<dt>(const T* img, long long sb, sc, sh, const T* w,
        // const T* bias, const T* cls, const T* pos, T* out, int C, int P, int gw, int E,
        // int npatch, long long M, int has_cls): img is the (B, C, H, W) view of <dt> with
        // unit W stride and its other strides passed (for mma, rows 16-byte aligned and
        // P % 8 == 0); w is the contiguous (E, C*P*P) weight, bias / cls (E) and pos
        // (rows, E) contiguous of <dt> or null (shapes checked by the tensor crate); out is a
        // fresh (B, rows, E) buffer; ceil(M/128) * ceil(E/128) blocks of 256 threads with
        // the kernel's dynamic shared memory (PE_SMEM64_BYTES for mma64, which runs only where
        // a block may have twice that; PE_SMEM_BYTES otherwise), each writing its tile and
        // class rows.
        let launched = unsafe { b.launch(cfg) }.map(|_| ());
        be.check_launch(&name, launched)?;
    }
    output(out, [bsz, rows, e], images)
}

// ---------------------------------------------------------------------------------- contrastive

/// The image and text inputs as the tile kernels read them, and which kernel kind.
fn contrastive_inputs(image: &Tensor, text: &Tensor) -> Result<(Tensor, Tensor, bool)> {
    let d = image.dims()[1];
    let mma = is_half(image.dtype()) && d.is_multiple_of(8);
    if mma {
        Ok((aligned_rows(image)?, aligned_rows(text)?, true))
    } else {
        Ok((unit_last(image)?, unit_last(text)?, false))
    }
}

fn contrastive_supported(image: &Tensor) -> bool {
    let (n, d) = (image.dims()[0], image.dims()[1]);
    let n_t = n.div_ceil(TILE);
    kernel_dtype(image.dtype()) && n > 0 && d > 0 && fits_i32(&[n, d]) && n_t * n_t <= MAX_GRID
}

/// CLIP's contrastive loss over 128 x 128 logit tiles with online row and column
/// log-sum-exps (memory O(N D + N^2 / 128 * 16 bytes) for the partial statistics; no N x N
/// buffer). `D == 0` uses the composition.
pub(crate) fn contrastive_loss(
    be: &CudaBackend,
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
) -> Result<ContrastiveOutput> {
    if !device_ok(be) || !contrastive_supported(image) {
        return compose::contrastive_loss(image, text, scale);
    }
    let (n, d) = (image.dims()[0], image.dims()[1]);
    let n_t = n.div_ceil(TILE);
    let (img, txt, mma) = contrastive_inputs(image, text)?;
    let scale32 = scalar_f32(scale)?;
    let sfx = suffix(img.dtype());
    let mut row_part = CudaData::F32(be.alloc::<f32>(2 * n_t * n)?);
    let mut col_part = CudaData::F32(be.alloc::<f32>(2 * n_t * n)?);
    let mut diag = CudaData::F32(be.alloc::<f32>(n)?);
    let (n32, d32, nt32) = (n as i32, d as i32, n_t as i32);
    {
        let (kind, smem) = contrastive_tiles(be, mma);
        let name = format!("contrastive_fwd_{kind}_{sfx}");
        let f = smem_function(be, "contrastive.cu", &name, smem)?;
        let (iv, tv, sv) = (view(&img)?, view(&txt)?, view(&scale32)?);
        let (lda, ldb) = (
            img.layout().strides()[0] as i64,
            txt.layout().strides()[0] as i64,
        );
        let mut b = be.stream().launch_builder(&f);
        arg_view(&mut b, &iv);
        arg_view(&mut b, &tv);
        b.arg(&n32);
        b.arg(&d32);
        b.arg(&lda);
        b.arg(&ldb);
        arg_view(&mut b, &sv);
        arg_out(&mut b, &mut row_part);
        arg_out(&mut b, &mut col_part);
        arg_out(&mut b, &mut diag);
        let cfg = cfg_1d(n_t * n_t, TILE_THREADS, smem);
        // SAFETY: contrastive_fwd_{mma,mma32,simt}_<dt>(const T* img, const T* txt, int N,
        // int D, long long lda, long long ldb, const float* scale, float2* row_part,
        // float2* col_part, float* diag): img and txt are (N, D) views of <dt> with unit
        // column stride and row strides lda / ldb (16-byte aligned rows and D % 8 == 0 for
        // the tensor-core variants); scale is a one-element f32 buffer; row_part and col_part
        // are fresh 2 * n_t * N f32 buffers (n_t * N float2, 8-byte aligned allocations), diag
        // a fresh N buffer; n_t^2 blocks of 256 threads with the variant's dynamic shared memory.
        let launched = unsafe { b.launch(cfg) }.map(|_| ());
        be.check_launch(&name, launched)?;
    }
    let mut lse_rows = CudaData::F32(be.alloc::<f32>(n)?);
    let mut lse_cols = CudaData::F32(be.alloc::<f32>(n)?);
    {
        let name = "contrastive_fwd_merge";
        let f = be.function("contrastive.cu", name)?;
        let mut b = be.stream().launch_builder(&f);
        arg_out(&mut b, &mut row_part);
        arg_out(&mut b, &mut col_part);
        b.arg(&nt32);
        b.arg(&n32);
        arg_out(&mut b, &mut lse_rows);
        arg_out(&mut b, &mut lse_cols);
        let cfg = cfg_1d(n.div_ceil(BLOCK as usize), BLOCK, 0);
        // SAFETY: contrastive_fwd_merge(const float2* row_part, const float2* col_part,
        // int n_t, int N, float* lse_rows, float* lse_cols): the partials written by the tile
        // kernel above (n_t * N pairs each, every one written), two fresh N-element outputs;
        // one thread per index over ceil(N / 256) blocks of 256.
        let launched = unsafe { b.launch(cfg) }.map(|_| ());
        be.check_launch(name, launched)?;
    }
    let mut loss = CudaData::F32(be.alloc::<f32>(1)?);
    {
        let name = "contrastive_fwd_loss";
        let f = be.function("contrastive.cu", name)?;
        let mut b = be.stream().launch_builder(&f);
        arg_out(&mut b, &mut lse_rows);
        arg_out(&mut b, &mut lse_cols);
        arg_out(&mut b, &mut diag);
        b.arg(&n32);
        arg_out(&mut b, &mut loss);
        // SAFETY: contrastive_fwd_loss(const float* lse_rows, const float* lse_cols,
        // const float* diag, int N, float* loss): three N-element f32 buffers written above
        // and a fresh one-element output; one block of 1024 threads.
        let launched = unsafe { b.launch(cfg_1d(1, 1024, 0)) }.map(|_| ());
        be.check_launch(name, launched)?;
    }
    Ok(ContrastiveOutput {
        loss: output(loss, Shape::scalar(), image)?,
        lse_rows: output(lse_rows, [n], image)?,
        lse_cols: output(lse_cols, [n], image)?,
    })
}

/// Gradients of [`contrastive_loss`]: strips of rows of gradient weights (at most
/// `CT_STRIP_BYTES` at a time) recomputed from the saved log-sum-exps by the tile kernels and
/// multiplied by the inputs with the backend's matrix product. `D == 0` uses the composition.
pub(crate) fn contrastive_loss_backward(
    be: &CudaBackend,
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
    saved: &ContrastiveOutput,
    d_loss: &Tensor,
) -> Result<ContrastiveGrads> {
    if !device_ok(be) || !contrastive_supported(image) {
        return compose::contrastive_loss_backward(image, text, scale, saved, d_loss);
    }
    let dtype = image.dtype();
    let (n, d) = (image.dims()[0], image.dims()[1]);
    let n_t = n.div_ceil(TILE);
    let (img, txt, mma) = contrastive_inputs(image, text)?;
    let scale32 = scalar_f32(scale)?;
    let dloss32 = scalar_f32(d_loss)?;
    let lse_rows = saved.lse_rows.to_dtype(DType::F32)?.contiguous()?;
    let lse_cols = saved.lse_cols.to_dtype(DType::F32)?.contiguous()?;
    let sfx = suffix(dtype);
    let (n32, d32) = (n as i32, d as i32);
    let (lda, ldb) = (
        img.layout().strides()[0] as i64,
        txt.layout().strides()[0] as i64,
    );

    // Rows per strip: a multiple of the tile, at least one tile, at most what N needs.
    let per_row = n * dtype.size_in_bytes();
    let strip_rows = ((CT_STRIP_BYTES / per_row) / TILE * TILE)
        .max(TILE)
        .min(n.div_ceil(TILE) * TILE);
    let single = strip_rows >= n;

    let (kind, smem) = contrastive_tiles(be, mma);
    let tile_name = format!("contrastive_bwd_{kind}_{sfx}");
    let tile_fn = smem_function(be, "contrastive.cu", &tile_name, smem)?;
    let scale_name = format!("contrastive_scale_{sfx}");
    let scale_fn = be.function("contrastive.cu", &scale_name)?;

    let mut dscale_part = CudaData::F32(be.alloc::<f32>(n_t * n_t)?);
    let mut d_img = be.alloc_data(dtype, n * d)?;
    let mut d_txt_acc = if single {
        None
    } else {
        Some(CudaData::F32(be.alloc::<f32>(n * d)?))
    };
    let mut d_txt_single = None;
    let (sv, gv) = (view(&scale32)?, view(&dloss32)?);

    let mut r0 = 0;
    while r0 < n {
        let rows = strip_rows.min(n - r0);
        let mut strip = be.alloc_data(dtype, rows * n)?;
        {
            let (iv, tv, lrv, lcv) = (view(&img)?, view(&txt)?, view(&lse_rows)?, view(&lse_cols)?);
            let (r032, rows32) = (r0 as i32, rows as i32);
            let mut b = be.stream().launch_builder(&tile_fn);
            arg_view(&mut b, &iv);
            arg_view(&mut b, &tv);
            b.arg(&n32);
            b.arg(&d32);
            b.arg(&lda);
            b.arg(&ldb);
            arg_view(&mut b, &sv);
            arg_view(&mut b, &gv);
            arg_view(&mut b, &lrv);
            arg_view(&mut b, &lcv);
            b.arg(&r032);
            b.arg(&rows32);
            arg_out(&mut b, &mut strip);
            arg_out(&mut b, &mut dscale_part);
            let cfg = cfg_1d(rows.div_ceil(TILE) * n_t, TILE_THREADS, smem);
            // SAFETY: contrastive_bwd_{mma,mma32,simt}_<dt>(img, txt, int N, int D,
            // long long lda, long long ldb, const float* scale, const float* d_loss,
            // const float* lse_rows, const float* lse_cols, int r0, int rows, T* strip,
            // float* dscale_part): inputs as in the forward; scale and d_loss one-element f32
            // buffers, lse_rows/cols contiguous N-element f32; r0 is a multiple of 128 and
            // rows <= N - r0; strip is a fresh rows * N buffer of <dt> (every element written);
            // dscale_part holds n_t * n_t floats, of which this strip's blocks write rows
            // r0/128 ..; ceil(rows/128) * n_t blocks of 256 threads with the variant's shared
            // memory.
            let launched = unsafe { b.launch(cfg) }.map(|_| ());
            be.check_launch(&tile_name, launched)?;
        }
        let strip_t = output(strip, [rows, n], image)?;
        // d_img[r0 .. r0 + rows] = cs * (strip @ txt)
        let part = strip_t.matmul(&txt)?;
        {
            let pv = view(&part)?;
            let mut dst = view_mut(&mut d_img, r0 * d);
            let cnt = rows * d;
            let cnt64 = cnt as i64;
            let mut b = be.stream().launch_builder(&scale_fn);
            arg_view(&mut b, &pv);
            arg_view(&mut b, &sv);
            arg_view(&mut b, &gv);
            b.arg(&n32);
            arg_view_mut(&mut b, &mut dst);
            b.arg(&cnt64);
            // SAFETY: contrastive_scale_<dt>(const T* part, const float* scale,
            // const float* d_loss, int N, T* out, long long n): part is the contiguous
            // (rows, D) product of <dt>, out the d_img buffer from row r0 (rows * D elements
            // remain there), scale / d_loss one-element f32 buffers; grid-stride over n.
            let launched = unsafe { b.launch(grid_for(cnt)) }.map(|_| ());
            be.check_launch(&scale_name, launched)?;
        }
        // d_txt (+)= strip^T @ img[r0 .. r0 + rows]
        let part = strip_t.t()?.matmul(&img.narrow(0, r0, rows)?)?;
        let cnt = n * d;
        let cnt64 = cnt as i64;
        if let Some(acc) = d_txt_acc.as_mut() {
            let name = format!("contrastive_accum_{sfx}");
            let f = be.function("contrastive.cu", &name)?;
            let pv = view(&part)?;
            let first = i32::from(r0 == 0);
            let mut b = be.stream().launch_builder(&f);
            arg_out(&mut b, acc);
            arg_view(&mut b, &pv);
            b.arg(&cnt64);
            b.arg(&first);
            // SAFETY: contrastive_accum_<dt>(float* acc, const T* part, long long n, int first):
            // acc is the N * D f32 accumulator (overwritten on the first strip), part the
            // contiguous (N, D) product of <dt>; grid-stride over n.
            let launched = unsafe { b.launch(grid_for(cnt)) }.map(|_| ());
            be.check_launch(&name, launched)?;
        } else {
            let mut out = be.alloc_data(dtype, cnt)?;
            {
                let pv = view(&part)?;
                let mut b = be.stream().launch_builder(&scale_fn);
                arg_view(&mut b, &pv);
                arg_view(&mut b, &sv);
                arg_view(&mut b, &gv);
                b.arg(&n32);
                arg_out(&mut b, &mut out);
                b.arg(&cnt64);
                // SAFETY: as the d_img scaling above, over the contiguous (N, D) product and a
                // fresh N * D output of <dt>.
                let launched = unsafe { b.launch(grid_for(cnt)) }.map(|_| ());
                be.check_launch(&scale_name, launched)?;
            }
            d_txt_single = Some(out);
        }
        r0 += rows;
    }

    let d_txt = match (d_txt_single, d_txt_acc.as_mut()) {
        (Some(out), _) => out,
        (None, Some(acc)) => {
            let cnt = n * d;
            let name = format!("contrastive_cast_scaled_{sfx}");
            let f = be.function("contrastive.cu", &name)?;
            let mut out = be.alloc_data(dtype, cnt)?;
            {
                let cnt64 = cnt as i64;
                let mut b = be.stream().launch_builder(&f);
                arg_out(&mut b, acc);
                arg_view(&mut b, &sv);
                arg_view(&mut b, &gv);
                b.arg(&n32);
                arg_out(&mut b, &mut out);
                b.arg(&cnt64);
                // SAFETY: contrastive_cast_scaled_<dt>(const float* acc, const float* scale,
                // const float* d_loss, int N, T* out, long long n): the N * D accumulator
                // filled by the strips, one-element f32 scalars, a fresh N * D output of <dt>.
                let launched = unsafe { b.launch(grid_for(cnt)) }.map(|_| ());
                be.check_launch(&name, launched)?;
            }
            out
        }
        (None, None) => unreachable!("every strip leaves either a single result or the sum"),
    };

    let mut d_scale = CudaData::F32(be.alloc::<f32>(1)?);
    {
        let name = "contrastive_bwd_dscale";
        let f = be.function("contrastive.cu", name)?;
        let parts = (n_t * n_t) as i64;
        let mut b = be.stream().launch_builder(&f);
        arg_out(&mut b, &mut dscale_part);
        b.arg(&parts);
        arg_out(&mut b, &mut d_scale);
        // SAFETY: contrastive_bwd_dscale(const float* part, long long n, float* d_scale): the
        // n_t * n_t partials, every one written by exactly one tile block of some strip, and a
        // fresh one-element output; one block of 1024 threads.
        let launched = unsafe { b.launch(cfg_1d(1, 1024, 0)) }.map(|_| ());
        be.check_launch(name, launched)?;
    }
    Ok(ContrastiveGrads {
        d_image: output(d_img, [n, d], image)?,
        d_text: output(d_txt, [n, d], image)?,
        d_scale: output(d_scale, Shape::scalar(), image)?
            .reshape(scale.shape().clone())?
            .to_dtype(scale.dtype())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dynamic shared memory the host launches each kernel with, against what the kernel
    /// source says it lays out (its macros, evaluated by NVRTC; no GPU needed). A mismatch
    /// would let a kernel write past its shared memory, which only a GPU would show.
    /// Skips without libnvrtc unless `GLIMPSE_REQUIRE_NVRTC=1` (as `cargo xtask
    /// kernel-check` sets it).
    #[test]
    fn nvrtc_host_shared_memory_sizes_match_the_kernels() {
        if let Err(why) = crate::nvrtc::library_present(crate::nvrtc::Library::Nvrtc) {
            if std::env::var("GLIMPSE_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                panic!("GLIMPSE_REQUIRE_NVRTC=1 but libnvrtc is unavailable: {why}");
            }
            println!("skipping nvrtc_host_shared_memory_sizes_match_the_kernels: {why}");
            return;
        }
        let larger = |a: &str, b: &str| format!("(({a}) > ({b}) ? ({a}) : ({b}))");
        let mut probes: Vec<(&str, String, u32)> = vec![
            ("patch_embed.cu", "PE_SMEM_BYTES".into(), PE_SMEM_BYTES),
            ("patch_embed.cu", "PE_SMEM64_BYTES".into(), PE_SMEM64_BYTES),
            // Each contrastive tile kernel is launched with the larger of its pipeline and
            // the logits tile.
            (
                "contrastive.cu",
                larger("CT_PIPE_BYTES(64)", "CT_TILE_BYTES"),
                CT_MMA64_SMEM_BYTES,
            ),
            (
                "contrastive.cu",
                larger("CT_PIPE_BYTES(32)", "CT_TILE_BYTES"),
                CT_TILE_SMEM_BYTES,
            ),
        ];
        for d in ATTN_MMA_DIMS {
            for (mt, rows) in [(1, 64), (2, 128)] {
                let expr = format!("AT_FWD_MMA_SMEM({d}, {rows}, AT_FWD_MMA_BC({d}, {mt}))");
                probes.push(("attention.cu", expr, attn_mma_smem(d, rows, false)));
            }
            if d == 128 {
                // attention_fwd_mma2_k64_d128_*: 128 rows, 64-key tiles.
                let expr = "AT_FWD_MMA_SMEM(128, 128, AT_MMA_BC)".to_string();
                probes.push(("attention.cu", expr, attn_mma_smem(d, 128, true)));
            }
            let expr = format!("AT_BWD_MMA_SMEM({d})");
            probes.push(("attention.cu", expr, attn_bwd_mma_smem(d)));
        }
        for (d, dv) in [(1, 1), (8, 24), (40, 40), (64, 128), (128, 128)] {
            let fwd = format!("AT_SIMT_FWD_SMEM({d}, {dv})");
            probes.push(("attention.cu", fwd, attn_simt_smem(d, dv)));
            let bwd = format!("AT_SIMT_BWD_SMEM({d}, {dv})");
            probes.push(("attention.cu", bwd, attn_bwd_smem(d, dv)));
        }

        let mut failures = Vec::new();
        for source in ["patch_embed.cu", "contrastive.cu", "attention.cu"] {
            let kernel = glimpse_kernels::find(source).expect("a kernel source");
            let mut text = crate::nvrtc::full_source(kernel);
            let mine: Vec<_> = probes.iter().filter(|p| p.0 == source).collect();
            for (i, (_, expr, _)) in mine.iter().enumerate() {
                text += &format!(
                    "extern \"C\" __device__ unsigned long long glimpse_probe_{i} = \
                     (unsigned long long)({expr});\n"
                );
            }
            let ptx = crate::nvrtc::compile_text(source, text, 90)
                .unwrap_or_else(|e| panic!("{source} with probes: {e}"))
                .to_src();
            for (i, (_, expr, host)) in mine.iter().enumerate() {
                // NVRTC writes `.global .align 8 .u64 glimpse_probe_<i> = <value>;`.
                let key = format!(" glimpse_probe_{i} = ");
                let kernel_bytes = ptx
                    .lines()
                    .find_map(|l| l.split_once(&key))
                    .and_then(|(_, v)| v.trim_end_matches(';').trim().parse::<u64>().ok());
                if kernel_bytes != Some(u64::from(*host)) {
                    failures.push(format!(
                        "{source}: {expr} is {kernel_bytes:?} bytes, the host launches with {host}"
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

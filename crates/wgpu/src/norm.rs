//! Row-wise fused ops: softmax, log-softmax, layer norm and its backward
//! (`kernels/wgsl/norm.wgsl`), GELU and its backward (`kernels/wgsl/activation.wgsl`).
//!
//! Inputs are read in place through their strides: the row kernels get the leading dims merged
//! into one row view plus the last dim's stride, the element-wise ones a merged view per input.
//! Outputs are contiguous. Everything is computed in f32 and rounded once to the input dtype,
//! as the compositions of `glimpse_tensor::compose` (the reference semantics) and the CPU
//! backend do. The few cases the kernels do not take (mismatched dtypes or shapes, which the
//! tensor crate rejects before reaching here) go to the compositions, which report them.

use glimpse_tensor::merge::Merged;
use glimpse_tensor::{DType, Error, GeluKind, LayerNormGrads, Layout, Result, Tensor, compose};

use crate::backend::{Elem, Kernel, Params, WgpuBackend, unsupported, workgroups_for};
use crate::ops::{WG, push_view};
use crate::storage::storage_of;

/// The most workgroups of a 1-D dispatch; the row kernels loop over the remaining rows.
const MAX_GROUPS: usize = 65_535;
/// Columns and row lanes of `ln_bwd_partial`'s workgroup (its `CW`, `RW` defaults).
const LN_CW: usize = 32;
/// Rows summed per chunk of `ln_bwd_partial` at least, and the most chunks.
const LN_MIN_CHUNK_ROWS: usize = 64;
const LN_MAX_CHUNKS: usize = 512;

/// The kernel element type of a float dtype this device computes (f32, f16).
fn float_elem(be: &WgpuBackend, dtype: DType, op: &'static str) -> Result<Elem> {
    match be.elem(dtype, op)? {
        Elem::U32 => Err(unsupported(op, dtype)),
        e => Ok(e),
    }
}

/// Fails unless every element index of `t` fits the kernels' 32-bit indices.
fn check_indices(t: &Tensor, op: &str) -> Result<()> {
    match t.layout().checked_max_index() {
        Some(i) if i.saturating_sub(1) <= u32::MAX as usize => Ok(()),
        _ => Err(Error::backend(
            "wgpu",
            format!(
                "{op}: a view of {:?} exceeds the kernels' 32-bit indices",
                t.dims()
            ),
        )),
    }
}

/// Pushes the row view of `l` (its leading dims merged, with its offset).
fn push_rows(p: &mut Params, l: &Layout) -> Result<()> {
    let r = l.dims().len();
    let m = Merged::new(&l.dims()[..r - 1], &[&l.strides()[..r - 1]], None);
    p.view(&m.dims, &m.strides[0], l.offset())?;
    Ok(())
}

/// The last dimension's stride of `l`.
fn col_stride(l: &Layout) -> usize {
    l.strides()[l.dims().len() - 1]
}

/// Invocations per workgroup of a row kernel (a power of two): small rows take fewer.
fn row_wg(cols: usize) -> u32 {
    if cols <= 128 { 64 } else { 256 }
}

/// The 1-D grid of a row kernel over `rows` rows.
fn row_groups(rows: usize) -> [u32; 3] {
    [rows.clamp(1, MAX_GROUPS) as u32, 1, 1]
}

/// `(rows, cols)` of a row-wise op over the last dim of `x` (rank >= 1).
fn rows_cols(x: &Tensor) -> (usize, usize) {
    let r = x.rank();
    (x.dims()[..r - 1].iter().product(), x.dims()[r - 1])
}

fn softmax_impl(be: &WgpuBackend, x: &Tensor, log: bool) -> Result<Tensor> {
    if x.elem_count() == 0 || x.rank() == 0 {
        return if log {
            compose::log_softmax_last_dim(x)
        } else {
            compose::softmax_last_dim(x)
        };
    }
    let op = if log { "log_softmax" } else { "softmax" };
    let t = float_elem(be, x.dtype(), op)?;
    check_indices(x, op)?;
    let (rows, cols) = rows_cols(x);
    let out = be.alloc(x.dtype(), rows * cols)?;
    let mut p = Params::new();
    p.usize(rows)?.usize(cols)?.usize(col_stride(x.layout()))?;
    push_rows(&mut p, x.layout())?;
    let constants = [("WG", row_wg(cols))];
    be.dispatch(
        &Kernel::new("norm.wgsl", op, t).with_constants(&constants),
        &p,
        &[out.buffer(), storage_of(x)?.buffer()],
        row_groups(rows),
    )?;
    out.into_tensor(x.shape().clone(), x)
}

/// Softmax over the last dimension: one workgroup per row, max and sum by workgroup
/// reductions. A fully masked row (all `-inf`) gives zeros, as the CPU backend.
pub(crate) fn softmax_last_dim(be: &WgpuBackend, x: &Tensor) -> Result<Tensor> {
    softmax_impl(be, x, false)
}

/// Log-softmax over the last dimension (as [`softmax_last_dim`]; a masked row gives `-inf`).
pub(crate) fn log_softmax_last_dim(be: &WgpuBackend, x: &Tensor) -> Result<Tensor> {
    softmax_impl(be, x, true)
}

/// An optional per-column vector of the row kernels: its buffer, offset and stride, or `x`'s
/// buffer as an unread placeholder.
fn column_vector<'a>(
    v: Option<&'a Tensor>,
    x: &'a Tensor,
) -> Result<(&'a wgpu::Buffer, usize, usize)> {
    match v {
        Some(v) => {
            check_indices(v, "layer_norm")?;
            Ok((
                storage_of(v)?.buffer(),
                v.layout().offset(),
                v.layout().strides()[0],
            ))
        }
        None => Ok((storage_of(x)?.buffer(), 0, 0)),
    }
}

/// Whether `v` is a `(cols)` vector of `dtype` (what the tensor crate checks for weights).
fn fits_column(v: Option<&Tensor>, cols: usize, dtype: DType) -> bool {
    v.is_none_or(|v| v.dims() == [cols] && v.dtype() == dtype)
}

/// Layer norm over the last dimension (biased variance, two passes over the row in f32), with
/// optional weight and bias: one workgroup per row.
pub(crate) fn layer_norm(
    be: &WgpuBackend,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let dtype = x.dtype();
    let Some(&cols) = x.dims().last() else {
        return compose::layer_norm(x, weight, bias, eps);
    };
    if !fits_column(weight, cols, dtype) || !fits_column(bias, cols, dtype) {
        return compose::layer_norm(x, weight, bias, eps);
    }
    let t = float_elem(be, dtype, "layer_norm")?;
    let (rows, _) = rows_cols(x);
    let out = be.alloc(dtype, rows * cols)?;
    if rows * cols == 0 {
        return out.into_tensor(x.shape().clone(), x);
    }
    check_indices(x, "layer_norm")?;
    let (w_buf, w_off, w_stride) = column_vector(weight, x)?;
    let (b_buf, b_off, b_stride) = column_vector(bias, x)?;
    let flags = u32::from(weight.is_some()) | (u32::from(bias.is_some()) << 1);
    let mut p = Params::new();
    p.usize(rows)?.usize(cols)?.f32(eps as f32).u32(flags);
    p.usize(w_off)?
        .usize(w_stride)?
        .usize(b_off)?
        .usize(b_stride)?;
    p.usize(col_stride(x.layout()))?;
    push_rows(&mut p, x.layout())?;
    let constants = [("WG", row_wg(cols))];
    be.dispatch(
        &Kernel::new("norm.wgsl", "layer_norm", t).with_constants(&constants),
        &p,
        &[out.buffer(), storage_of(x)?.buffer(), w_buf, b_buf],
        row_groups(rows),
    )?;
    out.into_tensor(x.shape().clone(), x)
}

/// Gradients of layer norm: `dx` by one workgroup per row (statistics recomputed, and saved
/// per row for the next step); `dweight` and `dbias` as column sums without float atomics:
/// per-chunk partial sums over blocks of rows, then one pass adding the chunks per column.
pub(crate) fn layer_norm_backward(
    be: &WgpuBackend,
    x: &Tensor,
    weight: Option<&Tensor>,
    eps: f64,
    d_out: &Tensor,
) -> Result<LayerNormGrads> {
    const OP: &str = "layer_norm_backward";
    let dtype = x.dtype();
    let Some(&cols) = x.dims().last() else {
        return compose::layer_norm_backward(x, weight, eps, d_out);
    };
    if !fits_column(weight, cols, dtype) || d_out.shape() != x.shape() || d_out.dtype() != dtype {
        return compose::layer_norm_backward(x, weight, eps, d_out);
    }
    let t = float_elem(be, dtype, OP)?;
    let (rows, _) = rows_cols(x);
    if rows * cols == 0 {
        // No rows: zero column sums (and nothing else to compute).
        let dx = be.alloc(dtype, 0)?.into_tensor(x.shape().clone(), x)?;
        return Ok(LayerNormGrads {
            dx,
            dweight: weight
                .map(|w| Tensor::zeros([cols], w.dtype(), x.device()))
                .transpose()?,
            dbias: Tensor::zeros([cols], dtype, x.device())?,
        });
    }
    check_indices(x, OP)?;
    check_indices(d_out, OP)?;
    let (xs, gs) = (storage_of(x)?, storage_of(d_out)?);
    let constants = [("WG", row_wg(cols))];

    // dx and the row statistics.
    let dx = be.alloc(dtype, rows * cols)?;
    let stats = be.alloc(DType::F32, 2 * rows)?;
    let (w_buf, w_off, w_stride) = column_vector(weight, x)?;
    let mut p = Params::new();
    p.usize(rows)?
        .usize(cols)?
        .f32(eps as f32)
        .u32(u32::from(weight.is_some()));
    p.usize(w_off)?.usize(w_stride)?;
    p.usize(col_stride(x.layout()))?
        .usize(col_stride(d_out.layout()))?;
    push_rows(&mut p, x.layout())?;
    push_rows(&mut p, d_out.layout())?;
    be.dispatch(
        &Kernel::new("norm.wgsl", "ln_bwd_rows", t).with_constants(&constants),
        &p,
        &[dx.buffer(), xs.buffer(), w_buf, gs.buffer(), stats.buffer()],
        row_groups(rows),
    )?;

    // Partial column sums per chunk of rows.
    let rows_per_chunk = rows.div_ceil(LN_MAX_CHUNKS).max(LN_MIN_CHUNK_ROWS);
    let chunks = rows.div_ceil(rows_per_chunk);
    let partial = be.alloc(DType::F32, chunks * 2 * cols)?;
    let mut p = Params::new();
    p.usize(rows)?.usize(cols)?.usize(rows_per_chunk)?;
    p.usize(col_stride(x.layout()))?
        .usize(col_stride(d_out.layout()))?;
    push_rows(&mut p, x.layout())?;
    push_rows(&mut p, d_out.layout())?;
    be.dispatch(
        &Kernel::new("norm.wgsl", "ln_bwd_partial", t),
        &p,
        &[partial.buffer(), xs.buffer(), stats.buffer(), gs.buffer()],
        [
            cols.div_ceil(LN_CW).min(MAX_GROUPS) as u32,
            chunks as u32,
            1,
        ],
    )?;

    // The chunks added per column.
    let dbias = be.alloc(dtype, cols)?;
    let mut p = Params::new();
    p.usize(cols)?.usize(chunks)?;
    let dweight = match weight {
        Some(_) => {
            let dw = be.alloc(dtype, cols)?;
            be.dispatch(
                &Kernel::new("norm.wgsl", "ln_bwd_finish", t),
                &p,
                &[dbias.buffer(), partial.buffer(), dw.buffer()],
                workgroups_for(cols, WG),
            )?;
            Some(dw)
        }
        None => {
            be.dispatch(
                &Kernel::new("norm.wgsl", "ln_bwd_finish_bias", t),
                &p,
                &[dbias.buffer(), partial.buffer()],
                workgroups_for(cols, WG),
            )?;
            None
        }
    };
    Ok(LayerNormGrads {
        dx: dx.into_tensor(x.shape().clone(), x)?,
        dweight: dweight.map(|d| d.into_tensor([cols], x)).transpose()?,
        dbias: dbias.into_tensor([cols], x)?,
    })
}

/// The `kind` parameter of activation.wgsl.
fn gelu_kind(kind: GeluKind) -> u32 {
    match kind {
        GeluKind::Erf => 0,
        GeluKind::Tanh => 1,
        GeluKind::Quick => 2,
    }
}

/// A GELU, element-wise over any view (one fused kernel per kind; `erf` and `tanh` written
/// out in WGSL).
pub(crate) fn gelu(be: &WgpuBackend, x: &Tensor, kind: GeluKind) -> Result<Tensor> {
    let t = float_elem(be, x.dtype(), "gelu")?;
    let n = x.elem_count();
    let out = be.alloc(x.dtype(), n)?;
    if n > 0 {
        check_indices(x, "gelu")?;
        let mut p = Params::new();
        p.usize(n)?.u32(gelu_kind(kind));
        push_view(&mut p, x.layout())?;
        be.dispatch(
            &Kernel::new("activation.wgsl", "gelu", t),
            &p,
            &[out.buffer(), storage_of(x)?.buffer()],
            workgroups_for(n, WG),
        )?;
    }
    out.into_tensor(x.shape().clone(), x)
}

/// `d_out * GELU'(x)`, element-wise over any views of `x` and `d_out`.
pub(crate) fn gelu_backward(
    be: &WgpuBackend,
    x: &Tensor,
    d_out: &Tensor,
    kind: GeluKind,
) -> Result<Tensor> {
    if d_out.shape() != x.shape() || d_out.dtype() != x.dtype() {
        return compose::gelu_backward(x, d_out, kind);
    }
    let t = float_elem(be, x.dtype(), "gelu_backward")?;
    let n = x.elem_count();
    let out = be.alloc(x.dtype(), n)?;
    if n > 0 {
        check_indices(x, "gelu_backward")?;
        check_indices(d_out, "gelu_backward")?;
        let mut p = Params::new();
        p.usize(n)?.u32(gelu_kind(kind));
        push_view(&mut p, x.layout())?;
        push_view(&mut p, d_out.layout())?;
        be.dispatch(
            &Kernel::new("activation.wgsl", "gelu_backward", t),
            &p,
            &[
                out.buffer(),
                storage_of(x)?.buffer(),
                storage_of(d_out)?.buffer(),
            ],
            workgroups_for(n, WG),
        )?;
    }
    out.into_tensor(x.shape().clone(), x)
}

//! CLIP's contrastive loss and its backward, with the kernels of
//! `kernels/wgsl/contrastive.wgsl`: the N x N logits are never stored. The forward computes the
//! row log-sum-exps (and the diagonal) with a row-tile kernel over `(image, text)`, the column
//! log-sum-exps with the same kernel over `(text, image)`, and the scalar loss with a one-
//! workgroup reduction. The backward recomputes logit tiles from the saved log-sum-exps: the
//! image gradient (and d_scale's per-row-tile partial sums) over `(image, text)`, the text
//! gradient over `(text, image)`, then d_scale with a one-workgroup reduction. No read-back:
//! the scalar inputs (scale, d_loss) and the saved statistics are gathered on the device into
//! one f32 buffer first, whatever their float dtype (f32 or f16) and strides.
//!
//! Output dtypes are the composition's: loss and log-sum-exps in f32 (the compute dtype),
//! gradients in the inputs' dtype, d_scale in the scale's dtype and shape.

use glimpse_tensor::{ContrastiveGrads, ContrastiveOutput, DType, Result, Shape, Tensor};

use crate::backend::{Elem, Kernel, Params, WgpuBackend, workgroups_for};
use crate::storage::{WgpuStorage, storage_of};

const FILE: &str = "contrastive.wgsl";

/// The tiling (`TX`, `TY`, `BK` overrides; `TM` = `TN` = 2 are consts of the shader): 32-row
/// tiles, 256 threads, 16-deep steps over D.
const TX: u32 = 16;
const TY: u32 = 16;
const BK: u32 = 16;
const TM: usize = 2;
const TILES: &[(&str, u32)] = &[("TX", TX), ("TY", TY), ("BK", BK)];
/// Rows per row tile.
const BM: usize = TY as usize * TM;
/// Threads of `contrastive_prep`.
const WG: u32 = 256;

/// One f32 buffer holding every element of each of `parts` (1 to 4 scalars or vectors of f32
/// or f16, any stride) one after the other, gathered on the device by `contrastive_prep`.
fn gather_f32(be: &WgpuBackend, parts: &[&Tensor], op: &'static str) -> Result<WgpuStorage> {
    debug_assert!(!parts.is_empty() && parts.len() <= 4);
    let total: usize = parts.iter().map(|t| t.elem_count()).sum();
    let out = be.alloc(DType::F32, total)?;
    let mut p = Params::new();
    let mut buffers = vec![out.buffer().clone()];
    for i in 0..4 {
        match parts.get(i) {
            Some(t) => {
                let half = u32::from(be.elem(t.dtype(), op)? == Elem::F16);
                // Every part has one element or one dimension: its offset and its stride.
                let len = t.elem_count();
                let stride = match t.dims().iter().rposition(|&d| d > 1) {
                    Some(dim) => t.layout().strides()[dim],
                    None => 0,
                };
                p.usize(len)?
                    .usize(t.layout().offset())?
                    .usize(stride)?
                    .u32(half);
                buffers.push(storage_of(t)?.buffer().clone());
            }
            None => {
                // An empty segment; the first part's buffer stands in for its binding.
                p.u32(0).u32(0).u32(0).u32(0);
                buffers.push(buffers[1].clone());
            }
        }
    }
    let refs: Vec<&wgpu::Buffer> = buffers.iter().collect();
    be.dispatch(
        &Kernel::new(FILE, "contrastive_prep", Elem::F32).with_constants(&[("WG", WG)]),
        &p,
        &refs,
        workgroups_for(total, WG),
    )?;
    Ok(out)
}

/// Params words 0..8 of the row-tile kernels: N, D, then the x and y views (offset, strides).
fn tile_params(x: &Tensor, y: &Tensor) -> Result<Params> {
    let mut p = Params::new();
    p.usize(x.dims()[0])?.usize(x.dims()[1])?;
    for t in [x, y] {
        let l = t.layout();
        p.usize(l.offset())?
            .usize(l.strides()[0])?
            .usize(l.strides()[1])?;
    }
    Ok(p)
}

/// Workgroups of the row-tile kernels (they loop over the rest).
fn row_groups(n: usize) -> [u32; 3] {
    workgroups_for(n.div_ceil(BM), 1)
}

pub(crate) fn contrastive_loss(
    be: &WgpuBackend,
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
) -> Result<ContrastiveOutput> {
    const OP: &str = "contrastive_loss";
    let t = be.elem(image.dtype(), OP)?;
    let n = image.dims()[0];
    let stats = gather_f32(be, &[scale], OP)?;
    let lse_rows = be.alloc(DType::F32, n)?;
    let lse_cols = be.alloc(DType::F32, n)?;
    let diag = be.alloc(DType::F32, n)?;
    let lse = Kernel::new(FILE, "contrastive_lse", t).with_constants(TILES);
    // (image, text): the row log-sum-exps and the diagonal; (text, image): the columns'.
    for (x, y, out, write_diag) in [(image, text, &lse_rows, 1), (text, image, &lse_cols, 0)] {
        let mut p = tile_params(x, y)?;
        p.u32(write_diag);
        be.dispatch(
            &lse,
            &p,
            &[
                out.buffer(),
                diag.buffer(),
                storage_of(x)?.buffer(),
                storage_of(y)?.buffer(),
                stats.buffer(),
            ],
            row_groups(n),
        )?;
    }
    let loss = be.alloc(DType::F32, 1)?;
    let mut p = Params::new();
    p.usize(n)?;
    be.dispatch(
        &Kernel::new(FILE, "contrastive_loss", Elem::F32).with_constants(TILES),
        &p,
        &[
            loss.buffer(),
            lse_rows.buffer(),
            lse_cols.buffer(),
            diag.buffer(),
        ],
        [1, 1, 1],
    )?;
    Ok(ContrastiveOutput {
        loss: loss.into_tensor(Shape::scalar(), image)?,
        lse_rows: lse_rows.into_tensor([n], image)?,
        lse_cols: lse_cols.into_tensor([n], image)?,
    })
}

pub(crate) fn contrastive_loss_backward(
    be: &WgpuBackend,
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
    saved: &ContrastiveOutput,
    d_loss: &Tensor,
) -> Result<ContrastiveGrads> {
    const OP: &str = "contrastive_loss_backward";
    let t = be.elem(image.dtype(), OP)?;
    let (n, d) = (image.dims()[0], image.dims()[1]);
    // stats = [scale, d_loss, lse_rows (n), lse_cols (n)].
    let stats = gather_f32(be, &[scale, d_loss, &saved.lse_rows, &saved.lse_cols], OP)?;
    let (rows_at, cols_at) = (2, 2 + n);
    let tiles = n.div_ceil(BM);
    // The running sums of W @ y, read and written by every column tile but the last (none
    // when one tile covers the columns).
    let acc = be.alloc(DType::F32, if n > BM { n * d } else { 0 })?;
    let part = be.alloc(DType::F32, tiles)?;
    let d_image = be.alloc(image.dtype(), n * d)?;
    let d_text = be.alloc(text.dtype(), n * d)?;
    let grad = Kernel::new(FILE, "contrastive_grad", t).with_constants(TILES);
    // d_image from (image, text) with the row statistics first, plus d_scale's partial sums;
    // d_text from (text, image) with the roles of the statistics swapped.
    for (x, y, out, lse_x, lse_y, write_part) in [
        (image, text, &d_image, rows_at, cols_at, 1),
        (text, image, &d_text, cols_at, rows_at, 0),
    ] {
        let mut p = tile_params(x, y)?;
        p.usize(lse_x)?.usize(lse_y)?.u32(write_part);
        be.dispatch(
            &grad,
            &p,
            &[
                out.buffer(),
                acc.buffer(),
                storage_of(x)?.buffer(),
                storage_of(y)?.buffer(),
                part.buffer(),
                stats.buffer(),
            ],
            row_groups(n),
        )?;
    }
    let half = u32::from(be.elem(scale.dtype(), OP)? == Elem::F16);
    let d_scale = be.alloc(scale.dtype(), 1)?;
    let mut p = Params::new();
    p.usize(tiles)?.u32(half);
    be.dispatch(
        &Kernel::new(FILE, "contrastive_dscale", Elem::F32).with_constants(TILES),
        &p,
        &[d_scale.buffer(), part.buffer()],
        [1, 1, 1],
    )?;
    Ok(ContrastiveGrads {
        d_image: d_image.into_tensor([n, d], image)?,
        d_text: d_text.into_tensor([n, d], text)?,
        d_scale: d_scale.into_tensor(scale.shape().clone(), scale)?,
    })
}

//! Routes the fused ops of [`CpuBackend`](crate::CpuBackend) to the f32 kernels in
//! [`crate::kernels`]: f32 tensors are read in place (strided views too, where the kernel takes
//! strides), half tensors are converted to f32 around the kernel, and f64 tensors use the
//! default compositions (they exist for gradient checks, where clarity beats speed).

use std::borrow::Cow;

use glimpse_tensor::{
    AttentionGrads, AttentionOptions, AttentionOutput, ContrastiveGrads, ContrastiveOutput, DType,
    Error, PatchEmbedOptions, Result, Shape, Tensor,
};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::backend::cpu_storage;
use crate::kernels::{self, attention::AttnDims, attention::AttnView, patch_embed::PatchDims};
use crate::ops::storage_from_vec;
use crate::storage::CpuStorage;
use crate::strided;

/// True when the fused f32 kernels handle this dtype (directly or through a conversion).
pub fn kernel_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// The elements of a tensor as f32 in row-major order, borrowed when it is contiguous f32.
pub fn f32_data(t: &Tensor) -> Result<Cow<'_, [f32]>> {
    let layout = t.layout();
    Ok(match cpu_storage(&**t.storage())? {
        CpuStorage::F32(b) => strided::view(b.as_slice(), layout),
        CpuStorage::F16(b) => Cow::Owned(strided::map(b.as_slice(), layout, f16::to_f32)),
        CpuStorage::BF16(b) => Cow::Owned(strided::map(b.as_slice(), layout, bf16::to_f32)),
        other => {
            return Err(Error::backend(
                "cpu",
                format!(
                    "fused f32 kernel reached with {:?} data",
                    glimpse_tensor::BackendStorage::dtype(other)
                ),
            ));
        }
    })
}

/// A contiguous tensor of `dtype` holding f32 results.
pub fn from_f32(
    values: Vec<f32>,
    shape: impl Into<Shape>,
    dtype: DType,
    like: &Tensor,
) -> Result<Tensor> {
    let storage = match dtype {
        DType::F32 => storage_from_vec(values),
        DType::F16 => storage_from_vec(values.into_iter().map(f16::from_f32).collect::<Vec<_>>()),
        DType::BF16 => storage_from_vec(values.into_iter().map(bf16::from_f32).collect::<Vec<_>>()),
        other => {
            return Err(Error::backend(
                "cpu",
                format!("fused kernels return f32, not {other}"),
            ));
        }
    };
    Tensor::from_storage(
        std::sync::Arc::new(storage),
        glimpse_tensor::Layout::contiguous(shape),
        like.device().clone(),
    )
}

/// A new vector of `len` floats, filled in parallel chunk by chunk by `fill(start, chunk_out)`.
/// Each chunk is zeroed just before its kernel runs, so the zeroing and the kernel's writes
/// hit the same cache lines, instead of a separate zero-filling pass over the whole output.
fn produce(len: usize, chunk: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let chunk = chunk.max(1);
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, dst)| {
            dst.fill(std::mem::MaybeUninit::new(0.0));
            // SAFETY: every element of `dst` was initialised just above, and
            // `MaybeUninit<f32>` has the same layout as `f32`.
            let dst = unsafe { &mut *(dst as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            fill(i * chunk, dst);
        });
    // SAFETY: the chunks above cover `0..len` exactly and every element was initialised.
    unsafe { out.set_len(len) };
    out
}

/// Chunk length for row-wise kernels: whole rows, about one parallel task's worth.
fn row_chunk(cols: usize) -> usize {
    kernels::simd::rows_per_task(cols) * cols
}

fn scalar_f32(t: &Tensor) -> Result<f32> {
    Ok(t.to_f64_vec()?[0] as f32)
}

/// `x @ weight^T + bias` with the weight's packed panels from the cache: `x` `(M, K)` is read
/// in place when it is f32 with unit stride along one axis, and the output starts as the bias
/// rows, which the GEMM accumulates onto (no separate bias pass).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (m, k, n) = (x.dims()[0], x.dims()[1], weight.dims()[0]);
    if m == 0 || n == 0 || k == 0 {
        return glimpse_tensor::compose::linear(x, weight, bias);
    }
    let packed = crate::pack_cache::packed_transpose(weight)?;
    let l = x.layout();
    let (data, rs, cs) = match cpu_storage(&**x.storage())? {
        CpuStorage::F32(b) if l.strides()[0] == 1 || l.strides()[1] == 1 => (
            Cow::Borrowed(&b.as_slice()[l.offset()..]),
            l.strides()[0],
            l.strides()[1],
        ),
        _ => (f32_data(x)?, k, 1),
    };
    let a = crate::gemm::MatRef::new(&data, rs, cs);
    let out = match bias {
        Some(b) => {
            let b = f32_data(b)?;
            let mut out = produce(m * n, row_chunk(n), |start, dst| {
                // Chunks hold whole rows (row_chunk), so every chunk starts at a row.
                debug_assert_eq!(start % n, 0);
                for row in dst.chunks_mut(n) {
                    row.copy_from_slice(&b);
                }
            });
            crate::gemm::sgemm_packed_b(m, 1.0, a, &packed, true, &mut out, n, true);
            out
        }
        None => {
            // No zero-fill: the product writes every element.
            let mut out: Vec<f32> = Vec::with_capacity(m * n);
            let spare = &mut out.spare_capacity_mut()[..m * n];
            crate::gemm::sgemm_packed_b_uninit(m, 1.0, a, &packed, spare, n, true);
            // SAFETY: `sgemm_packed_b_uninit` wrote the whole `m x n` block (`ldc = n`).
            unsafe { out.set_len(m * n) };
            out
        }
    };
    from_f32(out, [m, n], x.dtype(), x)
}

/// Softmax (or log-softmax) over the last dimension.
pub fn softmax_last_dim(x: &Tensor, log: bool) -> Result<Tensor> {
    let cols = *x.dims().last().expect("checked by the tensor crate");
    let data = f32_data(x)?;
    if cols == 0 || data.is_empty() {
        return from_f32(Vec::new(), x.shape(), x.dtype(), x);
    }
    let kernel = if log {
        kernels::softmax::log_softmax_rows
    } else {
        kernels::softmax::softmax_rows
    };
    let out = produce(data.len(), row_chunk(cols), |start, out| {
        kernel(&data[start..start + out.len()], out, cols)
    });
    from_f32(out, x.shape(), x.dtype(), x)
}

pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let cols = *x.dims().last().expect("checked by the tensor crate");
    let data = f32_data(x)?;
    let w = weight.map(f32_data).transpose()?;
    let b = bias.map(f32_data).transpose()?;
    if cols == 0 || data.is_empty() {
        return from_f32(Vec::new(), x.shape(), x.dtype(), x);
    }
    let (w, b) = (w.as_deref(), b.as_deref());
    let out = produce(data.len(), row_chunk(cols), |start, out| {
        kernels::layer_norm::layer_norm_rows(
            &data[start..start + out.len()],
            w,
            b,
            eps as f32,
            out,
            cols,
        )
    });
    from_f32(out, x.shape(), x.dtype(), x)
}

pub fn gelu(x: &Tensor, kind: glimpse_tensor::GeluKind) -> Result<Tensor> {
    let data = f32_data(x)?;
    let kernel = match kind {
        glimpse_tensor::GeluKind::Erf => kernels::gelu::gelu_erf,
        glimpse_tensor::GeluKind::Tanh => kernels::gelu::gelu_tanh,
        glimpse_tensor::GeluKind::Quick => kernels::gelu::quick_gelu,
    };
    let out = produce(data.len(), kernels::simd::PAR_CHUNK, |start, out| {
        kernel(&data[start..start + out.len()], out)
    });
    from_f32(out, x.shape(), x.dtype(), x)
}

/// The gradient of a GELU at `x` given `d_out`.
pub fn gelu_backward(x: &Tensor, d_out: &Tensor, kind: glimpse_tensor::GeluKind) -> Result<Tensor> {
    let data = f32_data(x)?;
    let g = f32_data(d_out)?;
    let out = produce(data.len(), kernels::simd::PAR_CHUNK, |start, out| {
        let end = start + out.len();
        kernels::gelu::gelu_backward(kind, &data[start..end], &g[start..end], out)
    });
    from_f32(out, x.shape(), x.dtype(), x)
}

/// Gradients of layer norm over the last dimension.
pub fn layer_norm_backward(
    x: &Tensor,
    weight: Option<&Tensor>,
    eps: f64,
    d_out: &Tensor,
) -> Result<glimpse_tensor::LayerNormGrads> {
    let cols = *x.dims().last().expect("checked by the tensor crate");
    if cols == 0 || x.elem_count() == 0 {
        return glimpse_tensor::compose::layer_norm_backward(x, weight, eps, d_out);
    }
    let data = f32_data(x)?;
    let g = f32_data(d_out)?;
    let w = weight.map(f32_data).transpose()?;
    let mut dx = vec![0f32; data.len()];
    let (dw, db) = kernels::layer_norm::layer_norm_backward_rows(
        &data,
        &g,
        w.as_deref(),
        eps as f32,
        &mut dx,
        cols,
    );
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    Ok(glimpse_tensor::LayerNormGrads {
        dx: from_f32(dx, x.shape(), x.dtype(), x)?,
        dweight: weight
            .map(|w| from_f32(to_f32(dw), [cols], w.dtype(), x))
            .transpose()?,
        dbias: from_f32(to_f32(db), [cols], x.dtype(), x)?,
    })
}

/// A `(B, H, N, D)` input of the attention kernels: f32 data and its batch, head and row
/// strides (the last dimension contiguous).
struct AttnInput<'a> {
    data: Cow<'a, [f32]>,
    strides: [usize; 3],
}

impl AttnInput<'_> {
    fn view(&self) -> AttnView<'_> {
        AttnView {
            data: &self.data,
            batch_stride: self.strides[0],
            head_stride: self.strides[1],
            row_stride: self.strides[2],
        }
    }
}

fn attn_input(t: &Tensor) -> Result<AttnInput<'_>> {
    let l = t.layout();
    let rows_apart = l.strides()[2] >= l.dims()[3] || l.dims()[2] <= 1;
    if let CpuStorage::F32(b) = cpu_storage(&**t.storage())?
        && (l.strides()[3] == 1 || l.dims()[3] == 1)
        && rows_apart
    {
        // Permuted (B, N, H, D) projections are read in place.
        let s = l.strides();
        return Ok(AttnInput {
            data: Cow::Borrowed(&b.as_slice()[l.offset()..]),
            strides: [s[0], s[1], s[2]],
        });
    }
    let d = t.dims();
    Ok(AttnInput {
        data: Cow::Owned(f32_data(t)?.into_owned()),
        strides: [d[1] * d[2] * d[3], d[2] * d[3], d[3]],
    })
}

fn attn_dims(q: &Tensor, k: &Tensor, v: &Tensor) -> AttnDims {
    AttnDims {
        batch: q.dims()[0],
        heads: q.dims()[1],
        n_q: q.dims()[2],
        n_k: k.dims()[2],
        head_dim: q.dims()[3],
        v_dim: v.dims()[3],
    }
}

fn key_mask(opts: &AttentionOptions) -> Result<Option<Cow<'_, [u32]>>> {
    opts.key_padding_mask
        .as_ref()
        .map(|m| {
            let s = cpu_storage(&**m.storage())?
                .u32s()
                .ok_or_else(|| Error::backend("cpu", "key padding mask is not u32"))?;
            Ok(strided::view(s, m.layout()))
        })
        .transpose()
}

fn scale_of(q: &Tensor, opts: &AttentionOptions) -> f32 {
    opts.scale_for(q.dims()[3]) as f32
}

/// True when the attention kernels can run this problem (they need non-empty head dims).
pub fn attention_supported(q: &Tensor, v: &Tensor) -> bool {
    kernel_dtype(q.dtype()) && q.dims()[3] > 0 && v.dims()[3] > 0
}

pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<AttentionOutput> {
    let dims = attn_dims(q, k, v);
    let (qi, ki, vi) = (attn_input(q)?, attn_input(k)?, attn_input(v)?);
    let mask = key_mask(opts)?;
    let rows = dims.batch * dims.heads * dims.n_q;
    let mut out = vec![0.0f32; rows * dims.v_dim];
    let mut lse = vec![0.0f32; rows];
    kernels::attention::attention_forward(
        qi.view(),
        ki.view(),
        vi.view(),
        dims,
        scale_of(q, opts),
        opts.causal,
        mask.as_deref(),
        &mut out,
        &mut lse,
    );
    let b_h_n = [dims.batch, dims.heads, dims.n_q];
    Ok(AttentionOutput {
        out: from_f32(
            out,
            [dims.batch, dims.heads, dims.n_q, dims.v_dim],
            q.dtype(),
            q,
        )?,
        lse: from_f32(lse, b_h_n, DType::F32, q)?,
    })
}

pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &AttentionOutput,
    d_out: &Tensor,
    opts: &AttentionOptions,
) -> Result<AttentionGrads> {
    let dims = attn_dims(q, k, v);
    let (qi, ki, vi) = (attn_input(q)?, attn_input(k)?, attn_input(v)?);
    let (oi, doi) = (attn_input(&out.out)?, attn_input(d_out)?);
    let lse = out.lse.to_dtype(DType::F32)?;
    let lse = f32_data(&lse)?;
    let mask = key_mask(opts)?;
    let mut dq = vec![0.0f32; dims.batch * dims.heads * dims.n_q * dims.head_dim];
    let mut dk = vec![0.0f32; dims.batch * dims.heads * dims.n_k * dims.head_dim];
    let mut dv = vec![0.0f32; dims.batch * dims.heads * dims.n_k * dims.v_dim];
    kernels::attention::attention_backward(
        qi.view(),
        ki.view(),
        vi.view(),
        oi.view(),
        doi.view(),
        &lse,
        dims,
        scale_of(q, opts),
        opts.causal,
        mask.as_deref(),
        &mut dq,
        &mut dk,
        &mut dv,
    );
    Ok(AttentionGrads {
        dq: from_f32(dq, q.shape(), q.dtype(), q)?,
        dk: from_f32(dk, k.shape(), k.dtype(), q)?,
        dv: from_f32(dv, v.shape(), v.dtype(), q)?,
    })
}

pub fn patch_embed(
    images: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &PatchEmbedOptions,
) -> Result<Tensor> {
    let d = images.dims();
    let dims = PatchDims {
        batch: d[0],
        channels: d[1],
        height: d[2],
        width: d[3],
        patch: opts.patch_size,
        embed: weight.dims()[0],
    };
    let rows = (dims.height / dims.patch) * (dims.width / dims.patch)
        + usize::from(opts.class_embedding.is_some());
    let img = f32_data(images)?;
    let w = f32_data(weight)?;
    let b = bias.map(f32_data).transpose()?;
    let cls = opts.class_embedding.as_ref().map(f32_data).transpose()?;
    let pos = opts.position_embedding.as_ref().map(f32_data).transpose()?;
    let len = dims.batch * rows * dims.embed;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    kernels::patch_embed::patch_embed_uninit(
        &img,
        dims,
        &w,
        b.as_deref(),
        cls.as_deref(),
        pos.as_deref(),
        &mut out.spare_capacity_mut()[..len],
    );
    // SAFETY: `patch_embed_uninit` writes every one of the `len` elements.
    unsafe { out.set_len(len) };
    from_f32(out, [dims.batch, rows, dims.embed], images.dtype(), images)
}

pub fn contrastive_loss(
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
) -> Result<ContrastiveOutput> {
    let (n, d) = (image.dims()[0], image.dims()[1]);
    let (img, txt) = (f32_data(image)?, f32_data(text)?);
    let mut lse_rows = vec![0.0f32; n];
    let mut lse_cols = vec![0.0f32; n];
    let loss = kernels::contrastive::contrastive_forward(
        &img,
        &txt,
        n,
        d,
        scalar_f32(scale)?,
        &mut lse_rows,
        &mut lse_cols,
    );
    Ok(ContrastiveOutput {
        loss: from_f32(vec![loss], Shape::scalar(), DType::F32, image)?,
        lse_rows: from_f32(lse_rows, n, DType::F32, image)?,
        lse_cols: from_f32(lse_cols, n, DType::F32, image)?,
    })
}

pub fn contrastive_loss_backward(
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
    saved: &ContrastiveOutput,
    d_loss: &Tensor,
) -> Result<ContrastiveGrads> {
    let (n, d) = (image.dims()[0], image.dims()[1]);
    let (img, txt) = (f32_data(image)?, f32_data(text)?);
    let (lse_rows, lse_cols) = (
        saved.lse_rows.to_dtype(DType::F32)?,
        saved.lse_cols.to_dtype(DType::F32)?,
    );
    let mut d_img = vec![0.0f32; n * d];
    let mut d_txt = vec![0.0f32; n * d];
    let d_scale = kernels::contrastive::contrastive_backward(
        &img,
        &txt,
        n,
        d,
        scalar_f32(scale)?,
        &f32_data(&lse_rows)?,
        &f32_data(&lse_cols)?,
        scalar_f32(d_loss)?,
        &mut d_img,
        &mut d_txt,
    );
    Ok(ContrastiveGrads {
        d_image: from_f32(d_img, image.shape(), image.dtype(), image)?,
        d_text: from_f32(d_txt, text.shape(), text.dtype(), image)?,
        d_scale: from_f32(vec![d_scale], scale.shape(), DType::F32, image)?
            .to_dtype(scale.dtype())?,
    })
}

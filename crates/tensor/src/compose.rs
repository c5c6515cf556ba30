//! Default compositions of the fused ops, written with primitives only.
//!
//! Every [`Backend`](crate::Backend) gets these for free; they are also the oracle that fused
//! kernels are tested against. Half-precision inputs are computed in `f32` and the result is
//! stored back in the input dtype.

use crate::backend::{
    AttentionGrads, AttentionOptions, AttentionOutput, ContrastiveGrads, ContrastiveOutput,
    GeluKind, LayerNormGrads, PatchEmbedOptions,
};
use crate::{DType, PatchEmbedGrads, Result, Tensor};

/// The dtype arithmetic happens in, and a closure that brings results back.
fn upcast(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(x.dtype().compute_dtype())
}

/// Softmax over the last dimension: `exp(x - max) / sum(exp(x - max))`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.elem_count() == 0 {
        return Ok(x.clone());
    }
    let xf = upcast(x)?;
    let max = xf.max_keepdim(-1)?;
    let e = xf.sub(&max)?.exp()?;
    e.div(&e.sum_keepdim(-1)?)?.to_dtype(x.dtype())
}

/// Log-softmax over the last dimension: `x - max - log(sum(exp(x - max)))`.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.elem_count() == 0 {
        return Ok(x.clone());
    }
    let xf = upcast(x)?;
    let shifted = xf.sub(&xf.max_keepdim(-1)?)?;
    let log_sum = shifted.exp()?.sum_keepdim(-1)?.log()?;
    shifted.sub(&log_sum)?.to_dtype(x.dtype())
}

/// Layer norm over the last dimension with the biased variance, as PyTorch computes it.
pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let xf = upcast(x)?;
    let centered = xf.sub(&xf.mean_keepdim(-1)?)?;
    let var = centered.sqr()?.mean_keepdim(-1)?;
    let mut y = centered.div(&var.affine(1.0, eps)?.sqrt()?)?;
    if let Some(w) = weight {
        y = y.mul(&upcast(w)?)?;
    }
    if let Some(b) = bias {
        y = y.add(&upcast(b)?)?;
    }
    y.to_dtype(x.dtype())
}

/// The derivative of a GELU at `x` times `d_out`, computed in the compute dtype.
pub fn gelu_backward(x: &Tensor, d_out: &Tensor, kind: GeluKind) -> Result<Tensor> {
    use std::f64::consts::{FRAC_1_SQRT_2, PI};
    let (xf, g) = (upcast(x)?, upcast(d_out)?);
    let d = match kind {
        // d/dx x Φ(x) = Φ(x) + x φ(x)
        GeluKind::Erf => {
            let cdf = xf.affine(FRAC_1_SQRT_2, 0.0)?.erf()?.affine(0.5, 0.5)?;
            let pdf = xf
                .sqr()?
                .affine(-0.5, 0.0)?
                .exp()?
                .affine(1.0 / (2.0 * PI).sqrt(), 0.0)?;
            cdf.add(&xf.mul(&pdf)?)?
        }
        // y = 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3)
        GeluKind::Tanh => {
            let c = (2.0 / PI).sqrt();
            let x2 = xf.sqr()?;
            let t = xf.mul(&x2.affine(0.044715, 1.0)?)?.affine(c, 0.0)?.tanh()?;
            let du = x2.affine(3.0 * 0.044715 * c, c)?;
            t.affine(0.5, 0.5)?.add(
                &xf.mul(&t.sqr()?.affine(-1.0, 1.0)?)?
                    .mul(&du)?
                    .affine(0.5, 0.0)?,
            )?
        }
        // y = x s(1.702 x): s + 1.702 x s (1 - s)
        GeluKind::Quick => {
            let s = xf.affine(1.702, 0.0)?.sigmoid()?;
            s.add(&xf.mul(&s)?.mul(&s.affine(-1.0, 1.0)?)?.affine(1.702, 0.0)?)?
        }
    };
    g.mul(&d)?.to_dtype(x.dtype())
}

/// Gradients of layer norm over the last dimension: with `xhat = (x - mean) * rstd` and
/// `dxhat = d_out * weight`, `dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))`,
/// `dweight = sum over rows of d_out * xhat`, `dbias = sum over rows of d_out`.
pub fn layer_norm_backward(
    x: &Tensor,
    weight: Option<&Tensor>,
    eps: f64,
    d_out: &Tensor,
) -> Result<LayerNormGrads> {
    let d = *x.dims().last().unwrap_or(&1);
    let rows = x.elem_count() / d.max(1);
    let xf = upcast(x)?.reshape([rows, d])?;
    let g = upcast(d_out)?.reshape([rows, d])?;
    let centered = xf.sub(&xf.mean_keepdim(1)?)?;
    let rstd = centered
        .sqr()?
        .mean_keepdim(1)?
        .affine(1.0, eps)?
        .sqrt()?
        .recip()?;
    let xhat = centered.mul(&rstd)?;
    let dxhat = match weight {
        Some(w) => g.mul(&upcast(w)?)?,
        None => g.clone(),
    };
    let m1 = dxhat.mean_keepdim(1)?;
    let m2 = dxhat.mul(&xhat)?.mean_keepdim(1)?;
    let dx = dxhat.sub(&m1)?.sub(&xhat.mul(&m2)?)?.mul(&rstd)?;
    Ok(LayerNormGrads {
        dx: dx.reshape(x.shape().clone())?.to_dtype(x.dtype())?,
        dweight: weight
            .map(|w| g.mul(&xhat)?.sum(0)?.to_dtype(w.dtype()))
            .transpose()?,
        dbias: g.sum(0)?.to_dtype(x.dtype())?,
    })
}

/// `U32` mask `(B, 1, Nq, Nk)` or `(1, 1, Nq, Nk)`: 1 where query `i` may see key `j`.
fn attention_visibility(q: &Tensor, k: &Tensor, opts: &AttentionOptions) -> Result<Option<Tensor>> {
    let (b, nq, nk) = (q.dims()[0], q.dims()[2], k.dims()[2]);
    let dev = q.device();
    let mut visible: Option<Tensor> = None;
    if opts.causal {
        // key j is visible to query i iff j <= i + (nk - nq)
        let rows = Tensor::arange(0.0, nq as f64, DType::F32, dev)?
            .affine(1.0, nk as f64 - nq as f64)?
            .reshape([1, 1, nq, 1])?;
        let cols = Tensor::arange(0.0, nk as f64, DType::F32, dev)?.reshape([1, 1, 1, nk])?;
        visible = Some(cols.le(&rows)?);
    }
    if let Some(mask) = &opts.key_padding_mask {
        let keep = mask.ne(&mask.scalar_like(0.0)?)?.reshape([b, 1, 1, nk])?;
        visible = Some(match visible {
            Some(v) => v.mul(&keep)?,
            None => keep,
        });
    }
    Ok(visible)
}

fn scale_of(q: &Tensor, opts: &AttentionOptions) -> f64 {
    opts.scale_for(q.dims()[3])
}

/// Scaled, masked scores `(B, H, Nq, Nk)` in the compute dtype, with `-inf` where masked.
fn attention_scores(
    q: &Tensor,
    k: &Tensor,
    opts: &AttentionOptions,
) -> Result<(Tensor, Option<Tensor>)> {
    let scores = upcast(q)?
        .matmul(&upcast(k)?.t()?)?
        .affine(scale_of(q, opts), 0.0)?;
    let visible = attention_visibility(q, k, opts)?;
    let scores = match &visible {
        Some(v) => v.where_cond(&scores, &scores.scalar_like(f64::NEG_INFINITY)?)?,
        None => scores,
    };
    Ok((scores, visible))
}

/// `x @ weight^T + bias`: `x` is `(M, K)`, `weight` `(N, K)`, `bias` `(N)`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&weight.t()?)?;
    match bias {
        Some(b) => y.add(b),
        None => Ok(y),
    }
}

/// `softmax(scale * q k^T + mask) v`, written out with an explicit score matrix.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<AttentionOutput> {
    if k.dims()[2] == 0 {
        // No keys at all: every row sees none (and a max over an empty row is an error).
        let (b, h, nq, dv) = (q.dims()[0], q.dims()[1], q.dims()[2], v.dims()[3]);
        return Ok(AttentionOutput {
            out: Tensor::zeros([b, h, nq, dv], q.dtype(), q.device())?,
            lse: Tensor::full(
                f64::NEG_INFINITY,
                [b, h, nq],
                q.dtype().compute_dtype(),
                q.device(),
            )?,
        });
    }
    let (scores, _) = attention_scores(q, k, opts)?;
    let row_max = scores.max_keepdim(-1)?;
    // Rows that see no key have max -inf; shift them by 0 so that exp gives exact zeros.
    let finite = row_max.gt(&row_max.scalar_like(f64::NEG_INFINITY)?)?;
    let shift = finite.where_cond(&row_max, &row_max.scalar_like(0.0)?)?;
    let p = scores.sub(&shift)?.exp()?;
    let sum = p.sum_keepdim(-1)?;
    let has_keys = sum.gt(&sum.scalar_like(0.0)?)?;
    let inv = has_keys.where_cond(&sum.recip()?, &sum.scalar_like(0.0)?)?;
    let out = p.matmul(&upcast(v)?)?.mul(&inv)?;
    let lse = shift.add(&sum.log()?)?.squeeze(3)?;
    Ok(AttentionOutput {
        out: out.to_dtype(q.dtype())?,
        lse: lse.to_dtype(q.dtype().compute_dtype())?,
    })
}

/// Gradients of [`attention`], recomputing the probabilities from the saved log-sum-exp.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &AttentionOutput,
    d_out: &Tensor,
    opts: &AttentionOptions,
) -> Result<AttentionGrads> {
    let scale = scale_of(q, opts);
    let (scores, _) = attention_scores(q, k, opts)?;
    let lse = upcast(&out.lse)?.unsqueeze(3)?;
    let finite = lse.gt(&lse.scalar_like(f64::NEG_INFINITY)?)?;
    let safe_lse = finite.where_cond(&lse, &lse.scalar_like(0.0)?)?;
    // Masked scores are -inf, so their probabilities come out as exact zeros.
    let p = scores.sub(&safe_lse)?.exp()?;
    let d_out = upcast(d_out)?;
    let dv = p.t()?.matmul(&d_out)?;
    let dp = d_out.matmul(&upcast(v)?.t()?)?;
    let delta = d_out.mul(&upcast(&out.out)?)?.sum_keepdim(-1)?;
    let ds = p.mul(&dp.sub(&delta)?)?;
    let dq = ds.matmul(&upcast(k)?)?.affine(scale, 0.0)?;
    let dk = ds.t()?.matmul(&upcast(q)?)?.affine(scale, 0.0)?;
    Ok(AttentionGrads {
        dq: dq.to_dtype(q.dtype())?,
        dk: dk.to_dtype(q.dtype())?,
        dv: dv.to_dtype(q.dtype())?,
    })
}

/// Patch embedding as reshape, permute and one matrix product (what a convolution with
/// stride = kernel is), then bias, class row and position embedding.
pub fn patch_embed(
    images: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &PatchEmbedOptions,
) -> Result<Tensor> {
    let p = opts.patch_size;
    let (b, c, h, w) = (
        images.dims()[0],
        images.dims()[1],
        images.dims()[2],
        images.dims()[3],
    );
    let (gh, gw) = (h / p, w / p);
    let e = weight.dims()[0];
    // Drop the pixels a strided convolution never reaches.
    let x = upcast(images)?.narrow(2, 0, gh * p)?.narrow(3, 0, gw * p)?;
    // (B, C, gh, P, gw, P) -> (B, gh, gw, C, P, P) -> (B, gh*gw, C*P*P)
    let patches = x
        .reshape([b, c, gh, p, gw, p])?
        .permute(&[0, 2, 4, 1, 3, 5])?
        .reshape([b, gh * gw, c * p * p])?;
    let w2 = upcast(weight)?.reshape([e, c * p * p])?;
    let mut y = patches.matmul(&w2.t()?.unsqueeze(0)?)?;
    if let Some(bias) = bias {
        y = y.add(&upcast(bias)?)?;
    }
    if let Some(cls) = &opts.class_embedding {
        let cls = upcast(cls)?.reshape([1, 1, e])?.broadcast_as([b, 1, e])?;
        y = Tensor::cat(&[&cls, &y], 1)?;
    }
    if let Some(pos) = &opts.position_embedding {
        y = y.add(&upcast(pos)?)?;
    }
    y.to_dtype(images.dtype())
}

/// The logits `scale * image @ text^T` in the compute dtype, and `scale` as a scalar tensor.
fn contrastive_logits(image: &Tensor, text: &Tensor, scale: &Tensor) -> Result<(Tensor, Tensor)> {
    // The multiplier goes straight to the compute dtype: rounding it to a half input dtype
    // first would change the loss.
    let scale = scale.to_dtype(image.dtype().compute_dtype())?.reshape(())?;
    let sims = upcast(image)?.matmul(&upcast(text)?.t()?)?;
    Ok((sims.mul(&scale)?, scale))
}

/// CLIP's symmetric cross-entropy, with the full `N x N` logit matrix.
pub fn contrastive_loss(
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
) -> Result<ContrastiveOutput> {
    let n = image.dims()[0];
    let (logits, _) = contrastive_logits(image, text, scale)?;
    let lse = |t: &Tensor| -> Result<Tensor> {
        let m = t.max_keepdim(-1)?;
        m.add(&t.sub(&m)?.exp()?.sum_keepdim(-1)?.log()?)?
            .squeeze(1)
    };
    let lse_rows = lse(&logits)?;
    let lse_cols = lse(&logits.t()?)?;
    let ids = Tensor::arange(0.0, n as f64, DType::U32, image.device())?.reshape([n, 1])?;
    let diag = logits.gather(&ids, 1)?.squeeze(1)?;
    let row_loss = lse_rows.sub(&diag)?.mean_all()?;
    let col_loss = lse_cols.sub(&diag)?.mean_all()?;
    let loss = row_loss.add(&col_loss)?.affine(0.5, 0.0)?;
    Ok(ContrastiveOutput {
        loss,
        lse_rows,
        lse_cols,
    })
}

/// Gradients of [`contrastive_loss`]:
/// `dlogits = d_loss / 2N * (softmax_rows + softmax_cols - 2 I)`.
pub fn contrastive_loss_backward(
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
    saved: &ContrastiveOutput,
    d_loss: &Tensor,
) -> Result<ContrastiveGrads> {
    let n = image.dims()[0];
    let dev = image.device();
    let (logits, scale_t) = contrastive_logits(image, text, scale)?;
    let lse_rows = upcast(&saved.lse_rows)?.reshape([n, 1])?;
    let lse_cols = upcast(&saved.lse_cols)?.reshape([1, n])?;
    let p_rows = logits.sub(&lse_rows)?.exp()?;
    let p_cols = logits.sub(&lse_cols)?.exp()?;
    let ids = Tensor::arange(0.0, n as f64, DType::F32, dev)?;
    let eye = ids
        .reshape([n, 1])?
        .eq(&ids.reshape([1, n])?)?
        .to_dtype(logits.dtype())?;
    let g = d_loss
        .to_dtype(image.dtype().compute_dtype())?
        .reshape(())?;
    let d_logits = p_rows
        .add(&p_cols)?
        .sub(&eye.affine(2.0, 0.0)?)?
        .mul(&g)?
        .affine(0.5 / n as f64, 0.0)?;
    let d_image = d_logits.matmul(&upcast(text)?)?.mul(&scale_t)?;
    let d_text = d_logits.t()?.matmul(&upcast(image)?)?.mul(&scale_t)?;
    let sims = upcast(image)?.matmul(&upcast(text)?.t()?)?;
    let d_scale = d_logits.mul(&sims)?.sum_all()?;
    Ok(ContrastiveGrads {
        d_image: d_image.to_dtype(image.dtype())?,
        d_text: d_text.to_dtype(text.dtype())?,
        d_scale: d_scale.reshape(scale.shape())?.to_dtype(scale.dtype())?,
    })
}

/// Half types compute gradients in f32.
fn upcast_half(t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::F16 | DType::BF16 => t.to_dtype(DType::F32),
        _ => Ok(t.clone()),
    }
}

/// Patch-embedding gradients: the weight gradient is `d_out`'s patch rows (transposed) times
/// the patches gathered as a matrix, the images' gradient the reverse product scattered back.
pub fn patch_embed_backward(
    images: &Tensor,
    weight: &Tensor,
    opts: &PatchEmbedOptions,
    g: &Tensor,
    need_images: bool,
) -> Result<PatchEmbedGrads> {
    let p = opts.patch_size;
    let (b, c, h, w) = (
        images.dims()[0],
        images.dims()[1],
        images.dims()[2],
        images.dims()[3],
    );
    let (gh, gw) = (h / p, w / p);
    let e = weight.dims()[0];
    let np = gh * gw;
    let first = usize::from(opts.class_embedding.is_some());
    let g32 = upcast_half(g)?;
    // g is (B, [1 +] np, E); the patch rows carry the convolution's gradient.
    let gp = g32.narrow(1, first, np)?.reshape([b * np, e])?;
    let x = upcast_half(images)?
        .narrow(2, 0, gh * p)?
        .narrow(3, 0, gw * p)?;
    // (B, C, gh, P, gw, P) -> (B, gh, gw, C, P, P) -> (B*np, C*P*P)
    let patches = x
        .reshape([b, c, gh, p, gw, p])?
        .permute(&[0, 2, 4, 1, 3, 5])?
        .reshape([b * np, c * p * p])?;
    let dw = gp
        .t()?
        .matmul(&patches)?
        .reshape([e, c, p, p])?
        .to_dtype(weight.dtype())?;
    let db = gp.sum(0)?.to_dtype(weight.dtype())?;
    let dimages = if need_images {
        let w2 = upcast_half(weight)?.reshape([e, c * p * p])?;
        let dp = gp
            .matmul(&w2)?
            .reshape([b, gh, gw, c, p, p])?
            .permute(&[0, 3, 1, 4, 2, 5])?
            .reshape([b, c, gh * p, gw * p])?;
        // Pixels the convolution never reached get zero.
        let dp = if gh * p < h || gw * p < w {
            let rows = Tensor::cat(
                &[
                    &dp,
                    &Tensor::zeros([b, c, gh * p, w - gw * p], dp.dtype(), g.device())?,
                ],
                3,
            )?;
            Tensor::cat(
                &[
                    &rows,
                    &Tensor::zeros([b, c, h - gh * p, w], dp.dtype(), g.device())?,
                ],
                2,
            )?
        } else {
            dp
        };
        Some(dp.to_dtype(images.dtype())?)
    } else {
        None
    };
    let dcls = match &opts.class_embedding {
        Some(cls) => Some(
            g32.narrow(1, 0, 1)?
                .sum(0)?
                .reshape(cls.shape().clone())?
                .to_dtype(cls.dtype())?,
        ),
        None => None,
    };
    let dpos = match &opts.position_embedding {
        Some(pos) => Some(
            g32.sum(0)?
                .reshape(pos.shape().clone())?
                .to_dtype(pos.dtype())?,
        ),
        None => None,
    };
    Ok(PatchEmbedGrads {
        d_images: dimages,
        d_weight: dw,
        d_bias: db,
        d_class: dcls,
        d_position: dpos,
    })
}

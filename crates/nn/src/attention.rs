//! Multi-head attention (self and cross) over one call to the fused attention op.

use glimpse_tensor::{AttentionOptions, Error, Result, Tensor, VarBuilder};

use crate::{Linear, Module};

/// Key names of the four projections of a [`MultiHeadAttention`], relative to the layer's
/// builder (each names a [`Linear`], so `weight`/`bias` are appended).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttentionKeys {
    /// The query projection.
    pub q: String,
    /// The key projection.
    pub k: String,
    /// The value projection.
    pub v: String,
    /// The output projection.
    pub out: String,
}

impl AttentionKeys {
    /// Hugging Face ViT: `attention.attention.{query,key,value}` and `attention.output.dense`.
    pub fn vit() -> Self {
        AttentionKeys {
            q: "attention.attention.query".into(),
            k: "attention.attention.key".into(),
            v: "attention.attention.value".into(),
            out: "attention.output.dense".into(),
        }
    }

    /// Hugging Face CLIP: `self_attn.{q_proj,k_proj,v_proj,out_proj}`.
    pub fn clip() -> Self {
        AttentionKeys {
            q: "self_attn.q_proj".into(),
            k: "self_attn.k_proj".into(),
            v: "self_attn.v_proj".into(),
            out: "self_attn.out_proj".into(),
        }
    }
}

/// Sizes of a [`MultiHeadAttention`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionConfig {
    /// Width of the queries and of the output, `E`; a multiple of `num_heads`.
    pub dim: usize,
    /// Number of heads, `H`; the head dimension is `E / H`.
    pub num_heads: usize,
    /// Width of the context that keys and values are projected from (cross-attention, such as
    /// the BLIP-2 Q-Former's); `None` means `dim`.
    pub kv_dim: Option<usize>,
    /// Whether the query, key and value projections have biases (true for ViT, CLIP and
    /// BLIP; a ViT config may turn it off with `qkv_bias: false`).
    pub bias: bool,
    /// Whether the output projection has a bias (true in every Hugging Face model here, even
    /// when `bias` is off).
    pub out_bias: bool,
    /// Multiplier of `q k^T`; `None` means `1 / sqrt(head_dim)`.
    pub scale: Option<f64>,
}

impl AttentionConfig {
    /// Self-attention of width `dim` over `num_heads` heads, with biases and the default scale.
    pub fn new(dim: usize, num_heads: usize) -> Self {
        AttentionConfig {
            dim,
            num_heads,
            kv_dim: None,
            bias: true,
            out_bias: true,
            scale: None,
        }
    }

    /// Size of one head, `dim / num_heads`.
    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }
}

/// What a query may attend to.
#[derive(Clone, Debug, Default)]
pub struct AttentionMask {
    /// Query `i` sees key `j` only if `j <= i + (Nk - Nq)` (the usual lower-triangular mask
    /// when lengths are equal).
    pub causal: bool,
    /// `(B, Nk)` `U32`: nonzero keys are attended, zero keys are masked out (the Hugging Face
    /// `attention_mask` convention).
    pub key_padding: Option<Tensor>,
}

impl AttentionMask {
    /// Every query sees every key.
    pub fn none() -> Self {
        Self::default()
    }

    /// A causal mask without padding.
    pub fn causal() -> Self {
        AttentionMask {
            causal: true,
            key_padding: None,
        }
    }

    /// A key padding mask `(B, Nk)` `U32`, not causal.
    pub fn padding(key_padding: Tensor) -> Self {
        AttentionMask {
            causal: false,
            key_padding: Some(key_padding),
        }
    }

    /// The same mask with `causal` set.
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }
}

/// Splits `(B, N, H * D)` into heads, `(B, H, N, D)`: a reshape and a permute, both views of
/// `x`'s storage when `x` is contiguous (no copy).
pub fn split_heads(x: &Tensor, num_heads: usize) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() != 3 || num_heads == 0 || !dims[2].is_multiple_of(num_heads) {
        return Err(Error::bad_shape(
            "split_heads",
            format!("input must be (B, N, E) with E a multiple of {num_heads} heads"),
            x.shape(),
        ));
    }
    let (b, n, e) = (dims[0], dims[1], dims[2]);
    // (B, N, E) -> (B, N, H, D) -> (B, H, N, D)
    x.reshape([b, n, num_heads, e / num_heads])?
        .permute(&[0, 2, 1, 3])
}

/// Merges heads back, `(B, H, N, D)` to `(B, N, H * D)` (one copy: the permuted view is not
/// contiguous).
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() != 4 {
        return Err(Error::bad_shape(
            "merge_heads",
            "input must be (B, H, N, D)",
            x.shape(),
        ));
    }
    let (b, h, n, d) = (dims[0], dims[1], dims[2], dims[3]);
    // (B, H, N, D) -> (B, N, H, D) -> (B, N, H * D)
    x.permute(&[0, 2, 1, 3])?.reshape([b, n, h * d])
}

/// Multi-head scaled dot-product attention with query, key, value and output projections.
///
/// Not a [`Module`]: [`forward`](Self::forward) also takes an optional context and a mask.
#[derive(Clone, Debug)]
pub struct MultiHeadAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    num_heads: usize,
    scale: Option<f64>,
}

impl MultiHeadAttention {
    /// Loads the four projections named by `keys` from `vb`: `q` and `out` are
    /// `(dim, dim)`, `k` and `v` are `(dim, kv_dim)`.
    pub fn new(vb: VarBuilder, cfg: &AttentionConfig, keys: &AttentionKeys) -> Result<Self> {
        if cfg.num_heads == 0 || !cfg.dim.is_multiple_of(cfg.num_heads) {
            return Err(Error::invalid(
                "MultiHeadAttention",
                format!(
                    "dim {} must be a nonzero multiple of num_heads {}",
                    cfg.dim, cfg.num_heads
                ),
            ));
        }
        let (e, kv) = (cfg.dim, cfg.kv_dim.unwrap_or(cfg.dim));
        Ok(MultiHeadAttention {
            q: Linear::new(vb.pp(&keys.q), e, e, cfg.bias)?,
            k: Linear::new(vb.pp(&keys.k), kv, e, cfg.bias)?,
            v: Linear::new(vb.pp(&keys.v), kv, e, cfg.bias)?,
            out: Linear::new(vb.pp(&keys.out), e, e, cfg.out_bias)?,
            num_heads: cfg.num_heads,
            scale: cfg.scale,
        })
    }

    /// Number of heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// The query projection.
    pub fn q_proj(&self) -> &Linear {
        &self.q
    }

    /// The key projection.
    pub fn k_proj(&self) -> &Linear {
        &self.k
    }

    /// The value projection.
    pub fn v_proj(&self) -> &Linear {
        &self.v
    }

    /// The output projection.
    pub fn out_proj(&self) -> &Linear {
        &self.out
    }

    /// `x` is `(B, Nq, E)`; `context` is `(B, Nk, kv_dim)` for cross-attention, or `None` for
    /// self-attention (keys and values from `x`). `mask.key_padding`, if any, is `(B, Nk)`.
    /// Returns `(B, Nq, E)`.
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: &AttentionMask,
    ) -> Result<Tensor> {
        if x.rank() != 3 {
            return Err(Error::bad_shape(
                "MultiHeadAttention",
                "input must be (B, N, E)",
                x.shape(),
            ));
        }
        let ctx = context.unwrap_or(x);
        if ctx.rank() != 3 || ctx.dims()[0] != x.dims()[0] {
            return Err(Error::ShapeMismatch {
                op: "MultiHeadAttention (context must be (B, Nk, kv_dim) with x's batch)",
                lhs: x.shape().clone(),
                rhs: ctx.shape().clone(),
            });
        }
        let h = self.num_heads;
        // q is (B, H, Nq, D); k and v are (B, H, Nk, D), all views of the projections.
        let q = split_heads(&self.q.forward(x)?, h)?;
        let k = split_heads(&self.k.forward(ctx)?, h)?;
        let v = split_heads(&self.v.forward(ctx)?, h)?;
        let opts = AttentionOptions {
            scale: self.scale,
            causal: mask.causal,
            key_padding_mask: mask.key_padding.clone(),
        };
        // a is (B, H, Nq, D) -> (B, Nq, E)
        let a = Tensor::attention(&q, &k, &v, &opts)?.out;
        self.out.forward(&merge_heads(&a)?)
    }
}

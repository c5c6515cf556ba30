//! The pre-norm Transformer encoder of ViT and CLIP.

use glimpse_tensor::{Result, Tensor, VarBuilder};

use crate::{
    Activation, AttentionConfig, AttentionKeys, AttentionMask, LayerNorm, Mlp, MlpKeys, Module,
    MultiHeadAttention,
};

/// Sizes and choices of a [`PreNormEncoderLayer`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Width of the residual stream, `E`.
    pub dim: usize,
    /// Number of attention heads.
    pub num_heads: usize,
    /// Hidden width of the MLP.
    pub mlp_dim: usize,
    /// Activation of the MLP.
    pub activation: Activation,
    /// Epsilon of the layer norms.
    pub layer_norm_eps: f64,
    /// Whether the query, key and value projections have biases (the output projection
    /// always has one).
    pub qkv_bias: bool,
}

/// Key names of a [`PreNormEncoderLayer`], relative to the layer's builder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderLayerKeys {
    /// The layer norm before attention.
    pub ln1: String,
    /// The layer norm before the MLP.
    pub ln2: String,
    /// Prefix of the MLP (`""` when its projections sit directly under the layer).
    pub mlp: String,
    /// The attention projections.
    pub attention: AttentionKeys,
    /// The MLP projections, relative to [`mlp`](Self::mlp).
    pub mlp_keys: MlpKeys,
}

impl EncoderLayerKeys {
    /// Hugging Face ViT (`ViTLayer`): `layernorm_before`, `layernorm_after`,
    /// `attention.attention.*`, `attention.output.dense`, `intermediate.dense`, `output.dense`.
    pub fn vit() -> Self {
        EncoderLayerKeys {
            ln1: "layernorm_before".into(),
            ln2: "layernorm_after".into(),
            mlp: String::new(),
            attention: AttentionKeys::vit(),
            mlp_keys: MlpKeys::vit(),
        }
    }

    /// Hugging Face CLIP (`CLIPEncoderLayer`): `layer_norm1`, `layer_norm2`, `self_attn.*`,
    /// `mlp.fc1`, `mlp.fc2`.
    pub fn clip() -> Self {
        EncoderLayerKeys {
            ln1: "layer_norm1".into(),
            ln2: "layer_norm2".into(),
            mlp: "mlp".into(),
            attention: AttentionKeys::clip(),
            mlp_keys: MlpKeys::clip(),
        }
    }
}

/// Key names of an [`Encoder`], relative to the encoder's builder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderKeys {
    /// Prefix of the layers; layer `i` is under `{layers}.{i}`.
    pub layers: String,
    /// Key names inside one layer.
    pub layer: EncoderLayerKeys,
}

impl EncoderKeys {
    /// Hugging Face ViT: `layer.{i}` with [`EncoderLayerKeys::vit`].
    pub fn vit() -> Self {
        EncoderKeys {
            layers: "layer".into(),
            layer: EncoderLayerKeys::vit(),
        }
    }

    /// Hugging Face CLIP: `layers.{i}` with [`EncoderLayerKeys::clip`].
    pub fn clip() -> Self {
        EncoderKeys {
            layers: "layers".into(),
            layer: EncoderLayerKeys::clip(),
        }
    }
}

/// A pre-norm Transformer layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Clone, Debug)]
pub struct PreNormEncoderLayer {
    ln1: LayerNorm,
    attn: MultiHeadAttention,
    ln2: LayerNorm,
    mlp: Mlp,
}

impl PreNormEncoderLayer {
    /// Loads the layer from `vb` by the names in `keys`.
    pub fn new(vb: VarBuilder, cfg: &EncoderConfig, keys: &EncoderLayerKeys) -> Result<Self> {
        let attn_cfg = AttentionConfig {
            bias: cfg.qkv_bias,
            ..AttentionConfig::new(cfg.dim, cfg.num_heads)
        };
        let mlp_vb = if keys.mlp.is_empty() {
            vb.clone()
        } else {
            vb.pp(&keys.mlp)
        };
        Ok(PreNormEncoderLayer {
            ln1: LayerNorm::new(vb.pp(&keys.ln1), cfg.dim, cfg.layer_norm_eps)?,
            attn: MultiHeadAttention::new(vb.clone(), &attn_cfg, &keys.attention)?,
            ln2: LayerNorm::new(vb.pp(&keys.ln2), cfg.dim, cfg.layer_norm_eps)?,
            mlp: Mlp::new(mlp_vb, cfg.dim, cfg.mlp_dim, cfg.activation, &keys.mlp_keys)?,
        })
    }

    /// The attention block.
    pub fn attention(&self) -> &MultiHeadAttention {
        &self.attn
    }

    /// The MLP block.
    pub fn mlp(&self) -> &Mlp {
        &self.mlp
    }

    /// `x` is `(B, N, E)`; self-attention is masked by `mask`. Returns `(B, N, E)`.
    pub fn forward_masked(&self, x: &Tensor, mask: &AttentionMask) -> Result<Tensor> {
        let a = self.attn.forward(&self.ln1.forward(x)?, None, mask)?;
        let x = x.add(&a)?;
        let m = self.mlp.forward(&self.ln2.forward(&x)?)?;
        x.add(&m)
    }
}

impl Module for PreNormEncoderLayer {
    /// Unmasked: `x` is `(B, N, E)`, and so is the result.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_masked(x, &AttentionMask::none())
    }
}

/// A stack of [`PreNormEncoderLayer`]s applied in order.
#[derive(Clone, Debug)]
pub struct Encoder {
    layers: Vec<PreNormEncoderLayer>,
}

impl Encoder {
    /// Loads `num_layers` layers from `vb`, layer `i` under `{keys.layers}.{i}`.
    pub fn new(
        vb: VarBuilder,
        cfg: &EncoderConfig,
        num_layers: usize,
        keys: &EncoderKeys,
    ) -> Result<Self> {
        let vb_layers = vb.pp(&keys.layers);
        let layers = (0..num_layers)
            .map(|i| PreNormEncoderLayer::new(vb_layers.pp(i), cfg, &keys.layer))
            .collect::<Result<_>>()?;
        Ok(Encoder { layers })
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[PreNormEncoderLayer] {
        &self.layers
    }

    /// `x` is `(B, N, E)`; every layer's self-attention is masked by `mask`. Returns
    /// `(B, N, E)`.
    pub fn forward_masked(&self, x: &Tensor, mask: &AttentionMask) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward_masked(&x, mask)?;
        }
        Ok(x)
    }
}

impl Module for Encoder {
    /// Unmasked: `x` is `(B, N, E)`, and so is the result.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_masked(x, &AttentionMask::none())
    }
}

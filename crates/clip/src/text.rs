//! The text tower (`CLIPTextTransformer`): token and position embeddings, a causal pre-norm
//! encoder, a final layer norm, and pooling at the end-of-text token.

use glimpse_nn::{AttentionMask, Embedding, Encoder, EncoderKeys, LayerNorm, Module};
use glimpse_tensor::{DType, Error, Result, Tensor, VarBuilder};

use crate::config::{ClipTextConfig, EosPooling};

/// Outputs of [`ClipTextTransformer::forward`].
#[derive(Clone, Debug)]
pub struct ClipTextOutput {
    /// `(B, L, E)`: after the final layer norm.
    pub last_hidden_state: Tensor,
    /// `(B, E)`: the row of each sequence's end-of-text token.
    pub pooler_output: Tensor,
}

/// The text tower, loaded from the `text_model` keys.
#[derive(Clone, Debug)]
pub struct ClipTextTransformer {
    token_embedding: Embedding,
    /// `(max_positions, E)`.
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    pooling: EosPooling,
    vocab_size: usize,
}

impl ClipTextTransformer {
    /// Loads `embeddings.*`, `encoder.layers.*` and `final_layer_norm.*` from `vb`.
    pub fn new(cfg: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let e = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        Ok(ClipTextTransformer {
            token_embedding: Embedding::new(emb.pp("token_embedding"), cfg.vocab_size, e)?,
            position_embedding: emb
                .pp("position_embedding")
                .get([cfg.max_position_embeddings, e], "weight")?,
            encoder: Encoder::new(
                vb.pp("encoder"),
                &cfg.encoder()?,
                cfg.num_hidden_layers,
                &EncoderKeys::clip(),
            )?,
            final_layer_norm: LayerNorm::new(vb.pp("final_layer_norm"), e, cfg.layer_norm_eps)?,
            pooling: cfg.eos_pooling(),
            vocab_size: cfg.vocab_size,
        })
    }

    /// `input_ids` is `(B, L)` `U32`, `L` at most `max_position_embeddings`;
    /// `attention_mask`, if given, is `(B, L)` `U32` with 1 on real tokens and 0 on padding.
    /// Attention is causal either way.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<ClipTextOutput> {
        const OP: &str = "CLIP text";
        if input_ids.rank() != 2 || input_ids.dtype() != DType::U32 {
            return Err(Error::bad_shape(
                OP,
                format!(
                    "input_ids must be (batch, length) u32, got {}",
                    input_ids.dtype()
                ),
                input_ids.shape(),
            ));
        }
        let (b, l) = (input_ids.dims()[0], input_ids.dims()[1]);
        let max = self.position_embedding.dims()[0];
        if l == 0 || l > max {
            return Err(Error::bad_shape(
                OP,
                format!("sequence length must be between 1 and max_position_embeddings {max}"),
                input_ids.shape(),
            ));
        }
        if let Some(m) = attention_mask
            && (m.dims() != input_ids.dims() || m.dtype() != DType::U32)
        {
            return Err(Error::ShapeMismatch {
                op: "CLIP text (attention_mask must be u32 with input_ids' shape)",
                lhs: input_ids.shape().clone(),
                rhs: m.shape().clone(),
            });
        }
        // Where the ids are host memory (the CPU device), check them up front at no cost: a
        // token outside the vocabulary, or a row without its end-of-text token, is an error
        // naming it. On a GPU that would be a read-back inside the forward pass, so there the
        // embedding lookup reports a bad id (with the next read-back) and the pooling position
        // follows the reference's rule, argmax, as on the host.
        if input_ids.device().location().backend == "cpu" {
            let ids = input_ids.to_vec::<u32>()?;
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "token id {bad} is outside the vocabulary of {}",
                        self.vocab_size
                    ),
                ));
            }
            self.check_eos(&ids, b, l)?;
        }

        // x is (B, L, E)
        let x = self.token_embedding.forward(input_ids)?;
        let x = x.add(&self.position_embedding.narrow(0, 0, l)?)?;
        let mask = match attention_mask {
            Some(m) => AttentionMask::padding(m.clone()).with_causal(true),
            None => AttentionMask::causal(),
        };
        let x = self.encoder.forward_masked(&x, &mask)?;
        let last_hidden_state = self.final_layer_norm.forward(&x)?;

        // Rows b * L + eos_b of the flattened (B * L, E) states, found on the device: the first
        // largest id, or the first end-of-text token (argmax picks the first maximum).
        let device = input_ids.device();
        let eos_positions = match self.pooling {
            EosPooling::LargestId => input_ids.argmax(1)?,
            EosPooling::FirstEos(eos) => input_ids
                .eq(&Tensor::from_vec(vec![eos], [1], device)?)?
                .argmax(1)?,
        };
        let row_starts = Tensor::arange_step(0.0, (b * l) as f64, l as f64, DType::U32, device)?;
        let rows = eos_positions.add(&row_starts)?;
        let e = last_hidden_state.dims()[2];
        let pooler_output = last_hidden_state
            .reshape([b * l, e])?
            .index_select(&rows, 0)?;
        Ok(ClipTextOutput {
            last_hidden_state,
            pooler_output,
        })
    }

    /// Every row has its end-of-text token where the pooling looks for it.
    fn check_eos(&self, ids: &[u32], b: usize, l: usize) -> Result<()> {
        let EosPooling::FirstEos(eos) = self.pooling else {
            return Ok(());
        };
        match (0..b).find(|r| !ids[r * l..(r + 1) * l].contains(&eos)) {
            None => Ok(()),
            Some(r) => Err(Error::invalid(
                "CLIP text",
                format!(
                    "sequence {r} has no end-of-text token (id {eos}); the text tower pools at \
                     it, so tokenize with the tokenizer's special tokens"
                ),
            )),
        }
    }
}

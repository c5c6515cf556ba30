//! Text tokenization through the `tokenizers` crate, as transformers' fast tokenizers call it.

use std::path::{Path, PathBuf};

use glimpse_tensor::{Device, Tensor};
use tokenizers::{
    PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{ProcessingError, Result};

/// The maximum length when `tokenizer_config.json` does not give one: CLIP's 77.
pub const DEFAULT_MAX_LENGTH: usize = 77;

/// How a batch is padded (always on the right, with the pad token and a zero mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Every row to the maximum length (`padding="max_length"`), as CLIP's text model expects.
    MaxLength,
    /// Every row to the longest row of the batch (`padding=True`).
    Longest,
}

/// A tokenizer loaded from a `tokenizer.json`, encoding batches the way
/// `tokenizer(texts, padding=..., max_length=n, truncation=True)` does in transformers: special
/// tokens added (`<|startoftext|> ... <|endoftext|>` for CLIP), truncated to `max_length`
/// tokens (specials included), padded on the right.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    max_length: usize,
    pad_id: u32,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`. The pad token and the default maximum length come from the
    /// `tokenizer_config.json` (or `special_tokens_map.json`) beside it when there is one
    /// (`pad_token`, `model_max_length`); otherwise the pad token is the one set in
    /// `tokenizer.json`'s padding, or `<|endoftext|>` (CLIP's), and the maximum length is 77.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| ProcessingError::io(path, e))?;
        let tok_err = |msg: String| ProcessingError::Tokenizer {
            path: path.display().to_string(),
            msg,
        };
        let inner = Tokenizer::from_bytes(&bytes).map_err(|e| tok_err(e.to_string()))?;

        let dir = path.parent().unwrap_or(Path::new("."));
        let config = read_json_if_present(&dir.join("tokenizer_config.json"))?;
        let special = read_json_if_present(&dir.join("special_tokens_map.json"))?;
        let pad_token = [&config, &special]
            .into_iter()
            .flatten()
            .find_map(|v| token_string(v.get("pad_token")?))
            .or_else(|| inner.get_padding().map(|p| p.pad_token.clone()))
            .unwrap_or_else(|| "<|endoftext|>".to_string());
        let pad_id = inner.token_to_id(&pad_token).ok_or_else(|| {
            tok_err(format!(
                "the pad token `{pad_token}` is not in the vocabulary"
            ))
        })?;
        let max_length = config
            .as_ref()
            .and_then(|c| c.get("model_max_length")?.as_f64())
            // transformers writes 1e30 for "no limit"
            .filter(|n| (1.0..=1e6).contains(n))
            .map_or(DEFAULT_MAX_LENGTH, |n| n as usize);

        let mut tok = TextTokenizer {
            inner,
            path: path.to_path_buf(),
            max_length,
            pad_id,
        };
        tok.configure()?;
        Ok(tok)
    }

    /// Number of special tokens the post-processor adds to one sequence.
    fn n_special(&self) -> usize {
        self.inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false))
    }

    fn configure(&mut self) -> Result<()> {
        if self.max_length == 0 || self.max_length < self.n_special() {
            // Reported by the encode functions.
            return Ok(());
        }
        let params = TruncationParams {
            max_length: self.max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        };
        let set = self
            .inner
            .with_truncation(Some(params))
            .map(|_| ())
            .map_err(|e| e.to_string());
        set.map_err(|msg| self.error(msg))?;
        self.inner.with_padding(None);
        Ok(())
    }

    fn error(&self, msg: String) -> ProcessingError {
        ProcessingError::Tokenizer {
            path: self.path.display().to_string(),
            msg,
        }
    }

    /// The same tokenizer truncating (and, with [`Padding::MaxLength`], padding) to `n` tokens,
    /// special tokens included. Encoding fails if `n` is zero, or too small for the special
    /// tokens.
    pub fn with_max_length(mut self, n: usize) -> Self {
        self.max_length = n;
        // Only a length shorter than the special tokens can fail; encoding reports it.
        let _ = self.configure();
        self
    }

    fn check_max_length(&self) -> Result<()> {
        let n_special = self.n_special();
        if self.max_length == 0 || self.max_length < n_special {
            return Err(ProcessingError::invalid(
                "TextTokenizer",
                format!(
                    "max_length {} leaves no room: it must be positive and at least the {} \
                     special tokens",
                    self.max_length, n_special
                ),
            ));
        }
        Ok(())
    }

    /// The maximum length, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The id of the pad token.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Number of tokens in the vocabulary, added tokens included (49408 for CLIP).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying `tokenizers` tokenizer (truncation set, padding off).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// The ids of one text, special tokens added, truncated to the maximum length, not padded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.check_max_length()?;
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| self.error(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes a batch: ids and attention masks of `texts.len()` rows, padded as asked.
    pub fn encode_batch(&self, texts: &[&str], padding: Padding) -> Result<TokenizedBatch> {
        self.check_max_length()?;
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| self.error(e.to_string()))?;
        let seq_len = match padding {
            Padding::MaxLength => self.max_length,
            Padding::Longest => encodings.iter().map(|e| e.len()).max().unwrap_or(0),
        };
        let mut input_ids = Vec::with_capacity(texts.len() * seq_len);
        let mut attention_mask = Vec::with_capacity(texts.len() * seq_len);
        for enc in &encodings {
            let ids = enc.get_ids();
            if ids.len() > seq_len {
                return Err(self.error(format!(
                    "an encoding of {} tokens is longer than the maximum length {seq_len}",
                    ids.len()
                )));
            }
            input_ids.extend_from_slice(ids);
            attention_mask.extend_from_slice(enc.get_attention_mask());
            input_ids.resize(input_ids.len() + seq_len - ids.len(), self.pad_id);
            attention_mask.resize(attention_mask.len() + seq_len - ids.len(), 0);
        }
        Ok(TokenizedBatch {
            input_ids,
            attention_mask,
            batch: texts.len(),
            seq_len,
        })
    }
}

fn read_json_if_present(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ProcessingError::Tokenizer {
                path: path.display().to_string(),
                msg: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ProcessingError::io(path, e)),
    }
}

/// A special token written as a string or as an `AddedToken` object (`{"content": ...}`).
fn token_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Token ids and attention masks of a batch, row-major `(batch, seq_len)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedBatch {
    /// Token ids, `batch * seq_len`, padded with the pad id.
    pub input_ids: Vec<u32>,
    /// 1 for a real token, 0 for padding, `batch * seq_len`.
    pub attention_mask: Vec<u32>,
    /// Number of texts.
    pub batch: usize,
    /// Length of every row.
    pub seq_len: usize,
}

impl TokenizedBatch {
    /// The ids of row `i`.
    pub fn ids(&self, i: usize) -> &[u32] {
        &self.input_ids[i * self.seq_len..(i + 1) * self.seq_len]
    }

    /// The attention mask of row `i`.
    pub fn mask(&self, i: usize) -> &[u32] {
        &self.attention_mask[i * self.seq_len..(i + 1) * self.seq_len]
    }

    /// The ids as a `(batch, seq_len)` `U32` tensor.
    pub fn input_ids_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.input_ids,
            [self.batch, self.seq_len],
            device,
        )?)
    }

    /// The attention mask as a `(batch, seq_len)` `U32` tensor (nonzero = attend, the key
    /// padding mask convention of glimpse's attention).
    pub fn attention_mask_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.attention_mask,
            [self.batch, self.seq_len],
            device,
        )?)
    }
}

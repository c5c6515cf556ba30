//! A word-level tokenizer for the captioned-shapes set, written as a Hugging Face
//! `tokenizer.json` so the text tower loads it through the same `TextTokenizer` as CLIP's BPE.
//!
//! The captions use a closed vocabulary of a few dozen words, so one token per word is exact
//! and keeps the embedding table (and the model) tiny.

use std::path::{Path, PathBuf};

use glimpse_tensor::{Error, Result};
use serde_json::json;

use super::shapes::{Colour, Position, ShapeKind, Size};

/// The padding token's id.
pub const PAD_ID: u32 = 0;
/// The id of the token that replaces words outside the vocabulary.
pub const UNK_ID: u32 = 1;
/// The id of the token that starts every sequence.
pub const BOS_ID: u32 = 2;
/// The id of the token that ends every sequence; a CLIP text tower pools its hidden state.
pub const EOS_ID: u32 = 3;

/// The special tokens, at ids 0 to 3.
pub const SPECIAL_TOKENS: [&str; 4] = ["<pad>", "<unk>", "<bos>", "<eos>"];

/// Words beyond the captions' own, so prompt templates such as "a photo of a red circle." and
/// "an image of the shape" stay in the vocabulary.
pub const TEMPLATE_WORDS: [&str; 12] = [
    "a", "an", "the", "photo", "picture", "image", "of", "shape", "on", "at", "in", ".",
];

/// Number of tokens: 4 special tokens, the 12 template words, 2 sizes, 6 colours, 4 shapes and
/// 5 position words ("on", "at", "in", "the" being template words already).
pub const VOCAB_SIZE: usize = 33;

/// The maximum sequence length written into `tokenizer_config.json`, special tokens included:
/// the longest caption, "a large yellow triangle at the bottom", is 7 words, 9 tokens.
pub const MAX_CAPTION_TOKENS: usize = 16;

/// The vocabulary in id order: the special tokens, then [`TEMPLATE_WORDS`], then the caption
/// words not already listed.
pub fn vocabulary() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = SPECIAL_TOKENS.to_vec();
    let caption_words = Size::ALL
        .iter()
        .map(|s| s.name())
        .chain(Colour::ALL.iter().map(|c| c.name()))
        .chain(ShapeKind::ALL.iter().map(|s| s.name()))
        .chain(
            Position::ALL
                .iter()
                .flat_map(|p| p.phrase().split_whitespace()),
        );
    for w in TEMPLATE_WORDS.into_iter().chain(caption_words) {
        if !words.contains(&w) {
            words.push(w);
        }
    }
    words
}

/// The `tokenizer.json` of the caption tokenizer: a `WordLevel` model over [`vocabulary`],
/// lowercasing, splitting on whitespace (and punctuation), and wrapping every sequence as
/// `<bos> ... <eos>`. Padding and truncation are left to the caller (`TextTokenizer` sets
/// them from `tokenizer_config.json`).
pub fn tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = vocabulary()
        .into_iter()
        .enumerate()
        .map(|(id, w)| (w.to_string(), json!(id)))
        .collect();
    let added_tokens: Vec<serde_json::Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, t)| {
            json!({
                "id": id,
                "content": t,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": true,
            })
        })
        .collect();
    let special = |t: &str| json!({ "SpecialToken": { "id": t, "type_id": 0 } });
    let special_entry = |t: &str, id: u32| json!({ "id": t, "ids": [id], "tokens": [t] });
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": { "type": "Lowercase" },
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                special("<bos>"),
                { "Sequence": { "id": "A", "type_id": 0 } },
                special("<eos>"),
            ],
            "pair": [
                special("<bos>"),
                { "Sequence": { "id": "A", "type_id": 0 } },
                special("<eos>"),
                { "Sequence": { "id": "B", "type_id": 1 } },
                { "SpecialToken": { "id": "<eos>", "type_id": 1 } },
            ],
            "special_tokens": {
                "<bos>": special_entry("<bos>", BOS_ID),
                "<eos>": special_entry("<eos>", EOS_ID),
            },
        },
        "decoder": null,
        "model": {
            "type": "WordLevel",
            "vocab": vocab,
            "unk_token": "<unk>",
        },
    });
    // A `Value` built from literals always serialises.
    serde_json::to_string_pretty(&tokenizer).unwrap_or_default()
}

/// The `tokenizer_config.json` that goes beside [`tokenizer_json`]: it names the pad token
/// and the maximum length ([`MAX_CAPTION_TOKENS`]), which `TextTokenizer` reads from there.
pub fn tokenizer_config_json() -> String {
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "model_max_length": MAX_CAPTION_TOKENS,
    });
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if missing) and
/// returns the path of `tokenizer.json`, the one to pass to `TextTokenizer::from_file`.
pub fn write_tokenizer_files(dir: impl AsRef<Path>) -> Result<PathBuf> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tokenizer = dir.join("tokenizer.json");
    std::fs::write(&tokenizer, tokenizer_json()).map_err(|e| Error::io(&tokenizer, e))?;
    let config = dir.join("tokenizer_config.json");
    std::fs::write(&config, tokenizer_config_json()).map_err(|e| Error::io(&config, e))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::super::shapes::{ShapesConfig, ShapesDataset, ShapesSplit};
    use super::*;
    use glimpse_processing::{Padding, TextTokenizer};

    fn load() -> (tempfile::TempDir, TextTokenizer) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_tokenizer_files(dir.path().join("tok")).unwrap();
        let tok = TextTokenizer::from_file(&path).unwrap();
        (dir, tok)
    }

    #[test]
    fn vocabulary_layout() {
        let v = vocabulary();
        assert_eq!(v.len(), VOCAB_SIZE);
        assert_eq!(&v[..4], &SPECIAL_TOKENS);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), v.len(), "duplicate words");
    }

    #[test]
    fn loads_through_text_tokenizer() {
        let (_dir, tok) = load();
        assert_eq!(tok.vocab_size(), VOCAB_SIZE);
        assert_eq!(tok.pad_id(), PAD_ID);
        assert_eq!(tok.max_length(), MAX_CAPTION_TOKENS);
        for (id, t) in SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(tok.token_to_id(t), Some(id as u32));
        }
        let ids = tok.encode("a small red circle on the left").unwrap();
        let word = |w: &str| tok.token_to_id(w).unwrap();
        let expected = [
            BOS_ID,
            word("a"),
            word("small"),
            word("red"),
            word("circle"),
            word("on"),
            word("the"),
            word("left"),
            EOS_ID,
        ];
        assert_eq!(ids, expected);

        let batch = tok
            .encode_batch(
                &["a small red circle on the left", "A Red Circle."],
                Padding::MaxLength,
            )
            .unwrap();
        assert_eq!(batch.seq_len, MAX_CAPTION_TOKENS);
        let row = batch.ids(0);
        assert_eq!(&row[..9], &expected);
        assert!(row[9..].iter().all(|&id| id == PAD_ID), "{row:?}");
        assert_eq!(batch.mask(0).iter().sum::<u32>(), 9);
        // Lowercased, and the full stop is a word of its own.
        let row = batch.ids(1);
        assert_eq!(
            &row[..6],
            &[
                BOS_ID,
                word("a"),
                word("red"),
                word("circle"),
                word("."),
                EOS_ID
            ]
        );
        // Unknown words map to <unk> rather than failing.
        assert_eq!(tok.encode("a mauve circle").unwrap()[2], UNK_ID);
    }

    #[test]
    fn every_caption_word_is_in_the_vocabulary() {
        let (_dir, tok) = load();
        let v = vocabulary();
        for split in [ShapesSplit::Train, ShapesSplit::Test, ShapesSplit::HeldOut] {
            let ds = ShapesDataset::new(ShapesConfig::default(), split).unwrap();
            for i in 0..300 {
                let s = ds.sample(i);
                for w in s.caption.split_whitespace() {
                    assert!(v.contains(&w), "`{w}` of `{}`", s.caption);
                }
                let ids = tok.encode(&s.caption).unwrap();
                assert!(!ids.contains(&UNK_ID), "{}", s.caption);
                assert!(ids.len() <= MAX_CAPTION_TOKENS);
            }
        }
    }
}

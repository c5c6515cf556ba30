//! `TextTokenizer` against `CLIPTokenizerFast` on the CLIP vocabulary built from the
//! open_clip BPE file (tests/fixtures/generate/processing.py).

mod common;

use glimpse_processing::{Padding, ProcessingError, TextTokenizer};
use serde_json::Value;

fn tokenizer() -> TextTokenizer {
    TextTokenizer::from_file(common::fixtures().join("tokenizer/tokenizer.json")).unwrap()
}

fn cases() -> Value {
    let text = std::fs::read_to_string(common::fixtures().join("tokenizer_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn check(tok: &TextTokenizer, texts: &[&str], padding: Padding, expected: &Value, what: &str) {
    let batch = tok.encode_batch(texts, padding).unwrap();
    let ids = rows(&expected["input_ids"]);
    let masks = rows(&expected["attention_mask"]);
    assert_eq!(batch.batch, texts.len());
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(batch.ids(i), ids[i].as_slice(), "{what}: ids of {text:?}");
        assert_eq!(
            batch.mask(i),
            masks[i].as_slice(),
            "{what}: mask of {text:?}"
        );
    }
    assert_eq!(batch.seq_len, ids[0].len(), "{what}: length");
}

#[test]
fn vocabulary_and_known_ids() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49408);
    assert_eq!(tok.max_length(), 77);
    assert_eq!(tok.pad_id(), 49407);
    assert_eq!(tok.token_to_id("<|startoftext|>"), Some(49406));
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(49407));
    assert_eq!(
        tok.encode("a photo of a cat").unwrap(),
        vec![49406, 320, 1125, 539, 320, 2368, 49407]
    );
}

#[test]
fn matches_clip_tokenizer_fast_for_every_string() {
    let cases = cases();
    let texts: Vec<&str> = cases["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(texts.len() >= 30);
    let tok = tokenizer();
    check(
        &tok,
        &texts,
        Padding::MaxLength,
        &cases["max_length_77"],
        "max_length 77",
    );
    check(
        &tok,
        &texts,
        Padding::Longest,
        &cases["longest_77"],
        "longest, 77",
    );
    let short = tok.clone().with_max_length(16);
    check(
        &short,
        &texts,
        Padding::MaxLength,
        &cases["max_length_16"],
        "max_length 16",
    );
    let short_texts: Vec<&str> = cases["short_texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    check(
        &tok,
        &short_texts,
        Padding::Longest,
        &cases["short_longest_77"],
        "short, longest",
    );
}

#[test]
fn tensors_have_the_batch_shape() {
    let device = glimpse_cpu::device();
    let tok = tokenizer();
    let batch = tok
        .encode_batch(&["a photo of a cat", "a dog"], Padding::MaxLength)
        .unwrap();
    let ids = batch.input_ids_tensor(&device).unwrap();
    let mask = batch.attention_mask_tensor(&device).unwrap();
    assert_eq!(ids.dims(), &[2, 77]);
    assert_eq!(mask.dims(), &[2, 77]);
    assert_eq!(ids.dtype(), glimpse_tensor::DType::U32);
    assert_eq!(ids.to_vec::<u32>().unwrap(), batch.input_ids);
    assert_eq!(mask.to_vec::<u32>().unwrap(), batch.attention_mask);
    let empty = tok.encode_batch(&[], Padding::MaxLength).unwrap();
    assert_eq!(empty.input_ids_tensor(&device).unwrap().dims(), &[0, 77]);
}

#[test]
fn errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = TextTokenizer::from_file(dir.path().join("tokenizer.json")).unwrap_err();
    assert!(matches!(e, ProcessingError::Io { .. }), "{e}");
    let bad = dir.path().join("tokenizer.json");
    std::fs::write(&bad, "{\"not\": \"a tokenizer\"}").unwrap();
    let e = TextTokenizer::from_file(&bad).unwrap_err();
    assert!(
        matches!(e, ProcessingError::Tokenizer { .. }) && e.to_string().contains("tokenizer.json"),
        "{e}"
    );
    let zero = tokenizer().with_max_length(0);
    assert!(zero.encode_batch(&["a"], Padding::MaxLength).is_err());
    // Too short for the two special tokens.
    let one = tokenizer().with_max_length(1);
    assert!(one.encode_batch(&["a photo"], Padding::MaxLength).is_err());
}

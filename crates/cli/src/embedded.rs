//! The built-in default CLIP: a tiny model trained by `glimpse train clip --dataset shapes`
//! (coloured shapes with captions), compiled into the binary so that `glimpse zero-shot` and
//! `glimpse embed` work with no model download. It knows the words of its captions only:
//! colours (red, green, blue, yellow, purple, orange), shapes (circle, square, triangle,
//! cross), sizes and positions.
//!
//! The files are written once to a cache directory (named after their content hash, so a new
//! model never reuses an old directory) and loaded from there like any checkpoint directory.

use std::path::PathBuf;

use crate::error::{CliError, Result};

/// The model's files, as `glimpse train clip` exported them.
const FILES: [(&str, &[u8]); 5] = [
    (
        "config.json",
        include_bytes!("../assets/tiny-clip/config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../assets/tiny-clip/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../assets/tiny-clip/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../assets/tiny-clip/tokenizer_config.json"),
    ),
    (
        "preprocessor_config.json",
        include_bytes!("../assets/tiny-clip/preprocessor_config.json"),
    ),
];

/// The prompt template of the built-in model: its captions are the bare descriptions.
pub const TEMPLATE: &str = "{}";

/// FNV-1a over every file's name and bytes.
fn content_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, bytes) in FILES {
        for &b in name.as_bytes().iter().chain(bytes) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The cache root: `$GLIMPSE_CACHE_DIR`, else `$XDG_CACHE_HOME/glimpse`, else
/// `$HOME/.cache/glimpse`, else the temporary directory.
fn cache_root() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("GLIMPSE_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("glimpse")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("glimpse")))
        .unwrap_or_else(|| std::env::temp_dir().join("glimpse"))
}

/// The directory holding the built-in model's files, written there on first use. Another
/// process writing it at the same time is harmless: each writes a private directory and
/// renames it into place, and the loser's rename fails on the existing directory.
pub fn tiny_clip_dir() -> Result<PathBuf> {
    let root = cache_root();
    let dir = root.join(format!("tiny-clip-{:016x}", content_hash()));
    let complete = |d: &PathBuf| {
        FILES
            .iter()
            .all(|(n, b)| std::fs::metadata(d.join(n)).is_ok_and(|m| m.len() == b.len() as u64))
    };
    if complete(&dir) {
        return Ok(dir);
    }
    let err = |path: &PathBuf, e: std::io::Error| CliError::Output {
        path: path.display().to_string(),
        msg: format!("cannot write the built-in model's files ({e}); set GLIMPSE_CACHE_DIR"),
    };
    std::fs::create_dir_all(&root).map_err(|e| err(&root, e))?;
    let tmp = root.join(format!(
        ".tiny-clip-{}-{:x}",
        std::process::id(),
        content_hash()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| err(&tmp, e))?;
    for (name, bytes) in FILES {
        let path = tmp.join(name);
        std::fs::write(&path, bytes).map_err(|e| err(&path, e))?;
    }
    if std::fs::rename(&tmp, &dir).is_err() && !complete(&dir) {
        // A directory left incomplete by an interrupted older writer: replace it, once.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(|e| err(&dir, e))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(dir)
}

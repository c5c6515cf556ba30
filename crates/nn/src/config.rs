//! Reading Hugging Face `config.json` files.

use std::path::Path;

use glimpse_tensor::{Error, Result};
use serde::de::DeserializeOwned;

/// Reads and parses a JSON configuration file. A missing or unreadable file is an
/// [`Error::Io`]; malformed JSON or a field of the wrong type is an [`Error::Config`] naming
/// the file, the line and the column.
pub fn read_json_config<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_json_config(&text, &path.display().to_string())
}

/// Parses a JSON configuration held in memory; `origin` names it in errors.
pub fn parse_json_config<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::config(origin, e.to_string()))
}

//! Checking a model directory before anything is loaded, so that a missing file is reported
//! as such (by name) rather than as whatever the first failing read says.

use std::path::{Path, PathBuf};

use glimpse_tensor::Error;

use crate::error::{CliError, Result};

/// The files of a Hugging Face checkpoint directory that the tool reads.
pub const CONFIG: &str = "config.json";
/// Single-file weights.
pub const WEIGHTS: &str = "model.safetensors";
/// Sharded weights.
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
/// The tokenizer (CLIP).
pub const TOKENIZER: &str = "tokenizer.json";
/// Image pre-processing (optional).
pub const PREPROCESSOR: &str = "preprocessor_config.json";

/// Which model a subcommand expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// `CLIPModel` (`model_type` "clip").
    Clip,
    /// `ViTForImageClassification` (`model_type` "vit").
    VitClassifier,
}

impl ModelKind {
    fn model_type(self) -> &'static str {
        match self {
            ModelKind::Clip => "clip",
            ModelKind::VitClassifier => "vit",
        }
    }

    fn what(self) -> &'static str {
        match self {
            ModelKind::Clip => "a CLIPModel checkpoint",
            ModelKind::VitClassifier => "a ViTForImageClassification checkpoint",
        }
    }
}

/// A model directory whose required files exist.
#[derive(Clone, Debug)]
pub struct ModelDir {
    /// The directory as given.
    pub dir: PathBuf,
    /// `preprocessor_config.json`, when there is one.
    pub preprocessor: Option<PathBuf>,
    /// `tokenizer.json`, when it was asked for.
    pub tokenizer: Option<PathBuf>,
    /// The weights file (or index) that will be read, for messages.
    pub weights: PathBuf,
}

impl ModelDir {
    /// Checks `dir` for a config, weights and (with `needs_tokenizer`) a tokenizer, and that
    /// the config's `model_type`, when it has one, is `kind`'s.
    pub fn open(dir: &Path, kind: ModelKind, needs_tokenizer: Option<&str>) -> Result<Self> {
        let err = |msg: String| CliError::model(dir, msg);
        let meta = std::fs::metadata(dir).map_err(|e| err(format!("cannot be read: {e}")))?;
        if !meta.is_dir() {
            return Err(err(format!(
                "is not a directory; --model takes the directory that holds {CONFIG} and {WEIGHTS}"
            )));
        }
        let config = dir.join(CONFIG);
        if !config.is_file() {
            return Err(err(format!(
                "has no {CONFIG} (the model's Hugging Face configuration)"
            )));
        }
        check_model_type(dir, &config, kind)?;

        let weights = if dir.join(WEIGHTS_INDEX).is_file() {
            dir.join(WEIGHTS_INDEX)
        } else if dir.join(WEIGHTS).is_file() {
            dir.join(WEIGHTS)
        } else {
            let torch = [
                "pytorch_model.bin",
                "model.pt",
                "pytorch_model.bin.index.json",
            ]
            .into_iter()
            .find(|f| dir.join(f).exists());
            return Err(err(match torch {
                Some(f) => format!(
                    "has PyTorch weights ({f}) but no {WEIGHTS}; glimpse reads safetensors only \
                     (convert them, e.g. with safetensors' torch `save_file`)"
                ),
                None => format!("has no weights: neither {WEIGHTS} nor {WEIGHTS_INDEX}"),
            }));
        };

        let tokenizer = match needs_tokenizer {
            Some(why) => {
                let t = dir.join(TOKENIZER);
                if !t.is_file() {
                    return Err(err(format!("has no {TOKENIZER}, which is needed {why}")));
                }
                Some(t)
            }
            None => None,
        };
        let preprocessor = Some(dir.join(PREPROCESSOR)).filter(|p| p.is_file());
        Ok(ModelDir {
            dir: dir.to_path_buf(),
            preprocessor,
            tokenizer,
            weights,
        })
    }

    /// Turns an error from loading the model into a message about this directory: weights
    /// that do not fit the config get a hint that the two files do not belong together.
    pub fn load_error(&self, kind: ModelKind, e: Error) -> CliError {
        let weights = self
            .weights
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let msg = match &e {
            Error::MissingKey { key, .. }
                if kind == ModelKind::VitClassifier && key.starts_with("classifier.") =>
            {
                format!(
                    "{weights} has no classification head (`{key}` is missing): this looks like \
                     a ViTModel backbone, but classify needs {}",
                    kind.what()
                )
            }
            Error::WeightShape { .. } | Error::MissingKey { .. } | Error::UnusedKeys { .. } => {
                format!("the weights in {weights} do not match {CONFIG}: {e}")
            }
            _ => format!("cannot load {}: {e}", kind.what()),
        };
        CliError::model(&self.dir, msg)
    }
}

/// Reads `model_type` from the config (when it is there) and compares it with `kind`'s. A
/// config that is not JSON is reported here too, naming the file.
fn check_model_type(dir: &Path, config: &Path, kind: ModelKind) -> Result<()> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| CliError::model(dir, format!("cannot read {CONFIG}: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CliError::model(dir, format!("{CONFIG} is not valid JSON: {e}")))?;
    if !json.is_object() {
        return Err(CliError::model(
            dir,
            format!("{CONFIG} is not a JSON object"),
        ));
    }
    if let Some(found) = json.get("model_type").and_then(|v| v.as_str())
        && found != kind.model_type()
    {
        return Err(CliError::model(
            dir,
            format!(
                "{CONFIG} has model_type {found:?}, but this command needs {} (model_type {:?})",
                kind.what(),
                kind.model_type()
            ),
        ));
    }
    Ok(())
}

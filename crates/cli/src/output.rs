//! What the subcommands print: text for people, one JSON document (`--json`) for programs.
//! The JSON documents are structs, so their keys keep the order written here.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use glimpse_clip::LabelScore;
use serde::Serialize;

use crate::cli::CommonArgs;
use crate::error::{CliError, Result};

/// The ranked labels of one image.
#[derive(Clone, Debug)]
pub struct Ranked {
    /// The image path as given.
    pub image: PathBuf,
    /// Best first.
    pub predictions: Vec<LabelScore>,
}

/// One block per image: the path, then `rank. label  probability` lines.
pub fn ranked_text(results: &[Ranked]) -> String {
    let mut s = String::new();
    for r in results {
        let _ = writeln!(s, "{}", r.image.display());
        let width = r
            .predictions
            .iter()
            .map(|p| p.label.chars().count())
            .max()
            .unwrap_or(0);
        let rank_width = r.predictions.len().to_string().len();
        for (i, p) in r.predictions.iter().enumerate() {
            let _ = writeln!(
                s,
                "  {:>rank_width$}. {:<width$}  {:.4}",
                i + 1,
                p.label,
                p.probability
            );
        }
    }
    s
}

/// Where and how the model ran, echoed in every JSON document.
#[derive(Debug, Serialize)]
pub struct RunInfo {
    /// The subcommand.
    pub command: &'static str,
    /// The model directory as given.
    pub model: String,
    /// `--device`.
    pub device: &'static str,
    /// `--dtype`.
    pub dtype: &'static str,
    /// `--batch-size`.
    pub batch_size: u32,
}

impl RunInfo {
    /// The run of `command` on `model` with the common options.
    pub fn new(command: &'static str, model: &Path, common: &CommonArgs) -> Self {
        RunInfo {
            command,
            model: model.display().to_string(),
            device: common.device.name(),
            dtype: common.dtype.name(),
            batch_size: common.batch_size,
        }
    }
}

/// The JSON document of `zero-shot` and `classify`.
#[derive(Debug, Serialize)]
pub struct RankedDoc<'a> {
    /// The run.
    #[serde(flatten)]
    pub run: RunInfo,
    /// Zero-shot: the candidate labels in the order given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<&'a [String]>,
    /// Zero-shot: the prompt templates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub templates: Option<&'a [String]>,
    /// Classify: the number of classes of the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
    /// How many labels each result lists.
    pub top_k: usize,
    /// One entry per image, in the order given.
    pub results: Vec<ImageResult>,
}

/// The ranked labels of one image, for JSON.
#[derive(Debug, Serialize)]
pub struct ImageResult {
    /// The path as given.
    pub image: String,
    /// Best first.
    pub predictions: Vec<Prediction>,
}

/// One ranked label, for JSON.
#[derive(Debug, Serialize)]
pub struct Prediction {
    /// 1 for the most probable.
    pub rank: usize,
    /// The label.
    pub label: String,
    /// Its index among the labels (zero-shot) or classes (`id2label`).
    pub index: usize,
    /// Its softmax probability.
    pub probability: f32,
}

/// The per-image JSON results.
pub fn ranked_json(results: &[Ranked]) -> Vec<ImageResult> {
    results
        .iter()
        .map(|r| ImageResult {
            image: r.image.display().to_string(),
            predictions: r
                .predictions
                .iter()
                .enumerate()
                .map(|(i, p)| Prediction {
                    rank: i + 1,
                    label: p.label.clone(),
                    index: p.index,
                    probability: p.probability,
                })
                .collect(),
        })
        .collect()
}

/// The JSON document of `embed`.
#[derive(Debug, Serialize)]
pub struct EmbedDoc {
    /// The run.
    #[serde(flatten)]
    pub run: RunInfo,
    /// The file written.
    pub out: String,
    /// Whether the rows have unit length.
    pub normalized: bool,
    /// The image embeddings, when there were images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_embeds: Option<EmbedSummary>,
    /// The text embeddings, when there were texts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_embeds: Option<EmbedSummary>,
}

/// One tensor written by `embed`.
#[derive(Debug, Serialize)]
pub struct EmbedSummary {
    /// Its key in the file.
    pub key: &'static str,
    /// `[inputs, projection_dim]`.
    pub shape: Vec<usize>,
    /// Always `f32`.
    pub dtype: &'static str,
    /// The image paths or texts, row by row.
    pub inputs: Vec<String>,
}

/// Serializes a JSON document for stdout (pretty, with a final newline).
pub fn json_text(value: &impl Serialize) -> Result<String> {
    let mut s = serde_json::to_string_pretty(value).map_err(|e| CliError::Output {
        path: "stdout".into(),
        msg: format!("cannot serialize the JSON output: {e}"),
    })?;
    s.push('\n');
    Ok(s)
}

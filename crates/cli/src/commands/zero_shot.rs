//! `glimpse zero-shot`: CLIP zero-shot classification.

use glimpse_clip::{ClipConfig, ClipModel, DEFAULT_TEMPLATE, PROMPT_ENSEMBLE, ZeroShotClassifier};

use crate::cli::ZeroShotArgs;
use crate::commands::{batch_context, over_image_batches};
use crate::error::{Context, Result};
use crate::inputs::{check_labels, check_templates, read_labels_file};
use crate::model_dir::{CONFIG, ModelDir, ModelKind};
use crate::output::{Ranked, RankedDoc, RunInfo, json_text, ranked_json, ranked_text};
use crate::preprocess::{Images, Tokenizer};
use crate::runtime;

/// Runs the subcommand.
pub fn run(args: &ZeroShotArgs) -> Result<()> {
    let c = &args.common;
    let device = runtime::device(c.device)?;
    let dtype = c.dtype.dtype();
    let batch_size = c.batch_size as usize;

    let mut labels = args.labels.clone();
    if let Some(file) = &args.labels_file {
        labels.extend(read_labels_file(file)?);
    }
    check_labels(&labels)?;
    let templates: Vec<String> = if args.ensemble {
        PROMPT_ENSEMBLE.iter().map(|t| t.to_string()).collect()
    } else if args.templates.is_empty() && args.model.is_none() {
        vec![crate::embedded::TEMPLATE.to_string()]
    } else if args.templates.is_empty() {
        vec![DEFAULT_TEMPLATE.to_string()]
    } else {
        args.templates.clone()
    };
    check_templates(&templates)?;
    let top_k = args.top_k.map_or(5, |k| k as usize).min(labels.len());

    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => crate::embedded::tiny_clip_dir()?,
    };
    let dir = ModelDir::open(&model_path, ModelKind::Clip, Some("to encode the labels"))?;
    Images::check_files(&args.images)?;
    let cfg = ClipConfig::from_file(dir.dir.join(CONFIG))
        .map_err(|e| dir.load_error(ModelKind::Clip, e))?;
    let images = Images::for_clip(&dir, &cfg)?;
    let tokenizer = Tokenizer::open(&dir, &cfg)?;
    let model = ClipModel::from_pretrained(&dir.dir, dtype, &device)
        .map_err(|e| dir.load_error(ModelKind::Clip, e))?;

    let n_prompts = labels.len() * templates.len();
    let bar = runtime::progress(n_prompts + args.images.len(), batch_size, c.json);
    bar.set_message("prompts");
    let template_refs: Vec<&str> = templates.iter().map(String::as_str).collect();
    let tokenize = |texts: &[String]| {
        let encoded = tokenizer.encode(texts, &device);
        bar.inc(texts.len() as u64);
        encoded
    };
    let classifier =
        ZeroShotClassifier::new(&model, &labels, &template_refs, &tokenize, batch_size).context(
            || {
                format!(
                    "encoding {n_prompts} prompts with the CLIP text tower of {}",
                    dir.dir.display()
                )
            },
        )?;

    bar.set_message("images");
    let results = over_image_batches(
        &images,
        &args.images,
        batch_size,
        &device,
        dtype,
        &bar,
        |paths, pixels| {
            let features = model
                .get_image_features(pixels)
                .context(|| format!("running the CLIP vision tower on {}", batch_context(paths)))?;
            let ranked = classifier
                .classify(&features, top_k)
                .context(|| "ranking the labels".to_string())?;
            Ok(paths
                .iter()
                .zip(ranked)
                .map(|(p, predictions)| Ranked {
                    image: p.clone(),
                    predictions,
                })
                .collect())
        },
    )?;
    bar.finish_and_clear();

    if c.json {
        runtime::print_stdout(&json_text(&RankedDoc {
            run: RunInfo::new("zero-shot", &model_path, c),
            labels: Some(&labels),
            templates: Some(&templates),
            num_labels: None,
            top_k,
            results: ranked_json(&results),
        })?)
    } else {
        runtime::print_stdout(&ranked_text(&results))
    }
}

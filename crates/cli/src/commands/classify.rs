//! `glimpse classify`: ViT image classification.

use glimpse_vit::{ViTConfig, ViTForImageClassification};

use crate::cli::ClassifyArgs;
use crate::commands::{batch_context, over_image_batches};
use crate::error::{Context, Result};
use crate::model_dir::{CONFIG, ModelDir, ModelKind};
use crate::output::{Ranked, RankedDoc, RunInfo, json_text, ranked_json, ranked_text};
use crate::preprocess::Images;
use crate::runtime;

/// Runs the subcommand.
pub fn run(args: &ClassifyArgs) -> Result<()> {
    let c = &args.common;
    let device = runtime::device(c.device)?;
    let dtype = c.dtype.dtype();
    let batch_size = c.batch_size as usize;

    let dir = ModelDir::open(&args.model, ModelKind::VitClassifier, None)?;
    Images::check_files(&args.images)?;
    let cfg = ViTConfig::from_file(dir.dir.join(CONFIG))
        .map_err(|e| dir.load_error(ModelKind::VitClassifier, e))?;
    let images = Images::for_vit(&dir, &cfg)?;
    let model = ViTForImageClassification::from_pretrained(&dir.dir, dtype, &device)
        .map_err(|e| dir.load_error(ModelKind::VitClassifier, e))?;
    let top_k = (args.top_k as usize).min(model.labels().len());

    let bar = runtime::progress(args.images.len(), batch_size, c.json);
    bar.set_message("images");
    let results = over_image_batches(
        &images,
        &args.images,
        batch_size,
        &device,
        dtype,
        &bar,
        |paths, pixels| {
            let ranked = model
                .classify(pixels, top_k)
                .context(|| format!("running the ViT classifier on {}", batch_context(paths)))?;
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
            run: RunInfo::new("classify", &args.model, c),
            labels: None,
            templates: None,
            num_labels: Some(model.labels().len()),
            top_k,
            results: ranked_json(&results),
        })?)
    } else {
        runtime::print_stdout(&ranked_text(&results))
    }
}

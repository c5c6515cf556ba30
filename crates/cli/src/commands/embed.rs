//! `glimpse embed`: CLIP image and text embeddings to a safetensors file.

use std::collections::HashMap;

use glimpse_clip::{ClipConfig, ClipModel, l2_normalize};
use glimpse_tensor::{DType, Tensor};

use crate::cli::EmbedArgs;
use crate::commands::{batch_context, over_image_batches};
use crate::error::{CliError, Context, Result};
use crate::inputs::check_output_path;
use crate::model_dir::{CONFIG, ModelDir, ModelKind};
use crate::output::{EmbedDoc, EmbedSummary, RunInfo, json_text};
use crate::preprocess::{Images, Tokenizer};
use crate::runtime;

/// The key of the image embeddings in the output file.
pub const IMAGE_KEY: &str = "image_embeds";
/// The key of the text embeddings in the output file.
pub const TEXT_KEY: &str = "text_embeds";

/// Runs the subcommand.
pub fn run(args: &EmbedArgs) -> Result<()> {
    let c = &args.common;
    let device = runtime::device(c.device)?;
    let dtype = c.dtype.dtype();
    let batch_size = c.batch_size as usize;

    check_output_path(&args.out)?;
    let needs_tokenizer = (!args.texts.is_empty()).then_some("to encode the texts (--text)");
    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => crate::embedded::tiny_clip_dir()?,
    };
    let dir = ModelDir::open(&model_path, ModelKind::Clip, needs_tokenizer)?;
    Images::check_files(&args.images)?;
    let cfg = ClipConfig::from_file(dir.dir.join(CONFIG))
        .map_err(|e| dir.load_error(ModelKind::Clip, e))?;
    let images = if args.images.is_empty() {
        None
    } else {
        Some(Images::for_clip(&dir, &cfg)?)
    };
    let tokenizer = if args.texts.is_empty() {
        None
    } else {
        Some(Tokenizer::open(&dir, &cfg)?)
    };
    let model = ClipModel::from_pretrained(&dir.dir, dtype, &device)
        .map_err(|e| dir.load_error(ModelKind::Clip, e))?;

    let bar = runtime::progress(args.images.len() + args.texts.len(), batch_size, c.json);
    let finish = |features: Tensor| -> glimpse_tensor::Result<Tensor> {
        let features = features.to_dtype(DType::F32)?;
        if args.normalize {
            l2_normalize(&features)
        } else {
            Ok(features)
        }
    };

    let mut image_embeds = None;
    if let Some(images) = &images {
        bar.set_message("images");
        let rows = over_image_batches(
            images,
            &args.images,
            batch_size,
            &device,
            dtype,
            &bar,
            |paths, pixels| {
                let features = model
                    .get_image_features(pixels)
                    .and_then(finish)
                    .context(|| {
                        format!("running the CLIP vision tower on {}", batch_context(paths))
                    })?;
                Ok(vec![features])
            },
        )?;
        image_embeds = Some(cat(&rows)?);
    }
    let mut text_embeds = None;
    if let Some(tokenizer) = &tokenizer {
        bar.set_message("texts");
        let mut rows = Vec::new();
        for chunk in args.texts.chunks(batch_size) {
            let (ids, mask) = tokenizer
                .encode(chunk, &device)
                .context(|| format!("tokenizing {:?}", chunk[0]))?;
            let features = model
                .get_text_features(&ids, Some(&mask))
                .and_then(finish)
                .context(|| format!("running the CLIP text tower on {:?}", chunk[0]))?;
            rows.push(features);
            bar.inc(chunk.len() as u64);
        }
        text_embeds = Some(cat(&rows)?);
    }
    bar.finish_and_clear();

    let image_paths: Vec<String> = args
        .images
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let metadata = HashMap::from([
        ("format".to_string(), "glimpse-embeddings".to_string()),
        ("model".to_string(), model_path.display().to_string()),
        ("dtype".to_string(), c.dtype.name().to_string()),
        ("normalized".to_string(), args.normalize.to_string()),
        ("image_paths".to_string(), to_json(&image_paths)),
        ("texts".to_string(), to_json(&args.texts)),
    ]);
    let mut named: Vec<(&str, &Tensor)> = Vec::new();
    named.extend(image_embeds.as_ref().map(|t| (IMAGE_KEY, t)));
    named.extend(text_embeds.as_ref().map(|t| (TEXT_KEY, t)));
    glimpse_tensor::safetensors::save(&named, &args.out, Some(metadata)).map_err(|e| {
        let msg = match e {
            glimpse_tensor::Error::Io { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        CliError::output(&args.out, msg)
    })?;

    let summary = |key: &'static str, t: &Option<Tensor>, inputs: &[String]| {
        t.as_ref().map(|t| EmbedSummary {
            key,
            shape: t.dims().to_vec(),
            dtype: "f32",
            inputs: inputs.to_vec(),
        })
    };
    let doc = EmbedDoc {
        run: RunInfo::new("embed", &model_path, c),
        out: args.out.display().to_string(),
        normalized: args.normalize,
        image_embeds: summary(IMAGE_KEY, &image_embeds, &image_paths),
        text_embeds: summary(TEXT_KEY, &text_embeds, &args.texts),
    };
    if c.json {
        return runtime::print_stdout(&json_text(&doc)?);
    }
    let mut s = format!("wrote {}\n", args.out.display());
    for (what, t) in [("image", &doc.image_embeds), ("text", &doc.text_embeds)] {
        if let Some(t) = t {
            s.push_str(&format!(
                "  {:<12} f32 {:?}: {} {what}(s), {}\n",
                t.key,
                t.shape,
                t.shape[0],
                if args.normalize {
                    "unit length"
                } else {
                    "not normalized (--normalize for unit length)"
                }
            ));
        }
    }
    runtime::print_stdout(&s)
}

fn to_json(list: &[String]) -> String {
    serde_json::Value::from(list.to_vec()).to_string()
}

fn cat(rows: &[Tensor]) -> Result<Tensor> {
    let refs: Vec<&Tensor> = rows.iter().collect();
    Tensor::cat(&refs, 0).context(|| "joining the batches".to_string())
}

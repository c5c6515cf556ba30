//! Images to pixel tensors and texts to token ids through glimpse-processing: the one place
//! that talks to it, and that turns its errors into messages about the files.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use glimpse_clip::ClipConfig;
use glimpse_processing::image::ImageReader;
use glimpse_processing::{
    ImageProcessor, ImageProcessorConfig, Padding, ProcessingError, SizeDict, SizeSpec,
    TextTokenizer, load_image,
};
use glimpse_tensor::{DType, Device, Tensor};
use glimpse_vit::ViTConfig;

use crate::error::{CliError, Context, Result};
use crate::inputs::io_msg;
use crate::model_dir::{CONFIG, ModelDir, PREPROCESSOR, TOKENIZER};

/// The formats the decoder reads, for messages.
const FORMATS: &str = "PNG, JPEG, GIF, WebP and BMP";

/// Pre-processes images for one model.
#[derive(Debug)]
pub struct Images {
    processor: ImageProcessor,
    /// `(height, width)` the model takes.
    model_size: (usize, usize),
}

impl Images {
    /// Checks, before any model is loaded, that every path is a readable file whose header
    /// is an image's. The pixels themselves are decoded batch by batch; a file whose data is
    /// corrupt past its header fails then, named the same way.
    pub fn check_files(paths: &[PathBuf]) -> Result<()> {
        for path in paths {
            let bad = |msg: String| CliError::input("image", path, msg);
            let meta = std::fs::metadata(path).map_err(|e| bad(io_msg(&e)))?;
            if meta.is_dir() {
                return Err(bad("a directory, not an image".into()));
            }
            let file = std::fs::File::open(path).map_err(|e| bad(io_msg(&e)))?;
            let reader = ImageReader::new(BufReader::new(file))
                .with_guessed_format()
                .map_err(|e| bad(io_msg(&e)))?;
            if reader.format().is_none() {
                return Err(bad(format!("not an image file (glimpse reads {FORMATS})")));
            }
            let (w, h) = reader
                .into_dimensions()
                .map_err(|e| bad(format!("corrupt or truncated image: {e}")))?;
            if w == 0 || h == 0 {
                return Err(bad(format!("empty image ({w}x{h} pixels)")));
            }
        }
        Ok(())
    }

    /// The processor of a CLIP model: the directory's `preprocessor_config.json` when there
    /// is one, else `CLIPImageProcessor`'s defaults at the config's image size (shortest edge
    /// resized to it, bicubic, center crop, CLIP mean and std).
    pub fn for_clip(dir: &ModelDir, cfg: &ClipConfig) -> Result<Self> {
        let s = cfg.vision_config.image_size;
        let defaults = || {
            let side = u32::try_from(s).unwrap_or(u32::MAX);
            ImageProcessorConfig {
                size: Some(SizeSpec::Dict(SizeDict::shortest_edge(side))),
                crop_size: Some(SizeSpec::Dict(SizeDict::height_width(side, side))),
                ..ImageProcessorConfig::clip()
            }
        };
        Self::new(dir, (s, s), defaults)
    }

    /// The processor of a ViT: the directory's `preprocessor_config.json` when there is one,
    /// else `ViTImageProcessor`'s defaults at the config's image size (resized to it,
    /// bilinear, mean and std 0.5).
    pub fn for_vit(dir: &ModelDir, cfg: &ViTConfig) -> Result<Self> {
        let (h, w) = cfg.image_size.hw();
        let defaults = || {
            let side = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            ImageProcessorConfig {
                size: Some(SizeSpec::Dict(SizeDict::height_width(side(h), side(w)))),
                ..ImageProcessorConfig::vit()
            }
        };
        Self::new(dir, (h, w), defaults)
    }

    fn new(
        dir: &ModelDir,
        model_size: (usize, usize),
        defaults: impl FnOnce() -> ImageProcessorConfig,
    ) -> Result<Self> {
        let processor = match &dir.preprocessor {
            Some(path) => ImageProcessor::from_file(path)
                .map_err(|e| CliError::model(&dir.dir, format!("{PREPROCESSOR}: {}", plain(&e))))?,
            None => ImageProcessor::new(defaults()).map_err(|e| {
                CliError::model(
                    &dir.dir,
                    format!(
                        "no default image processor for this {CONFIG}: {}",
                        plain(&e)
                    ),
                )
            })?,
        };
        if let Some(out) = processor.output_size()
            && out != model_size
        {
            return Err(CliError::model(
                &dir.dir,
                format!(
                    "{PREPROCESSOR} produces {}x{} images, but {CONFIG} has an image size of \
                     {}x{}; the two files do not belong to the same model",
                    out.0, out.1, model_size.0, model_size.1
                ),
            ));
        }
        Ok(Images {
            processor,
            model_size,
        })
    }

    /// Decodes and pre-processes `paths` into `(B, 3, H, W)` pixels in `dtype`.
    pub fn batch(&self, paths: &[PathBuf], device: &Device, dtype: DType) -> Result<Tensor> {
        let (h, w) = self.model_size;
        let mut data = Vec::with_capacity(paths.len() * 3 * h * w);
        for path in paths {
            let image = load_image(path).map_err(|e| image_error(path, e))?;
            let (values, size) = self
                .processor
                .preprocess_sized(&image)
                .map_err(|e| CliError::input("image", path, plain(&e)))?;
            if size != self.model_size {
                return Err(CliError::input(
                    "image",
                    path,
                    format!(
                        "pre-processing gives {}x{} pixels, but the model takes {h}x{w} (the \
                         model's {PREPROCESSOR} has no center crop or exact size)",
                        size.0, size.1
                    ),
                ));
            }
            data.extend_from_slice(&values);
        }
        Tensor::from_vec(data, [paths.len(), 3, h, w], device)
            .and_then(|t| t.to_dtype(dtype))
            .context(|| "building the pixel tensor".to_string())
    }
}

/// An error of `load_image` as a message about the image.
fn image_error(path: &Path, e: ProcessingError) -> CliError {
    let msg = match &e {
        ProcessingError::Io { source, .. } => io_msg(source),
        ProcessingError::Decode { msg, .. } => format!("corrupt or truncated image: {msg}"),
        ProcessingError::EmptyImage { width, height, .. } => {
            format!("empty image ({width}x{height} pixels)")
        }
        _ => e.to_string(),
    };
    CliError::input("image", path, msg)
}

/// The message of a processing error without the file name it may repeat.
fn plain(e: &ProcessingError) -> String {
    match e {
        ProcessingError::Config { msg, .. } | ProcessingError::Tokenizer { msg, .. } => msg.clone(),
        ProcessingError::Io { source, .. } => io_msg(source),
        other => other.to_string(),
    }
}

/// The tokenizer of a CLIP model directory.
#[derive(Debug)]
pub struct Tokenizer {
    inner: TextTokenizer,
}

impl Tokenizer {
    /// Loads the directory's `tokenizer.json` (with its `tokenizer_config.json`, if any);
    /// sequences are cut at the text tower's `max_position_embeddings` at most. A vocabulary
    /// larger than the text tower's is reported here, naming both files.
    pub fn open(dir: &ModelDir, cfg: &ClipConfig) -> Result<Self> {
        let path = dir
            .tokenizer
            .clone()
            .unwrap_or_else(|| dir.dir.join(TOKENIZER));
        let inner = TextTokenizer::from_file(&path).map_err(|e| {
            let file = match &e {
                ProcessingError::Tokenizer { path, .. } | ProcessingError::Io { path, .. } => {
                    Path::new(path)
                        .file_name()
                        .map_or(TOKENIZER.into(), |f| f.to_string_lossy().into_owned())
                }
                _ => TOKENIZER.into(),
            };
            CliError::model(&dir.dir, format!("cannot load {file}: {}", plain(&e)))
        })?;
        let text = &cfg.text_config;
        if inner.vocab_size() > text.vocab_size {
            return Err(CliError::model(
                &dir.dir,
                format!(
                    "{TOKENIZER} has a vocabulary of {} tokens, but {CONFIG} gives the text \
                     model only {} (text_config.vocab_size); the two files do not belong to \
                     the same model",
                    inner.vocab_size(),
                    text.vocab_size
                ),
            ));
        }
        let max = inner.max_length().min(text.max_position_embeddings);
        Ok(Tokenizer {
            inner: inner.with_max_length(max),
        })
    }

    /// `input_ids` and `attention_mask`, `(B, L)` `U32`, padded on the right to the longest
    /// text of the batch. (The text tower is causal and pools at the end-of-text token, so
    /// padding to the longest text gives the features of padding to 77, in less time.)
    pub fn encode(
        &self,
        texts: &[String],
        device: &Device,
    ) -> glimpse_tensor::Result<(Tensor, Tensor)> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let batch = self.inner.encode_batch(&refs, Padding::Longest)?;
        Ok((
            batch.input_ids_tensor(device)?,
            batch.attention_mask_tensor(device)?,
        ))
    }
}

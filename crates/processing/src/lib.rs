//! glimpse-processing: the pre-processing of vision-language models, giving the same numbers
//! as the Hugging Face processors, so that a checkpoint sees in glimpse the inputs it saw in
//! Python.
//!
//! * [`ImageProcessor`] reads a `preprocessor_config.json` (CLIP, ViT, BLIP, SigLIP processor
//!   types) and does resize, center crop, rescale, normalise, pad, giving `(B, 3, H, W)` `f32`
//!   [`Tensor`]s. It follows the Pillow backend of transformers (`CLIPImageProcessorPil`,
//!   `ViTImageProcessorPil`, ...).
//! * [`resize`] is Pillow's `Image.resize` on 8-bit RGB, byte for byte, for every
//!   [`Filter`].
//! * [`load_image`] is transformers' `load_image` (decode, EXIF orientation,
//!   `convert("RGB")`).
//! * [`TextTokenizer`] runs a `tokenizer.json` through the `tokenizers` crate (pure Rust, no
//!   Oniguruma) and encodes batches truncated and padded as `tokenizer(texts, padding=...,
//!   max_length=..., truncation=True)` does, giving `(B, L)` `U32` ids and attention masks.
//!
//! ```
//! # fn main() -> Result<(), glimpse_processing::ProcessingError> {
//! use glimpse_processing::{ImageProcessor, Padding, TextTokenizer};
//! let device = glimpse_cpu::device();
//!
//! // Images: `load_image(path)?` in real use.
//! let image = image::RgbImage::from_fn(451, 300, |x, y| image::Rgb([x as u8, y as u8, 128]));
//! let processor = ImageProcessor::clip(); // or ImageProcessor::from_file("preprocessor_config.json")?
//! let pixel_values = processor.preprocess_batch(&[image], &device)?;
//! assert_eq!(pixel_values.dims(), &[1, 3, 224, 224]);
//!
//! // Text.
//! let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/processing/tokenizer/tokenizer.json");
//! let tokenizer = TextTokenizer::from_file(path)?; // max_length 77 from tokenizer_config.json
//! let batch = tokenizer.encode_batch(&["a photo of a cat", "a dog"], Padding::MaxLength)?;
//! assert_eq!(&batch.ids(0)[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
//! let input_ids = batch.input_ids_tensor(&device)?; // (2, 77) U32
//! let attention_mask = batch.attention_mask_tensor(&device)?;
//! assert_eq!(input_ids.dims(), attention_mask.dims());
//! # Ok(()) }
//! ```
//!
//! # How close to transformers
//!
//! Measured by the tests of this crate against fixtures written by
//! `tests/fixtures/generate/processing.py` (transformers 5.24.0, Pillow 13.0.0, tokenizers
//! 0.23.3):
//!
//! * [`resize`]: bit-identical to Pillow 13 for the six filters (the 138 fixture cases, and a
//!   random sweep of 3000 cases, sources up to 700 pixels wide, targets of 1 to 120, which
//!   `processing.py --resize-sweep PATH` writes and `GLIMPSE_RESIZE_SWEEP=PATH` checks).
//!   Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
//!   pixels as the width (older Pillow always ran the horizontal pass first, so it can differ
//!   by a level there); this crate does what Pillow 13 does.
//! * [`ImageProcessor`] on decoded pixels (PNG, or Pillow's decoding of a JPEG stored
//!   losslessly): `pixel_values` equal to `CLIPImageProcessorPil` / `ViTImageProcessorPil` /
//!   the other Pillow processors, max abs error 0 (every `f32` identical).
//! * [`load_image`] of PNG (8 and 16 bits, gray, palette, alpha, EXIF orientations 1 to 8),
//!   GIF, WebP (lossless), BMP: the same pixels as Pillow. JPEG is decoded by zune-jpeg, not
//!   libjpeg-turbo: on the 640x427 4:4:4 photograph `rocket.jpg`, 0.7 % of the values differ,
//!   by at most 2 levels; on small 4:2:0 files (chroma upsampling), 15 to 18 % differ, by at most
//!   3 levels. Through [`ImageProcessor::clip`] that is a max abs error of 0.0150 on
//!   `pixel_values` (one level: `1 / 255 / std`), mean abs error 1.3e-4. A JPEG cut before its
//!   end-of-image marker is an error, as in Pillow.
//! * The torchvision backend of transformers (`CLIPImageProcessor` with torchvision 0.29.2,
//!   the default in transformers 5) is itself up to 0.015 away from the Pillow one (a level of
//!   its own resize); this crate follows Pillow.
//! * [`TextTokenizer`]: ids and masks identical to `CLIPTokenizerFast` for every fixture string
//!   (case, punctuation, accents, emoji, CJK, numbers, whitespace runs, the empty string,
//!   contractions, literal special tokens, texts truncated at 77), with `padding="max_length"`
//!   and `padding=True`.

#![warn(missing_docs)]

mod config;
mod error;
mod image_processor;
mod load;
mod resize;
mod tokenizer;

pub use config::{
    IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, ImageProcessorConfig, OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD, PerChannel, ResizeTarget, ResolvedConfig, SizeDict, SizeSpec,
};
pub use error::{ProcessingError, Result};
pub use image_processor::ImageProcessor;
pub use load::{decode_image, load_image};
pub use resize::{Filter, resize};
pub use tokenizer::{DEFAULT_MAX_LENGTH, Padding, TextTokenizer, TokenizedBatch};

pub use glimpse_tensor::{Device, Tensor};
/// The `image` crate, re-exported for [`image::RgbImage`] and friends.
pub use image;

//! Datasets and batching for training.
//!
//! * [`fashion_mnist`]: Fashion-MNIST read from its IDX files, with a deterministic shift and
//!   flip augmentation ([`augment`]), for training a small ViT classifier.
//! * [`shapes`]: a synthetic set of captioned coloured shapes with held-out colour-shape pairs,
//!   for training a small CLIP and testing zero-shot composition; [`vocab`] is its word-level
//!   tokenizer, written as a Hugging Face `tokenizer.json`.
//! * [`loader`]: batches built on a background thread, in an order that resumes bit for bit
//!   from an `(epoch, batch)` position.
//! * [`rng`]: the seeded generator all of them draw from, one derived stream per purpose.
//!
//! Every random choice is keyed by `(seed, epoch, sample index)` rather than drawn from a
//! shared generator, which is what makes resumed runs identical to uninterrupted ones.

pub mod augment;
pub mod fashion_mnist;
pub mod loader;
pub mod rng;
pub mod shapes;
pub mod vocab;

pub use augment::{Augment, AugmentParams};
pub use fashion_mnist::{CLASS_NAMES, FashionMnist, ImageBatch, NUM_CLASSES, Split};
pub use loader::{Batch, Loader, LoaderConfig, LoaderPosition};
pub use rng::Rng;
pub use shapes::{
    CLIP_MEAN, CLIP_STD, CaptionBatch, Colour, HELD_OUT, NUM_COMBINATIONS, Position, ShapeKind,
    ShapeSample, ShapesConfig, ShapesDataset, ShapesSplit, Size, all_combinations, caption,
    combination_index, combination_label, is_held_out,
};
pub use vocab::{
    BOS_ID, EOS_ID, MAX_CAPTION_TOKENS, PAD_ID, UNK_ID, VOCAB_SIZE, tokenizer_json,
    write_tokenizer_files,
};

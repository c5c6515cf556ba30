//! The command line, as clap derive types.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Vision-language models on the command line: CLIP zero-shot classification, \
ViT image classification and CLIP embeddings, from Hugging Face checkpoint directories";

const AFTER_HELP: &str = "\
A model directory is a Hugging Face checkpoint as published: config.json, model.safetensors (or a
sharded model.safetensors.index.json with its shards), and for CLIP tokenizer.json. A
preprocessor_config.json is used when present.

Examples:
  glimpse zero-shot --model clip-vit-base-patch32 cat.jpg dog.jpg --labels cat dog bird
  glimpse classify --model vit-base-patch16-224 photos/*.jpg --top-k 3
  glimpse embed --model clip-vit-base-patch32 --image a.jpg b.jpg --text \"a cat\" --out emb.safetensors

Exit status: 0 on success, 1 when a file or a model cannot be used, 2 for usage errors.";

/// The `glimpse` program.
#[derive(Debug, Parser)]
#[command(name = "glimpse", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Zero-shot image classification with CLIP: rank free-form labels for each image.
    #[command(after_help = ZERO_SHOT_HELP)]
    ZeroShot(ZeroShotArgs),
    /// Image classification with a ViTForImageClassification checkpoint (its id2label classes).
    #[command(after_help = CLASSIFY_HELP)]
    Classify(ClassifyArgs),
    /// CLIP image and/or text embeddings, written to a safetensors file.
    #[command(after_help = EMBED_HELP)]
    Embed(EmbedArgs),
}

const ZERO_SHOT_HELP: &str = "\
Each label is put into each prompt template ({} marks where), the text embeddings of one label
are averaged into a class embedding, and every image gets the softmax of its scaled cosine
similarities with the classes.

--labels takes every following word up to the next option, so give the images first, or end
the labels with --.

Examples:
  glimpse zero-shot --model clip-vit-base-patch32 cat.jpg --labels cat dog \"a red car\"
  glimpse zero-shot --model clip-dir --labels-file imagenet.txt --ensemble --top-k 3 *.jpg
  glimpse zero-shot --model clip-dir --template \"a photo of a {}.\" --template \"a sketch of a {}.\" \\
      --labels cat dog -- img1.png img2.png
  glimpse zero-shot --model clip-dir --labels cat dog --json -- cat.jpg | jq '.results[0]'";

const CLASSIFY_HELP: &str = "\
The model directory holds a ViTForImageClassification checkpoint whose config.json names its
classes (id2label). Images are pre-processed by its preprocessor_config.json, or with the ViT
defaults (resize to the config's image size, mean and std 0.5) when there is none.

Examples:
  glimpse classify --model vit-base-patch16-224 cat.jpg
  glimpse classify --model vit-dir --top-k 1 --batch-size 32 --json photos/*.jpg";

const EMBED_HELP: &str = "\
Writes the projected CLIP features (float32) under the keys image_embeds (images, P) and
text_embeds (texts, P), in the order given, to a safetensors file (written atomically). The
file's metadata lists the inputs (keys image_paths and texts, as JSON arrays). A summary goes
to stdout (JSON with --json).

Examples:
  glimpse embed --model clip-vit-base-patch32 --image a.jpg b.jpg --out images.safetensors
  glimpse embed --model clip-dir --text \"a cat\" \"a dog\" --normalize --out texts.safetensors
  glimpse embed --model clip-dir --image a.jpg --text \"a cat\" --out both.safetensors --json";

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The CPU backend (always built in).
    Cpu,
    /// The first NVIDIA GPU (with the cargo feature `cuda`).
    Cuda,
    /// GPUs through wgpu (not built into this binary yet).
    Wgpu,
}

/// The dtype the weights are loaded in and the model computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl DTypeArg {
    /// The tensor dtype.
    pub fn dtype(self) -> glimpse_tensor::DType {
        match self {
            DTypeArg::F32 => glimpse_tensor::DType::F32,
            DTypeArg::F16 => glimpse_tensor::DType::F16,
            DTypeArg::Bf16 => glimpse_tensor::DType::BF16,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DTypeArg::F32 => "f32",
            DTypeArg::F16 => "f16",
            DTypeArg::Bf16 => "bf16",
        }
    }
}

impl DeviceArg {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DeviceArg::Cpu => "cpu",
            DeviceArg::Cuda => "cuda",
            DeviceArg::Wgpu => "wgpu",
        }
    }
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
#[command(next_help_heading = "Common options")]
pub struct CommonArgs {
    /// Where the model runs (only cpu is built into this binary).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu, value_name = "DEVICE")]
    pub device: DeviceArg,

    /// The dtype the weights are loaded in and the model computes in.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32, value_name = "DTYPE")]
    pub dtype: DTypeArg,

    /// How many images (or texts) go through the model at once.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,

    /// Print one JSON document with the per-input results on stdout instead of text (no
    /// progress bar).
    #[arg(long)]
    pub json: bool,
}

/// `glimpse zero-shot`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("label_source").required(true).multiple(true)
    .args(["labels", "labels_file"])))]
pub struct ZeroShotArgs {
    /// The CLIP model directory: config.json, model.safetensors (or a sharded index) and
    /// tokenizer.json; preprocessor_config.json if present.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// The images to classify (any format the image decoder reads: PNG, JPEG, ...).
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<PathBuf>,

    /// The candidate labels (every word up to the next option).
    #[arg(long, value_name = "LABEL", num_args = 1..)]
    pub labels: Vec<String>,

    /// A file with one label per line (blank lines are skipped); combines with --labels.
    #[arg(long, value_name = "FILE")]
    pub labels_file: Option<PathBuf>,

    /// A prompt template with `{}` where the label goes; repeat it for an ensemble of your
    /// own. The default is "a photo of a {}.".
    #[arg(
        long = "template",
        value_name = "TEMPLATE",
        conflicts_with = "ensemble"
    )]
    pub templates: Vec<String>,

    /// Average over CLIP's built-in ensemble of prompt templates instead of one template.
    #[arg(long)]
    pub ensemble: bool,

    /// How many labels to print per image [default: 5, or the number of labels if fewer].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: Option<u32>,

    /// The options every subcommand takes.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `glimpse classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// The ViTForImageClassification directory: config.json (with id2label) and
    /// model.safetensors (or a sharded index); preprocessor_config.json if present.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// The images to classify.
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<PathBuf>,

    /// How many classes to print per image (at most the number of classes).
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,

    /// The options every subcommand takes.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `glimpse embed`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("inputs").required(true).multiple(true).args(["images", "texts"])))]
pub struct EmbedArgs {
    /// The CLIP model directory: config.json, model.safetensors (or a sharded index), and
    /// tokenizer.json for --text; preprocessor_config.json if present.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Images to embed (repeat the option or give several paths after it).
    #[arg(long = "image", value_name = "PATH", num_args = 1..)]
    pub images: Vec<PathBuf>,

    /// Texts to embed (repeat the option or give several texts after it).
    #[arg(long = "text", value_name = "TEXT", num_args = 1..)]
    pub texts: Vec<String>,

    /// The safetensors file to write (replaced atomically if it exists).
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,

    /// Scale every embedding to unit length (as CLIP compares them).
    #[arg(long)]
    pub normalize: bool,

    /// The options every subcommand takes.
    #[command(flatten)]
    pub common: CommonArgs,
}

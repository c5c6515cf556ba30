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
    /// Train a model from scratch: a ViT on Fashion-MNIST or a CLIP on captioned shapes.
    #[command(subcommand)]
    Train(Box<TrainCommand>),
}

/// `glimpse train` subcommands.
#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// A ViT image classifier on Fashion-MNIST.
    #[command(after_help = TRAIN_VIT_HELP)]
    Vit(TrainVitArgs),
    /// A tiny CLIP on synthetic captioned shapes, evaluated zero-shot on held-out
    /// colour-shape combinations.
    #[command(after_help = TRAIN_CLIP_HELP)]
    Clip(TrainClipArgs),
}

macro_rules! train_help_common {
    () => {
        "\
Settings come from the built-in recipe, then the --config file (JSON: {\"options\": {...},
\"settings\": {...}}, any subset of the fields below), then the flags given. The run directory
gets metrics.jsonl (one JSON line per logged step and per evaluation), loss.png and eval.png,
checkpoint.safetensors (every --checkpoint-every steps, at each epoch end and when stopped;
written atomically) and, at the end, model/ in the published layout. --resume continues from
the checkpoint exactly as if the run had never stopped. Ctrl-C saves a checkpoint and exits
(status 130); a second Ctrl-C exits at once."
    };
}

const TRAIN_VIT_HELP: &str = concat!(
    train_help_common!(),
    "\n\n\
Fashion-MNIST is read from Debian's dataset-fashion-mnist package
(/usr/share/datasets/fashion-mnist) or --data-dir (the four IDX files, gzipped or not).

Examples:
  glimpse train vit --dataset fashion-mnist --out runs/vit
  glimpse train vit --dataset fashion-mnist --out runs/vit --resume
  glimpse train vit --dataset fashion-mnist --out runs/quick --epochs 1 --train-limit 5000"
);

const TRAIN_CLIP_HELP: &str = concat!(
    train_help_common!(),
    "\n\n\
Examples:
  glimpse train clip --dataset shapes --out runs/clip
  glimpse zero-shot --model runs/clip/model --labels \"a red square\" \"a blue circle\" -- image.png"
);

/// Datasets a ViT trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VitDataset {
    /// Zalando's Fashion-MNIST (60 000 training and 10 000 test images, 10 classes).
    FashionMnist,
}

/// Datasets a CLIP trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClipDataset {
    /// Generated images of coloured shapes with captions ("a small red circle on the left").
    Shapes,
}

/// Options of every training run.
#[derive(Debug, Args)]
#[command(next_help_heading = "Training options")]
pub struct TrainArgs {
    /// The run directory (checkpoint, metrics, curves, final model).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// A JSON file with options and settings (see below).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the model trains.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu, value_name = "DEVICE")]
    pub device: DeviceArg,
    /// Forward and backward dtype (master weights stay f32).
    #[arg(long, value_enum, value_name = "DTYPE")]
    pub dtype: Option<DTypeArg>,
    /// Passes over the training set.
    #[arg(long, value_name = "N")]
    pub epochs: Option<u64>,
    /// Samples per micro-batch.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Peak learning rate (AdamW).
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// Final learning rate of the cosine decay.
    #[arg(long, value_name = "LR")]
    pub min_lr: Option<f64>,
    /// Steps of linear learning-rate warm-up.
    #[arg(long, value_name = "N")]
    pub warmup_steps: Option<u64>,
    /// AdamW's decoupled weight decay (not on norms, biases, embeddings).
    #[arg(long, value_name = "W")]
    pub weight_decay: Option<f64>,
    /// Clip gradients to this global norm (0: no clipping).
    #[arg(long, value_name = "NORM")]
    pub grad_clip: Option<f64>,
    /// Micro-batches per optimizer step.
    #[arg(long, value_name = "N")]
    pub grad_accum: Option<usize>,
    /// Seed of the initial weights, shuffling and augmentation.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Save a checkpoint every N steps (0: only at epoch ends and when stopped).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<u64>,
    /// Log averaged training metrics every N steps.
    #[arg(long, value_name = "N")]
    pub log_every: Option<u64>,
    /// Stop with a checkpoint after N steps in total (the schedule stays that of the full run).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,
    /// Print the metrics as JSON lines on stdout (no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// `glimpse train vit`.
#[derive(Debug, Args)]
pub struct TrainVitArgs {
    /// The dataset.
    #[arg(long, value_enum)]
    pub dataset: VitDataset,
    /// The folder holding the IDX files.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Patch side in pixels.
    #[arg(long, value_name = "P")]
    pub patch_size: Option<usize>,
    /// Transformer width.
    #[arg(long, value_name = "D")]
    pub hidden: Option<usize>,
    /// Transformer layers.
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    /// Attention heads.
    #[arg(long, value_name = "N")]
    pub heads: Option<usize>,
    /// MLP width.
    #[arg(long, value_name = "D")]
    pub mlp: Option<usize>,
    /// Cross-entropy label smoothing.
    #[arg(long, value_name = "EPS")]
    pub label_smoothing: Option<f64>,
    /// No random shifts and flips.
    #[arg(long)]
    pub no_augment: bool,
    /// The largest random shift in pixels (0: flips only).
    #[arg(long, value_name = "PX")]
    pub max_shift: Option<usize>,
    /// Train on the first N images only.
    #[arg(long, value_name = "N")]
    pub train_limit: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long, value_name = "N")]
    pub test_limit: Option<usize>,
    /// Options of every training run.
    #[command(flatten)]
    pub train: TrainArgs,
}

/// `glimpse train clip`.
#[derive(Debug, Args)]
pub struct TrainClipArgs {
    /// The dataset.
    #[arg(long, value_enum)]
    pub dataset: ClipDataset,
    /// Image side in pixels.
    #[arg(long, value_name = "PX")]
    pub image_size: Option<usize>,
    /// Patch side in pixels.
    #[arg(long, value_name = "P")]
    pub patch_size: Option<usize>,
    /// Vision transformer width.
    #[arg(long, value_name = "D")]
    pub vision_hidden: Option<usize>,
    /// Vision transformer layers.
    #[arg(long, value_name = "N")]
    pub vision_layers: Option<usize>,
    /// Text transformer width.
    #[arg(long, value_name = "D")]
    pub text_hidden: Option<usize>,
    /// Text transformer layers.
    #[arg(long, value_name = "N")]
    pub text_layers: Option<usize>,
    /// Attention heads.
    #[arg(long, value_name = "N")]
    pub heads: Option<usize>,
    /// Width of the joint embedding space.
    #[arg(long, value_name = "D")]
    pub projection_dim: Option<usize>,
    /// Training samples per epoch.
    #[arg(long, value_name = "N")]
    pub train_samples: Option<usize>,
    /// Samples per evaluation split.
    #[arg(long, value_name = "N")]
    pub eval_samples: Option<usize>,
    /// The fraction (0 to 1; the recipe's is 0.4, 0 turns it off) of training samples in a
    /// random colour far from every named one, with a caption naming no colour ("a small
    /// square"): teaches shapes apart from colours.
    #[arg(long, value_name = "F")]
    pub unnamed_colour_fraction: Option<f64>,
    /// Options of every training run.
    #[command(flatten)]
    pub train: TrainArgs,
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
    /// The first wgpu adapter: Vulkan, Metal or DX12 (the cargo feature `wgpu`, on by default).
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
    /// Where the model runs (cpu; wgpu and cuda when built in).
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
    /// tokenizer.json; preprocessor_config.json if present. Without it, the built-in tiny
    /// CLIP trained on captioned shapes (colours, shapes, sizes, positions) with template {}.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,

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
    /// tokenizer.json for --text; preprocessor_config.json if present. Without it, the
    /// built-in tiny CLIP trained on captioned shapes.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,

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

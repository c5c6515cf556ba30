//! A tiny CLIP trained on the synthetic captioned shapes, evaluated zero-shot on colour-shape
//! combinations it never saw in training.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use glimpse_clip::{ClipConfig, ClipModel, ClipTextConfig, ClipVisionConfig, l2_normalize};
use glimpse_nn::init::WeightSpec;
use glimpse_processing::{Padding, TextTokenizer, TokenizedBatch};
use glimpse_tensor::{DType, Device, Error, Result, Tensor, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::autodiff;
use crate::data::{
    CaptionBatch, ShapesConfig, ShapesDataset, ShapesSplit, all_combinations, combination_label,
    shapes, vocab,
};
use crate::losses::clip_loss;
use crate::optim::Param;
use crate::trainer::{BatchFn, BatchStats, Task};

/// The task's settings besides the loop's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClipShapesSettings {
    pub image_size: usize,
    pub patch_size: usize,
    pub vision_hidden: usize,
    pub vision_layers: usize,
    pub text_hidden: usize,
    pub text_layers: usize,
    pub heads: usize,
    pub projection_dim: usize,
    /// Training samples per epoch (the generator can draw any number).
    pub train_len: usize,
    /// Samples of each evaluation split.
    pub eval_len: usize,
    /// The fraction of training samples in a random unnamed colour with a caption naming no
    /// colour ([`ShapesConfig::unnamed_colour_fraction`]); the evaluation splits have none.
    /// Left out of the saved settings when 0, so that runs from before the option resume.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unnamed_colour_fraction: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for ClipShapesSettings {
    fn default() -> Self {
        ClipShapesSettings {
            image_size: 32,
            patch_size: 4,
            vision_hidden: 64,
            vision_layers: 3,
            text_hidden: 64,
            // One layer: a shallower text tower composes words more additively (held-out
            // pairs 74.5 % against 69.2 % with two layers, at 15 epochs without unnamed
            // colours).
            text_layers: 1,
            heads: 4,
            projection_dim: 64,
            train_len: 20_000,
            eval_len: 600,
            // Shapes in colours without a name teach shapes apart from colours: held-out
            // pairs 99.2 % instead of 80.5 % (docs/PERFORMANCE.md).
            unnamed_colour_fraction: 0.4,
        }
    }
}

impl ClipShapesSettings {
    /// The CLIP configuration these settings describe (a word-level vocabulary of the
    /// captions, first-eos pooling).
    pub fn clip_config(&self) -> ClipConfig {
        ClipConfig {
            text_config: ClipTextConfig {
                vocab_size: vocab::VOCAB_SIZE,
                hidden_size: self.text_hidden,
                intermediate_size: 4 * self.text_hidden,
                num_hidden_layers: self.text_layers,
                num_attention_heads: self.heads,
                max_position_embeddings: vocab::MAX_CAPTION_TOKENS,
                hidden_act: "quick_gelu".into(),
                layer_norm_eps: 1e-5,
                pad_token_id: Some(vocab::PAD_ID),
                bos_token_id: Some(vocab::BOS_ID),
                eos_token_id: Some(vocab::EOS_ID),
            },
            vision_config: ClipVisionConfig {
                hidden_size: self.vision_hidden,
                intermediate_size: 4 * self.vision_hidden,
                num_hidden_layers: self.vision_layers,
                num_attention_heads: self.heads,
                num_channels: 3,
                image_size: self.image_size,
                patch_size: self.patch_size,
                hidden_act: "quick_gelu".into(),
                layer_norm_eps: 1e-5,
            },
            projection_dim: self.projection_dim,
            logit_scale_init_value: 2.6592,
        }
    }
}

/// A batch: images with their captions, tokenized on the loader thread.
#[derive(Debug)]
pub struct ShapesBatch {
    pub images: CaptionBatch,
    pub tokens: TokenizedBatch,
}

/// CLIP on the captioned shapes.
#[derive(Debug)]
pub struct ClipShapes {
    pub settings: ClipShapesSettings,
    pub config: ClipConfig,
    tokenizer: Arc<TextTokenizer>,
    tokenizer_dir: PathBuf,
    train: Arc<ShapesDataset>,
    held_out: ShapesDataset,
    test: ShapesDataset,
}

impl ClipShapes {
    /// The task; the tokenizer files are written to `work_dir/tokenizer`.
    pub fn new(settings: ClipShapesSettings, work_dir: &Path, seed: u64) -> Result<Self> {
        let config = settings.clip_config();
        config.validate("the CLIP shapes settings")?;
        let tokenizer_dir = work_dir.join("tokenizer");
        std::fs::create_dir_all(&tokenizer_dir).map_err(|e| Error::io(&tokenizer_dir, e))?;
        let path = vocab::write_tokenizer_files(&tokenizer_dir)?;
        let tokenizer = TextTokenizer::from_file(&path)
            .map_err(|e| Error::config(path.display().to_string(), e.to_string()))?;
        let dataset = |split, len, seed| {
            let unnamed_colour_fraction = if split == ShapesSplit::Train {
                settings.unnamed_colour_fraction
            } else {
                0.0
            };
            ShapesDataset::new(
                ShapesConfig {
                    image_size: settings.image_size,
                    seed,
                    len,
                    unnamed_colour_fraction,
                },
                split,
            )
        };
        Ok(ClipShapes {
            train: Arc::new(dataset(ShapesSplit::Train, settings.train_len, seed)?),
            // Evaluation sets from other seeds: images the model never trained on.
            held_out: dataset(ShapesSplit::HeldOut, settings.eval_len, seed ^ 0xe7a1)?,
            test: dataset(ShapesSplit::Test, settings.eval_len, seed ^ 0x7e57)?,
            settings,
            config,
            tokenizer: Arc::new(tokenizer),
            tokenizer_dir,
        })
    }

    /// Unit-length text embeddings `(labels, P)` of `labels` with the model `model`.
    fn text_embeds(&self, model: &ClipModel, labels: &[&str], device: &Device) -> Result<Tensor> {
        let tokens = tokenize(&self.tokenizer, labels)?;
        let feats = model.get_text_features(
            &tokens.input_ids_tensor(device)?,
            Some(&tokens.attention_mask_tensor(device)?),
        )?;
        l2_normalize(&feats.to_dtype(DType::F32)?)
    }

    /// Zero-shot accuracy on `dataset` choosing among `choices` (indices into the 24
    /// combinations).
    fn zero_shot(
        &self,
        model: &ClipModel,
        dataset: &ShapesDataset,
        class_embeds: &Tensor,
        choices: &[usize],
        device: &Device,
    ) -> Result<f64> {
        let ids: Vec<u32> = choices.iter().map(|&c| c as u32).collect();
        let ids = Tensor::from_vec(ids, [choices.len()], device)?;
        let classes = class_embeds.index_select(&ids, 0)?;
        let indices: Vec<usize> = (0..dataset.len()).collect();
        let mut correct = 0;
        for chunk in indices.chunks(200) {
            let batch = dataset.batch(chunk);
            let pixels = batch.pixels_tensor(device)?;
            let img = l2_normalize(&model.get_image_features(&pixels)?.to_dtype(DType::F32)?)?;
            let pred = img.matmul(&classes.t()?)?.argmax(1)?.to_vec::<u32>()?;
            correct += pred
                .iter()
                .zip(&batch.combinations)
                .filter(|(p, truth)| choices[**p as usize] as u32 == **truth)
                .count();
        }
        Ok(correct as f64 / dataset.len().max(1) as f64)
    }
}

impl ClipShapes {
    /// One PNG per held-out colour-shape pair (`a-red-square.png`), drawn from the held-out
    /// split: images to try the model on.
    fn write_examples(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut written = std::collections::HashSet::new();
        for i in 0..self.held_out.len() {
            let sample = self.held_out.sample(i);
            let label = combination_label(sample.colour, sample.shape);
            if !written.insert(label.clone()) {
                continue;
            }
            let s = self.settings.image_size as u32;
            let img = image::RgbImage::from_raw(s, s, sample.image)
                .ok_or_else(|| Error::invalid("examples", "image size mismatch"))?;
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|e| Error::invalid("examples", e.to_string()))?;
            super::write_atomic(&dir.join(format!("{}.png", label.replace(' ', "-"))), &png)?;
            if written.len() == shapes::HELD_OUT.len() {
                break;
            }
        }
        Ok(())
    }
}

fn tokenize(tokenizer: &TextTokenizer, texts: &[&str]) -> Result<TokenizedBatch> {
    tokenizer
        .encode_batch(texts, Padding::Longest)
        .map_err(|e| Error::invalid("tokenize", e.to_string()))
}

impl Task for ClipShapes {
    type Batch = ShapesBatch;

    fn name(&self) -> &str {
        "clip-shapes"
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "settings": self.settings })
    }

    fn weight_specs(&self) -> Result<Vec<WeightSpec>> {
        glimpse_clip::weight_specs(&self.config)
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn batch_fn(&self) -> BatchFn<ShapesBatch> {
        let train = self.train.clone();
        let tokenizer = self.tokenizer.clone();
        Arc::new(move |_epoch, indices| {
            let images = train.batch(indices);
            let tokens = tokenize(&tokenizer, &images.caption_refs())?;
            Ok(ShapesBatch { images, tokens })
        })
    }

    fn loss(&self, weights: VarBuilder, batch: &ShapesBatch) -> Result<(Tensor, BatchStats)> {
        let device = weights.device().clone();
        let dtype = weights.dtype();
        let logit_scale = weights.get(Vec::<usize>::new(), "logit_scale")?;
        let model = ClipModel::new(&self.config, weights)?;
        let pixels = batch.images.pixels_tensor(&device)?.to_dtype(dtype)?;
        let image = model.get_image_features(&pixels)?.to_dtype(DType::F32)?;
        let text = model
            .get_text_features(
                &batch.tokens.input_ids_tensor(&device)?,
                Some(&batch.tokens.attention_mask_tensor(&device)?),
            )?
            .to_dtype(DType::F32)?;
        let loss = clip_loss(&image, &text, &logit_scale.to_dtype(DType::F32)?)?;
        // In-batch image-to-caption retrieval accuracy (a caption repeated in the batch
        // counts as right), from the values without the graph.
        let (img, txt) = (
            l2_normalize(&autodiff::unwrap(&image)?)?,
            l2_normalize(&autodiff::unwrap(&text)?)?,
        );
        let pred = img.matmul(&txt.t()?)?.argmax(1)?.to_vec::<u32>()?;
        let captions = &batch.images.captions;
        let correct = pred
            .iter()
            .enumerate()
            .filter(|(i, p)| captions[**p as usize] == captions[*i])
            .count();
        Ok((
            loss,
            BatchStats {
                samples: batch.images.len(),
                correct: Some(correct),
            },
        ))
    }

    fn evaluate(&self, weights: VarBuilder) -> Result<Vec<(String, f64)>> {
        let device = weights.device().clone();
        let model = ClipModel::new(&self.config, weights)?;
        let combos = all_combinations();
        let labels: Vec<String> = combos
            .iter()
            .map(|&(c, s)| combination_label(c, s))
            .collect();
        let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        let class_embeds = self.text_embeds(&model, &label_refs, &device)?;
        let all: Vec<usize> = (0..combos.len()).collect();
        let held: Vec<usize> = (0..combos.len())
            .filter(|&i| shapes::is_held_out(combos[i].0, combos[i].1))
            .collect();
        Ok(vec![
            (
                "held_out_accuracy".into(),
                self.zero_shot(&model, &self.held_out, &class_embeds, &all, &device)?,
            ),
            (
                "held_out_accuracy_among_held_out".into(),
                self.zero_shot(&model, &self.held_out, &class_embeds, &held, &device)?,
            ),
            (
                "test_accuracy".into(),
                self.zero_shot(&model, &self.test, &class_embeds, &all, &device)?,
            ),
        ])
    }

    fn export(&self, weights: &[Param], dir: &Path) -> Result<()> {
        let mut config = serde_json::to_value(&self.config)
            .map_err(|e| Error::invalid("export", e.to_string()))?;
        if let Some(o) = config.as_object_mut() {
            o.insert("model_type".into(), "clip".into());
            o.insert("architectures".into(), serde_json::json!(["CLIPModel"]));
        }
        super::export_model(dir, &config, weights)?;
        for name in ["tokenizer.json", "tokenizer_config.json"] {
            let from = self.tokenizer_dir.join(name);
            let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
            super::write_atomic(&dir.join(name), &bytes)?;
        }
        let s = self.settings.image_size;
        let preprocessor = serde_json::json!({
            "image_processor_type": "CLIPImageProcessor",
            "do_convert_rgb": true,
            "do_resize": true,
            "size": { "shortest_edge": s },
            "resample": 3,
            "do_center_crop": true,
            "crop_size": { "height": s, "width": s },
            "do_rescale": true,
            "rescale_factor": 1.0 / 255.0,
            "do_normalize": true,
            "image_mean": shapes::CLIP_MEAN,
            "image_std": shapes::CLIP_STD,
        });
        let text = serde_json::to_string_pretty(&preprocessor)
            .map_err(|e| Error::invalid("export", e.to_string()))?;
        super::write_atomic(&dir.join("preprocessor_config.json"), text.as_bytes())?;
        self.write_examples(&dir.join("examples"))
    }
}

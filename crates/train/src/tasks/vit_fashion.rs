//! A ViT image classifier trained on Fashion-MNIST.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use glimpse_nn::init::WeightSpec;
use glimpse_tensor::{DType, Result, Tensor, VarBuilder};
use glimpse_vit::{ImageSize, ViTConfig, ViTForImageClassification};
use serde::{Deserialize, Serialize};

use crate::data::{Augment, FashionMnist, ImageBatch, Split, fashion_mnist};
use crate::losses::{CrossEntropyOptions, cross_entropy};
use crate::optim::Param;
use crate::trainer::{BatchFn, BatchStats, Task};

/// The task's settings besides the loop's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VitFashionSettings {
    pub patch_size: usize,
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_size: usize,
    pub label_smoothing: f64,
    /// Random shifts (up to `max_shift` pixels) and horizontal flips.
    pub augment: bool,
    /// The largest random shift in pixels (0: flips only).
    pub max_shift: usize,
    /// Use only the first this many training images (0: all).
    pub train_limit: usize,
    /// Use only the first this many test images (0: all).
    pub test_limit: usize,
}

impl Default for VitFashionSettings {
    fn default() -> Self {
        VitFashionSettings {
            patch_size: 4,
            hidden_size: 64,
            layers: 4,
            heads: 4,
            mlp_size: 128,
            label_smoothing: 0.1,
            augment: true,
            max_shift: 2,
            train_limit: 0,
            test_limit: 0,
        }
    }
}

/// ViT on Fashion-MNIST.
#[derive(Debug)]
pub struct VitFashionMnist {
    pub settings: VitFashionSettings,
    pub config: ViTConfig,
    pub data_dir: PathBuf,
    train: Arc<FashionMnist>,
    test: Arc<FashionMnist>,
    seed: u64,
}

impl VitFashionMnist {
    /// Loads both splits from `data_dir` (see [`fashion_mnist::DEFAULT_DIR`]).
    pub fn new(settings: VitFashionSettings, data_dir: &Path, seed: u64) -> Result<Self> {
        let mut train = FashionMnist::load(data_dir, Split::Train)?;
        let mut test = FashionMnist::load(data_dir, Split::Test)?;
        if settings.train_limit > 0 {
            train.truncate(settings.train_limit);
        }
        if settings.test_limit > 0 {
            test.truncate(settings.test_limit);
        }
        let config = ViTConfig {
            hidden_size: settings.hidden_size,
            num_hidden_layers: settings.layers,
            num_attention_heads: settings.heads,
            intermediate_size: settings.mlp_size,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            image_size: ImageSize::Square(train.rows),
            patch_size: settings.patch_size,
            num_channels: 1,
            qkv_bias: true,
            id2label: fashion_mnist::CLASS_NAMES
                .iter()
                .enumerate()
                .map(|(i, n)| (i.to_string(), n.to_string()))
                .collect(),
            ..ViTConfig::default()
        };
        config.validate("the Fashion-MNIST ViT settings")?;
        Ok(VitFashionMnist {
            settings,
            config,
            data_dir: data_dir.to_path_buf(),
            train: Arc::new(train),
            test: Arc::new(test),
            seed,
        })
    }

    fn logits(&self, weights: VarBuilder, batch: &ImageBatch) -> Result<Tensor> {
        let device = weights.device().clone();
        let dtype = weights.dtype();
        let model = ViTForImageClassification::new(&self.config, weights)?;
        let pixels = batch.pixels_tensor(&device)?.to_dtype(dtype)?;
        model.forward(&pixels)?.to_dtype(DType::F32)
    }
}

impl Task for VitFashionMnist {
    type Batch = ImageBatch;

    fn name(&self) -> &str {
        "vit-fashion-mnist"
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "settings": self.settings,
            "train_images": self.train.len(),
        })
    }

    fn weight_specs(&self) -> Result<Vec<WeightSpec>> {
        glimpse_vit::weight_specs(&self.config, true)
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn batch_fn(&self) -> BatchFn<ImageBatch> {
        let train = self.train.clone();
        let augment = self.settings.augment.then(|| Augment {
            pad: self.settings.max_shift,
            ..Augment::new(self.seed)
        });
        Arc::new(move |epoch, indices| train.batch(indices, augment.as_ref(), epoch))
    }

    fn loss(&self, weights: VarBuilder, batch: &ImageBatch) -> Result<(Tensor, BatchStats)> {
        let device = weights.device().clone();
        let logits = self.logits(weights, batch)?;
        let labels = batch.labels_tensor(&device)?;
        let loss = cross_entropy(
            &logits,
            &labels,
            &CrossEntropyOptions {
                label_smoothing: self.settings.label_smoothing,
                ignore_index: None,
            },
        )?;
        let correct = super::count_correct(&logits, &batch.labels)?;
        Ok((
            loss,
            BatchStats {
                samples: batch.len(),
                correct: Some(correct),
            },
        ))
    }

    fn evaluate(&self, weights: VarBuilder) -> Result<Vec<(String, f64)>> {
        let device = weights.device().clone();
        let n = self.test.len();
        let (mut correct, mut loss_sum) = (0usize, 0f64);
        let indices: Vec<usize> = (0..n).collect();
        for chunk in indices.chunks(500) {
            let batch = self.test.batch(chunk, None, 0)?;
            let logits = self.logits(weights.clone(), &batch)?;
            correct += super::count_correct(&logits, &batch.labels)?;
            let loss = cross_entropy(
                &logits,
                &batch.labels_tensor(&device)?,
                &CrossEntropyOptions::default(),
            )?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * chunk.len() as f64;
        }
        Ok(vec![
            ("test_accuracy".into(), correct as f64 / n.max(1) as f64),
            ("test_loss".into(), loss_sum / n.max(1) as f64),
        ])
    }

    fn export(&self, weights: &[Param], dir: &Path) -> Result<()> {
        let mut config = serde_json::to_value(&self.config)
            .map_err(|e| glimpse_tensor::Error::invalid("export", e.to_string()))?;
        if let Some(o) = config.as_object_mut() {
            o.insert("model_type".into(), "vit".into());
            o.insert(
                "architectures".into(),
                serde_json::json!(["ViTForImageClassification"]),
            );
            o.insert(
                "label2id".into(),
                serde_json::Value::Object(
                    self.config
                        .id2label
                        .iter()
                        .map(|(k, v)| (v.clone(), serde_json::json!(k.parse::<u64>().unwrap_or(0))))
                        .collect(),
                ),
            );
        }
        super::export_model(dir, &config, weights)
    }
}

//! The training loop, shared by every task: data on a background thread, forward and backward
//! on the autodiff device, clipping, the optimizer, metrics as JSON lines, curves, periodic
//! evaluation and atomic checkpoints that resume bit for bit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use glimpse_nn::init::WeightSpec;
use glimpse_tensor::{DType, Device, Error, Result, Tensor, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::autodiff::{self, Autodiff};
use crate::checkpoint::{self, TrainState};
use crate::data::{Loader, LoaderConfig, LoaderPosition};
use crate::optim::{
    AdamW, AdamWConfig, GradAccumulator, LossScaler, Optimizer, Param, compute_copies, grads_to_f32,
};
use crate::plot::{Chart, Series};
use crate::schedule::LrSchedule;

/// Builds one batch from dataset indices on the loader thread.
pub type BatchFn<B> = Arc<dyn Fn(u64, &[usize]) -> Result<B> + Send + Sync>;

/// What a task reports about one training batch besides its loss.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchStats {
    /// Samples in the batch.
    pub samples: usize,
    /// Correct predictions, for tasks with a training accuracy.
    pub correct: Option<usize>,
}

/// One thing to train: a model family on a dataset.
pub trait Task: Send + Sync {
    /// A batch as the loader thread builds it (host data).
    type Batch: Send + 'static;

    /// A short name stored in checkpoints (`"vit-fashion-mnist"`).
    fn name(&self) -> &str;
    /// The model's configuration and the task's settings, stored in checkpoints and compared
    /// on resume.
    fn describe(&self) -> serde_json::Value;
    /// Every weight of the model, with its published name and initialisation.
    fn weight_specs(&self) -> Result<Vec<WeightSpec>>;
    /// The number of training samples.
    fn train_len(&self) -> usize;
    /// The batch builder, called on the loader thread with `(epoch, indices)`.
    fn batch_fn(&self) -> BatchFn<Self::Batch>;
    /// The training loss of `batch` for the model with `weights` (on `device`, the autodiff
    /// device, in the compute dtype).
    fn loss(&self, weights: VarBuilder, batch: &Self::Batch) -> Result<(Tensor, BatchStats)>;
    /// Evaluation metrics (name, value) of the model with `weights` on a plain device.
    fn evaluate(&self, weights: VarBuilder) -> Result<Vec<(String, f64)>>;
    /// Writes the model in the published layout (`config.json`, `model.safetensors`, and
    /// what else the model needs) to `dir`.
    fn export(&self, weights: &[Param], dir: &Path) -> Result<()>;
}

/// The loop's settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainOptions {
    pub epochs: u64,
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    pub min_lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip gradients to this global norm.
    pub grad_clip: Option<f64>,
    /// Micro-batches per optimizer step (each of `batch_size`).
    pub grad_accum: usize,
    /// Forward and backward dtype (`F32`, `BF16`, `F16`); master weights stay f32.
    #[serde(with = "dtype_name")]
    pub compute_dtype: DType,
    pub seed: u64,
    /// Write a checkpoint every this many steps (0: only at epoch ends and when stopped).
    pub checkpoint_every: u64,
    /// Average training metrics over this many steps per logged line.
    pub log_every: u64,
    /// Stop (with a checkpoint) after this many steps in total, without changing the
    /// schedule: for throughput runs and tests.
    pub max_steps: Option<u64>,
    /// Evaluate at the end of every epoch (always at the end of training).
    pub eval_every_epoch: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 10,
            batch_size: 128,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: 200,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            grad_clip: Some(1.0),
            grad_accum: 1,
            compute_dtype: DType::F32,
            seed: 0,
            checkpoint_every: 500,
            log_every: 20,
            max_steps: None,
            eval_every_epoch: true,
        }
    }
}

impl TrainOptions {
    fn validate(&self) -> Result<()> {
        let bad = |msg: &str| Err(Error::invalid("train", msg.to_string()));
        if self.epochs == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return bad("epochs, batch size and gradient accumulation must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) || self.min_lr < 0.0 || self.min_lr > self.lr {
            return bad("the learning rate must be positive and min_lr between 0 and lr");
        }
        if !self.compute_dtype.is_float() || self.compute_dtype == DType::F64 {
            return bad("the compute dtype must be f32, bf16 or f16");
        }
        if self.log_every == 0 {
            return bad("log_every must be at least 1");
        }
        Ok(())
    }

    /// Optimizer steps per epoch for a dataset of `len` samples: whole groups of
    /// `grad_accum` full batches.
    pub fn steps_per_epoch(&self, len: usize) -> u64 {
        ((len / self.batch_size) / self.grad_accum) as u64
    }
}

/// One line of training metrics (averaged over `log_every` steps).
#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    pub kind: &'static str,
    pub step: u64,
    pub epoch: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    pub samples_per_second: f64,
    /// Steps whose gradients were not finite and were skipped (f16 loss scaling).
    pub skipped_steps: u64,
}

/// One line of evaluation metrics.
#[derive(Clone, Debug, Serialize)]
pub struct EvalRecord {
    pub kind: &'static str,
    pub step: u64,
    pub epoch: u64,
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

/// Receives progress (a progress bar, a log).
pub trait Observer {
    fn on_start(&mut self, _start_step: u64, _total_steps: u64) {}
    fn on_step(&mut self, _step: u64, _loss: f64, _samples_per_second: f64) {}
    fn on_log(&mut self, _record: &StepRecord) {}
    fn on_eval(&mut self, _record: &EvalRecord) {}
    fn on_checkpoint(&mut self, _path: &Path) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Silent;
impl Observer for Silent {}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every epoch ran; the final model is in `model_dir`.
    Finished { step: u64, model_dir: PathBuf },
    /// Stopped early (the stop flag or `max_steps`) after saving a checkpoint.
    Stopped { step: u64, checkpoint: PathBuf },
}

/// The files of a run directory.
#[derive(Clone, Debug)]
pub struct RunFiles {
    pub dir: PathBuf,
}

impl RunFiles {
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.safetensors")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    /// The weights the run started from, under their published names.
    pub fn initial_weights(&self) -> PathBuf {
        self.dir.join("init.safetensors")
    }
    pub fn model_dir(&self) -> PathBuf {
        self.dir.join("model")
    }
    pub fn loss_png(&self) -> PathBuf {
        self.dir.join("loss.png")
    }
    pub fn eval_png(&self) -> PathBuf {
        self.dir.join("eval.png")
    }
}

/// A training run of `task` writing into `out_dir`.
pub struct Trainer<'a, T: Task> {
    pub task: &'a T,
    pub options: TrainOptions,
    /// The plain device the model trains on (wrapped by the autodiff device).
    pub device: Device,
    pub files: RunFiles,
    /// Set (for instance by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
}

impl<T: Task> std::fmt::Debug for Trainer<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("task", &self.task.name())
            .field("options", &self.options)
            .field("device", &self.device)
            .field("dir", &self.files.dir)
            .finish()
    }
}

/// The run description stored in checkpoints: task settings and loop options.
fn run_json<T: Task>(task: &T, options: &TrainOptions) -> serde_json::Value {
    let mut opts = serde_json::to_value(options).unwrap_or_default();
    // How far a run goes and how often it saves may change between a stop and a resume.
    if let Some(o) = opts.as_object_mut() {
        for k in [
            "max_steps",
            "checkpoint_every",
            "log_every",
            "eval_every_epoch",
        ] {
            o.remove(k);
        }
    }
    serde_json::json!({ "task": task.describe(), "options": opts })
}

impl<'a, T: Task> Trainer<'a, T> {
    pub fn new(task: &'a T, options: TrainOptions, device: Device, out_dir: &Path) -> Self {
        Trainer {
            task,
            options,
            device,
            files: RunFiles {
                dir: out_dir.to_path_buf(),
            },
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Runs (or, with `resume`, continues from the run directory's checkpoint) to the end or
    /// until stopped.
    pub fn run(&self, resume: bool, observer: &mut dyn Observer) -> Result<Outcome> {
        let o = &self.options;
        o.validate()?;
        std::fs::create_dir_all(&self.files.dir).map_err(|e| Error::io(&self.files.dir, e))?;
        let steps_per_epoch = o.steps_per_epoch(self.task.train_len());
        if steps_per_epoch == 0 {
            return Err(Error::invalid(
                "train",
                format!(
                    "{} training samples make no full step of batch {} x {} micro-batches",
                    self.task.train_len(),
                    o.batch_size,
                    o.grad_accum
                ),
            ));
        }
        let total_steps = steps_per_epoch * o.epochs;
        let schedule = if total_steps > o.warmup_steps + 1 {
            LrSchedule::warmup_cosine(o.lr, o.warmup_steps, total_steps, o.min_lr)?
        } else {
            LrSchedule::Constant { lr: o.lr }
        };

        let mut params =
            crate::init::init_params(&self.task.weight_specs()?, o.seed, &self.device)?;
        let mut optimizer = AdamW::new(AdamWConfig {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
        })?;
        let mut scaler = (o.compute_dtype == DType::F16).then(LossScaler::new);
        let run = run_json(self.task, o);
        let mut step = 0u64;
        if resume {
            let path = self.files.checkpoint();
            let loaded = checkpoint::load(&path, &self.device)?;
            if loaded.state.task != self.task.name() {
                return Err(Error::config(
                    path.display().to_string(),
                    format!(
                        "the checkpoint is for `{}`, not `{}`",
                        loaded.state.task,
                        self.task.name()
                    ),
                ));
            }
            if loaded.state.run != run {
                return Err(Error::config(
                    path.display().to_string(),
                    format!(
                        "the checkpoint was made with other settings; resume with the same \
                         model and options.\n  checkpoint: {}\n  now:        {}",
                        loaded.state.run, run
                    ),
                ));
            }
            checkpoint::restore_params(&mut params, &loaded.params)?;
            optimizer.load_state(&params, &loaded.optimizer_state)?;
            if let (Some(s), Some(saved)) = (scaler.as_mut(), loaded.state.loss_scaler) {
                s.load_state(&saved)?;
            }
            step = loaded.state.step;
            truncate_metrics(&self.files.metrics(), step)?;
        } else {
            // A fresh run starts a fresh metrics file, and records its initial weights (so
            // that another framework can start from the very same ones).
            let _ = std::fs::remove_file(self.files.metrics());
            let initial: Vec<(&str, &Tensor)> =
                params.iter().map(|p| (p.name.as_str(), &p.value)).collect();
            glimpse_tensor::safetensors::save(&initial, self.files.initial_weights(), None)?;
        }
        let mut metrics = MetricsLog::open(&self.files.metrics())?;

        let save_checkpoint = |params: &[Param],
                               optimizer: &AdamW,
                               scaler: &Option<LossScaler>,
                               step: u64|
         -> Result<PathBuf> {
            let state = TrainState {
                task: self.task.name().to_string(),
                step,
                run: run.clone(),
                loss_scaler: scaler.as_ref().map(LossScaler::state),
            };
            let path = self.files.checkpoint();
            checkpoint::save(&path, params, &optimizer.state(params)?, &state)?;
            Ok(path)
        };

        observer.on_start(step, total_steps);
        let ad = Autodiff::wrap(&self.device);
        let batch_fn = self.task.batch_fn();
        let mut window = Window::default();
        let mut skipped_total = 0u64;
        let steps_per_epoch_batches = (steps_per_epoch as usize) * o.grad_accum;
        let loader = Loader::new(
            LoaderConfig {
                len: self.task.train_len(),
                batch_size: o.batch_size,
                drop_last: true,
                shuffle: true,
                seed: o.seed,
                start: LoaderPosition {
                    epoch: step / steps_per_epoch,
                    batch: ((step % steps_per_epoch) as usize) * o.grad_accum,
                },
                end_epoch: o.epochs,
                prefetch: 4,
            },
            move |epoch, indices: &[usize]| batch_fn(epoch, indices),
        )?;
        let mut micro = Vec::with_capacity(o.grad_accum);
        let mut t0 = Instant::now();
        for batch in loader {
            let batch = batch?;
            // Batches past the last whole group of `grad_accum` are left out of the epoch.
            if batch.index >= steps_per_epoch_batches {
                continue;
            }
            let epoch = batch.epoch;
            micro.push(batch.data);
            if micro.len() < o.grad_accum {
                continue;
            }
            let lr = schedule.lr(step);
            let (loss, stats, grad_norm, skipped) = self.train_step(
                &ad,
                &mut params,
                &mut optimizer,
                scaler.as_mut(),
                &micro,
                lr,
            )?;
            micro.clear();
            step += 1;
            skipped_total += u64::from(skipped);
            let elapsed = t0.elapsed().as_secs_f64();
            window.add(loss, grad_norm, stats, elapsed);
            observer.on_step(step, loss, stats.samples as f64 / elapsed.max(1e-9));
            if step.is_multiple_of(o.log_every) || step == total_steps {
                let record = window.record(step, epoch, lr, skipped_total);
                metrics.write(&record)?;
                observer.on_log(&record);
                window = Window::default();
            }
            let epoch_end = step.is_multiple_of(steps_per_epoch);
            let stop_now =
                self.stop.load(Ordering::Relaxed) || o.max_steps.is_some_and(|m| step >= m);
            if (o.checkpoint_every > 0 && step.is_multiple_of(o.checkpoint_every))
                || epoch_end
                || stop_now
            {
                let path = save_checkpoint(&params, &optimizer, &scaler, step)?;
                observer.on_checkpoint(&path);
            }
            if epoch_end && (o.eval_every_epoch || step == total_steps) {
                let record = self.evaluate(&params, step, epoch + 1)?;
                metrics.write(&record)?;
                observer.on_eval(&record);
                self.draw_curves()?;
            }
            if stop_now && step < total_steps {
                self.draw_curves()?;
                return Ok(Outcome::Stopped {
                    step,
                    checkpoint: self.files.checkpoint(),
                });
            }
            if step == total_steps {
                break;
            }
            t0 = Instant::now();
        }
        let model_dir = self.files.model_dir();
        self.task.export(&params, &model_dir)?;
        self.draw_curves()?;
        Ok(Outcome::Finished { step, model_dir })
    }

    /// One optimizer step over `micro` batches; returns the mean loss, the batch statistics,
    /// the gradient norm before clipping and whether the step was skipped (non-finite
    /// gradients under f16 loss scaling).
    fn train_step(
        &self,
        ad: &Device,
        params: &mut [Param],
        optimizer: &mut AdamW,
        scaler: Option<&mut LossScaler>,
        micro: &[T::Batch],
        lr: f64,
    ) -> Result<(f64, BatchStats, f64, bool)> {
        let o = &self.options;
        let mut accumulator = GradAccumulator::new();
        let mut loss_total = 0.0;
        let mut stats = BatchStats::default();
        for batch in micro {
            let vars = compute_copies(params, o.compute_dtype)?
                .iter()
                .map(|v| Autodiff::var(ad, v))
                .collect::<Result<Vec<_>>>()?;
            let named = params
                .iter()
                .map(|p| p.name.clone())
                .zip(vars.iter().cloned());
            let vb = VarBuilder::from_tensors(named.collect(), o.compute_dtype, ad);
            let (loss, s) = self.task.loss(vb, batch)?;
            let loss = loss.to_dtype(DType::F32)?;
            loss_total += f64::from(loss.to_scalar::<f32>()?);
            stats.samples += s.samples;
            if let Some(c) = s.correct {
                *stats.correct.get_or_insert(0) += c;
            }
            let scaled = match scaler.as_deref() {
                Some(sc) => sc.scale_loss(&loss)?,
                None => loss,
            };
            let grads = autodiff::backward(&scaled)?;
            accumulator.add(&grads_to_f32(&grads.get_all(&vars))?)?;
        }
        let n = micro.len() as f64;
        let mut grads = accumulator.take_mean()?;
        let mut finite = true;
        if let Some(sc) = scaler {
            finite = sc.unscale(&mut grads)?;
            sc.update(!finite);
        }
        let grad_norm = match o.grad_clip {
            Some(max) => crate::optim::clip_grad_norm(&mut grads, max)?,
            None => crate::optim::clip_grad_norm(&mut grads, f64::INFINITY)?,
        };
        let skipped = !finite || !grad_norm.is_finite();
        if !skipped {
            optimizer.step(params, &grads, lr)?;
        }
        Ok((loss_total / n, stats, grad_norm, skipped))
    }

    fn evaluate(&self, params: &[Param], step: u64, epoch: u64) -> Result<EvalRecord> {
        let weights = params
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        let vb = VarBuilder::from_tensors(weights, DType::F32, &self.device);
        let mut metrics = serde_json::Map::new();
        for (k, v) in self.task.evaluate(vb)? {
            metrics.insert(k, serde_json::json!(v));
        }
        Ok(EvalRecord {
            kind: "eval",
            step,
            epoch,
            metrics,
        })
    }

    /// Redraws `loss.png` and `eval.png` from the metrics file.
    fn draw_curves(&self) -> Result<()> {
        let text = std::fs::read_to_string(self.files.metrics()).unwrap_or_default();
        let mut loss = Series {
            name: "train loss".into(),
            points: Vec::new(),
        };
        let mut acc = Series {
            name: "train accuracy".into(),
            points: Vec::new(),
        };
        let mut evals: Vec<Series> = Vec::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let step = v["step"].as_f64().unwrap_or(0.0);
            match v["kind"].as_str() {
                Some("train") => {
                    if let Some(l) = v["loss"].as_f64() {
                        loss.points.push((step, l));
                    }
                    if let Some(a) = v["train_accuracy"].as_f64() {
                        acc.points.push((step, a));
                    }
                }
                Some("eval") => {
                    if let Some(m) = v["metrics"].as_object() {
                        for (k, val) in m {
                            let Some(val) = val.as_f64() else { continue };
                            match evals.iter_mut().find(|s| &s.name == k) {
                                Some(s) => s.points.push((step, val)),
                                None => evals.push(Series {
                                    name: k.clone(),
                                    points: vec![(step, val)],
                                }),
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if !loss.points.is_empty() {
            Chart {
                title: format!("{}: training loss", self.task.name()),
                x_label: "step".into(),
                y_label: "loss".into(),
                series: vec![loss],
                ..Chart::default()
            }
            .save_png(self.files.loss_png())?;
        }
        if !acc.points.is_empty() {
            evals.push(acc);
        }
        if !evals.is_empty() {
            Chart {
                title: format!("{}: accuracy", self.task.name()),
                x_label: "step".into(),
                y_label: "accuracy".into(),
                series: evals,
                ..Chart::default()
            }
            .save_png(self.files.eval_png())?;
        }
        Ok(())
    }
}

/// Training metrics accumulated between two logged lines.
#[derive(Default)]
struct Window {
    steps: u64,
    loss: f64,
    grad_norm: f64,
    samples: usize,
    correct: Option<usize>,
    seconds: f64,
}

impl Window {
    fn add(&mut self, loss: f64, grad_norm: f64, stats: BatchStats, seconds: f64) {
        self.steps += 1;
        self.loss += loss;
        self.grad_norm += grad_norm;
        self.samples += stats.samples;
        if let Some(c) = stats.correct {
            *self.correct.get_or_insert(0) += c;
        }
        self.seconds += seconds;
    }

    fn record(&self, step: u64, epoch: u64, lr: f64, skipped_steps: u64) -> StepRecord {
        let n = self.steps.max(1) as f64;
        StepRecord {
            kind: "train",
            step,
            epoch: epoch + 1,
            loss: self.loss / n,
            lr,
            grad_norm: self.grad_norm / n,
            train_accuracy: self.correct.map(|c| c as f64 / self.samples.max(1) as f64),
            samples_per_second: self.samples as f64 / self.seconds.max(1e-9),
            skipped_steps,
        }
    }
}

/// Appends JSON lines to the metrics file, flushing each.
struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog {
            file,
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, record: &impl Serialize) -> Result<()> {
        let line =
            serde_json::to_string(record).map_err(|e| Error::invalid("metrics", e.to_string()))?;
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))
    }
}

/// On resume, drops the metric lines written after the checkpoint's step (they will be
/// written again), rewriting the file atomically.
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    glimpse_tensor::write_atomic(path, |f| f.write_all(kept.as_bytes()))
}

/// `DType` in run files as its name (`"f32"`, `"bf16"`, `"f16"`).
mod dtype_name {
    use glimpse_tensor::DType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DType, D::Error> {
        let name = String::deserialize(d)?;
        super::parse_dtype(&name).map_err(serde::de::Error::custom)
    }
}

/// A float dtype from its name.
pub fn parse_dtype(name: &str) -> std::result::Result<DType, String> {
    match name {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(format!(
            "unknown compute dtype `{other}` (use f32, bf16 or f16)"
        )),
    }
}

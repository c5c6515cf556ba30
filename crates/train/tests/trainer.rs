//! The training loop: a stopped and resumed run ends bit for bit where an uninterrupted one
//! does; the stop flag saves a checkpoint; checkpoints of other settings are refused; the run
//! directory gets its metrics, curves and exported model.

use std::path::Path;
use std::sync::atomic::Ordering;

use glimpse_tensor::safetensors::SafeTensorsFile;
use glimpse_train::data::{FashionMnist, Split};
use glimpse_train::tasks::{VitFashionMnist, VitFashionSettings};
use glimpse_train::trainer::{Observer, Outcome, Silent, TrainOptions, Trainer};

/// A small stand-in for Fashion-MNIST (96 training, 32 test images of 28x28).
fn fake_dataset(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    FashionMnist::synthetic(96, 1)
        .save(dir, Split::Train, true)
        .unwrap();
    FashionMnist::synthetic(32, 2)
        .save(dir, Split::Test, true)
        .unwrap();
}

fn task(data: &Path) -> VitFashionMnist {
    let settings = VitFashionSettings {
        patch_size: 7,
        hidden_size: 16,
        layers: 1,
        heads: 2,
        mlp_size: 32,
        ..VitFashionSettings::default()
    };
    VitFashionMnist::new(settings, data, 3).unwrap()
}

fn options() -> TrainOptions {
    TrainOptions {
        epochs: 2,
        batch_size: 16,
        warmup_steps: 2,
        checkpoint_every: 0,
        log_every: 1,
        ..TrainOptions::default()
    }
}

/// Every tensor of a checkpoint as raw bytes, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let f = SafeTensorsFile::read(path).unwrap();
    let mut names: Vec<&str> = f.names();
    names.sort_unstable();
    names
        .into_iter()
        .map(|n| (n.to_string(), f.raw_bytes(n).unwrap().to_vec()))
        .collect()
}

/// The metric lines without the throughput, which depends on timing.
fn metric_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("samples_per_second");
            v
        })
        .collect()
}

#[test]
fn stopped_and_resumed_run_matches_an_uninterrupted_one_bit_for_bit() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    fake_dataset(&data);
    let task = task(&data);
    let cpu = glimpse_cpu::device();

    let straight = root.path().join("straight");
    let out = Trainer::new(&task, options(), cpu.clone(), &straight)
        .run(false, &mut Silent)
        .unwrap();
    assert!(matches!(out, Outcome::Finished { step: 12, .. }), "{out:?}");

    let resumed = root.path().join("resumed");
    let stopping = TrainOptions {
        max_steps: Some(5),
        ..options()
    };
    let out = Trainer::new(&task, stopping, cpu.clone(), &resumed)
        .run(false, &mut Silent)
        .unwrap();
    assert!(matches!(out, Outcome::Stopped { step: 5, .. }), "{out:?}");
    let out = Trainer::new(&task, options(), cpu, &resumed)
        .run(true, &mut Silent)
        .unwrap();
    assert!(matches!(out, Outcome::Finished { step: 12, .. }), "{out:?}");

    assert_eq!(
        tensors(&straight.join("checkpoint.safetensors")),
        tensors(&resumed.join("checkpoint.safetensors"))
    );
    assert_eq!(
        tensors(&straight.join("model/model.safetensors")),
        tensors(&resumed.join("model/model.safetensors"))
    );
    assert_eq!(metric_lines(&straight), metric_lines(&resumed));

    // The run directory has everything a user looks at.
    for f in ["loss.png", "eval.png", "model/config.json", "metrics.jsonl"] {
        assert!(straight.join(f).exists(), "{f} missing");
    }
    let evals: Vec<serde_json::Value> = metric_lines(&straight)
        .into_iter()
        .filter(|v| v["kind"] == "eval")
        .collect();
    assert_eq!(evals.len(), 2, "one evaluation per epoch");
    // The exported model loads as a published checkpoint.
    let model = glimpse_vit::ViTForImageClassification::from_pretrained(
        straight.join("model"),
        glimpse_tensor::DType::F32,
        &glimpse_cpu::device(),
    )
    .unwrap();
    assert_eq!(model.labels()[0], "T-shirt/top");
}

#[test]
fn the_stop_flag_saves_a_checkpoint_and_resume_refuses_other_settings() {
    struct StopAt(std::sync::Arc<std::sync::atomic::AtomicBool>, u64);
    impl Observer for StopAt {
        fn on_step(&mut self, step: u64, _loss: f64, _sps: f64) {
            if step == self.1 {
                self.0.store(true, Ordering::Relaxed);
            }
        }
    }
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    fake_dataset(&data);
    let task = task(&data);
    let run = root.path().join("run");
    let trainer = Trainer::new(&task, options(), glimpse_cpu::device(), &run);
    let mut observer = StopAt(trainer.stop.clone(), 3);
    let out = trainer.run(false, &mut observer).unwrap();
    assert!(matches!(out, Outcome::Stopped { step: 3, .. }), "{out:?}");
    assert!(run.join("checkpoint.safetensors").exists());

    let other = TrainOptions {
        lr: 5e-4,
        ..options()
    };
    let err = Trainer::new(&task, other, glimpse_cpu::device(), &run)
        .run(true, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("other settings"), "{err}");
    // A missing checkpoint is an error naming the file.
    let err = Trainer::new(
        &task,
        options(),
        glimpse_cpu::device(),
        &root.path().join("none"),
    )
    .run(true, &mut Silent)
    .unwrap_err()
    .to_string();
    assert!(err.contains("checkpoint.safetensors"), "{err}");
}

#[test]
fn mixed_precision_runs_keep_f32_masters() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    fake_dataset(&data);
    let task = task(&data);
    for dtype in [glimpse_tensor::DType::BF16, glimpse_tensor::DType::F16] {
        let dir = root.path().join(dtype.to_string());
        let opts = TrainOptions {
            compute_dtype: dtype,
            epochs: 3,
            ..options()
        };
        let out = Trainer::new(&task, opts, glimpse_cpu::device(), &dir)
            .run(false, &mut Silent)
            .unwrap();
        assert!(matches!(out, Outcome::Finished { step: 18, .. }), "{out:?}");
        let lines = metric_lines(&dir);
        let losses: Vec<f64> = lines
            .iter()
            .filter(|v| v["kind"] == "train")
            .map(|v| v["loss"].as_f64().unwrap())
            .collect();
        assert!(losses.iter().all(|l| l.is_finite()), "{dtype}: {losses:?}");
        // Learning happens in half precision too.
        assert!(losses.last() < losses.first(), "{dtype}: {losses:?}");
        // Master weights (and the exported model) stay f32.
        let f = SafeTensorsFile::read(dir.join("model/model.safetensors")).unwrap();
        assert!(
            f.names()
                .iter()
                .all(|n| f.info(n).unwrap().dtype.to_dtype() == Some(glimpse_tensor::DType::F32))
        );
    }
}

#[test]
fn gradient_accumulation_matches_one_large_batch() {
    // Two micro-batches of 8 per step see the same 16 samples (one permutation per epoch,
    // augmentation keyed by sample) as one batch of 16: the runs agree up to summation order.
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    fake_dataset(&data);
    let task = task(&data);
    let run = |batch_size: usize, grad_accum: usize, name: &str| {
        let dir = root.path().join(name);
        let opts = TrainOptions {
            batch_size,
            grad_accum,
            epochs: 1,
            ..options()
        };
        let out = Trainer::new(&task, opts, glimpse_cpu::device(), &dir)
            .run(false, &mut Silent)
            .unwrap();
        assert!(matches!(out, Outcome::Finished { step: 6, .. }), "{out:?}");
        let f = SafeTensorsFile::read(dir.join("model/model.safetensors")).unwrap();
        let mut names: Vec<String> = f.names().iter().map(|n| n.to_string()).collect();
        names.sort();
        names
            .iter()
            .map(|n| {
                f.load(n, &glimpse_cpu::device())
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let big = run(16, 1, "big");
    let accumulated = run(8, 2, "accumulated");
    for (a, b) in big.iter().zip(&accumulated) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{x} vs {y}");
        }
    }
}

#[test]
fn a_run_on_the_wgpu_device_follows_the_cpu_run() {
    // The autodiff device wraps any backend: the same run on wgpu (every forward and backward
    // kernel in WGSL) takes the same steps as on the CPU, up to f32 summation order.
    let Some(gpu) = glimpse_testkit::device_or_skip(
        "a_run_on_the_wgpu_device_follows_the_cpu_run",
        "wgpu adapter",
        "GLIMPSE_REQUIRE_WGPU",
        glimpse_wgpu::device(0),
    ) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    fake_dataset(&data);
    let task = task(&data);
    let run = |device: glimpse_tensor::Device, name: &str| {
        let dir = root.path().join(name);
        let opts = TrainOptions {
            epochs: 1,
            ..options()
        };
        let out = Trainer::new(&task, opts, device, &dir)
            .run(false, &mut Silent)
            .unwrap();
        assert!(matches!(out, Outcome::Finished { step: 6, .. }), "{out:?}");
        let losses: Vec<f64> = metric_lines(&dir)
            .iter()
            .filter(|v| v["kind"] == "train")
            .map(|v| v["loss"].as_f64().unwrap())
            .collect();
        let f = SafeTensorsFile::read(dir.join("model/model.safetensors")).unwrap();
        let mut names: Vec<String> = f.names().iter().map(|n| n.to_string()).collect();
        names.sort();
        let weights: Vec<f32> = names
            .iter()
            .flat_map(|n| {
                f.load(n, &glimpse_cpu::device())
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap()
            })
            .collect();
        (losses, weights)
    };
    let (cpu_losses, cpu_weights) = run(glimpse_cpu::device(), "cpu");
    let (gpu_losses, gpu_weights) = run(gpu, "wgpu");
    assert_eq!(cpu_losses.len(), gpu_losses.len());
    for (g, c) in gpu_losses.iter().zip(&cpu_losses) {
        assert!(
            (g - c).abs() <= 1e-4 * c.abs().max(1.0),
            "losses: wgpu {gpu_losses:?} vs cpu {cpu_losses:?}"
        );
    }
    let worst = gpu_weights
        .iter()
        .zip(&cpu_weights)
        .map(|(g, c)| (g - c).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-4, "weights differ by up to {worst}");
}

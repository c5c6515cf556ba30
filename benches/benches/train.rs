//! Criterion bench of one training step of the Fashion-MNIST ViT recipe (patch 4, width 64,
//! 4 layers, batch 64) on the CPU: the forward and backward pass on the autodiff device, then
//! AdamW. Random images stand in for the data (the step costs the same).
//!
//! `cargo bench -p glimpse-benches --bench train`. `cargo xtask bench-compare train` runs the
//! whole loop side by side with PyTorch.

use std::collections::HashMap;

use criterion::{Criterion, criterion_group, criterion_main};
use glimpse_tensor::{DType, Tensor, VarBuilder};
use glimpse_train::autodiff::{self, Autodiff};
use glimpse_train::losses::{CrossEntropyOptions, cross_entropy};
use glimpse_train::optim::{AdamW, AdamWConfig, Optimizer};
use glimpse_vit::{ImageSize, ViTConfig, ViTForImageClassification};

fn bench(c: &mut Criterion) {
    let cpu = glimpse_cpu::device();
    let cfg = ViTConfig {
        hidden_size: 64,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        intermediate_size: 128,
        image_size: ImageSize::Square(28),
        patch_size: 4,
        num_channels: 1,
        id2label: (0..10)
            .map(|i| (i.to_string(), format!("class {i}")))
            .collect(),
        ..ViTConfig::default()
    };
    let specs = glimpse_vit::weight_specs(&cfg, true).expect("specs");
    let mut params = glimpse_train::init::init_params(&specs, 0, &cpu).expect("init");
    let mut opt = AdamW::new(AdamWConfig::default()).expect("adamw");
    let pixels = Tensor::rand_normal(0.0, 1.0, [64, 1, 28, 28], DType::F32, 1, &cpu).unwrap();
    let labels: Vec<u32> = (0..64).map(|i| i % 10).collect();
    let labels = Tensor::from_vec(labels, [64], &cpu).unwrap();

    let mut group = c.benchmark_group("train");
    group.sample_size(10);
    group.bench_function("vit fashion-mnist step batch 64", |b| {
        b.iter(|| {
            let ad = Autodiff::wrap(&cpu);
            let vars: Vec<Tensor> = params
                .iter()
                .map(|p| Autodiff::var(&ad, &p.value).unwrap())
                .collect();
            let map: HashMap<String, Tensor> = params
                .iter()
                .map(|p| p.name.clone())
                .zip(vars.iter().cloned())
                .collect();
            let model = ViTForImageClassification::new(
                &cfg,
                VarBuilder::from_tensors(map, DType::F32, &ad),
            )
            .unwrap();
            let logits = model
                .forward(&Autodiff::lift(&ad, &pixels).unwrap())
                .unwrap();
            let loss = cross_entropy(
                &logits,
                &Autodiff::lift(&ad, &labels).unwrap(),
                &CrossEntropyOptions::default(),
            )
            .unwrap();
            let grads = autodiff::backward(&loss).unwrap();
            let grads: Vec<Option<Tensor>> = vars.iter().map(|v| grads.get(v)).collect();
            opt.step(&mut params, &grads, 1e-3).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Criterion benches of the CPU backend, one group per concern:
//!
//! * `matmul`: square 256 to 2048 and the ViT-B/16 projection shapes (batch 8);
//! * `fused`: attention, patch embedding and the contrastive loss;
//! * `elementwise`: layer norm, softmax, GELU.
//!
//! `cargo bench -p glimpse-benches --bench cpu [-- GROUP]`. The same workloads run side by side
//! with PyTorch in `cargo xtask bench-compare cpu`.

use criterion::{Criterion, criterion_group, criterion_main};

/// Which group a workload of `glimpse_benches::cpu_suite` belongs to.
fn group_of(name: &str) -> &'static str {
    match name.split_whitespace().next().unwrap_or_default() {
        "matmul" => "matmul",
        "attention" | "patch_embed" | "contrastive" => "fused",
        _ => "elementwise",
    }
}

fn bench(c: &mut Criterion) {
    let device = glimpse_cpu::device();
    let mut suite = glimpse_benches::cpu_suite(&device).expect("workloads build");
    for group_name in ["matmul", "fused", "elementwise"] {
        let mut group = c.benchmark_group(group_name);
        group.sample_size(10);
        for w in suite.iter_mut().filter(|w| group_of(&w.name) == group_name) {
            let name = w.name.clone();
            group.bench_function(&name, |b| b.iter(|| (w.run)().expect("workload runs")));
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

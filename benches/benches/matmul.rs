//! Matrix products: square 256 to 2048 and the ViT-B/16 projection shapes (batch 8).
//!
//! `cargo bench -p glimpse-benches --bench matmul`; the same workloads run side by side with
//! PyTorch in `cargo xtask bench-compare cpu`.

use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let device = glimpse_cpu::device();
    let suite = glimpse_benches::cpu_suite(&device).expect("workloads build");
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10);
    for mut w in suite {
        let name = w.name.clone();
        if !(name.starts_with("matmul")) {
            continue;
        }
        group.bench_function(&name, |b| b.iter(|| (w.run)().expect("workload runs")));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

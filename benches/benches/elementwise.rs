//! Row-wise and element-wise kernels: layer norm, softmax, GELU.
//!
//! `cargo bench -p glimpse-benches --bench elementwise`; the same workloads run side by side with
//! PyTorch in `cargo xtask bench-compare cpu`.

use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let device = glimpse_cpu::device();
    let suite = glimpse_benches::cpu_suite(&device).expect("workloads build");
    let mut group = c.benchmark_group("elementwise");
    group.sample_size(10);
    for mut w in suite {
        let name = w.name.clone();
        if !(name.starts_with("layer_norm")
            || name.starts_with("softmax")
            || name.starts_with("gelu"))
        {
            continue;
        }
        group.bench_function(&name, |b| b.iter(|| (w.run)().expect("workload runs")));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

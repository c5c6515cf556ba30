//! The criterion groups of `glimpse_benches::cpu_suite`, shared by the benches of every
//! backend (`cpu.rs`, `wgpu.rs`) so that their figures name the same work.

use criterion::Criterion;
use glimpse_tensor::{Device, Result};

/// Which group a workload of `glimpse_benches::cpu_suite` belongs to.
fn group_of(name: &str) -> &'static str {
    match name.split_whitespace().next().unwrap_or_default() {
        "matmul" => "matmul",
        "attention" | "patch_embed" | "contrastive" => "fused",
        _ => "elementwise",
    }
}

/// Benches every workload of the suite on `device` in the groups `matmul`, `fused` and
/// `elementwise`, prefixed with `prefix`; `sync` waits for an asynchronous device after each
/// run so that the time is the device's.
pub fn bench_suite(
    c: &mut Criterion,
    prefix: &str,
    device: &Device,
    sync: &dyn Fn() -> Result<()>,
) {
    let mut suite = glimpse_benches::cpu_suite(device).expect("workloads build");
    for group_name in ["matmul", "fused", "elementwise"] {
        let mut group = c.benchmark_group(format!("{prefix}{group_name}"));
        group.sample_size(10);
        for w in suite.iter_mut().filter(|w| group_of(&w.name) == group_name) {
            let name = w.name.clone();
            group.bench_function(&name, |b| {
                b.iter(|| {
                    (w.run)().expect("workload runs");
                    sync().expect("the device finishes");
                })
            });
        }
        group.finish();
    }
}

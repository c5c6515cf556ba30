//! Criterion benches of the wgpu backend: the CPU backend's workloads (`cpu.rs`) on the first
//! wgpu adapter, in the groups `wgpu-matmul`, `wgpu-fused` and `wgpu-elementwise`. Every run
//! waits for the device, so a time covers submission, execution and the wait.
//!
//! `cargo bench -p glimpse-benches --bench wgpu [-- GROUP]`. Without an adapter the bench says
//! so and measures nothing. Side by side with the CPU backend: `cargo xtask bench-compare
//! wgpu`.

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "shared/groups.rs"]
mod groups;

fn bench(c: &mut Criterion) {
    let device = match glimpse_wgpu::device(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("no wgpu adapter, nothing to bench: {e}");
            return;
        }
    };
    if let Ok(be) = glimpse_wgpu::backend(0) {
        let info = be.adapter_info();
        eprintln!("wgpu adapter: {} ({:?})", info.name, info.backend);
    }
    let sync_device = device.clone();
    groups::bench_suite(c, "wgpu-", &device, &move || {
        glimpse_wgpu::synchronize(&sync_device)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Criterion benches of the CPU backend, one group per concern:
//!
//! * `matmul`: square 256 to 2048 and the ViT-B/16 projection shapes (batch 8);
//! * `fused`: attention, patch embedding and the contrastive loss;
//! * `elementwise`: layer norm, softmax, GELU.
//!
//! `cargo bench -p glimpse-benches --bench cpu [-- GROUP]`. The same workloads run side by side
//! with PyTorch in `cargo xtask bench-compare cpu`, and on the wgpu device in `--bench wgpu`.

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "shared/groups.rs"]
mod groups;

fn bench(c: &mut Criterion) {
    groups::bench_suite(c, "", &glimpse_cpu::device(), &|| Ok(()));
}

criterion_group!(benches, bench);
criterion_main!(benches);

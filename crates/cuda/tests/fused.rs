//! The fused ops of the CUDA backend against the CPU backend, on the same inputs: the fused
//! checks of the backend conformance suite (`glimpse_testkit::suite::fused`, one test per
//! check, named as the check; the attention edge cases at the head dims of the tensor-core
//! kernels), and the fused kernels' timings (ignored; run explicitly on a GPU).
//!
//! Without a usable CUDA device each test prints why it skips and passes;
//! `GLIMPSE_REQUIRE_CUDA=1` makes a missing device a failure; `GLIMPSE_CUDA_TESTS_ON_CPU=1`
//! runs the checks on the CPU device to check the checks.

use glimpse_tensor::{AttentionOptions, DType, PatchEmbedOptions, Tensor};

mod common;

use common::gpu;

glimpse_testkit::fused_tests!(common::target);

// ---------------------------------------------------------------------------------- timings

/// Median milliseconds of one call of `f`, timed over batches of `reps` calls between device
/// synchronisations (after warm-up, so compilation and first allocations stay out).
fn time_ms(be: &glimpse_cuda::CudaBackend, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    be.synchronize().unwrap();
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                f();
            }
            be.synchronize().unwrap();
            t0.elapsed().as_secs_f64() * 1e3 / reps as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The performance targets of the fused kernels (run alone: it turns poisoning off for the
/// process): `cargo test -p glimpse-cuda --release --test fused -- --ignored fused_timings
/// --nocapture`. Prints milliseconds and the rates they imply; asserts nothing.
#[test]
#[ignore = "timing on a GPU; run explicitly and alone"]
fn fused_timings() {
    let Some(gpu) = gpu("fused_timings") else {
        return;
    };
    let Ok(be) = glimpse_cuda::backend(0) else {
        println!("skipping fused_timings: not on a CUDA device");
        return;
    };
    be.set_poison(false);
    be.set_sync_launches(false);
    println!("device: {}", be.name());

    // Attention forward, bf16, B128 H12 N197 D64 (target: FlashAttention-2's 0.147 ms on H100).
    let (b, h, n, d) = (128, 12, 197, 64);
    let rand = |shape: &[usize], seed| {
        Tensor::rand_normal(0.0, 1.0, shape, DType::BF16, seed, &gpu).unwrap()
    };
    let (q, k, v) = (
        rand(&[b, h, n, d], 1),
        rand(&[b, h, n, d], 2),
        rand(&[b, h, n, d], 3),
    );
    let opts = AttentionOptions::default();
    let ms = time_ms(&be, 50, || {
        Tensor::attention(&q, &k, &v, &opts).unwrap();
    });
    let flop = 4.0 * (b * h * n * n * d) as f64;
    println!(
        "attention fwd bf16 B{b} H{h} N{n} D{d} contiguous: {ms:.4} ms ({:.0} TFLOP/s)",
        flop / ms / 1e9
    );
    let qkv = rand(&[b, n, 3, h, d], 4);
    let split = |i: usize| {
        qkv.narrow(2, i, 1)
            .unwrap()
            .squeeze(2)
            .unwrap()
            .permute(&[0, 2, 1, 3])
            .unwrap()
    };
    let (q2, k2, v2) = (split(0), split(1), split(2));
    let ms = time_ms(&be, 50, || {
        Tensor::attention(&q2, &k2, &v2, &opts).unwrap();
    });
    println!("attention fwd bf16 B{b} H{h} N{n} D{d} from a (B, N, 3, H, D) qkv: {ms:.4} ms");
    let g = rand(&[b, h, n, d], 5);
    let out = Tensor::attention(&q, &k, &v, &opts).unwrap();
    let ms = time_ms(&be, 5, || {
        Tensor::attention_backward(&q, &k, &v, &out, &g, &opts).unwrap();
    });
    println!("attention bwd bf16 B{b} H{h} N{n} D{d} (CUDA cores): {ms:.4} ms");

    // Patch embedding, bf16, batch 256 at 224 px, P16, E768 (target: <= 0.4 ms).
    let (bp, e, p) = (256, 768, 16);
    let images = Tensor::rand_normal(0.0, 1.0, [bp, 3, 224, 224], DType::BF16, 6, &gpu).unwrap();
    let w = Tensor::rand_normal(0.0, 0.02, [e, 3, p, p], DType::BF16, 7, &gpu).unwrap();
    let bias = Tensor::rand_normal(0.0, 0.02, [e], DType::BF16, 8, &gpu).unwrap();
    let cls = Tensor::rand_normal(0.0, 0.02, [e], DType::BF16, 9, &gpu).unwrap();
    let pos = Tensor::rand_normal(0.0, 0.02, [197, e], DType::BF16, 10, &gpu).unwrap();
    let popts = PatchEmbedOptions {
        patch_size: p,
        class_embedding: Some(cls),
        position_embedding: Some(pos),
    };
    let ms = time_ms(&be, 20, || {
        Tensor::patch_embed(&images, &w, Some(&bias), &popts).unwrap();
    });
    let flop = 2.0 * (bp * 196 * e * 3 * p * p) as f64;
    println!(
        "patch_embed bf16 B{bp} 224px P{p} E{e}: {ms:.4} ms ({:.0} TFLOP/s)",
        flop / ms / 1e9
    );

    // Contrastive loss, bf16, N32768 D512, forward + backward (target: <= 15 ms, <= 1 GB).
    let (nc, dc) = (32768, 512);
    let img = Tensor::rand_normal(
        0.0,
        1.0 / (dc as f64).sqrt(),
        [nc, dc],
        DType::BF16,
        11,
        &gpu,
    )
    .unwrap();
    let txt = Tensor::rand_normal(
        0.0,
        1.0 / (dc as f64).sqrt(),
        [nc, dc],
        DType::BF16,
        12,
        &gpu,
    )
    .unwrap();
    let scale = Tensor::from_vec(vec![100.0f32], (), &gpu).unwrap();
    let d_loss = Tensor::from_vec(vec![1.0f32], (), &gpu).unwrap();
    let fwd_ms = time_ms(&be, 3, || {
        Tensor::contrastive_loss(&img, &txt, &scale).unwrap();
    });
    let saved = Tensor::contrastive_loss(&img, &txt, &scale).unwrap();
    let bwd_ms = time_ms(&be, 3, || {
        Tensor::contrastive_loss_backward(&img, &txt, &scale, &saved, &d_loss).unwrap();
    });
    let gemm = 2.0 * (nc * nc * dc) as f64;
    println!(
        "contrastive bf16 N{nc} D{dc}: fwd {fwd_ms:.3} ms ({:.0} TFLOP/s), bwd {bwd_ms:.3} ms \
         ({:.0} TFLOP/s), total {:.3} ms",
        gemm / fwd_ms / 1e9,
        3.0 * gemm / bwd_ms / 1e9,
        fwd_ms + bwd_ms
    );
    // Device memory the two calls hold at their peaks (by construction, not measured): inputs
    // 2 N D, forward partials 4 (N / 128) N f32; backward one 256 MiB strip of weights, the
    // N x D f32 d_text sum, a product of each side and the two outputs.
    let mib = |bytes: usize| bytes as f64 / (1 << 20) as f64;
    let inputs = 2 * nc * dc * 2;
    let fwd_peak = inputs + 4 * nc.div_ceil(128) * nc * 4 + 3 * nc * 4;
    let bwd_peak = inputs + (256 << 20) + nc * dc * 4 + 3 * nc * dc * 2 + (nc / 128).pow(2) * 4;
    println!(
        "contrastive memory by construction: fwd {:.0} MiB, bwd {:.0} MiB (inputs included)",
        mib(fwd_peak),
        mib(bwd_peak)
    );
    be.set_poison(true);
}

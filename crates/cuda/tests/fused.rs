//! The fused ops of the CUDA backend against the CPU backend, on the same inputs: the fused
//! checks of the backend conformance suite (`glimpse_testkit::suite::fused`, one test per
//! check, named as the check; the attention edge cases at the head dims of the tensor-core
//! kernels), and the fused kernels' timings (ignored; run explicitly on a GPU).
//!
//! Without a usable CUDA device each test prints why it skips and passes;
//! `GLIMPSE_REQUIRE_CUDA=1` makes a missing device a failure; `GLIMPSE_CUDA_TESTS_ON_CPU=1`
//! runs the checks on the CPU device to check the checks.

use glimpse_cuda::{
    KernelCandidates, KernelChoices, linear_lt_products_on_this_thread, with_kernel_choices,
};
use glimpse_tensor::{AttentionOptions, DType, Device, PatchEmbedOptions, Tensor};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

mod common;

use common::{Gen, any_of, assert_close_scaled, gpu, run_cases, tol, values};

glimpse_testkit::fused_tests!(common::target);

// ------------------------------------------------------------------------ kernel candidates

/// For the tests of kernel candidates: runs `body` on the GPU device, with whether it is a
/// CUDA device (under `GLIMPSE_CUDA_TESTS_ON_CPU` it is the CPU's, and both sides of each
/// comparison are then the CPU's, which checks the test itself). The tests switch kernels
/// with [`with_candidates`], which changes them for the test's own thread only, so the other
/// tests of this binary may run beside them.
fn candidate_test(test: &str, body: impl FnOnce(&Device, bool)) {
    let Some(dev) = gpu(test) else {
        return;
    };
    let cuda = dev.location().backend == "cuda";
    body(&dev, cuda);
}

/// `run` with exactly `candidates` on, and the attention forward tiled by `rows` query rows
/// where given, on this thread.
fn with_candidates<R>(
    candidates: KernelCandidates,
    rows: Option<usize>,
    run: impl FnOnce() -> R,
) -> R {
    let choices = KernelChoices {
        candidates,
        attention_forward_rows: rows,
    };
    with_kernel_choices(choices, run).expect("the tests choose 64 or 128 rows")
}

/// `GLIMPSE_CUDA_SMEM_LIMIT` (which the bundle sets to `99K` for one run of these tests, so
/// that its card runs the kernels of cards with 99 KB per block) lowers the shared memory the
/// backend gives a block, which is what picks the kernels with smaller tiles.
#[test]
fn the_shared_memory_limit_of_the_environment_is_kept() {
    let Some(dev) = gpu("the_shared_memory_limit_of_the_environment_is_kept") else {
        return;
    };
    let Ok(limit) = std::env::var("GLIMPSE_CUDA_SMEM_LIMIT") else {
        return;
    };
    if dev.location().backend != "cuda" {
        return;
    }
    let limit = limit.trim();
    let bytes = match limit.strip_suffix(['K', 'k']) {
        Some(kib) => kib.parse::<usize>().map(|k| k * 1024),
        None => limit.parse(),
    }
    .expect("GLIMPSE_CUDA_SMEM_LIMIT is a number of bytes, or of KiB with a K suffix");
    let be = glimpse_cuda::backend(0).unwrap();
    assert!(
        be.max_shared_memory_per_block() <= bytes,
        "{} bytes per block under GLIMPSE_CUDA_SMEM_LIMIT={limit}",
        be.max_shared_memory_per_block()
    );
}

/// Cases per candidate test: `default`, or `GLIMPSE_CANDIDATE_CASES` (the bundle asks for a
/// few under compute-sanitizer, which slows every kernel many times over).
fn candidate_cases(default: u32) -> u32 {
    std::env::var("GLIMPSE_CANDIDATE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The largest magnitude among `values`, the scale of a comparison's absolute floor.
fn largest(values: &[f64]) -> f64 {
    values.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// The attention candidates (`attn-fwd-skip`, `attn-fwd-k64`, `attn-bwd-prefetch`,
/// `attn-bwd-red2`), each alone against the kernel it would replace, on the same GPU inputs.
/// The forward that skips padding must give the same bits as the one that computes and masks
/// it (every skipped probability is exactly 0), the one with 64-key tiles (on Hopper) the
/// same values within rounding; each backward candidate, from the default forward's results,
/// the same dK and dV bits (the same products in the same order) and dQ within rounding (its
/// f32 atomics land in any order in both). Shapes around the tile sizes, both forward
/// tilings, causal and key-padding masks, head-split (strided) inputs, both half types, every
/// tensor-core head dim, positive and negative scales.
#[test]
fn attention_candidates_match_the_kernels_they_would_replace() {
    let name = "attention_candidates_match_the_kernels_they_would_replace";
    candidate_test(name, |dev, _| attention_candidates(name, dev));
}

fn attention_candidates(name: &str, dev: &Device) {
    let lengths = || {
        prop_oneof![
            prop::sample::select(vec![1usize, 63, 64, 65, 127, 128, 129, 197]),
            1..=260usize
        ]
    };
    let strategy = (
        (1..=2usize, 1..=3usize, lengths(), lengths()),
        (
            any_of(&[DType::F16, DType::BF16]),
            // Head dim and forward tiling; half the cases 128 rows at D = 128, the only shape
            // attn-fwd-k64 changes.
            prop_oneof![
                Just((128usize, 128usize)),
                (
                    prop::sample::select(vec![32usize, 64, 80, 128]),
                    prop::sample::select(vec![64usize, 128]),
                ),
            ],
        ),
        (any::<bool>(), any::<bool>()),
        (
            prop::sample::select(vec![None, Some(0.3), Some(-0.3)]),
            any::<u64>(),
        ),
    );
    run_cases(name, dev, candidate_cases(32), strategy, |dev, case| {
        let ((b, h, nq, nk), (dtype, (d, rows)), (causal, masked), (scale, seed)) = case;
        // (B, N, H, D) projections seen as (B, H, N, D), as a model makes them.
        let heads = |n: usize, seed: u64| {
            Tensor::rand_normal(0.0, 1.0, [b, n, h, d], dtype, seed, dev)
                .and_then(|t| t.permute(&[0, 2, 1, 3]))
                .unwrap()
        };
        let (q, k, v) = (heads(nq, seed), heads(nk, seed ^ 1), heads(nk, seed ^ 2));
        let d_out = Tensor::rand_normal(0.0, 1.0, [b, h, nq, d], dtype, seed ^ 3, dev).unwrap();
        let mut g = Gen::new(seed);
        let key_padding_mask = masked.then(|| {
            let m: Vec<u32> = (0..b * nk).map(|_| u32::from(g.below(4) != 0)).collect();
            Tensor::from_vec(m, [b, nk], dev).unwrap()
        });
        let opts = AttentionOptions {
            scale,
            causal,
            key_padding_mask,
        };
        let forward = |candidates| {
            with_candidates(candidates, Some(rows), || {
                Tensor::attention(&q, &k, &v, &opts)
            })
            .unwrap()
        };
        let fwd0 = forward(KernelCandidates::default());
        let fwd1 = forward(KernelCandidates {
            attention_forward_skip_padding: true,
            ..KernelCandidates::default()
        });
        // 64-key tiles split the online softmax at other keys: the same sums in other
        // groupings, with probabilities rounded to the dtype against other running maxima.
        // So out (a weighted mean of value rows) within a rounding of the dtype scaled by the
        // largest value, and lse within f32 rounding.
        let wide = forward(KernelCandidates {
            attention_forward_wide_key_tiles: true,
            ..KernelCandidates::default()
        });
        assert_close_scaled(
            &values(&wide.out),
            &values(&fwd0.out),
            &[largest(&values(&v))],
            tol(dtype),
            "attention out (attn-fwd-k64)",
        );
        assert_close_scaled(
            &values(&wide.lse),
            &values(&fwd0.lse),
            &[1.0],
            1e-5,
            "attention lse (attn-fwd-k64)",
        );
        let backward = |candidates| {
            with_candidates(candidates, Some(rows), || {
                Tensor::attention_backward(&q, &k, &v, &fwd0, &d_out, &opts)
            })
            .unwrap()
        };
        let grads0 = backward(KernelCandidates::default());
        let exact = |what: &str, got: &Tensor, want: &Tensor| -> Result<(), TestCaseError> {
            prop_assert_eq!(
                values(got),
                values(want),
                "{} differs from the kernel it replaces",
                what
            );
            Ok(())
        };
        exact("attention out (attn-fwd-skip)", &fwd1.out, &fwd0.out)?;
        exact("attention lse (attn-fwd-skip)", &fwd1.lse, &fwd0.lse)?;
        let want_dq = values(&grads0.dq);
        let dq_scale = 1e-3 * largest(&want_dq);
        for (name, candidate) in [
            (
                "attn-bwd-prefetch",
                KernelCandidates {
                    attention_backward_prefetch: true,
                    ..KernelCandidates::default()
                },
            ),
            (
                "attn-bwd-red2",
                KernelCandidates {
                    attention_backward_vector_atomics: true,
                    ..KernelCandidates::default()
                },
            ),
        ] {
            let grads1 = backward(candidate);
            exact(&format!("dk ({name})"), &grads1.dk, &grads0.dk)?;
            exact(&format!("dv ({name})"), &grads1.dv, &grads0.dv)?;
            // dQ: the same f32 sums in another order, rounded once to the dtype.
            assert_close_scaled(
                &values(&grads1.dq),
                &want_dq,
                &[dq_scale],
                tol(dtype),
                &format!("dq ({name})"),
            );
        }
        Ok(())
    });
}

/// The `patch-k64` candidate (the tensor-core patch embedding in K steps of 64) against the
/// default (steps of 32): the same mma.sync products in the same order of K, so the same
/// bits. Patch sizes 8 to 32, images with pixels no patch covers, with and without the class
/// row, both half types, embedding widths around the 128-wide tiles.
#[test]
fn patch_embed_k64_gives_the_bits_of_the_default() {
    let name = "patch_embed_k64_gives_the_bits_of_the_default";
    candidate_test(name, |dev, _| patch_embed_k64(name, dev));
}

fn patch_embed_k64(name: &str, dev: &Device) {
    let strategy = (
        (
            1..=3usize,
            1..=4usize,
            prop::sample::select(vec![8usize, 16, 24, 32]),
        ),
        // Extra pixels past the last patch in whole 16-byte runs: the tensor-core kernels want
        // aligned image rows (other images take the CUDA-core kernel, not a candidate).
        (
            1..=4usize,
            1..=4usize,
            prop::sample::select(vec![0usize, 8, 16]),
        ),
        (
            prop::sample::select(vec![8usize, 64, 128, 200, 768]),
            any::<bool>(),
        ),
        (any_of(&[DType::F16, DType::BF16]), any::<u64>()),
    );
    run_cases(name, dev, candidate_cases(24), strategy, |dev, case| {
        let ((b, c, p), (gh, gw, extra), (e, class_row), (dtype, seed)) = case;
        let rand =
            |shape: &[usize], seed| Tensor::rand_normal(0.0, 1.0, shape, dtype, seed, dev).unwrap();
        let (h, w) = (gh * p + extra, gw * p + extra);
        let images = rand(&[b, c, h, w], seed);
        let weight = rand(&[e, c, p, p], seed ^ 1);
        let bias = rand(&[e], seed ^ 2);
        let rows = (h / p) * (w / p) + usize::from(class_row);
        let opts = PatchEmbedOptions {
            patch_size: p,
            class_embedding: class_row.then(|| rand(&[e], seed ^ 3)),
            position_embedding: Some(rand(&[rows, e], seed ^ 4)),
        };
        let run = |patch_embed_k64| {
            let candidates = KernelCandidates {
                patch_embed_k64,
                ..KernelCandidates::default()
            };
            with_candidates(candidates, None, || {
                Tensor::patch_embed(&images, &weight, Some(&bias), &opts)
            })
            .unwrap()
        };
        let (want, got) = (run(false), run(true));
        prop_assert_eq!(
            values(&got),
            values(&want),
            "patch-k64 differs from the default"
        );
        Ok(())
    });
}

/// The `linear-lt` candidate (bias added in cuBLASLt's epilogue) against the default `linear`
/// (bias rows accumulated onto by cuBLAS), on the same GPU inputs: within two roundings of the
/// dtype, scaled by the size of the terms (sum |x| |w| + |b| per element). Row-strided inputs,
/// biases at unaligned offsets (copied), transposed weights (not taken: the default runs).
#[test]
fn linear_lt_matches_the_default_linear() {
    let name = "linear_lt_matches_the_default_linear";
    candidate_test(name, |dev, cuda| linear_lt(name, dev, cuda));
}

fn linear_lt(name: &str, dev: &Device, cuda: bool) {
    let dims = || {
        prop_oneof![
            prop::sample::select(vec![1usize, 8, 63, 64, 768]),
            1..=300usize
        ]
    };
    let strategy = (
        (dims(), dims(), dims()),
        any_of(&[DType::F32, DType::F16, DType::BF16]),
        (0..3usize, 0..3usize, any::<bool>(), any::<u64>()),
    );
    run_cases(name, dev, candidate_cases(32), strategy, |dev, case| {
        let ((m, k, n), dtype, (x_pad, b_off, w_t, seed)) = case;
        let rand =
            |shape: &[usize], seed| Tensor::rand_normal(0.0, 1.0, shape, dtype, seed, dev).unwrap();
        // x with x_pad extra columns (row stride k + pad), the bias from offset b_off.
        let x = rand(&[m, k + x_pad], seed).narrow(1, x_pad, k).unwrap();
        let w = if w_t {
            rand(&[k, n], seed ^ 1).t().unwrap()
        } else {
            rand(&[n, k], seed ^ 1)
        };
        let b = rand(&[n + b_off], seed ^ 2).narrow(0, b_off, n).unwrap();
        let run = |linear_lt| {
            let candidates = KernelCandidates {
                linear_lt,
                ..KernelCandidates::default()
            };
            with_candidates(candidates, None, || x.linear(&w, Some(&b))).unwrap()
        };
        let before = linear_lt_products_on_this_thread();
        let (want, got) = (run(false), run(true));
        if cuda {
            // cuBLASLt takes every weight whose rows are unit-stride: not a transposed one,
            // unless it is a single row or column (then either stride will do).
            let took = linear_lt_products_on_this_thread() - before;
            let takes = !w_t || k == 1 || n == 1;
            prop_assert_eq!(took, usize::from(takes), "linear-lt products run");
        }
        prop_assert_eq!(got.dims(), &[m, n][..]);
        prop_assert_eq!(got.dtype(), dtype);
        let f32 = |t: &Tensor| t.abs().unwrap().to_dtype(DType::F32).unwrap();
        let size = f32(&x)
            .matmul(&f32(&w).t().unwrap())
            .unwrap()
            .add(&f32(&b))
            .unwrap();
        assert_close_scaled(
            &values(&got),
            &values(&want),
            &values(&size),
            tol(dtype),
            &format!("linear-lt {dtype} m {m} k {k} n {n}"),
        );
        Ok(())
    });
}

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

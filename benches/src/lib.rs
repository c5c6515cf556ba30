//! The workloads glimpse is benchmarked on, shared by the criterion benches (`cargo bench -p
//! glimpse-benches`) and the side-by-side comparison with PyTorch (`cargo xtask bench-compare
//! cpu`, which runs the `bench-compare` binary and then `benches/compare_torch.py` on the same
//! shapes). Each workload builds its inputs once and returns a closure that runs it.

use glimpse_tensor::{AttentionOptions, DType, Device, PatchEmbedOptions, Result, Tensor};

/// A named piece of work and its floating-point operation count (0 when not meaningful).
pub struct Workload {
    pub name: String,
    pub flops: f64,
    pub run: Box<dyn FnMut() -> Result<()>>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Workload({})", self.name)
    }
}

fn normal(shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    Tensor::rand_normal(0.0, 1.0, shape.to_vec(), DType::F32, seed, device)
}

fn workload(
    name: impl Into<String>,
    flops: f64,
    run: impl FnMut() -> Result<()> + 'static,
) -> Workload {
    Workload {
        name: name.into(),
        flops,
        run: Box::new(run),
    }
}

/// `(m, k) @ (k, n)` in f32.
pub fn matmul(m: usize, k: usize, n: usize, device: &Device) -> Result<Workload> {
    let a = normal(&[m, k], 1, device)?;
    let b = normal(&[k, n], 2, device)?;
    Ok(workload(
        format!("matmul {m}x{k}x{n}"),
        2.0 * (m * k * n) as f64,
        move || a.matmul(&b).map(drop),
    ))
}

/// The same product through the gemm crate (AVX-512 kernels, rayon), for comparison.
#[cfg(feature = "gemm-crate")]
pub fn matmul_gemm_crate(m: usize, k: usize, n: usize) -> Workload {
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32) * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32) * 0.1).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    workload(
        format!("matmul by the gemm crate {m}x{k}x{n}"),
        2.0 * (m * k * n) as f64,
        move || {
            let mut c = vec![0.0f32; m * n];
            // SAFETY: the pointers cover m*k, k*n and m*n row-major f32s (column stride 1, row
            // stride = the number of columns), all of which live until the call returns.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                );
            }
            std::hint::black_box(&c);
            Ok(())
        },
    )
}

/// Fused attention forward, f32, `(B, H, N, D)` without masks.
pub fn attention(b: usize, h: usize, n: usize, d: usize, device: &Device) -> Result<Workload> {
    let q = normal(&[b, h, n, d], 3, device)?;
    let k = normal(&[b, h, n, d], 4, device)?;
    let v = normal(&[b, h, n, d], 5, device)?;
    let opts = AttentionOptions::default();
    Ok(workload(
        format!("attention B{b} H{h} N{n} D{d}"),
        4.0 * (b * h * n * n * d) as f64,
        move || Tensor::attention(&q, &k, &v, &opts).map(drop),
    ))
}

/// Layer norm over the last dimension of `(rows, cols)`, with weight and bias.
pub fn layer_norm(rows: usize, cols: usize, device: &Device) -> Result<Workload> {
    let x = normal(&[rows, cols], 6, device)?;
    let w = normal(&[cols], 7, device)?;
    let b = normal(&[cols], 8, device)?;
    Ok(workload(
        format!("layer_norm {rows}x{cols}"),
        0.0,
        move || x.layer_norm(Some(&w), Some(&b), 1e-5).map(drop),
    ))
}

/// Softmax over the last dimension of `(rows, cols)`.
pub fn softmax(rows: usize, cols: usize, device: &Device) -> Result<Workload> {
    let x = normal(&[rows, cols], 9, device)?;
    Ok(workload(format!("softmax {rows}x{cols}"), 0.0, move || {
        x.softmax(-1).map(drop)
    }))
}

/// Exact (erf) GELU over `len` elements.
pub fn gelu(len: usize, device: &Device) -> Result<Workload> {
    let x = normal(&[len], 10, device)?;
    Ok(workload(format!("gelu_erf {len}"), 0.0, move || {
        x.gelu_erf().map(drop)
    }))
}

/// ViT patch embedding: `(B, 3, S, S)` images, patch `p`, `e` channels, class row and
/// position embedding included.
pub fn patch_embed(b: usize, size: usize, p: usize, e: usize, device: &Device) -> Result<Workload> {
    let images = normal(&[b, 3, size, size], 11, device)?;
    let weight = normal(&[e, 3, p, p], 12, device)?;
    let bias = normal(&[e], 13, device)?;
    let patches = (size / p) * (size / p);
    let opts = PatchEmbedOptions {
        patch_size: p,
        class_embedding: Some(normal(&[e], 14, device)?),
        position_embedding: Some(normal(&[patches + 1, e], 15, device)?),
    };
    Ok(workload(
        format!("patch_embed B{b} {size}px p{p} E{e}"),
        2.0 * (b * patches * e * 3 * p * p) as f64,
        move || Tensor::patch_embed(&images, &weight, Some(&bias), &opts).map(drop),
    ))
}

fn unit_rows(n: usize, d: usize, seed: u64, device: &Device) -> Result<Tensor> {
    let x = normal(&[n, d], seed, device)?;
    x.div(&x.sqr()?.sum_keepdim(1)?.sqrt()?)
}

/// CLIP's contrastive loss forward over `n` pairs of unit `d`-vectors, scale 100.
pub fn contrastive(n: usize, d: usize, device: &Device) -> Result<Workload> {
    let img = unit_rows(n, d, 16, device)?;
    let txt = unit_rows(n, d, 17, device)?;
    let scale = Tensor::full(100.0, (), DType::F32, device)?;
    Ok(workload(
        format!("contrastive fwd N{n} D{d}"),
        2.0 * (n * n * d) as f64,
        move || Tensor::contrastive_loss(&img, &txt, &scale).map(drop),
    ))
}

/// Forward and backward of the contrastive loss.
pub fn contrastive_fwd_bwd(n: usize, d: usize, device: &Device) -> Result<Workload> {
    let img = unit_rows(n, d, 16, device)?;
    let txt = unit_rows(n, d, 17, device)?;
    let scale = Tensor::full(100.0, (), DType::F32, device)?;
    let one = Tensor::full(1.0, (), DType::F32, device)?;
    Ok(workload(
        format!("contrastive fwd+bwd N{n} D{d}"),
        6.0 * (n * n * d) as f64,
        move || {
            let saved = Tensor::contrastive_loss(&img, &txt, &scale)?;
            Tensor::contrastive_loss_backward(&img, &txt, &scale, &saved, &one).map(drop)
        },
    ))
}

/// Every workload of the CPU comparison with PyTorch, in the order `compare_torch.py` uses.
pub fn cpu_suite(device: &Device) -> Result<Vec<Workload>> {
    let mut w = Vec::new();
    for s in [256, 512, 1024, 2048] {
        w.push(matmul(s, s, s, device)?);
    }
    // ViT-B/16 at batch 8: 8 * 197 tokens through the qkv, fc1 and fc2 projections.
    w.push(matmul(1576, 768, 2304, device)?);
    w.push(matmul(1576, 768, 3072, device)?);
    w.push(matmul(1576, 3072, 768, device)?);
    #[cfg(feature = "gemm-crate")]
    for s in [1024, 2048] {
        w.push(matmul_gemm_crate(s, s, s));
    }
    w.push(attention(8, 12, 197, 64, device)?);
    w.push(attention(1, 12, 577, 64, device)?);
    w.push(layer_norm(1576, 768, device)?);
    w.push(softmax(8 * 12 * 197, 197, device)?);
    w.push(gelu(1576 * 3072, device)?);
    w.push(patch_embed(8, 224, 16, 768, device)?);
    w.push(contrastive(4096, 512, device)?);
    w.push(contrastive_fwd_bwd(4096, 512, device)?);
    Ok(w)
}

/// Median wall time in milliseconds over at least `min_runs` runs and about `budget` seconds,
/// after two warm-up runs.
pub fn median_ms(run: &mut dyn FnMut() -> Result<()>, min_runs: usize, budget: f64) -> Result<f64> {
    run()?;
    run()?;
    let start = std::time::Instant::now();
    let mut times = Vec::new();
    while times.len() < min_runs || (start.elapsed().as_secs_f64() < budget && times.len() < 200) {
        let t = std::time::Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// ViT-B/16 (google/vit-base-patch16-224's architecture, 1000 classes, random weights):
/// logits of `batch` 224px images, in f32.
pub fn vit_b16(batch: usize, device: &Device) -> Result<Workload> {
    let cfg = glimpse_vit::ViTConfig::vit_base_patch16_224(1000);
    let vb = glimpse_vit::random_weights(&cfg, true, DType::F32, device)?;
    let model = glimpse_vit::ViTForImageClassification::new(&cfg, vb)?;
    let pixels = normal(&[batch, 3, 224, 224], 3, device)?;
    Ok(workload(
        format!("ViT-B/16 fp32 batch {batch}"),
        VIT_B16_FLOPS * batch as f64,
        move || model.forward(&pixels).map(drop),
    ))
}

/// Floating-point operations of one ViT-B/16 forward at 224px (35.2 GFLOP, counting the
/// patch embedding, the 12 layers and the head; multiply-adds count 2).
pub const VIT_B16_FLOPS: f64 = 35.2e9;

fn clip_b32(device: &Device) -> Result<glimpse_clip::ClipModel> {
    let cfg = glimpse_clip::ClipConfig::vit_base_patch32();
    let vb = glimpse_clip::random_weights(&cfg, DType::F32, device)?;
    glimpse_clip::ClipModel::new(&cfg, vb)
}

/// CLIP ViT-B/32's image tower and projection (openai/clip-vit-base-patch32's architecture,
/// random weights) on `batch` 224px images, in f32.
pub fn clip_b32_image(batch: usize, device: &Device) -> Result<Workload> {
    let model = clip_b32(device)?;
    let pixels = normal(&[batch, 3, 224, 224], 4, device)?;
    Ok(workload(
        format!("CLIP ViT-B/32 image fp32 batch {batch}"),
        0.0,
        move || model.get_image_features(&pixels).map(drop),
    ))
}

/// CLIP ViT-B/32's text tower and projection on `batch` texts of `len` tokens (full length,
/// the end-of-text token last), in f32.
pub fn clip_b32_text(batch: usize, len: usize, device: &Device) -> Result<Workload> {
    let model = clip_b32(device)?;
    // Start token, pseudo-random words, end-of-text token (the largest id) last.
    let ids: Vec<u32> = (0..batch * len)
        .map(|i| match i % len {
            0 => 49406,
            p if p == len - 1 => 49407,
            _ => ((i as u64 * 2_654_435_761) % 49_000) as u32 + 1,
        })
        .collect();
    let ids = Tensor::from_vec(ids, [batch, len], device)?;
    let mask = Tensor::ones([batch, len], DType::U32, device)?;
    Ok(workload(
        format!("CLIP text fp32 batch {batch}x{len}"),
        0.0,
        move || model.get_text_features(&ids, Some(&mask)).map(drop),
    ))
}

/// The whole-model workloads of the comparison with PyTorch (`cargo xtask bench-compare
/// models`), in the order `compare_torch.py models` uses.
pub fn model_suite(device: &Device) -> Result<Vec<Workload>> {
    Ok(vec![
        vit_b16(1, device)?,
        vit_b16(8, device)?,
        clip_b32_image(1, device)?,
        clip_b32_text(8, 77, device)?,
    ])
}

/// Median wall time in milliseconds of one run on an asynchronous device: each sample runs the
/// work `inner` times back to back and then waits for the device (`sync`), so the host-device
/// round trip is spread over `inner` runs; at least `min_samples` samples and about `budget`
/// seconds, after a warm-up sample.
pub fn median_ms_synced(
    run: &mut dyn FnMut() -> Result<()>,
    sync: &dyn Fn() -> Result<()>,
    inner: usize,
    min_samples: usize,
    budget: f64,
) -> Result<f64> {
    for _ in 0..inner.max(2) {
        run()?;
    }
    sync()?;
    let start = std::time::Instant::now();
    let mut times = Vec::new();
    while times.len() < min_samples || (start.elapsed().as_secs_f64() < budget && times.len() < 100)
    {
        let t = std::time::Instant::now();
        for _ in 0..inner {
            run()?;
        }
        sync()?;
        times.push(t.elapsed().as_secs_f64() * 1e3 / inner as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The GPU workloads of the CUDA comparison with PyTorch (`bench-compare cuda`, run by the GPU
/// bundle), in bf16, in the order `compare_torch.py cuda` uses. Each returns the work and how
/// many times to repeat it per timed sample.
#[cfg(feature = "cuda")]
pub fn cuda_suite(device: &Device) -> Result<Vec<(Workload, usize)>> {
    let bf16 = |shape: &[usize], seed: u64| -> Result<Tensor> {
        Tensor::rand_normal(0.0, 1.0, shape.to_vec(), DType::BF16, seed, device)
    };
    let mut w = Vec::new();
    for (b, h, n, d, inner) in [
        (128, 12, 197, 64, 50),
        (4, 16, 4096, 64, 10),
        (4, 16, 4096, 128, 10),
    ] {
        let (q, k, v) = (
            bf16(&[b, h, n, d], 1)?,
            bf16(&[b, h, n, d], 2)?,
            bf16(&[b, h, n, d], 3)?,
        );
        let flops = 4.0 * (b * h * n * n * d) as f64;
        let opts = AttentionOptions::default();
        w.push((
            workload(
                format!("attention fwd bf16 B{b} H{h} N{n} D{d}"),
                flops,
                move || Tensor::attention(&q, &k, &v, &opts).map(drop),
            ),
            inner,
        ));
    }
    for (b, h, n, d, inner) in [
        (128, 12, 197, 64, 20),
        (4, 16, 4096, 64, 5),
        (4, 16, 4096, 128, 5),
    ] {
        let (q, k, v) = (
            bf16(&[b, h, n, d], 1)?,
            bf16(&[b, h, n, d], 2)?,
            bf16(&[b, h, n, d], 3)?,
        );
        let d_out = bf16(&[b, h, n, d], 4)?;
        // The usual count: the backward is 2.5 times the forward's work.
        let flops = 3.5 * 4.0 * (b * h * n * n * d) as f64;
        let opts = AttentionOptions::default();
        w.push((
            workload(
                format!("attention fwd+bwd bf16 B{b} H{h} N{n} D{d}"),
                flops,
                move || {
                    let out = Tensor::attention(&q, &k, &v, &opts)?;
                    Tensor::attention_backward(&q, &k, &v, &out, &d_out, &opts).map(drop)
                },
            ),
            inner,
        ));
    }
    {
        let (b, size, p, e) = (256, 224, 16, 768);
        let images = bf16(&[b, 3, size, size], 5)?;
        let weight = bf16(&[e, 3, p, p], 6)?;
        let bias = bf16(&[e], 7)?;
        let patches = (size / p) * (size / p);
        let opts = PatchEmbedOptions {
            patch_size: p,
            class_embedding: Some(bf16(&[e], 8)?),
            position_embedding: Some(bf16(&[patches + 1, e], 9)?),
        };
        w.push((
            workload(
                format!("patch_embed bf16 B{b} {size}px p{p} E{e}"),
                2.0 * (b * patches * e * 3 * p * p) as f64,
                move || Tensor::patch_embed(&images, &weight, Some(&bias), &opts).map(drop),
            ),
            20,
        ));
    }
    {
        let (n, d) = (32768, 512);
        let img = bf16(&[n, d], 10)?;
        let txt = bf16(&[n, d], 11)?;
        let scale = Tensor::full(100.0, Vec::<usize>::new(), DType::F32, device)?;
        let d_loss = Tensor::full(1.0, Vec::<usize>::new(), DType::F32, device)?;
        {
            let (img, txt, scale) = (img.clone(), txt.clone(), scale.clone());
            w.push((
                workload(
                    format!("contrastive fwd bf16 N{n} D{d}"),
                    2.0 * (n * n * d) as f64,
                    move || Tensor::contrastive_loss(&img, &txt, &scale).map(drop),
                ),
                3,
            ));
        }
        w.push((
            workload(
                format!("contrastive fwd+bwd bf16 N{n} D{d}"),
                6.0 * (n * n * d) as f64,
                move || {
                    let out = Tensor::contrastive_loss(&img, &txt, &scale)?;
                    Tensor::contrastive_loss_backward(&img, &txt, &scale, &out, &d_loss).map(drop)
                },
            ),
            3,
        ));
    }
    {
        let s = 8192;
        let (a, b) = (bf16(&[s, s], 12)?, bf16(&[s, s], 13)?);
        w.push((
            workload(
                format!("matmul bf16 {s}x{s}x{s}"),
                2.0 * (s * s * s) as f64,
                move || a.matmul(&b).map(drop),
            ),
            5,
        ));
    }
    // The pieces of one ViT-B/16 layer at batch 256 (50432 tokens), to see where a forward's
    // time goes.
    {
        let rows = 256 * 197;
        let x = bf16(&[rows, 768], 20)?;
        let w_qkv = bf16(&[2304, 768], 21)?;
        let b_qkv = bf16(&[2304], 22)?;
        w.push((
            workload(
                format!("linear bf16 {rows}x768 -> 2304"),
                2.0 * (rows * 768 * 2304) as f64,
                move || x.linear(&w_qkv, Some(&b_qkv)).map(drop),
            ),
            10,
        ));
        let x = bf16(&[rows, 768], 23)?;
        let (g, b) = (bf16(&[768], 24)?, bf16(&[768], 25)?);
        w.push((
            workload(format!("layer_norm bf16 {rows}x768"), 0.0, move || {
                x.layer_norm(Some(&g), Some(&b), 1e-12).map(drop)
            }),
            20,
        ));
        let h = bf16(&[rows, 3072], 26)?;
        w.push((
            workload(format!("gelu bf16 {rows}x3072"), 0.0, move || {
                h.gelu_erf().map(drop)
            }),
            20,
        ));
        let (r1, r2) = (bf16(&[rows, 768], 27)?, bf16(&[rows, 768], 28)?);
        w.push((
            workload(format!("add bf16 {rows}x768"), 0.0, move || {
                r1.add(&r2).map(drop)
            }),
            20,
        ));
        // q, k, v as the model makes them: (B, N, H, D) projections seen as (B, H, N, D).
        let qkv = bf16(&[256, 197, 3, 12, 64], 29)?;
        let view = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i, 1)?.squeeze(2)?.permute(&[0, 2, 1, 3])
        };
        let (q, k, v) = (view(0)?, view(1)?, view(2)?);
        let opts = AttentionOptions::default();
        w.push((
            workload(
                "attention fwd bf16 B256 H12 N197 D64 (strided q/k/v)".to_string(),
                4.0 * (256usize * 12 * 197 * 197 * 64) as f64,
                move || Tensor::attention(&q, &k, &v, &opts).map(drop),
            ),
            10,
        ));
    }
    {
        let batch = 256;
        let cfg = glimpse_vit::ViTConfig::vit_base_patch16_224(1000);
        let vb = glimpse_vit::random_weights(&cfg, true, DType::BF16, device)?;
        let model = glimpse_vit::ViTForImageClassification::new(&cfg, vb)?;
        let pixels = bf16(&[batch, 3, 224, 224], 14)?;
        w.push((
            workload(
                format!("ViT-B/16 bf16 batch {batch}"),
                VIT_B16_FLOPS * batch as f64,
                move || model.forward(&pixels).map(drop),
            ),
            3,
        ));
    }
    Ok(w)
}

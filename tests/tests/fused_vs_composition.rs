//! The fused CPU kernels against their default compositions at sizes that cross the kernels'
//! tile boundaries (the per-op suites in glimpse-cpu use small shapes), for every kernel dtype,
//! with non-contiguous inputs.
//!
//! Tolerances: f32 kernels and compositions differ only in summation order (1e-4 absolute on
//! outputs of magnitude ~1); half inputs are converted to f32 the same way on both paths, so
//! the outputs differ by at most about one rounding of the output dtype.

use glimpse_tensor::{AttentionOptions, DType, PatchEmbedOptions, Result, Tensor, compose};
use proptest::prelude::*;

fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-4,
        DType::F16 => 4e-3,
        DType::BF16 => 3e-2,
        _ => 1e-9,
    }
}

fn assert_close(got: &Tensor, want: &Tensor, tol: f64, what: &str) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let (g, w) = (got.to_f64_vec()?, want.to_f64_vec()?);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = (a == b) || (a - b).abs() <= tol * (1.0 + b.abs());
        assert!(ok, "{what}: element {i}: fused {a} vs composed {b}");
    }
    Ok(())
}

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)]
}

/// A `(B, H, N, D)` tensor seen through a `(B, N, H, D)` buffer, as projections produce it.
fn heads_view(b: usize, h: usize, n: usize, d: usize, dtype: DType, seed: u64) -> Result<Tensor> {
    let dev = glimpse_cpu::device();
    Tensor::rand_normal(0.0, 1.0, [b, n, h, d], DType::F32, seed, &dev)?
        .to_dtype(dtype)?
        .permute(&[0, 2, 1, 3])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn attention_forward_and_backward(
        b in 1usize..3, h in 1usize..3, nq in 1usize..150, nk in 1usize..150,
        d in prop_oneof![Just(32usize), Just(64), Just(80), Just(128)],
        causal: bool, masked: bool, dtype in dtype_strategy(), seed in 0u64..1000,
    ) {
        let dev = glimpse_cpu::device();
        let q = heads_view(b, h, nq, d, dtype, seed).unwrap();
        let k = heads_view(b, h, nk, d, dtype, seed + 1).unwrap();
        let v = heads_view(b, h, nk, d, dtype, seed + 2).unwrap();
        let mask = masked.then(|| {
            let keep: Vec<u32> = (0..b * nk).map(|i| u32::from(!(i * 7 + seed as usize).is_multiple_of(5))).collect();
            Tensor::from_vec(keep, [b, nk], &dev).unwrap()
        });
        let opts = AttentionOptions { scale: None, causal, key_padding_mask: mask };
        let fused = Tensor::attention(&q, &k, &v, &opts).unwrap();
        let composed = compose::attention(&q, &k, &v, &opts).unwrap();
        let what = format!("attention {dtype} b{b} h{h} nq{nq} nk{nk} d{d} causal {causal} masked {masked}");
        assert_close(&fused.out, &composed.out, tol(dtype), &what).unwrap();
        assert_close(&fused.lse, &composed.lse, 1e-4, &what).unwrap();

        let d_out = heads_view(b, h, nq, d, dtype, seed + 3).unwrap();
        let gf = Tensor::attention_backward(&q, &k, &v, &fused, &d_out, &opts).unwrap();
        let gc = compose::attention_backward(&q, &k, &v, &composed, &d_out, &opts).unwrap();
        // Gradients sum over up to nk (or nq) terms of magnitude ~1.
        let gtol = tol(dtype) * 4.0;
        assert_close(&gf.dq, &gc.dq, gtol, &format!("dq {what}")).unwrap();
        assert_close(&gf.dk, &gc.dk, gtol, &format!("dk {what}")).unwrap();
        assert_close(&gf.dv, &gc.dv, gtol, &format!("dv {what}")).unwrap();
    }

    #[test]
    fn patch_embedding(
        b in 1usize..3, c in 1usize..4, hp in 1usize..6, wp in 1usize..6,
        p in prop_oneof![Just(4usize), Just(14), Just(16)], extra in 0usize..3,
        e in prop_oneof![Just(8usize), Just(48), Just(96)],
        class: bool, pos: bool, bias: bool, dtype in dtype_strategy(), seed in 0u64..1000,
    ) {
        let dev = glimpse_cpu::device();
        let rnd = |shape: Vec<usize>, s: u64| Tensor::rand_normal(0.0, 0.5, shape, DType::F32, seed + s, &dev).unwrap().to_dtype(dtype).unwrap();
        // Pixels beyond the last whole patch are ignored, as by a strided convolution.
        let images = rnd(vec![b, c, hp * p + extra, wp * p + extra], 0);
        let weight = rnd(vec![e, c, p, p], 1);
        let bias_t = bias.then(|| rnd(vec![e], 2));
        let rows = hp * wp + usize::from(class);
        let opts = PatchEmbedOptions {
            patch_size: p,
            class_embedding: class.then(|| rnd(vec![e], 3)),
            position_embedding: pos.then(|| rnd(vec![rows, e], 4)),
        };
        let fused = Tensor::patch_embed(&images, &weight, bias_t.as_ref(), &opts).unwrap();
        let composed = compose::patch_embed(&images, &weight, bias_t.as_ref(), &opts).unwrap();
        assert_close(&fused, &composed, tol(dtype) * 2.0, &format!("patch_embed {dtype} p{p} e{e}")).unwrap();
    }

    #[test]
    fn contrastive_loss_and_gradients(
        n in 1usize..400, d in 1usize..80, scale in 1.0f64..100.0,
        dtype in dtype_strategy(), seed in 0u64..1000,
    ) {
        let dev = glimpse_cpu::device();
        let unit = |s: u64| {
            let x = Tensor::rand_normal(0.0, 1.0, [n, d], DType::F32, seed + s, &dev).unwrap();
            x.div(&x.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap()).unwrap().to_dtype(dtype).unwrap()
        };
        let (img, txt) = (unit(0), unit(1));
        let scale_t = Tensor::full(scale, (), DType::F32, &dev).unwrap();
        let fused = Tensor::contrastive_loss(&img, &txt, &scale_t).unwrap();
        let composed = compose::contrastive_loss(&img, &txt, &scale_t).unwrap();
        let what = format!("contrastive {dtype} n{n} d{d} scale {scale}");
        // The loss and log-sum-exps are computed in f32 on both paths.
        assert_close(&fused.loss, &composed.loss, 1e-4, &what).unwrap();
        assert_close(&fused.lse_rows, &composed.lse_rows, 1e-4, &what).unwrap();
        assert_close(&fused.lse_cols, &composed.lse_cols, 1e-4, &what).unwrap();
        let g = Tensor::full(0.7, (), DType::F32, &dev).unwrap();
        let gf = Tensor::contrastive_loss_backward(&img, &txt, &scale_t, &fused, &g).unwrap();
        let gc = compose::contrastive_loss_backward(&img, &txt, &scale_t, &composed, &g).unwrap();
        // Gradients are O(scale / n); compare relative to that size.
        let gtol = tol(dtype) * scale;
        assert_close(&gf.d_image, &gc.d_image, gtol, &format!("d_image {what}")).unwrap();
        assert_close(&gf.d_text, &gc.d_text, gtol, &format!("d_text {what}")).unwrap();
        assert_close(&gf.d_scale, &gc.d_scale, 1e-3, &format!("d_scale {what}")).unwrap();
    }

    #[test]
    fn layer_norm_softmax_gelu(
        rows in 1usize..40, cols in 1usize..1100, dtype in dtype_strategy(), seed in 0u64..1000,
    ) {
        let dev = glimpse_cpu::device();
        // Transposed storage: the kernels read a non-contiguous view.
        let x = Tensor::rand_normal(0.3, 2.0, [cols, rows], DType::F32, seed, &dev).unwrap().to_dtype(dtype).unwrap().t().unwrap();
        let w = Tensor::rand_normal(1.0, 0.2, [cols], DType::F32, seed + 1, &dev).unwrap().to_dtype(dtype).unwrap();
        let b = Tensor::rand_normal(0.0, 0.2, [cols], DType::F32, seed + 2, &dev).unwrap().to_dtype(dtype).unwrap();
        let what = format!("{dtype} {rows}x{cols}");
        assert_close(&x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap(), &compose::layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap(), tol(dtype), &format!("layer_norm {what}")).unwrap();
        assert_close(&x.softmax(-1).unwrap(), &compose::softmax_last_dim(&x).unwrap(), tol(dtype), &format!("softmax {what}")).unwrap();
        assert_close(&x.log_softmax(-1).unwrap(), &compose::log_softmax_last_dim(&x).unwrap(), tol(dtype), &format!("log_softmax {what}")).unwrap();
        for kind in [glimpse_tensor::GeluKind::Erf, glimpse_tensor::GeluKind::Tanh, glimpse_tensor::GeluKind::Quick] {
            assert_close(&x.gelu(kind).unwrap(), &x.unary(kind.unary_op()).unwrap(), tol(dtype), &format!("{kind:?} {what}")).unwrap();
        }
    }

    #[test]
    fn layer_norm_and_gelu_backward(
        rows in 1usize..40, cols in 1usize..1100, dtype in dtype_strategy(), affine: bool, seed in 0u64..1000,
    ) {
        let dev = glimpse_cpu::device();
        let x = Tensor::rand_normal(0.3, 2.0, [cols, rows], DType::F32, seed, &dev).unwrap().to_dtype(dtype).unwrap().t().unwrap();
        let g = Tensor::rand_normal(0.0, 1.0, [rows, cols], DType::F32, seed + 1, &dev).unwrap().to_dtype(dtype).unwrap();
        let w = Tensor::rand_normal(1.0, 0.2, [cols], DType::F32, seed + 2, &dev).unwrap().to_dtype(dtype).unwrap();
        let w = affine.then_some(&w);
        let what = format!("{dtype} {rows}x{cols}");
        let fused = x.layer_norm_backward(w, 1e-5, &g).unwrap();
        let composed = compose::layer_norm_backward(&x, w, 1e-5, &g).unwrap();
        // Column sums over `rows` rows: the tolerance grows with the number of terms.
        let sum_tol = tol(dtype) * (rows as f64).sqrt() * 4.0;
        assert_close(&fused.dx, &composed.dx, tol(dtype) * 4.0, &format!("layer_norm dx {what}")).unwrap();
        assert_close(&fused.dbias, &composed.dbias, sum_tol, &format!("layer_norm dbias {what}")).unwrap();
        assert_eq!(fused.dweight.is_some(), affine);
        if let (Some(a), Some(b)) = (&fused.dweight, &composed.dweight) {
            assert_close(a, b, sum_tol, &format!("layer_norm dweight {what}")).unwrap();
        }
        for kind in [glimpse_tensor::GeluKind::Erf, glimpse_tensor::GeluKind::Tanh, glimpse_tensor::GeluKind::Quick] {
            assert_close(&x.gelu_backward(&g, kind).unwrap(), &compose::gelu_backward(&x, &g, kind).unwrap(), tol(dtype), &format!("{kind:?} backward {what}")).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The fused linear layer (packed weight panels, bias as the GEMM's starting value)
    /// against `x @ W^T + b`, with `x` contiguous or a transposed view, weights big enough to be
    /// cached or not, and each call made twice (the second one reads the cached panels).
    #[test]
    fn linear_layer(
        m in 1usize..80, k in 1usize..300, n in 1usize..200,
        bias: bool, transposed_x: bool, dtype in dtype_strategy(), seed in 0u64..1000,
    ) {
        let dev = glimpse_cpu::device();
        let x = if transposed_x {
            Tensor::rand_normal(0.0, 1.0, [k, m], DType::F32, seed, &dev).unwrap().to_dtype(dtype).unwrap().t().unwrap()
        } else {
            Tensor::rand_normal(0.0, 1.0, [m, k], DType::F32, seed, &dev).unwrap().to_dtype(dtype).unwrap()
        };
        let w = Tensor::rand_normal(0.0, 1.0, [n, k], DType::F32, seed + 1, &dev).unwrap().to_dtype(dtype).unwrap();
        let b = bias.then(|| Tensor::rand_normal(0.0, 1.0, [n], DType::F32, seed + 2, &dev).unwrap().to_dtype(dtype).unwrap());
        let composed = compose::linear(&x, &w, b.as_ref()).unwrap();
        let what = format!("linear {dtype} m{m} k{k} n{n} bias {bias} transposed {transposed_x}");
        for _ in 0..2 {
            let fused = x.linear(&w, b.as_ref()).unwrap();
            assert_close(&fused, &composed, tol(dtype), &what).unwrap();
        }
    }
}

/// A weight dropped and replaced by another of the same shape (often at the same address)
/// must not be served the old weight's cached panels.
#[test]
fn linear_never_reuses_the_panels_of_a_dropped_weight() {
    let dev = glimpse_cpu::device();
    let x = Tensor::rand_normal(0.0, 1.0, [7, 256], DType::F32, 1, &dev).unwrap();
    for seed in 0..20u64 {
        let w = Tensor::rand_normal(0.0, 1.0, [128, 256], DType::F32, 100 + seed, &dev).unwrap();
        let want = compose::linear(&x, &w, None).unwrap();
        assert_close(&x.linear(&w, None).unwrap(), &want, 1e-4, "first call").unwrap();
        assert_close(&x.linear(&w, None).unwrap(), &want, 1e-4, "cached call").unwrap();
        // A view of the same storage with another layout is another weight.
        let w2 = w.narrow(0, 64, 64).unwrap();
        let want2 = compose::linear(&x, &w2, None).unwrap();
        assert_close(&x.linear(&w2, None).unwrap(), &want2, 1e-4, "narrowed view").unwrap();
    }
}

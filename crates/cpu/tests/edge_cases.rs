//! Inputs at the edges (overflowing shapes, NaN bounds, zero-size dimensions) give a clear
//! `Err` or a well-defined result, never a panic, and the fused and composed paths agree.

use glimpse_tensor::{AttentionOptions, DType, Error, PatchEmbedOptions, Result, Tensor, compose};

fn dev() -> glimpse_tensor::Device {
    glimpse_cpu::device()
}

fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    // Tensors are immutable, so nothing is left half-updated if `f` unwinds.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| panic!("{what} panicked"))
}

#[test]
fn shapes_whose_size_overflows_are_errors() {
    let d = dev();
    let huge = [1usize << 32, 1 << 32];
    assert!(matches!(
        no_panic("zeros", || Tensor::zeros(huge, DType::F32, &d)),
        Err(Error::BadShape { .. })
    ));
    assert!(no_panic("zeros", || Tensor::zeros([usize::MAX / 2], DType::F32, &d)).is_err());
    assert!(
        no_panic("rand", || Tensor::rand_normal(
            0.0,
            1.0,
            huge,
            DType::F32,
            0,
            &d
        ))
        .is_err()
    );
    assert!(no_panic("arange", || Tensor::arange(0.0, 1e19, DType::F32, &d)).is_err());
    let x = Tensor::ones([1, 2], DType::F32, &d).unwrap();
    assert!(no_panic("broadcast", || x.broadcast_as([usize::MAX, 2])).is_err());
    assert!(no_panic("reshape", || x.reshape(huge)).is_err());
    // Views of huge (but representable) shapes are fine; results that could never be
    // allocated are errors before any allocation is tried.
    let a = x.broadcast_as([1 << 61, 1, 2]).unwrap();
    let col = Tensor::ones([1, 2, 1], DType::F32, &d).unwrap();
    assert!(no_panic("binary", || a.add(&col)).is_err());
    let b = Tensor::ones([1, 2, 2], DType::F32, &d).unwrap();
    assert!(no_panic("matmul", || a.matmul(&b)).is_err());
}

#[test]
fn bad_scalar_arguments_are_errors() {
    let d = dev();
    let x = Tensor::ones([3], DType::U32, &d).unwrap();
    assert!(no_panic("clamp nan", || x.clamp(f64::NAN, 2.0)).is_err());
    assert!(no_panic("clamp order", || x.clamp(3.0, 2.0)).is_err());
    assert_eq!(
        x.clamp(2.0, 5.0).unwrap().to_vec::<u32>().unwrap(),
        vec![2, 2, 2]
    );
    let y = Tensor::ones([2, 4], DType::F32, &d).unwrap();
    for eps in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(
            no_panic("layer_norm eps", || y.layer_norm(None, None, eps)).is_err(),
            "{eps}"
        );
    }
}

#[test]
fn degenerate_fused_inputs() {
    let d = dev();
    // A patch embedding over zero channels is rejected on every path alike.
    let images = Tensor::zeros([1, 0, 4, 4], DType::F32, &d).unwrap();
    let weight = Tensor::zeros([3, 0, 2, 2], DType::F32, &d).unwrap();
    let opts = PatchEmbedOptions {
        patch_size: 2,
        class_embedding: None,
        position_embedding: None,
    };
    assert!(
        no_panic("patch_embed C=0", || Tensor::patch_embed(
            &images, &weight, None, &opts
        ))
        .is_err()
    );
    // Attention with an empty head dimension has no meaningful default scale.
    let q = Tensor::zeros([1, 1, 3, 0], DType::F32, &d).unwrap();
    assert!(
        no_panic("attention D=0", || Tensor::attention(
            &q,
            &q,
            &q,
            &AttentionOptions::default()
        ))
        .is_err()
    );
    // Softmax over an empty last dimension is empty on every dtype.
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        let e = Tensor::zeros([2, 0], dtype, &d).unwrap();
        assert_eq!(e.softmax(-1).unwrap().dims(), &[2, 0]);
        assert_eq!(e.log_softmax(-1).unwrap().dims(), &[2, 0]);
    }
}

#[test]
fn contrastive_scale_gradient_has_the_scale_shape_on_both_paths() {
    let d = dev();
    for dtype in [DType::F32, DType::F64] {
        let img = Tensor::rand_normal(0.0, 0.3, [5, 4], dtype, 1, &d).unwrap();
        let txt = Tensor::rand_normal(0.0, 0.3, [5, 4], dtype, 2, &d).unwrap();
        let scale = Tensor::full(3.0, [1, 1], DType::F32, &d).unwrap();
        let one = Tensor::full(1.0, (), DType::F32, &d).unwrap();
        let saved = Tensor::contrastive_loss(&img, &txt, &scale).unwrap();
        let fused = Tensor::contrastive_loss_backward(&img, &txt, &scale, &saved, &one).unwrap();
        let composed =
            compose::contrastive_loss_backward(&img, &txt, &scale, &saved, &one).unwrap();
        for g in [&fused.d_scale, &composed.d_scale] {
            assert_eq!(g.dims(), &[1, 1], "{dtype}");
            assert_eq!(g.dtype(), DType::F32, "{dtype}");
        }
        let (a, b) = (
            fused.d_scale.to_f64_vec().unwrap()[0],
            composed.d_scale.to_f64_vec().unwrap()[0],
        );
        assert!(
            (a - b).abs() < 1e-5 * (1.0 + b.abs()),
            "{dtype}: {a} vs {b}"
        );
    }
}

#[test]
fn attention_backward_accepts_an_f64_lse_for_f32_inputs() {
    let d = dev();
    let q = Tensor::rand_normal(0.0, 1.0, [1, 2, 5, 8], DType::F32, 3, &d).unwrap();
    let mut out = Tensor::attention(&q, &q, &q, &AttentionOptions::default()).unwrap();
    let reference =
        Tensor::attention_backward(&q, &q, &q, &out, &out.out, &AttentionOptions::default())
            .unwrap();
    out.lse = out.lse.to_dtype(DType::F64).unwrap();
    let g = Tensor::attention_backward(&q, &q, &q, &out, &out.out, &AttentionOptions::default())
        .unwrap();
    assert_eq!(
        g.dq.to_vec::<f32>().unwrap(),
        reference.dq.to_vec::<f32>().unwrap()
    );
}

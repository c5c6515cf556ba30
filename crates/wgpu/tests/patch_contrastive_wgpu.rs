//! Patch embedding and the contrastive loss of the wgpu backend (kernels/wgsl/patch_embed.wgsl
//! and contrastive.wgsl), forward and every gradient, against the CPU backend on the same
//! inputs: the same values in the same views (contiguous, permuted, narrowed, broadcast) on both
//! devices, poisoned outputs on the device (an element a kernel forgets to write reads as NaN
//! and fails), f32 and f16, proptest shapes that cross the kernels' tiles (64 x 64 for patch
//! embedding, 32 x 32 and 16-deep steps for the contrastive loss), and no read-back inside the
//! ops.
//!
//! Comparisons are element-wise, `|gpu - cpu| <= t (|cpu| + s)`, with `t` the dtype's
//! tolerance and `s` the natural size of the output (for a sum of n terms of size about 1,
//! sqrt(n)), so that any wrong or missing term fails while rounding-order differences pass.

use glimpse_tensor::{ContrastiveOutput, DType, Device, PatchEmbedOptions, Tensor};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

mod common;

use common::*;

/// `got` has `want`'s dims and dtype and its values within `t (|want| + s)`.
fn close(got: &Tensor, want: &Tensor, t: f64, s: f64, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.dims(), want.dims(), "{}: dims", what);
    prop_assert_eq!(got.dtype(), want.dtype(), "{}: dtype", what);
    let (g, w) = (values(got), values(want));
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        prop_assert!(
            (a - b).abs() <= t * (b.abs() + s),
            "{}: element {} of {}: gpu {} vs cpu {} (t {}, s {})",
            what,
            i,
            g.len(),
            a,
            b,
            t,
            s
        );
    }
    Ok(())
}

/// [`close`] for an optional output: both sides have it (and are close) or neither has it and
/// it was not `expected`.
fn close_opt(
    [got, want]: [&Option<Tensor>; 2],
    expected: bool,
    t: f64,
    s: f64,
    what: &str,
) -> Result<(), TestCaseError> {
    match (got, want) {
        (Some(a), Some(b)) => close(a, b, t, s, what)?,
        (None, None) => prop_assert!(!expected, "{}: missing on both sides", what),
        _ => prop_assert!(false, "{} present on one side only", what),
    }
    Ok(())
}

/// The tolerance of an output of `dtype` whose f32 arithmetic carries relative error `f32_t`.
fn t_of(dtype: DType, f32_t: f64) -> f64 {
    tol(dtype).max(f32_t)
}

/// `op` run with the device's side of each [`Pair`] and `dev`, then with the CPU's side and
/// the CPU: `(got, want)`.
fn both<R>(dev: &Device, op: impl Fn(fn(&Pair) -> &Tensor, &Device) -> R) -> (R, R) {
    (op(|p| &p.gpu, dev), op(|p| &p.cpu, &cpu()))
}

/// Runs `check_one` on `cases` values of `strategy` on the device (see [`check`]), serialised
/// with the other tests of this binary.
fn prop<C: std::fmt::Debug>(
    name: &str,
    cases: u32,
    strategy: impl Strategy<Value = C>,
    check_one: fn(&Device, &C) -> Result<(), TestCaseError>,
) {
    let _serial = serial();
    check(name, cases, strategy, |dev, c| check_one(dev, &c));
}

/// Runs `check` on each of `cases` whose dtype (`dtype_of`) the device computes with, or
/// skips without an adapter; serialised with the other tests of this binary.
fn each_case<C: std::fmt::Debug>(
    name: &str,
    cases: &[C],
    dtype_of: impl Fn(&C) -> DType,
    check: impl Fn(&Device, &C) -> Result<(), TestCaseError>,
) {
    let _serial = serial();
    let Some(dev) = gpu(name) else {
        return;
    };
    for c in cases.iter().filter(|c| floats().contains(&dtype_of(c))) {
        check(&dev, c).unwrap_or_else(|e| panic!("{name} {c:?}: {e}"));
    }
}

// ---------------------------------------------------------------------------------- patch_embed

#[derive(Clone, Debug)]
struct PatchCase {
    b: usize,
    c: usize,
    p: usize,
    /// Patches per column and row of the image.
    gh: usize,
    gw: usize,
    /// Pixels below and right of the last patch (cropped), each `< p`.
    crop: (usize, usize),
    e: usize,
    dtype: DType,
    bias: bool,
    cls: bool,
    pos: bool,
    need_images: bool,
    /// Layouts of the images, the weight, the small operands and d_out.
    kinds: (Kind, Kind, Kind, Kind),
    seed: u64,
}

impl PatchCase {
    fn hw(&self) -> (usize, usize) {
        (
            self.gh * self.p + self.crop.0,
            self.gw * self.p + self.crop.1,
        )
    }
    fn rows(&self) -> usize {
        self.gh * self.gw + usize::from(self.cls)
    }
}

fn patch_case() -> impl Strategy<Value = PatchCase> {
    (
        (0..=3usize, 1..=3usize, 1..=8usize, 1..=6usize, 1..=6usize),
        (0..8usize, 0..8usize, 1..=80usize, any_float()),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (any_kind(), any_kind(), any_kind(), any_kind()),
        any::<u64>(),
    )
        .prop_map(
            |(
                (b, c, p, gh, gw),
                (ch, cw, e, dtype),
                (bias, cls, pos, need_images),
                kinds,
                seed,
            )| {
                PatchCase {
                    b,
                    c,
                    p,
                    gh,
                    gw,
                    crop: (ch % p, cw % p),
                    e,
                    dtype,
                    bias,
                    cls,
                    pos,
                    need_images,
                    kinds,
                    seed,
                }
            },
        )
}

/// The inputs of one case on both devices: images, weight, bias, class row, position rows.
struct PatchInputs {
    images: Pair,
    weight: Pair,
    bias: Pair,
    cls: Pair,
    pos: Pair,
}

fn patch_inputs(c: &PatchCase, g: &mut Gen, dev: &Device) -> PatchInputs {
    let (h, w) = c.hw();
    let u = Values::Uniform(-1.0, 1.0);
    PatchInputs {
        images: pair(&[c.b, c.c, h, w], c.dtype, c.kinds.0, u, g, dev),
        weight: pair(
            &[c.e, c.c, c.p, c.p],
            c.dtype,
            c.kinds.1,
            Values::Uniform(-0.5, 0.5),
            g,
            dev,
        ),
        bias: pair(&[c.e], c.dtype, c.kinds.2, u, g, dev),
        cls: pair(&[c.e], c.dtype, c.kinds.2, u, g, dev),
        pos: pair(&[c.rows(), c.e], c.dtype, c.kinds.2, u, g, dev),
    }
}

fn patch_opts(c: &PatchCase, cls: &Tensor, pos: &Tensor) -> PatchEmbedOptions {
    PatchEmbedOptions {
        patch_size: c.p,
        class_embedding: c.cls.then(|| cls.clone()),
        position_embedding: c.pos.then(|| pos.clone()),
    }
}

/// Sizes of sums of `n` terms of size about 1.
fn size_of_sum(n: usize) -> f64 {
    (n as f64).sqrt().max(1.0)
}

fn check_patch(dev: &Device, c: &PatchCase) -> Result<(), TestCaseError> {
    let mut g = Gen::new(c.seed);
    let x = patch_inputs(c, &mut g, dev);
    let opts = |on: fn(&Pair) -> &Tensor| patch_opts(c, on(&x.cls), on(&x.pos));
    let k = c.c * c.p * c.p;
    let t = t_of(c.dtype, 1e-5);

    let (got, want) = both(dev, |on, _| {
        let bias = c.bias.then_some(on(&x.bias));
        Tensor::patch_embed(on(&x.images), on(&x.weight), bias, &opts(on)).unwrap()
    });
    close(&got, &want, t, size_of_sum(k), "patch_embed")?;

    let d_out = pair(
        &[c.b, c.rows(), c.e],
        c.dtype,
        c.kinds.3,
        Values::Uniform(-1.0, 1.0),
        &mut g,
        dev,
    );
    let (got, want) = both(dev, |on, _| {
        let (images, weight) = (on(&x.images), on(&x.weight));
        Tensor::patch_embed_backward(images, weight, &opts(on), on(&d_out), c.need_images).unwrap()
    });
    let m = c.b * c.gh * c.gw;
    close(&got.d_weight, &want.d_weight, t, size_of_sum(m), "d_weight")?;
    close(&got.d_bias, &want.d_bias, t, size_of_sum(m), "d_bias")?;
    let (d_images, sb) = ([&got.d_images, &want.d_images], size_of_sum(c.b));
    close_opt(
        d_images,
        c.need_images,
        t,
        size_of_sum(c.e) / 2.0,
        "d_images",
    )?;
    close_opt([&got.d_class, &want.d_class], c.cls, t, sb, "d_class")?;
    close_opt(
        [&got.d_position, &want.d_position],
        c.pos,
        t,
        sb,
        "d_position",
    )
}

#[test]
fn patch_embed_and_gradients_match_cpu() {
    let name = "patch_embed_and_gradients_match_cpu";
    prop(name, 64, patch_case(), check_patch);
}

/// A small contiguous f32 case with every option on.
fn plain_patch_case() -> PatchCase {
    PatchCase {
        b: 2,
        c: 3,
        p: 4,
        gh: 3,
        gw: 2,
        crop: (0, 0),
        e: 5,
        dtype: DType::F32,
        bias: true,
        cls: true,
        pos: true,
        need_images: true,
        kinds: (
            Kind::Contiguous,
            Kind::Contiguous,
            Kind::Contiguous,
            Kind::Contiguous,
        ),
        seed: 7,
    }
}

#[test]
fn patch_embed_edge_cases() {
    let base = plain_patch_case();
    let cases = [
        // One patch per image, P = 1 (a 1 x 1 convolution), the largest cropped edges.
        PatchCase {
            gh: 1,
            gw: 1,
            ..base.clone()
        },
        PatchCase {
            p: 1,
            gh: 5,
            gw: 7,
            ..base.clone()
        },
        PatchCase {
            p: 8,
            crop: (7, 7),
            ..base.clone()
        },
        // An NHWC buffer seen as NCHW (unit channel stride), and an empty batch.
        PatchCase {
            kinds: (
                Kind::Permuted,
                Kind::Permuted,
                Kind::Narrowed,
                Kind::Broadcast,
            ),
            ..base.clone()
        },
        PatchCase {
            b: 0,
            ..base.clone()
        },
        // Exactly one and just over one 64-wide tile of every GEMM dimension.
        PatchCase {
            b: 4,
            gh: 4,
            gw: 4,
            c: 1,
            p: 8,
            e: 64,
            cls: false,
            ..base.clone()
        },
        PatchCase {
            b: 5,
            gh: 4,
            gw: 4,
            c: 1,
            p: 8,
            e: 65,
            dtype: DType::F16,
            ..base.clone()
        },
    ];
    each_case("patch_embed_edge_cases", &cases, |c| c.dtype, check_patch);
}

/// ViT-B/16 and CLIP-L/14 at 224 pixels, f32, batch 2, forward and gradients.
#[test]
fn patch_embed_vit_shape() {
    let vit = PatchCase {
        p: 16,
        gh: 14,
        gw: 14,
        e: 768,
        seed: 16,
        ..plain_patch_case()
    };
    let clip_l = PatchCase {
        p: 14,
        gh: 16,
        gw: 16,
        e: 1024,
        need_images: false,
        seed: 14,
        ..vit.clone()
    };
    each_case(
        "patch_embed_vit_shape",
        &[vit, clip_l],
        |c| c.dtype,
        check_patch,
    );
}

// ---------------------------------------------------------------------------------- contrastive

#[derive(Clone, Debug)]
struct ClipCase {
    n: usize,
    d: usize,
    dtype: DType,
    scale: f64,
    d_loss: f64,
    /// Dtype of the scale, d_loss and the saved log-sum-exps (f32 or f16).
    side_dtype: DType,
    /// The scale's shape: `[]`, `[1]` or `[1, 1]`.
    scale_rank: usize,
    /// The saved log-sum-exps as a strided view (every second element of a buffer).
    strided_lse: bool,
    kinds: (Kind, Kind),
    seed: u64,
}

fn clip_case() -> impl Strategy<Value = ClipCase> {
    (
        (1..=70usize, 1..=80usize, any_float()),
        (
            prop::sample::select(vec![1.0f64, 0.5, 14.285, 100.0]),
            -2.0f64..2.0,
            any_float(),
            0..=2usize,
            any::<bool>(),
        ),
        (any_kind(), any_kind()),
        any::<u64>(),
    )
        .prop_map(
            |((n, d, dtype), (scale, d_loss, side_dtype, scale_rank, strided_lse), kinds, seed)| {
                ClipCase {
                    n,
                    d,
                    dtype,
                    scale,
                    d_loss,
                    side_dtype,
                    scale_rank,
                    strided_lse,
                    kinds,
                    seed,
                }
            },
        )
}

/// A one-element tensor of `dtype` and rank `rank` holding `v`, on `dev`.
fn scalar(v: f64, dtype: DType, rank: usize, dev: &Device) -> Tensor {
    tensor(&[v], &vec![1; rank], dtype, dev)
}

/// `v` (a CPU vector) as a vector of `dtype` on `dev`, contiguous or as every second element.
fn saved_vector(v: &Tensor, dtype: DType, strided: bool, dev: &Device) -> Tensor {
    let vals = values(v);
    if !strided {
        return tensor(&vals, &[vals.len()], dtype, dev);
    }
    let wide: Vec<f64> = vals.iter().flat_map(|&x| [x, f64::NAN]).collect();
    let t = tensor(&wide, &[vals.len(), 2], dtype, dev);
    t.narrow(1, 0, 1).unwrap().squeeze(1).unwrap()
}

fn check_clip(dev: &Device, c: &ClipCase) -> Result<(), TestCaseError> {
    let mut g = Gen::new(c.seed);
    // Rows of norm about 1, as CLIP's normalised embeddings: logits within about +-scale.
    let a = (3.0 / c.d.max(1) as f64).sqrt();
    let mut embeddings = |kind| {
        pair(
            &[c.n, c.d],
            c.dtype,
            kind,
            Values::Uniform(-a, a),
            &mut g,
            dev,
        )
    };
    let (image, text) = (embeddings(c.kinds.0), embeddings(c.kinds.1));
    let scale = |dev: &Device| scalar(c.scale, c.side_dtype, c.scale_rank, dev);

    let (got, want) = both(dev, |on, dev| {
        Tensor::contrastive_loss(on(&image), on(&text), &scale(dev)).unwrap()
    });
    // Logits carry f32 rounding of about 1e-7 * scale; outputs are f32 for every input dtype.
    let t = 2e-5;
    close(&got.loss, &want.loss, t, c.scale, "loss")?;
    close(&got.lse_rows, &want.lse_rows, t, c.scale, "lse_rows")?;
    close(&got.lse_cols, &want.lse_cols, t, c.scale, "lse_cols")?;

    // The backward from the same saved statistics (the CPU's, in the side dtype) on both sides.
    let saved = |dev: &Device| ContrastiveOutput {
        loss: want.loss.to_device(dev).unwrap(),
        lse_rows: saved_vector(&want.lse_rows, c.side_dtype, c.strided_lse, dev),
        lse_cols: saved_vector(&want.lse_cols, c.side_dtype, c.strided_lse, dev),
    };
    let (got, want) = both(dev, |on, dev| {
        let d_loss = scalar(c.d_loss, c.side_dtype, 0, dev);
        let (image, text) = (on(&image), on(&text));
        Tensor::contrastive_loss_backward(image, text, &scale(dev), &saved(dev), &d_loss).unwrap()
    });
    // Probabilities inherit the logits' rounding times the scale (about 1e-5 relative at
    // scale 100); the gradients' natural size is |d_loss| * scale / N * a per element.
    let t = t_of(c.dtype, 1e-4);
    let s = c.d_loss.abs() * c.scale * a / c.n as f64;
    close(&got.d_image, &want.d_image, t, s, "d_image")?;
    close(&got.d_text, &want.d_text, t, s, "d_text")?;
    let t = t_of(c.side_dtype, 1e-4);
    close(&got.d_scale, &want.d_scale, t, c.d_loss.abs(), "d_scale")
}

#[test]
fn contrastive_loss_and_gradients_match_cpu() {
    let name = "contrastive_loss_and_gradients_match_cpu";
    prop(name, 96, clip_case(), check_clip);
}

#[test]
fn contrastive_edge_cases() {
    let base = ClipCase {
        n: 33,
        d: 17,
        dtype: DType::F32,
        scale: 100.0,
        d_loss: 1.0,
        side_dtype: DType::F32,
        scale_rank: 0,
        strided_lse: false,
        kinds: (Kind::Contiguous, Kind::Contiguous),
        seed: 3,
    };
    let cases = [
        // One pair (the loss is 0 and so are the gradients), one row tile, exact tiles.
        ClipCase {
            n: 1,
            ..base.clone()
        },
        ClipCase {
            n: 32,
            d: 32,
            ..base.clone()
        },
        ClipCase {
            n: 64,
            d: 16,
            scale: 1.0,
            ..base.clone()
        },
        // Two full row tiles plus one row, D of one step plus one and of one chunk plus one.
        ClipCase {
            n: 65,
            d: 33,
            ..base.clone()
        },
        ClipCase {
            n: 70,
            d: 80,
            dtype: DType::F16,
            side_dtype: DType::F16,
            ..base.clone()
        },
        // Ten row tiles, strided inputs.
        ClipCase {
            n: 300,
            d: 64,
            scale: 14.285,
            kinds: (Kind::Narrowed, Kind::Permuted),
            ..base.clone()
        },
        // Embeddings without features: every logit is 0.
        ClipCase {
            n: 5,
            d: 0,
            ..base.clone()
        },
    ];
    each_case("contrastive_edge_cases", &cases, |c| c.dtype, check_clip);
}

/// The forward and backward record their dispatches without reading anything back.
#[test]
fn no_read_back_inside_the_ops() {
    let _serial = serial();
    let Some((dev, be)) = wgpu("no_read_back_inside_the_ops") else {
        return;
    };
    let mut g = Gen::new(1);
    let u = Values::Uniform(-1.0, 1.0);
    let mut input =
        |shape: &[usize]| pair(shape, DType::F32, Kind::Contiguous, u, &mut g, &dev).gpu;
    let images = input(&[2, 3, 9, 10]);
    let weight = input(&[6, 3, 4, 4]);
    let d_out = input(&[2, 4, 6]);
    let x = input(&[40, 8]);
    let y = input(&[40, 8]);
    let scale = scalar(10.0, DType::F32, 0, &dev);
    let d_loss = scalar(1.0, DType::F32, 0, &dev);
    be.synchronize().unwrap();
    let before = be.stats().readbacks;
    let opts = PatchEmbedOptions {
        patch_size: 4,
        class_embedding: None,
        position_embedding: None,
    };
    let out = Tensor::patch_embed(&images, &weight, None, &opts).unwrap();
    let grads = Tensor::patch_embed_backward(&images, &weight, &opts, &d_out, true).unwrap();
    let saved = Tensor::contrastive_loss(&x, &y, &scale).unwrap();
    let cg = Tensor::contrastive_loss_backward(&x, &y, &scale, &saved, &d_loss).unwrap();
    be.synchronize().unwrap();
    assert_eq!(
        be.stats().readbacks,
        before,
        "an op read back from the device"
    );
    // The results are real: nothing was left unwritten.
    for t in [
        &out,
        &grads.d_weight,
        grads.d_images.as_ref().unwrap(),
        &saved.loss,
        &cg.d_image,
        &cg.d_scale,
    ] {
        assert!(values(t).iter().all(|v| v.is_finite()));
    }
}

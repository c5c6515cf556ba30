//! Training losses, built from [`Tensor`] operations only so that the autodiff device can
//! differentiate them on any backend. Every loss returns a scalar tensor (shape `[]`).
//!
//! * [`cross_entropy`] is `torch.nn.functional.cross_entropy` with label smoothing and an
//!   ignored class index; [`itm_loss`] (BLIP's image-text matching) is the two-class case.
//! * [`lm_loss`] is the shifted next-token loss of causal language models.
//! * [`clip_loss`] is CLIP's symmetric contrastive loss with a learned temperature.
//!
//! Half-precision logits and embeddings are upcast to f32 first (the softmax and its sums
//! lose too much in f16), so the losses of half inputs are f32 tensors.

use glimpse_tensor::{DType, Error, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Options of [`cross_entropy`] and [`lm_loss`], as in PyTorch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CrossEntropyOptions {
    /// In [0, 1]: the target distribution puts `1 - label_smoothing` on the labelled class
    /// and spreads `label_smoothing` evenly over all classes.
    pub label_smoothing: f64,
    /// Targets equal to this do not contribute to the loss or to the mean's denominator
    /// (`-100` in PyTorch; token ids here are `u32`, so pick a value outside the classes, or
    /// the padding id).
    pub ignore_index: Option<u32>,
}

/// The largest temperature CLIP lets its similarity logits be multiplied by.
pub const CLIP_MAX_LOGIT_SCALE: f64 = 100.0;

/// `torch.nn.functional.cross_entropy(logits, targets, label_smoothing=..., ignore_index=...)`
/// with the mean reduction, for `logits (N, C)` (any float dtype) and `targets (N)` (`U32`):
///
/// `sum_i w_i [(1 - eps) (-log p_i[t_i]) + eps mean_c(-log p_i[c])] / sum_i w_i`, with
/// `w_i = 0` for ignored rows and 1 otherwise.
///
/// When every row is ignored (or `N = 0`) the result is NaN, as in PyTorch: 0 / 0. Targets
/// are read back to the host once, to reject any `>= C` (other than the ignored index) with a
/// clear error; ignored rows gather class 0 and are then masked out, so any value may mark
/// them.
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    opts: &CrossEntropyOptions,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    if logits.rank() != 2 {
        return Err(Error::bad_shape(
            OP,
            "logits must be (N, C)",
            logits.shape(),
        ));
    }
    let (n, c) = (logits.dims()[0], logits.dims()[1]);
    check_float(OP, logits)?;
    check_targets(OP, targets, &[n])?;
    let eps = opts.label_smoothing;
    if !(0.0..=1.0).contains(&eps) {
        return Err(Error::invalid(
            OP,
            format!("label_smoothing must be in [0, 1], got {eps}"),
        ));
    }
    if c == 0 {
        return Err(Error::bad_shape(
            OP,
            "logits need at least one class",
            logits.shape(),
        ));
    }

    // The host side: range checks, and the gather indices and mask (data, not parameters).
    let host = targets.to_vec::<u32>()?;
    let mut safe = Vec::with_capacity(n);
    let mut keep = Vec::with_capacity(n);
    for (i, &t) in host.iter().enumerate() {
        if opts.ignore_index == Some(t) {
            safe.push(0u32);
            keep.push(0u32);
        } else if t as usize >= c {
            return Err(Error::invalid(
                OP,
                format!("target {t} at row {i} is out of range for {c} classes"),
            ));
        } else {
            safe.push(t);
            keep.push(1u32);
        }
    }
    let kept = keep.iter().filter(|&&k| k == 1).count();
    let device = logits.device();

    let logits = logits.to_dtype(logits.dtype().compute_dtype())?;
    let log_probs = logits.log_softmax(1)?;
    let ids = Tensor::from_vec(safe, [n, 1], device)?;
    let nll = log_probs.gather(&ids, 1)?.reshape(n)?.neg()?;
    let per_row = if eps == 0.0 {
        nll
    } else {
        // mean over classes of -log p
        let smooth = log_probs.sum(1)?.affine(-1.0 / c as f64, 0.0)?;
        nll.affine(1.0 - eps, 0.0)?.add(&smooth.affine(eps, 0.0)?)?
    };
    // Selected, not multiplied by 0/1, so that an infinite loss on an ignored row (a -inf
    // logit) cannot turn the sum into NaN.
    let mask = Tensor::from_vec(keep, n, device)?;
    let per_row = mask.where_cond(&per_row, &per_row.zeros_like()?)?;
    let total = per_row.sum_all()?;
    total.div(&total.scalar_like(kept as f64)?)
}

/// BLIP's image-text matching loss: two-class cross-entropy over `logits (N, 2)` (column 1 =
/// "matches") with `labels (N)` in {0, 1}.
pub fn itm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    if logits.rank() != 2 || logits.dims()[1] != 2 {
        return Err(Error::bad_shape(
            "itm_loss",
            "logits must be (N, 2)",
            logits.shape(),
        ));
    }
    cross_entropy(logits, labels, &CrossEntropyOptions::default())
}

/// The causal language-modelling loss of `transformers`: the prediction at position `t`
/// (`logits (B, T, V)`) is scored against the label at `t + 1` (`labels (B, T)`, `U32`), so
/// positions `0..T-1` predict labels `1..T`; the mean is over the non-ignored labels of the
/// whole batch (NaN when all are ignored). Needs `T >= 2`.
pub fn lm_loss(logits: &Tensor, labels: &Tensor, opts: &CrossEntropyOptions) -> Result<Tensor> {
    const OP: &str = "lm_loss";
    if logits.rank() != 3 {
        return Err(Error::bad_shape(
            OP,
            "logits must be (B, T, V)",
            logits.shape(),
        ));
    }
    let (b, t, v) = (logits.dims()[0], logits.dims()[1], logits.dims()[2]);
    check_targets(OP, labels, &[b, t])?;
    if t < 2 {
        return Err(Error::bad_shape(
            OP,
            "needs at least 2 positions: each predicts the next one",
            logits.shape(),
        ));
    }
    let predictions = logits.narrow(1, 0, t - 1)?.reshape([b * (t - 1), v])?;
    let next = labels.narrow(1, 1, t - 1)?.reshape(b * (t - 1))?;
    cross_entropy(&predictions, &next, opts)
}

/// CLIP's contrastive loss. `image_embeds` and `text_embeds` are `(N, D)` with pair `i` on
/// row `i`; `logit_scale` is the one-element learned parameter holding the log of the
/// temperature, as stored in CLIP checkpoints.
///
/// Both embeddings are L2-normalised along `D` (`x / sqrt(sum x^2)`; an all-zero row gives
/// NaN, as in CLIP), the scale is `exp(logit_scale)` clamped to at most
/// [`CLIP_MAX_LOGIT_SCALE`] (so its gradient is zero while clamped), and the loss is the
/// mean of the image-to-text and text-to-image cross-entropies of `scale * img @ txt^T` with
/// the diagonal as labels ([`Tensor::contrastive_loss`]).
pub fn clip_loss(
    image_embeds: &Tensor,
    text_embeds: &Tensor,
    logit_scale: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "clip_loss";
    check_float(OP, image_embeds)?;
    check_float(OP, text_embeds)?;
    check_float(OP, logit_scale)?;
    if image_embeds.rank() != 2
        || image_embeds.shape() != text_embeds.shape()
        || image_embeds.dims()[0] == 0
        || image_embeds.dims()[1] == 0
    {
        return Err(Error::invalid(
            OP,
            format!(
                "image and text embeddings must both be (N, D) with N, D > 0, got {} and {}",
                image_embeds.shape(),
                text_embeds.shape()
            ),
        ));
    }
    if image_embeds.dtype() != text_embeds.dtype() {
        return Err(Error::DTypeMismatch {
            op: OP,
            expected: image_embeds.dtype(),
            got: text_embeds.dtype(),
        });
    }
    if logit_scale.elem_count() != 1 {
        return Err(Error::bad_shape(
            OP,
            "logit_scale must have exactly one element",
            logit_scale.shape(),
        ));
    }
    let normalise = |x: &Tensor| -> Result<Tensor> {
        let x = x.to_dtype(x.dtype().compute_dtype())?;
        x.div(&x.sqr()?.sum_keepdim(1)?.sqrt()?)
    };
    let image = normalise(image_embeds)?;
    let text = normalise(text_embeds)?;
    let scale = logit_scale
        .to_dtype(logit_scale.dtype().compute_dtype())?
        .exp()?
        .clamp(0.0, CLIP_MAX_LOGIT_SCALE)?;
    Ok(Tensor::contrastive_loss(&image, &text, &scale)?.loss)
}

fn check_float(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType {
            op,
            dtype: t.dtype(),
            backend: None,
        })
    }
}

fn check_targets(op: &'static str, targets: &Tensor, dims: &[usize]) -> Result<()> {
    if targets.dtype() != DType::U32 {
        return Err(Error::DTypeMismatch {
            op,
            expected: DType::U32,
            got: targets.dtype(),
        });
    }
    if targets.dims() != dims {
        return Err(Error::bad_shape(
            op,
            format!("targets must be {dims:?} to match the logits"),
            targets.shape(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use glimpse_tensor::Device;
    use proptest::prelude::*;

    use super::*;

    fn dev() -> Device {
        glimpse_cpu::device()
    }

    /// Cross-entropy on the host in f64, straight from the definition.
    fn ce_reference(logits: &[f64], c: usize, targets: &[u32], opts: &CrossEntropyOptions) -> f64 {
        let eps = opts.label_smoothing;
        let (mut total, mut kept) = (0.0, 0usize);
        for (row, &t) in logits.chunks(c).zip(targets) {
            if opts.ignore_index == Some(t) {
                continue;
            }
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            let nll = lse - row[t as usize];
            let smooth = row.iter().map(|x| lse - x).sum::<f64>() / c as f64;
            total += (1.0 - eps) * nll + eps * smooth;
            kept += 1;
        }
        total / kept as f64
    }

    fn upload(values: &[f64], shape: &[usize], dtype: DType, d: &Device) -> Tensor {
        Tensor::from_slice(values, shape, d)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn tolerance(dtype: DType) -> f64 {
        match dtype {
            DType::F64 => 1e-10,
            _ => 1e-4,
        }
    }

    fn ce_case() -> impl Strategy<Value = (usize, usize, Vec<f64>, Vec<u32>)> {
        (1usize..6, 1usize..7).prop_flat_map(|(n, c)| {
            (
                Just(n),
                Just(c),
                prop::collection::vec(-8.0f64..8.0, n * c),
                prop::collection::vec(0u32..c as u32, n),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn cross_entropy_matches_reference(
            (n, c, logits, targets) in ce_case(),
            smoothing in prop_oneof![Just(0.0), 0.0f64..1.0],
            ignore_first_class in any::<bool>(),
            f64_dtype in any::<bool>(),
        ) {
            let d = dev();
            let dtype = if f64_dtype { DType::F64 } else { DType::F32 };
            let opts = CrossEntropyOptions {
                label_smoothing: smoothing,
                ignore_index: ignore_first_class.then_some(0),
            };
            let lt = upload(&logits, &[n, c], dtype, &d);
            let tt = Tensor::from_slice(&targets, n, &d).unwrap();
            let loss = cross_entropy(&lt, &tt, &opts).unwrap();
            prop_assert_eq!(loss.dims(), &[] as &[usize]);
            prop_assert_eq!(loss.dtype(), dtype);
            let got = loss.to_f64_vec().unwrap()[0];
            let want = ce_reference(&logits, c, &targets, &opts);
            if want.is_nan() {
                prop_assert!(got.is_nan());
            } else {
                prop_assert!((got - want).abs() <= tolerance(dtype) * (1.0 + want.abs()), "{} vs {}", got, want);
            }
        }

        #[test]
        fn lm_loss_matches_reference(
            b in 1usize..3,
            t in 2usize..5,
            v in 1usize..6,
            seed in 0u64..1000,
            smoothing in prop_oneof![Just(0.0), 0.0f64..0.5],
            f64_dtype in any::<bool>(),
        ) {
            let d = dev();
            let dtype = if f64_dtype { DType::F64 } else { DType::F32 };
            let logits = Tensor::rand_normal(0.0, 2.0, [b, t, v], DType::F64, seed, &d).unwrap();
            let host_logits = logits.to_f64_vec().unwrap();
            // Labels include the ignored id `v` (out of the vocabulary) now and then.
            let labels: Vec<u32> = (0..b * t).map(|i| ((i as u64 * 7 + seed) % (v as u64 + 1)) as u32).collect();
            let opts = CrossEntropyOptions { label_smoothing: smoothing, ignore_index: Some(v as u32) };
            let lt = logits.to_dtype(dtype).unwrap();
            let yt = Tensor::from_slice(&labels, [b, t], &d).unwrap();
            let got = lm_loss(&lt, &yt, &opts).unwrap().to_f64_vec().unwrap()[0];
            // The shift by hand: rows (bi, 0..t-1) of the logits, labels (bi, 1..t).
            let mut rows = Vec::new();
            let mut next = Vec::new();
            for bi in 0..b {
                for ti in 0..t - 1 {
                    let start = (bi * t + ti) * v;
                    rows.extend_from_slice(&host_logits[start..start + v]);
                    next.push(labels[bi * t + ti + 1]);
                }
            }
            let want = ce_reference(&rows, v, &next, &opts);
            if want.is_nan() {
                prop_assert!(got.is_nan());
            } else {
                prop_assert!((got - want).abs() <= tolerance(dtype) * (1.0 + want.abs()), "{} vs {}", got, want);
            }
        }

        #[test]
        fn clip_loss_matches_reference(
            n in 1usize..6,
            dim in 1usize..6,
            seed in 0u64..1000,
            logit_scale in -1.0f64..6.0,
            f64_dtype in any::<bool>(),
        ) {
            let d = dev();
            let dtype = if f64_dtype { DType::F64 } else { DType::F32 };
            let img = Tensor::rand_normal(0.0, 1.0, [n, dim], DType::F64, seed, &d).unwrap();
            let txt = Tensor::rand_normal(0.0, 1.0, [n, dim], DType::F64, seed + 1, &d).unwrap();
            let (hi, ht) = (img.to_f64_vec().unwrap(), txt.to_f64_vec().unwrap());
            let ls = upload(&[logit_scale], &[], dtype, &d);
            let got = clip_loss(&img.to_dtype(dtype).unwrap(), &txt.to_dtype(dtype).unwrap(), &ls)
                .unwrap();
            prop_assert_eq!(got.dims(), &[] as &[usize]);
            let got = got.to_f64_vec().unwrap()[0];
            let want = clip_reference(&hi, &ht, n, dim, logit_scale);
            prop_assert!((got - want).abs() <= tolerance(dtype) * (1.0 + want.abs()), "{} vs {}", got, want);
        }
    }

    fn clip_reference(img: &[f64], txt: &[f64], n: usize, dim: usize, logit_scale: f64) -> f64 {
        let norm = |x: &[f64]| -> Vec<f64> {
            x.chunks(dim)
                .flat_map(|r| {
                    let l = r.iter().map(|v| v * v).sum::<f64>().sqrt();
                    r.iter().map(move |v| v / l)
                })
                .collect()
        };
        let (a, b) = (norm(img), norm(txt));
        let scale = logit_scale.exp().min(100.0);
        let mut logits = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = (0..dim).map(|k| a[i * dim + k] * b[j * dim + k]).sum();
                logits[i * n + j] = scale * dot;
            }
        }
        let mut transposed = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                transposed[j * n + i] = logits[i * n + j];
            }
        }
        let diag: Vec<u32> = (0..n as u32).collect();
        let opts = CrossEntropyOptions::default();
        0.5 * (ce_reference(&logits, n, &diag, &opts) + ce_reference(&transposed, n, &diag, &opts))
    }

    /// The losses PyTorch recorded for tiny ViT and CLIP models (tests/fixtures/train, written
    /// by tests/fixtures/generate/train.py), recomputed from the recorded logits: ViT's
    /// label-smoothed cross-entropy, and CLIP's symmetric cross-entropy of `logits_per_image`.
    #[test]
    fn matches_pytorch_fixtures() -> Result<()> {
        use glimpse_tensor::safetensors::SafeTensorsFile;
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/train");
        let d = dev();
        let close = |got: &Tensor, want: &Tensor| -> Result<()> {
            let (g, w) = (got.to_scalar::<f32>()?, want.to_scalar::<f32>()?);
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{g} vs PyTorch {w}"
            );
            Ok(())
        };
        let vit = root.join("vit");
        let batch = SafeTensorsFile::open(vit.join("batch.safetensors"))?;
        let steps = SafeTensorsFile::open(vit.join("steps.safetensors"))?;
        let labels = batch.load("labels", &d)?;
        let smoothed = CrossEntropyOptions {
            label_smoothing: 0.1,
            ignore_index: None,
        };
        for k in 1..=2 {
            let logits = steps.load(&format!("step{k}.logits"), &d)?;
            let loss = cross_entropy(&logits, &labels, &smoothed)?;
            close(&loss, &steps.load(&format!("step{k}.loss"), &d)?)?;
        }

        let steps = SafeTensorsFile::open(root.join("clip/steps.safetensors"))?;
        for k in 1..=2 {
            let logits = steps.load(&format!("step{k}.logits"), &d)?;
            let n = logits.dims()[0];
            let diag = Tensor::arange(0.0, n as f64, DType::U32, &d)?;
            let o = CrossEntropyOptions::default();
            let rows = cross_entropy(&logits, &diag, &o)?;
            let cols = cross_entropy(&logits.t()?.contiguous()?, &diag, &o)?;
            let loss = rows.add(&cols)?.affine(0.5, 0.0)?;
            close(&loss, &steps.load(&format!("step{k}.loss"), &d)?)?;
        }
        Ok(())
    }

    #[test]
    fn label_smoothing_of_uniform_logits() -> Result<()> {
        // Uniform logits: every -log p is ln C, whatever the smoothing.
        let d = dev();
        let logits = Tensor::zeros([3, 4], DType::F32, &d)?;
        let targets = Tensor::from_vec(vec![0u32, 1, 3], 3, &d)?;
        for eps in [0.0, 0.1, 1.0] {
            let opts = CrossEntropyOptions {
                label_smoothing: eps,
                ignore_index: None,
            };
            let l = cross_entropy(&logits, &targets, &opts)?.to_scalar::<f32>()?;
            assert!((l - 4f32.ln()).abs() < 1e-6, "{l}");
        }
        // Confident correct logits: smoothing adds a penalty.
        let logits = Tensor::from_vec(vec![10.0f32, 0.0, 0.0, 10.0], [2, 2], &d)?;
        let targets = Tensor::from_vec(vec![0u32, 1], 2, &d)?;
        let plain = cross_entropy(&logits, &targets, &CrossEntropyOptions::default())?;
        let smooth = cross_entropy(
            &logits,
            &targets,
            &CrossEntropyOptions {
                label_smoothing: 0.2,
                ignore_index: None,
            },
        )?;
        assert!(smooth.to_scalar::<f32>()? > plain.to_scalar::<f32>()? + 0.5);
        Ok(())
    }

    #[test]
    fn ignore_index_and_all_ignored() -> Result<()> {
        let d = dev();
        // Row 1 is ignored with an id far out of range, and has a -inf logit: neither may leak.
        let logits = Tensor::from_vec(
            vec![1.0f32, 2.0, 3.0, f32::NEG_INFINITY, 0.0, 0.0],
            [2, 3],
            &d,
        )?;
        let opts = CrossEntropyOptions {
            label_smoothing: 0.1,
            ignore_index: Some(u32::MAX),
        };
        let targets = Tensor::from_vec(vec![2u32, u32::MAX], 2, &d)?;
        let got = f64::from(cross_entropy(&logits, &targets, &opts)?.to_scalar::<f32>()?);
        let want = ce_reference(&[1.0, 2.0, 3.0], 3, &[2], &opts);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");

        // No rows at all: NaN as well (PyTorch's mean of nothing), not a panic.
        let none = Tensor::zeros([0, 3], DType::F32, &d)?;
        let no_targets = Tensor::zeros(0, DType::U32, &d)?;
        let empty = cross_entropy(&none, &no_targets, &CrossEntropyOptions::default());
        assert!(empty?.to_scalar::<f32>()?.is_nan());

        let all = Tensor::from_vec(vec![u32::MAX, u32::MAX], 2, &d)?;
        assert!(
            cross_entropy(&logits, &all, &opts)?
                .to_scalar::<f32>()?
                .is_nan()
        );
        let lm_logits = Tensor::zeros([1, 2, 3], DType::F32, &d)?;
        let lm_labels = Tensor::from_vec(vec![0u32, 7], [1, 2], &d)?;
        let lm_opts = CrossEntropyOptions {
            label_smoothing: 0.0,
            ignore_index: Some(7),
        };
        assert!(
            lm_loss(&lm_logits, &lm_labels, &lm_opts)?
                .to_scalar::<f32>()?
                .is_nan()
        );
        Ok(())
    }

    #[test]
    fn half_logits_give_f32_loss() -> Result<()> {
        let d = dev();
        let logits = Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 0.0], [2, 2], &d)?;
        let targets = Tensor::from_vec(vec![1u32, 0], 2, &d)?;
        let full = cross_entropy(&logits, &targets, &CrossEntropyOptions::default())?;
        let half = itm_loss(&logits.to_dtype(DType::BF16)?, &targets)?;
        assert_eq!(half.dtype(), DType::F32);
        assert_eq!(half.to_scalar::<f32>()?, full.to_scalar::<f32>()?);
        Ok(())
    }

    #[test]
    fn clip_scale_is_clamped_at_100() -> Result<()> {
        let d = dev();
        let img = Tensor::rand_normal(0.0, 1.0, [4, 8], DType::F32, 1, &d)?;
        let txt = Tensor::rand_normal(0.0, 1.0, [4, 8], DType::F32, 2, &d)?;
        let at = |s: f64| -> Result<f32> {
            let ls = Tensor::full(s, (), DType::F32, &d)?;
            clip_loss(&img, &txt, &ls)?.to_scalar::<f32>()
        };
        assert_eq!(at(200f64.ln())?, at(100f64.ln())?);
        assert_ne!(at(50f64.ln())?, at(100f64.ln())?);
        // A one-element (1,) parameter works as well as a scalar.
        let ls = Tensor::full(2.0, 1, DType::F32, &d)?;
        assert_eq!(clip_loss(&img, &txt, &ls)?.to_scalar::<f32>()?, at(2.0)?);
        // Half embeddings are normalised in f32.
        let l = clip_loss(&img.to_dtype(DType::F16)?, &txt.to_dtype(DType::F16)?, &ls)?;
        assert_eq!(l.dtype(), DType::F32);
        assert!((l.to_scalar::<f32>()? - at(2.0)?).abs() < 1e-2);
        Ok(())
    }

    #[test]
    fn rejects_bad_inputs() -> Result<()> {
        let d = dev();
        let logits = Tensor::zeros([2, 3], DType::F32, &d)?;
        let targets = Tensor::from_vec(vec![0u32, 1], 2, &d)?;
        let o = CrossEntropyOptions::default();
        let err = |r: Result<Tensor>| r.unwrap_err().to_string();

        let e = err(cross_entropy(
            &logits,
            &Tensor::from_vec(vec![0u32, 3], 2, &d)?,
            &o,
        ));
        assert!(e.contains("target 3 at row 1"), "{e}");
        assert!(cross_entropy(&logits, &targets.to_dtype(DType::F32)?, &o).is_err());
        assert!(cross_entropy(&logits, &Tensor::zeros(3, DType::U32, &d)?, &o).is_err());
        assert!(cross_entropy(&logits.reshape(6)?, &targets, &o).is_err());
        assert!(cross_entropy(&logits.to_dtype(DType::U32)?, &targets, &o).is_err());
        let bad_smoothing = CrossEntropyOptions {
            label_smoothing: 1.5,
            ignore_index: None,
        };
        assert!(cross_entropy(&logits, &targets, &bad_smoothing).is_err());
        let no_classes = Tensor::zeros([2, 0], DType::F32, &d)?;
        assert!(cross_entropy(&no_classes, &targets, &o).is_err());

        assert!(itm_loss(&logits, &targets).is_err());
        let two = Tensor::zeros([2, 2], DType::F32, &d)?;
        assert!(itm_loss(&two, &Tensor::from_vec(vec![0u32, 2], 2, &d)?).is_err());
        assert!(itm_loss(&two, &targets).is_ok());

        let lm = Tensor::zeros([2, 3, 4], DType::F32, &d)?;
        assert!(lm_loss(&lm, &Tensor::zeros([2, 3], DType::U32, &d)?, &o).is_ok());
        assert!(lm_loss(&lm, &Tensor::zeros([2, 4], DType::U32, &d)?, &o).is_err());
        assert!(lm_loss(&logits, &targets, &o).is_err());
        let one_pos = Tensor::zeros([2, 1, 4], DType::F32, &d)?;
        assert!(lm_loss(&one_pos, &Tensor::zeros([2, 1], DType::U32, &d)?, &o).is_err());

        let e = Tensor::ones([3, 4], DType::F32, &d)?;
        let s = Tensor::zeros((), DType::F32, &d)?;
        assert!(clip_loss(&e, &e, &s).is_ok());
        assert!(clip_loss(&e, &Tensor::ones([3, 5], DType::F32, &d)?, &s).is_err());
        assert!(clip_loss(&e, &e.to_dtype(DType::F64)?, &s).is_err());
        assert!(clip_loss(&e.reshape(12)?, &e.reshape(12)?, &s).is_err());
        assert!(clip_loss(&e, &e, &Tensor::zeros(2, DType::F32, &d)?).is_err());
        assert!(clip_loss(&e, &e, &Tensor::zeros((), DType::U32, &d)?).is_err());
        let empty = Tensor::zeros([0, 4], DType::F32, &d)?;
        assert!(clip_loss(&empty, &empty, &s).is_err());
        Ok(())
    }
}

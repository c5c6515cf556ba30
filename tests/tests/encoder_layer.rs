//! A ViT encoder layer assembled from the public API, with weights saved under the published
//! Hugging Face key names in a sharded checkpoint and loaded back through the `VarBuilder`:
//! the fused CPU path (f32, bf16) matches the default compositions evaluated in f64.

use std::collections::HashMap;

use glimpse_tensor::safetensors::{Checkpoint, save_sharded};
use glimpse_tensor::{AttentionOptions, DType, Result, Tensor, UnaryOp, VarBuilder, compose};

const HIDDEN: usize = 32;
const HEADS: usize = 4;
const MLP: usize = 64;

fn random_layer_weights() -> Result<Vec<(String, Tensor)>> {
    let device = glimpse_cpu::device();
    let shapes: [(&str, Vec<usize>); 16] = [
        ("layernorm_before.weight", vec![HIDDEN]),
        ("layernorm_before.bias", vec![HIDDEN]),
        ("attention.attention.query.weight", vec![HIDDEN, HIDDEN]),
        ("attention.attention.query.bias", vec![HIDDEN]),
        ("attention.attention.key.weight", vec![HIDDEN, HIDDEN]),
        ("attention.attention.key.bias", vec![HIDDEN]),
        ("attention.attention.value.weight", vec![HIDDEN, HIDDEN]),
        ("attention.attention.value.bias", vec![HIDDEN]),
        ("attention.output.dense.weight", vec![HIDDEN, HIDDEN]),
        ("attention.output.dense.bias", vec![HIDDEN]),
        ("layernorm_after.weight", vec![HIDDEN]),
        ("layernorm_after.bias", vec![HIDDEN]),
        ("intermediate.dense.weight", vec![MLP, HIDDEN]),
        ("intermediate.dense.bias", vec![MLP]),
        ("output.dense.weight", vec![HIDDEN, MLP]),
        ("output.dense.bias", vec![HIDDEN]),
    ];
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let std = if name.starts_with("layernorm") {
                0.1
            } else {
                0.2
            };
            let mean =
                if name.ends_with("norm_before.weight") || name.ends_with("norm_after.weight") {
                    1.0
                } else {
                    0.0
                };
            let t = Tensor::rand_normal(mean, std, shape, DType::F32, 100 + i as u64, &device)?;
            Ok((format!("vit.encoder.layer.0.{name}"), t))
        })
        .collect()
}

/// `x @ w^T + b` for `x` of shape `(B, N, in)`.
fn linear(x: &Tensor, vb: &VarBuilder, out: usize, inp: usize) -> Result<Tensor> {
    let w = vb.get([out, inp], "weight")?;
    let b = vb.get([out], "bias")?;
    x.matmul(&w.t()?.unsqueeze(0)?)?.add(&b)
}

/// Which implementation of the fused ops a forward pass uses.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Fused,
    Composed,
}

fn layer_forward(x: &Tensor, vb: &VarBuilder, path: Path) -> Result<Tensor> {
    let (b, n) = (x.dims()[0], x.dims()[1]);
    let dh = HIDDEN / HEADS;
    let norm = |x: &Tensor, name: &str| -> Result<Tensor> {
        let vb = vb.pp(name);
        let (w, bias) = (vb.get([HIDDEN], "weight")?, vb.get([HIDDEN], "bias")?);
        match path {
            Path::Fused => x.layer_norm(Some(&w), Some(&bias), 1e-12),
            Path::Composed => compose::layer_norm(x, Some(&w), Some(&bias), 1e-12),
        }
    };
    let h = norm(x, "layernorm_before")?;
    let att = vb.pp("attention").pp("attention");
    // (B, N, E) -> (B, N, H, Dh) -> (B, H, N, Dh): permuted views, no copies.
    let heads = |t: Tensor| t.reshape([b, n, HEADS, dh])?.permute(&[0, 2, 1, 3]);
    let q = heads(linear(&h, &att.pp("query"), HIDDEN, HIDDEN)?)?;
    let k = heads(linear(&h, &att.pp("key"), HIDDEN, HIDDEN)?)?;
    let v = heads(linear(&h, &att.pp("value"), HIDDEN, HIDDEN)?)?;
    let opts = AttentionOptions::default();
    let ctx = match path {
        Path::Fused => Tensor::attention(&q, &k, &v, &opts)?.out,
        Path::Composed => compose::attention(&q, &k, &v, &opts)?.out,
    };
    let ctx = ctx.permute(&[0, 2, 1, 3])?.reshape([b, n, HIDDEN])?;
    let x = x.add(&linear(
        &ctx,
        &vb.pp("attention").pp("output").pp("dense"),
        HIDDEN,
        HIDDEN,
    )?)?;
    let h = norm(&x, "layernorm_after")?;
    let h = linear(&h, &vb.pp("intermediate").pp("dense"), MLP, HIDDEN)?;
    let h = match path {
        Path::Fused => h.gelu_erf()?,
        Path::Composed => h.unary(UnaryOp::GeluErf)?,
    };
    x.add(&linear(&h, &vb.pp("output").pp("dense"), HIDDEN, MLP)?)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (a.to_f64_vec()?, b.to_f64_vec()?);
    assert_eq!(a.len(), b.len());
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max))
}

#[test]
fn encoder_layer_from_sharded_checkpoint_matches_f64_composition() -> Result<()> {
    let device = glimpse_cpu::device();
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = random_layer_weights()?;
    let named: Vec<(&str, &Tensor)> = weights.iter().map(|(k, t)| (k.as_str(), t)).collect();
    // Small shards, so that the layer's weights span several files.
    let index = save_sharded(&named, dir.path(), 8 * 1024)?;
    let checkpoint = Checkpoint::open(&index)?;
    assert!(checkpoint.is_sharded() && checkpoint.shards().len() > 1);

    let x = Tensor::rand_normal(0.0, 1.0, [2, 9, HIDDEN], DType::F32, 7, &device)?;
    let layer = |dtype: DType, path: Path| -> Result<Tensor> {
        let ckpt = Checkpoint::open(&index)?;
        let vb = VarBuilder::from_checkpoint(ckpt, dtype, &device);
        let y = layer_forward(
            &x.to_dtype(dtype)?,
            &vb.pp("vit").pp("encoder").pp("layer").pp(0),
            path,
        )?;
        vb.finish_strict()?;
        Ok(y)
    };
    let reference = layer(DType::F64, Path::Composed)?;
    let f32_fused = layer(DType::F32, Path::Fused)?;
    let bf16_fused = layer(DType::BF16, Path::Fused)?;
    let f32_err = max_abs_diff(&f32_fused, &reference)?;
    let bf16_err = max_abs_diff(&bf16_fused, &reference)?;
    println!("max abs error vs f64: f32 {f32_err:.2e}, bf16 {bf16_err:.2e}");
    assert!(f32_err < 1e-4, "f32 fused path off by {f32_err}");
    // bf16 keeps 8 bits of mantissa: values of magnitude ~4 are off by up to a few 1e-2.
    assert!(bf16_err < 0.15, "bf16 fused path off by {bf16_err}");
    Ok(())
}

#[test]
fn missing_and_misshapen_weights_are_clear_errors() -> Result<()> {
    let device = glimpse_cpu::device();
    let mut weights: HashMap<String, Tensor> = random_layer_weights()?.into_iter().collect();
    weights.remove("vit.encoder.layer.0.attention.attention.key.bias");
    let vb = VarBuilder::from_tensors(weights, DType::F32, &device);
    let x = Tensor::zeros([1, 3, HIDDEN], DType::F32, &device)?;
    let err = layer_forward(
        &x,
        &vb.pp("vit").pp("encoder").pp("layer").pp(0),
        Path::Fused,
    )
    .expect_err("a weight is missing");
    let msg = err.to_string();
    assert!(
        msg.contains("vit.encoder.layer.0.attention.attention.key.bias"),
        "{msg}"
    );
    assert!(
        msg.contains("vit.encoder.layer.0.attention.attention.query.bias"),
        "{msg}"
    );
    // The layer asks for the wrong shape: the error names both shapes.
    let vb = VarBuilder::from_tensors(
        random_layer_weights()?.into_iter().collect(),
        DType::F32,
        &device,
    );
    let err = vb
        .pp("vit.encoder.layer.0.intermediate.dense")
        .get([HIDDEN, MLP], "weight")
        .expect_err("transposed shape");
    assert!(
        err.to_string().contains("[64, 32]") && err.to_string().contains("[32, 64]"),
        "{err}"
    );
    Ok(())
}

//! PreNormEncoderLayer and Encoder against naive f64 loops, F32 vs F64, and the ViT and CLIP
//! key layouts.

mod common;

use common::*;
use glimpse_nn::{
    Activation, AttentionMask, Encoder, EncoderConfig, EncoderKeys, EncoderLayerKeys, Module,
    PreNormEncoderLayer,
};
use glimpse_tensor::{DType, Tensor};

fn cfg(activation: Activation) -> EncoderConfig {
    EncoderConfig {
        dim: 8,
        num_heads: 2,
        mlp_dim: 16,
        activation,
        layer_norm_eps: 1e-6,
        qkv_bias: true,
    }
}

#[test]
fn encoder_layer_matches_naive_vit_and_clip() {
    let (b, n) = (2, 5);
    let pad_v: Vec<u32> = vec![1, 1, 1, 1, 1, 1, 1, 0, 0, 0];
    for (keys, a, causal, pad) in [
        (EncoderLayerKeys::vit(), Activation::GeluErf, false, false),
        (EncoderLayerKeys::clip(), Activation::QuickGelu, true, true),
    ] {
        let cfg = cfg(a);
        let mut w = Weights::new();
        w.add_encoder_layer("enc.l", &keys, &cfg);
        let x = randn(&[b, n, cfg.dim], 1.0, 51);
        let want = encoder_layer_w(
            &w,
            "enc.l",
            &keys,
            &cfg,
            &x.to_f64_vec().unwrap(),
            b,
            n,
            causal,
            pad.then_some(pad_v.as_slice()),
        );
        for dtype in [DType::F32, DType::F64] {
            let vb = w.vb(dtype);
            let layer = PreNormEncoderLayer::new(vb.pp("enc").pp("l"), &cfg, &keys).unwrap();
            vb.finish_strict().unwrap();
            let mut mask = AttentionMask::none().with_causal(causal);
            if pad {
                mask.key_padding = Some(Tensor::from_vec(pad_v.clone(), [b, n], &dev()).unwrap());
            }
            let got = layer
                .forward_masked(&x.to_dtype(dtype).unwrap(), &mask)
                .unwrap();
            assert_close(&got, &[b, n, cfg.dim], &want, tol(dtype));
        }
    }
}

#[test]
fn encoder_layer_f32_matches_f64() {
    let cfg = EncoderConfig {
        dim: 32,
        num_heads: 4,
        mlp_dim: 64,
        ..cfg(Activation::GeluTanh)
    };
    let keys = EncoderLayerKeys::clip();
    let mut w = Weights::new();
    w.add_encoder_layer("", &keys, &cfg);
    let x = randn(&[2, 17, cfg.dim], 1.0, 61);
    let l32 = PreNormEncoderLayer::new(w.vb(DType::F32), &cfg, &keys).unwrap();
    let l64 = PreNormEncoderLayer::new(w.vb(DType::F64), &cfg, &keys).unwrap();
    let y32 = l32.forward(&x.to_dtype(DType::F32).unwrap()).unwrap();
    let y64 = l64.forward(&x).unwrap();
    assert_eq!(y32.dtype(), DType::F32);
    assert_eq!(y64.dtype(), DType::F64);
    let (a, b) = (y32.to_f64_vec().unwrap(), y64.to_f64_vec().unwrap());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "F32 vs F64 max abs diff {worst}");
}

/// The Hugging Face key names of one layer, written out literally.
fn hf_layer_keys(vit: bool) -> Vec<&'static str> {
    if vit {
        vec![
            "layernorm_before.weight",
            "layernorm_before.bias",
            "attention.attention.query.weight",
            "attention.attention.query.bias",
            "attention.attention.key.weight",
            "attention.attention.key.bias",
            "attention.attention.value.weight",
            "attention.attention.value.bias",
            "attention.output.dense.weight",
            "attention.output.dense.bias",
            "layernorm_after.weight",
            "layernorm_after.bias",
            "intermediate.dense.weight",
            "intermediate.dense.bias",
            "output.dense.weight",
            "output.dense.bias",
        ]
    } else {
        vec![
            "layer_norm1.weight",
            "layer_norm1.bias",
            "self_attn.q_proj.weight",
            "self_attn.q_proj.bias",
            "self_attn.k_proj.weight",
            "self_attn.k_proj.bias",
            "self_attn.v_proj.weight",
            "self_attn.v_proj.bias",
            "self_attn.out_proj.weight",
            "self_attn.out_proj.bias",
            "layer_norm2.weight",
            "layer_norm2.bias",
            "mlp.fc1.weight",
            "mlp.fc1.bias",
            "mlp.fc2.weight",
            "mlp.fc2.bias",
        ]
    }
}

#[test]
fn encoder_loads_hf_layouts_strictly_and_matches_layer_by_layer() {
    let layers = 2;
    for (vit, prefix) in [(true, "vit.encoder"), (false, "text_model.encoder")] {
        let (keys, layers_name) = if vit {
            (EncoderKeys::vit(), "layer")
        } else {
            (EncoderKeys::clip(), "layers")
        };
        let cfg = cfg(Activation::GeluErf);
        let mut w = Weights::new();
        for i in 0..layers {
            w.add_encoder_layer(&format!("{prefix}.{layers_name}.{i}"), &keys.layer, &cfg);
        }
        // The generated names are exactly Hugging Face's.
        let mut got: Vec<&str> = w.map.keys().map(String::as_str).collect();
        got.sort_unstable();
        let mut want: Vec<String> = (0..layers)
            .flat_map(|i| {
                hf_layer_keys(vit)
                    .into_iter()
                    .map(move |k| format!("{prefix}.{layers_name}.{i}.{k}"))
            })
            .collect();
        want.sort_unstable();
        assert_eq!(got, want);

        let vb = w.vb(DType::F64);
        let enc = Encoder::new(vb.pp(prefix), &cfg, layers, &keys).unwrap();
        vb.finish_strict().unwrap();
        assert_eq!(enc.layers().len(), layers);
        let (b, n) = (1, 4);
        let x = randn(&[b, n, cfg.dim], 1.0, 71);
        let mut want = x.to_f64_vec().unwrap();
        for i in 0..layers {
            let p = format!("{prefix}.{layers_name}.{i}");
            want = encoder_layer_w(&w, &p, &keys.layer, &cfg, &want, b, n, false, None);
        }
        assert_close(&enc.forward(&x).unwrap(), &[b, n, cfg.dim], &want, 1e-9);
    }
}

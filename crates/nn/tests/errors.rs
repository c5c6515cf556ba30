//! Error cases: missing keys, wrong weight shapes, unknown activations, wrong input widths.

mod common;

use common::*;
use glimpse_nn::{Activation, Encoder, EncoderConfig, EncoderKeys, LayerNorm, Linear, Module};
use glimpse_tensor::{DType, Error};

#[test]
fn missing_key_names_the_full_path() {
    let cfg = EncoderConfig {
        dim: 8,
        num_heads: 2,
        mlp_dim: 16,
        activation: Activation::GeluErf,
        layer_norm_eps: 1e-12,
        qkv_bias: true,
    };
    let keys = EncoderKeys::vit();
    let mut w = Weights::new();
    w.add_encoder_layer("vit.encoder.layer.0", &keys.layer, &cfg);
    w.map
        .remove("vit.encoder.layer.0.attention.attention.value.bias");
    let err = Encoder::new(w.vb(DType::F32).pp("vit").pp("encoder"), &cfg, 1, &keys).unwrap_err();
    match &err {
        Error::MissingKey { key, .. } => {
            assert_eq!(key, "vit.encoder.layer.0.attention.attention.value.bias")
        }
        e => panic!("expected MissingKey, got {e:?}"),
    }
    assert!(
        err.to_string()
            .contains("vit.encoder.layer.0.attention.attention.value.bias"),
        "{err}"
    );
    // A second layer that is not in the checkpoint at all.
    let mut w = Weights::new();
    w.add_encoder_layer("vit.encoder.layer.0", &keys.layer, &cfg);
    let err = Encoder::new(w.vb(DType::F32).pp("vit.encoder"), &cfg, 2, &keys).unwrap_err();
    assert!(err.to_string().contains("vit.encoder.layer.1."), "{err}");
}

#[test]
fn wrong_weight_shape_is_reported_with_its_key() {
    let mut w = Weights::new();
    w.add("fc.weight", &[3, 4], 0.0, 1.0);
    w.add("fc.bias", &[3], 0.0, 1.0);
    // Asking for (4 -> 5) when the checkpoint holds (4 -> 3).
    let err = Linear::new(w.vb(DType::F32).pp("fc"), 4, 5, true).unwrap_err();
    match &err {
        Error::WeightShape { key, expected, got } => {
            assert_eq!(key, "fc.weight");
            assert_eq!(expected.dims(), &[5, 4]);
            assert_eq!(got.dims(), &[3, 4]);
        }
        e => panic!("expected WeightShape, got {e:?}"),
    }
    let err = LayerNorm::new(w.vb(DType::F32).pp("fc"), 3, 1e-5).unwrap_err();
    assert!(
        matches!(err, Error::WeightShape { .. } | Error::MissingKey { .. }),
        "{err}"
    );
}

#[test]
fn unknown_activation_is_a_clear_error() {
    let err = Activation::from_hf_name("swishy").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("swishy"), "{msg}");
    assert!(
        msg.contains("gelu_pytorch_tanh") && msg.contains("quick_gelu"),
        "{msg}"
    );
    assert!("GELU".parse::<Activation>().is_err());
}

#[test]
fn linear_rejects_wrong_last_dimension_without_panicking() {
    let mut w = Weights::new();
    w.add_linear("fc", 4, 3, true);
    let fc = Linear::new(w.vb(DType::F32).pp("fc"), 4, 3, true).unwrap();
    for dims in [vec![2, 5], vec![2, 3, 3], vec![4, 1], vec![]] {
        let x = randn(&dims, 1.0, 1).to_dtype(DType::F32).unwrap();
        let err = fc.forward(&x).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("Linear") && msg.contains("4"), "{msg}");
    }
    // Dtype mismatch between input and weight is an error too.
    let x = randn(&[2, 4], 1.0, 1);
    assert!(fc.forward(&x).is_err());
}

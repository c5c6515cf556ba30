//! MultiHeadAttention against a naive per-head softmax attention.

mod common;

use common::*;
use glimpse_nn::{
    AttentionConfig, AttentionKeys, AttentionMask, MultiHeadAttention, merge_heads, split_heads,
};
use glimpse_tensor::{DType, Tensor};

const DTYPES: [DType; 2] = [DType::F32, DType::F64];
const B: usize = 2;
const E: usize = 8;
const H: usize = 2;

fn padding() -> (Vec<u32>, usize) {
    // (B, Nk) with Nk = 5; the second sequence has two padding keys.
    (vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0], 5)
}

fn check_self(keys: AttentionKeys, bias: bool, causal: bool, pad: bool) {
    let n = 5;
    let mut w = Weights::new();
    w.add_attention("blk", &keys, E, E, bias);
    let x = randn(&[B, n, E], 1.0, 21);
    let (pad_v, nk) = padding();
    assert_eq!(nk, n);
    let want = mha_w(
        &w,
        "blk",
        &keys,
        &x.to_f64_vec().unwrap(),
        None,
        B,
        n,
        E,
        H,
        causal,
        pad.then_some(pad_v.as_slice()),
    );
    for dtype in DTYPES {
        let vb = w.vb(dtype);
        let cfg = AttentionConfig {
            bias,
            out_bias: bias,
            ..AttentionConfig::new(E, H)
        };
        let mha = MultiHeadAttention::new(vb.pp("blk"), &cfg, &keys).unwrap();
        vb.finish_strict().unwrap();
        let mut mask = AttentionMask::none().with_causal(causal);
        if pad {
            mask.key_padding = Some(Tensor::from_vec(pad_v.clone(), [B, nk], &dev()).unwrap());
        }
        let got = mha
            .forward(&x.to_dtype(dtype).unwrap(), None, &mask)
            .unwrap();
        assert_close(&got, &[B, n, E], &want, tol(dtype));
    }
}

#[test]
fn self_attention_unmasked_vit_keys() {
    check_self(AttentionKeys::vit(), true, false, false);
}

#[test]
fn self_attention_causal_clip_keys() {
    check_self(AttentionKeys::clip(), true, true, false);
}

#[test]
fn self_attention_key_padding() {
    check_self(AttentionKeys::clip(), true, false, true);
}

#[test]
fn self_attention_causal_and_padding_without_bias() {
    check_self(AttentionKeys::vit(), false, true, true);
}

#[test]
fn cross_attention_with_other_context_length_and_width() {
    let (nq, kv_dim) = (3, 6);
    let (pad_v, nk) = padding();
    let keys = AttentionKeys {
        q: "crossattention.self.query".into(),
        k: "crossattention.self.key".into(),
        v: "crossattention.self.value".into(),
        out: "crossattention.output.dense".into(),
    };
    let mut w = Weights::new();
    w.add_attention("", &keys, E, kv_dim, true);
    let x = randn(&[B, nq, E], 1.0, 31);
    let ctx = randn(&[B, nk, kv_dim], 1.0, 32);
    let (xv, cv) = (x.to_f64_vec().unwrap(), ctx.to_f64_vec().unwrap());
    for pad in [false, true] {
        for causal in [false, true] {
            let want = mha_w(
                &w,
                "",
                &keys,
                &xv,
                Some((&cv, nk, kv_dim)),
                B,
                nq,
                E,
                H,
                causal,
                pad.then_some(pad_v.as_slice()),
            );
            for dtype in DTYPES {
                let cfg = AttentionConfig {
                    kv_dim: Some(kv_dim),
                    ..AttentionConfig::new(E, H)
                };
                let mha = MultiHeadAttention::new(w.vb(dtype), &cfg, &keys).unwrap();
                let mut mask = AttentionMask::none().with_causal(causal);
                if pad {
                    mask.key_padding =
                        Some(Tensor::from_vec(pad_v.clone(), [B, nk], &dev()).unwrap());
                }
                let got = mha
                    .forward(
                        &x.to_dtype(dtype).unwrap(),
                        Some(&ctx.to_dtype(dtype).unwrap()),
                        &mask,
                    )
                    .unwrap();
                assert_close(&got, &[B, nq, E], &want, tol(dtype));
            }
        }
    }
}

#[test]
fn split_heads_is_a_view_and_merge_heads_inverts_it() {
    let x = randn(&[2, 3, 8], 1.0, 41);
    let s = split_heads(&x, 4).unwrap();
    assert_eq!(s.dims(), &[2, 4, 3, 2]);
    assert!(s.shares_storage_with(&x), "split_heads must not copy");
    let xv = x.to_f64_vec().unwrap();
    let sv = s.to_f64_vec().unwrap();
    // s[b, h, n, d] == x[b, n, h * 2 + d]
    for b in 0..2 {
        for h in 0..4 {
            for n in 0..3 {
                for d in 0..2 {
                    assert_eq!(
                        sv[((b * 4 + h) * 3 + n) * 2 + d],
                        xv[(b * 3 + n) * 8 + h * 2 + d]
                    );
                }
            }
        }
    }
    let m = merge_heads(&s).unwrap();
    assert_close(&m, &[2, 3, 8], &xv, 0.0);
    assert!(split_heads(&x, 3).is_err());
}

#[test]
fn attention_rejects_bad_inputs() {
    let keys = AttentionKeys::clip();
    let mut w = Weights::new();
    w.add_attention("", &keys, E, E, true);
    let mha =
        MultiHeadAttention::new(w.vb(DType::F32), &AttentionConfig::new(E, H), &keys).unwrap();
    let f32 = |dims: &[usize]| randn(dims, 1.0, 1).to_dtype(DType::F32).unwrap();
    let none = AttentionMask::none();
    // Rank 2 input.
    assert!(mha.forward(&f32(&[4, E]), None, &none).is_err());
    // Wrong width.
    assert!(mha.forward(&f32(&[B, 4, E + 1]), None, &none).is_err());
    // Context with another batch size.
    assert!(
        mha.forward(&f32(&[B, 4, E]), Some(&f32(&[B + 1, 4, E])), &none)
            .is_err()
    );
    // Padding mask of the wrong length.
    let bad = AttentionMask::padding(Tensor::ones([B, 3], DType::U32, &dev()).unwrap());
    assert!(mha.forward(&f32(&[B, 4, E]), None, &bad).is_err());
    // dim not a multiple of the heads.
    assert!(MultiHeadAttention::new(w.vb(DType::F32), &AttentionConfig::new(E, 3), &keys).is_err());
}

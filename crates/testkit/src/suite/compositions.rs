//! The models' building blocks on a backend (its fused kernels where it has them, else the
//! default compositions of its primitives) against the CPU backend, on small fixed shapes, in
//! every float dtype of the target: a smoke test that they run on the device at all. The
//! fused ops' own checks ([`super::fused`]) compare them in detail.

use glimpse_tensor::{AttentionOptions, DType, Device, GeluKind, PatchEmbedOptions, Tensor};

use crate::*;

/// Looser than the primitives' tolerances: the CPU runs fused kernels, the device
/// compositions (or other fused kernels), with different summation orders and intermediate
/// roundings. Times the target's factor.
fn loose(t: &Target, dtype: DType) -> f64 {
    let base = match dtype {
        DType::F32 => 1e-4,
        DType::F16 => 1e-2,
        _ => 6e-2,
    };
    base * t.factor(dtype)
}

/// The device's result has the CPU's dims and dtype and values within [`loose`].
fn close(t: &Target, got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: dims");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    assert_close_scaled(
        &values(got),
        &values(want),
        &[1.0],
        loose(t, want.dtype()),
        what,
    );
}

/// The same random tensor on both devices.
fn both(shape: &[usize], dtype: DType, seed: u64, g: &Device) -> (Tensor, Tensor) {
    let mut rng = Gen::new(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.range(-1.0, 1.0)).collect();
    (
        tensor(&data, shape, dtype, &cpu()),
        tensor(&data, shape, dtype, g),
    )
}

/// Softmax (last and middle dim), log-softmax, layer norm with weight and bias, the three
/// gelus and a linear layer with bias match the CPU.
pub fn softmax_layer_norm_gelu_linear(t: &Target) {
    let g = &t.device;
    for &dtype in &t.floats {
        let (xc, xg) = both(&[3, 5, 17], dtype, 1, g);
        close(
            t,
            &xg.softmax(-1).unwrap(),
            &xc.softmax(-1).unwrap(),
            &format!("softmax {dtype}"),
        );
        close(
            t,
            &xg.softmax(1).unwrap(),
            &xc.softmax(1).unwrap(),
            &format!("softmax dim 1 {dtype}"),
        );
        close(
            t,
            &xg.log_softmax(-1).unwrap(),
            &xc.log_softmax(-1).unwrap(),
            &format!("log_softmax {dtype}"),
        );
        let (wc, wg) = both(&[17], dtype, 2, g);
        let (bc, bg) = both(&[17], dtype, 3, g);
        close(
            t,
            &xg.layer_norm(Some(&wg), Some(&bg), 1e-5).unwrap(),
            &xc.layer_norm(Some(&wc), Some(&bc), 1e-5).unwrap(),
            &format!("layer_norm {dtype}"),
        );
        for kind in [GeluKind::Erf, GeluKind::Tanh, GeluKind::Quick] {
            close(
                t,
                &xg.gelu(kind).unwrap(),
                &xc.gelu(kind).unwrap(),
                &format!("{kind:?} {dtype}"),
            );
        }
        let (ac, ag) = both(&[7, 17], dtype, 4, g);
        let (lc, lg) = both(&[9, 17], dtype, 5, g);
        let (lbc, lbg) = both(&[9], dtype, 6, g);
        close(
            t,
            &ag.linear(&lg, Some(&lbg)).unwrap(),
            &ac.linear(&lc, Some(&lbc)).unwrap(),
            &format!("linear {dtype}"),
        );
    }
}

/// Attention with a key-padding mask (batch 0 loses one key, batch 1 all but one), forward (out, lse) and backward (dq, dk, dv), matches the CPU.
pub fn attention_with_key_padding(t: &Target) {
    let g = &t.device;
    for &dtype in &t.floats {
        let (qc, qg) = both(&[2, 3, 5, 8], dtype, 7, g);
        let (kc, kg) = both(&[2, 3, 6, 8], dtype, 8, g);
        let (vc, vg) = both(&[2, 3, 6, 4], dtype, 9, g);
        let mask = [1u32, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0];
        let opts = |d: &Device| AttentionOptions {
            key_padding_mask: Some(Tensor::from_slice(&mask, [2, 6], d).unwrap()),
            ..Default::default()
        };
        let got = Tensor::attention(&qg, &kg, &vg, &opts(g)).unwrap();
        let want = Tensor::attention(&qc, &kc, &vc, &opts(&cpu())).unwrap();
        close(t, &got.out, &want.out, &format!("attention out {dtype}"));
        close(t, &got.lse, &want.lse, &format!("attention lse {dtype}"));
        let (dc, dg) = both(&[2, 3, 5, 4], dtype, 10, g);
        let gg = Tensor::attention_backward(&qg, &kg, &vg, &got, &dg, &opts(g)).unwrap();
        let gc = Tensor::attention_backward(&qc, &kc, &vc, &want, &dc, &opts(&cpu())).unwrap();
        close(t, &gg.dq, &gc.dq, &format!("dq {dtype}"));
        close(t, &gg.dk, &gc.dk, &format!("dk {dtype}"));
        close(t, &gg.dv, &gc.dv, &format!("dv {dtype}"));
    }
}

/// Patch embedding of a 9 x 10 image (a partial patch dropped) with bias, class token
/// and position embeddings matches the CPU.
pub fn patch_embed_with_class_and_positions(t: &Target) {
    let g = &t.device;
    for &dtype in &t.floats {
        let (ic, ig) = both(&[2, 3, 9, 10], dtype, 11, g);
        let (wc, wg) = both(&[6, 3, 4, 4], dtype, 12, g);
        let (bc, bg) = both(&[6], dtype, 13, g);
        let (cc, cg) = both(&[6], dtype, 14, g);
        let (pc, pg) = both(&[5, 6], dtype, 15, g);
        let opts = |cls: &Tensor, pos: &Tensor| PatchEmbedOptions {
            patch_size: 4,
            class_embedding: Some(cls.clone()),
            position_embedding: Some(pos.clone()),
        };
        close(
            t,
            &Tensor::patch_embed(&ig, &wg, Some(&bg), &opts(&cg, &pg)).unwrap(),
            &Tensor::patch_embed(&ic, &wc, Some(&bc), &opts(&cc, &pc)).unwrap(),
            &format!("patch_embed {dtype}"),
        );
    }
}

/// `Tensor::arange` on the device, every dtype of the target. The default compositions of
/// causal attention and of the contrastive loss use it (the fused kernels do not); its values
/// are converted on the host, so a device without f64 takes it.
pub fn arange_on_the_device(t: &Target) {
    let g = &t.device;
    for &dtype in &t.dtypes {
        let x = Tensor::arange(0.0, 5.0, dtype, g).unwrap();
        assert_eq!(values(&x), [0.0, 1.0, 2.0, 3.0, 4.0], "{dtype}");
    }
}

/// Causal attention with more keys than queries, and the contrastive loss forward
/// (loss, row log-sum-exps) and backward (both embeddings and the scale), match the CPU.
pub fn causal_attention_and_contrastive_loss(t: &Target) {
    let g = &t.device;
    for &dtype in &t.floats {
        let (qc, qg) = both(&[1, 2, 4, 8], dtype, 16, g);
        let (kc, kg) = both(&[1, 2, 6, 8], dtype, 17, g);
        let (vc, vg) = both(&[1, 2, 6, 8], dtype, 18, g);
        let causal = AttentionOptions {
            causal: true,
            ..Default::default()
        };
        let got = Tensor::attention(&qg, &kg, &vg, &causal).unwrap();
        let want = Tensor::attention(&qc, &kc, &vc, &causal).unwrap();
        close(t, &got.out, &want.out, &format!("causal attention {dtype}"));

        let (ic, ig) = both(&[6, 16], dtype, 19, g);
        let (tc, tg) = both(&[6, 16], dtype, 20, g);
        let sc = Tensor::full(2.5, (), DType::F32, &cpu()).unwrap();
        let sg = Tensor::full(2.5, (), DType::F32, g).unwrap();
        let got = Tensor::contrastive_loss(&ig, &tg, &sg).unwrap();
        let want = Tensor::contrastive_loss(&ic, &tc, &sc).unwrap();
        close(
            t,
            &got.loss,
            &want.loss,
            &format!("contrastive loss {dtype}"),
        );
        close(
            t,
            &got.lse_rows,
            &want.lse_rows,
            &format!("contrastive lse_rows {dtype}"),
        );
        let dc = Tensor::full(1.0, (), DType::F32, &cpu()).unwrap();
        let dg = Tensor::full(1.0, (), DType::F32, g).unwrap();
        let gg = Tensor::contrastive_loss_backward(&ig, &tg, &sg, &got, &dg).unwrap();
        let gc = Tensor::contrastive_loss_backward(&ic, &tc, &sc, &want, &dc).unwrap();
        close(t, &gg.d_image, &gc.d_image, &format!("d_image {dtype}"));
        close(t, &gg.d_text, &gc.d_text, &format!("d_text {dtype}"));
        close(t, &gg.d_scale, &gc.d_scale, &format!("d_scale {dtype}"));
    }
}

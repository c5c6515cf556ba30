//! Linear, LayerNorm, Embedding, Activation and Mlp against naive f64 loops.

mod common;

use common::*;
use glimpse_nn::{Activation, Embedding, LayerNorm, Linear, Mlp, MlpKeys, Module};
use glimpse_tensor::{DType, Tensor};

const DTYPES: [DType; 2] = [DType::F32, DType::F64];

#[test]
fn linear_matches_naive_for_rank_2_3_4() {
    let (inp, out) = (5, 7);
    for bias in [true, false] {
        let mut w = Weights::new();
        w.add_linear("fc", inp, out, bias);
        for dtype in DTYPES {
            let fc = Linear::new(w.vb(dtype).pp("fc"), inp, out, bias).unwrap();
            assert_eq!((fc.in_features(), fc.out_features()), (inp, out));
            assert_eq!(fc.bias().is_some(), bias);
            for (seed, lead) in [vec![3], vec![2, 3], vec![2, 1, 3]].into_iter().enumerate() {
                let mut dims = lead.clone();
                dims.push(inp);
                let x = randn(&dims, 1.0, seed as u64);
                let rows: usize = lead.iter().product();
                let want = linear_w(&w, "fc", &x.to_f64_vec().unwrap(), rows, inp, out);
                let got = fc.forward(&x.to_dtype(dtype).unwrap()).unwrap();
                let mut want_dims = lead.clone();
                want_dims.push(out);
                assert_close(&got, &want_dims, &want, tol(dtype));
            }
        }
    }
}

#[test]
fn linear_accepts_non_contiguous_input() {
    let (inp, out) = (4, 3);
    let mut w = Weights::new();
    w.add_linear("fc", inp, out, true);
    let fc = Linear::new(w.vb(DType::F32).pp("fc"), inp, out, true).unwrap();
    // x is (inp, B, N) permuted to (B, N, inp): a strided view.
    let base = randn(&[inp, 2, 3], 1.0, 9);
    let x = base.permute(&[1, 2, 0]).unwrap();
    assert!(!x.is_contiguous());
    let want = linear_w(&w, "fc", &x.to_f64_vec().unwrap(), 6, inp, out);
    let got = fc.forward(&x.to_dtype(DType::F32).unwrap()).unwrap();
    assert_close(&got, &[2, 3, out], &want, tol(DType::F32));
}

#[test]
fn layer_norm_matches_naive() {
    let dim = 6;
    let mut w = Weights::new();
    w.add_ln("ln", dim);
    for dtype in DTYPES {
        let ln = LayerNorm::new(w.vb(dtype).pp("ln"), dim, 1e-5).unwrap();
        let x = randn(&[2, 3, dim], 2.0, 3);
        let want = layer_norm_w(&w, "ln", &x.to_f64_vec().unwrap(), dim, 1e-5);
        let got = ln.forward(&x.to_dtype(dtype).unwrap()).unwrap();
        assert_close(&got, &[2, 3, dim], &want, tol(dtype));
    }
}

#[test]
fn embedding_looks_up_ids_of_any_shape() {
    let (num, dim) = (10, 4);
    let mut w = Weights::new();
    w.add("tok.weight", &[num, dim], 0.0, 1.0);
    let table = w.vals("tok.weight");
    for dtype in DTYPES {
        let emb = Embedding::new(w.vb(dtype).pp("tok"), num, dim).unwrap();
        assert_eq!(emb.dim(), dim);
        let ids_v: Vec<u32> = vec![3, 0, 9, 9, 1, 5];
        for shape in [vec![6], vec![2, 3], vec![1, 2, 3]] {
            let ids = Tensor::from_vec(ids_v.clone(), shape.clone(), &dev()).unwrap();
            let want: Vec<f64> = ids_v
                .iter()
                .flat_map(|&i| table[i as usize * dim..(i as usize + 1) * dim].to_vec())
                .collect();
            let mut want_dims = shape.clone();
            want_dims.push(dim);
            assert_close(&emb.forward(&ids).unwrap(), &want_dims, &want, tol(dtype));
        }
    }
}

#[test]
fn embedding_rejects_float_ids_and_out_of_range_ids() {
    let mut w = Weights::new();
    w.add("tok.weight", &[4, 2], 0.0, 1.0);
    let emb = Embedding::new(w.vb(DType::F32).pp("tok"), 4, 2).unwrap();
    let float_ids = Tensor::zeros([3], DType::F32, &dev()).unwrap();
    assert!(emb.forward(&float_ids).is_err());
    let ids = Tensor::from_vec(vec![0u32, 4], [2], &dev()).unwrap();
    assert!(emb.forward(&ids).is_err());
}

#[test]
fn activations_match_naive_formulas() {
    let x = randn(&[3, 50], 2.0, 5);
    let xv = x.to_f64_vec().unwrap();
    for a in [
        Activation::GeluErf,
        Activation::GeluTanh,
        Activation::QuickGelu,
        Activation::Relu,
    ] {
        let want: Vec<f64> = xv.iter().map(|&v| act(a, v)).collect();
        for dtype in DTYPES {
            let got = a.forward(&x.to_dtype(dtype).unwrap()).unwrap();
            let t = if dtype == DType::F64 { 1e-7 } else { 1e-5 };
            assert_close(&got, &[3, 50], &want, t);
        }
    }
}

#[test]
fn activation_hf_names() {
    let cases = [
        ("gelu", Activation::GeluErf),
        ("gelu_new", Activation::GeluTanh),
        ("gelu_pytorch_tanh", Activation::GeluTanh),
        ("quick_gelu", Activation::QuickGelu),
        ("relu", Activation::Relu),
    ];
    for (name, want) in cases {
        assert_eq!(Activation::from_hf_name(name).unwrap(), want);
        assert_eq!(name.parse::<Activation>().unwrap(), want);
    }
}

#[test]
fn mlp_matches_naive_with_vit_and_clip_keys() {
    let (dim, hidden, rows) = (4, 8, 5);
    for (keys, prefix, a) in [
        (MlpKeys::vit(), "layer.0", Activation::GeluErf),
        (MlpKeys::clip(), "layers.0.mlp", Activation::QuickGelu),
    ] {
        let mut w = Weights::new();
        w.add_mlp(prefix, &keys, dim, hidden);
        for dtype in DTYPES {
            let vb = w.vb(dtype);
            let mlp = Mlp::new(vb.pp(prefix), dim, hidden, a, &keys).unwrap();
            vb.finish_strict().unwrap();
            assert_eq!(mlp.activation(), a);
            let x = randn(&[1, rows, dim], 1.0, 11);
            let want = mlp_w(
                &w,
                prefix,
                &keys,
                a,
                &x.to_f64_vec().unwrap(),
                rows,
                dim,
                hidden,
            );
            let got = mlp.forward(&x.to_dtype(dtype).unwrap()).unwrap();
            assert_close(&got, &[1, rows, dim], &want, tol(dtype));
        }
    }
    // The ViT layout puts the projections directly under the layer.
    let mut w = Weights::new();
    w.add_mlp("", &MlpKeys::vit(), dim, hidden);
    assert!(w.map.contains_key("intermediate.dense.weight"));
    assert!(w.map.contains_key("output.dense.bias"));
}

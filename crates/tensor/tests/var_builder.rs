//! VarBuilder: prefixes, shape checks, dtype conversion, nearest-key suggestions and strict
//! loading, over checkpoints and in-memory maps.

use std::collections::HashMap;

use glimpse_tensor::safetensors::{self, Checkpoint};
use glimpse_tensor::{DType, Device, Error, Shape, Tensor, VarBuilder};

fn dev() -> Device {
    glimpse_cpu::device()
}

/// A small BERT-like set of weights.
fn weights(device: &Device) -> HashMap<String, Tensor> {
    let mut m = HashMap::new();
    for layer in 0..3 {
        for proj in ["query", "key", "value"] {
            let key = format!("encoder.layers.{layer}.attention.{proj}.weight");
            let t =
                Tensor::rand_normal(0.0, 1.0, [8, 8], DType::F32, layer as u64, device).unwrap();
            m.insert(key, t);
            let key = format!("encoder.layers.{layer}.attention.{proj}.bias");
            m.insert(key, Tensor::zeros([8], DType::F32, device).unwrap());
        }
    }
    m.insert(
        "embeddings.word_embeddings.weight".into(),
        Tensor::rand_normal(0.0, 1.0, [10, 8], DType::F32, 9, device).unwrap(),
    );
    m.insert(
        "embeddings.position_ids".into(),
        Tensor::from_vec((0..4u32).collect(), [1, 4], device).unwrap(),
    );
    m
}

fn checkpoint_builder(dtype: DType) -> (tempfile::TempDir, VarBuilder, HashMap<String, Tensor>) {
    let device = dev();
    let w = weights(&device);
    let dir = tempfile::tempdir().unwrap();
    let refs: Vec<(&str, &Tensor)> = w.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors::save_sharded(&refs, dir.path(), 700).unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert!(ckpt.shards().len() > 1);
    let vb = VarBuilder::from_checkpoint(ckpt, dtype, &device);
    (dir, vb, w)
}

#[test]
fn prefixes_compose() {
    let vb = VarBuilder::from_tensors(HashMap::new(), DType::F32, &dev());
    assert_eq!(vb.prefix(), "");
    let sub = vb.pp("encoder").pp("layers").pp(3).pp("attention");
    assert_eq!(sub.prefix(), "encoder.layers.3.attention");
    assert_eq!(
        sub.key("query.weight"),
        "encoder.layers.3.attention.query.weight"
    );
    assert_eq!(vb.key("x"), "x");
    assert_eq!(vb.dtype(), DType::F32);
    assert!(vb.device().same_device(&dev()));
    assert_eq!(vb.with_dtype(DType::BF16).pp("a").dtype(), DType::BF16);
}

#[test]
fn get_loads_converts_and_checks_shapes() {
    for (_dir, vb, w) in [checkpoint_builder(DType::F16), {
        let device = dev();
        let w = weights(&device);
        (
            tempfile::tempdir().unwrap(),
            VarBuilder::from_tensors(w.clone(), DType::F16, &device),
            w,
        )
    }] {
        let attn = vb.pp("encoder").pp("layers").pp(1).pp("attention");
        let q = attn.get([8, 8], "query.weight").unwrap();
        assert_eq!(q.dtype(), DType::F16);
        let expected = &w["encoder.layers.1.attention.query.weight"];
        let want = expected.to_dtype(DType::F16).unwrap().to_host().unwrap();
        assert_eq!(q.to_host().unwrap(), want);
        let q32 = attn.get_as([8, 8], "query.weight", DType::F32).unwrap();
        assert_eq!(q32.to_host().unwrap(), expected.to_host().unwrap());

        assert!(attn.contains("key.bias"));
        assert!(!attn.contains("key.gamma"));
        assert_eq!(attn.shape_of("key.bias").unwrap(), Shape::new([8]));
        assert_eq!(attn.get_unchecked("value.bias").unwrap().dims(), &[8]);

        // Integer buffers stay integers.
        let ids = vb.pp("embeddings").get([1, 4], "position_ids").unwrap();
        assert_eq!(ids.dtype(), DType::U32);
        assert_eq!(ids.to_vec::<u32>().unwrap(), vec![0, 1, 2, 3]);

        match attn.get([8, 4], "value.weight") {
            Err(e @ Error::WeightShape { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("encoder.layers.1.attention.value.weight")
                        && msg.contains("[8, 8]")
                        && msg.contains("[8, 4]"),
                    "{msg}"
                );
                let Error::WeightShape { key, expected, got } = e else {
                    unreachable!()
                };
                assert_eq!(key, "encoder.layers.1.attention.value.weight");
                assert_eq!(expected, Shape::new([8, 4]));
                assert_eq!(got, Shape::new([8, 8]));
            }
            other => panic!("expected WeightShape, got {other:?}"),
        }
    }
}

#[test]
fn checkpoint_loads_are_zero_copy_when_dtype_matches() {
    let (_dir, vb, _) = checkpoint_builder(DType::F32);
    let t = vb
        .get([10, 8], "embeddings.word_embeddings.weight")
        .unwrap();
    assert!(
        glimpse_cpu::cpu_storage(&**t.storage())
            .unwrap()
            .is_shared()
    );
}

#[test]
fn missing_key_suggests_nearest() {
    let (_dir, vb, _) = checkpoint_builder(DType::F32);
    let err = vb
        .pp("encoder")
        .pp("layer")
        .pp(0)
        .get([8, 8], "attention.query.weight")
        .unwrap_err();
    let msg = err.to_string();
    match err {
        Error::MissingKey { key, nearest } => {
            assert_eq!(key, "encoder.layer.0.attention.query.weight");
            assert!(!nearest.is_empty() && nearest.len() <= 5, "{nearest:?}");
            assert_eq!(nearest[0], "encoder.layers.0.attention.query.weight");
            assert!(
                msg.contains("encoder.layers.0.attention.query.weight"),
                "{msg}"
            );
        }
        other => panic!("expected MissingKey, got {other:?}"),
    }
    // A forgotten prefix segment.
    let Err(Error::MissingKey { nearest, .. }) = vb.get_unchecked("word_embeddings.weight") else {
        panic!("expected MissingKey")
    };
    assert_eq!(nearest[0], "embeddings.word_embeddings.weight");
    // Same for the in-memory source.
    let mem = VarBuilder::from_tensors(weights(&dev()), DType::F32, &dev());
    let Err(Error::MissingKey { nearest, .. }) =
        mem.get([8], "encoder.layers.2.attention.key.bais")
    else {
        panic!("expected MissingKey")
    };
    assert_eq!(nearest[0], "encoder.layers.2.attention.key.bias");
}

fn load_attention(vb: &VarBuilder, layers: usize) {
    for l in 0..layers {
        let a = vb.pp("encoder").pp("layers").pp(l).pp("attention");
        for p in ["query", "key", "value"] {
            let p = a.pp(p);
            p.get([8, 8], "weight").unwrap();
            p.get([8], "bias").unwrap();
        }
    }
}

#[test]
fn strict_mode_reports_unused_keys() {
    let (_dir, vb, _) = checkpoint_builder(DType::F32);
    load_attention(&vb, 2);
    let unused = vb.unused_keys();
    assert_eq!(unused.len(), 6 + 2, "{unused:?}");
    assert!(unused.contains(&"encoder.layers.2.attention.query.weight".to_string()));
    assert!(unused.contains(&"embeddings.position_ids".to_string()));
    // Scoped to a sub-builder's prefix.
    assert_eq!(vb.pp("embeddings").unused_keys().len(), 2);
    assert_eq!(
        vb.pp("encoder").pp("layers").pp(0).unused_keys(),
        Vec::<String>::new()
    );
    // `layers.1` does not cover `layers.10`-style siblings: prefixes end at a dot.
    assert!(vb.pp("encoder").pp("layers").pp(2).unused_keys().len() == 6);

    match vb.finish_strict() {
        Err(e @ Error::UnusedKeys { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with("8 unused weight(s)"), "{msg}");
            assert!(msg.contains("embeddings.word_embeddings.weight"), "{msg}");
        }
        other => panic!("expected UnusedKeys, got {other:?}"),
    }

    load_attention(&vb, 3);
    vb.pp("embeddings")
        .get([10, 8], "word_embeddings.weight")
        .unwrap();
    assert_eq!(vb.unused_keys(), vec!["embeddings.position_ids"]);
    vb.pp("embeddings").allow_unused("position_ids");
    assert!(vb.unused_keys().is_empty());
    vb.finish_strict().unwrap();
}

#[test]
fn allow_unused_by_predicate_and_prefix() {
    let vb = VarBuilder::from_tensors(weights(&dev()), DType::F32, &dev());
    vb.allow_unused_if(|k| k.ends_with(".position_ids"))
        .allow_unused("encoder.layers.2");
    load_attention(&vb, 2);
    assert_eq!(vb.unused_keys(), vec!["embeddings.word_embeddings.weight"]);
    vb.pp("embeddings")
        .get_unchecked("word_embeddings.weight")
        .unwrap();
    vb.finish_strict().unwrap();
    // contains() is not a request.
    let fresh = VarBuilder::from_tensors(weights(&dev()), DType::F32, &dev());
    assert!(fresh.contains("embeddings.position_ids"));
    assert_eq!(fresh.unused_keys().len(), 20);
}

#[test]
fn requests_are_shared_across_threads_and_clones() {
    let vb = VarBuilder::from_tensors(weights(&dev()), DType::F32, &dev());
    std::thread::scope(|s| {
        for l in 0..3 {
            let vb = vb.pp("encoder").pp("layers").pp(l);
            s.spawn(move || {
                for p in ["query", "key", "value"] {
                    vb.pp("attention").pp(p).get_unchecked("weight").unwrap();
                    vb.pp("attention").pp(p).get_unchecked("bias").unwrap();
                }
            });
        }
    });
    assert_eq!(vb.unused_keys().len(), 2);
}

#[test]
fn memory_builder_with_random_weights() {
    let device = dev();
    let w = Tensor::rand_normal(0.0, 0.02, [4, 4], DType::F32, 0, &device).unwrap();
    let vb = VarBuilder::from_tensors(
        HashMap::from([("fc.weight".to_string(), w.clone())]),
        DType::BF16,
        &device,
    );
    let got = vb.pp("fc").get([4, 4], "weight").unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let f32_again = vb.with_dtype(DType::F32).get([4, 4], "fc.weight").unwrap();
    assert!(f32_again.shares_storage_with(&w));
    assert_eq!(vb.keys(), vec!["fc.weight"]);
    assert!(format!("{vb:?}").contains("memory"));
}

#[test]
fn from_path_opens_files_and_directories() {
    let device = dev();
    let dir = tempfile::tempdir().unwrap();
    let t = Tensor::from_vec(vec![1f32, 2., 3.], [3], &device).unwrap();
    safetensors::save(&[("a.b", &t)], dir.path().join("model.safetensors"), None).unwrap();
    let vb = VarBuilder::from_path(dir.path(), DType::F64, &device).unwrap();
    let a = vb.pp("a").get(3, "b").unwrap();
    assert_eq!(a.to_vec::<f64>().unwrap(), vec![1., 2., 3.]);
    assert!(VarBuilder::from_path(dir.path().join("nope"), DType::F32, &device).is_err());
}

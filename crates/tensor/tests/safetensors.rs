//! Safetensors loading and saving: round trips, zero-copy loading, sharded checkpoints,
//! atomic writes, and corrupt files (explicit cases and a proptest of random corruptions).

use std::collections::HashMap;
use std::path::Path;

use glimpse_tensor::safetensors::{self, Checkpoint, FileDType, SafeTensorsFile};
use glimpse_tensor::{DType, Device, Error, Tensor};
use half::{bf16, f16};
use proptest::prelude::*;

fn dev() -> Device {
    glimpse_cpu::device()
}

/// Builds a file image by hand: `entries` are `(name, dtype, shape, [start, end])`.
fn image(entries: &[(&str, &str, &[usize], [u64; 2])], data: &[u8]) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    for (name, dtype, shape, offsets) in entries {
        obj.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}),
        );
    }
    let header = serde_json::to_vec(&obj).unwrap();
    with_header(&header, data)
}

fn with_header(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

fn corrupt_msg(r: Result<SafeTensorsFile, Error>) -> String {
    match r {
        Err(Error::SafeTensors { msg, .. }) => msg,
        Err(e) => panic!("expected a SafeTensors error, got {e}"),
        Ok(_) => panic!("expected a SafeTensors error, got a valid file"),
    }
}

fn open_bytes(bytes: Vec<u8>) -> Result<SafeTensorsFile, Error> {
    SafeTensorsFile::from_bytes(bytes, "test.safetensors")
}

fn sample_tensors(device: &Device) -> Vec<(String, Tensor)> {
    vec![
        (
            "f16".into(),
            Tensor::from_vec(
                [1.5f32, -2.0, 0.25, 65504.0].map(f16::from_f32).to_vec(),
                [2, 2],
                device,
            )
            .unwrap(),
        ),
        (
            "bf16".into(),
            Tensor::from_vec(
                [3.0f32, -0.5, 1e10].map(bf16::from_f32).to_vec(),
                [3],
                device,
            )
            .unwrap(),
        ),
        (
            "f32".into(),
            Tensor::from_vec(vec![0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6], [2, 3], device).unwrap(),
        ),
        (
            "f64".into(),
            Tensor::from_vec(vec![std::f64::consts::PI, -1e300], [2, 1], device).unwrap(),
        ),
        (
            "u32".into(),
            Tensor::from_vec(vec![0u32, 7, u32::MAX], [3], device).unwrap(),
        ),
        (
            "scalar".into(),
            Tensor::from_vec(vec![42f32], (), device).unwrap(),
        ),
        (
            "empty".into(),
            Tensor::from_vec(Vec::<f32>::new(), [0, 4], device).unwrap(),
        ),
    ]
}

fn as_refs(v: &[(String, Tensor)]) -> Vec<(&str, &Tensor)> {
    v.iter().map(|(n, t)| (n.as_str(), t)).collect()
}

#[test]
fn round_trip_every_dtype() {
    let device = dev();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.safetensors");
    let tensors = sample_tensors(&device);
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::save(&as_refs(&tensors), &path, Some(meta.clone())).unwrap();

    let file = SafeTensorsFile::open(&path).unwrap();
    assert_eq!(file.metadata(), &meta);
    let mut names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(file.names(), names);
    for (name, t) in &tensors {
        let info = file.info(name).unwrap();
        assert_eq!(info.dtype, FileDType::from(t.dtype()));
        assert_eq!(info.shape, t.dims());
        let loaded = file.load(name, &device).unwrap();
        assert_eq!(loaded.dtype(), t.dtype(), "{name}");
        assert_eq!(loaded.dims(), t.dims(), "{name}");
        assert_eq!(loaded.to_host().unwrap(), t.to_host().unwrap(), "{name}");
    }
    // Reading into memory instead of mapping gives the same tensors.
    let read = SafeTensorsFile::read(&path).unwrap();
    for (name, t) in &tensors {
        let loaded = read.load(name, &device).unwrap();
        assert_eq!(loaded.to_host().unwrap(), t.to_host().unwrap(), "{name}");
    }
}

#[test]
fn save_map_round_trip_and_non_contiguous_input() {
    let device = dev();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.safetensors");
    let a = Tensor::from_vec((0..6).map(|x| x as f32).collect(), [2, 3], &device).unwrap();
    let at = a.t().unwrap(); // a strided view
    let map = HashMap::from([("a".to_string(), a.clone()), ("at".to_string(), at.clone())]);
    safetensors::save_map(&map, &path, None).unwrap();
    let file = SafeTensorsFile::open(&path).unwrap();
    assert!(file.metadata().is_empty());
    let loaded = file.load("at", &device).unwrap();
    assert_eq!(loaded.dims(), &[3, 2]);
    assert_eq!(
        loaded.to_vec::<f32>().unwrap(),
        vec![0., 3., 1., 4., 2., 5.]
    );
}

#[test]
fn duplicate_names_are_rejected_on_save() {
    let device = dev();
    let dir = tempfile::tempdir().unwrap();
    let t = Tensor::zeros([2], DType::F32, &device).unwrap();
    let err = safetensors::save(&[("x", &t), ("x", &t)], dir.path().join("d"), None).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn aligned_f32_is_zero_copy_on_cpu() {
    let device = dev();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z.safetensors");
    let h = Tensor::from_vec(vec![f16::ONE; 3], [3], &device).unwrap();
    let w = Tensor::rand_normal(0.0, 1.0, [16, 8], DType::F32, 1, &device).unwrap();
    let d = Tensor::rand_normal(0.0, 1.0, [5], DType::F64, 2, &device).unwrap();
    safetensors::save(&[("w", &w), ("h", &h), ("d", &d)], &path, None).unwrap();
    let file = SafeTensorsFile::open(&path).unwrap();
    for name in ["w", "h", "d"] {
        let t = file.load(name, &device).unwrap();
        let storage = glimpse_cpu::cpu_storage(&**t.storage()).unwrap();
        assert!(storage.is_shared(), "{name} was copied");
    }
    assert_eq!(
        file.load("w", &device).unwrap().to_vec::<f32>().unwrap(),
        w.to_vec::<f32>().unwrap()
    );
    // The tensor keeps the mapping alive after the file handle is gone.
    let t = file.load("w", &device).unwrap();
    drop(file);
    assert_eq!(t.to_vec::<f32>().unwrap(), w.to_vec::<f32>().unwrap());
}

#[test]
fn misaligned_data_is_copied_and_correct() {
    // A header of odd length puts the data section at an odd address.
    let values = [1.0f32, 2.0, 3.0];
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut header = br#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#.to_vec();
    if (8 + header.len()).is_multiple_of(4) {
        header.push(b' ');
    }
    let file = open_bytes(with_header(&header, &data)).unwrap();
    let t = file.load("x", &dev()).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), values);
}

#[test]
fn load_as_converts() {
    let device = dev();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let f = Tensor::from_vec(vec![1.0f32, -2.5, 3.0], [3], &device).unwrap();
    let u = Tensor::from_vec(vec![1u32, 2, 3], [3], &device).unwrap();
    safetensors::save(&[("f", &f), ("u", &u)], &path, None).unwrap();
    let file = SafeTensorsFile::open(&path).unwrap();
    for dtype in [DType::F16, DType::BF16, DType::F32, DType::F64] {
        let t = file.load_as("f", dtype, &device).unwrap();
        assert_eq!(t.dtype(), dtype);
        assert_eq!(t.to_f64_vec().unwrap(), vec![1.0, -2.5, 3.0]);
        let t = file.load_as("u", dtype, &device).unwrap();
        assert_eq!(t.dtype(), dtype);
        assert_eq!(t.to_f64_vec().unwrap(), vec![1.0, 2.0, 3.0]);
    }
    let same = file.load_as("f", DType::F32, &device).unwrap();
    assert!(
        glimpse_cpu::cpu_storage(&**same.storage())
            .unwrap()
            .is_shared()
    );
}

fn i64_image(values: &[i64]) -> Vec<u8> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    image(
        &[(
            "position_ids",
            "I64",
            &[1, values.len()],
            [0, data.len() as u64],
        )],
        &data,
    )
}

#[test]
fn i64_converts_to_u32_when_values_fit() {
    let device = dev();
    let file = open_bytes(i64_image(&[0, 1, 2, 76, 4_294_967_295])).unwrap();
    assert_eq!(file.info("position_ids").unwrap().dtype, FileDType::I64);
    let t = file.load("position_ids", &device).unwrap();
    assert_eq!(t.dtype(), DType::U32);
    assert_eq!(t.dims(), &[1, 5]);
    assert_eq!(t.to_vec::<u32>().unwrap(), vec![0, 1, 2, 76, u32::MAX]);
    let f = file.load_as("position_ids", DType::F32, &device).unwrap();
    assert_eq!(f.dtype(), DType::F32);
    assert_eq!(f.to_f64_vec().unwrap()[3], 76.0);
}

#[test]
fn i64_out_of_range_is_an_error() {
    let device = dev();
    for bad in [-1i64, 1 << 32] {
        let file = open_bytes(i64_image(&[0, bad])).unwrap();
        let err = file.load("position_ids", &device).unwrap_err();
        assert!(matches!(err, Error::SafeTensors { .. }), "{err}");
        assert!(err.to_string().contains("U32"), "{err}");
        // Floats can hold them.
        let f = file.load_as("position_ids", DType::F64, &device).unwrap();
        assert_eq!(f.to_f64_vec().unwrap(), vec![0.0, bad as f64]);
    }
}

#[test]
fn unsupported_dtypes_are_listed_but_not_loaded() {
    let device = dev();
    let file = open_bytes(image(
        &[
            ("mask", "BOOL", &[4], [0, 4]),
            ("bytes", "U8", &[4], [4, 8]),
            ("ints", "I32", &[2], [8, 16]),
        ],
        &[0u8; 16],
    ))
    .unwrap();
    assert_eq!(file.names(), vec!["bytes", "ints", "mask"]);
    for name in ["mask", "bytes", "ints"] {
        let err = file.load(name, &device).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cannot load") && msg.contains(name), "{msg}");
        assert!(file.load_as(name, DType::F32, &device).is_err());
    }
    assert_eq!(file.info("ints").unwrap().dtype, FileDType::I32);
}

#[test]
fn missing_tensor_suggests_names() {
    let device = dev();
    let t = Tensor::zeros([1], DType::F32, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    safetensors::save(&[("layers.0.weight", &t)], &path, None).unwrap();
    let file = SafeTensorsFile::open(&path).unwrap();
    match file.load("layer.0.weight", &device) {
        Err(Error::MissingKey { key, nearest }) => {
            assert_eq!(key, "layer.0.weight");
            assert_eq!(nearest, vec!["layers.0.weight"]);
        }
        other => panic!("expected MissingKey, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------ sharding

#[test]
fn sharded_round_trip() {
    let device = dev();
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<(String, Tensor)> = (0..7)
        .map(|i| {
            let t = Tensor::rand_normal(0.0, 1.0, [4, 4], DType::F32, i as u64, &device).unwrap();
            (format!("layers.{i}.weight"), t)
        })
        .chain(std::iter::once((
            "ids".to_string(),
            Tensor::from_vec(vec![1u32, 2], [2], &device).unwrap(),
        )))
        .collect();
    // Each f32 tensor is 64 bytes: at most two per shard.
    let index = safetensors::save_sharded(&as_refs(&tensors), dir.path(), 130).unwrap();
    assert_eq!(index, dir.path().join("model.safetensors.index.json"));
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "{files:?}");
    assert_eq!(files[0], "model-00001-of-00004.safetensors");
    assert!(files.contains(&"model.safetensors.index.json".to_string()));

    for ckpt in [
        Checkpoint::open(dir.path()).unwrap(),
        Checkpoint::open(&index).unwrap(),
    ] {
        assert!(ckpt.is_sharded());
        assert_eq!(ckpt.shards().len(), 4);
        assert_eq!(ckpt.len(), tensors.len());
        assert_eq!(
            ckpt.index_metadata()["total_size"],
            (7 * 64 + 8).to_string()
        );
        for (name, t) in &tensors {
            assert!(ckpt.contains(name));
            assert_eq!(ckpt.shape(name).unwrap(), t.dims());
            let loaded = ckpt.load(name, &device).unwrap();
            assert_eq!(loaded.to_host().unwrap(), t.to_host().unwrap());
        }
        let half = ckpt
            .load_as("layers.3.weight", DType::BF16, &device)
            .unwrap();
        assert_eq!(half.dtype(), DType::BF16);
        assert!(matches!(
            ckpt.load("nope", &device),
            Err(Error::MissingKey { .. })
        ));
    }
}

#[test]
fn single_file_checkpoint() {
    let device = dev();
    let dir = tempfile::tempdir().unwrap();
    let t = Tensor::from_vec(vec![1f32, 2.], [2], &device).unwrap();
    safetensors::save(&[("a", &t)], dir.path().join("model.safetensors"), None).unwrap();
    for ckpt in [
        Checkpoint::open(dir.path()).unwrap(),
        Checkpoint::open(dir.path().join("model.safetensors")).unwrap(),
    ] {
        assert!(!ckpt.is_sharded());
        assert_eq!(ckpt.names(), vec!["a"]);
        assert_eq!(ckpt.dtype("a"), Some(FileDType::F32));
        assert_eq!(
            ckpt.load("a", &device).unwrap().to_vec::<f32>().unwrap(),
            [1., 2.]
        );
    }
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Checkpoint::open(empty.path()),
        Err(Error::Io { .. })
    ));
}

fn write_sharded(dir: &Path) -> std::path::PathBuf {
    let device = dev();
    let a = Tensor::zeros([8], DType::F32, &device).unwrap();
    let b = Tensor::ones([8], DType::F32, &device).unwrap();
    safetensors::save_sharded(&[("a", &a), ("b", &b)], dir, 32).unwrap()
}

fn index_err(path: &Path) -> String {
    match Checkpoint::open(path) {
        Err(Error::SafeTensors { msg, path: p }) => {
            assert!(p.ends_with("index.json"), "{p}");
            msg
        }
        other => panic!("expected a SafeTensors error, got {other:?}"),
    }
}

#[test]
fn missing_shard_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let index = write_sharded(dir.path());
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let msg = index_err(&index);
    assert!(
        msg.contains("model-00002-of-00002.safetensors") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[test]
fn bad_index_json_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let index = write_sharded(dir.path());
    let cases: [(&str, &str); 5] = [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        (r#"{"metadata": {}}"#, "no `weight_map`"),
        (r#"{"weight_map": {"a": 3}}"#, "not a file name"),
        (
            r#"{"weight_map": {"a": "../model-00001-of-00002.safetensors"}}"#,
            "relative path",
        ),
    ];
    for (text, expect) in cases {
        std::fs::write(&index, text).unwrap();
        let msg = index_err(&index);
        assert!(msg.contains(expect), "{text}: {msg}");
    }
}

#[test]
fn weight_absent_from_its_shard_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let index = write_sharded(dir.path());
    std::fs::write(
        &index,
        r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let msg = index_err(&index);
    assert!(
        msg.contains("`b`") && msg.contains("does not hold"),
        "{msg}"
    );
}

#[test]
fn corrupt_shard_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let index = write_sharded(dir.path());
    let shard = dir.path().join("model-00002-of-00002.safetensors");
    std::fs::write(&shard, b"garbage").unwrap();
    match Checkpoint::open(&index) {
        Err(Error::SafeTensors { path, .. }) => assert!(path.ends_with("00002.safetensors")),
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------------------------------------ atomic writes

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn atomic_save_over_existing_file() {
    let device = dev();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let old = Tensor::zeros([64], DType::F32, &device).unwrap();
    let new = Tensor::ones([128], DType::F32, &device).unwrap();
    safetensors::save(&[("w", &old)], &path, None).unwrap();

    // A reader that mapped the old file keeps seeing the old content after the replace.
    let before = SafeTensorsFile::open(&path).unwrap();
    safetensors::save(&[("w", &new)], &path, None).unwrap();
    assert_eq!(
        before.load("w", &device).unwrap().to_vec::<f32>().unwrap(),
        vec![0.0; 64]
    );
    let after = SafeTensorsFile::open(&path).unwrap();
    assert_eq!(
        after.load("w", &device).unwrap().to_vec::<f32>().unwrap(),
        vec![1.0; 128]
    );
    assert_eq!(dir_entries(dir.path()), vec!["w.safetensors"]);

    // Concurrent saves of two versions: every observation is a complete old or new file.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let path = path.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let device = dev();
            let mut seen = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let f = SafeTensorsFile::read(&path).expect("a complete file");
                let v = f.load("w", &device).unwrap().to_vec::<f32>().unwrap();
                assert!(v == vec![0.0; 64] || v == vec![1.0; 128]);
                seen += 1;
            }
            seen
        })
    };
    for i in 0..50 {
        let t = if i % 2 == 0 { &old } else { &new };
        safetensors::save(&[("w", t)], &path, None).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(dir_entries(dir.path()), vec!["w.safetensors"]);
}

#[test]
fn failed_save_leaves_old_file_and_no_temp() {
    let device = dev();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let old = Tensor::zeros([4], DType::F32, &device).unwrap();
    safetensors::save(&[("w", &old)], &path, None).unwrap();
    let before = std::fs::read(&path).unwrap();
    // Renaming a file over a non-empty directory fails after the temp file was written.
    let blocker = dir.path().join("blocker");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("x"), b"x").unwrap();
    assert!(safetensors::save(&[("w", &old)], &blocker, None).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(dir_entries(dir.path()), vec!["blocker", "w.safetensors"]);
    // A directory that does not exist.
    assert!(matches!(
        safetensors::save(&[("w", &old)], dir.path().join("no/such/dir.st"), None),
        Err(Error::Io { .. })
    ));
}

// ------------------------------------------------------------------------------ corruption

#[test]
fn truncated_file() {
    for len in 0..8 {
        let msg = corrupt_msg(open_bytes(vec![0; len]));
        assert!(msg.contains("shorter than"), "{msg}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.safetensors");
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        SafeTensorsFile::open(&path),
        Err(Error::SafeTensors { .. })
    ));
    // A valid file cut short anywhere is an error.
    let good = image(&[("x", "F32", &[4], [0, 16])], &[0u8; 16]);
    for cut in 0..good.len() {
        assert!(open_bytes(good[..cut].to_vec()).is_err(), "cut at {cut}");
    }
    let msg = corrupt_msg(open_bytes(good[..good.len() - 1].to_vec()));
    assert!(msg.contains("past the end"), "{msg}");
}

#[test]
fn header_length_past_end() {
    let mut bytes = image(&[("x", "F32", &[1], [0, 4])], &[0u8; 4]);
    let len = bytes.len() as u64;
    bytes[..8].copy_from_slice(&len.to_le_bytes());
    let msg = corrupt_msg(open_bytes(bytes.clone()));
    assert!(msg.contains("runs past the end of the file"), "{msg}");
    for huge in [u64::MAX, 1 << 40, i64::MAX as u64 + 1] {
        bytes[..8].copy_from_slice(&huge.to_le_bytes());
        let msg = corrupt_msg(open_bytes(bytes.clone()));
        assert!(msg.contains("header length"), "{msg}");
    }
}

#[test]
fn bad_json_and_utf8() {
    let cases: [(&[u8], &str); 6] = [
        (b"{\"x\": ", "not a valid JSON"),
        (b"[1, 2, 3]", "not a valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (br#"{"x": 3}"#, "not a JSON object"),
        (br#"{"x": {"dtype": "F32", "shape": [1]}}"#, "data_offsets"),
        (br#"{"__metadata__": {"a": 1}}"#, "not a string"),
    ];
    for (header, expect) in cases {
        let msg = corrupt_msg(open_bytes(with_header(header, &[])));
        assert!(msg.contains(expect), "{header:?}: {msg}");
    }
}

#[test]
fn offsets_out_of_bounds() {
    let msg = corrupt_msg(open_bytes(image(&[("x", "F32", &[4], [0, 16])], &[0; 8])));
    assert!(msg.contains("past the end of the data"), "{msg}");
    let msg = corrupt_msg(open_bytes(image(
        &[("x", "F32", &[1], [u64::MAX - 3, u64::MAX])],
        &[0; 8],
    )));
    assert!(msg.contains("`x`"), "{msg}");
    let msg = corrupt_msg(open_bytes(image(&[("x", "F32", &[0], [8, 4])], &[0; 8])));
    assert!(msg.contains("end before they start"), "{msg}");
}

#[test]
fn overlapping_and_non_contiguous_ranges() {
    let msg = corrupt_msg(open_bytes(image(
        &[("a", "F32", &[2], [0, 8]), ("b", "F32", &[2], [4, 12])],
        &[0; 12],
    )));
    assert!(msg.contains("overlaps"), "{msg}");
    // Two names sharing the same bytes.
    let msg = corrupt_msg(open_bytes(image(
        &[("a", "F32", &[2], [0, 8]), ("b", "F32", &[2], [0, 8])],
        &[0; 8],
    )));
    assert!(msg.contains("overlaps"), "{msg}");
    let msg = corrupt_msg(open_bytes(image(
        &[("a", "F32", &[1], [0, 4]), ("b", "F32", &[1], [8, 12])],
        &[0; 12],
    )));
    assert!(msg.contains("not contiguous"), "{msg}");
    // Trailing bytes nobody owns.
    let msg = corrupt_msg(open_bytes(image(&[("a", "F32", &[1], [0, 4])], &[0; 8])));
    assert!(msg.contains("cover 4 bytes"), "{msg}");
    // Duplicate keys in the JSON.
    let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let msg = corrupt_msg(open_bytes(with_header(header, &[0; 8])));
    assert!(msg.contains("twice"), "{msg}");
}

#[test]
fn wrong_byte_count_for_shape() {
    let msg = corrupt_msg(open_bytes(image(&[("x", "F32", &[3], [0, 8])], &[0; 8])));
    assert!(msg.contains("needs 12 bytes"), "{msg}");
    let msg = corrupt_msg(open_bytes(image(
        &[("x", "F32", &[1 << 32, 1 << 32, 1 << 32], [0, 8])],
        &[0; 8],
    )));
    assert!(msg.contains("overflows"), "{msg}");
    // Zero elements, but strides that would overflow.
    let msg = corrupt_msg(open_bytes(image(
        &[("x", "F32", &[0, 1 << 40, 1 << 40], [0, 0])],
        &[],
    )));
    assert!(msg.contains("overflows"), "{msg}");
    let ok = open_bytes(image(&[("x", "F32", &[0, 1 << 20, 1 << 20], [0, 0])], &[])).unwrap();
    assert_eq!(ok.load("x", &dev()).unwrap().dims(), &[0, 1 << 20, 1 << 20]);
    let msg = corrupt_msg(open_bytes(image(&[("x", "F4", &[3], [0, 2])], &[0; 2])));
    assert!(msg.contains("whole number of bytes"), "{msg}");
    let header = br#"{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#;
    let msg = corrupt_msg(open_bytes(with_header(header, &[0; 4])));
    assert!(msg.contains("non-negative"), "{msg}");
}

#[test]
fn unknown_dtype() {
    let msg = corrupt_msg(open_bytes(image(&[("x", "F17", &[1], [0, 4])], &[0; 4])));
    assert!(msg.contains("unknown dtype `F17`"), "{msg}");
}

#[test]
fn corrupt_file_on_disk_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    std::fs::write(&path, image(&[("x", "F32", &[3], [0, 8])], &[0; 8])).unwrap();
    let err = SafeTensorsFile::open(&path).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("bad.safetensors") && text.contains("needs 12 bytes"),
        "{text}"
    );
    assert!(matches!(
        SafeTensorsFile::open(dir.path().join("absent.safetensors")),
        Err(Error::Io { .. })
    ));
}

// ------------------------------------------------------------------------------ fuzzing

fn valid_file_bytes() -> Vec<u8> {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(write_valid_file).clone()
}

fn write_valid_file() -> Vec<u8> {
    let device = dev();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.safetensors");
    let tensors = sample_tensors(&device);
    let meta = HashMap::from([("k".to_string(), "v".to_string())]);
    safetensors::save(&as_refs(&tensors), &path, Some(meta)).unwrap();
    std::fs::read(path).unwrap()
}

#[derive(Clone, Debug)]
enum Corruption {
    Truncate(usize),
    Flip(Vec<(usize, u8)>),
    HeaderLen(u64),
    /// Inserts bytes into the header; `true` also updates the length prefix to match, so the
    /// JSON parser (rather than the length check) sees the damage.
    Splice(usize, Vec<u8>, bool),
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        any::<usize>().prop_map(Corruption::Truncate),
        proptest::collection::vec((any::<usize>(), 1u8..), 1..8).prop_map(Corruption::Flip),
        prop_oneof![any::<u64>(), 0u64..2048].prop_map(Corruption::HeaderLen),
        (
            any::<usize>(),
            proptest::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    proptest::sample::select(b"{}[],:\"0123456789-eE. ".to_vec())
                ],
                1..12
            ),
            any::<bool>(),
        )
            .prop_map(|(at, b, fix)| Corruption::Splice(at, b, fix)),
    ]
}

fn apply(mut bytes: Vec<u8>, c: &Corruption) -> Vec<u8> {
    match c {
        Corruption::Truncate(n) => bytes.truncate(n % (bytes.len() + 1)),
        Corruption::Flip(flips) => {
            let len = bytes.len();
            for &(at, mask) in flips {
                bytes[at % len] ^= mask;
            }
        }
        Corruption::HeaderLen(v) => bytes[..8].copy_from_slice(&v.to_le_bytes()),
        Corruption::Splice(at, ins, fix) => {
            let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            // The length field may itself be corrupt: stay inside the bytes.
            let end = header_len.saturating_add(8).min(bytes.len());
            let at = 8 + at % (end - 8 + 1);
            bytes.splice(at..at, ins.iter().copied());
            if *fix {
                let new_len = header_len.saturating_add(ins.len()) as u64;
                bytes[..8].copy_from_slice(&new_len.to_le_bytes());
            }
        }
    }
    bytes
}

fn open_and_load_all(bytes: Vec<u8>) {
    let device = dev();
    if let Ok(file) = open_bytes(bytes) {
        for name in file.names() {
            let _ = file.load(name, &device);
            let _ = file.load_as(name, DType::F32, &device);
            let _ = file.load_as(name, DType::U32, &device);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_corruptions_never_panic(cs in proptest::collection::vec(corruption(), 1..4)) {
        let mut bytes = valid_file_bytes();
        for c in &cs {
            if bytes.len() < 8 {
                break;
            }
            bytes = apply(bytes, c);
        }
        let result = std::panic::catch_unwind(|| open_and_load_all(bytes));
        prop_assert!(result.is_ok(), "panicked on corruption {:?}", cs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let result = std::panic::catch_unwind(|| open_and_load_all(bytes));
        prop_assert!(result.is_ok());
    }
}

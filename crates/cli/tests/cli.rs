//! The `glimpse` binary end to end: tiny CLIP and ViT checkpoints with random weights are
//! written to temporary directories, the real CLIP tokenizer and real photos come from
//! `tests/fixtures/processing`, and the binary runs as a user would run it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use glimpse_tensor::safetensors::{SafeTensorsFile, save};
use glimpse_tensor::{DType, Tensor};
use serde_json::{Value, json};
use tempfile::TempDir;

// ------------------------------------------------------------------------------------ helpers

/// Runs the binary with `args`; returns its output.
fn glimpse<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(args)
        .output()
        .expect("the glimpse binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a successful run and returns its stdout.
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "glimpse failed ({:?}):\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Asserts a failed run with `code`, one `error:` paragraph naming every one of `needles`,
/// nothing on stdout and no panic. Returns stderr.
fn fails(o: &Output, code: i32, needles: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit code; stdout: {}\nstderr: {err}",
        stdout(o)
    );
    assert!(err.starts_with("error:"), "stderr starts with error: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr names {n:?}: {err}");
    }
    for bad in [
        "panicked",
        "internal error",
        "RUST_BACKTRACE",
        "stack backtrace",
    ] {
        assert!(!err.contains(bad), "no panic ({bad}): {err}");
    }
    assert!(stdout(o).is_empty(), "nothing on stdout: {}", stdout(o));
    err
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/processing")
}

/// A real photo from the processing fixtures.
fn photo(name: &str) -> PathBuf {
    let p = fixtures().join("images").join(name);
    assert!(p.is_file(), "fixture {} exists", p.display());
    p
}

/// An image written here (the format from the extension).
fn written_image(dir: &Path, name: &str, w: u32, h: u32) -> PathBuf {
    use glimpse_processing::image::{Rgb, RgbImage};
    let path = dir.join(name);
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 6) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    })
    .save(&path)
    .unwrap();
    path
}

fn tokenizer_json() -> PathBuf {
    let p = fixtures().join("tokenizer").join("tokenizer.json");
    assert!(p.is_file(), "fixture {} exists", p.display());
    p
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// A tiny CLIP config that the real tokenizer fits: vocab 49408, eos 49407, 77 positions;
/// every width 16, so the checkpoint is about 3 MB (the token embedding).
fn clip_config() -> Value {
    json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": 8,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": 49408,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 1
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "hidden_act": "quick_gelu"
        }
    })
}

/// The tensors of a random checkpoint for a CLIP config, by key.
fn clip_weights(config: &Value) -> HashMap<String, Tensor> {
    let cfg: glimpse_clip::ClipConfig =
        glimpse_nn::parse_json_config(&config.to_string(), "test config").unwrap();
    let device = glimpse_cpu::device();
    let vb = glimpse_clip::random_weights(&cfg, DType::F32, &device).unwrap();
    glimpse_clip::weight_specs(&cfg)
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .map(|k| {
            let t = vb.get_unchecked(&k).unwrap();
            (k, t)
        })
        .collect()
}

fn save_weights(path: &Path, tensors: &HashMap<String, Tensor>) {
    let list: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    save(&list, path, None).unwrap();
}

/// A CLIP model directory: config.json, model.safetensors and tokenizer.json (no
/// preprocessor config: CLIP's defaults at 32 pixels).
fn clip_dir() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = clip_config();
    write_json(&dir.path().join("config.json"), &config);
    save_weights(
        &dir.path().join("model.safetensors"),
        &clip_weights(&config),
    );
    std::fs::copy(tokenizer_json(), dir.path().join("tokenizer.json")).unwrap();
    dir
}

const VIT_LABELS: [&str; 3] = ["tabby cat", "golden retriever", "school bus"];

/// A ViTForImageClassification directory with three named classes.
fn vit_dir() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "image_size": 32,
        "patch_size": 8,
        "id2label": {"0": VIT_LABELS[0], "1": VIT_LABELS[1], "2": VIT_LABELS[2]},
    });
    write_json(&dir.path().join("config.json"), &config);
    let cfg: glimpse_vit::ViTConfig =
        glimpse_nn::parse_json_config(&config.to_string(), "test config").unwrap();
    let device = glimpse_cpu::device();
    let vb = glimpse_vit::random_weights(&cfg, true, DType::F32, &device).unwrap();
    let tensors: HashMap<String, Tensor> = glimpse_vit::weight_specs(&cfg, true)
        .unwrap()
        .into_iter()
        .map(|s| {
            let t = vb.get_unchecked(&s.key).unwrap();
            (s.key, t)
        })
        .collect();
    save_weights(&dir.path().join("model.safetensors"), &tensors);
    dir
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("stdout is one JSON document ({e}): {text}"))
}

/// Checks one image's ranked predictions: `k` entries, best first, probabilities in [0, 1];
/// returns (labels, probabilities).
fn check_ranked(result: &Value, k: usize) -> (Vec<String>, Vec<f64>) {
    let preds = result["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), k, "{result}");
    let labels: Vec<String> = preds
        .iter()
        .map(|p| p["label"].as_str().unwrap().to_string())
        .collect();
    let probs: Vec<f64> = preds
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .collect();
    for (i, p) in preds.iter().enumerate() {
        assert_eq!(p["rank"].as_u64(), Some(i as u64 + 1));
    }
    assert!(probs.iter().all(|p| (0.0..=1.0).contains(p)), "{probs:?}");
    assert!(
        probs.windows(2).all(|w| w[0] >= w[1]),
        "best first: {probs:?}"
    );
    (labels, probs)
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

// -------------------------------------------------------------------------------- zero-shot

#[test]
fn zero_shot_json_ranks_every_label_per_image() {
    let model = clip_dir();
    let images = [
        photo("chelsea.png"),
        photo("rocket.jpg"),
        photo("coins.png"),
    ];
    let labels = ["cat", "rocket", "coins", "a red car"];
    let mut args: Vec<String> = vec!["zero-shot".into(), "--model".into(), path_str(model.path())];
    args.extend(images.iter().map(|p| path_str(p)));
    args.push("--labels".into());
    args.extend(labels.iter().map(|l| l.to_string()));
    args.extend(["--json".into(), "--batch-size".into(), "2".into()]);
    let doc = parse_json(&ok(&glimpse(&args)));

    assert_eq!(doc["command"], "zero-shot");
    assert_eq!(doc["templates"], json!(["a photo of a {}."]));
    assert_eq!(doc["labels"], json!(labels));
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), images.len());
    for (r, img) in results.iter().zip(&images) {
        assert_eq!(r["image"].as_str().unwrap(), path_str(img), "paths echoed");
        let (mut got, probs) = check_ranked(r, labels.len());
        let sum: f64 = probs.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to 1: {sum}");
        got.sort();
        let mut want: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "every label ranked once");
    }
}

#[test]
fn zero_shot_text_output_and_options() {
    let model = clip_dir();
    let dir = tempfile::tempdir().unwrap();
    let labels_file = dir.path().join("labels.txt");
    std::fs::write(&labels_file, "cat\n\n  dog  \nbird\nfish\nhorse\nsheep\n").unwrap();
    let img = photo("chelsea.png");

    // Default top-k is 5 of the 6 labels; the file's blank line is skipped, spaces trimmed.
    let out = ok(&glimpse([
        OsStr::new("zero-shot"),
        OsStr::new("--model"),
        model.path().as_os_str(),
        img.as_os_str(),
        OsStr::new("--labels-file"),
        labels_file.as_os_str(),
        OsStr::new("--ensemble"),
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert_eq!(lines[0], path_str(&img));
    for (i, line) in lines[1..].iter().enumerate() {
        assert!(
            line.trim_start().starts_with(&format!("{}. ", i + 1)),
            "{out}"
        );
        let p: f64 = line.split_whitespace().last().unwrap().parse().unwrap();
        assert!((0.0..=1.0).contains(&p), "{out}");
    }
    assert!(
        ["cat", "dog", "bird", "fish", "horse", "sheep"]
            .iter()
            .filter(|l| out.contains(*l))
            .count()
            == 5,
        "{out}"
    );

    // --top-k, custom templates, batch sizes and dtypes change nothing about the format;
    // batch size changes nothing about the numbers.
    let run = |extra: &[&str]| -> Value {
        let mut args = vec![
            "zero-shot".to_string(),
            "--model".into(),
            path_str(model.path()),
            "--labels".into(),
            "cat".into(),
            "dog".into(),
            "--template".into(),
            "a photo of a {}.".into(),
            "--template".into(),
            "a drawing of a {}.".into(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--".into(), path_str(&img), path_str(&photo("rocket.jpg"))]);
        parse_json(&ok(&glimpse(&args)))
    };
    let a = run(&["--batch-size", "1"]);
    let b = run(&["--batch-size", "7"]);
    for (ra, rb) in a["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["results"].as_array().unwrap())
    {
        let (la, pa) = check_ranked(ra, 2);
        let (lb, pb) = check_ranked(rb, 2);
        assert_eq!(la, lb);
        for (x, y) in pa.iter().zip(&pb) {
            assert!(
                (x - y).abs() < 1e-5,
                "batching changes nothing: {pa:?} {pb:?}"
            );
        }
    }
    let top1 = run(&["--top-k", "1", "--dtype", "bf16"]);
    assert_eq!(
        top1["results"][0]["predictions"].as_array().unwrap().len(),
        1
    );
    assert_eq!(top1["dtype"], "bf16");
    let f16 = run(&["--dtype", "f16"]);
    let (_, probs) = check_ranked(&f16["results"][1], 2);
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-3);
}

#[test]
fn zero_shot_usage_errors() {
    let model = clip_dir();
    let m = path_str(model.path());
    let img = path_str(&photo("chelsea.png"));
    // No labels at all: clap's usage error.
    let o = glimpse(["zero-shot", "--model", &m, &img]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A template without {}.
    let o = glimpse([
        "zero-shot",
        "--model",
        &m,
        &img,
        "--labels",
        "cat",
        "--template",
        "a photo",
    ]);
    fails(&o, 2, &["template", "{}"]);
    // A label twice.
    let o = glimpse(["zero-shot", "--model", &m, &img, "--labels", "cat", "cat"]);
    fails(&o, 2, &["\"cat\"", "twice"]);
    // --template and --ensemble together.
    let o = glimpse([
        "zero-shot",
        "--model",
        &m,
        &img,
        "--labels",
        "cat",
        "--ensemble",
        "--template",
        "a {}",
    ]);
    assert_eq!(o.status.code(), Some(2));
    // A labels file that does not exist.
    let o = glimpse([
        "zero-shot",
        "--model",
        &m,
        &img,
        "--labels-file",
        "/no/such/labels.txt",
    ]);
    fails(
        &o,
        1,
        &["labels file", "/no/such/labels.txt", "no such file"],
    );
}

// --------------------------------------------------------------------------------- classify

#[test]
fn classify_prints_id2label_names() {
    let model = vit_dir();
    let tmp = tempfile::tempdir().unwrap();
    let images = [
        photo("chelsea.png"),
        written_image(tmp.path(), "gradient.bmp", 40, 30),
        written_image(tmp.path(), "gradient.gif", 17, 50),
    ];
    let mut args = vec![
        "classify".to_string(),
        "--model".into(),
        path_str(model.path()),
        "--top-k".into(),
        "10".into(),
    ];
    args.extend(images.iter().map(|p| path_str(p)));
    let text = ok(&glimpse(&args));
    for label in VIT_LABELS {
        assert_eq!(text.matches(label).count(), images.len(), "{text}");
    }
    for img in &images {
        assert!(text.contains(&path_str(img)), "{text}");
    }

    args.extend(["--json".into(), "--batch-size".into(), "2".into()]);
    let doc = parse_json(&ok(&glimpse(&args)));
    assert_eq!(doc["num_labels"], 3);
    assert_eq!(doc["top_k"], 3, "top-k is capped at the number of classes");
    for (r, img) in doc["results"].as_array().unwrap().iter().zip(&images) {
        assert_eq!(r["image"].as_str().unwrap(), path_str(img));
        let (labels, probs) = check_ranked(r, 3);
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4);
        for l in &labels {
            assert!(VIT_LABELS.contains(&l.as_str()));
        }
        for p in r["predictions"].as_array().unwrap() {
            let i = p["index"].as_u64().unwrap() as usize;
            assert_eq!(p["label"], VIT_LABELS[i], "index and label agree");
        }
    }
}

#[test]
fn classify_reads_preprocessor_config() {
    // A preprocessor config the ViT defaults would not give (another mean and std) changes
    // the probabilities; one that produces the wrong size is reported.
    let model = vit_dir();
    let img = path_str(&photo("chelsea.png"));
    let m = path_str(model.path());
    let run = || parse_json(&ok(&glimpse(["classify", "--model", &m, &img, "--json"])));
    let before = run();
    write_json(
        &model.path().join("preprocessor_config.json"),
        &json!({
            "image_processor_type": "ViTImageProcessor",
            "do_resize": true, "do_rescale": true, "do_normalize": true,
            "image_mean": [0.1, 0.2, 0.3], "image_std": [0.9, 0.8, 0.7],
            "resample": 2, "rescale_factor": 0.00392156862745098,
            "size": {"height": 32, "width": 32}
        }),
    );
    let after = run();
    assert_ne!(
        before["results"][0]["predictions"], after["results"][0]["predictions"],
        "preprocessor_config.json is used"
    );
}

// ------------------------------------------------------------------------------------ embed

/// Reads `key` from a safetensors file as (shape, f32 values).
fn read_tensor(file: &SafeTensorsFile, key: &str) -> (Vec<usize>, Vec<f32>) {
    let t = file.load(key, &glimpse_cpu::device()).unwrap();
    assert_eq!(t.dtype(), DType::F32);
    (t.dims().to_vec(), t.to_vec::<f32>().unwrap())
}

#[test]
fn embed_writes_image_and_text_features() {
    let model = clip_dir();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("emb.safetensors");
    let images = [
        photo("chelsea.png"),
        photo("rocket.jpg"),
        photo("coins.png"),
    ];
    let texts = [
        "a photo of a cat",
        "a rocket",
        "",
        "coins on a table, seen from above",
    ];
    let mut args = vec![
        "embed".to_string(),
        "--model".into(),
        path_str(model.path()),
        "--out".into(),
        path_str(&out),
        "--batch-size".into(),
        "2".into(),
        "--json".into(),
        "--image".into(),
    ];
    args.extend(images.iter().map(|p| path_str(p)));
    args.push("--text".into());
    args.extend(texts.iter().map(|t| t.to_string()));
    let doc = parse_json(&ok(&glimpse(&args)));
    assert_eq!(doc["out"].as_str().unwrap(), path_str(&out));
    assert_eq!(doc["image_embeds"]["shape"], json!([3, 8]));
    assert_eq!(doc["text_embeds"]["shape"], json!([4, 8]));
    assert_eq!(
        doc["image_embeds"]["inputs"],
        json!(images.iter().map(|p| path_str(p)).collect::<Vec<_>>())
    );
    assert_eq!(doc["text_embeds"]["inputs"], json!(texts));

    let file = SafeTensorsFile::open(&out).unwrap();
    let (ishape, ivals) = read_tensor(&file, "image_embeds");
    let (tshape, tvals) = read_tensor(&file, "text_embeds");
    assert_eq!(ishape, [3, 8]);
    assert_eq!(tshape, [4, 8]);
    assert_eq!(
        file.metadata().get("texts").map(String::as_str),
        Some(json!(texts).to_string().as_str())
    );

    // The same features as the library computes for the same inputs.
    let (lib_images, lib_texts) = library_features(model.path(), &images, &texts);
    assert_close(&ivals, &lib_images, 1e-5);
    assert_close(&tvals, &lib_texts, 1e-5);

    // --normalize: unit rows, the same directions; batch size 1 gives the same numbers.
    let out2 = out_dir.path().join("unit.safetensors");
    let mut args2 = args.clone();
    let o = args2.iter().position(|a| a == "--out").unwrap();
    args2[o + 1] = path_str(&out2);
    let b = args2.iter().position(|a| a == "--batch-size").unwrap();
    args2[b + 1] = "1".into();
    args2.push("--normalize".into());
    let text = {
        let mut a = args2.clone();
        a.retain(|x| x != "--json");
        ok(&glimpse(&a))
    };
    assert!(
        text.contains("image_embeds") && text.contains("text_embeds"),
        "{text}"
    );
    assert!(text.contains(&path_str(&out2)), "{text}");
    let file2 = SafeTensorsFile::open(&out2).unwrap();
    for (key, raw) in [("image_embeds", &ivals), ("text_embeds", &tvals)] {
        let (_, unit) = read_tensor(&file2, key);
        for (row, raw_row) in unit.chunks(8).zip(raw.chunks(8)) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{key}: unit rows ({norm})");
            let raw_norm = raw_row.iter().map(|x| x * x).sum::<f32>().sqrt();
            let scaled: Vec<f32> = raw_row.iter().map(|x| x / raw_norm).collect();
            assert_close(row, &scaled, 1e-5);
        }
    }
}

#[test]
fn embed_texts_only_needs_no_image_and_images_only_no_tokenizer() {
    let model = clip_dir();
    let out = model.path().join("texts.safetensors");
    ok(&glimpse([
        OsStr::new("embed"),
        OsStr::new("--model"),
        model.path().as_os_str(),
        OsStr::new("--text"),
        OsStr::new("a cat"),
        OsStr::new("--out"),
        out.as_os_str(),
    ]));
    let file = SafeTensorsFile::open(&out).unwrap();
    assert_eq!(file.names(), ["text_embeds"]);

    std::fs::remove_file(model.path().join("tokenizer.json")).unwrap();
    let out = model.path().join("images.safetensors");
    let img = photo("rocket.jpg");
    ok(&glimpse([
        OsStr::new("embed"),
        OsStr::new("--model"),
        model.path().as_os_str(),
        OsStr::new("--image"),
        img.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
    ]));
    let file = SafeTensorsFile::open(&out).unwrap();
    assert_eq!(file.names(), ["image_embeds"]);
    // Texts now fail, naming the missing tokenizer.
    let o = glimpse([
        OsStr::new("embed"),
        OsStr::new("--model"),
        model.path().as_os_str(),
        OsStr::new("--text"),
        OsStr::new("a cat"),
        OsStr::new("--out"),
        out.as_os_str(),
    ]);
    fails(&o, 1, &["tokenizer.json", &path_str(model.path())]);
    // Neither --image nor --text: a usage error.
    let o = glimpse([
        OsStr::new("embed"),
        OsStr::new("--model"),
        model.path().as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    // An output directory that does not exist.
    let o = glimpse([
        OsStr::new("embed"),
        OsStr::new("--model"),
        model.path().as_os_str(),
        OsStr::new("--image"),
        img.as_os_str(),
        OsStr::new("--out"),
        OsStr::new("/no/such/dir/out.safetensors"),
    ]);
    fails(&o, 1, &["/no/such/dir/out.safetensors", "does not exist"]);
}

/// The features glimpse-processing and glimpse-clip give for the inputs, computed here
/// without the binary: all images in one batch, the texts padded to 77 tokens.
fn library_features(model_dir: &Path, images: &[PathBuf], texts: &[&str]) -> (Vec<f32>, Vec<f32>) {
    use glimpse_processing::{
        ImageProcessor, ImageProcessorConfig, Padding, SizeDict, SizeSpec, TextTokenizer,
        load_image,
    };
    let device = glimpse_cpu::device();
    let model = glimpse_clip::ClipModel::from_pretrained(model_dir, DType::F32, &device).unwrap();
    // CLIPImageProcessor's defaults at the model's 32 pixels.
    let processor = ImageProcessor::new(ImageProcessorConfig {
        size: Some(SizeSpec::Dict(SizeDict::shortest_edge(32))),
        crop_size: Some(SizeSpec::Dict(SizeDict::height_width(32, 32))),
        ..ImageProcessorConfig::clip()
    })
    .unwrap();
    let decoded: Vec<_> = images.iter().map(|p| load_image(p).unwrap()).collect();
    let pixels = processor.preprocess_batch(&decoded, &device).unwrap();
    let image_features = model.get_image_features(&pixels).unwrap();

    let tokenizer = TextTokenizer::from_file(model_dir.join("tokenizer.json")).unwrap();
    let batch = tokenizer.encode_batch(texts, Padding::MaxLength).unwrap();
    let ids = batch.input_ids_tensor(&device).unwrap();
    let mask = batch.attention_mask_tensor(&device).unwrap();
    assert_eq!(ids.dims(), [texts.len(), 77]);
    let text_features = model.get_text_features(&ids, Some(&mask)).unwrap();
    (
        image_features.to_vec::<f32>().unwrap(),
        text_features.to_vec::<f32>().unwrap(),
    )
}

fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}"
        );
    }
}

// ------------------------------------------------------------------------------- bad inputs

#[test]
fn cuda_is_reported_as_not_built_in() {
    let model = clip_dir();
    let m = path_str(model.path());
    let img = path_str(&photo("chelsea.png"));
    let o = glimpse([
        "zero-shot",
        "--model",
        &m,
        &img,
        "--labels",
        "cat",
        "--device",
        "cuda",
    ]);
    fails(
        &o,
        2,
        &["cuda", "not built into this binary", "--features cuda"],
    );
    let o = glimpse(["classify", "--model", &m, &img, "--device", "cuda"]);
    fails(&o, 2, &["cuda", "not built into this binary"]);
    let o = glimpse(["classify", "--model", &m, &img, "--device", "tpu"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("tpu") && err.contains("cpu, cuda, wgpu"),
        "{err}"
    );
    let o = glimpse(["classify", "--model", &m, &img, "--dtype", "f64"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Whether a wgpu adapter opens here; `GLIMPSE_REQUIRE_WGPU=1` makes a missing one a failure.
fn wgpu_available(test: &str) -> bool {
    glimpse_testkit::device_or_skip(
        test,
        "wgpu adapter",
        "GLIMPSE_REQUIRE_WGPU",
        glimpse_wgpu::device(0),
    )
    .is_some()
}

#[test]
fn zero_shot_on_wgpu_matches_the_cpu() {
    if !wgpu_available("zero_shot_on_wgpu_matches_the_cpu") {
        return;
    }
    let model = clip_dir();
    let images = [photo("chelsea.png"), photo("rocket.jpg")];
    let run = |device: &str| {
        let mut args: Vec<String> =
            vec!["zero-shot".into(), "--model".into(), path_str(model.path())];
        args.extend(images.iter().map(|p| path_str(p)));
        args.extend(
            [
                "--labels", "cat", "rocket", "coins", "--json", "--device", device,
            ]
            .map(String::from),
        );
        parse_json(&ok(&glimpse(&args)))
    };
    let (cpu, gpu) = (run("cpu"), run("wgpu"));
    assert_eq!(gpu["device"], "wgpu");
    for (c, g) in cpu["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(gpu["results"].as_array().unwrap())
    {
        let (cl, cp) = check_ranked(c, 3);
        let (gl, gp) = check_ranked(g, 3);
        assert_eq!(cl, gl, "same ranking on both devices");
        for (x, y) in gp.iter().zip(&cp) {
            assert!(
                (x - y).abs() < 1e-4,
                "probabilities: wgpu {gp:?} vs cpu {cp:?}"
            );
        }
    }
}

#[test]
fn wgpu_without_an_adapter_is_a_clear_error() {
    // A Vulkan loader pointed at no driver finds no adapter.
    let model = clip_dir();
    let o = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args([
            "classify",
            "--model",
            &path_str(model.path()),
            &path_str(&photo("chelsea.png")),
            "--device",
            "wgpu",
        ])
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .output()
        .unwrap();
    fails(&o, 1, &["cannot use the wgpu device", "no wgpu adapter 0"]);
}

#[test]
fn bad_images_are_named() {
    let model = clip_dir();
    let m = path_str(model.path());
    let good = path_str(&photo("chelsea.png"));
    let tmp = tempfile::tempdir().unwrap();

    // Missing.
    let missing = path_str(&tmp.path().join("missing.png"));
    let o = glimpse([
        "zero-shot",
        "--model",
        &m,
        &good,
        &missing,
        "--labels",
        "cat",
    ]);
    fails(&o, 1, &[&missing, "no such file"]);

    // A text file.
    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "not an image\n").unwrap();
    let text = path_str(&text);
    let o = glimpse(["zero-shot", "--model", &m, &good, &text, "--labels", "cat"]);
    fails(&o, 1, &[&text, "not an image"]);

    // A PNG cut short: the header reads, the pixels do not.
    let png = std::fs::read(photo("chelsea.png")).unwrap();
    let cut = tmp.path().join("truncated.png");
    std::fs::write(&cut, &png[..png.len() / 3]).unwrap();
    let cut = path_str(&cut);
    let vit = vit_dir();
    let v = path_str(vit.path());
    for args in [
        vec!["zero-shot", "--model", &m, &good, &cut, "--labels", "cat"],
        vec!["classify", "--model", &v, &good, &cut],
        vec![
            "embed",
            "--model",
            &m,
            "--image",
            &good,
            &cut,
            "--out",
            "/tmp/x.safetensors",
        ],
    ] {
        let err = fails(&glimpse(&args), 1, &[&cut]);
        assert!(
            err.contains("truncated") || err.contains("corrupt"),
            "{err}"
        );
    }

    // A directory.
    let d = path_str(tmp.path());
    let o = glimpse(["classify", "--model", &v, &d]);
    fails(&o, 1, &[&d, "directory"]);
}

#[test]
fn broken_model_directories_are_named() {
    let img = path_str(&photo("chelsea.png"));
    let zero_shot = |dir: &Path| {
        glimpse([
            "zero-shot",
            "--model",
            &path_str(dir),
            &img,
            "--labels",
            "cat",
            "dog",
        ])
    };

    // Not there at all.
    let o = zero_shot(Path::new("/no/such/model"));
    fails(&o, 1, &["/no/such/model"]);

    // No config.json.
    let model = clip_dir();
    std::fs::rename(
        model.path().join("config.json"),
        model.path().join("config.bak"),
    )
    .unwrap();
    fails(
        &zero_shot(model.path()),
        1,
        &[&path_str(model.path()), "config.json"],
    );

    // No weights.
    let model = clip_dir();
    std::fs::remove_file(model.path().join("model.safetensors")).unwrap();
    fails(
        &zero_shot(model.path()),
        1,
        &[&path_str(model.path()), "model.safetensors", "no weights"],
    );

    // No tokenizer.json.
    let model = clip_dir();
    std::fs::remove_file(model.path().join("tokenizer.json")).unwrap();
    fails(
        &zero_shot(model.path()),
        1,
        &[&path_str(model.path()), "tokenizer.json"],
    );

    // A config whose hidden_size does not match the weights.
    let model = clip_dir();
    let mut config = clip_config();
    config["text_config"]["hidden_size"] = json!(32);
    config["text_config"]["intermediate_size"] = json!(64);
    write_json(&model.path().join("config.json"), &config);
    fails(
        &zero_shot(model.path()),
        1,
        &[&path_str(model.path()), "do not match config.json", "shape"],
    );

    // A weight missing from the checkpoint.
    let model = clip_dir();
    let mut weights = clip_weights(&clip_config());
    weights.remove("visual_projection.weight");
    save_weights(&model.path().join("model.safetensors"), &weights);
    fails(
        &zero_shot(model.path()),
        1,
        &["visual_projection.weight", "missing"],
    );

    // A config that is not JSON.
    let model = clip_dir();
    std::fs::write(model.path().join("config.json"), "{ not json").unwrap();
    fails(&zero_shot(model.path()), 1, &["config.json", "JSON"]);

    // A ViT directory given to a CLIP command, and the other way round.
    let vit = vit_dir();
    fails(&zero_shot(vit.path()), 1, &["model_type \"vit\"", "CLIP"]);
    let clip = clip_dir();
    let o = glimpse(["classify", "--model", &path_str(clip.path()), &img]);
    fails(&o, 1, &["model_type \"clip\"", "ViT"]);

    // Corrupt weights.
    let model = clip_dir();
    std::fs::write(
        model.path().join("model.safetensors"),
        b"\x08\0\0\0\0\0\0\0{}garbage",
    )
    .unwrap();
    fails(&zero_shot(model.path()), 1, &["model.safetensors"]);
}

#[test]
fn help_has_examples() {
    for sub in ["zero-shot", "classify", "embed"] {
        let out = ok(&glimpse([sub, "--help"]));
        assert!(
            out.contains("Examples:") && out.contains(&format!("glimpse {sub}")),
            "{out}"
        );
    }
    let out = ok(&glimpse(["--help"]));
    assert!(out.contains("zero-shot") && out.contains("classify") && out.contains("embed"));
}

// ------------------------------------------------------------------------------------ train

/// A small stand-in for Fashion-MNIST in `dir` (64 training, 16 test images).
fn fake_fashion_mnist(dir: &Path) {
    use glimpse_train::data::{FashionMnist, Split};
    std::fs::create_dir_all(dir).unwrap();
    FashionMnist::synthetic(64, 1)
        .save(dir, Split::Train, true)
        .unwrap();
    FashionMnist::synthetic(16, 2)
        .save(dir, Split::Test, true)
        .unwrap();
}

/// `glimpse train vit` flags for a tiny, fast model on the fake data.
fn tiny_vit_args(data: &Path, out: &Path) -> Vec<String> {
    [
        "train",
        "vit",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        &path_str(data),
        "--out",
        &path_str(out),
        "--patch-size",
        "7",
        "--hidden",
        "16",
        "--layers",
        "1",
        "--heads",
        "2",
        "--mlp",
        "32",
        "--batch-size",
        "8",
        "--log-every",
        "1",
        "--warmup-steps",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn train_vit_saves_on_ctrl_c_and_resumes() {
    use std::io::BufRead;
    let root = TempDir::new().unwrap();
    let data = root.path().join("data");
    fake_fashion_mnist(&data);
    let out = root.path().join("run");
    let mut args = tiny_vit_args(&data, &out);
    args.extend(["--epochs", "400", "--json"].map(String::from));
    let mut child = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once a few steps are logged.
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines {
        let v = parse_json(&line.unwrap());
        if v["kind"] == "train" && v["step"].as_u64() >= Some(3) {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    let ckpt = out.join("checkpoint.safetensors");
    let state: Value = serde_json::from_str(
        SafeTensorsFile::read(&ckpt).unwrap().metadata()["glimpse.train_state"].as_str(),
    )
    .unwrap();
    let stopped_at = state["step"].as_u64().unwrap();
    assert!(stopped_at >= 3);

    // Resume with the same settings for two more steps.
    let mut args = tiny_vit_args(&data, &out);
    let until = (stopped_at + 2).to_string();
    args.extend(["--epochs", "400", "--resume", "--max-steps", &until].map(String::from));
    ok(&glimpse(&args));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(parse_json)
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=stopped_at + 2).collect();
    assert_eq!(steps, expected, "one metrics line per step, none repeated");

    // Other settings are refused.
    let mut args = tiny_vit_args(&data, &out);
    args.extend(["--epochs", "400", "--resume", "--lr", "0.5"].map(String::from));
    fails(&glimpse(&args), 1, &["other settings"]);
}

#[test]
fn train_reports_missing_data_and_bad_config_files() {
    let root = TempDir::new().unwrap();
    let out = root.path().join("run");
    let mut args = tiny_vit_args(&root.path().join("nothing"), &out);
    args.extend(["--epochs", "1"].map(String::from));
    fails(
        &glimpse(&args),
        1,
        &["apt install dataset-fashion-mnist", "--data-dir"],
    );

    let data = root.path().join("data");
    fake_fashion_mnist(&data);
    let config = root.path().join("config.json");
    write_json(&config, &json!({ "options": { "epochz": 3 } }));
    let mut args = tiny_vit_args(&data, &out);
    args.extend(["--config".to_string(), path_str(&config)]);
    fails(&glimpse(&args), 1, &["epochz", "config file"]);

    // A good config file is used (one epoch of 8 steps).
    write_json(
        &config,
        &json!({ "options": { "epochs": 1 }, "settings": { "max_shift": 1 } }),
    );
    let mut args = tiny_vit_args(&data, &out);
    args.extend([
        "--config".to_string(),
        path_str(&config),
        "--json".to_string(),
    ]);
    let text = ok(&glimpse(&args));
    let evals: Vec<Value> = text
        .lines()
        .map(parse_json)
        .filter(|v| v["kind"] == "eval")
        .collect();
    assert_eq!(evals.len(), 1);
    assert_eq!(evals[0]["step"], 8);
    for f in [
        "model/config.json",
        "model/model.safetensors",
        "loss.png",
        "eval.png",
        "init.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
}

// ------------------------------------------------------------------------- built-in model

/// The README's main-job command: the built-in tiny CLIP (trained by `glimpse train clip` on
/// the captioned shapes) on the example images the repository ships, which show colour-shape
/// pairs it never saw in training.
#[test]
fn zero_shot_without_a_model_uses_the_built_in_tiny_clip() {
    let cache = TempDir::new().unwrap();
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/examples");
    let labels = [
        "a red square",
        "a red circle",
        "a yellow circle",
        "a blue square",
    ];
    let run = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_glimpse"));
        cmd.env("GLIMPSE_CACHE_DIR", cache.path())
            .arg("zero-shot")
            .arg(examples.join("a-red-square.png"))
            .arg(examples.join("a-yellow-circle.png"))
            .arg("--labels")
            .args(labels)
            .arg("--json");
        cmd.output().unwrap()
    };
    let v = parse_json(&ok(&run()));
    let top = |i: usize| check_ranked(&v["results"][i], labels.len()).0[0].clone();
    assert_eq!(top(0), "a red square", "{v}");
    assert_eq!(top(1), "a yellow circle", "{v}");
    // The files were written once to the cache and are reused.
    let dirs: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(dirs.len(), 1);
    ok(&run());
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
}

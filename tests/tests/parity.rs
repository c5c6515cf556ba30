//! ViT and CLIP against the reference implementation (Hugging Face transformers).
//!
//! The fixtures in `tests/fixtures/models` hold tiny models with random weights saved under
//! the published key names, with inputs and the reference outputs
//! (`tests/fixtures/generate/models.py`, run by `cargo xtask fixtures`). `cargo xtask parity
//! --full` builds the full-size ViT-B/16 and CLIP ViT-B/32 the same way in a temp dir and
//! runs the ignored `full_size_*` tests here against it (`GLIMPSE_PARITY_DIR`). The same
//! checks run on the wgpu device (f32, and f16 where the adapter has it) against the same
//! references and tolerances.
//!
//! Tolerances (max abs error against the f32 reference): f32 1e-4 everywhere (the issue's
//! bar); the half-precision runs are checked against the same f32 reference with the bounds
//! in [`half_tolerance`], which measure the precision of the format through a whole model,
//! not a kernel.

use std::path::{Path, PathBuf};

use glimpse_clip::ClipModel;
use glimpse_tensor::safetensors::SafeTensorsFile;
use glimpse_tensor::{DType, Device, Tensor};
use glimpse_vit::{ViTForImageClassification, ViTModel};

fn tiny_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models")
}

struct Reference {
    file: SafeTensorsFile,
    /// Where the reference tensors are read.
    device: Device,
    /// Where the model runs: inputs are moved there.
    target: Device,
}

impl Reference {
    fn open(dir: &Path, target: &Device) -> Reference {
        let path = dir.join("reference.safetensors");
        let file = SafeTensorsFile::open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        Reference {
            file,
            device: glimpse_cpu::device(),
            target: target.clone(),
        }
    }

    /// A float input converted to `dtype`.
    fn input(&self, name: &str, dtype: DType) -> Tensor {
        self.file
            .load_as(name, dtype, &self.target)
            .unwrap_or_else(|e| panic!("reference input {name}: {e}"))
    }

    /// An integer input (int64 in the file) as u32.
    fn ids(&self, name: &str) -> Tensor {
        self.file
            .load_as(name, DType::U32, &self.target)
            .unwrap_or_else(|e| panic!("reference ids {name}: {e}"))
    }

    fn has(&self, name: &str) -> bool {
        self.file.contains(name)
    }

    /// Checks `got` against the reference output `name`, returning the max abs error.
    fn check(&self, name: &str, got: &Tensor, tol: f64) -> f64 {
        let want = self
            .file
            .load_as(name, DType::F64, &self.device)
            .unwrap_or_else(|e| panic!("reference output {name}: {e}"));
        assert_eq!(got.dims(), want.dims(), "{name}: shape");
        let got = got.to_f64_vec().unwrap();
        let want = want.to_f64_vec().unwrap();
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(
                0.0f64,
                |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
            );
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        eprintln!("{name}: max abs err {err:.3e} (max |ref| {scale:.3})");
        assert!(
            err <= tol,
            "{name}: max abs error {err:e} exceeds {tol:e} (max |ref| {scale})"
        );
        err
    }
}

/// The f32 bar of the issue.
const F32_TOL: f64 = 1e-4;

/// Max abs error allowed for a whole-model run in a half type (weights and activations
/// stored in it, arithmetic in f32) against the f32 reference. The tiny models' outputs are
/// O(1) to O(7) (layer-normed); measured at the time of writing: f16 at most 6.9e-3, bf16 at
/// most 4.4e-2 (CLIP's vision hidden states, max |ref| 6.7), f32 at most 2.9e-6.
fn half_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 1e-2,
        DType::BF16 => 6e-2,
        _ => F32_TOL,
    }
}

fn check_vit_classifier(dir: &Path, dtype: DType, device: &Device) {
    let tol = half_tolerance(dtype);
    let model = ViTForImageClassification::from_pretrained(dir, dtype, device).unwrap();
    let r = Reference::open(dir, device);
    let pixels = r.input("pixel_values", dtype);
    let out = model.vit().forward(&pixels).unwrap();
    r.check("last_hidden_state", &out.last_hidden_state, tol);
    r.check("logits", &model.forward(&pixels).unwrap(), tol);
    if r.has("pixel_values_interp") {
        let pixels = r.input("pixel_values_interp", dtype);
        let out = model.vit().forward_with(&pixels, true).unwrap();
        r.check("last_hidden_state_interp", &out.last_hidden_state, tol);
        r.check(
            "logits_interp",
            &model.forward_with(&pixels, true).unwrap(),
            tol,
        );
        // Without interpolation another size is refused.
        assert!(model.forward(&pixels).is_err());
    }
}

fn check_vit_model(dir: &Path, dtype: DType, device: &Device) {
    let tol = half_tolerance(dtype);
    let model = ViTModel::from_pretrained(dir, dtype, device).unwrap();
    let r = Reference::open(dir, device);
    let out = model.forward(&r.input("pixel_values", dtype)).unwrap();
    r.check("last_hidden_state", &out.last_hidden_state, tol);
    r.check(
        "pooler_output",
        &out.pooler_output.expect("the checkpoint has a pooler"),
        tol,
    );
}

/// The text tower's outputs, with and without the attention mask where the fixture has both.
fn check_clip_text(model: &ClipModel, r: &Reference, ids: &Tensor, mask: &Tensor, tol: f64) {
    let text = model.text_model().forward(ids, Some(mask)).unwrap();
    r.check("text_last_hidden_state", &text.last_hidden_state, tol);
    r.check("text_pooler_output", &text.pooler_output, tol);
    r.check(
        "text_features",
        &model.get_text_features(ids, Some(mask)).unwrap(),
        tol,
    );
    if r.has("text_pooler_output_nomask") {
        let text = model.text_model().forward(ids, None).unwrap();
        r.check(
            "text_last_hidden_state_nomask",
            &text.last_hidden_state,
            tol,
        );
        r.check("text_pooler_output_nomask", &text.pooler_output, tol);
    }
}

fn check_clip(dir: &Path, dtype: DType, device: &Device) {
    let tol = half_tolerance(dtype);
    let model = ClipModel::from_pretrained(dir, dtype, device).unwrap();
    let r = Reference::open(dir, device);
    let ids = r.ids("input_ids");
    let mask = r.ids("attention_mask");
    let pixels = r.input("pixel_values", dtype);

    check_clip_text(&model, &r, &ids, &mask, tol);

    let vision = model.vision_model().forward(&pixels, false).unwrap();
    r.check("vision_last_hidden_state", &vision.last_hidden_state, tol);
    r.check("vision_pooler_output", &vision.pooler_output, tol);
    r.check(
        "image_features",
        &model.get_image_features(&pixels).unwrap(),
        tol,
    );

    let out = model.forward(&pixels, &ids, Some(&mask)).unwrap();
    r.check("image_embeds", &out.image_embeds, tol);
    r.check("text_embeds", &out.text_embeds, tol);
    // The logits are scaled by exp(logit_scale); the tolerance scales with them.
    let logit_tol = tol * model.logit_scale().max(1.0);
    r.check("logits_per_image", &out.logits_per_image, logit_tol);
    r.check("logits_per_text", &out.logits_per_text, logit_tol);

    if r.has("pixel_values_interp") {
        let pixels = r.input("pixel_values_interp", dtype);
        let vision = model.vision_model().forward(&pixels, true).unwrap();
        r.check(
            "vision_last_hidden_state_interp",
            &vision.last_hidden_state,
            tol,
        );
        r.check(
            "image_features_interp",
            &model.get_image_features_with(&pixels, true).unwrap(),
            tol,
        );
        assert!(model.get_image_features(&pixels).is_err());
    }
}

fn check_clip_text_only(dir: &Path, dtype: DType, device: &Device) {
    let model = ClipModel::from_pretrained(dir, dtype, device).unwrap();
    let r = Reference::open(dir, device);
    let (ids, mask) = (r.ids("input_ids"), r.ids("attention_mask"));
    check_clip_text(&model, &r, &ids, &mask, half_tolerance(dtype));
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

#[test]
fn vit_classifier_matches_transformers() {
    for dtype in DTYPES {
        eprintln!("-- {dtype}");
        check_vit_classifier(
            &tiny_root().join("vit-classifier-tiny"),
            dtype,
            &glimpse_cpu::device(),
        );
    }
}

#[test]
fn vit_base_model_with_pooler_matches_transformers() {
    for dtype in DTYPES {
        eprintln!("-- {dtype}");
        check_vit_model(
            &tiny_root().join("vit-model-tiny"),
            dtype,
            &glimpse_cpu::device(),
        );
    }
}

#[test]
fn clip_matches_transformers() {
    for dtype in DTYPES {
        eprintln!("-- {dtype}");
        check_clip(
            &tiny_root().join("clip-tiny"),
            dtype,
            &glimpse_cpu::device(),
        );
    }
}

#[test]
fn clip_legacy_eos_config_pools_at_the_largest_id() {
    for dtype in DTYPES {
        eprintln!("-- {dtype}");
        check_clip_text_only(
            &tiny_root().join("clip-tiny-legacy-eos"),
            dtype,
            &glimpse_cpu::device(),
        );
    }
}

// ------------------------------------------------------------------------------- wgpu

/// The wgpu device, or `None` with a printed reason (`GLIMPSE_REQUIRE_WGPU=1` fails instead).
fn wgpu(test: &str) -> Option<Device> {
    glimpse_testkit::device_or_skip(
        test,
        "wgpu adapter",
        "GLIMPSE_REQUIRE_WGPU",
        glimpse_wgpu::device(0),
    )
}

/// Serialises the wgpu tests of this file: one reads the device's queue counters.
fn wgpu_serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The dtypes the wgpu device computes with (f16 only where the adapter has it).
fn wgpu_dtypes() -> Vec<DType> {
    let be = glimpse_wgpu::backend(0).expect("the device opened");
    [DType::F32, DType::F16]
        .into_iter()
        .filter(|d| be.dtypes().contains(d))
        .collect()
}

#[test]
fn vit_on_wgpu_matches_transformers() {
    let _serial = wgpu_serial();
    let Some(device) = wgpu("vit_on_wgpu_matches_transformers") else {
        return;
    };
    for dtype in wgpu_dtypes() {
        eprintln!("-- wgpu {dtype}");
        check_vit_classifier(&tiny_root().join("vit-classifier-tiny"), dtype, &device);
        check_vit_model(&tiny_root().join("vit-model-tiny"), dtype, &device);
    }
}

#[test]
fn clip_on_wgpu_matches_transformers() {
    let _serial = wgpu_serial();
    let Some(device) = wgpu("clip_on_wgpu_matches_transformers") else {
        return;
    };
    for dtype in wgpu_dtypes() {
        eprintln!("-- wgpu {dtype}");
        check_clip(&tiny_root().join("clip-tiny"), dtype, &device);
        check_clip_text_only(&tiny_root().join("clip-tiny-legacy-eos"), dtype, &device);
    }
}

/// A forward pass on the wgpu device records its dispatches without reading anything back:
/// they go to the GPU in batches of 512 per submission, and the one read-back is the caller's.
#[test]
fn model_forwards_on_wgpu_submit_in_batches_and_never_read_back() {
    let _serial = wgpu_serial();
    let Some(device) = wgpu("model_forwards_on_wgpu_submit_in_batches_and_never_read_back") else {
        return;
    };
    let be = glimpse_wgpu::backend(0).unwrap();
    let vit_dir = tiny_root().join("vit-classifier-tiny");
    let vit = ViTForImageClassification::from_pretrained(&vit_dir, DType::F32, &device).unwrap();
    let pixels = Reference::open(&vit_dir, &device).input("pixel_values", DType::F32);
    let clip_dir = tiny_root().join("clip-tiny");
    let clip = ClipModel::from_pretrained(&clip_dir, DType::F32, &device).unwrap();
    let r = Reference::open(&clip_dir, &device);
    let (ids, mask, clip_pixels) = (
        r.ids("input_ids"),
        r.ids("attention_mask"),
        r.input("pixel_values", DType::F32),
    );
    type Forward<'a> = Box<dyn Fn() -> Tensor + 'a>;
    let runs: [(&str, Forward); 2] = [
        ("ViT classifier", Box::new(|| vit.forward(&pixels).unwrap())),
        (
            "CLIP image + text",
            Box::new(|| {
                clip.forward(&clip_pixels, &ids, Some(&mask))
                    .unwrap()
                    .logits_per_image
            }),
        ),
    ];
    for (name, run) in runs {
        run(); // compile the pipelines
        be.synchronize().unwrap();
        be.reset_stats();
        let out = run();
        let s = be.stats();
        eprintln!(
            "{name} forward: {} dispatches, {} submissions, {} read-backs",
            s.dispatches, s.submissions, s.readbacks
        );
        assert_eq!(s.readbacks, 0, "{name}: no read-back inside the forward");
        assert_eq!(
            s.submissions,
            s.dispatches / 512,
            "{name}: full batches only"
        );
        out.to_host().unwrap();
        let t = be.stats();
        assert_eq!(
            (t.readbacks, t.submissions),
            (1, s.submissions + 1),
            "{name}"
        );
    }
}

fn full_root() -> PathBuf {
    PathBuf::from(
        std::env::var("GLIMPSE_PARITY_DIR").expect(
            "GLIMPSE_PARITY_DIR must name the directory `cargo xtask parity --full` generated",
        ),
    )
}

#[test]
#[ignore = "full-size models; run by `cargo xtask parity --full`"]
fn full_size_vit_base_patch16_224() {
    check_vit_classifier(
        &full_root().join("vit-base-patch16-224"),
        DType::F32,
        &glimpse_cpu::device(),
    );
}

#[test]
#[ignore = "full-size models; run by `cargo xtask parity --full`"]
fn full_size_clip_vit_base_patch32() {
    check_clip(
        &full_root().join("clip-vit-base-patch32"),
        DType::F32,
        &glimpse_cpu::device(),
    );
}

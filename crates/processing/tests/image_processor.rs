//! `ImageProcessor` against the Pillow image processors of transformers
//! (`CLIPImageProcessorPil`, `ViTImageProcessorPil`, ...) on the fixture photographs and
//! configurations written by tests/fixtures/generate/processing.py.

mod common;

use glimpse_processing::{
    ImageProcessor, ImageProcessorConfig, ProcessingError, ResizeTarget, load_image,
};

fn processor(config: &str) -> ImageProcessor {
    ImageProcessor::from_file(
        common::fixtures()
            .join("configs")
            .join(format!("{config}.json")),
    )
    .unwrap_or_else(|e| panic!("{config}: {e}"))
}

fn image(name: &str) -> image::RgbImage {
    load_image(common::fixtures().join("images").join(name)).unwrap()
}

/// Every stored `pixel_values`, computed from the same decoded pixels: exactly equal.
#[test]
fn pixel_values_equal_transformers_pil_backend() {
    let expected = common::read_safetensors("pixel_values.safetensors");
    assert!(expected.len() >= 14);
    let mut report = Vec::new();
    for (key, want) in &expected {
        let (config, image_name) = key.split_once('/').unwrap();
        let p = processor(config);
        let (got, (h, w)) = p.preprocess_sized(&image(image_name)).unwrap();
        assert_eq!(want.shape, vec![3, h, w], "{key}: shape");
        let want = want.to_f32();
        let err = common::max_abs_diff(&got, &want);
        let bits_equal = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        report.push(format!("{key}: max abs error {err:e}"));
        assert!(
            bits_equal,
            "{key}: differs from transformers, max abs error {err:e} (expected bit-identical)"
        );
    }
    eprintln!("{}", report.join("\n"));
}

/// The hub's older configuration files (bare integers, `feature_extractor_type`) read as the
/// current ones.
#[test]
fn legacy_configs_read_like_current_ones() {
    for (legacy, current) in [("clip_legacy", "clip"), ("vit_legacy", "vit")] {
        assert_eq!(
            processor(legacy).steps(),
            processor(current).steps(),
            "{legacy}"
        );
    }
    assert_eq!(processor("clip").steps(), ImageProcessor::clip().steps());
    assert_eq!(processor("vit").steps(), ImageProcessor::vit().steps());
    assert_eq!(processor("blip").steps(), ImageProcessor::blip().steps());
    // The file as transformers writes it, and the defaults of the same class, agree.
    let siglip = ImageProcessorConfig {
        image_processor_type: Some("SiglipImageProcessor".into()),
        ..ImageProcessorConfig::default()
    };
    assert_eq!(
        processor("siglip").steps(),
        ImageProcessor::new(siglip).unwrap().steps()
    );
}

/// The full path from a JPEG file: zune-jpeg instead of libjpeg-turbo, so a small tolerance.
#[test]
fn jpeg_file_through_clip_is_close_to_transformers() {
    let expected = common::read_safetensors("pixel_values.safetensors");
    let want = expected["clip/rocket_pillow.png"].to_f32();
    let got = ImageProcessor::clip()
        .preprocess(&image("rocket.jpg"))
        .unwrap();
    let err = common::max_abs_diff(&got, &want);
    let mean = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / got.len() as f32;
    eprintln!("rocket.jpg via zune-jpeg, CLIP: max abs error {err:e}, mean {mean:e}");
    // One level of 8-bit input is 1 / 255 / 0.2613 = 0.015 after CLIP's normalisation.
    assert!(err <= 0.035, "max abs error {err:e} (mean {mean:e})");
    assert!(mean <= 1e-3, "mean abs error {mean:e} (max {err:e})");
}

#[test]
fn batch_stacks_single_images() {
    let device = glimpse_cpu::device();
    let p = ImageProcessor::clip();
    let images = [image("chelsea.png"), image("rocket_pillow.png")];
    let t = p.preprocess_batch(&images, &device).unwrap();
    assert_eq!(t.dims(), &[2, 3, 224, 224]);
    let all: Vec<f32> = t.to_vec().unwrap();
    let expected = common::read_safetensors("pixel_values.safetensors");
    let mut want = expected["clip/chelsea.png"].to_f32();
    want.extend(expected["clip/rocket_pillow.png"].to_f32());
    assert_eq!(all, want);
}

#[test]
fn batch_of_different_sizes_is_an_error() {
    let device = glimpse_cpu::device();
    let p = ImageProcessor::new(ImageProcessorConfig {
        do_center_crop: Some(false),
        ..ImageProcessorConfig::clip()
    })
    .unwrap();
    let e = p
        .preprocess_batch(&[image("chelsea.png"), image("coins.png")], &device)
        .unwrap_err();
    assert!(e.to_string().contains("image 1 comes out"), "{e}");
    let e = p.preprocess_batch(&[], &device).unwrap_err();
    assert!(matches!(e, ProcessingError::InvalidArgument { .. }), "{e}");
}

#[test]
fn output_sizes() {
    assert_eq!(processor("clip").output_size(), Some((224, 224)));
    assert_eq!(
        processor("vit_nearest_norescale").output_size(),
        Some((30, 45))
    );
    assert_eq!(processor("clip_lanczos_crop").output_size(), Some((31, 35)));
    let p = processor("clip_pad");
    assert_eq!(p.output_size_for(303, 384), (48, 48));
    assert!(matches!(
        processor("clip").steps().resize,
        Some((
            ResizeTarget::ShortestEdge(224),
            glimpse_processing::Filter::Bicubic
        ))
    ));
}

#[test]
fn bad_config_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "not_json.json",
            "this is not json",
            "bad image processor configuration",
        ),
        (
            "bad_resample.json",
            r#"{"image_processor_type": "CLIPImageProcessor", "resample": 9}"#,
            "unsupported resample 9",
        ),
        (
            "string_resample.json",
            r#"{"image_processor_type": "CLIPImageProcessor", "resample": "bicubic"}"#,
            "bad image processor configuration",
        ),
        (
            "unknown_type.json",
            r#"{"image_processor_type": "DetrImageProcessor"}"#,
            "DetrImageProcessor",
        ),
        (
            "longest.json",
            r#"{"image_processor_type": "ViTImageProcessor", "size": {"shortest_edge": 4, "longest_edge": 8}}"#,
            "unsupported size",
        ),
        (
            "no_resample.json",
            r#"{"do_resize": true, "size": {"height": 4, "width": 4}}"#,
            "`resample`",
        ),
    ];
    for (name, text, needle) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let e = ImageProcessor::from_file(&path).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains(name), "{name}: {e}");
    }
    let missing = dir.path().join("missing.json");
    let e = ImageProcessor::from_file(&missing).unwrap_err();
    assert!(
        matches!(e, ProcessingError::Io { .. }) && e.to_string().contains("missing.json"),
        "{e}"
    );
}

#[test]
fn padding_pads_with_zeros_after_normalisation() {
    let p = ImageProcessor::new(ImageProcessorConfig {
        do_pad: Some(true),
        pad_size: Some(glimpse_processing::SizeSpec::Int(230)),
        ..ImageProcessorConfig::clip()
    })
    .unwrap();
    let (v, (h, w)) = p.preprocess_sized(&image("chelsea.png")).unwrap();
    assert_eq!((h, w), (230, 230));
    let unpadded = ImageProcessor::clip()
        .preprocess(&image("chelsea.png"))
        .unwrap();
    for c in 0..3 {
        for y in 0..230 {
            for x in 0..230 {
                let got = v[c * 230 * 230 + y * 230 + x];
                let want = if y < 224 && x < 224 {
                    unpadded[c * 224 * 224 + y * 224 + x]
                } else {
                    0.0
                };
                assert_eq!(got, want, "c{c} y{y} x{x}");
            }
        }
    }
}

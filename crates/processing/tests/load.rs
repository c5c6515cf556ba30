//! `load_image` against transformers' `load_image` (Pillow), and its errors.

mod common;

use std::path::Path;

use glimpse_processing::{ProcessingError, decode_image, load_image};

fn images() -> std::path::PathBuf {
    common::fixtures().join("images")
}

/// Every small fixture image: EXIF orientations, alpha, palettes, 1 and 16 bits, GIF, WebP,
/// BMP are exact; JPEGs (decoded by zune-jpeg, not libjpeg-turbo) within 3 levels (chroma
/// upsampling of 4:2:0 files differs most).
#[test]
fn loads_like_transformers_load_image() {
    let expected = common::read_safetensors("load.safetensors");
    assert!(expected.len() >= 20, "{}", expected.len());
    let mut jpeg_report = Vec::new();
    for (name, want) in &expected {
        let got = load_image(images().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = want.to_rgb();
        assert_eq!(got.dimensions(), want.dimensions(), "{name}: dimensions");
        let (max, count) = common::u8_diff(got.as_raw(), want.as_raw());
        if name.ends_with(".jpg") {
            jpeg_report.push(format!("{name}: {count} values differ, by up to {max}"));
            assert!(max <= 3, "{name}: {count} values differ, by up to {max}");
        } else {
            assert_eq!(max, 0, "{name}: {count} values differ, by up to {max}");
        }
    }
    eprintln!("{}", jpeg_report.join("\n"));
}

/// The 4:4:4 JPEG photograph against Pillow's decoding of it (stored as a lossless PNG).
#[test]
fn jpeg_photograph_within_two_levels_of_pillow() {
    let ours = load_image(images().join("rocket.jpg")).unwrap();
    let pillow = load_image(images().join("rocket_pillow.png")).unwrap();
    assert_eq!(ours.dimensions(), pillow.dimensions());
    let (max, count) = common::u8_diff(ours.as_raw(), pillow.as_raw());
    eprintln!(
        "rocket.jpg: {count} of {} values differ from Pillow, by up to {max}",
        ours.as_raw().len()
    );
    assert!(max <= 2, "{count} values differ, by up to {max}");
    assert!(count * 100 <= ours.as_raw().len(), "{count} values differ");
}

#[test]
fn orientation_rotates_and_flips() {
    let upright = load_image(images().join("orient_1.png")).unwrap();
    assert_eq!(upright.dimensions(), (9, 6));
    // 6: rotate 90 clockwise (PIL: transpose ROTATE_270)
    let rotated = load_image(images().join("orient_6.png")).unwrap();
    assert_eq!(rotated.dimensions(), (6, 9));
    assert_eq!(rotated.get_pixel(5, 0), upright.get_pixel(0, 0));
}

fn assert_decode_error(result: Result<image::RgbImage, ProcessingError>, path: &Path) {
    let e = match result {
        Ok(img) => panic!("{}: decoded as {:?}", path.display(), img.dimensions()),
        Err(e) => e,
    };
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        matches!(
            e,
            ProcessingError::Decode { .. } | ProcessingError::EmptyImage { .. }
        ),
        "{}: {msg}",
        path.display()
    );
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
}

#[test]
fn bad_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let png = std::fs::read(images().join("chelsea.png")).unwrap();
    let jpg = std::fs::read(images().join("rocket.jpg")).unwrap();
    let gif = std::fs::read(images().join("tiny.gif")).unwrap();
    let webp = std::fs::read(images().join("small.webp")).unwrap();
    let bmp = std::fs::read(images().join("small.bmp")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    // Missing file, a directory: I/O errors.
    for path in [dir.path().join("missing.png"), dir.path().to_path_buf()] {
        let e = load_image(&path).unwrap_err();
        assert!(matches!(e, ProcessingError::Io { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
    let mut corrupt_png = png.clone();
    for b in &mut corrupt_png[20_000..20_060] {
        *b ^= 0x5a;
    }
    let mut corrupt_jpg = jpg.clone();
    let mid = corrupt_jpg.len() / 2;
    corrupt_jpg[mid..].fill(0);
    corrupt_jpg.truncate(mid + 10);
    let cases = [
        write("empty.png", b""),
        write("text.png", b"just some text, not an image\n"),
        write("notes.txt", b"hello"),
        write(
            "random.jpg",
            &(0..4096u32)
                .map(|i| (i * 7919 % 251) as u8)
                .collect::<Vec<_>>(),
        ),
        write("truncated.png", &png[..png.len() / 2]),
        write("header_only.png", &png[..40]),
        write("corrupt.png", &corrupt_png),
        write("truncated.jpg", &jpg[..jpg.len() / 3]),
        write("header_only.jpg", &jpg[..200]),
        write("zeroed.jpg", &corrupt_jpg),
        write("zero_width.png", &zero_size_png()),
        write("truncated.gif", &gif[..gif.len() / 10]),
        write("truncated.webp", &webp[..webp.len() / 2]),
        write("truncated.bmp", &bmp[..bmp.len() / 2]),
        write("no_eoi.jpg", &jpg[..jpg.len() - 2]),
    ];
    for path in &cases {
        assert_decode_error(load_image(path), path);
    }
    // As with Pillow, a GIF cut after its first frame still loads (the first frame).
    let gif_half = write("half.gif", &gif[..gif.len() / 2]);
    assert_eq!(load_image(&gif_half).unwrap().dimensions(), (14, 25));
}

/// A PNG header claiming a 0 x 4 image.
fn zero_size_png() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, tag: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(tag);
        out.extend_from_slice(data);
        let crc = crc32(&[tag.as_slice(), data].concat());
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&0u32.to_be_bytes());
    ihdr.extend_from_slice(&4u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn decode_from_memory() {
    let bytes = std::fs::read(images().join("chelsea.png")).unwrap();
    let a = decode_image(&bytes).unwrap();
    let b = load_image(images().join("chelsea.png")).unwrap();
    assert_eq!(a, b);
    let e = decode_image(b"nope").unwrap_err();
    assert!(e.to_string().contains("<memory>"), "{e}");
}

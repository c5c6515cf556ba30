//! Image loading as transformers' `load_image` does it: decode, apply the EXIF orientation
//! (`PIL.ImageOps.exif_transpose`), convert to RGB (`Image.convert("RGB")`).

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{ProcessingError, Result};

/// Loads an image file as 8-bit RGB, the way `transformers.image_utils.load_image` does:
/// the format is recognised from the content (not the extension), the EXIF orientation is
/// applied, and the pixels are converted to RGB as Pillow's `convert("RGB")` converts them:
///
/// * alpha is dropped, not composited (RGBA, LA, palette or gray with transparency);
/// * gray is replicated to the three channels;
/// * 16-bit RGB(A) keeps the high byte of each sample, and 16-bit gray is clipped to 255
///   (Pillow's `I;16` to `RGB`), which is what a Python pipeline sees.
///
/// Formats: PNG, JPEG, GIF (first frame), WebP, BMP. JPEG is decoded by `zune-jpeg`, which can
/// differ from Pillow's libjpeg-turbo by a level on some pixels (see the crate docs).
///
/// Every failure is an error naming the file: missing or unreadable file, unknown format,
/// corrupt or truncated data, an image of zero size.
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| ProcessingError::io(path, e))?;
    decode(&bytes, path)
}

/// [`load_image`] on the bytes of an image file held in memory.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    decode(bytes, Path::new("<memory>"))
}

fn decode(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ProcessingError::decode(path, e))?;
    match reader.format() {
        None => {
            return Err(ProcessingError::decode(
                path,
                "not an image in a supported format (PNG, JPEG, GIF, WebP, BMP)",
            ));
        }
        // zune-jpeg fills in missing data; Pillow refuses a truncated JPEG, and so do we.
        Some(image::ImageFormat::Jpeg) => check_jpeg_complete(bytes)
            .map_err(|msg| ProcessingError::decode(path, format!("corrupt JPEG: {msg}")))?,
        Some(_) => {}
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| ProcessingError::decode(path, e))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ProcessingError::EmptyImage {
            path: path.display().to_string(),
            width,
            height,
        });
    }
    // A damaged EXIF block is ignored, as Pillow ignores it.
    let orientation = decoder.orientation().ok();
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| ProcessingError::decode(path, e))?;
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    if image.width() == 0 || image.height() == 0 {
        return Err(ProcessingError::EmptyImage {
            path: path.display().to_string(),
            width: image.width(),
            height: image.height(),
        });
    }
    Ok(to_rgb_like_pillow(image))
}

/// Walks the JPEG markers from SOI to EOI, through every scan's entropy-coded data: a file cut
/// anywhere before its EOI marker is an error (as it is for Pillow: "image file is
/// truncated").
fn check_jpeg_complete(b: &[u8]) -> std::result::Result<(), String> {
    const TRUNCATED: &str = "the file is truncated (no end-of-image marker)";
    if b.len() < 4 || b[0] != 0xff || b[1] != 0xd8 {
        return Err("missing start-of-image marker".into());
    }
    let mut i = 2;
    loop {
        // Next marker: 0xff, any 0xff fill bytes, then the marker code.
        if i >= b.len() {
            return Err(TRUNCATED.into());
        }
        if b[i] != 0xff {
            return Err(format!("expected a marker at byte {i}"));
        }
        while i < b.len() && b[i] == 0xff {
            i += 1;
        }
        let Some(&code) = b.get(i) else {
            return Err(TRUNCATED.into());
        };
        i += 1;
        match code {
            0xd9 => return Ok(()),          // EOI
            0x01 | 0xd0..=0xd7 => continue, // markers without a length
            _ => {}
        }
        let Some(len) = b.get(i..i + 2) else {
            return Err(TRUNCATED.into());
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len < 2 {
            return Err(format!("bad segment length at byte {i}"));
        }
        i += len;
        if i > b.len() {
            return Err(TRUNCATED.into());
        }
        if code == 0xda {
            // SOS: entropy-coded data up to the next marker that is not a stuffed 0xff00 or
            // a restart marker.
            loop {
                let Some(off) = b[i..].iter().position(|&v| v == 0xff) else {
                    return Err(TRUNCATED.into());
                };
                i += off;
                match b.get(i + 1) {
                    None => return Err(TRUNCATED.into()),
                    Some(0x00) | Some(0xd0..=0xd7) | Some(0xff) => i += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Pillow's `convert("RGB")` of the mode Pillow would have opened the file in.
fn to_rgb_like_pillow(image: DynamicImage) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    let rgb = |f: &dyn Fn(usize) -> [u8; 3], n: usize| {
        let mut out = Vec::with_capacity(n * 3);
        for i in 0..n {
            out.extend_from_slice(&f(i));
        }
        RgbImage::from_raw(w, h, out).expect("w * h * 3 bytes")
    };
    let n = w as usize * h as usize;
    match image {
        DynamicImage::ImageRgb8(img) => img,
        DynamicImage::ImageRgba8(img) => {
            let raw = img.as_raw();
            rgb(&|i| [raw[4 * i], raw[4 * i + 1], raw[4 * i + 2]], n)
        }
        DynamicImage::ImageLuma8(img) => {
            let raw = img.as_raw();
            rgb(&|i| [raw[i]; 3], n)
        }
        DynamicImage::ImageLumaA8(img) => {
            let raw = img.as_raw();
            rgb(&|i| [raw[2 * i]; 3], n)
        }
        DynamicImage::ImageRgb16(img) => {
            let raw = img.as_raw();
            let hi = |v: u16| (v >> 8) as u8;
            rgb(
                &|i| [hi(raw[3 * i]), hi(raw[3 * i + 1]), hi(raw[3 * i + 2])],
                n,
            )
        }
        DynamicImage::ImageRgba16(img) => {
            let raw = img.as_raw();
            let hi = |v: u16| (v >> 8) as u8;
            rgb(
                &|i| [hi(raw[4 * i]), hi(raw[4 * i + 1]), hi(raw[4 * i + 2])],
                n,
            )
        }
        DynamicImage::ImageLuma16(img) => {
            // Pillow opens 16-bit gray as "I;16"; its conversion to RGB clips at 255.
            let raw = img.as_raw();
            rgb(&|i| [raw[i].min(255) as u8; 3], n)
        }
        DynamicImage::ImageLumaA16(img) => {
            // Pillow opens 16-bit gray + alpha as RGBA, keeping the high byte.
            let raw = img.as_raw();
            rgb(&|i| [(raw[2 * i] >> 8) as u8; 3], n)
        }
        other => other.to_rgb8(),
    }
}

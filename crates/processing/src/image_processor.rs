//! The image processor: resize, center crop, rescale, normalise, pad, as transformers'
//! Pillow backend (`CLIPImageProcessorPil`, `ViTImageProcessorPil`, ...) does them.

use std::path::Path;

use glimpse_tensor::{Device, Tensor};
use image::RgbImage;

use crate::config::{ImageProcessorConfig, ResizeTarget, ResolvedConfig};
use crate::error::{ProcessingError, Result};
use crate::resize::resize;

/// Turns RGB images into the `pixel_values` of a vision model, with the same numbers as the
/// Pillow image processors of transformers.
///
/// The steps, in order, each one only if enabled: resize (Pillow-exact, see
/// [`resize`](crate::resize())), center crop (zero padding when the image is smaller), rescale
/// (`f32(pixel as f64 * rescale_factor)`), normalise (`(x - mean) / std` in `f32`), pad (zeros,
/// bottom and right). Output is channel-first `f32`.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    config: ImageProcessorConfig,
    steps: ResolvedConfig,
}

impl ImageProcessor {
    /// Reads a `preprocessor_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let config = ImageProcessorConfig::from_file(path)?;
        Self::build(config, &path.display().to_string())
    }

    /// A processor from a configuration (missing fields take their class defaults).
    pub fn new(config: ImageProcessorConfig) -> Result<Self> {
        Self::build(config, "ImageProcessorConfig")
    }

    fn build(config: ImageProcessorConfig, origin: &str) -> Result<Self> {
        let steps = config.resolved(origin)?;
        let config = config.with_defaults(origin)?;
        Ok(ImageProcessor { config, steps })
    }

    /// `CLIPImageProcessor` with its defaults, those of every OpenAI CLIP checkpoint at 224:
    /// shortest edge 224 (bicubic), center crop 224x224, rescale 1/255, CLIP mean and std.
    pub fn clip() -> Self {
        Self::new(ImageProcessorConfig::clip()).expect("the CLIP defaults are valid")
    }

    /// `ViTImageProcessor` with its defaults: 224x224 (bilinear), rescale 1/255, mean and std
    /// 0.5.
    pub fn vit() -> Self {
        Self::new(ImageProcessorConfig::vit()).expect("the ViT defaults are valid")
    }

    /// `BlipImageProcessor` with its defaults: 384x384 (bicubic), rescale 1/255, CLIP mean and
    /// std.
    pub fn blip() -> Self {
        Self::new(ImageProcessorConfig::blip()).expect("the BLIP defaults are valid")
    }

    /// The configuration with every default filled in.
    pub fn config(&self) -> &ImageProcessorConfig {
        &self.config
    }

    /// The checked steps.
    pub fn steps(&self) -> &ResolvedConfig {
        &self.steps
    }

    /// `(height, width)` of the output, when it does not depend on the input (a center crop,
    /// an exact resize size or padding fixes it); `None` for a shortest-edge resize without a
    /// crop, or no resize at all.
    pub fn output_size(&self) -> Option<(usize, usize)> {
        if let Some(pad) = self.steps.pad {
            return Some(pad);
        }
        if let Some(crop) = self.steps.center_crop {
            return Some(crop);
        }
        match self.steps.resize {
            Some((ResizeTarget::Exact { height, width }, _)) => Some((height, width)),
            _ => None,
        }
    }

    /// `(height, width)` of the output for an input of `height` x `width`.
    pub fn output_size_for(&self, height: usize, width: usize) -> (usize, usize) {
        let mut hw = (height, width);
        if let Some((target, _)) = self.steps.resize {
            hw = target.output_size(hw.0, hw.1);
        }
        if let Some(crop) = self.steps.center_crop {
            hw = crop;
        }
        if let Some(pad) = self.steps.pad {
            hw = (hw.0.max(pad.0), hw.1.max(pad.1));
        }
        hw
    }

    /// Pre-processes one image into `3 x H x W` channel-first values.
    pub fn preprocess(&self, image: &RgbImage) -> Result<Vec<f32>> {
        Ok(self.preprocess_sized(image)?.0)
    }

    /// Pre-processes one image; returns the `3 x H x W` values with `(H, W)`.
    pub fn preprocess_sized(&self, image: &RgbImage) -> Result<(Vec<f32>, (usize, usize))> {
        if image.width() == 0 || image.height() == 0 {
            return Err(ProcessingError::EmptyImage {
                path: "<input image>".into(),
                width: image.width(),
                height: image.height(),
            });
        }
        let resized;
        let mut img = image;
        if let Some((target, filter)) = self.steps.resize {
            let (h, w) = target.output_size(img.height() as usize, img.width() as usize);
            if h == 0 || w == 0 || h > u32::MAX as usize || w > u32::MAX as usize {
                return Err(ProcessingError::invalid(
                    "preprocess",
                    format!(
                        "resizing a {}x{} image gives {w}x{h}",
                        img.width(),
                        img.height()
                    ),
                ));
            }
            resized = resize(img, w as u32, h as u32, filter);
            img = &resized;
        }
        let (src_h, src_w) = (img.height() as usize, img.width() as usize);
        // Center crop as offsets: output (y, x) reads source (y + top, x + left), or zero
        // outside the source (transformers pads with zeros when the crop is larger).
        let ((h, w), top, left) = match self.steps.center_crop {
            Some((ch, cw)) => (
                (ch, cw),
                floor_half(src_h as i64 - ch as i64),
                floor_half(src_w as i64 - cw as i64),
            ),
            None => ((src_h, src_w), 0, 0),
        };
        let (out_h, out_w) = match self.steps.pad {
            Some((ph, pw)) => {
                if ph < h || pw < w {
                    return Err(ProcessingError::invalid(
                        "preprocess",
                        format!("pad_size {ph}x{pw} is smaller than the processed image {h}x{w}"),
                    ));
                }
                (ph, pw)
            }
            None => (h, w),
        };
        let plane = out_h
            .checked_mul(out_w)
            .filter(|p| p.checked_mul(3).is_some())
            .ok_or_else(|| ProcessingError::invalid("preprocess", "output too large"))?;
        let mut out = vec![0f32; plane * 3];
        let raw = img.as_raw();
        let rescale = self.steps.rescale;
        let normalize = self.steps.normalize;
        for y in 0..h {
            let sy = y as i64 + top;
            for x in 0..w {
                let sx = x as i64 + left;
                let inside = (0..src_h as i64).contains(&sy) && (0..src_w as i64).contains(&sx);
                for c in 0..3 {
                    let v = if inside {
                        raw[(sy as usize * src_w + sx as usize) * 3 + c]
                    } else {
                        0
                    };
                    let mut f = match rescale {
                        // numpy: image.astype(float64) * scale, then astype(float32)
                        Some(s) => (f64::from(v) * s) as f32,
                        None => f32::from(v),
                    };
                    if let Some((mean, std)) = normalize {
                        f = (f - mean[c]) / std[c];
                    }
                    out[c * plane + y * out_w + x] = f;
                }
            }
        }
        Ok((out, (out_h, out_w)))
    }

    /// Pre-processes a batch into a `(B, 3, H, W)` `f32` tensor on `device`. Every image must
    /// come out at the same size (a center crop or an exact resize size ensures it).
    pub fn preprocess_batch(&self, images: &[RgbImage], device: &Device) -> Result<Tensor> {
        if images.is_empty() {
            return Err(ProcessingError::invalid(
                "preprocess_batch",
                "no images in the batch",
            ));
        }
        let mut data = Vec::new();
        let mut size = None;
        for (i, image) in images.iter().enumerate() {
            let (values, hw) = self.preprocess_sized(image)?;
            match size {
                None => {
                    data.reserve(values.len() * images.len());
                    size = Some(hw);
                }
                Some(first) if first != hw => {
                    return Err(ProcessingError::invalid(
                        "preprocess_batch",
                        format!(
                            "image {i} comes out {}x{} but image 0 {}x{}; set a center crop or \
                             an exact size to batch images of different shapes",
                            hw.0, hw.1, first.0, first.1
                        ),
                    ));
                }
                Some(_) => {}
            }
            data.extend_from_slice(&values);
        }
        let (h, w) = size.expect("at least one image");
        Ok(Tensor::from_vec(data, [images.len(), 3, h, w], device)?)
    }
}

/// Python's `n // 2` for a signed `n`.
fn floor_half(n: i64) -> i64 {
    n.div_euclid(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_offsets_match_transformers() {
        // Larger crop: the image lands at ceil((crop - size) / 2).
        assert_eq!(floor_half(40 - 48), -4);
        assert_eq!(floor_half(41 - 48), -4); // ceil(7 / 2) = 4
        assert_eq!(floor_half(51 - 48), 1);
    }

    #[test]
    fn output_sizes() {
        let clip = ImageProcessor::clip();
        assert_eq!(clip.output_size(), Some((224, 224)));
        assert_eq!(clip.output_size_for(300, 451), (224, 224));
        let vit = ImageProcessor::vit();
        assert_eq!(vit.output_size(), Some((224, 224)));
        let no_crop = ImageProcessor::new(ImageProcessorConfig {
            do_center_crop: Some(false),
            ..ImageProcessorConfig::clip()
        })
        .unwrap();
        assert_eq!(no_crop.output_size(), None);
        assert_eq!(no_crop.output_size_for(300, 451), (224, 336));
    }

    #[test]
    fn empty_image_is_an_error() {
        let e = ImageProcessor::clip()
            .preprocess(&RgbImage::new(0, 3))
            .unwrap_err();
        assert!(matches!(e, ProcessingError::EmptyImage { .. }), "{e}");
    }
}

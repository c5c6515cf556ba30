//! `preprocessor_config.json`, as transformers writes and reads it.

use serde::{Deserialize, Serialize};

use crate::error::{ProcessingError, Result};
use crate::resize::Filter;

/// `OPENAI_CLIP_MEAN` of transformers.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// `OPENAI_CLIP_STD` of transformers.
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// `IMAGENET_STANDARD_MEAN` (and `_STD`) of transformers: 0.5 for every channel.
pub const IMAGENET_STANDARD_MEAN: [f64; 3] = [0.5, 0.5, 0.5];
/// `IMAGENET_STANDARD_STD` of transformers.
pub const IMAGENET_STANDARD_STD: [f64; 3] = [0.5, 0.5, 0.5];

/// A `size`, `crop_size` or `pad_size` value: a bare integer, a `[height, width]` list or a
/// dictionary (`{"shortest_edge": n}`, `{"height": h, "width": w}`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    /// A bare integer: a square, or the shortest edge, depending on `default_to_square`.
    Int(u32),
    /// `[height, width]`.
    List(Vec<u32>),
    /// A dictionary with some of the keys of transformers' `SizeDict`.
    Dict(SizeDict),
}

/// The keys of transformers' `SizeDict` (only some combinations are valid).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeDict {
    /// Target of the shorter side (the longer one keeps the aspect ratio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortest_edge: Option<u32>,
    /// Cap on the longer side (not supported here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_edge: Option<u32>,
    /// Exact height.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Exact width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Bound on the height keeping the aspect ratio (not supported here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_height: Option<u32>,
    /// Bound on the width keeping the aspect ratio (not supported here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_width: Option<u32>,
}

impl SizeDict {
    /// `{"shortest_edge": n}`.
    pub fn shortest_edge(n: u32) -> Self {
        SizeDict {
            shortest_edge: Some(n),
            ..SizeDict::default()
        }
    }

    /// `{"height": h, "width": w}`.
    pub fn height_width(height: u32, width: u32) -> Self {
        SizeDict {
            height: Some(height),
            width: Some(width),
            ..SizeDict::default()
        }
    }
}

/// `image_mean` / `image_std`: one value for every channel, or one per channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerChannel {
    /// The same value for the three channels.
    One(f64),
    /// One value per channel.
    PerChannel(Vec<f64>),
}

/// The fields of a `preprocessor_config.json` that the image processors of transformers use
/// (`CLIPImageProcessor`, `ViTImageProcessor`, `BlipImageProcessor`, `SiglipImageProcessor`).
///
/// Every field is optional, as in the file: a missing field (or `null`) takes the default of
/// the processor class named by `image_processor_type` (or the older `feature_extractor_type`),
/// exactly as transformers does; unknown fields are ignored. [`ImageProcessorConfig::resolved`]
/// fills in those defaults and checks the values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageProcessorConfig {
    /// The processor class, e.g. `"CLIPImageProcessor"` (a `Pil` or `Fast` suffix is ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_processor_type: Option<String>,
    /// The class name in older files, e.g. `"CLIPFeatureExtractor"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature_extractor_type: Option<String>,
    /// Resize first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_resize: Option<bool>,
    /// Target size of the resize.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<SizeSpec>,
    /// Whether a bare integer `size` means a square (else the shortest edge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_to_square: Option<bool>,
    /// The resampling filter, as a `PIL.Image.Resampling` code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resample: Option<i64>,
    /// Center-crop after the resize.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_center_crop: Option<bool>,
    /// Size of the center crop (a bare integer is a square).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop_size: Option<SizeSpec>,
    /// Multiply by `rescale_factor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_rescale: Option<bool>,
    /// Usually `1 / 255`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescale_factor: Option<f64>,
    /// Subtract `image_mean` and divide by `image_std`, per channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_normalize: Option<bool>,
    /// Per-channel mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_mean: Option<PerChannel>,
    /// Per-channel standard deviation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_std: Option<PerChannel>,
    /// Convert to RGB first. Inputs of this crate are always RGB already
    /// ([`load_image`](crate::load_image) converts as transformers' `load_image` does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_convert_rgb: Option<bool>,
    /// Pad the processed image with zeros at the bottom and right to `pad_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_pad: Option<bool>,
    /// Size to pad to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pad_size: Option<SizeSpec>,
    /// CLIP only (KOSMOS-2): resize to a square of the default shortest edge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_square_size: Option<bool>,
}

/// The processor classes whose defaults this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Clip,
    Vit,
    Blip,
    Siglip,
    /// No class named: `BaseImageProcessor`'s defaults (nothing enabled).
    Base,
}

const KNOWN_CLASSES: &str = "CLIPImageProcessor, ViTImageProcessor, BlipImageProcessor, \
                             SiglipImageProcessor (or their FeatureExtractor names)";

impl Class {
    fn from_config(config: &ImageProcessorConfig, path: &str) -> Result<Class> {
        let name = match (&config.image_processor_type, &config.feature_extractor_type) {
            (Some(t), _) => t.clone(),
            (None, Some(t)) => t.replace("FeatureExtractor", "ImageProcessor"),
            (None, None) => return Ok(Class::Base),
        };
        let base = name
            .strip_suffix("Pil")
            .or_else(|| name.strip_suffix("Fast"))
            .unwrap_or(&name);
        Ok(match base {
            "CLIPImageProcessor" => Class::Clip,
            "ViTImageProcessor" => Class::Vit,
            "BlipImageProcessor" => Class::Blip,
            "SiglipImageProcessor" => Class::Siglip,
            _ => {
                return Err(ProcessingError::config(
                    path,
                    format!(
                        "unsupported image processor type `{name}`; supported: {KNOWN_CLASSES}"
                    ),
                ));
            }
        })
    }

    /// The class attributes of the Pillow processor of transformers 5.
    fn defaults(self) -> ImageProcessorConfig {
        let mut c = ImageProcessorConfig {
            rescale_factor: Some(1.0 / 255.0),
            default_to_square: Some(true),
            ..ImageProcessorConfig::default()
        };
        let three = |v: [f64; 3]| Some(PerChannel::PerChannel(v.to_vec()));
        match self {
            Class::Base => {}
            Class::Clip => {
                c.image_processor_type = Some("CLIPImageProcessor".into());
                c.do_resize = Some(true);
                c.size = Some(SizeSpec::Dict(SizeDict::shortest_edge(224)));
                c.default_to_square = Some(false);
                c.resample = Some(3);
                c.do_center_crop = Some(true);
                c.crop_size = Some(SizeSpec::Dict(SizeDict::height_width(224, 224)));
                c.do_rescale = Some(true);
                c.do_normalize = Some(true);
                c.image_mean = three(OPENAI_CLIP_MEAN);
                c.image_std = three(OPENAI_CLIP_STD);
                c.do_convert_rgb = Some(true);
            }
            Class::Vit => {
                c.image_processor_type = Some("ViTImageProcessor".into());
                c.do_resize = Some(true);
                c.size = Some(SizeSpec::Dict(SizeDict::height_width(224, 224)));
                c.resample = Some(2);
                c.do_rescale = Some(true);
                c.do_normalize = Some(true);
                c.image_mean = three(IMAGENET_STANDARD_MEAN);
                c.image_std = three(IMAGENET_STANDARD_STD);
            }
            Class::Blip => {
                c.image_processor_type = Some("BlipImageProcessor".into());
                c.do_resize = Some(true);
                c.size = Some(SizeSpec::Dict(SizeDict::height_width(384, 384)));
                c.resample = Some(3);
                c.do_rescale = Some(true);
                c.do_normalize = Some(true);
                c.image_mean = three(OPENAI_CLIP_MEAN);
                c.image_std = three(OPENAI_CLIP_STD);
                c.do_convert_rgb = Some(true);
            }
            Class::Siglip => {
                c.image_processor_type = Some("SiglipImageProcessor".into());
                c.do_resize = Some(true);
                c.size = Some(SizeSpec::Dict(SizeDict::height_width(224, 224)));
                c.default_to_square = Some(false);
                c.resample = Some(3);
                c.do_rescale = Some(true);
                c.do_normalize = Some(true);
                c.image_mean = three(IMAGENET_STANDARD_MEAN);
                c.image_std = three(IMAGENET_STANDARD_STD);
                c.do_convert_rgb = Some(true);
            }
        }
        c
    }
}

/// How the resize picks its output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// The shorter side becomes `n`; the longer one `trunc(n * long / short)`.
    ShortestEdge(usize),
    /// Exactly this size.
    Exact {
        /// Output height.
        height: usize,
        /// Output width.
        width: usize,
    },
}

impl ResizeTarget {
    /// The `(height, width)` an image of `height` x `width` is resized to, by transformers'
    /// `get_resize_output_image_size` (`default_to_square=False`) for a shortest edge.
    pub fn output_size(self, height: usize, width: usize) -> (usize, usize) {
        match self {
            ResizeTarget::Exact { height, width } => (height, width),
            ResizeTarget::ShortestEdge(n) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                // Python: int(n * long / short), true division of exact integers.
                let new_long = ((n as u64 * long as u64) as f64 / short as f64) as usize;
                if width <= height {
                    (new_long, n)
                } else {
                    (n, new_long)
                }
            }
        }
    }
}

/// A checked configuration, every default filled in: what the processor does, step by step.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedConfig {
    /// Resize target and filter, if resizing.
    pub resize: Option<(ResizeTarget, Filter)>,
    /// Center crop `(height, width)`, if cropping.
    pub center_crop: Option<(usize, usize)>,
    /// Rescale factor, if rescaling.
    pub rescale: Option<f64>,
    /// Per-channel mean and standard deviation (as `f32`, the precision transformers normalises
    /// in), if normalising.
    pub normalize: Option<([f32; 3], [f32; 3])>,
    /// Pad to `(height, width)` with zeros at the bottom and right, if padding.
    pub pad: Option<(usize, usize)>,
}

impl ImageProcessorConfig {
    /// Reads a `preprocessor_config.json`.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ProcessingError::io(path, e))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses the text of a `preprocessor_config.json`; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| ProcessingError::config(origin, e.to_string()))
    }

    /// The defaults of `CLIPImageProcessor` (those of openai/clip-vit-base-patch32).
    pub fn clip() -> Self {
        Class::Clip.defaults()
    }

    /// The defaults of `ViTImageProcessor` (those of google/vit-base-patch16-224).
    pub fn vit() -> Self {
        Class::Vit.defaults()
    }

    /// The defaults of `BlipImageProcessor` (BLIP and BLIP-2).
    pub fn blip() -> Self {
        Class::Blip.defaults()
    }

    /// This configuration with every missing field set to its class default, as transformers
    /// reads it (`image_processor_type` is normalised to the class name).
    pub fn with_defaults(&self, origin: &str) -> Result<Self> {
        let class = Class::from_config(self, origin)?;
        let d = class.defaults();
        macro_rules! pick {
            ($f:ident) => {
                self.$f.clone().or(d.$f.clone())
            };
        }
        let mut c = ImageProcessorConfig {
            image_processor_type: d.image_processor_type.clone(),
            feature_extractor_type: None,
            do_resize: pick!(do_resize),
            size: pick!(size),
            default_to_square: pick!(default_to_square),
            resample: pick!(resample),
            do_center_crop: pick!(do_center_crop),
            crop_size: pick!(crop_size),
            do_rescale: pick!(do_rescale),
            rescale_factor: pick!(rescale_factor),
            do_normalize: pick!(do_normalize),
            image_mean: pick!(image_mean),
            image_std: pick!(image_std),
            do_convert_rgb: pick!(do_convert_rgb),
            do_pad: pick!(do_pad),
            pad_size: pick!(pad_size),
            use_square_size: None,
        };
        if class == Class::Clip && self.use_square_size == Some(true) {
            // CLIPImageProcessor.__init__: a square of the class default shortest edge.
            c.size = Some(SizeSpec::Dict(SizeDict::height_width(224, 224)));
        }
        Ok(c)
    }

    /// Fills in the defaults and checks everything, as transformers' preprocessing does.
    /// `origin` names the file (or the configuration) in errors.
    pub fn resolved(&self, origin: &str) -> Result<ResolvedConfig> {
        let c = self.with_defaults(origin)?;
        let err = |msg: String| ProcessingError::config(origin, msg);
        let square = c.default_to_square.unwrap_or(true);

        let resize = if c.do_resize == Some(true) {
            let (Some(size), Some(code)) = (&c.size, c.resample) else {
                return Err(err(
                    "`size` and `resample` must be specified if `do_resize` is true".into(),
                ));
            };
            let filter = Filter::from_pil_code(code).ok_or_else(|| {
                err(format!(
                    "unsupported resample {code}: expected a PIL code 0 (nearest), 1 (lanczos), \
                     2 (bilinear), 3 (bicubic), 4 (box) or 5 (hamming)"
                ))
            })?;
            let target = match size_dict(size, square, "size").map_err(&err)? {
                SizeDict {
                    shortest_edge: Some(n),
                    longest_edge: None,
                    height: None,
                    width: None,
                    max_height: None,
                    max_width: None,
                } => ResizeTarget::ShortestEdge(positive(n, "size.shortest_edge").map_err(&err)?),
                SizeDict {
                    shortest_edge: None,
                    longest_edge: None,
                    height: Some(h),
                    width: Some(w),
                    max_height: None,
                    max_width: None,
                } => ResizeTarget::Exact {
                    height: positive(h, "size.height").map_err(&err)?,
                    width: positive(w, "size.width").map_err(&err)?,
                },
                other => {
                    return Err(err(format!(
                        "unsupported size {other:?}: only {{\"shortest_edge\": n}} and \
                         {{\"height\": h, \"width\": w}} are implemented"
                    )));
                }
            };
            Some((target, filter))
        } else {
            None
        };

        let center_crop = if c.do_center_crop == Some(true) {
            let Some(crop) = &c.crop_size else {
                return Err(err(
                    "`crop_size` must be specified if `do_center_crop` is true".into(),
                ));
            };
            Some(height_width(crop, "crop_size").map_err(&err)?)
        } else {
            None
        };

        let rescale = if c.do_rescale == Some(true) {
            let f = c.rescale_factor.ok_or_else(|| {
                err("`rescale_factor` must be specified if `do_rescale` is true".into())
            })?;
            if !f.is_finite() {
                return Err(err(format!("rescale_factor {f} is not finite")));
            }
            Some(f)
        } else {
            None
        };

        let normalize = if c.do_normalize == Some(true) {
            let (Some(mean), Some(std)) = (&c.image_mean, &c.image_std) else {
                return Err(err(
                    "`image_mean` and `image_std` must both be specified if `do_normalize` is true"
                        .into(),
                ));
            };
            Some((
                per_channel(mean, "image_mean").map_err(&err)?,
                per_channel(std, "image_std").map_err(&err)?,
            ))
        } else {
            None
        };

        let pad = if c.do_pad == Some(true) {
            let Some(p) = &c.pad_size else {
                return Err(err(
                    "`pad_size` must be specified if `do_pad` is true".into()
                ));
            };
            Some(height_width(p, "pad_size").map_err(&err)?)
        } else {
            None
        };

        Ok(ResolvedConfig {
            resize,
            center_crop,
            rescale,
            normalize,
            pad,
        })
    }
}

fn positive(n: u32, what: &str) -> std::result::Result<usize, String> {
    if n == 0 {
        Err(format!("{what} must be positive"))
    } else {
        Ok(n as usize)
    }
}

/// transformers' `get_size_dict`.
fn size_dict(
    spec: &SizeSpec,
    default_to_square: bool,
    what: &str,
) -> std::result::Result<SizeDict, String> {
    Ok(match spec {
        SizeSpec::Int(n) if default_to_square => SizeDict::height_width(*n, *n),
        SizeSpec::Int(n) => SizeDict::shortest_edge(*n),
        SizeSpec::List(v) if v.len() == 2 => SizeDict::height_width(v[0], v[1]),
        SizeSpec::List(v) => return Err(format!("{what} {v:?}: a list must be [height, width]")),
        SizeSpec::Dict(d) => d.clone(),
    })
}

/// A size that must be `{"height", "width"}` (a bare integer being a square).
fn height_width(spec: &SizeSpec, what: &str) -> std::result::Result<(usize, usize), String> {
    match size_dict(spec, true, what)? {
        SizeDict {
            shortest_edge: None,
            longest_edge: None,
            height: Some(h),
            width: Some(w),
            max_height: None,
            max_width: None,
        } => Ok((
            positive(h, &format!("{what}.height"))?,
            positive(w, &format!("{what}.width"))?,
        )),
        other => Err(format!(
            "unsupported {what} {other:?}: expected {{\"height\": h, \"width\": w}} or an integer"
        )),
    }
}

fn per_channel(v: &PerChannel, what: &str) -> std::result::Result<[f32; 3], String> {
    let vals = match v {
        PerChannel::One(x) => [*x; 3],
        PerChannel::PerChannel(v) if v.len() == 3 => [v[0], v[1], v[2]],
        PerChannel::PerChannel(v) => {
            return Err(format!(
                "{what} must have 3 values (one per RGB channel), got {}",
                v.len()
            ));
        }
    };
    if vals.iter().any(|x| !x.is_finite()) {
        return Err(format!("{what} {vals:?} is not finite"));
    }
    // numpy: np.array(mean, dtype=float32)
    Ok(vals.map(|x| x as f32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_rule() {
        let t = ResizeTarget::ShortestEdge(224);
        assert_eq!(t.output_size(300, 451), (224, 336)); // 224 * 451 / 300 = 336.75
        assert_eq!(t.output_size(451, 300), (336, 224));
        assert_eq!(t.output_size(100, 100), (224, 224));
        assert_eq!(t.output_size(1, 1000), (224, 224000));
    }

    #[test]
    fn bare_int_sizes() {
        let clip: ImageProcessorConfig = serde_json::from_str(
            r#"{"feature_extractor_type": "CLIPFeatureExtractor", "size": 224, "crop_size": 200}"#,
        )
        .unwrap();
        let r = clip.resolved("test").unwrap();
        assert_eq!(
            r.resize,
            Some((ResizeTarget::ShortestEdge(224), Filter::Bicubic))
        );
        assert_eq!(r.center_crop, Some((200, 200)));
        let vit: ImageProcessorConfig =
            serde_json::from_str(r#"{"image_processor_type": "ViTImageProcessor", "size": 32}"#)
                .unwrap();
        let r = vit.resolved("test").unwrap();
        assert_eq!(
            r.resize,
            Some((
                ResizeTarget::Exact {
                    height: 32,
                    width: 32
                },
                Filter::Bilinear
            ))
        );
        assert_eq!(r.center_crop, None);
    }

    #[test]
    fn nulls_take_class_defaults() {
        let c: ImageProcessorConfig = serde_json::from_str(
            r#"{"image_processor_type": "CLIPImageProcessorPil", "resample": null, "size": null}"#,
        )
        .unwrap();
        assert_eq!(
            c.resolved("t").unwrap(),
            ImageProcessorConfig::clip().resolved("t").unwrap()
        );
    }

    #[test]
    fn unsupported_values_are_errors() {
        let cases = [
            (
                r#"{"image_processor_type": "CLIPImageProcessor", "resample": 7}"#,
                "resample 7",
            ),
            (
                r#"{"image_processor_type": "FooImageProcessor"}"#,
                "FooImageProcessor",
            ),
            (
                r#"{"image_processor_type": "ViTImageProcessor", "size": {"longest_edge": 4}}"#,
                "unsupported size",
            ),
            (
                r#"{"image_processor_type": "ViTImageProcessor", "image_mean": [1, 2]}"#,
                "3 values",
            ),
            (
                r#"{"image_processor_type": "CLIPImageProcessor", "crop_size": {"shortest_edge": 4}}"#,
                "crop_size",
            ),
            (r#"{"do_resize": true, "size": 4}"#, "`resample`"),
            (r#"{"do_normalize": true}"#, "image_mean"),
            (r#"{"do_pad": true}"#, "pad_size"),
            (
                r#"{"image_processor_type": "ViTImageProcessor", "size": {"height": 0, "width": 4}}"#,
                "positive",
            ),
        ];
        for (json, needle) in cases {
            let c: ImageProcessorConfig = serde_json::from_str(json).unwrap();
            let e = c.resolved("cfg.json").unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("cfg.json"), "{json}: {e}");
        }
    }
}

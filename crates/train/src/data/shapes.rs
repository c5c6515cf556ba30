//! A synthetic, captioned image set: one coloured shape on a dark, noisy background, with a
//! caption such as "a large red circle on the left" or just "a red circle".
//!
//! It exists to train and test a small CLIP end to end in minutes, and to measure
//! compositional generalisation: a few colour-shape pairs ([`HELD_OUT`]) never appear in the
//! training split, although each of their colours and shapes does, with other partners. A
//! model that learned "red" and "square" separately should still match a red square to
//! "a red square" zero-shot.
//!
//! Every sample is a pure function of `(seed, split, index)`, so the set needs no storage, is
//! indexable at any position, and batches come out the same after a resume.

use std::path::Path;

use glimpse_tensor::{Device, Error, Result, Tensor};

use super::rng::Rng;

/// CLIP's image normalisation mean (RGB), as in its `preprocessor_config.json`.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];

/// CLIP's image normalisation standard deviation (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// The default image side, in pixels.
pub const DEFAULT_IMAGE_SIZE: usize = 32;

/// The default number of samples per epoch.
pub const DEFAULT_LEN: usize = 50_000;

/// Probability that a caption keeps the size word; dropping it sometimes teaches the text
/// tower that attributes are optional, and makes the short zero-shot prompts in-distribution.
const P_KEEP_SIZE: f64 = 0.7;

/// Probability that a caption keeps the position phrase.
const P_KEEP_POSITION: f64 = 0.7;

/// Separates the shapes streams from any other stream derived from the same seed.
const SHAPES_STREAM: u64 = 0x05AA_9E5D;

/// The colour of the shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
    /// Purple.
    Purple,
    /// Orange.
    Orange,
}

impl Colour {
    /// Every colour, in index order.
    pub const ALL: [Colour; 6] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
    ];

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
        }
    }

    /// The nominal RGB value; each sample jitters it a little.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 180, 60],
            Colour::Blue => [50, 90, 235],
            Colour::Yellow => [235, 220, 50],
            Colour::Purple => [150, 60, 200],
            Colour::Orange => [245, 140, 30],
        }
    }

    /// The position in [`Colour::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The kind of shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShapeKind {
    /// A disc.
    Circle,
    /// An axis-aligned square.
    Square,
    /// An equilateral triangle pointing up.
    Triangle,
    /// A plus sign.
    Cross,
}

impl ShapeKind {
    /// Every shape, in index order.
    pub const ALL: [ShapeKind; 4] = [
        ShapeKind::Circle,
        ShapeKind::Square,
        ShapeKind::Triangle,
        ShapeKind::Cross,
    ];

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
            ShapeKind::Cross => "cross",
        }
    }

    /// The position in [`ShapeKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The size of the shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Size {
    /// A radius of about 0.16 of the image side.
    Small,
    /// A radius of about 0.27 of the image side.
    Large,
}

impl Size {
    /// Both sizes.
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// The nominal radius as a fraction of the image side. Large stays well under a third so
    /// that a large shape "on the left" is still clearly off centre.
    pub fn radius_fraction(self) -> f32 {
        match self {
            Size::Small => 0.16,
            Size::Large => 0.27,
        }
    }
}

/// Where the shape sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Position {
    /// Against the left edge, vertically near the middle.
    Left,
    /// Against the right edge.
    Right,
    /// Against the top edge, horizontally near the middle.
    Top,
    /// Against the bottom edge.
    Bottom,
    /// Near the centre.
    Middle,
}

impl Position {
    /// Every position.
    pub const ALL: [Position; 5] = [
        Position::Left,
        Position::Right,
        Position::Top,
        Position::Bottom,
        Position::Middle,
    ];

    /// The position word ("left").
    pub fn name(self) -> &'static str {
        match self {
            Position::Left => "left",
            Position::Right => "right",
            Position::Top => "top",
            Position::Bottom => "bottom",
            Position::Middle => "middle",
        }
    }

    /// The caption phrase ("on the left").
    pub fn phrase(self) -> &'static str {
        match self {
            Position::Left => "on the left",
            Position::Right => "on the right",
            Position::Top => "at the top",
            Position::Bottom => "at the bottom",
            Position::Middle => "in the middle",
        }
    }
}

/// Number of colour-shape combinations, 6 x 4.
pub const NUM_COMBINATIONS: usize = Colour::ALL.len() * ShapeKind::ALL.len();

/// The colour-shape pairs the training split never shows.
///
/// Colour `i` (in [`Colour::ALL`] order) is held out with shape `(i + 1) mod 4`, a
/// Latin-square diagonal: every colour loses exactly one partner and keeps three, every shape
/// loses one or two of its six colours and keeps at least four, so each held-out pair is made
/// of a colour and a shape both well seen in training.
pub const HELD_OUT: [(Colour, ShapeKind); 6] = [
    (Colour::Red, ShapeKind::Square),
    (Colour::Green, ShapeKind::Triangle),
    (Colour::Blue, ShapeKind::Cross),
    (Colour::Yellow, ShapeKind::Circle),
    (Colour::Purple, ShapeKind::Square),
    (Colour::Orange, ShapeKind::Triangle),
];

/// Whether a colour-shape pair is in [`HELD_OUT`].
pub fn is_held_out(colour: Colour, shape: ShapeKind) -> bool {
    HELD_OUT.contains(&(colour, shape))
}

/// All 24 colour-shape pairs, colour-major: the pair at index `k` has colour `k / 4` and
/// shape `k % 4`, as [`combination_index`] numbers them.
pub fn all_combinations() -> Vec<(Colour, ShapeKind)> {
    Colour::ALL
        .iter()
        .flat_map(|&c| ShapeKind::ALL.iter().map(move |&s| (c, s)))
        .collect()
}

/// The index of a pair in [`all_combinations`], the class of zero-shot classification.
pub fn combination_index(colour: Colour, shape: ShapeKind) -> usize {
    colour.index() * ShapeKind::ALL.len() + shape.index()
}

/// "a" or "an", whichever the next word takes.
fn article(next: &str) -> &'static str {
    if next.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// The shortest caption of a pair, "a red circle" or "an orange square": the zero-shot
/// prompt of that class (and a caption the training split does produce, for pairs it shows).
pub fn combination_label(colour: Colour, shape: ShapeKind) -> String {
    format!(
        "{} {} {}",
        article(colour.name()),
        colour.name(),
        shape.name()
    )
}

/// The caption of a sample with the given attributes; `size` and `position` are left out
/// when `None`: "a {size} {colour} {shape} {position phrase}".
pub fn caption(
    colour: Colour,
    shape: ShapeKind,
    size: Option<Size>,
    position: Option<Position>,
) -> String {
    caption_of(Some(colour), shape, size, position)
}

/// [`caption`] with the colour optional too: "a small square on the left".
pub fn caption_of(
    colour: Option<Colour>,
    shape: ShapeKind,
    size: Option<Size>,
    position: Option<Position>,
) -> String {
    let first = size
        .map(Size::name)
        .or(colour.map(Colour::name))
        .unwrap_or(shape.name());
    let mut words = vec![article(first)];
    words.extend(size.map(Size::name));
    words.extend(colour.map(Colour::name));
    words.push(shape.name());
    words.extend(position.map(Position::phrase));
    words.join(" ")
}

/// Which part of the set to draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShapesSplit {
    /// The 18 pairs not in [`HELD_OUT`].
    Train,
    /// All 24 pairs, from streams separate from the training split's.
    Test,
    /// Only the 6 pairs in [`HELD_OUT`].
    HeldOut,
}

impl ShapesSplit {
    /// The colour-shape pairs this split draws from (uniformly).
    pub fn combinations(self) -> Vec<(Colour, ShapeKind)> {
        let all = all_combinations().into_iter();
        match self {
            ShapesSplit::Train => all.filter(|&(c, s)| !is_held_out(c, s)).collect(),
            ShapesSplit::Test => all.collect(),
            ShapesSplit::HeldOut => all.filter(|&(c, s)| is_held_out(c, s)).collect(),
        }
    }

    fn stream_id(self) -> u64 {
        match self {
            ShapesSplit::Train => 0,
            ShapesSplit::Test => 1,
            ShapesSplit::HeldOut => 2,
        }
    }
}

/// How the set is generated.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapesConfig {
    /// Side of the square images, in pixels (8 to 1024).
    pub image_size: usize,
    /// The seed every sample's stream derives from.
    pub seed: u64,
    /// Samples per epoch. Any index can be drawn; this only says where an epoch ends.
    pub len: usize,
    /// The fraction of samples (0 to 1) whose shape has a random colour far from every named
    /// colour (greys, whites, limes, cyans, magentas; see [`is_unnamed_colour`]) and whose caption
    /// names no colour ("a small square on the left"): shape supervision over many hues,
    /// which teaches the image tower to see shapes apart from their colours. They never show
    /// a named colour, so no held-out pair leaks through them.
    pub unnamed_colour_fraction: f64,
}

impl Default for ShapesConfig {
    fn default() -> Self {
        ShapesConfig {
            image_size: DEFAULT_IMAGE_SIZE,
            seed: 0,
            len: DEFAULT_LEN,
            unnamed_colour_fraction: 0.0,
        }
    }
}

/// One generated sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeSample {
    /// RGB pixels, `size * size * 3`, row-major, channels last.
    pub image: Vec<u8>,
    /// The caption, e.g. "a large red circle on the left".
    pub caption: String,
    /// The shape's colour; for a sample in an unnamed colour, the colour of the pair it was
    /// drawn as, which neither the picture nor the caption shows.
    pub colour: Colour,
    /// Drawn in an unnamed colour, with a caption naming no colour
    /// ([`ShapesConfig::unnamed_colour_fraction`]).
    pub unnamed_colour: bool,
    /// The kind of shape.
    pub shape: ShapeKind,
    /// Its size (whether or not the caption says it).
    pub size: Size,
    /// Its position (whether or not the caption says it).
    pub position: Position,
}

impl ShapeSample {
    /// The index of the colour-shape pair in [`all_combinations`] (for a sample in an unnamed
    /// colour, of the pair it was drawn as).
    pub fn combination(&self) -> usize {
        combination_index(self.colour, self.shape)
    }
}

/// A batch of normalised images with their captions.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionBatch {
    /// Pixels, `(B, 3, H, W)` row-major, normalised with [`CLIP_MEAN`] and [`CLIP_STD`].
    pub pixels: Vec<f32>,
    /// One caption per image.
    pub captions: Vec<String>,
    /// The colour-shape pair of each image as an index in [`all_combinations`] (over all 24
    /// pairs, whatever the split), the zero-shot class; for a training image in an unnamed
    /// colour, the pair it was drawn as (its shape is right, its colour is not shown).
    pub combinations: Vec<u32>,
    /// `[B, 3, H, W]`.
    pub shape: [usize; 4],
}

impl CaptionBatch {
    /// The number of samples.
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// Whether the batch holds no sample.
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }

    /// The captions as `&str`, as `TextTokenizer::encode_batch` takes them.
    pub fn caption_refs(&self) -> Vec<&str> {
        self.captions.iter().map(String::as_str).collect()
    }

    /// The pixels as an `F32` tensor of shape `(B, 3, H, W)`.
    pub fn pixels_tensor(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.pixels, self.shape, device)
    }

    /// The combination indices as a `U32` tensor of shape `(B,)`.
    pub fn combinations_tensor(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.combinations, [self.combinations.len()], device)
    }
}

/// The captioned-shapes set for one split: an indexable, deterministic generator.
#[derive(Debug, Clone)]
pub struct ShapesDataset {
    config: ShapesConfig,
    split: ShapesSplit,
    combinations: Vec<(Colour, ShapeKind)>,
}

impl ShapesDataset {
    /// The set for `split`. Fails when the image size is outside 8..=1024 pixels or the
    /// unnamed-colour fraction outside 0..=1, or above 0 for an evaluation split (whose
    /// samples must show the pair they are labelled with).
    pub fn new(config: ShapesConfig, split: ShapesSplit) -> Result<Self> {
        if split != ShapesSplit::Train && config.unnamed_colour_fraction != 0.0 {
            return Err(Error::config(
                "ShapesConfig",
                format!(
                    "unnamed_colour_fraction {} on the {split:?} split: only the training split \
                     takes unnamed colours",
                    config.unnamed_colour_fraction
                ),
            ));
        }
        if !(0.0..=1.0).contains(&config.unnamed_colour_fraction) {
            return Err(Error::config(
                "ShapesConfig",
                format!(
                    "unnamed_colour_fraction {} is outside 0..=1",
                    config.unnamed_colour_fraction
                ),
            ));
        }
        if !(8..=1024).contains(&config.image_size) {
            return Err(Error::config(
                "ShapesConfig",
                format!(
                    "image_size {} is outside 8..=1024 pixels",
                    config.image_size
                ),
            ));
        }
        Ok(ShapesDataset {
            config,
            split,
            combinations: split.combinations(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ShapesConfig {
        &self.config
    }

    /// The split.
    pub fn split(&self) -> ShapesSplit {
        self.split
    }

    /// Samples per epoch ([`ShapesConfig::len`]).
    pub fn len(&self) -> usize {
        self.config.len
    }

    /// Whether an epoch is empty.
    pub fn is_empty(&self) -> bool {
        self.config.len == 0
    }

    /// The image side, in pixels.
    pub fn image_size(&self) -> usize {
        self.config.image_size
    }

    /// The colour-shape pairs this split draws from.
    pub fn combinations(&self) -> &[(Colour, ShapeKind)] {
        &self.combinations
    }

    /// Sample `index`: the same for the same `(seed, split, index)`, at any index (indices
    /// past [`ShapesDataset::len`] are valid too).
    pub fn sample(&self, index: usize) -> ShapeSample {
        let mut rng = Rng::derive(
            self.config.seed,
            &[SHAPES_STREAM, self.split.stream_id(), index as u64],
        );
        // Attributes first, then the caption and the picture: the draws never depend on the
        // image size, so a sample's attributes and caption are the same at every size.
        let &(colour, shape) = rng
            .choose(&self.combinations)
            .unwrap_or(&(Colour::Red, ShapeKind::Circle));
        let size = Size::ALL[rng.below_usize(Size::ALL.len())];
        let position = Position::ALL[rng.below_usize(Position::ALL.len())];
        let keep_size = rng.bernoulli(P_KEEP_SIZE);
        let keep_position = rng.bernoulli(P_KEEP_POSITION);
        // Drawn only when asked for, so that sets without such samples keep their streams.
        let fraction = self.config.unnamed_colour_fraction;
        let unnamed = fraction > 0.0 && rng.bernoulli(fraction);
        let caption = caption_of(
            (!unnamed).then_some(colour),
            shape,
            keep_size.then_some(size),
            keep_position.then_some(position),
        );
        let fill = if unnamed {
            Fill::Unnamed
        } else {
            Fill::Named(colour)
        };
        let image = render(
            &mut rng,
            self.config.image_size,
            fill,
            shape,
            size,
            position,
        );
        ShapeSample {
            image,
            caption,
            colour,
            unnamed_colour: unnamed,
            shape,
            size,
            position,
        }
    }

    /// The batch of the samples at `indices`, pixels normalised as CLIP expects.
    pub fn batch(&self, indices: &[usize]) -> CaptionBatch {
        let s = self.config.image_size;
        let plane = s * s;
        let mut pixels = vec![0f32; indices.len() * 3 * plane];
        let mut captions = Vec::with_capacity(indices.len());
        let mut combinations = Vec::with_capacity(indices.len());
        // Per-channel lookup tables instead of a division per pixel.
        let tables: Vec<[f32; 256]> = (0..3)
            .map(|c| std::array::from_fn(|p| (p as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]))
            .collect();
        for (b, &index) in indices.iter().enumerate() {
            let sample = self.sample(index);
            let out = &mut pixels[b * 3 * plane..(b + 1) * 3 * plane];
            for (k, rgb) in sample.image.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    out[c * plane + k] = tables[c][usize::from(rgb[c])];
                }
            }
            combinations.push(sample.combination() as u32);
            captions.push(sample.caption);
        }
        CaptionBatch {
            pixels,
            captions,
            combinations,
            shape: [indices.len(), 3, s, s],
        }
    }

    /// Writes the samples at `indices` as a PNG grid of `columns` columns, with a 2-pixel
    /// white gutter: a quick look at what the model sees.
    pub fn save_grid(
        &self,
        indices: &[usize],
        columns: usize,
        path: impl AsRef<Path>,
    ) -> Result<()> {
        let path = path.as_ref();
        if indices.is_empty() || columns == 0 {
            return Err(Error::invalid(
                "ShapesDataset::save_grid",
                "needs at least one sample and one column",
            ));
        }
        let s = self.config.image_size;
        let gutter = 2;
        let cols = columns.min(indices.len());
        let rows = indices.len().div_ceil(cols);
        let width = cols * (s + gutter) + gutter;
        let height = rows * (s + gutter) + gutter;
        let mut buf = vec![255u8; width * height * 3];
        for (n, &index) in indices.iter().enumerate() {
            let sample = self.sample(index);
            let (x0, y0) = (
                gutter + (n % cols) * (s + gutter),
                gutter + (n / cols) * (s + gutter),
            );
            for y in 0..s {
                let dst = ((y0 + y) * width + x0) * 3;
                buf[dst..dst + s * 3].copy_from_slice(&sample.image[y * s * 3..(y + 1) * s * 3]);
            }
        }
        let too_big = || Error::invalid("ShapesDataset::save_grid", "the grid is too large");
        let w = u32::try_from(width).map_err(|_| too_big())?;
        let h = u32::try_from(height).map_err(|_| too_big())?;
        let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(too_big)?;
        img.save(path)
            .map_err(|e| Error::io(path, std::io::Error::other(e)))
    }
}

/// What a shape is filled with.
#[derive(Debug, Clone, Copy)]
enum Fill {
    /// The colour's RGB, each channel jittered by up to 15.
    Named(Colour),
    /// A random [`unnamed_colour`].
    Unnamed,
}

/// How far (in degrees) the hue of a saturated unnamed colour stays from every named
/// colour's hue; named samples stay within about 13 degrees of theirs.
pub const UNNAMED_MIN_HUE_GAP: f32 = 30.0;

/// Below this saturation a colour counts as a grey, whatever its hue.
pub const UNNAMED_MAX_GREY_SATURATION: f32 = 0.2;

/// Hue in degrees, saturation and value (0 to 1) of an RGB colour (0 to 255).
pub fn hsv(rgb: [f32; 3]) -> (f32, f32, f32) {
    let [r, g, b] = rgb.map(|c| c / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let saturation = if max > 0.0 { delta / max } else { 0.0 };
    let hue = if delta == 0.0 {
        0.0
    } else if max == r {
        60.0 * ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / delta + 2.0)
    } else {
        60.0 * ((r - g) / delta + 4.0)
    };
    (hue, saturation, max)
}

/// Whether `rgb` is an unnamed colour: bright enough to stand out from the background
/// (a channel of at least 110; the background is about 40), and either a grey (saturation
/// under [`UNNAMED_MAX_GREY_SATURATION`], of any hue: faintly tinted greys too) or a hue at
/// least [`UNNAMED_MIN_HUE_GAP`] degrees from every named colour's: greys, whites, limes,
/// cyans and magentas, never a saturated shade of a named colour.
pub fn is_unnamed_colour(rgb: [f32; 3]) -> bool {
    let (hue, saturation, value) = hsv(rgb);
    if value * 255.0 < 110.0 {
        return false;
    }
    saturation < UNNAMED_MAX_GREY_SATURATION
        || named_hues().iter().all(|&named_hue| {
            let gap = (hue - named_hue).abs();
            gap.min(360.0 - gap) >= UNNAMED_MIN_HUE_GAP
        })
}

/// The hue of every named colour (computed once: `unnamed_colour` asks about five times per
/// sample).
fn named_hues() -> &'static [f32] {
    static HUES: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    HUES.get_or_init(|| {
        Colour::ALL
            .iter()
            .map(|c| hsv(c.rgb().map(f32::from)).0)
            .collect()
    })
}

/// A random [`is_unnamed_colour`] colour, uniform over that part of the RGB cube by
/// rejection (about a fifth of the draws are kept); after 256 rejections, which practically
/// never happen, a mid grey.
pub fn unnamed_colour(rng: &mut Rng) -> [f32; 3] {
    for _ in 0..256 {
        let c: [f32; 3] = std::array::from_fn(|_| rng.range_f32(0.0, 255.0));
        if is_unnamed_colour(c) {
            return c;
        }
    }
    [160.0; 3]
}

/// Renders one sample: background, then the shape blended in with 4x4 supersampled coverage
/// so edges are antialiased and small shapes keep their outline at 32x32.
fn render(
    rng: &mut Rng,
    side: usize,
    fill: Fill,
    shape: ShapeKind,
    size: Size,
    position: Position,
) -> Vec<u8> {
    let s = side as f32;
    let fg: [f32; 3] = match fill {
        Fill::Named(colour) => {
            let base = colour.rgb();
            std::array::from_fn(|c| {
                (f32::from(base[c]) + rng.range_f32(-15.0, 15.0)).clamp(0.0, 255.0)
            })
        }
        Fill::Unnamed => unnamed_colour(rng),
    };
    let r = size.radius_fraction() * s * rng.range_f32(0.92, 1.08);

    // Every shape fits in a box of half-side `r` around its centre (see `inside`), so a
    // margin of `r` plus a little keeps it whole in the image.
    let edge = r + 0.03 * s;
    let along = rng.range_f32(0.0, 0.05 * s);
    let across = s * 0.5 + rng.range_f32(-0.06 * s, 0.06 * s);
    let (cx, cy) = match position {
        Position::Left => (edge + along, across),
        Position::Right => (s - edge - along, across),
        Position::Top => (across, edge + along),
        Position::Bottom => (across, s - edge - along),
        Position::Middle => (
            s * 0.5 + rng.range_f32(-0.04 * s, 0.04 * s),
            s * 0.5 + rng.range_f32(-0.04 * s, 0.04 * s),
        ),
    };

    let grey = 40.0 + rng.range_f32(-6.0, 6.0);
    let mut image = vec![0u8; side * side * 3];
    for (k, px) in image.chunks_exact_mut(3).enumerate() {
        let bg = grey + rng.range_f32(-8.0, 8.0);
        let (x, y) = ((k % side) as f32, (k / side) as f32);
        // Only pixels touching the shape's box need the 16 point tests.
        let near = x + 1.0 >= cx - r && x <= cx + r && y + 1.0 >= cy - r && y <= cy + r;
        let coverage = if near {
            coverage(x, y, cx, cy, r, shape)
        } else {
            0.0
        };
        for c in 0..3 {
            px[c] = (bg * (1.0 - coverage) + fg[c] * coverage)
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
    image
}

/// The fraction of the pixel whose top-left corner is `(x, y)` that the shape covers, from a
/// 4x4 grid of sample points.
fn coverage(x: f32, y: f32, cx: f32, cy: f32, r: f32, shape: ShapeKind) -> f32 {
    const N: usize = 4;
    let mut hits = 0;
    for j in 0..N {
        for i in 0..N {
            let px = x + (i as f32 + 0.5) / N as f32;
            let py = y + (j as f32 + 0.5) / N as f32;
            if inside(px - cx, py - cy, r, shape) {
                hits += 1;
            }
        }
    }
    hits as f32 / (N * N) as f32
}

/// Whether the point `(dx, dy)` from the centre (y pointing down) is inside the shape of
/// nominal radius `r`. Every shape lies within `|dx|, |dy| <= r`.
fn inside(dx: f32, dy: f32, r: f32, shape: ShapeKind) -> bool {
    match shape {
        ShapeKind::Circle => dx * dx + dy * dy <= r * r,
        // Half-side sqrt(pi)/2 r: the same area as the circle, so colour, not area, tells them
        // apart.
        ShapeKind::Square => dx.abs().max(dy.abs()) <= 0.886 * r,
        ShapeKind::Cross => {
            let t = 0.34 * r;
            (dx.abs() <= r && dy.abs() <= t) || (dy.abs() <= r && dx.abs() <= t)
        }
        ShapeKind::Triangle => {
            // Circumradius 1.15 r: it spans 1.725 r vertically, so its circumcentre sits R/4
            // below the centre to centre that span; horizontally it spans ±0.996 r.
            let big_r = 1.15 * r;
            let oy = big_r / 4.0;
            let half_base = big_r * 0.866_025_4;
            let top = (0.0, oy - big_r);
            let left = (-half_base, oy + big_r / 2.0);
            let right = (half_base, oy + big_r / 2.0);
            // The sign of each edge function; inside when all agree.
            let edge =
                |a: (f32, f32), b: (f32, f32)| (b.0 - a.0) * (dy - a.1) - (b.1 - a.1) * (dx - a.0);
            let (e0, e1, e2) = (edge(top, right), edge(right, left), edge(left, top));
            (e0 >= 0.0 && e1 >= 0.0 && e2 >= 0.0) || (e0 <= 0.0 && e1 <= 0.0 && e2 <= 0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(split: ShapesSplit) -> ShapesDataset {
        ShapesDataset::new(ShapesConfig::default(), split).unwrap()
    }

    /// The pixels closer to the shape's colour than to the background grey: roughly those the
    /// shape covers at least half of.
    fn shape_mask(sample: &ShapeSample) -> Vec<bool> {
        sample
            .image
            .chunks_exact(3)
            .map(|p| {
                let fg = sample.colour.rgb();
                // Distance to the shape colour vs to the background grey.
                let d_fg: i32 = (0..3)
                    .map(|c| (i32::from(p[c]) - i32::from(fg[c])).abs())
                    .sum();
                let d_bg: i32 = (0..3).map(|c| (i32::from(p[c]) - 40).abs()).sum();
                d_fg < d_bg
            })
            .collect()
    }

    #[test]
    fn held_out_list_is_latin_square_like() {
        assert_eq!(HELD_OUT.len(), 6);
        for c in Colour::ALL {
            let n = HELD_OUT.iter().filter(|&&(hc, _)| hc == c).count();
            assert_eq!(n, 1, "{c:?}");
        }
        for s in ShapeKind::ALL {
            let held = HELD_OUT.iter().filter(|&&(_, hs)| hs == s).count();
            assert!((1..=2).contains(&held), "{s:?}");
        }
        assert_eq!(ShapesSplit::Train.combinations().len(), 18);
        assert_eq!(ShapesSplit::HeldOut.combinations().len(), 6);
        assert_eq!(ShapesSplit::Test.combinations().len(), 24);
        let all = all_combinations();
        for (k, &(c, s)) in all.iter().enumerate() {
            assert_eq!(combination_index(c, s), k);
        }
    }

    #[test]
    fn captions_and_labels() {
        assert_eq!(
            combination_label(Colour::Red, ShapeKind::Circle),
            "a red circle"
        );
        assert_eq!(
            combination_label(Colour::Orange, ShapeKind::Square),
            "an orange square"
        );
        assert_eq!(
            caption(
                Colour::Red,
                ShapeKind::Circle,
                Some(Size::Small),
                Some(Position::Left)
            ),
            "a small red circle on the left"
        );
        assert_eq!(
            caption(
                Colour::Orange,
                ShapeKind::Cross,
                None,
                Some(Position::Middle)
            ),
            "an orange cross in the middle"
        );
        assert_eq!(
            caption(Colour::Orange, ShapeKind::Cross, Some(Size::Large), None),
            "a large orange cross"
        );
        assert_eq!(
            caption_of(
                None,
                ShapeKind::Square,
                Some(Size::Small),
                Some(Position::Left)
            ),
            "a small square on the left"
        );
        assert_eq!(
            caption_of(None, ShapeKind::Circle, None, Some(Position::Top)),
            "a circle at the top"
        );
        assert_eq!(caption_of(None, ShapeKind::Cross, None, None), "a cross");
    }

    #[test]
    fn hues_and_unnamed_colours() {
        let hue = |rgb: [f32; 3]| hsv(rgb).0;
        assert_eq!(hue([255.0, 0.0, 0.0]), 0.0);
        assert_eq!(hue([0.0, 255.0, 0.0]), 120.0);
        assert_eq!(hue([0.0, 0.0, 255.0]), 240.0);
        assert_eq!(hue([255.0, 0.0, 255.0]), 300.0);
        assert_eq!(hsv([200.0, 200.0, 200.0]).1, 0.0);
        // Every named colour, jittered as samples are, is not unnamed; greys, cyan, lime and
        // magenta are; dark colours are too dark either way.
        let mut rng = Rng::new(5);
        for c in Colour::ALL {
            for _ in 0..200 {
                let rgb = c
                    .rgb()
                    .map(|v| (f32::from(v) + rng.range_f32(-15.0, 15.0)).clamp(0.0, 255.0));
                assert!(!is_unnamed_colour(rgb), "{c:?} {rgb:?}");
            }
        }
        for rgb in [
            [200.0, 200.0, 200.0],
            [60.0, 220.0, 220.0],
            [150.0, 230.0, 40.0],
        ] {
            assert!(is_unnamed_colour(rgb), "{rgb:?}");
        }
        assert!(is_unnamed_colour([230.0, 60.0, 180.0]));
        assert!(!is_unnamed_colour([90.0, 90.0, 90.0]));
        // Shades of red, light or dark, are red.
        assert!(!is_unnamed_colour([255.0, 150.0, 150.0]));
        assert!(!is_unnamed_colour([120.0, 20.0, 20.0]));
    }

    #[test]
    fn unnamed_colour_samples_name_no_colour_and_show_none() {
        let cfg = |unnamed_colour_fraction| ShapesConfig {
            unnamed_colour_fraction,
            ..ShapesConfig::default()
        };
        let ds = ShapesDataset::new(cfg(0.3), ShapesSplit::Train).unwrap();
        let mut unnamed = 0;
        for i in 0..1000 {
            let s = ds.sample(i);
            let names_colour = Colour::ALL.iter().any(|c| s.caption.contains(c.name()));
            assert!(s.caption.contains(s.shape.name()), "{}", s.caption);
            assert_eq!(names_colour, !s.unnamed_colour, "sample {i}: {}", s.caption);
            // The pixel farthest from the background grey shows the fill (a fully covered
            // pixel, up to rounding): far from every named colour for an unnamed sample,
            // near its own for the others.
            let fill = s
                .image
                .chunks_exact(3)
                .max_by_key(|p| p.iter().map(|&v| (i32::from(v) - 40).abs()).sum::<i32>())
                .unwrap();
            let dist = |c: Colour| {
                let n = c.rgb();
                (0..3)
                    .map(|k| (f32::from(fill[k]) - f32::from(n[k])).powi(2))
                    .sum::<f32>()
                    .sqrt()
            };
            if s.unnamed_colour {
                unnamed += 1;
                let rgb = [0, 1, 2].map(|k| f32::from(fill[k]));
                let (hue, saturation, value) = hsv(rgb);
                assert!(value * 255.0 >= 109.0, "sample {i}: {fill:?}");
                if saturation >= UNNAMED_MAX_GREY_SATURATION + 0.02 {
                    // Rounding each channel to a byte moves the hue by up to about 120 / spread
                    // degrees (spread: the largest channel less the smallest, in bytes).
                    let spread = rgb.iter().fold(f32::MIN, |a, &b| a.max(b))
                        - rgb.iter().fold(f32::MAX, |a, &b| a.min(b));
                    let slack = 1.0 + 120.0 / spread;
                    for c in Colour::ALL {
                        let (named, _, _) = hsv(c.rgb().map(f32::from));
                        let gap = (hue - named).abs().min(360.0 - (hue - named).abs());
                        assert!(
                            gap >= UNNAMED_MIN_HUE_GAP - slack,
                            "sample {i}: {fill:?} {c:?}"
                        );
                    }
                }
            } else {
                assert!(
                    dist(s.colour) <= 30.0,
                    "sample {i}: {fill:?} for {}",
                    s.caption
                );
            }
        }
        assert!((240..360).contains(&unnamed), "{unnamed}");
        let plain = ShapesDataset::new(cfg(0.0), ShapesSplit::Train).unwrap();
        assert!((0..500).all(|i| !plain.sample(i).unnamed_colour));
        for bad in [-0.1, 1.5, f64::NAN] {
            let e = ShapesDataset::new(cfg(bad), ShapesSplit::Train)
                .unwrap_err()
                .to_string();
            assert!(e.contains("unnamed_colour_fraction"), "{e}");
        }
        // Evaluation splits label every image with the pair it shows.
        for split in [ShapesSplit::Test, ShapesSplit::HeldOut] {
            let e = ShapesDataset::new(cfg(0.3), split).unwrap_err().to_string();
            assert!(e.contains("only the training split"), "{e}");
        }
    }

    #[test]
    fn samples_are_deterministic() {
        let ds = dataset(ShapesSplit::Train);
        for i in [0, 1, 17, 123_456, usize::MAX] {
            assert_eq!(ds.sample(i), ds.sample(i));
        }
        assert_ne!(ds.sample(0), ds.sample(1));
        let other_seed = ShapesDataset::new(
            ShapesConfig {
                seed: 1,
                ..ShapesConfig::default()
            },
            ShapesSplit::Train,
        )
        .unwrap();
        assert_ne!(ds.sample(0).image, other_seed.sample(0).image);
        let test = dataset(ShapesSplit::Test);
        assert_ne!(ds.sample(0).image, test.sample(0).image);
        // A batch is its samples.
        let b = ds.batch(&[3, 9]);
        assert_eq!(b.captions[1], ds.sample(9).caption);
        assert_eq!(b.combinations[0] as usize, ds.sample(3).combination());
    }

    #[test]
    fn splits_keep_to_their_combinations() {
        let train = dataset(ShapesSplit::Train);
        for i in 0..5000 {
            let s = train.sample(i);
            assert!(
                !is_held_out(s.colour, s.shape),
                "train sample {i}: {}",
                s.caption
            );
        }
        let held = dataset(ShapesSplit::HeldOut);
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let s = held.sample(i);
            assert!(
                is_held_out(s.colour, s.shape),
                "held-out sample {i}: {}",
                s.caption
            );
            seen.insert((s.colour, s.shape));
        }
        assert_eq!(seen.len(), HELD_OUT.len());
        let test = dataset(ShapesSplit::Test);
        let seen: std::collections::HashSet<_> =
            (0..2000).map(|i| test.sample(i).combination()).collect();
        assert_eq!(seen.len(), NUM_COMBINATIONS);
    }

    #[test]
    fn captions_vary_in_length() {
        let ds = dataset(ShapesSplit::Train);
        let mut short = 0;
        let mut full = 0;
        for i in 0..1000 {
            let s = ds.sample(i);
            let expected_full = caption(s.colour, s.shape, Some(s.size), Some(s.position));
            if s.caption == combination_label(s.colour, s.shape) {
                short += 1;
            } else if s.caption == expected_full {
                full += 1;
            }
            assert!(s.caption.contains(s.colour.name()) && s.caption.contains(s.shape.name()));
        }
        // 0.3 * 0.3 and 0.7 * 0.7 of the samples.
        assert!((50..140).contains(&short), "{short}");
        assert!((420..560).contains(&full), "{full}");
    }

    #[test]
    fn size_and_position_are_visible() {
        let ds = dataset(ShapesSplit::Test);
        let side = ds.image_size() as f32;
        let (mut small_area, mut n_small, mut large_area, mut n_large) = (0usize, 0, 0usize, 0);
        for i in 0..600 {
            let s = ds.sample(i);
            let mask = shape_mask(&s);
            let area = mask.iter().filter(|&&m| m).count();
            assert!(area > 20, "sample {i} ({}): {area} pixels", s.caption);
            // The centre of the covered pixels' bounding box: where the shape was placed (a
            // triangle's centroid sits lower than its box's centre).
            let n = ds.image_size();
            let covered = || mask.iter().enumerate().filter(|(_, m)| **m).map(|(k, _)| k);
            let span = |v: Vec<usize>| {
                let (lo, hi) = (v.iter().min().unwrap(), v.iter().max().unwrap());
                (*lo + *hi + 1) as f32 / 2.0 / side
            };
            let x = span(covered().map(|k| k % n).collect());
            let y = span(covered().map(|k| k / n).collect());
            let ctx = format!("sample {i} ({}): centre ({x:.2}, {y:.2})", s.caption);
            match s.position {
                Position::Left => assert!(x < 0.42 && (y - 0.5).abs() < 0.15, "{ctx}"),
                Position::Right => assert!(x > 0.58 && (y - 0.5).abs() < 0.15, "{ctx}"),
                Position::Top => assert!(y < 0.42 && (x - 0.5).abs() < 0.15, "{ctx}"),
                Position::Bottom => assert!(y > 0.58 && (x - 0.5).abs() < 0.15, "{ctx}"),
                Position::Middle => {
                    assert!((x - 0.5).abs() < 0.1 && (y - 0.5).abs() < 0.12, "{ctx}")
                }
            }
            match s.size {
                Size::Small => (small_area += area, n_small += 1),
                Size::Large => (large_area += area, n_large += 1),
            };
        }
        let (small, large) = (
            small_area as f32 / n_small as f32,
            large_area as f32 / n_large as f32,
        );
        assert!(
            large > 2.0 * small,
            "mean areas: small {small}, large {large}"
        );
    }

    #[test]
    fn batch_layout_and_normalisation() {
        let cfg = ShapesConfig {
            image_size: 16,
            seed: 3,
            len: 10,
            unnamed_colour_fraction: 0.0,
        };
        let ds = ShapesDataset::new(cfg, ShapesSplit::Train).unwrap();
        assert_eq!(ds.len(), 10);
        let b = ds.batch(&[0, 1, 2]);
        assert_eq!(b.shape, [3, 3, 16, 16]);
        assert_eq!(b.pixels.len(), 3 * 3 * 256);
        assert_eq!(b.caption_refs().len(), 3);
        let s = ds.sample(1);
        // Pixel (y=2, x=5), green channel, of the second image.
        let k = 2 * 16 + 5;
        let expected = (f32::from(s.image[k * 3 + 1]) / 255.0 - CLIP_MEAN[1]) / CLIP_STD[1];
        assert!((b.pixels[3 * 256 + 256 + k] - expected).abs() < 1e-6);
        let device = glimpse_cpu::device();
        assert_eq!(b.pixels_tensor(&device).unwrap().dims(), &[3, 3, 16, 16]);
        assert_eq!(b.combinations_tensor(&device).unwrap().dims(), &[3]);
    }

    #[test]
    fn bad_config_is_rejected() {
        for image_size in [0, 4, 5000] {
            let cfg = ShapesConfig {
                image_size,
                ..ShapesConfig::default()
            };
            let e = ShapesDataset::new(cfg, ShapesSplit::Train)
                .unwrap_err()
                .to_string();
            assert!(e.contains("image_size"), "{e}");
        }
        let ds = dataset(ShapesSplit::Train);
        let dir = tempfile::tempdir().unwrap();
        assert!(ds.save_grid(&[], 4, dir.path().join("x.png")).is_err());
        let path = dir.path().join("grid.png");
        ds.save_grid(&[0, 1, 2], 2, &path).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 100);
    }
}

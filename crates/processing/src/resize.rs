//! Image resizing that gives the same bytes as Pillow's `Image.resize` on 8-bit RGB images.
//!
//! The convolution filters follow the algorithm of Pillow's `Resample.c`:
//!
//! * two separable passes, horizontal then vertical (the horizontal one over only the rows
//!   the vertical one reads), except that, as Pillow 13 does, the vertical pass goes first when
//!   the height shrinks by more than twice as many pixels as the width; a pass is skipped when
//!   its dimension keeps its size;
//! * for each output sample the filter is centred on `(i + 0.5) * scale` in input coordinates,
//!   where `scale = in / out`; when downscaling, the filter's support is stretched by `scale`
//!   (antialiasing), and the filter argument is divided by it;
//! * the window is `[trunc(center - support + 0.5), trunc(center + support + 0.5))`, clamped to
//!   the image, and its weights are normalised to sum to one (in `f64`);
//! * the weights are then turned into fixed point with 22 fractional bits
//!   (`PRECISION_BITS = 32 - 8 - 2`), rounding half away from zero;
//! * each pass accumulates `pixel * weight` in `i32` starting from `1 << 21` (rounding), shifts
//!   right by 22 and clips to `0..=255`, so the intermediate image is 8-bit too.
//!
//! [`Filter::Nearest`] is not a convolution in Pillow: it is an affine transform that samples
//! the source pixel `trunc(x0 + i * step)` with `x0 = step / 2`, `step = in / out`, the
//! position being accumulated by repeated addition in `f64` as Pillow does.

use image::RgbImage;

/// Fixed-point precision of the filter weights, as in Pillow (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// A resampling filter, with the codes of `PIL.Image.Resampling` (the `resample` field of
/// `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filter {
    /// Nearest neighbour (PIL code 0).
    Nearest,
    /// Lanczos, a windowed sinc with support 3 (PIL code 1).
    Lanczos,
    /// Bilinear: the triangle filter, support 1 (PIL code 2).
    Bilinear,
    /// Bicubic with `a = -0.5`, support 2 (PIL code 3).
    Bicubic,
    /// Box: each output pixel averages the input pixels under it, support 0.5 (PIL code 4).
    Box,
    /// Hamming-windowed sinc, support 1 (PIL code 5).
    Hamming,
}

impl Filter {
    /// Every filter, in the order of their PIL codes.
    pub const ALL: [Filter; 6] = [
        Filter::Nearest,
        Filter::Lanczos,
        Filter::Bilinear,
        Filter::Bicubic,
        Filter::Box,
        Filter::Hamming,
    ];

    /// The filter with this `PIL.Image.Resampling` code, if there is one.
    pub fn from_pil_code(code: i64) -> Option<Filter> {
        Some(match code {
            0 => Filter::Nearest,
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            _ => return None,
        })
    }

    /// The `PIL.Image.Resampling` code of this filter.
    pub fn pil_code(self) -> u8 {
        match self {
            Filter::Nearest => 0,
            Filter::Lanczos => 1,
            Filter::Bilinear => 2,
            Filter::Bicubic => 3,
            Filter::Box => 4,
            Filter::Hamming => 5,
        }
    }

    /// The lower-case name (`"bicubic"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Filter::Nearest => "nearest",
            Filter::Lanczos => "lanczos",
            Filter::Bilinear => "bilinear",
            Filter::Bicubic => "bicubic",
            Filter::Box => "box",
            Filter::Hamming => "hamming",
        }
    }

    /// Half-width of the filter at scale 1 (nearest has none: it is not a convolution).
    fn support(self) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    /// The filter's kernel at `x` (in units of input pixels at scale 1).
    fn kernel(self, x: f64) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let px = x * std::f64::consts::PI;
                    // The window constants are single-precision literals in Pillow.
                    px.sin() / px * (f64::from(0.54f32) + f64::from(0.46f32) * px.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = x * std::f64::consts::PI;
        px.sin() / px
    }
}

/// The fixed-point weights of one pass: for output sample `i`, input samples
/// `start[i] .. start[i] + len[i]` with weights `weights[i * ksize ..][.. len[i]]`.
struct Coefficients {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
}

fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    // Pillow takes the source box as f32 and does the rest in f64.
    let in0 = 0.0f64;
    let in1 = f64::from(in_size as f32);
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for i in 0..out_size {
        let center = in0 + (i as f64 + 0.5) * scale;
        // `as i64` truncates towards zero, like C's (int) cast.
        let lo = ((center - support + 0.5) as i64).max(0);
        let hi = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (hi - lo).max(0) as usize;
        let mut total = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            let v = filter.kernel(((x as i64 + lo) as f64 - center + 0.5) * ss);
            *wx = v;
            total += v;
        }
        let row = &mut weights[i * ksize..(i + 1) * ksize];
        for (dst, &v) in row.iter_mut().zip(&w[..n]) {
            let v = if total != 0.0 { v / total } else { v };
            let fixed = v * f64::from(1u32 << PRECISION_BITS);
            *dst = if v < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        start.push(lo as usize);
        len.push(n);
    }
    Coefficients {
        ksize,
        start,
        len,
        weights,
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    if acc >= (1 << PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

const ROUND: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over rows `rows` of `src` (width `in_w`), writing `rows.len()` rows of
/// width `out_w`.
fn horizontal(
    src: &[u8],
    in_w: usize,
    rows: std::ops::Range<usize>,
    c: &Coefficients,
    out_w: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; rows.len() * out_w * 3];
    for (oy, y) in rows.enumerate() {
        let line = &src[y * in_w * 3..(y + 1) * in_w * 3];
        let dst = &mut out[oy * out_w * 3..(oy + 1) * out_w * 3];
        for (ox, px) in dst.chunks_exact_mut(3).enumerate() {
            let k = &c.weights[ox * c.ksize..ox * c.ksize + c.len[ox]];
            let pixels = &line[c.start[ox] * 3..(c.start[ox] + c.len[ox]) * 3];
            let (mut r, mut g, mut b) = (ROUND, ROUND, ROUND);
            for (&w, p) in k.iter().zip(pixels.chunks_exact(3)) {
                r += i32::from(p[0]) * w;
                g += i32::from(p[1]) * w;
                b += i32::from(p[2]) * w;
            }
            px[0] = clip8(r);
            px[1] = clip8(g);
            px[2] = clip8(b);
        }
    }
    out
}

/// Vertical pass: `src` has width `w`; output row `i` reads rows
/// `c.start[i] - first .. + c.len[i]` of `src`.
fn vertical(src: &[u8], w: usize, first: usize, c: &Coefficients, out_h: usize) -> Vec<u8> {
    let row_len = w * 3;
    let mut out = vec![0u8; out_h * row_len];
    let mut acc = vec![0i32; row_len];
    for (oy, dst) in out.chunks_exact_mut(row_len).enumerate().take(out_h) {
        acc.fill(ROUND);
        let k = &c.weights[oy * c.ksize..oy * c.ksize + c.len[oy]];
        let y0 = c.start[oy] - first;
        for (dy, &wt) in k.iter().enumerate() {
            let line = &src[(y0 + dy) * row_len..(y0 + dy + 1) * row_len];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a += i32::from(p) * wt;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    out
}

/// Whether Pillow (since 13.0) runs the vertical pass first: when the height shrinks, by more
/// than twice as many pixels as the width does. The pass order changes the result, since the
/// intermediate image is rounded to 8 bits.
fn vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    out_h < in_h && (in_h - out_h) as i64 > 2 * (in_w as i64 - out_w as i64)
}

/// Pillow's nearest-neighbour source indices: `trunc(step / 2 + i * step)` with the position
/// accumulated by repeated `f64` additions, `None` when outside the image.
fn nearest_indices(in_size: usize, out_size: usize) -> Vec<Option<usize>> {
    let step = f64::from(in_size as f32) / out_size as f64;
    let mut pos = step * 0.5;
    let mut idx = Vec::with_capacity(out_size);
    for _ in 0..out_size {
        let i = if pos < 0.0 { -1 } else { pos as i64 };
        idx.push((0..in_size as i64).contains(&i).then_some(i as usize));
        pos += step;
    }
    idx
}

fn resize_nearest(src: &[u8], in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    let xs = nearest_indices(in_w, out_w);
    let ys = nearest_indices(in_h, out_h);
    let mut out = vec![0u8; out_w * out_h * 3];
    for (y, sy) in ys.iter().enumerate() {
        let Some(sy) = *sy else { continue };
        let line = &src[sy * in_w * 3..(sy + 1) * in_w * 3];
        let dst = &mut out[y * out_w * 3..(y + 1) * out_w * 3];
        for (px, sx) in dst.chunks_exact_mut(3).zip(&xs) {
            if let Some(sx) = *sx {
                px.copy_from_slice(&line[sx * 3..sx * 3 + 3]);
            }
        }
    }
    out
}

/// Resizes an 8-bit RGB image to `width` x `height` with the same result, byte for byte, as
/// Pillow's `Image.resize((width, height), resample=filter)` (no `box`, no `reducing_gap`).
///
/// Never panics: a target with a zero dimension gives an empty image, and an empty source
/// gives a black image of the requested size. Resizing to the same size returns a copy, as
/// Pillow does.
///
/// ```
/// use glimpse_processing::{resize, Filter};
/// let img = image::RgbImage::from_pixel(40, 30, image::Rgb([10, 20, 30]));
/// let small = resize(&img, 8, 6, Filter::Bicubic);
/// assert_eq!(small.dimensions(), (8, 6));
/// assert_eq!(small.get_pixel(3, 3).0, [10, 20, 30]);
/// ```
pub fn resize(image: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    if (out_w, out_h) == (in_w, in_h) {
        return image.clone();
    }
    let src = image.as_raw();
    let data = if filter == Filter::Nearest {
        resize_nearest(src, in_w, in_h, out_w, out_h)
    } else {
        let need_h = out_w != in_w;
        let need_v = out_h != in_h;
        let cx = need_h.then(|| coefficients(in_w, out_w, filter));
        let cy = need_v.then(|| coefficients(in_h, out_h, filter));
        match (cx, cy) {
            (Some(cx), None) => horizontal(src, in_w, 0..in_h, &cx, out_w),
            (None, Some(cy)) => vertical(src, in_w, 0, &cy, out_h),
            (Some(cx), Some(cy)) if vertical_first(in_w, in_h, out_w, out_h) => {
                let tmp = vertical(src, in_w, 0, &cy, out_h);
                horizontal(&tmp, in_w, 0..out_h, &cx, out_w)
            }
            (Some(cx), Some(cy)) => {
                // Only the rows the vertical pass reads.
                let first = cy.start[0];
                let last = (0..out_h).map(|i| cy.start[i] + cy.len[i]).max();
                let tmp = horizontal(src, in_w, first..last.unwrap_or(in_h), &cx, out_w);
                vertical(&tmp, out_w, first, &cy, out_h)
            }
            (None, None) => src.clone(),
        }
    };
    RgbImage::from_raw(width, height, data).expect("buffer has width * height * 3 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pil_codes_round_trip() {
        for f in Filter::ALL {
            assert_eq!(Filter::from_pil_code(i64::from(f.pil_code())), Some(f));
        }
        assert_eq!(Filter::from_pil_code(6), None);
        assert_eq!(Filter::from_pil_code(-1), None);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for f in Filter::ALL.into_iter().filter(|f| *f != Filter::Nearest) {
            for (i, o) in [(10, 3), (3, 10), (224, 224 + 1), (451, 224)] {
                let c = coefficients(i, o, f);
                for k in 0..o {
                    let s: i64 = c.weights[k * c.ksize..k * c.ksize + c.len[k]]
                        .iter()
                        .map(|&w| i64::from(w))
                        .sum();
                    let one = 1i64 << PRECISION_BITS;
                    assert!((s - one).abs() <= c.ksize as i64, "{f:?} {i}->{o}: {s}");
                }
            }
        }
    }

    #[test]
    fn kernel_values() {
        assert_eq!(Filter::Bicubic.kernel(0.0), 1.0);
        assert_eq!(Filter::Bicubic.kernel(1.0), 0.0);
        assert_eq!(Filter::Bicubic.kernel(2.0), 0.0);
        assert_eq!(Filter::Bicubic.kernel(1.5), -0.0625);
        assert_eq!(Filter::Bilinear.kernel(-0.25), 0.75);
        assert_eq!(Filter::Box.kernel(0.5), 1.0);
        assert_eq!(Filter::Box.kernel(-0.5), 0.0);
        assert_eq!(Filter::Lanczos.kernel(0.0), 1.0);
        assert_eq!(Filter::Lanczos.kernel(3.0), 0.0);
        assert_eq!(Filter::Hamming.kernel(1.0), 0.0);
    }

    #[test]
    fn nearest_takes_centres() {
        let idx: Vec<_> = nearest_indices(4, 2).into_iter().flatten().collect();
        assert_eq!(idx, vec![1, 3]);
        let idx: Vec<_> = nearest_indices(2, 4).into_iter().flatten().collect();
        assert_eq!(idx, vec![0, 0, 1, 1]);
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let img = RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]));
        assert_eq!(resize(&img, 0, 5, Filter::Bicubic).dimensions(), (0, 5));
        let empty = RgbImage::new(0, 0);
        let out = resize(&empty, 4, 4, Filter::Lanczos);
        assert_eq!(out.dimensions(), (4, 4));
        assert!(out.as_raw().iter().all(|&v| v == 0));
    }
}

//! Loss and accuracy curves drawn to PNG, with no font or plotting dependency.
//!
//! A [`Chart`] holds one or more [`Series`] of `(x, y)` points and renders them as
//! antialiased lines on a white background, with "nice" ticks (1, 2 or 5 times a power of
//! ten), grid lines, a title, axis labels and a legend. Text is drawn with a small built-in
//! 5x7 bitmap font. Points with a NaN or infinite coordinate (or, on a logarithmic y axis,
//! a y that is not positive) are skipped and break the line; a point with no drawable
//! neighbour is drawn as a dot.
//!
//! ```no_run
//! use glimpse_train::plot::{Chart, Series};
//!
//! let chart = Chart::new("training", "step", "loss")
//!     .with_series(Series::new("train", vec![(0.0, 2.3), (100.0, 0.9), (200.0, 0.5)]))
//!     .with_series(Series::new("eval", vec![(100.0, 1.0), (200.0, 0.7)]));
//! chart.save_png("loss.png")?;
//! # Ok::<(), glimpse_tensor::Error>(())
//! ```

use std::io::Write;
use std::path::Path;

use glimpse_tensor::{Error, Result};
use image::{ImageEncoder, Rgb, RgbImage};

/// The colours given to series, in order; the ninth series takes the first colour again.
pub const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],  // blue
    [255, 127, 14],  // orange
    [44, 160, 44],   // green
    [214, 39, 40],   // red
    [148, 103, 189], // purple
    [140, 86, 75],   // brown
    [227, 119, 194], // pink
    [23, 190, 207],  // cyan
];

/// The colour of the series at `index` in a chart (see [`PALETTE`]).
pub fn series_color(index: usize) -> Rgb<u8> {
    Rgb(PALETTE[index % PALETTE.len()])
}

/// The largest width or height [`Chart::render`] accepts, in pixels.
pub const MAX_SIDE: u32 = 8_192;

const OP: &str = "plot";
const BACKGROUND: [u8; 3] = [255, 255, 255];
const GRID: [u8; 3] = [228, 228, 228];
const FRAME: [u8; 3] = [70, 70, 70];
const TEXT: [u8; 3] = [25, 25, 25];
const LEGEND_BORDER: [u8; 3] = [170, 170, 170];
/// Half the width of a series' line, in pixels.
const LINE_HALF_WIDTH: f64 = 1.0;
/// Radius of the dot drawn for an isolated point, in pixels.
const DOT_RADIUS: f64 = 2.5;

/// One named curve: `(x, y)` points joined in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Name shown in the legend; a series with an empty name is left out of the legend.
    pub name: String,
    /// The points, joined in the order given. Points with a NaN or infinite coordinate are
    /// skipped and break the line.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series named `name` with the given points.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
        }
    }

    /// A series whose x coordinates are the indices `0, 1, 2, ...` of `values`.
    pub fn from_values(name: impl Into<String>, values: &[f64]) -> Self {
        Series::new(
            name,
            values
                .iter()
                .enumerate()
                .map(|(i, &y)| (i as f64, y))
                .collect(),
        )
    }
}

/// A line chart: a title, axis labels, some series, a size and a y scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Title drawn centred above the plot; may be empty.
    pub title: String,
    /// Label under the x axis; may be empty.
    pub x_label: String,
    /// Label left of the y axis, drawn rotated; may be empty.
    pub y_label: String,
    /// The curves, drawn in order (later ones on top) with colours from [`PALETTE`].
    pub series: Vec<Series>,
    /// Width of the image in pixels.
    pub width: u32,
    /// Height of the image in pixels.
    pub height: u32,
    /// Logarithmic y axis (base 10); points with `y <= 0` are then skipped.
    pub log_y: bool,
}

impl Default for Chart {
    /// An empty 800x500 chart with a linear y axis.
    fn default() -> Self {
        Chart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            series: Vec::new(),
            width: 800,
            height: 500,
            log_y: false,
        }
    }
}

impl Chart {
    /// An empty 800x500 chart with the given title and axis labels.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            ..Chart::default()
        }
    }

    /// This chart with `series` appended.
    #[must_use]
    pub fn with_series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// This chart with the given image size in pixels.
    #[must_use]
    pub fn with_size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }

    /// This chart with a logarithmic (or linear) y axis.
    #[must_use]
    pub fn with_log_y(mut self, log_y: bool) -> Self {
        self.log_y = log_y;
        self
    }

    /// Draws the chart.
    ///
    /// Fails when the width or height is zero, larger than [`MAX_SIDE`] or too small to
    /// hold the plot, when no series has a drawable point (finite, and with `y > 0` on a
    /// logarithmic axis), or when the data's range does not fit in an `f64`.
    pub fn render(&self) -> Result<RgbImage> {
        let (w, h) = (self.width, self.height);
        if w == 0 || h == 0 {
            return Err(Error::invalid(
                OP,
                format!("chart size must be positive, got {w}x{h}"),
            ));
        }
        if w > MAX_SIDE || h > MAX_SIDE {
            return Err(Error::invalid(
                OP,
                format!("chart size {w}x{h} is larger than the maximum of {MAX_SIDE} per side"),
            ));
        }

        let (x_range, y_range) = self.data_ranges()?;
        let x_axis = Axis::linear(x_range.0, x_range.1, "x")?;
        let y_axis = if self.log_y {
            Axis::log10(y_range.0, y_range.1)
        } else {
            Axis::linear(y_range.0, y_range.1, "y")?
        };

        let layout = Layout::new(self, &x_axis, &y_axis)?;
        let mut canvas = Canvas::new(w, h);
        let plot = layout.plot;

        // Grid lines.
        for tick in &x_axis.ticks {
            let x = plot.x_pixel(&x_axis, tick.pos);
            canvas.vline(x, plot.top, plot.bottom(), GRID);
        }
        for tick in &y_axis.ticks {
            let y = plot.y_pixel(&y_axis, tick.pos);
            canvas.hline(plot.left, plot.right(), y, GRID);
        }

        // Series, each through its own coverage buffer so that joints are not drawn twice.
        let mut mask = vec![false; plot.len()];
        let mut coverage = vec![0f32; plot.len()];
        for (index, series) in self.series.iter().enumerate() {
            coverage.fill(0.0);
            let runs = self.runs(series, &x_axis, &y_axis, &plot);
            let mut any = false;
            for run in runs {
                any = true;
                if let [p] = run.as_slice() {
                    stroke_disc(&mut coverage, &plot, *p, DOT_RADIUS);
                } else {
                    for pair in run.windows(2) {
                        stroke_segment(&mut coverage, &plot, pair[0], pair[1], LINE_HALF_WIDTH);
                    }
                }
            }
            if any {
                canvas.composite(&plot, &coverage, series_color(index).0, &mut mask);
            }
        }

        // Frame just outside the plot area, and tick marks.
        let (l, r, t, b) = (
            plot.left - 1,
            plot.right() + 1,
            plot.top - 1,
            plot.bottom() + 1,
        );
        canvas.hline(l, r, t, FRAME);
        canvas.hline(l, r, b, FRAME);
        canvas.vline(l, t, b, FRAME);
        canvas.vline(r, t, b, FRAME);
        let s = layout.scale;
        let tick_len = 3 * s as i64;
        for (i, tick) in x_axis.ticks.iter().enumerate() {
            let x = plot.x_pixel(&x_axis, tick.pos);
            canvas.vline(x, b + 1, b + tick_len, FRAME);
            if i % layout.x_label_stride == 0 && tick.labelled {
                let tw = text_width(&tick.label, s);
                canvas.text(
                    x - tw / 2,
                    b + tick_len + 3 * s as i64,
                    &tick.label,
                    s,
                    TEXT,
                );
            }
        }
        for (i, tick) in y_axis.ticks.iter().enumerate() {
            let y = plot.y_pixel(&y_axis, tick.pos);
            canvas.hline(l - tick_len, l - 1, y, FRAME);
            if i % layout.y_label_stride == 0 && tick.labelled {
                let tw = text_width(&tick.label, s);
                let x = l - tick_len - 3 * s as i64 - tw;
                canvas.text(x, y - (7 * s as i64) / 2, &tick.label, s, TEXT);
            }
        }

        self.draw_legend(&mut canvas, &plot, &mask, s);

        // Title and axis labels.
        let pad = layout.pad;
        if !self.title.is_empty() {
            let ts = layout.title_scale;
            let tw = text_width(&self.title, ts);
            let x = ((i64::from(w) - tw) / 2).max(pad);
            canvas.text(x, pad, &self.title, ts, TEXT);
        }
        if !self.x_label.is_empty() {
            let tw = text_width(&self.x_label, s);
            let centre = (plot.left + plot.right()) / 2;
            let x = (centre - tw / 2).max(pad);
            let y = i64::from(h) - pad - 9 * s as i64;
            canvas.text(x, y, &self.x_label, s, TEXT);
        }
        if !self.y_label.is_empty() {
            let tw = text_width(&self.y_label, s);
            let centre = (plot.top + plot.bottom()) / 2;
            let y = (centre + tw / 2).min(i64::from(h) - 1 - pad);
            canvas.text_up(pad, y, &self.y_label, s, TEXT);
        }

        Ok(canvas.img)
    }

    /// Renders the chart and writes it to `path` as a PNG.
    ///
    /// The file is replaced atomically: the image goes to a temporary file in the same
    /// directory, which is synced to disk and then renamed over `path`. On failure the
    /// temporary file is removed and any existing file at `path` is left as it was.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let img = self.render()?;
        // Charts are small: encode in memory, then write the file atomically.
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| Error::invalid(OP, format!("cannot encode PNG: {e}")))?;
        glimpse_tensor::write_atomic(path, |f| f.write_all(&png))
    }

    /// The x range and the y range of the drawable points (y in data units, also on a log
    /// axis).
    fn data_ranges(&self) -> Result<((f64, f64), (f64, f64))> {
        let mut xr = (f64::INFINITY, f64::NEG_INFINITY);
        let mut yr = (f64::INFINITY, f64::NEG_INFINITY);
        let mut any = false;
        for &(x, y) in self.series.iter().flat_map(|s| &s.points) {
            if self.drawable(x, y) {
                any = true;
                xr = (xr.0.min(x), xr.1.max(x));
                yr = (yr.0.min(y), yr.1.max(y));
            }
        }
        if !any {
            let total: usize = self.series.iter().map(|s| s.points.len()).sum();
            let msg = if self.series.is_empty() {
                "the chart has no series to draw".to_string()
            } else if total == 0 {
                "the chart's series have no points to draw".to_string()
            } else if self.log_y {
                format!(
                    "none of the chart's {total} points has finite coordinates and a \
                     positive y, as a logarithmic y axis needs"
                )
            } else {
                format!("none of the chart's {total} points has finite coordinates")
            };
            return Err(Error::invalid(OP, msg));
        }
        Ok((xr, yr))
    }

    fn drawable(&self, x: f64, y: f64) -> bool {
        x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0)
    }

    /// The series' drawable points in plot-local pixel coordinates, split into runs at
    /// points that cannot be drawn.
    fn runs(&self, series: &Series, xa: &Axis, ya: &Axis, plot: &Rect) -> Vec<Vec<(f64, f64)>> {
        let mut runs = Vec::new();
        let mut run = Vec::new();
        for &(x, y) in &series.points {
            if self.drawable(x, y) {
                let yv = if self.log_y { y.log10() } else { y };
                run.push((plot.x_local(xa, x), plot.y_local(ya, yv)));
            } else if !run.is_empty() {
                runs.push(std::mem::take(&mut run));
            }
        }
        if !run.is_empty() {
            runs.push(run);
        }
        runs
    }

    /// Draws the legend in the corner of the plot that hides the least data.
    fn draw_legend(&self, canvas: &mut Canvas, plot: &Rect, mask: &[bool], s: u32) {
        let entries: Vec<(usize, &str)> = self
            .series
            .iter()
            .enumerate()
            .filter(|(_, se)| !se.name.is_empty())
            .map(|(i, se)| (i, se.name.as_str()))
            .collect();
        if entries.is_empty() {
            return;
        }
        let si = s as i64;
        let pad = 5 * si;
        let swatch = 14 * si;
        let gap = 4 * si;
        let row = 7 * si + 5 * si;
        let name_w = entries
            .iter()
            .map(|(_, n)| text_width(n, s))
            .max()
            .unwrap_or(0);
        let lw = (pad + swatch + gap + name_w + pad).min(plot.w);
        let lh = (pad + row * entries.len() as i64 - 5 * si + pad).min(plot.h);
        let inset = 8.min(plot.w - lw).min(plot.h - lh).max(0);
        let corners = [
            (plot.w - lw - inset, inset),
            (inset, inset),
            (plot.w - lw - inset, plot.h - lh - inset),
            (inset, plot.h - lh - inset),
        ];
        let hidden = |&(cx, cy): &(i64, i64)| -> usize {
            (cy..cy + lh)
                .flat_map(|y| (cx..cx + lw).map(move |x| (x, y)))
                .filter(|&(x, y)| mask.get((y * plot.w + x) as usize) == Some(&true))
                .count()
        };
        let mut best = corners[0];
        let mut best_hidden = hidden(&best);
        for c in &corners[1..] {
            let n = hidden(c);
            if n < best_hidden {
                best = *c;
                best_hidden = n;
            }
        }
        let (x0, y0) = (plot.left + best.0, plot.top + best.1);
        canvas.fill_rect(x0, y0, lw, lh, BACKGROUND);
        canvas.hline(x0, x0 + lw - 1, y0, LEGEND_BORDER);
        canvas.hline(x0, x0 + lw - 1, y0 + lh - 1, LEGEND_BORDER);
        canvas.vline(x0, y0, y0 + lh - 1, LEGEND_BORDER);
        canvas.vline(x0 + lw - 1, y0, y0 + lh - 1, LEGEND_BORDER);
        let clip = Rect {
            left: x0 + 1,
            top: y0 + 1,
            w: (lw - 2).max(0),
            h: (lh - 2).max(0),
            inset: 0,
        };
        for (k, (index, name)) in entries.iter().enumerate() {
            let ty = y0 + pad + row * k as i64;
            let color = series_color(*index).0;
            let mid = ty + (7 * si) / 2;
            for dy in 0..2 * si {
                for x in x0 + pad..x0 + pad + swatch {
                    if clip.contains(x, mid - si + dy) {
                        canvas.set(x, mid - si + dy, color);
                    }
                }
            }
            canvas.text_clipped(x0 + pad + swatch + gap, ty, name, s, TEXT, &clip);
        }
    }
}

/// One tick on an axis: its position in axis units (log10 of the value on a log axis).
#[derive(Debug, Clone)]
struct Tick {
    pos: f64,
    label: String,
    labelled: bool,
}

/// An axis range in axis units, with its ticks.
#[derive(Debug, Clone)]
struct Axis {
    min: f64,
    max: f64,
    ticks: Vec<Tick>,
}

impl Axis {
    /// A linear axis covering `[lo, hi]`, extended to "nice" tick values.
    fn linear(mut lo: f64, mut hi: f64, which: &str) -> Result<Axis> {
        let magnitude = lo.abs().max(hi.abs());
        if hi - lo <= magnitude * 1e-9 {
            // A constant (or nearly constant) range: widen it around its centre.
            let c = lo / 2.0 + hi / 2.0;
            let pad = if c == 0.0 { 1.0 } else { c.abs() * 0.1 };
            lo = c - pad;
            hi = c + pad;
        }
        let too_wide = || {
            Error::invalid(
                OP,
                format!("the {which} range [{lo}, {hi}] is too wide to draw"),
            )
        };
        let step = nice_step((hi - lo) / 5.0);
        if !step.is_finite() || step <= 0.0 {
            return Err(too_wide());
        }
        let k0 = (lo / step).floor();
        let k1 = (hi / step).ceil();
        let (min, max) = (k0 * step, k1 * step);
        let n = k1 - k0;
        if !(min.is_finite() && max.is_finite() && (1.0..=100.0).contains(&n)) {
            return Err(too_wide());
        }
        let n = n as i64;
        let labels_magnitude = min.abs().max(max.abs());
        let ticks = (0..=n)
            .map(|i| {
                let mut v = (k0 + i as f64) * step;
                if v.abs() < step * 1e-6 {
                    v = 0.0;
                }
                Tick {
                    pos: v,
                    label: format_linear(v, step, labels_magnitude),
                    labelled: true,
                }
            })
            .collect();
        Ok(Axis { min, max, ticks })
    }

    /// A base-10 logarithmic axis covering the positive values `[lo, hi]`: whole decades
    /// for wide ranges, otherwise from and to 1, 2 or 5 times a power of ten.
    fn log10(lo: f64, hi: f64) -> Axis {
        let (mut a, mut b) = (lo.log10(), hi.log10());
        if b - a < 1e-9 {
            a -= 0.5;
            b += 0.5;
        }
        let k0 = (a + 1e-9).floor() as i32;
        let k1 = ((b - 1e-9).ceil() as i32).max(k0 + 1);
        let decades = k1 - k0;
        let mut ticks = Vec::new();
        if decades <= 2 {
            // Every 1, 2 and 5 between the closest ones around the data.
            let all: Vec<(u8, i32, f64)> = (k0..=k1)
                .flat_map(|k| [1u8, 2, 5].map(|m| (m, k, f64::from(k) + f64::from(m).log10())))
                .collect();
            let first = all.iter().rposition(|t| t.2 <= a + 1e-9).unwrap_or(0);
            let last = all
                .iter()
                .position(|t| t.2 >= b - 1e-9)
                .unwrap_or(all.len() - 1);
            for &(m, k, pos) in &all[first..=last.max(first)] {
                ticks.push(Tick {
                    pos,
                    label: format_log(m, k),
                    labelled: true,
                });
            }
        } else {
            let stride = (decades + 5) / 6;
            for k in k0..=k1 {
                ticks.push(Tick {
                    pos: f64::from(k),
                    label: format_log(1, k),
                    labelled: (k - k0) % stride == 0,
                });
            }
        }
        let min = ticks.first().map_or(f64::from(k0), |t| t.pos);
        let max = ticks.last().map_or(f64::from(k1), |t| t.pos);
        Axis { min, max, ticks }
    }
}

/// The "nice" number (1, 2 or 5 times a power of ten) closest to `rough`.
fn nice_step(rough: f64) -> f64 {
    if !(rough.is_finite() && rough > 0.0) {
        return f64::NAN;
    }
    let exp = rough.log10().floor();
    let base = 10f64.powf(exp);
    let f = rough / base;
    let m = if f < 1.5 {
        1.0
    } else if f < 3.5 {
        2.0
    } else if f < 7.5 {
        5.0
    } else {
        10.0
    };
    // Built from an exact power of ten so that e.g. 0.2 prints as "0.2".
    if exp >= 0.0 {
        m * base
    } else {
        m / 10f64.powf(-exp)
    }
}

/// `floor(log10(v))` for positive `v`, robust to `log10` rounding just below an integer.
fn decade(v: f64) -> i32 {
    (v.log10() + 1e-9).floor() as i32
}

/// Label of a linear tick `v` on an axis with the given step and largest |value|.
fn format_linear(v: f64, step: f64, magnitude: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let step_decade = decade(step);
    if !(1e-3..1e6).contains(&magnitude) {
        let digits = (decade(v.abs()) - step_decade).clamp(0, 15) as usize;
        let s = format!("{v:.digits$e}");
        // Drop trailing zeros of the mantissa: "2.50e-5" -> "2.5e-5".
        match s.split_once('e') {
            Some((mant, exp)) if mant.contains('.') => {
                let mant = mant.trim_end_matches('0').trim_end_matches('.');
                format!("{mant}e{exp}")
            }
            _ => s,
        }
    } else {
        let decimals = (-step_decade).clamp(0, 15) as usize;
        format!("{v:.decimals$}")
    }
}

/// Label of the log tick `m * 10^k`.
fn format_log(m: u8, k: i32) -> String {
    if (-4..=5).contains(&k) {
        let decimals = (-k).max(0) as usize;
        format!("{:.decimals$}", f64::from(m) * 10f64.powi(k))
    } else {
        format!("{m}e{k}")
    }
}

/// Margins and text sizes.
#[derive(Debug, Clone, Copy)]
struct Layout {
    plot: Rect,
    scale: u32,
    title_scale: u32,
    pad: i64,
    x_label_stride: usize,
    y_label_stride: usize,
}

impl Layout {
    fn new(chart: &Chart, xa: &Axis, ya: &Axis) -> Result<Layout> {
        let (w, h) = (i64::from(chart.width), i64::from(chart.height));
        let scale: u32 = if w >= 1000 && h >= 600 { 2 } else { 1 };
        let title_scale: u32 = if scale > 1 {
            3
        } else if w >= 360 && h >= 240 {
            2
        } else {
            1
        };
        let s = i64::from(scale);
        let pad = 6 * s;
        let tick_len = 3 * s;
        let text_h = 7 * s;
        let line_h = 9 * s; // with descenders

        let mut top = pad;
        if !chart.title.is_empty() {
            top += 9 * i64::from(title_scale) + pad;
        } else {
            top += 4 * s;
        }
        let y_tick_w = ya
            .ticks
            .iter()
            .filter(|t| t.labelled)
            .map(|t| text_width(&t.label, scale))
            .max()
            .unwrap_or(0);
        let mut left = pad + y_tick_w + 3 * s + tick_len + 1;
        if !chart.y_label.is_empty() {
            left += line_h + pad;
        }
        let last_x_w = xa.ticks.last().map_or(0, |t| text_width(&t.label, scale));
        let first_x_w = xa.ticks.first().map_or(0, |t| text_width(&t.label, scale));
        left = left.max(first_x_w / 2 + pad);
        let right = (last_x_w / 2 + pad).max(3 * pad);
        let mut bottom = 1 + tick_len + 3 * s + text_h + pad;
        if !chart.x_label.is_empty() {
            bottom += line_h + pad;
        }
        let plot = Rect {
            left,
            top,
            w: w - left - right,
            h: h - top - bottom,
            inset: 5,
        };
        if plot.w < 16 || plot.h < 16 {
            return Err(Error::invalid(
                OP,
                format!(
                    "a {}x{} chart is too small to hold its axes and labels",
                    chart.width, chart.height
                ),
            ));
        }

        // Label every k-th tick so that the labels do not run into each other.
        let x_tick_w = xa
            .ticks
            .iter()
            .map(|t| text_width(&t.label, scale))
            .max()
            .unwrap_or(0);
        let xs: Vec<f64> = xa.ticks.iter().map(|t| plot.x_local(xa, t.pos)).collect();
        let ys: Vec<f64> = ya.ticks.iter().map(|t| plot.y_local(ya, t.pos)).collect();
        let x_label_stride = label_stride(&xs, (x_tick_w + 3 * pad) as f64);
        let y_label_stride = label_stride(&ys, (text_h + 3 * s) as f64);

        Ok(Layout {
            plot,
            scale,
            title_scale,
            pad,
            x_label_stride,
            y_label_stride,
        })
    }
}

/// The smallest `k` such that labels on every k-th of the ticks at pixel positions
/// `positions` are at least `needed` pixels apart.
fn label_stride(positions: &[f64], needed: f64) -> usize {
    let gap = positions
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(f64::INFINITY, f64::min);
    if gap >= needed || positions.len() < 2 {
        return 1;
    }
    if gap.is_nan() || gap <= 0.0 {
        return positions.len();
    }
    ((needed / gap).ceil() as usize).clamp(1, positions.len())
}

/// A rectangle of pixels: columns `left..left + w`, rows `top..top + h`.
#[derive(Debug, Clone, Copy)]
struct Rect {
    left: i64,
    top: i64,
    w: i64,
    h: i64,
    /// Space kept between the edges and the axis ends, so that lines at the ends of the
    /// data range are not cut by the frame.
    inset: i64,
}

impl Rect {
    fn right(&self) -> i64 {
        self.left + self.w - 1
    }

    fn bottom(&self) -> i64 {
        self.top + self.h - 1
    }

    fn len(&self) -> usize {
        (self.w.max(0) * self.h.max(0)) as usize
    }

    fn contains(&self, x: i64, y: i64) -> bool {
        x >= self.left && x < self.left + self.w && y >= self.top && y < self.top + self.h
    }

    /// Plot-local continuous x of `v` (axis units): the axis ends map to the centres of
    /// the columns `inset` in from the edges.
    fn x_local(&self, axis: &Axis, v: f64) -> f64 {
        let t = (v - axis.min) / (axis.max - axis.min);
        let span = (self.w - 1 - 2 * self.inset).max(0) as f64;
        self.inset as f64 + 0.5 + t.clamp(0.0, 1.0) * span
    }

    /// Plot-local continuous y of `v` (axis units), growing downwards.
    fn y_local(&self, axis: &Axis, v: f64) -> f64 {
        let t = (v - axis.min) / (axis.max - axis.min);
        let span = (self.h - 1 - 2 * self.inset).max(0) as f64;
        self.inset as f64 + 0.5 + (1.0 - t.clamp(0.0, 1.0)) * span
    }

    fn x_pixel(&self, axis: &Axis, v: f64) -> i64 {
        self.left + self.x_local(axis, v).floor() as i64
    }

    fn y_pixel(&self, axis: &Axis, v: f64) -> i64 {
        self.top + self.y_local(axis, v).floor() as i64
    }
}

/// Coverage of the pixel whose centre is `d` pixels from a shape's edge-defining centre
/// line or point, for a half-width `r`.
fn coverage_at(d: f64, r: f64) -> f32 {
    (r + 0.5 - d).clamp(0.0, 1.0) as f32
}

/// Adds a filled disc to the plot-local coverage buffer.
fn stroke_disc(cov: &mut [f32], plot: &Rect, (cx, cy): (f64, f64), r: f64) {
    let reach = r + 1.0;
    let x0 = (cx - reach).floor().max(0.0) as i64;
    let x1 = (cx + reach).floor().min((plot.w - 1) as f64) as i64;
    let y0 = (cy - reach).floor().max(0.0) as i64;
    let y1 = (cy + reach).floor().min((plot.h - 1) as f64) as i64;
    for y in y0..=y1 {
        for x in x0..=x1 {
            let d = (x as f64 + 0.5 - cx).hypot(y as f64 + 0.5 - cy);
            let c = coverage_at(d, r);
            let cell = &mut cov[(y * plot.w + x) as usize];
            *cell = cell.max(c);
        }
    }
}

/// Adds an antialiased segment of half-width `r` with round caps to the plot-local
/// coverage buffer, visiting only pixels near the segment.
fn stroke_segment(cov: &mut [f32], plot: &Rect, a: (f64, f64), b: (f64, f64), r: f64) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    if len2 < 1e-12 {
        stroke_disc(cov, plot, a, r);
        return;
    }
    let reach = r + 1.0;
    let x_major = dx.abs() >= dy.abs();
    // Walk the major axis; across it, the band is at most `reach * (1 + slope)` wide.
    let (ma, mb, da, dm, minor_len, major_len) = if x_major {
        (a.0, b.0, a.1, dy / dx, plot.h, plot.w)
    } else {
        (a.1, b.1, a.0, dx / dy, plot.w, plot.h)
    };
    let extent = reach * (1.0 + dm.abs());
    let lo = (ma.min(mb) - reach).floor().max(0.0) as i64;
    let hi = (ma.max(mb) + reach).floor().min((major_len - 1) as f64) as i64;
    let (mlo, mhi) = (ma.min(mb), ma.max(mb));
    for i in lo..=hi {
        let centre = (i as f64 + 0.5).clamp(mlo, mhi);
        let c = da + (centre - ma) * dm;
        let j0 = (c - extent).floor().max(0.0) as i64;
        let j1 = (c + extent).floor().min((minor_len - 1) as f64) as i64;
        for j in j0..=j1 {
            let (x, y) = if x_major { (i, j) } else { (j, i) };
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let t = (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0);
            let d = (px - (a.0 + t * dx)).hypot(py - (a.1 + t * dy));
            let cv = coverage_at(d, r);
            if cv > 0.0 {
                let cell = &mut cov[(y * plot.w + x) as usize];
                *cell = cell.max(cv);
            }
        }
    }
}

/// An RGB image with bounds-checked drawing.
#[derive(Debug)]
struct Canvas {
    img: RgbImage,
}

impl Canvas {
    fn new(w: u32, h: u32) -> Canvas {
        Canvas {
            img: RgbImage::from_pixel(w, h, Rgb(BACKGROUND)),
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if let (Ok(x), Ok(y)) = (u32::try_from(x), u32::try_from(y))
            && x < self.img.width()
            && y < self.img.height()
        {
            self.img.put_pixel(x, y, Rgb(c));
        }
    }

    fn hline(&mut self, x0: i64, x1: i64, y: i64, c: [u8; 3]) {
        for x in x0.min(x1)..=x0.max(x1) {
            self.set(x, y, c);
        }
    }

    fn vline(&mut self, x: i64, y0: i64, y1: i64, c: [u8; 3]) {
        for y in y0.min(y1)..=y0.max(y1) {
            self.set(x, y, c);
        }
    }

    fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    /// Blends `color` into the plot area by the coverage buffer, marking well-covered
    /// pixels in `mask`.
    fn composite(&mut self, plot: &Rect, cov: &[f32], color: [u8; 3], mask: &mut [bool]) {
        for (i, &a) in cov.iter().enumerate() {
            if a <= 0.0 {
                continue;
            }
            let i = i as i64;
            let (x, y) = (plot.left + i % plot.w, plot.top + i / plot.w);
            let (Ok(ux), Ok(uy)) = (u32::try_from(x), u32::try_from(y)) else {
                continue;
            };
            if ux >= self.img.width() || uy >= self.img.height() {
                continue;
            }
            let px = self.img.get_pixel_mut(ux, uy);
            for (ch, &target) in px.0.iter_mut().zip(&color) {
                let v = f32::from(*ch) * (1.0 - a) + f32::from(target) * a;
                *ch = v.round().clamp(0.0, 255.0) as u8;
            }
            if a > 0.25 {
                mask[i as usize] = true;
            }
        }
    }

    /// Draws `text` with its top-left corner at `(x, y)`.
    fn text(&mut self, x: i64, y: i64, text: &str, scale: u32, c: [u8; 3]) {
        self.glyphs(x, y, text, scale, |cv, gx, gy| cv.set(gx, gy, c));
    }

    /// Draws `text` like [`Canvas::text`], only inside `clip`.
    fn text_clipped(&mut self, x: i64, y: i64, text: &str, scale: u32, c: [u8; 3], clip: &Rect) {
        self.glyphs(x, y, text, scale, |cv, gx, gy| {
            if clip.contains(gx, gy) {
                cv.set(gx, gy, c);
            }
        });
    }

    /// Draws `text` rotated a quarter turn anticlockwise (reading upwards), starting at
    /// `(x, y)`, which is the bottom-left corner of the rotated text.
    fn text_up(&mut self, x: i64, y: i64, text: &str, scale: u32, c: [u8; 3]) {
        // Glyph (gx, gy) relative to the unrotated origin maps to (x + gy, y - gx).
        self.glyphs(0, 0, text, scale, |cv, gx, gy| cv.set(x + gy, y - gx, c));
    }

    fn glyphs(
        &mut self,
        x: i64,
        y: i64,
        text: &str,
        scale: u32,
        mut plot: impl FnMut(&mut Canvas, i64, i64),
    ) {
        let s = i64::from(scale);
        for (k, ch) in text.chars().enumerate() {
            let gx0 = x + k as i64 * ADVANCE * s;
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - col)) != 0 {
                        for sy in 0..s {
                            for sx in 0..s {
                                plot(self, gx0 + col * s + sx, y + row as i64 * s + sy);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Glyph cell width and horizontal advance of the built-in font, at scale 1.
const GLYPH_W: i64 = 5;
const ADVANCE: i64 = 6;

/// Width in pixels of `text` drawn at `scale`.
fn text_width(text: &str, scale: u32) -> i64 {
    let n = text.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (n * ADVANCE - 1) * i64::from(scale)
    }
}

/// The 5x7 glyph of `c` (rows top to bottom, bit 4 the leftmost column), with two more
/// rows below the baseline for descenders. Unknown characters are drawn as a box.
#[rustfmt::skip]
fn glyph(c: char) -> [u8; 9] {
    match c {
        ' ' => [0, 0, 0, 0, 0, 0, 0, 0, 0],
        '0' => [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110, 0, 0],
        '1' => [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0, 0],
        '2' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111, 0, 0],
        '3' => [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110, 0, 0],
        '4' => [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010, 0, 0],
        '5' => [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110, 0, 0],
        '6' => [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110, 0, 0],
        '7' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0, 0],
        '8' => [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110, 0, 0],
        '9' => [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100, 0, 0],
        'A' => [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0, 0],
        'B' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110, 0, 0],
        'C' => [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110, 0, 0],
        'D' => [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100, 0, 0],
        'E' => [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111, 0, 0],
        'F' => [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000, 0, 0],
        'G' => [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111, 0, 0],
        'H' => [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0, 0],
        'I' => [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0, 0],
        'J' => [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100, 0, 0],
        'K' => [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001, 0, 0],
        'L' => [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111, 0, 0],
        'M' => [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001, 0, 0],
        'N' => [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0, 0],
        'O' => [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0, 0],
        'P' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000, 0, 0],
        'Q' => [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101, 0, 0],
        'R' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001, 0, 0],
        'S' => [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110, 0, 0],
        'T' => [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0, 0],
        'U' => [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0, 0],
        'V' => [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0, 0],
        'W' => [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010, 0, 0],
        'X' => [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001, 0, 0],
        'Y' => [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0, 0],
        'Z' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111, 0, 0],
        'a' => [0, 0, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0, 0],
        'b' => [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110, 0, 0],
        'c' => [0, 0, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110, 0, 0],
        'd' => [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111, 0, 0],
        'e' => [0, 0, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0, 0],
        'f' => [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000, 0, 0],
        'g' => [0, 0, 0b01111, 0b10001, 0b10001, 0b10011, 0b01101, 0b00001, 0b01110],
        'h' => [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0, 0],
        'i' => [0b00100, 0, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110, 0, 0],
        'j' => [0b00010, 0, 0b00110, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100],
        'k' => [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0, 0],
        'l' => [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0, 0],
        'm' => [0, 0, 0b11010, 0b10101, 0b10101, 0b10101, 0b10101, 0, 0],
        'n' => [0, 0, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0, 0],
        'o' => [0, 0, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110, 0, 0],
        'p' => [0, 0, 0b10110, 0b11001, 0b10001, 0b11001, 0b10110, 0b10000, 0b10000],
        'q' => [0, 0, 0b01101, 0b10011, 0b10001, 0b10011, 0b01101, 0b00001, 0b00001],
        'r' => [0, 0, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000, 0, 0],
        's' => [0, 0, 0b01111, 0b10000, 0b01110, 0b00001, 0b11110, 0, 0],
        't' => [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110, 0, 0],
        'u' => [0, 0, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0, 0],
        'v' => [0, 0, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0, 0],
        'w' => [0, 0, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010, 0, 0],
        'x' => [0, 0, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0, 0],
        'y' => [0, 0, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0b00001, 0b01110],
        'z' => [0, 0, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111, 0, 0],
        '.' => [0, 0, 0, 0, 0, 0b01100, 0b01100, 0, 0],
        ',' => [0, 0, 0, 0, 0, 0b01100, 0b00100, 0b01000, 0],
        '-' => [0, 0, 0, 0b11111, 0, 0, 0, 0, 0],
        '+' => [0, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0, 0, 0],
        '=' => [0, 0, 0b11111, 0, 0b11111, 0, 0, 0, 0],
        '%' => [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011, 0, 0],
        '/' => [0, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0, 0, 0],
        '(' => [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010, 0, 0],
        ')' => [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000, 0, 0],
        '[' => [0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110, 0, 0],
        ']' => [0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110, 0, 0],
        ':' => [0, 0b01100, 0b01100, 0, 0b01100, 0b01100, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0b11111, 0, 0],
        '\'' => [0b00100, 0b00100, 0b01000, 0, 0, 0, 0, 0, 0],
        '#' => [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010, 0, 0],
        '*' => [0, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0, 0, 0],
        '!' => [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0, 0b00100, 0, 0],
        '"' => [0b01010, 0b01010, 0b01010, 0, 0, 0, 0, 0, 0],
        '$' => [0b00100, 0b01111, 0b10100, 0b01110, 0b00101, 0b11110, 0b00100, 0, 0],
        '&' => [0b01100, 0b10010, 0b10100, 0b01000, 0b10101, 0b10010, 0b01101, 0, 0],
        ';' => [0, 0b01100, 0b01100, 0, 0b01100, 0b00100, 0b01000, 0, 0],
        '<' => [0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010, 0, 0],
        '>' => [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000, 0, 0],
        '?' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0, 0b00100, 0, 0],
        '@' => [0b01110, 0b10001, 0b00001, 0b01101, 0b10101, 0b10101, 0b01110, 0, 0],
        '\\' => [0, 0b10000, 0b01000, 0b00100, 0b00010, 0b00001, 0, 0, 0],
        '^' => [0b00100, 0b01010, 0b10001, 0, 0, 0, 0, 0, 0],
        '`' => [0b01000, 0b00100, 0b00010, 0, 0, 0, 0, 0, 0],
        '{' => [0b00010, 0b00100, 0b00100, 0b01000, 0b00100, 0b00100, 0b00010, 0, 0],
        '|' => [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0, 0],
        '}' => [0b01000, 0b00100, 0b00100, 0b00010, 0b00100, 0b00100, 0b01000, 0, 0],
        '~' => [0, 0, 0b01000, 0b10101, 0b00010, 0, 0, 0, 0],
        _ => [0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111, 0, 0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn sample_chart() -> Chart {
        let train: Vec<(f64, f64)> = (0..=200)
            .map(|i| {
                let x = f64::from(i) * 5.0;
                (x, 2.3 * (-x / 300.0).exp() + 0.2 + 0.05 * (x / 7.0).sin())
            })
            .collect();
        let eval: Vec<(f64, f64)> = (0..=10)
            .map(|i| {
                let x = f64::from(i) * 100.0;
                (x, 2.2 * (-x / 350.0).exp() + 0.3)
            })
            .collect();
        Chart::new("Fashion-MNIST ViT: loss", "step", "cross-entropy loss")
            .with_series(Series::new("train", train))
            .with_series(Series::new("eval (every 100 steps)", eval))
    }

    /// Where `chart` puts the data point `(x, y)`, in image pixels.
    fn pixel_of(chart: &Chart, x: f64, y: f64) -> (u32, u32) {
        let (xr, yr) = chart.data_ranges().unwrap();
        let xa = Axis::linear(xr.0, xr.1, "x").unwrap();
        let ya = if chart.log_y {
            Axis::log10(yr.0, yr.1)
        } else {
            Axis::linear(yr.0, yr.1, "y").unwrap()
        };
        let layout = Layout::new(chart, &xa, &ya).unwrap();
        let yv = if chart.log_y { y.log10() } else { y };
        let p = layout.plot;
        let px = p.left + p.x_local(&xa, x).floor() as i64;
        let py = p.top + p.y_local(&ya, yv).floor() as i64;
        (px as u32, py as u32)
    }

    fn near(a: Rgb<u8>, b: Rgb<u8>, tol: i32) -> bool {
        a.0.iter()
            .zip(&b.0)
            .all(|(&x, &y)| (i32::from(x) - i32::from(y)).abs() <= tol)
    }

    /// Whether some pixel within one of `(x, y)` is (near) `color`.
    fn color_near(img: &RgbImage, (x, y): (u32, u32), color: Rgb<u8>) -> bool {
        (x.saturating_sub(1)..=x + 1)
            .flat_map(|xx| (y.saturating_sub(1)..=y + 1).map(move |yy| (xx, yy)))
            .any(|(xx, yy)| {
                xx < img.width() && yy < img.height() && near(*img.get_pixel(xx, yy), color, 12)
            })
    }

    #[test]
    fn renders_at_the_requested_size() {
        let img = sample_chart().render().unwrap();
        assert_eq!(img.dimensions(), (800, 500));
        let img = sample_chart().with_size(320, 200).render().unwrap();
        assert_eq!(img.dimensions(), (320, 200));
        let img = sample_chart().with_size(1600, 1000).render().unwrap();
        assert_eq!(img.dimensions(), (1600, 1000));
    }

    #[test]
    fn data_points_land_in_the_series_colour() {
        let chart = Chart::default()
            .with_series(Series::new("a", vec![(0.0, 0.0), (10.0, 10.0)]))
            .with_series(Series::new("b", vec![(0.0, 7.0), (4.0, 7.0), (10.0, 7.0)]));
        let img = chart.render().unwrap();
        for (x, y) in [(0.0, 0.0), (5.0, 5.0), (10.0, 10.0)] {
            assert!(color_near(&img, pixel_of(&chart, x, y), series_color(0)));
        }
        for (x, y) in [(2.0, 7.0), (6.0, 7.0)] {
            assert!(color_near(&img, pixel_of(&chart, x, y), series_color(1)));
        }
        // Away from the lines the plot is background or grid.
        let (px, py) = pixel_of(&chart, 8.0, 1.5);
        let p = *img.get_pixel(px, py);
        assert!(p == Rgb(BACKGROUND) || p == Rgb(GRID), "{p:?}");
    }

    #[test]
    fn log_axis_maps_points() {
        let chart = Chart::default().with_log_y(true).with_series(Series::new(
            "loss",
            vec![(0.0, 1.0), (1.0, 0.1), (2.0, 0.01), (3.0, -1.0)],
        ));
        let img = chart.render().unwrap();
        for (x, y) in [(0.0, 1.0), (1.0, 0.1), (1.5, 10f64.powf(-1.5))] {
            assert!(
                color_near(&img, pixel_of(&chart, x, y), series_color(0)),
                "{x} {y}"
            );
        }
        let err = Chart::default()
            .with_log_y(true)
            .with_series(Series::new("loss", vec![(0.0, 0.0), (1.0, -2.0)]))
            .render()
            .unwrap_err();
        assert!(err.to_string().contains("positive"), "{err}");
    }

    #[test]
    fn non_finite_points_are_skipped() {
        let chart = Chart::default().with_series(Series::new(
            "loss",
            vec![
                (0.0, 1.0),
                (1.0, f64::NAN),
                (2.0, 3.0),
                (f64::INFINITY, 2.0),
                (3.0, f64::NEG_INFINITY),
                (4.0, 2.0),
                (5.0, 1.0),
            ],
        ));
        let img = chart.render().unwrap();
        // Isolated points are dots; the line is broken around the NaN.
        for (x, y) in [(0.0, 1.0), (2.0, 3.0), (4.0, 2.0), (4.5, 1.5)] {
            assert!(
                color_near(&img, pixel_of(&chart, x, y), series_color(0)),
                "{x} {y}"
            );
        }
        let (px, py) = pixel_of(&chart, 1.0, 2.0);
        assert!(!color_near(&img, (px, py), series_color(0)));
    }

    #[test]
    fn single_point_and_constant_series() {
        let chart = Chart::default().with_series(Series::new("one", vec![(3.0, 0.5)]));
        let img = chart.render().unwrap();
        assert!(color_near(
            &img,
            pixel_of(&chart, 3.0, 0.5),
            series_color(0)
        ));

        let chart = Chart::default().with_series(Series::from_values("flat", &[0.9; 20]));
        let (_, yr) = chart.data_ranges().unwrap();
        let ya = Axis::linear(yr.0, yr.1, "y").unwrap();
        assert!(ya.min < 0.9 && ya.max > 0.9 && ya.ticks.len() >= 3);
        let img = chart.render().unwrap();
        assert!(color_near(
            &img,
            pixel_of(&chart, 10.0, 0.9),
            series_color(0)
        ));

        let zero = Chart::default().with_series(Series::from_values("zero", &[0.0; 5]));
        zero.render().unwrap();
        let log_flat = Chart::default()
            .with_log_y(true)
            .with_series(Series::from_values("flat", &[1.0; 5]));
        log_flat.render().unwrap();
    }

    #[test]
    fn empty_charts_and_bad_sizes_are_errors() {
        let err = Chart::default().render().unwrap_err();
        assert!(err.to_string().contains("no series"), "{err}");
        let err = Chart::default()
            .with_series(Series::new("a", vec![]))
            .render()
            .unwrap_err();
        assert!(err.to_string().contains("no points"), "{err}");
        let err = Chart::default()
            .with_series(Series::new("a", vec![(f64::NAN, 1.0)]))
            .render()
            .unwrap_err();
        assert!(err.to_string().contains("finite"), "{err}");

        for (w, h) in [(0, 500), (800, 0), (0, 0)] {
            let err = sample_chart().with_size(w, h).render().unwrap_err();
            assert!(err.to_string().contains("positive"), "{err}");
        }
        assert!(sample_chart().with_size(20, 20).render().is_err());
        assert!(sample_chart().with_size(MAX_SIDE + 1, 10).render().is_err());
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let cases: Vec<Vec<(f64, f64)>> = vec![
            vec![(0.0, f64::MAX), (1.0, -f64::MAX)],
            vec![(0.0, 1e300), (1.0, 1e-300)],
            vec![
                (f64::MIN_POSITIVE, 1.0),
                (2.0 * f64::MIN_POSITIVE, 1.0 + 1e-15),
            ],
            vec![(0.0, 1e16), (1.0, 1e16 + 2.0)],
            vec![(-1e-7, 3e-6), (0.0, 1e-6)],
            vec![(0.0, 5e7), (1e9, 1.0)],
        ];
        for points in cases {
            for log_y in [false, true] {
                let _ = Chart::default()
                    .with_log_y(log_y)
                    .with_series(Series::new("x", points.clone()))
                    .render();
            }
        }
    }

    #[test]
    fn tick_labels() {
        assert_eq!(nice_step(0.23), 0.2);
        assert_eq!(nice_step(4.0), 5.0);
        assert_eq!(nice_step(0.0011), 0.001);
        let ax = Axis::linear(0.13, 2.41, "y").unwrap();
        let labels: Vec<_> = ax.ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["0", "0.5", "1.0", "1.5", "2.0", "2.5"]);
        let ax = Axis::linear(-3.0, 1000.0, "x").unwrap();
        let labels: Vec<_> = ax.ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["-200", "0", "200", "400", "600", "800", "1000"]);
        let ax = Axis::linear(0.0, 3e6, "x").unwrap();
        assert_eq!(ax.ticks[1].label, "5e5");
        assert_eq!(ax.ticks[3].label, "1.5e6");
        let ax = Axis::log10(0.004, 2.3);
        let labels: Vec<_> = ax.ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["0.001", "0.01", "0.1", "1", "10"]);
        let ax = Axis::log10(0.23, 2.4);
        let labels: Vec<_> = ax.ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["0.2", "0.5", "1", "2", "5"]);
        let ax = Axis::log10(0.2, 2.0);
        let labels: Vec<_> = ax.ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["0.2", "0.5", "1", "2"]);
        assert_eq!(format_log(2, -7), "2e-7");
        assert_eq!(format_log(5, -2), "0.05");
    }

    #[test]
    fn save_png_writes_a_readable_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let chart = sample_chart().with_size(640, 400);
        chart.save_png(&path).unwrap();
        // Overwriting works too.
        chart.save_png(&path).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), (640, 400));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("loss.png")]);
    }

    #[test]
    fn save_png_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("loss.png");
        let err = sample_chart().save_png(&path).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(!path.exists());

        let err = sample_chart()
            .with_size(0, 10)
            .save_png(dir.path().join("x.png"))
            .unwrap_err();
        assert!(err.to_string().contains("positive"), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        // A directory in the way of the target: the rename fails, the temp file goes.
        let blocked = dir.path().join("blocked.png");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("keep"), b"x").unwrap();
        assert!(sample_chart().save_png(&blocked).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn every_glyph_fits_its_cell() {
        for c in (' '..='~').chain(['\u{e9}']) {
            for row in glyph(c) {
                assert!(row < 32, "{c:?}");
            }
        }
        assert_eq!(text_width("", 1), 0);
        assert_eq!(text_width("ab", 2), 22);
    }

    /// Writes a sample chart to `/tmp/plot-check*.png` for a look; run with `--ignored`.
    #[test]
    #[ignore]
    fn write_sample_pngs() {
        sample_chart().save_png("/tmp/plot-check.png").unwrap();
        let acc: Vec<(f64, f64)> = (1..=30)
            .map(|e| {
                (
                    f64::from(e),
                    100.0 * (1.0 - 0.6 * (-f64::from(e) / 6.0).exp()),
                )
            })
            .collect();
        Chart::new("accuracy", "epoch", "accuracy (%)")
            .with_series(Series::new("train", acc.clone()))
            .with_series(Series::new(
                "val",
                acc.iter().map(|&(x, y)| (x, y - 3.0)).collect(),
            ))
            .with_size(480, 300)
            .save_png("/tmp/plot-check-small.png")
            .unwrap();
        let mut log = sample_chart().with_log_y(true);
        log.title = "log loss".into();
        log.save_png("/tmp/plot-check-log.png").unwrap();
        sample_chart()
            .with_size(1600, 1000)
            .save_png("/tmp/plot-check-big.png")
            .unwrap();
    }
}

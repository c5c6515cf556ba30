//! Resizing a grid of position embeddings, for models run at another image size than they
//! were trained at.

use glimpse_tensor::{Error, Result, Tensor};

/// The cubic convolution constant of bicubic interpolation as the reference implementation
/// (PyTorch's `interpolate(mode="bicubic")`) uses it.
const CUBIC_A: f64 = -0.75;

/// Weights of the four taps around a source coordinate with fractional part `t`.
fn cubic_weights(t: f64) -> [f64; 4] {
    // Near taps (distance < 1) and far taps (1 <= distance < 2) of the cubic kernel.
    let near = |x: f64| ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// For each output index along one axis: the four clamped source indices and their weights
/// (`align_corners = false`, the output size given, so the scale is `input / output`).
fn axis_taps(input: usize, output: usize) -> Vec<([usize; 4], [f64; 4])> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|o| {
            // Source coordinate of the output pixel's centre; not clamped at 0 for cubic.
            let src = scale * (o as f64 + 0.5) - 0.5;
            let base = src.floor();
            let weights = cubic_weights(src - base);
            let clamp = |i: f64| i.clamp(0.0, (input - 1) as f64) as usize;
            let idx = [
                clamp(base - 1.0),
                clamp(base),
                clamp(base + 1.0),
                clamp(base + 2.0),
            ];
            (idx, weights)
        })
        .collect()
}

/// Bicubic resize of a grid of embeddings: `grid` is `(H * W, E)`, rows in row-major grid
/// order (the patch order of a ViT); the result is `(new_h * new_w, E)` in `grid`'s dtype and
/// device. Computed on the host in f64 (the grids are small: a few hundred rows).
///
/// Matches PyTorch's `interpolate(..., size=(new_h, new_w), mode="bicubic",
/// align_corners=False)` on the `(1, E, H, W)` permutation of the grid, the rule the Hugging
/// Face ViT and CLIP models use for `interpolate_pos_encoding`.
pub fn bicubic_resize_grid(
    grid: &Tensor,
    (h, w): (usize, usize),
    (new_h, new_w): (usize, usize),
) -> Result<Tensor> {
    const OP: &str = "bicubic_resize_grid";
    if grid.rank() != 2 || grid.dims()[0] != h * w {
        return Err(Error::bad_shape(
            OP,
            format!("grid must be ({h} * {w}, E)"),
            grid.shape(),
        ));
    }
    if h == 0 || w == 0 || new_h == 0 || new_w == 0 {
        return Err(Error::invalid(
            OP,
            format!("grid sizes must be nonzero, got {h}x{w} -> {new_h}x{new_w}"),
        ));
    }
    let e = grid.dims()[1];
    let src = grid.to_f64_vec()?;
    let rows = axis_taps(h, new_h);
    let cols = axis_taps(w, new_w);
    let mut out = vec![0.0f64; new_h * new_w * e];
    for (oy, (yi, yw)) in rows.iter().enumerate() {
        for (ox, (xi, xw)) in cols.iter().enumerate() {
            let dst = &mut out[(oy * new_w + ox) * e..][..e];
            for (&y, &wy) in yi.iter().zip(yw) {
                for (&x, &wx) in xi.iter().zip(xw) {
                    let weight = wy * wx;
                    let row = &src[(y * w + x) * e..][..e];
                    for (d, s) in dst.iter_mut().zip(row) {
                        *d += weight * s;
                    }
                }
            }
        }
    }
    Tensor::from_f64_slice(&out, [new_h * new_w, e], grid.dtype(), grid.device())
}

/// Position embeddings `(1 + rows, E)` for an image of `hw` pixels, from trained ones `pos`
/// `(1 + gh * gw, E)` for `trained_hw`. At the trained size they are returned as they are;
/// otherwise `interpolate` must be set, and the patch grid is resized bicubically (the class
/// position is kept). ViT and CLIP's vision tower both follow this rule (the reference's
/// `interpolate_pos_encoding`).
pub fn interpolated_positions(
    pos: &Tensor,
    trained_hw: (usize, usize),
    patch_size: usize,
    (height, width): (usize, usize),
    interpolate: bool,
) -> Result<Tensor> {
    if (height, width) == trained_hw {
        return Ok(pos.clone());
    }
    if !interpolate {
        return Err(Error::invalid(
            "position embeddings",
            format!(
                "image size {height}x{width} does not match the model's {}x{}; resize the image \
                 or enable position-embedding interpolation",
                trained_hw.0, trained_hw.1
            ),
        ));
    }
    if height < patch_size || width < patch_size {
        return Err(Error::invalid(
            "position embeddings",
            format!("image size {height}x{width} is smaller than one {patch_size}px patch"),
        ));
    }
    let trained = (trained_hw.0 / patch_size, trained_hw.1 / patch_size);
    let new = (height / patch_size, width / patch_size);
    let rows = pos.dims()[0];
    // The reference reshapes the trained grid to a square of side sqrt(positions).
    let side = (((rows - 1) as f64).sqrt().round()) as usize;
    if side * side != rows - 1 || trained.0 * trained.1 != rows - 1 {
        return Err(Error::invalid(
            "position embeddings",
            format!(
                "cannot interpolate {} position embeddings: the trained patch grid is not square",
                rows - 1
            ),
        ));
    }
    let class_pos = pos.narrow(0, 0, 1)?;
    let grid = pos.narrow(0, 1, rows - 1)?;
    let resized = bicubic_resize_grid(&grid, (side, side), new)?;
    Tensor::cat(&[&class_pos, &resized], 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_identity_resize_is_exact() {
        for t in [0.0, 0.1, 0.5, 0.9] {
            let s: f64 = cubic_weights(t).iter().sum();
            assert!((s - 1.0).abs() < 1e-12, "{t}: {s}");
        }
        // Same size: the source coordinate is the pixel itself, t = 0, weights (0, 1, 0, 0).
        let taps = axis_taps(5, 5);
        for (i, (idx, w)) in taps.iter().enumerate() {
            assert_eq!(idx[1], i);
            assert!((w[1] - 1.0).abs() < 1e-12 && w[0].abs() < 1e-12 && w[2].abs() < 1e-12);
        }
    }

    #[test]
    fn matches_hand_computed_upsampling() {
        // 1-D check along the width: a 1x2 grid upsampled to 1x4.
        // src coords: 0.5 * (o + 0.5) - 0.5 = -0.25, 0.25, 0.75, 1.25.
        let device = glimpse_cpu::device();
        let grid = Tensor::from_vec(vec![1.0f64, 3.0], [2, 1], &device).unwrap();
        let out = bicubic_resize_grid(&grid, (1, 2), (1, 4))
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        let expect = |src: f64| {
            let base = src.floor();
            let w = cubic_weights(src - base);
            let v = |i: f64| if i <= 0.0 { 1.0 } else { 3.0 };
            (0..4).map(|k| w[k] * v(base - 1.0 + k as f64)).sum::<f64>()
        };
        for (o, src) in [-0.25, 0.25, 0.75, 1.25].into_iter().enumerate() {
            assert!((out[o] - expect(src)).abs() < 1e-12);
        }
        // Symmetric input gives a symmetric output; the ends overshoot (cubic, A = -0.75).
        assert!((out[0] + out[3] - 4.0).abs() < 1e-12);
        assert!(out[0] < 1.0 && out[3] > 3.0);
    }

    #[test]
    fn bad_grids_are_errors() {
        let device = glimpse_cpu::device();
        let grid = Tensor::zeros([6, 2], glimpse_tensor::DType::F32, &device).unwrap();
        assert!(bicubic_resize_grid(&grid, (2, 2), (3, 3)).is_err());
        assert!(bicubic_resize_grid(&grid, (2, 3), (0, 3)).is_err());
        assert!(bicubic_resize_grid(&grid, (2, 3), (4, 5)).is_ok());
    }
}

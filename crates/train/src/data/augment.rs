//! Deterministic image augmentation: a random shift (a crop of the zero-padded image) and a
//! random horizontal flip.
//!
//! Each sample's draw comes from its own stream, keyed by `(seed, epoch, sample index)`, never
//! from a generator shared across the batch: a sample then gets the same augmentation whatever
//! batch it lands in, however many worker threads there are, and after a resume from a
//! checkpoint.

use glimpse_tensor::{Error, Result};

use super::rng::Rng;

/// Separates augmentation streams from other streams derived from the same seed (the loader's
/// `derive(seed, [epoch])` in particular).
const AUGMENT_STREAM: u64 = 0x0A06_3E47;

/// The augmentation of one sample, as drawn by [`Augment::params`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AugmentParams {
    /// Horizontal shift in pixels: the output pixel `(y, x)` reads the input at `x - dx`.
    pub dx: isize,
    /// Vertical shift in pixels: the output pixel `(y, x)` reads the input at `y - dy`.
    pub dy: isize,
    /// Whether the image is mirrored left-right (after the shift).
    pub flip: bool,
}

impl AugmentParams {
    /// No augmentation at all.
    pub const IDENTITY: AugmentParams = AugmentParams {
        dx: 0,
        dy: 0,
        flip: false,
    };
}

/// Random crop with zero padding and random horizontal flip, as commonly used on MNIST-like
/// data.
///
/// The crop of a `pad`-padded image back to the original size is the same as shifting by
/// `dx, dy` in `[-pad, pad]` and filling what comes in with 0, the background, so that is what
/// [`Augment::apply`] does (with no padded copy).
#[derive(Debug, Clone, PartialEq)]
pub struct Augment {
    /// The largest shift, in pixels, in each direction.
    pub pad: usize,
    /// Probability of a horizontal flip.
    pub flip_prob: f64,
    /// The seed the per-sample streams derive from.
    pub seed: u64,
}

impl Augment {
    /// The usual setting: shifts of up to ±2 pixels and a flip half of the time.
    pub fn new(seed: u64) -> Self {
        Augment {
            pad: 2,
            flip_prob: 0.5,
            seed,
        }
    }

    /// The augmentation of sample `index` (its index in the dataset, not in the batch) in
    /// epoch `epoch`: the same every time it is asked for.
    pub fn params(&self, epoch: u64, index: usize) -> AugmentParams {
        let mut rng = Rng::derive(self.seed, &[AUGMENT_STREAM, epoch, index as u64]);
        let span = 2 * self.pad as u64 + 1;
        let dx = rng.below(span) as isize - self.pad as isize;
        let dy = rng.below(span) as isize - self.pad as isize;
        let flip = rng.bernoulli(self.flip_prob);
        AugmentParams { dx, dy, flip }
    }

    /// Applies `params` to a planar (channels-first) image of `channels * rows * cols`
    /// values, writing into `dst` of the same length; pixels shifted in are `fill`. Fails
    /// when `src` or `dst` do not hold `channels * rows * cols` values.
    pub fn apply<T: Copy>(
        params: AugmentParams,
        src: &[T],
        dst: &mut [T],
        channels: usize,
        rows: usize,
        cols: usize,
        fill: T,
    ) -> Result<()> {
        let plane = rows * cols;
        if src.len() != channels * plane || dst.len() != channels * plane {
            return Err(Error::invalid(
                "Augment::apply",
                format!(
                    "buffers of {} and {} values for a {channels}x{rows}x{cols} image",
                    src.len(),
                    dst.len()
                ),
            ));
        }
        for c in 0..channels {
            let src = &src[c * plane..(c + 1) * plane];
            let dst = &mut dst[c * plane..(c + 1) * plane];
            for y in 0..rows {
                let sy = y as isize - params.dy;
                for x in 0..cols {
                    // Flip after the shift: mirror the output column first.
                    let ox = if params.flip { cols - 1 - x } else { x };
                    let sx = ox as isize - params.dx;
                    let inside =
                        (0..rows as isize).contains(&sy) && (0..cols as isize).contains(&sx);
                    dst[y * cols + x] = if inside {
                        src[sy as usize * cols + sx as usize]
                    } else {
                        fill
                    };
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_deterministic_and_bounded() {
        let aug = Augment::new(5);
        let mut seen = std::collections::HashSet::new();
        for i in 0..500 {
            let p = aug.params(3, i);
            assert_eq!(p, aug.params(3, i));
            assert!(p.dx.abs() <= 2 && p.dy.abs() <= 2);
            seen.insert(p);
        }
        // 5 x 5 shifts x 2 flips = 50 outcomes; 500 draws should hit most of them.
        assert!(seen.len() > 40, "{}", seen.len());
        let differs = (0..50).any(|i| aug.params(3, i) != aug.params(4, i));
        assert!(differs);
        let other = Augment::new(6);
        assert!((0..50).any(|i| aug.params(3, i) != other.params(3, i)));
    }

    #[test]
    fn no_augmentation_when_disabled() {
        let aug = Augment {
            pad: 0,
            flip_prob: 0.0,
            seed: 1,
        };
        for i in 0..20 {
            assert_eq!(aug.params(0, i), AugmentParams::IDENTITY);
        }
    }

    #[test]
    fn apply_shifts_and_flips() {
        // 1 channel, 2 rows, 3 columns.
        let src = [1u8, 2, 3, 4, 5, 6];
        let mut dst = [0u8; 6];
        Augment::apply(AugmentParams::IDENTITY, &src, &mut dst, 1, 2, 3, 0).unwrap();
        assert_eq!(dst, src);
        let right = AugmentParams {
            dx: 1,
            dy: 0,
            flip: false,
        };
        Augment::apply(right, &src, &mut dst, 1, 2, 3, 0).unwrap();
        assert_eq!(dst, [0, 1, 2, 0, 4, 5]);
        let down = AugmentParams {
            dx: 0,
            dy: 1,
            flip: false,
        };
        Augment::apply(down, &src, &mut dst, 1, 2, 3, 9).unwrap();
        assert_eq!(dst, [9, 9, 9, 1, 2, 3]);
        let flip = AugmentParams {
            dx: 0,
            dy: 0,
            flip: true,
        };
        Augment::apply(flip, &src, &mut dst, 1, 2, 3, 0).unwrap();
        assert_eq!(dst, [3, 2, 1, 6, 5, 4]);
        // Shift right, then mirror: the zero column ends up on the right.
        let both = AugmentParams {
            dx: 1,
            dy: 0,
            flip: true,
        };
        Augment::apply(both, &src, &mut dst, 1, 2, 3, 0).unwrap();
        assert_eq!(dst, [2, 1, 0, 5, 4, 0]);
        // Planes are augmented alike.
        let src2 = [1u8, 2, 3, 4, 10, 20, 30, 40];
        let mut dst2 = [0u8; 8];
        Augment::apply(flip, &src2, &mut dst2, 2, 2, 2, 0).unwrap();
        assert_eq!(dst2, [2, 1, 4, 3, 20, 10, 40, 30]);
    }
}

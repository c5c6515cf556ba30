//! Seeded random numbers shared by the backends: a counter-based generator, so that every
//! element depends only on `(seed, index)`. Filling in parallel, in order, or on another device
//! gives the same values, which is what lets tests initialise the same weights on every backend.

use crate::WithDType;

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform sample in `[0, 1)` with 53 random bits, for stream position `i`.
pub fn unit(seed: u64, i: u64) -> f64 {
    let bits =
        mix(mix(seed ^ 0x9e37_79b9_7f4a_7c15).wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Element `i` of the uniform stream on `[low, high)` of `seed`, in dtype `T`.
pub fn uniform_at<T: WithDType>(low: f64, high: f64, seed: u64, i: usize) -> T {
    let v = low + (high - low) * unit(seed, i as u64);
    // Rounding to a narrow dtype may land on `high`: keep the interval half-open.
    let t = T::from_f64(v);
    if t.to_f64() >= high {
        T::from_f64(low)
    } else {
        t
    }
}

/// Element `i` of the normal stream of `seed`, in dtype `T`.
pub fn normal_at<T: WithDType>(mean: f64, std: f64, seed: u64, i: usize) -> T {
    // Box-Muller on the pair (2p, 2p+1); the element takes the cosine or sine branch.
    let pair = (i / 2) as u64;
    let u1 = 1.0 - unit(seed, 2 * pair); // in (0, 1]
    let u2 = unit(seed, 2 * pair + 1);
    let r = (-2.0 * u1.ln()).sqrt();
    let angle = 2.0 * std::f64::consts::PI * u2;
    let z = if i.is_multiple_of(2) {
        r * angle.cos()
    } else {
        r * angle.sin()
    };
    T::from_f64(mean + std * z)
}

//! Seeded random numbers: a counter-based generator, so that every element depends only on
//! `(seed, index)` and filling in parallel gives the same values as filling in order.

use glimpse_tensor::WithDType;
use rayon::prelude::*;

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform sample in `[0, 1)` with 53 random bits, for stream position `i`.
fn unit(seed: u64, i: u64) -> f64 {
    let bits =
        mix(mix(seed ^ 0x9e37_79b9_7f4a_7c15).wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

pub fn uniform<T: WithDType>(len: usize, low: f64, high: f64, seed: u64) -> Vec<T> {
    (0..len)
        .into_par_iter()
        .with_min_len(4096)
        .map(|i| {
            let v = low + (high - low) * unit(seed, i as u64);
            // Rounding to a narrow dtype may land on `high`: keep the interval half-open.
            let t = T::from_f64(v);
            if t.to_f64() >= high {
                T::from_f64(low)
            } else {
                t
            }
        })
        .collect()
}

pub fn normal<T: WithDType>(len: usize, mean: f64, std: f64, seed: u64) -> Vec<T> {
    (0..len)
        .into_par_iter()
        .with_min_len(4096)
        .map(|i| {
            // Box-Muller on the pair (2p, 2p+1); the element takes the cosine or sine branch.
            let pair = (i / 2) as u64;
            let u1 = 1.0 - unit(seed, 2 * pair); // in (0, 1]
            let u2 = unit(seed, 2 * pair + 1);
            let r = (-2.0 * u1.ln()).sqrt();
            let angle = 2.0 * std::f64::consts::PI * u2;
            let z = if i % 2 == 0 {
                r * angle.cos()
            } else {
                r * angle.sin()
            };
            T::from_f64(mean + std * z)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_and_reproducibility() {
        let u: Vec<f64> = uniform(100_000, -1.0, 3.0, 42);
        assert!(u.iter().all(|&x| (-1.0..3.0).contains(&x)));
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
        let n: Vec<f64> = normal(100_000, 2.0, 0.5, 7);
        let m = n.iter().sum::<f64>() / n.len() as f64;
        let var = n.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n.len() as f64;
        assert!(
            (m - 2.0).abs() < 0.01 && (var.sqrt() - 0.5).abs() < 0.01,
            "{m} {var}"
        );
        assert_ne!(
            uniform::<f32>(10, 0.0, 1.0, 1),
            uniform::<f32>(10, 0.0, 1.0, 2)
        );
        assert_eq!(
            normal::<f32>(100, 0.0, 1.0, 9)[..10],
            normal::<f32>(10, 0.0, 1.0, 9)[..]
        );
    }
}

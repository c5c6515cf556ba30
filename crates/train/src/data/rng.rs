//! A small seeded random number generator (SplitMix64) with derivable streams.
//!
//! Training must be able to stop and resume bit for bit from an `(epoch, step)` position, so
//! no random draw may depend on how many draws came before it on some shared generator.
//! Instead every consumer derives its own stream from a key: [`Rng::derive`]`(seed, &[epoch])`
//! shuffles epoch `epoch`, `Rng::derive(seed, &[tag, epoch, index])` augments one sample, and
//! so on. The same key always gives the same stream, whichever thread asks and in whatever
//! order.
//!
//! SplitMix64 is tiny, fast, passes BigCrush, and has a strong 64-bit finaliser that also
//! serves to hash the stream keys. It is not cryptographic, nor meant to be.

/// The SplitMix64 increment, the golden ratio in 64-bit fixed point.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 (Stafford variant 13) finaliser: a bijective 64-bit mixer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic SplitMix64 generator. Cloning it forks an identical stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`. Nearby seeds give unrelated streams, because every
    /// output goes through the finaliser.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// An independent stream for the key `(seed, streams...)`, e.g. `(seed, [epoch])` or
    /// `(seed, [tag, epoch, sample index])`.
    ///
    /// Each id is folded into the state through the finaliser, so keys that differ in any id,
    /// in order, or in length (`[1]` vs `[1, 0]`) give unrelated streams.
    pub fn derive(seed: u64, streams: &[u64]) -> Self {
        let mut h = mix64(seed ^ 0x5EED_5EED_5EED_5EED);
        for &id in streams {
            // Adding the gamma before mixing keeps `id = 0` from being a fixed point.
            h = mix64(h.wrapping_add(GOLDEN_GAMMA) ^ mix64(id.wrapping_add(GOLDEN_GAMMA)));
        }
        Rng { state: h }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// The next 32 uniformly distributed bits (the high half, the better mixed one).
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A uniform `f32` in `[0, 1)`: 24 random bits, so every value is exactly representable
    /// and 1.0 can never come out.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// A uniform `f64` in `[0, 1)` from 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform `f32` in `[lo, hi)` (or `lo` when the range is empty).
    pub fn range_f32(&mut self, lo: f32, hi: f32) -> f32 {
        if hi <= lo {
            return lo;
        }
        lo + (hi - lo) * self.uniform_f32()
    }

    /// `true` with probability `p` (clamped to `[0, 1]`).
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform_f64() < p
    }

    /// A uniform integer in `[0, n)`, without modulo bias (Lemire's multiply-and-reject).
    /// `n = 0` has no valid answer; it returns 0 rather than panicking.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniform index in `[0, n)`; 0 when `n = 0`.
    pub fn below_usize(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Shuffles `slice` in place (Fisher-Yates): every permutation equally likely.
    pub fn shuffle<T>(&mut self, slice: &mut [T]) {
        for i in (1..slice.len()).rev() {
            let j = self.below_usize(i + 1);
            slice.swap(i, j);
        }
    }

    /// An element of `items` chosen uniformly, or `None` when it is empty.
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below_usize(items.len()))
        }
    }

    /// A random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;
    use proptest::prelude::*;

    #[test]
    fn splitmix_reference_values() {
        // The first outputs of SplitMix64 seeded with 0, as published with the algorithm
        // (and produced by the reference C implementation).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn derive_is_deterministic_and_key_sensitive() {
        let a: Vec<u64> = {
            let mut r = Rng::derive(7, &[1, 2]);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let again: Vec<u64> = {
            let mut r = Rng::derive(7, &[1, 2]);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, again);
        let keys: [(u64, &[u64]); 6] = [
            (8, &[1, 2]),
            (7, &[2, 1]),
            (7, &[1]),
            (7, &[1, 2, 0]),
            (7, &[]),
            (7, &[1, 3]),
        ];
        for (seed, ids) in keys {
            let mut r = Rng::derive(seed, ids);
            assert_ne!(r.next_u64(), a[0], "key ({seed}, {ids:?})");
        }
    }

    #[test]
    fn uniform_ranges_and_mean() {
        let mut r = Rng::new(3);
        let n = 20_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let x = r.uniform_f32();
            assert!((0.0..1.0).contains(&x));
            let y = r.uniform_f64();
            assert!((0.0..1.0).contains(&y));
            sum += y;
        }
        let mean = sum / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut r = Rng::new(11);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[r.below_usize(6)] += 1;
        }
        for c in counts {
            assert!((9_400..10_600).contains(&c), "{counts:?}");
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.below(1), 0);
        assert_eq!(r.choose::<u8>(&[]), None);
    }

    proptest! {
        #[test]
        fn shuffle_is_a_permutation(seed in any::<u64>(), n in 0usize..200) {
            let mut p = Rng::new(seed).permutation(n);
            p.sort_unstable();
            prop_assert_eq!(p, (0..n).collect::<Vec<_>>());
        }

        #[test]
        fn below_stays_below(seed in any::<u64>(), n in 1u64..u64::MAX) {
            let mut r = Rng::new(seed);
            for _ in 0..8 {
                prop_assert!(r.below(n) < n);
            }
        }
    }
}

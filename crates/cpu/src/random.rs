//! Seeded random numbers in parallel: the counter-based streams of `glimpse_tensor::random`.

use glimpse_tensor::WithDType;
use glimpse_tensor::random::{normal_at, uniform_at};
use rayon::prelude::*;

pub fn uniform<T: WithDType>(len: usize, low: f64, high: f64, seed: u64) -> Vec<T> {
    (0..len)
        .into_par_iter()
        .with_min_len(4096)
        .map(|i| uniform_at(low, high, seed, i))
        .collect()
}

pub fn normal<T: WithDType>(len: usize, mean: f64, std: f64, seed: u64) -> Vec<T> {
    (0..len)
        .into_par_iter()
        .with_min_len(4096)
        .map(|i| normal_at(mean, std, seed, i))
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

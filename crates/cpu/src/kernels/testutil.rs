//! Helpers shared by the kernel tests.

/// Deterministic pseudo-random values uniform in `[-amp, amp)` (splitmix64).
pub(crate) fn rand_vec(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0x1234_5678);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * u - 1.0) * amp
        })
        .collect()
}

/// Asserts `|got - want| <= abs + rel * |want|` elementwise (infinities must match exactly).
#[track_caller]
pub(crate) fn assert_close(got: &[f32], want: &[f32], abs: f32, rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_infinite() || g.is_infinite() {
            assert_eq!(g, w, "{what}: index {i}");
            continue;
        }
        let tol = abs + rel * w.abs();
        assert!(
            (g - w).abs() <= tol && !g.is_nan(),
            "{what}: index {i}: got {g}, want {w} (tol {tol})"
        );
    }
}

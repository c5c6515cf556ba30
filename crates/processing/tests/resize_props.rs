//! Properties of `resize` over random sizes: output dimensions, constant images stay constant,
//! no panic for any size from 1 to 64, up or down.

use glimpse_processing::{Filter, resize};
use image::{Rgb, RgbImage};
use proptest::prelude::*;

fn filter() -> impl Strategy<Value = Filter> {
    prop::sample::select(Filter::ALL.to_vec())
}

fn noise(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut state = seed | 1;
    RgbImage::from_fn(w, h, |_, _| {
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        };
        Rgb([next(), next(), next()])
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn dimensions_are_the_requested_ones(
        (w, h, ow, oh) in (1u32..=64, 1u32..=64, 1u32..=64, 1u32..=64),
        f in filter(),
        seed in any::<u64>(),
    ) {
        let out = resize(&noise(w, h, seed), ow, oh, f);
        prop_assert_eq!(out.dimensions(), (ow, oh));
    }

    #[test]
    fn constant_images_stay_constant(
        (w, h, ow, oh) in (1u32..=64, 1u32..=64, 1u32..=64, 1u32..=64),
        f in filter(),
        color in any::<[u8; 3]>(),
    ) {
        let img = RgbImage::from_pixel(w, h, Rgb(color));
        let out = resize(&img, ow, oh, f);
        prop_assert!(out.pixels().all(|p| p.0 == color), "{:?} {}x{} -> {}x{}", f, w, h, ow, oh);
    }

    #[test]
    fn same_size_is_a_copy(
        (w, h) in (1u32..=64, 1u32..=64),
        f in filter(),
        seed in any::<u64>(),
    ) {
        let img = noise(w, h, seed);
        prop_assert_eq!(resize(&img, w, h, f), img);
    }

    #[test]
    fn nearest_only_picks_existing_pixels(
        (w, h, ow, oh) in (1u32..=64, 1u32..=64, 1u32..=64, 1u32..=64),
        seed in any::<u64>(),
    ) {
        let img = noise(w, h, seed);
        let out = resize(&img, ow, oh, Filter::Nearest);
        let all: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        prop_assert!(out.pixels().all(|p| all.contains(&p.0)));
    }

    #[test]
    fn box_and_bilinear_stay_within_the_input_range(
        (w, h, ow, oh) in (1u32..=64, 1u32..=64, 1u32..=64, 1u32..=64),
        f in prop::sample::select(vec![Filter::Box, Filter::Bilinear]),
        seed in any::<u64>(),
    ) {
        // Filters without negative lobes cannot overshoot.
        let img = noise(w, h, seed);
        let out = resize(&img, ow, oh, f);
        for c in 0..3 {
            let lo = img.pixels().map(|p| p.0[c]).min().unwrap();
            let hi = img.pixels().map(|p| p.0[c]).max().unwrap();
            prop_assert!(out.pixels().all(|p| (lo..=hi).contains(&p.0[c])));
        }
    }
}

#[test]
fn zero_sizes_do_not_panic() {
    let img = RgbImage::from_pixel(5, 4, Rgb([9, 9, 9]));
    for f in Filter::ALL {
        assert_eq!(resize(&img, 0, 0, f).dimensions(), (0, 0));
        assert_eq!(resize(&img, 3, 0, f).dimensions(), (3, 0));
        assert_eq!(resize(&RgbImage::new(0, 7), 3, 2, f).dimensions(), (3, 2));
    }
}

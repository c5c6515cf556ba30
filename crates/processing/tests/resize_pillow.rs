//! `resize` against Pillow's `Image.resize`, byte for byte, for every filter, up- and
//! downscaling, odd and non-square sizes (fixtures from tests/fixtures/generate/processing.py).
//!
//! `GLIMPSE_RESIZE_SWEEP=/path/sweep.safetensors` also checks a large random sweep written by
//! `processing.py --out unused --resize-sweep /path/sweep.safetensors`.

mod common;

use std::collections::BTreeMap;

use glimpse_processing::{Filter, resize};

/// Checks every `out/<src>/<filter>/<w>x<h>` array against `resize(src/<src>)`; returns the
/// number of cases per filter.
fn check(arrays: &BTreeMap<String, common::Array>) -> BTreeMap<&'static str, usize> {
    let mut failures = Vec::new();
    let mut per_filter = BTreeMap::new();
    for (key, expected) in arrays {
        let Some(rest) = key.strip_prefix("out/") else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let [src_name, filter_name, size] = parts[..] else {
            panic!("bad key {key}");
        };
        let filter = Filter::ALL
            .into_iter()
            .find(|f| f.name() == filter_name)
            .unwrap_or_else(|| panic!("unknown filter in {key}"));
        let (w, h) = size.split_once('x').unwrap();
        let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
        let src = arrays[&format!("src/{src_name}")].to_rgb();
        let got = resize(&src, w, h, filter);
        let expected = expected.to_rgb();
        assert_eq!(got.dimensions(), expected.dimensions(), "{key}");
        let (max, count) = common::u8_diff(got.as_raw(), expected.as_raw());
        if max != 0 {
            failures.push(format!(
                "{key} from {}x{}: {count} values differ, by up to {max}",
                src.width(),
                src.height()
            ));
        }
        *per_filter.entry(filter.name()).or_insert(0) += 1;
    }
    let total: usize = per_filter.values().sum();
    assert!(
        failures.is_empty(),
        "{} of {total} resizes differ from Pillow:\n{}",
        failures.len(),
        failures.join("\n")
    );
    per_filter
}

#[test]
fn resize_matches_pillow_bit_for_bit() {
    let per_filter = check(&common::read_safetensors("resize.safetensors"));
    assert_eq!(per_filter.len(), 6, "{per_filter:?}");
    assert!(per_filter.values().all(|&n| n >= 20), "{per_filter:?}");
}

#[test]
fn resize_matches_pillow_on_the_optional_sweep() {
    let Ok(path) = std::env::var("GLIMPSE_RESIZE_SWEEP") else {
        return;
    };
    let arrays = common::read_safetensors_at(std::path::Path::new(&path));
    let per_filter = check(&arrays);
    eprintln!("sweep {path}: {per_filter:?}");
}

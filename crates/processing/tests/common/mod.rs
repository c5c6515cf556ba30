//! Helpers shared by the integration tests: fixture paths and safetensors reading.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

/// `tests/fixtures/processing` of the repository.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/processing")
}

/// One array of a safetensors file: dtype name, shape and raw little-endian bytes.
pub struct Array {
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Array {
    /// An `(H, W, 3)` u8 array as an image.
    pub fn to_rgb(&self) -> image::RgbImage {
        assert_eq!(self.dtype, safetensors::Dtype::U8);
        assert_eq!(self.shape.len(), 3);
        assert_eq!(self.shape[2], 3);
        image::RgbImage::from_raw(
            self.shape[1] as u32,
            self.shape[0] as u32,
            self.data.clone(),
        )
        .unwrap()
    }

    /// An f32 array as a vector.
    pub fn to_f32(&self) -> Vec<f32> {
        assert_eq!(self.dtype, safetensors::Dtype::F32);
        self.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

/// Every array of a fixture file, by name.
pub fn read_safetensors(name: &str) -> BTreeMap<String, Array> {
    read_safetensors_at(&fixtures().join(name))
}

/// Every array of a safetensors file, by name.
pub fn read_safetensors_at(path: &std::path::Path) -> BTreeMap<String, Array> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                Array {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                },
            )
        })
        .collect()
}

/// Largest absolute difference and how many values differ, between two byte images.
pub fn u8_diff(a: &[u8], b: &[u8]) -> (u8, usize) {
    assert_eq!(a.len(), b.len());
    let mut max = 0;
    let mut count = 0;
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        if d > 0 {
            count += 1;
        }
        max = max.max(d);
    }
    (max, count)
}

/// Largest absolute difference between two f32 slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

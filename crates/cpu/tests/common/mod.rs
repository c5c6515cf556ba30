//! Shared helpers of the CPU integration tests: naive f64 reference arrays with plain index
//! arithmetic, inputs built as (possibly non-contiguous) views together with their reference
//! values, and exact rounding to each dtype. The seeded generator, value distributions, view
//! kinds, shapes, tolerances and comparisons are `glimpse-testkit`'s, shared with the other
//! backends' tests.
//!
//! Every test file includes this module, and none uses all of it (nor all it re-exports).
#![allow(dead_code, unused_imports)]

use glimpse_tensor::{DType, Device, Tensor};
use half::bf16;
use proptest::prelude::*;

pub use glimpse_testkit::{
    Gen, KINDS, Kind, Values, any_kind, any_shape, assert_close_scaled, broadcastable_to, shape_in,
    tol, values,
};

pub fn dev() -> Device {
    glimpse_cpu::device()
}

pub const FLOATS: [DType; 4] = [DType::F16, DType::BF16, DType::F32, DType::F64];
pub const ALL: [DType; 5] = DType::ALL;

// ---------------------------------------------------------------------------------- dtypes

/// `v` rounded to the nearest value of `dtype`, ties to even (computed exactly in f64 without
/// the `half` crate, whose `from_f64` only looks at the upper 32 bits of the f64). U32 follows
/// the documented cast: truncate toward zero, saturate to `0..=u32::MAX` (NaN gives 0, as Rust's
/// `as`).
pub fn round_to(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F64 => v,
        DType::F32 => v as f32 as f64, // Rust's f64 -> f32 is correctly rounded
        DType::F16 => round_float(v, 11, -14, 65504.0),
        DType::BF16 => round_float(v, 8, -126, bf16::MAX.to_f64()),
        DType::U32 => {
            if v.is_nan() {
                0.0
            } else {
                v.trunc().clamp(0.0, u32::MAX as f64)
            }
        }
    }
}

/// Round to a binary format with `p` significand bits (hidden bit included), minimum normal
/// exponent `emin` and largest finite value `max`.
fn round_float(v: f64, p: i32, emin: i32, max: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let a = v.abs();
    let e = (a.log2().floor() as i32).max(emin);
    // log2 may be off by one near powers of two: fix the binade exactly.
    let e = if 2f64.powi(e) > a && e > emin {
        e - 1
    } else if 2f64.powi(e + 1) <= a {
        e + 1
    } else {
        e
    };
    let ulp = 2f64.powi(e - (p - 1));
    let r = (a / ulp).round_ties_even() * ulp;
    let r = if r > max { f64::INFINITY } else { r };
    r.copysign(v)
}

/// Values representable in `dtype` (what a tensor of that dtype holds).
pub fn representable(dtype: DType, v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| round_to(dtype, x)).collect()
}

/// A tensor of `dtype` holding exactly `data` (the caller makes the values representable; the
/// conversion uses the `half` crate, not the library's cast).
pub fn tensor(data: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    glimpse_testkit::tensor(data, shape, dtype, &dev())
}

// ---------------------------------------------------------------------------------- tolerances

/// Machine epsilon (the gap between 1 and the next value) of each float dtype.
pub fn eps(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2f64.powi(-10),
        DType::BF16 => 2f64.powi(-7),
        DType::F32 => 2f64.powi(-23),
        DType::F64 => 2f64.powi(-52),
        DType::U32 => 0.0,
    }
}

/// Compares element-wise with [`tol`] of `dtype`, scale 1 (see [`assert_close_scaled`]).
pub fn assert_close(got: &[f64], want: &[f64], dtype: DType, what: &str) {
    assert_close_scaled(got, want, &[1.0], tol(dtype), what);
}

// ---------------------------------------------------------------------------------- nd arrays

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

pub fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The multi-index of flat row-major position `flat`.
pub fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = flat % shape[d];
        flat /= shape[d];
    }
    idx
}

pub fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
}

/// A naive row-major f64 array.
#[derive(Clone, Debug, PartialEq)]
pub struct Nd {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Nd {
    pub fn new(shape: &[usize], data: Vec<f64>) -> Self {
        assert_eq!(numel(shape), data.len());
        Nd {
            shape: shape.to_vec(),
            data,
        }
    }
    pub fn from_fn(shape: &[usize], f: impl Fn(&[usize]) -> f64) -> Self {
        let data = (0..numel(shape)).map(|i| f(&unravel(i, shape))).collect();
        Nd::new(shape, data)
    }
    pub fn at(&self, idx: &[usize]) -> f64 {
        self.data[ravel(idx, &self.shape)]
    }
    /// Element at `idx` of a shape this array broadcasts to (numpy rules).
    pub fn at_broadcast(&self, idx: &[usize]) -> f64 {
        let lead = idx.len() - self.shape.len();
        let own: Vec<usize> = self
            .shape
            .iter()
            .enumerate()
            .map(|(i, &d)| if d == 1 { 0 } else { idx[lead + i] })
            .collect();
        self.at(&own)
    }
    pub fn of(t: &Tensor) -> Nd {
        Nd::new(t.dims(), values(t))
    }
}

/// The numpy broadcast of two shapes, written naively.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let db = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            if da == 1 { db } else { da }
        })
        .collect()
}

// ---------------------------------------------------------------------------------- inputs

pub fn any_float() -> impl Strategy<Value = DType> {
    glimpse_testkit::any_of(&FLOATS)
}

pub fn any_dtype() -> impl Strategy<Value = DType> {
    glimpse_testkit::any_of(&ALL)
}

/// A naive strided view: the reference for the library's layouts.
#[derive(Clone, Debug)]
pub struct RefView {
    pub base: Vec<f64>,
    pub dims: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
}

impl RefView {
    pub fn contiguous(base: Vec<f64>, dims: &[usize]) -> Self {
        RefView {
            base,
            dims: dims.to_vec(),
            strides: strides_of(dims),
            offset: 0,
        }
    }
    pub fn values(&self) -> Vec<f64> {
        (0..numel(&self.dims))
            .map(|flat| {
                let idx = unravel(flat, &self.dims);
                let pos = self.offset
                    + idx
                        .iter()
                        .zip(&self.strides)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                self.base[pos]
            })
            .collect()
    }
    pub fn permute(&self, perm: &[usize]) -> Self {
        RefView {
            base: self.base.clone(),
            dims: perm.iter().map(|&p| self.dims[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        }
    }
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Self {
        let mut r = self.clone();
        r.dims[dim] = len;
        r.offset += start * self.strides[dim];
        r
    }
    pub fn broadcast_as(&self, shape: &[usize]) -> Self {
        let lead = shape.len() - self.dims.len();
        let mut strides = vec![0; shape.len()];
        for i in 0..self.dims.len() {
            strides[lead + i] = if self.dims[i] == shape[lead + i] {
                self.strides[i]
            } else {
                0
            };
        }
        RefView {
            base: self.base.clone(),
            dims: shape.to_vec(),
            strides,
            offset: self.offset,
        }
    }
    pub fn unsqueeze(&self, dim: usize) -> Self {
        let mut r = self.clone();
        r.dims.insert(dim, 1);
        r.strides.insert(dim, 0);
        r
    }
    pub fn squeeze(&self, dim: usize) -> Self {
        let mut r = self.clone();
        r.dims.remove(dim);
        r.strides.remove(dim);
        r
    }
}

/// A test input: a tensor (maybe a non-contiguous view) and its values in row-major order.
#[derive(Clone, Debug)]
pub struct Input {
    pub t: Tensor,
    pub nd: Nd,
}

impl Input {
    pub fn v(&self) -> &[f64] {
        &self.nd.data
    }
}

/// Builds a tensor of `shape` and `dtype` laid out as `kind`, with values drawn from `vals`
/// (rounded to the dtype). The expected values come from [`RefView`], not from the library.
pub fn input(shape: &[usize], dtype: DType, kind: Kind, vals: Values, rng: &mut Gen) -> Input {
    let rank = shape.len();
    let fill = |n: usize, rng: &mut Gen| -> Vec<f64> {
        (0..n).map(|_| round_to(dtype, vals.draw(rng))).collect()
    };
    // Base dims of a permuted view `base.permute(q)` with the target shape.
    let permuted = |rng: &mut Gen, shape: &[usize]| {
        let q = rng.perm(shape.len());
        let mut base_dims = vec![0; shape.len()];
        for (i, &qi) in q.iter().enumerate() {
            base_dims[qi] = shape[i];
        }
        (q, base_dims)
    };
    let (t, r) = match kind {
        Kind::Contiguous => {
            let data = fill(numel(shape), rng);
            (
                tensor(&data, shape, dtype),
                RefView::contiguous(data, shape),
            )
        }
        Kind::Permuted => {
            let (q, base_dims) = permuted(rng, shape);
            let data = fill(numel(&base_dims), rng);
            let t = tensor(&data, &base_dims, dtype).permute(&q).unwrap();
            (t, RefView::contiguous(data, &base_dims).permute(&q))
        }
        Kind::Narrowed | Kind::PermutedNarrowed => {
            let big: Vec<usize> = shape.iter().map(|&d| d + rng.below(3)).collect();
            let starts: Vec<usize> = shape
                .iter()
                .zip(&big)
                .map(|(&d, &b)| rng.below(b - d + 1))
                .collect();
            let (mut t, mut r) = if matches!(kind, Kind::Narrowed) {
                let data = fill(numel(&big), rng);
                (tensor(&data, &big, dtype), RefView::contiguous(data, &big))
            } else {
                let (q, base_dims) = permuted(rng, &big);
                let data = fill(numel(&base_dims), rng);
                (
                    tensor(&data, &base_dims, dtype).permute(&q).unwrap(),
                    RefView::contiguous(data, &base_dims).permute(&q),
                )
            };
            for d in 0..rank {
                t = t.narrow(d, starts[d], shape[d]).unwrap();
                r = r.narrow(d, starts[d], shape[d]);
            }
            (t, r)
        }
        Kind::Broadcast => {
            let lead = rng.below(rank + 1);
            let small: Vec<usize> = shape[lead..]
                .iter()
                .map(|&d| if rng.coin() { 1 } else { d })
                .collect();
            let data = fill(numel(&small), rng);
            let t = tensor(&data, &small, dtype).broadcast_as(shape).unwrap();
            (t, RefView::contiguous(data, &small).broadcast_as(shape))
        }
    };
    assert_eq!(t.dims(), shape);
    Input {
        t,
        nd: Nd::new(shape, r.values()),
    }
}

//! glimpse-testkit: what the backend test suites share when they check a device against the
//! CPU backend: a seeded generator, inputs built as the same view (permuted, narrowed,
//! broadcast) on two devices, per-dtype tolerances and comparisons, and a proptest runner.
//!
//! [`suite`] is the backend conformance suite built on them: every check takes a [`Target`]
//! (the device under test and the dtypes it holds) and compares the device with the CPU
//! backend. A backend's tests add only how to open their device and which dtypes it holds, and
//! declare the suite's tests with [`primitives_tests!`], [`fused_tests!`] and
//! [`compositions_tests!`]; see `crates/cuda/tests/common` and `crates/wgpu/tests/common`.

pub mod suite;

pub use suite::Target;

use glimpse_tensor::{DType, Device, Tensor};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

pub fn cpu() -> Device {
    glimpse_cpu::device()
}

/// What a test does with a device that may not be there: `opened` when it opened; otherwise
/// one printed line saying why `test` skips, and `None` — or, when the environment variable
/// `require` is `1` (as in CI, where the device must exist), a panic naming it.
///
/// `what` names the device in those messages (`"wgpu adapter"`, `"CUDA device"`).
pub fn device_or_skip<T, E: std::fmt::Display>(
    test: &str,
    what: &str,
    require: &str,
    opened: Result<T, E>,
) -> Option<T> {
    match opened {
        Ok(device) => Some(device),
        Err(e) => {
            if std::env::var(require).is_ok_and(|v| v == "1") {
                panic!("{test}: {require}=1 but no {what} opens: {e}");
            }
            println!("skipping {test}: no {what} ({e})");
            None
        }
    }
}

/// Runs `test` on `cases` values of `strategy` on `dev`, panicking with the shrunk failure.
pub fn run_cases<S>(
    name: &str,
    dev: &Device,
    cases: u32,
    strategy: S,
    test: impl Fn(&Device, S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, |v| test(dev, v)) {
        panic!("{name}: {e}");
    }
}

// ---------------------------------------------------------------------------------- rng

/// SplitMix64: deterministic test data from a proptest-chosen seed.
#[derive(Clone, Debug)]
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
    pub fn perm(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }
}

/// How test values are drawn.
#[derive(Clone, Copy, Debug)]
pub enum Values {
    /// Uniform in `[lo, hi)`.
    Uniform(f64, f64),
    /// Integers in `lo..=hi` (exact in every dtype, so ties and equalities happen).
    Ints(i64, i64),
    /// Magnitude uniform in `[lo, hi)` with a random sign (keeps divisors away from 0).
    AwayFromZero(f64, f64),
}

impl Values {
    pub fn draw(self, rng: &mut Gen) -> f64 {
        match self {
            Values::Uniform(lo, hi) => rng.range(lo, hi),
            Values::Ints(lo, hi) => lo as f64 + rng.below((hi - lo + 1) as usize) as f64,
            Values::AwayFromZero(lo, hi) => {
                let m = rng.range(lo, hi);
                if rng.coin() { m } else { -m }
            }
        }
    }
}

// ---------------------------------------------------------------------------------- tensors

/// A tensor of `dtype` holding `data` converted with the `half` crate (u32 by `as`).
pub fn tensor(data: &[f64], shape: &[usize], dtype: DType, dev: &Device) -> Tensor {
    try_tensor(data, shape, dtype, dev).unwrap()
}

/// [`tensor`], or the device's error (a dtype it does not hold).
pub fn try_tensor(
    data: &[f64],
    shape: &[usize],
    dtype: DType,
    dev: &Device,
) -> glimpse_tensor::Result<Tensor> {
    let shape = shape.to_vec();
    match dtype {
        DType::F16 => Tensor::from_vec(
            data.iter().map(|&x| f16::from_f64(x)).collect::<Vec<_>>(),
            shape,
            dev,
        ),
        DType::BF16 => Tensor::from_vec(
            data.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>(),
            shape,
            dev,
        ),
        DType::F32 => Tensor::from_vec(
            data.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            shape,
            dev,
        ),
        DType::F64 => Tensor::from_vec(data.to_vec(), shape, dev),
        DType::U32 => Tensor::from_vec(
            data.iter().map(|&x| x as u32).collect::<Vec<_>>(),
            shape,
            dev,
        ),
    }
}

pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().unwrap()
}

/// How an input tensor is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Contiguous,
    /// A permutation of a contiguous tensor.
    Permuted,
    /// A narrow (offset and gaps) of a larger tensor.
    Narrowed,
    /// Narrowed in every dimension after a permutation.
    PermutedNarrowed,
    /// Size-1 dimensions (and missing leading ones) stretched with stride 0.
    Broadcast,
}

pub const KINDS: [Kind; 5] = [
    Kind::Contiguous,
    Kind::Permuted,
    Kind::Narrowed,
    Kind::PermutedNarrowed,
    Kind::Broadcast,
];

pub fn any_kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(KINDS.to_vec())
}

/// One of `dtypes` (a backend's list).
pub fn any_of(dtypes: &[DType]) -> impl Strategy<Value = DType> + use<> {
    prop::sample::select(dtypes.to_vec())
}

/// Shapes of rank `0..=4` with dimensions `0..6`.
pub fn any_shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..6, 0..=4)
}

/// Shapes of rank `lo..=hi` with dimensions `dlo..6`.
pub fn shape_in(lo: usize, hi: usize, dlo: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(dlo..6usize, lo..=hi)
}

/// The same input on both devices: identical bits, identical view (strides, offset).
#[derive(Clone, Debug)]
pub struct Pair {
    pub cpu: Tensor,
    pub gpu: Tensor,
}

/// How a view is made from a contiguous base: the base's dims, then a permutation, narrows
/// and a broadcast, applied in that order.
#[derive(Clone, Debug)]
struct Plan {
    base: Vec<usize>,
    perm: Option<Vec<usize>>,
    narrow: Vec<(usize, usize)>,
    broadcast: Option<Vec<usize>>,
}

impl Plan {
    fn new(shape: &[usize], kind: Kind, rng: &mut Gen) -> Plan {
        let rank = shape.len();
        // Base dims of `base.permute(q)` having `dims`.
        let permuted = |rng: &mut Gen, dims: &[usize]| {
            let q = rng.perm(dims.len());
            let mut base = vec![0; dims.len()];
            for (i, &qi) in q.iter().enumerate() {
                base[qi] = dims[i];
            }
            (q, base)
        };
        match kind {
            Kind::Contiguous => Plan {
                base: shape.to_vec(),
                perm: None,
                narrow: Vec::new(),
                broadcast: None,
            },
            Kind::Permuted => {
                let (q, base) = permuted(rng, shape);
                Plan {
                    base,
                    perm: Some(q),
                    narrow: Vec::new(),
                    broadcast: None,
                }
            }
            Kind::Narrowed | Kind::PermutedNarrowed => {
                let big: Vec<usize> = shape.iter().map(|&d| d + rng.below(3)).collect();
                let narrow = (0..rank)
                    .map(|d| (rng.below(big[d] - shape[d] + 1), shape[d]))
                    .collect();
                let (perm, base) = if kind == Kind::Narrowed {
                    (None, big)
                } else {
                    let (q, base) = permuted(rng, &big);
                    (Some(q), base)
                };
                Plan {
                    base,
                    perm,
                    narrow,
                    broadcast: None,
                }
            }
            Kind::Broadcast => {
                let lead = rng.below(rank + 1);
                let small = shape[lead..]
                    .iter()
                    .map(|&d| if rng.coin() { 1 } else { d })
                    .collect();
                Plan {
                    base: small,
                    perm: None,
                    narrow: Vec::new(),
                    broadcast: Some(shape.to_vec()),
                }
            }
        }
    }

    fn apply(&self, mut t: Tensor) -> Tensor {
        if let Some(q) = &self.perm {
            t = t.permute(q).unwrap();
        }
        for (d, &(start, len)) in self.narrow.iter().enumerate() {
            t = t.narrow(d, start, len).unwrap();
        }
        if let Some(s) = &self.broadcast {
            t = t.broadcast_as(s.clone()).unwrap();
        }
        t
    }
}

/// An input of `shape` and `dtype` laid out as `kind` on both devices, values from `vals`.
pub fn pair(
    shape: &[usize],
    dtype: DType,
    kind: Kind,
    vals: Values,
    rng: &mut Gen,
    gpu: &Device,
) -> Pair {
    let plan = Plan::new(shape, kind, rng);
    let n: usize = plan.base.iter().product();
    let data: Vec<f64> = (0..n).map(|_| vals.draw(rng)).collect();
    let cpu_t = plan.apply(tensor(&data, &plan.base, dtype, &cpu()));
    let gpu_t = plan.apply(tensor(&data, &plan.base, dtype, gpu));
    assert_eq!(cpu_t.dims(), shape);
    assert_eq!(cpu_t.layout(), gpu_t.layout());
    Pair {
        cpu: cpu_t,
        gpu: gpu_t,
    }
}

/// A shape that broadcasts to `out`: a suffix of it with some dimensions set to 1.
pub fn broadcastable_to(out: &[usize], rng: &mut Gen) -> Vec<usize> {
    let lead = rng.below(out.len() + 1);
    out[lead..]
        .iter()
        .map(|&d| if rng.below(3) == 0 { 1 } else { d })
        .collect()
}

// ---------------------------------------------------------------------------------- checks

/// The relative tolerance of each dtype, written down once (a device against the CPU backend,
/// or the CPU backend against a naive f64 reference).
///
/// * `F64`: `1e-12`. Everything is computed in f64; results differ only by summation order and
///   libm, a few thousand ulps (2.2e-16) at most.
/// * `F32`: `1e-5` (about 80 ulps of 1.2e-7): f32 libm functions and f32 accumulation.
/// * `F16`: `2e-3`, two ulps (eps 9.8e-4): inputs are exact f16 values, the arithmetic runs in
///   f32 and the output is rounded once to f16 (half an ulp), plus the f32 error.
/// * `BF16`: `1.6e-2`, two ulps (eps 7.8e-3), for the same reason.
/// * `U32`: exact.
///
/// A value passes when `|got - want| <= tol * (|want| + scale)`, where `scale` is the size of
/// the terms that went into it (1 for element-wise functions of O(1) values, `sum |x_i|` for
/// sums and dot products), which turns the relative bound into an absolute one near zero.
pub fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
        DType::U32 => 0.0,
    }
}

/// Compares element-wise: `|got - want| <= t * (|want| + scale)` (`scale` one value or one
/// per element: the size of the terms behind each element); NaN must meet NaN and infinities
/// must be equal. `got` is the device's (or the backend's) result, `want` the reference.
pub fn assert_close_scaled(got: &[f64], want: &[f64], scale: &[f64], t: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let s = if scale.len() == 1 { scale[0] } else { scale[i] };
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= t * (w.abs() + s)
        };
        assert!(
            ok,
            "{what}: element {i}: got {g}, want {w} (tol {t}, scale {s})\n got: {}\nwant: {}",
            around(got, i),
            around(want, i)
        );
    }
}

/// `v` for a failure message: whole when short, else the 8 elements either side of `i`.
fn around(v: &[f64], i: usize) -> String {
    const SIDE: usize = 8;
    if v.len() <= 4 * SIDE {
        return format!("{v:?}");
    }
    let (lo, hi) = (i.saturating_sub(SIDE), (i + SIDE + 1).min(v.len()));
    format!("[{lo}..{hi}] of {}: {:?}", v.len(), &v[lo..hi])
}

/// The GPU result has the CPU result's dims and dtype and its values within `tol(dtype)`
/// (scale 1).
pub fn assert_matches(gpu: &Tensor, cpu: &Tensor, what: &str) {
    assert_eq!(gpu.dims(), cpu.dims(), "{what}: dims");
    assert_eq!(gpu.dtype(), cpu.dtype(), "{what}: dtype");
    assert_close_scaled(&values(gpu), &values(cpu), &[1.0], tol(cpu.dtype()), what);
}

/// The GPU result equals the CPU result exactly (same dims, dtype, values; NaN meets NaN).
pub fn assert_same(gpu: &Tensor, cpu: &Tensor, what: &str) {
    assert_eq!(gpu.dims(), cpu.dims(), "{what}: dims");
    assert_eq!(gpu.dtype(), cpu.dtype(), "{what}: dtype");
    assert_close_scaled(&values(gpu), &values(cpu), &[0.0], 0.0, what);
}

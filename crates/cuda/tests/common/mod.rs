//! Shared helpers of the CUDA tests: the device (or a one-line skip), its dtypes and the
//! [`target`] of the backend conformance suite; the rest (a deterministic RNG, inputs built as
//! the same view on the CPU and on the GPU, tolerances, comparisons, the suite itself) is
//! `glimpse-testkit`, shared with the other backends' tests.
//!
//! Every test file includes this module, and none uses all of it.
#![allow(dead_code)]

use glimpse_tensor::{DType, Device};
pub use glimpse_testkit::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// The GPU dtypes (f64 is not supported on CUDA).
pub const DTYPES: [DType; 4] = [DType::F16, DType::BF16, DType::F32, DType::U32];
pub const FLOATS: [DType; 3] = [DType::F16, DType::BF16, DType::F32];

pub fn any_float() -> impl Strategy<Value = DType> {
    any_of(&FLOATS)
}

pub fn any_dtype() -> impl Strategy<Value = DType> {
    any_of(&DTYPES)
}

/// CUDA device 0 with poisoned allocations (every fresh buffer is NaN, so an element a
/// kernel forgets to write fails the comparison) and synchronised launches. Without a GPU,
/// prints one line saying why `test` skips and returns `None`; `GLIMPSE_REQUIRE_CUDA=1`
/// turns a missing GPU into a failure.
///
/// `GLIMPSE_CUDA_TESTS_ON_CPU=1` hands out the CPU device instead, to check the tests
/// themselves (their inputs, references and tolerances) on a machine without a GPU; tests of
/// CUDA-only behaviour then fail by design.
pub fn gpu(test: &str) -> Option<Device> {
    if std::env::var("GLIMPSE_CUDA_TESTS_ON_CPU").is_ok_and(|v| v == "1") {
        return Some(cpu());
    }
    let b = device_or_skip(
        test,
        "CUDA device",
        "GLIMPSE_REQUIRE_CUDA",
        glimpse_cuda::backend(0),
    )?;
    b.set_poison(true);
    Some(glimpse_cuda::device(0).expect("the backend opened"))
}

/// The CUDA device as a target of the backend conformance suite (`glimpse_testkit::suite`):
/// the GPU dtypes, the default head dims (those of the tensor-core attention kernels), default
/// tolerances. `None` (skip) without a GPU, as [`gpu`]; under `GLIMPSE_CUDA_TESTS_ON_CPU=1` the
/// CPU device with the CUDA dtypes.
pub fn target(test: &str) -> Option<Target> {
    let dev = gpu(test)?;
    let name = match dev.location().backend {
        "cuda" => "cuda".to_string(),
        other => format!("{other} standing in for cuda"),
    };
    Some(Target::new(name, dev, &DTYPES))
}

/// Runs `test` on `cases` values of `strategy` on the GPU, or skips (see [`gpu`]).
pub fn check<S>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(&Device, S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let Some(dev) = gpu(name) else { return };
    run_cases(name, &dev, cases, strategy, test);
}

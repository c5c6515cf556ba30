//! Shared helpers of the wgpu tests: the device (or a one-line skip), its dtypes and the
//! [`target`] of the backend conformance suite; the rest (a deterministic RNG, inputs built as
//! the same view on the CPU and on the device, tolerances, comparisons, the suite itself) is
//! `glimpse-testkit`, shared with the other backends' tests.
//!
//! Every test file includes this module, and none uses all of it.
#![allow(dead_code)]

use std::sync::Arc;

use glimpse_tensor::{DType, Device};
pub use glimpse_testkit::*;
use glimpse_wgpu::WgpuBackend;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// The wgpu device 0 and its backend, with poisoned allocations (every buffer an op allocates
/// is NaN first, so an element a kernel forgets to write fails the comparison). Without an
/// adapter, prints one line saying why `test` skips and returns `None`;
/// `GLIMPSE_REQUIRE_WGPU=1` turns a missing adapter into a failure.
pub fn wgpu(test: &str) -> Option<(Device, Arc<WgpuBackend>)> {
    let b = device_or_skip(
        test,
        "wgpu adapter",
        "GLIMPSE_REQUIRE_WGPU",
        glimpse_wgpu::backend(0),
    )?;
    b.set_poison(true);
    Some((glimpse_wgpu::device(0).expect("the backend opened"), b))
}

/// The device alone (see [`wgpu`]).
pub fn gpu(test: &str) -> Option<Device> {
    wgpu(test).map(|(d, _)| d)
}

/// The dtypes the device holds (f32 and u32; f16 where the adapter has `SHADER_F16`), or
/// f32 and u32 when there is no adapter (the strategies are then never run).
pub fn dtypes() -> Vec<DType> {
    glimpse_wgpu::backend(0)
        .map(|b| b.dtypes())
        .unwrap_or_else(|_| vec![DType::F32, DType::U32])
}

/// The float dtypes the device computes with.
pub fn floats() -> Vec<DType> {
    dtypes().into_iter().filter(|d| d.is_float()).collect()
}

pub fn any_float() -> impl Strategy<Value = DType> {
    any_of(&floats())
}

pub fn any_dtype() -> impl Strategy<Value = DType> {
    any_of(&dtypes())
}

/// The wgpu device as a target of the backend conformance suite (`glimpse_testkit::suite`):
/// the adapter's dtypes ([`dtypes`]), default head dims and tolerances, poisoned allocations.
/// On a software adapter (lavapipe, in CI) the large contrastive check runs at N = 2048, not
/// 12 000 (5 minutes there). `None` (skip) without an adapter, as [`wgpu`].
pub fn target(test: &str) -> Option<Target> {
    let (dev, be) = wgpu(test)?;
    let t = Target::new("wgpu", dev, &be.dtypes());
    Some(if be.adapter_info().device_type == wgpu::DeviceType::Cpu {
        t.with_contrastive_large_n(2048)
    } else {
        t
    })
}

/// Runs `test` on `cases` values of `strategy` on the device, or skips (see [`wgpu`]).
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

/// Serialises the tests of one binary that read the device's queue counters (the device is
/// shared by every test thread).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

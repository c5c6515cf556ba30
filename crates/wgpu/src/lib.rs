//! glimpse-wgpu: the wgpu backend of glimpse (Vulkan, Metal, DX12).
//!
//! * Kernels are hand-written WGSL in `kernels/wgsl/*.wgsl` (the `glimpse-kernels` crate),
//!   written once against the element-type aliases `T` and `U`, with workgroup and tile sizes
//!   as `override` constants. A module is compiled per (file, element types) and a pipeline
//!   per (entry point, constants) at first use, then cached; a shader that fails to compile
//!   is `Error::KernelCompile` with wgpu's message.
//! * dtypes: `F32` and `U32` everywhere, `F16` where the adapter offers `SHADER_F16`
//!   ([`WgpuBackend::dtypes`] says which); `BF16` and `F64` are `Error::UnsupportedDType`.
//! * The queue: dispatches are recorded, not submitted; a batch goes to the GPU as one
//!   command buffer (one compute pass) when it holds 512 dispatches, when the host reads a
//!   tensor back, or on [`synchronize`]. Each dispatch's parameters are a slice of one buffer
//!   per submission. Output buffers come from a pool bucketed by size class
//!   (`GLIMPSE_WGPU_POOL_MB` caps the idle bytes kept, default 2048). [`WgpuBackend::stats`]
//!   counts dispatches, submissions, read-backs and compiled pipelines.
//!
//! * No op waits for the device: an index out of range or a u32 division by zero is found by
//!   the kernel and reported (as `Error::IndexOutOfRange` / `InvalidArgument`) by the next
//!   read-back or [`synchronize`] of the thread that issued the op; until then a bad index
//!   reads 0.
//!
//! `GLIMPSE_WGPU_POISON=1` fills every buffer an op allocates with 0xFF bytes first, so an
//! output element a kernel does not write reads as NaN.
//!
//! ```no_run
//! use glimpse_tensor::{DType, Tensor};
//! # fn main() -> glimpse_tensor::Result<()> {
//! let device = glimpse_wgpu::device(0)?;
//! let a = Tensor::rand_normal(0.0, 1.0, [64, 32], DType::F32, 0, &device)?;
//! let b = Tensor::rand_normal(0.0, 1.0, [32, 16], DType::F32, 1, &device)?;
//! assert_eq!(a.matmul(&b)?.dims(), &[64, 16]);
//! # Ok(()) }
//! ```

mod attention;
mod backend;
mod contrastive;
mod impl_backend;
mod matmul;
mod norm;
mod ops;
mod patch_embed;
mod pool;
mod storage;

pub use backend::{Elem, QueueStats, WgpuBackend, kernel_variants};
pub use pool::PoolStats;
pub use storage::{WgpuStorage, storage_of, wgpu_storage};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use glimpse_tensor::{Device, Error, Result};

use crate::backend::lock;

/// The backend of wgpu adapter `ordinal` (in the order [`adapter_names`] lists them), opened
/// once per process and shared.
pub fn backend(ordinal: usize) -> Result<Arc<WgpuBackend>> {
    static OPEN: OnceLock<Mutex<HashMap<usize, Arc<WgpuBackend>>>> = OnceLock::new();
    let mut open = lock(OPEN.get_or_init(Default::default));
    if let Some(b) = open.get(&ordinal) {
        return Ok(b.clone());
    }
    let b = Arc::new(WgpuBackend::create(ordinal)?);
    open.insert(ordinal, b.clone());
    Ok(b)
}

/// The wgpu device of adapter `ordinal` (one shared handle per ordinal). Fails with
/// [`glimpse_tensor::Error::Backend`] when there is no such adapter.
pub fn device(ordinal: usize) -> Result<Device> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let mut devices = lock(DEVICES.get_or_init(Default::default));
    if let Some(d) = devices.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Device::new(backend(ordinal)?);
    devices.insert(ordinal, d.clone());
    Ok(d)
}

/// The backend behind a wgpu [`Device`] (an error for devices of other backends).
pub fn backend_of(device: &Device) -> Result<Arc<WgpuBackend>> {
    let loc = device.location();
    if loc.backend != "wgpu" {
        return Err(Error::invalid(
            "wgpu",
            format!("{device} is not a wgpu device"),
        ));
    }
    backend(loc.ordinal)
}

/// Submits the work queued on `device` (a wgpu device) and waits for it. Timing code calls
/// it before reading a clock.
pub fn synchronize(device: &Device) -> Result<()> {
    backend_of(device)?.synchronize()
}

/// Names and backend APIs of the adapters this build can open, in ordinal order.
pub fn adapter_names() -> Vec<String> {
    backend::adapters()
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
        })
        .collect()
}

/// True when adapter 0 can be opened.
pub fn is_available() -> bool {
    device(0).is_ok()
}

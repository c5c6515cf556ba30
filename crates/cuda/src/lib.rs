//! glimpse-cuda: the CUDA backend of glimpse.
//!
//! * The driver, NVRTC, cuBLAS and cuBLASLt are loaded at run time (cudarc's
//!   `dynamic-loading`), so the crate builds and its tests run without a CUDA toolkit; on a machine without CUDA,
//!   [`device`] returns an error and [`is_available`] is false (never a panic).
//! * Kernels are hand-written CUDA C++ in `kernels/cuda/*.cu` (the `glimpse-kernels` crate),
//!   compiled by NVRTC for the device's own architecture (`sm_XY`) at first use and cached.
//! * Storage: one typed buffer per dtype ([`CudaStorage`]): `f16`, `bf16`, `f32`, `u32`
//!   (`f64` is not supported). Half types are computed in f32 and stored in half.
//! * Matrix products go through cuBLAS (`cublasGemmStridedBatchedEx`, f32 compute, TF32 off
//!   unless `GLIMPSE_CUDA_ALLOW_TF32=1` or [`CudaBackend::set_allow_tf32`]).
//! * Kernels written but not yet run on a GPU are [`KernelCandidates`], off unless
//!   `GLIMPSE_CUDA_CANDIDATES` (`all`, or a comma-separated list) or
//!   [`CudaBackend::set_kernel_candidates`] turns them on; [`with_kernel_choices`] turns them
//!   on for the calling thread only.
//!
//! Environment: `GLIMPSE_CUDA_POISON=1` fills every fresh allocation with 0xFF bytes (NaN) and
//! synchronises after every kernel, `GLIMPSE_CUDA_SYNC=1` only synchronises (errors are then
//! reported by the op that caused them); `GLIMPSE_CUDA_ATTN_FWD_ROWS` and
//! `GLIMPSE_CUDA_CANDIDATES` choose kernels; `GLIMPSE_CUDA_SMEM_LIMIT` (e.g. `99K`) makes a
//! card choose the kernels of a card with less shared memory per block. All are read when a
//! device is first opened.
//!
//! ```no_run
//! use glimpse_tensor::{DType, Tensor};
//! # fn main() -> glimpse_tensor::Result<()> {
//! let device = glimpse_cuda::device(0)?;
//! let a = Tensor::rand_normal(0.0, 1.0, [64, 32], DType::F32, 0, &device)?;
//! let b = Tensor::rand_normal(0.0, 1.0, [32, 16], DType::F32, 1, &device)?;
//! assert_eq!(a.matmul(&b)?.dims(), &[64, 16]);
//! # Ok(()) }
//! ```

mod backend;
mod fused;
mod klayout;
mod lt;
mod matmul;
mod nvrtc;
mod ops;
mod storage;

pub use backend::{
    CudaBackend, KernelCandidates, KernelChoices, linear_lt_products_on_this_thread,
    with_kernel_choices,
};
pub use nvrtc::{Library, compile_to_ptx, library_present};
pub use storage::{CudaData, CudaStorage, cuda_storage, storage_of};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use glimpse_tensor::{Device, Result};

/// The backend of CUDA device `ordinal`, opened once per process and shared.
pub fn backend(ordinal: usize) -> Result<Arc<CudaBackend>> {
    static OPEN: OnceLock<Mutex<HashMap<usize, Arc<CudaBackend>>>> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(b) = open.get(&ordinal) {
        return Ok(b.clone());
    }
    let b = Arc::new(CudaBackend::create(ordinal)?);
    open.insert(ordinal, b.clone());
    Ok(b)
}

/// The CUDA device `ordinal` (one shared handle per ordinal). Fails with
/// [`glimpse_tensor::Error::Backend`] when there is no usable driver or no such device.
pub fn device(ordinal: usize) -> Result<Device> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let mut devices = DEVICES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(d) = devices.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Device::new(backend(ordinal)?);
    devices.insert(ordinal, d.clone());
    Ok(d)
}

/// Waits until every operation queued on `device` (a CUDA device) has finished, reporting
/// asynchronous errors. Timing code calls it before reading a clock.
pub fn synchronize(device: &Device) -> Result<()> {
    let loc = device.location();
    if loc.backend != "cuda" {
        return Err(glimpse_tensor::Error::invalid(
            "synchronize",
            format!("{device} is not a CUDA device"),
        ));
    }
    backend(loc.ordinal)?.synchronize()
}

/// True when CUDA device 0 can be opened (driver present, at least one device).
pub fn is_available() -> bool {
    device(0).is_ok()
}

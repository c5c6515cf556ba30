//! glimpse-cpu: the CPU backend of glimpse.
//!
//! It is the reference every other backend is tested against, and fast in its own right:
//! rayon-parallel primitives, a packed AVX-512/AVX2 matrix product ([`gemm`]), and fused
//! kernels ([`kernels`]) for attention, patch embedding, the contrastive loss, layer norm,
//! softmax and GELU. Half types are computed in `f32` and stored in half.
//!
//! ```
//! use glimpse_tensor::{DType, Tensor};
//! # fn main() -> glimpse_tensor::Result<()> {
//! let device = glimpse_cpu::device();
//! let a = Tensor::rand_normal(0.0, 1.0, [64, 32], DType::F32, 0, &device)?;
//! let b = Tensor::rand_normal(0.0, 1.0, [32, 16], DType::F32, 1, &device)?;
//! assert_eq!(a.matmul(&b)?.dims(), &[64, 16]);
//! # Ok(()) }
//! ```

mod backend;
mod float;
mod fused;
pub mod gemm;
pub mod kernels;
mod ops;
mod pack_cache;
mod random;
mod storage;
mod strided;

pub use backend::{CpuBackend, cpu_storage};
pub use storage::{AlignedBytes, Buf, CpuStorage};

use std::sync::{Arc, OnceLock};

/// The CPU device (one shared handle).
pub fn device() -> glimpse_tensor::Device {
    static DEVICE: OnceLock<glimpse_tensor::Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| glimpse_tensor::Device::new(Arc::new(CpuBackend)))
        .clone()
}

//! glimpse-tensor: the types every glimpse crate shares.
//!
//! * [`Tensor`]: an n-dimensional array on a [`Device`], with view operations that move no
//!   data, primitives, and fused ops (attention, patch embedding, contrastive loss, softmax,
//!   layer norm, GELU).
//! * [`Backend`]: the object-safe trait a compute backend implements. Fused ops have default
//!   compositions ([`compose`]) so a new backend only needs the primitives.
//! * [`safetensors`] loading and saving, and the [`VarBuilder`] that models load weights with.
//!
//! ```
//! # fn main() -> glimpse_tensor::Result<()> {
//! // Backends live in their own crates and hand out a `Device`; model code needs nothing else.
//! let device = glimpse_cpu::device();
//! use glimpse_tensor::{DType, Tensor};
//! let x = Tensor::rand_normal(0.0, 1.0, [2, 3], DType::F32, 7, &device)?;
//! let y = x.softmax(-1)?;
//! assert_eq!(y.dims(), &[2, 3]);
//! # Ok(()) }
//! ```

pub mod backend;
pub mod compose;
mod device;
mod dtype;
mod error;
mod fs;
mod layout;
pub mod merge;
pub mod random;
pub mod safetensors;
mod shape;
mod tensor;
mod var_builder;

pub use backend::{
    AttentionGrads, AttentionOptions, AttentionOutput, Backend, BackendStorage, BinaryOp,
    ContrastiveGrads, ContrastiveOutput, DeviceLocation, GeluKind, LayerNormGrads, PatchEmbedGrads,
    PatchEmbedOptions, ReduceOp, SharedBytes, Storage, UnaryOp,
};
pub use device::Device;
pub use dtype::{DType, HostSlice, HostVec, WithDType};
pub use error::{Error, Result};
pub use fs::write_atomic;
pub use layout::{ContiguousRuns, Layout, StridedIndices};
pub use shape::{Dim, Shape};
pub use tensor::Tensor;
pub use var_builder::VarBuilder;

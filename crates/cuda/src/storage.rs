//! [`CudaStorage`]: one typed device buffer per dtype.

use std::any::Any;
use std::sync::Arc;

use cudarc::driver::CudaSlice;
use glimpse_tensor::{BackendStorage, DType, Error, Layout, Result, Shape, Storage, Tensor};
use half::{bf16, f16};

/// A typed device buffer.
#[derive(Debug)]
pub enum CudaData {
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
    F32(CudaSlice<f32>),
    U32(CudaSlice<u32>),
}

/// The storage of the CUDA backend: a device buffer of one dtype and its element count.
///
/// The buffer may hold more elements than [`BackendStorage::len`]: CUDA cannot allocate zero
/// bytes, so an empty storage owns a one-element buffer. Kernels must use `len`, never the
/// slice length.
#[derive(Debug)]
pub struct CudaStorage {
    data: CudaData,
    len: usize,
}

/// Applies `$body` to the typed `CudaSlice` of a [`CudaData`], binding it to `$s`.
macro_rules! with_data {
    ($data:expr, $s:ident => $body:expr) => {
        match $data {
            $crate::storage::CudaData::F16($s) => $body,
            $crate::storage::CudaData::BF16($s) => $body,
            $crate::storage::CudaData::F32($s) => $body,
            $crate::storage::CudaData::U32($s) => $body,
        }
    };
}
pub(crate) use with_data;

impl CudaStorage {
    /// Wraps a buffer holding `len` meaningful elements (`len <= slice length`).
    pub fn new(data: CudaData, len: usize) -> Self {
        debug_assert!(len <= with_data!(&data, s => s.len()));
        CudaStorage { data, len }
    }

    /// The typed buffer.
    pub fn data(&self) -> &CudaData {
        &self.data
    }

    /// The typed buffer, taken out of the storage (to write into it before wrapping it again).
    pub fn into_data(self) -> CudaData {
        self.data
    }

    /// The buffer of an `F32` storage (an error for other dtypes).
    pub fn as_f32(&self) -> Result<&CudaSlice<f32>> {
        match &self.data {
            CudaData::F32(s) => Ok(s),
            _ => Err(self.wrong_dtype(DType::F32)),
        }
    }

    /// The buffer of an `F16` storage.
    pub fn as_f16(&self) -> Result<&CudaSlice<f16>> {
        match &self.data {
            CudaData::F16(s) => Ok(s),
            _ => Err(self.wrong_dtype(DType::F16)),
        }
    }

    /// The buffer of a `BF16` storage.
    pub fn as_bf16(&self) -> Result<&CudaSlice<bf16>> {
        match &self.data {
            CudaData::BF16(s) => Ok(s),
            _ => Err(self.wrong_dtype(DType::BF16)),
        }
    }

    /// The buffer of a `U32` storage.
    pub fn as_u32(&self) -> Result<&CudaSlice<u32>> {
        match &self.data {
            CudaData::U32(s) => Ok(s),
            _ => Err(self.wrong_dtype(DType::U32)),
        }
    }

    fn wrong_dtype(&self, want: DType) -> Error {
        Error::DTypeMismatch {
            op: "cuda storage access",
            expected: want,
            got: self.dtype(),
        }
    }

    /// Wraps this storage as a contiguous tensor of `shape` on the device of `like` (which
    /// must be this backend's device). The way fused ops return new tensors.
    pub fn into_tensor(self, shape: impl Into<Shape>, like: &Tensor) -> Result<Tensor> {
        let storage: Storage = Arc::new(self);
        Tensor::from_storage(storage, Layout::contiguous(shape), like.device().clone())
    }
}

impl BackendStorage for CudaStorage {
    fn dtype(&self) -> DType {
        match &self.data {
            CudaData::F16(_) => DType::F16,
            CudaData::BF16(_) => DType::BF16,
            CudaData::F32(_) => DType::F32,
            CudaData::U32(_) => DType::U32,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Downcasts a storage handed to the CUDA backend.
pub fn cuda_storage(s: &dyn BackendStorage) -> Result<&CudaStorage> {
    s.as_any()
        .downcast_ref::<CudaStorage>()
        .ok_or_else(|| Error::backend("cuda", format!("got a storage of another backend ({s:?})")))
}

/// The CUDA storage of a tensor.
pub fn storage_of(t: &Tensor) -> Result<&CudaStorage> {
    cuda_storage(&**t.storage())
}

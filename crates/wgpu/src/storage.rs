//! [`WgpuStorage`]: a pooled device buffer, its dtype and its element count.

use std::any::Any;
use std::sync::Arc;

use glimpse_tensor::{BackendStorage, DType, Error, Layout, Result, Shape, Storage, Tensor};

use crate::pool::PooledBuffer;

/// The storage of the wgpu backend. The buffer is whole words long and may be longer than
/// `len` elements (buffers come in size classes); kernels must use `len`, never the buffer size.
#[derive(Debug)]
pub struct WgpuStorage {
    buffer: PooledBuffer,
    dtype: DType,
    len: usize,
}

impl WgpuStorage {
    pub(crate) fn new(buffer: PooledBuffer, dtype: DType, len: usize) -> Self {
        WgpuStorage { buffer, dtype, len }
    }

    /// The wgpu buffer behind the storage.
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.buffer()
    }

    /// A contiguous tensor of `shape` over this storage, on the device of `like`.
    pub fn into_tensor(self, shape: impl Into<Shape>, like: &Tensor) -> Result<Tensor> {
        Tensor::from_storage(
            Arc::new(self) as Storage,
            Layout::contiguous(shape),
            like.device().clone(),
        )
    }
}

impl BackendStorage for WgpuStorage {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Downcasts a storage handed to the wgpu backend.
pub fn wgpu_storage(s: &dyn BackendStorage) -> Result<&WgpuStorage> {
    s.as_any().downcast_ref::<WgpuStorage>().ok_or_else(|| {
        Error::backend(
            "wgpu",
            format!("a {:?} storage reached the wgpu backend", s.dtype()),
        )
    })
}

/// The wgpu storage of a tensor (an error for tensors of other backends).
pub fn storage_of(t: &Tensor) -> Result<&WgpuStorage> {
    wgpu_storage(t.storage().as_ref())
}

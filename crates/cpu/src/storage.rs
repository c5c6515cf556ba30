//! CPU storage: one typed buffer, owned or borrowed from shared bytes (a memory-mapped file).

use std::any::Any;

use glimpse_tensor::{BackendStorage, DType, HostSlice, HostVec, SharedBytes};
use half::{bf16, f16};

/// A typed buffer: an owned `Vec`, or elements read in place from shared bytes.
#[derive(Debug)]
pub enum Buf<T> {
    Owned(Vec<T>),
    /// Elements read in place from shared bytes (made by [`Buf::shared`]).
    Shared(AlignedBytes),
}

/// Shared bytes whose start is aligned for the element type and whose length is a multiple of
/// its size. Only [`Buf::shared`] makes them, after checking both.
#[derive(Debug)]
pub struct AlignedBytes(SharedBytes);

impl AlignedBytes {
    pub fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }
}

impl<T: bytemuck::Pod> Buf<T> {
    /// Borrows `bytes` in place if they are aligned for `T`; `None` otherwise.
    pub fn shared(bytes: SharedBytes) -> Option<Self> {
        bytemuck::try_cast_slice::<u8, T>(bytes.bytes()).ok()?;
        Some(Buf::Shared(AlignedBytes(bytes)))
    }

    pub fn as_slice(&self) -> &[T] {
        match self {
            Buf::Owned(v) => v,
            // `shared` checked alignment and length once; the bytes never change.
            Buf::Shared(b) => bytemuck::cast_slice(b.bytes()),
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Buf::Shared(_))
    }
}

/// The storage of the CPU backend.
#[derive(Debug)]
pub enum CpuStorage {
    F16(Buf<f16>),
    BF16(Buf<bf16>),
    F32(Buf<f32>),
    F64(Buf<f64>),
    U32(Buf<u32>),
}

/// Applies `$body` to the typed slice of a `CpuStorage`, binding it to `$v`.
#[macro_export]
#[doc(hidden)]
macro_rules! with_slice {
    ($storage:expr, $v:ident => $body:expr) => {
        match $storage {
            $crate::CpuStorage::F16(b) => {
                let $v = b.as_slice();
                $body
            }
            $crate::CpuStorage::BF16(b) => {
                let $v = b.as_slice();
                $body
            }
            $crate::CpuStorage::F32(b) => {
                let $v = b.as_slice();
                $body
            }
            $crate::CpuStorage::F64(b) => {
                let $v = b.as_slice();
                $body
            }
            $crate::CpuStorage::U32(b) => {
                let $v = b.as_slice();
                $body
            }
        }
    };
}

impl CpuStorage {
    pub fn from_host(data: HostSlice<'_>) -> Self {
        match data {
            HostSlice::F16(v) => CpuStorage::F16(Buf::Owned(v.to_vec())),
            HostSlice::BF16(v) => CpuStorage::BF16(Buf::Owned(v.to_vec())),
            HostSlice::F32(v) => CpuStorage::F32(Buf::Owned(v.to_vec())),
            HostSlice::F64(v) => CpuStorage::F64(Buf::Owned(v.to_vec())),
            HostSlice::U32(v) => CpuStorage::U32(Buf::Owned(v.to_vec())),
        }
    }

    pub fn from_host_vec(data: HostVec) -> Self {
        match data {
            HostVec::F16(v) => CpuStorage::F16(Buf::Owned(v)),
            HostVec::BF16(v) => CpuStorage::BF16(Buf::Owned(v)),
            HostVec::F32(v) => CpuStorage::F32(Buf::Owned(v)),
            HostVec::F64(v) => CpuStorage::F64(Buf::Owned(v)),
            HostVec::U32(v) => CpuStorage::U32(Buf::Owned(v)),
        }
    }

    /// Reads `bytes` in place when aligned, copies them otherwise.
    pub fn from_bytes(dtype: DType, bytes: SharedBytes) -> Option<Self> {
        fn typed<T: bytemuck::Pod>(bytes: SharedBytes) -> Option<Buf<T>> {
            if !bytes.bytes().len().is_multiple_of(std::mem::size_of::<T>()) {
                return None;
            }
            Some(match Buf::shared(bytes.clone()) {
                Some(b) => b,
                None => Buf::Owned(bytemuck::pod_collect_to_vec(bytes.bytes())),
            })
        }
        Some(match dtype {
            DType::F16 => CpuStorage::F16(typed(bytes)?),
            DType::BF16 => CpuStorage::BF16(typed(bytes)?),
            DType::F32 => CpuStorage::F32(typed(bytes)?),
            DType::F64 => CpuStorage::F64(typed(bytes)?),
            DType::U32 => CpuStorage::U32(typed(bytes)?),
        })
    }

    /// True if the elements are read in place from shared bytes (no copy was made).
    pub fn is_shared(&self) -> bool {
        with_buf_shared(self)
    }

    pub fn f32s(&self) -> Option<&[f32]> {
        match self {
            CpuStorage::F32(b) => Some(b.as_slice()),
            _ => None,
        }
    }

    pub fn u32s(&self) -> Option<&[u32]> {
        match self {
            CpuStorage::U32(b) => Some(b.as_slice()),
            _ => None,
        }
    }
}

fn with_buf_shared(s: &CpuStorage) -> bool {
    match s {
        CpuStorage::F16(b) => b.is_shared(),
        CpuStorage::BF16(b) => b.is_shared(),
        CpuStorage::F32(b) => b.is_shared(),
        CpuStorage::F64(b) => b.is_shared(),
        CpuStorage::U32(b) => b.is_shared(),
    }
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::U32(_) => DType::U32,
        }
    }

    fn len(&self) -> usize {
        with_slice!(self, v => v.len())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

//! Strided views as kernels see them: [`KLayout`] (the `GlLayout` struct of
//! `kernels/cuda/common.cuh`, passed by value) and the merging of dimensions that keeps ranks
//! within [`MAX_RANK`].

use cudarc::driver::DeviceRepr;
use glimpse_tensor::merge::Merged;
pub use glimpse_tensor::merge::contiguous_strides;
use glimpse_tensor::{Error, Layout, Result};

/// The largest rank a kernel accepts, after merging (`GL_MAX_RANK` in `common.cuh`).
pub const MAX_RANK: usize = 8;

/// A strided view passed to a kernel by value: the mirror of `GlLayout` in `common.cuh`
/// (`unsigned int rank, pad; unsigned long long offset, dims[8], strides[8]`; 144 bytes,
/// 8-byte aligned). Unused entries are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KLayout {
    rank: u32,
    pad: u32,
    offset: u64,
    dims: [u64; MAX_RANK],
    strides: [u64; MAX_RANK],
}

// SAFETY: `KLayout` is `repr(C)`, `Copy`, holds only integers and has the exact field order,
// sizes and alignment of `GlLayout` in common.cuh, so the kernel reads the bytes it expects.
unsafe impl DeviceRepr for KLayout {}

impl KLayout {
    /// A view of `dims` with `strides` (in elements) starting at `offset`. Fails when the rank
    /// exceeds [`MAX_RANK`].
    pub fn new(dims: &[usize], strides: &[usize], offset: usize) -> Result<Self> {
        debug_assert_eq!(dims.len(), strides.len());
        if dims.len() > MAX_RANK {
            return Err(Error::backend(
                "cuda",
                format!(
                    "a strided view of rank {} (dims {dims:?}, strides {strides:?}) remains after \
                     merging contiguous dimensions; kernels take rank {MAX_RANK} at most, so make \
                     the tensor contiguous first",
                    dims.len()
                ),
            ));
        }
        let mut k = KLayout {
            rank: dims.len() as u32,
            pad: 0,
            offset: offset as u64,
            dims: [0; MAX_RANK],
            strides: [0; MAX_RANK],
        };
        for (i, (&d, &s)) in dims.iter().zip(strides).enumerate() {
            k.dims[i] = d as u64;
            k.strides[i] = s as u64;
        }
        Ok(k)
    }

    /// The kernel view of one tensor layout, dimensions merged.
    pub fn of(layout: &Layout) -> Result<Self> {
        let m = Merged::new(layout.dims(), &[layout.strides()], None);
        KLayout::new(&m.dims, &m.strides[0], layout.offset())
    }
}

/// The kernel view of view `v` of a [`Merged`] set, starting at `offset`.
pub trait MergedExt {
    fn klayout(&self, v: usize, offset: usize) -> Result<KLayout>;
}

impl MergedExt for Merged {
    fn klayout(&self, v: usize, offset: usize) -> Result<KLayout> {
        KLayout::new(&self.dims, &self.strides[v], offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klayout_matches_the_c_struct() {
        assert_eq!(std::mem::size_of::<KLayout>(), 8 + 8 + 2 * 8 * MAX_RANK);
        assert_eq!(std::mem::align_of::<KLayout>(), 8);
        assert!(KLayout::new(&[1; 9], &[1; 9], 0).is_err());
        let k = KLayout::of(&Layout::contiguous([2, 3])).unwrap();
        assert_eq!((k.rank, k.dims[0]), (1, 6));
    }
}

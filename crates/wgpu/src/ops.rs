//! The primitives of the wgpu backend: memory, random numbers, copies, element-wise ops,
//! reductions, matrix products and index ops. Each records one or a few dispatches of the
//! kernels in `kernels/wgsl`, after merging dimensions so that views stay small.

use glimpse_tensor::merge::Merged;
use glimpse_tensor::{
    BackendStorage, DType, Error, HostSlice, HostVec, Layout, Result, WithDType, random,
};
use half::f16;

use crate::backend::{Kernel, Params, WgpuBackend, unsupported, workgroups_for};
use crate::storage::WgpuStorage;

/// Threads per workgroup of the 1-D element-wise kernels (their `WG` override's default).
pub(crate) const WG: u32 = 256;

/// The 32-bit word that fills a buffer of `dtype` with `value` (converted exactly as the CPU
/// backend converts it; a 16-bit pattern is repeated in both halves).
fn fill_word(dtype: DType, value: f64) -> Result<u32> {
    Ok(match dtype {
        DType::F16 => {
            let h = u32::from(<f16 as WithDType>::from_f64(value).to_bits());
            h | (h << 16)
        }
        DType::F32 => (value as f32).to_bits(),
        DType::U32 => value as u32,
        DType::BF16 | DType::F64 => {
            return Err(unsupported("full", dtype));
        }
    })
}

/// Pushes the merged view of `layout` alone.
pub(crate) fn push_view(p: &mut Params, layout: &Layout) -> Result<()> {
    let m = Merged::new(layout.dims(), &[layout.strides()], None);
    p.view(&m.dims, &m.strides[0], layout.offset())?;
    Ok(())
}

impl WgpuBackend {
    // ------------------------------------------------------------------ memory

    pub(crate) fn op_full(&self, dtype: DType, len: usize, value: f64) -> Result<WgpuStorage> {
        let word = fill_word(dtype, value)?;
        let out = self.alloc(dtype, len)?;
        let words = (len * dtype.size_in_bytes()).div_ceil(4) as u64;
        self.fill_words(out.buffer(), words, word)?;
        Ok(out)
    }

    pub(crate) fn op_upload(&self, data: HostSlice<'_>) -> Result<WgpuStorage> {
        let bytes = data.as_bytes();
        self.upload_raw(data.dtype(), data.len(), bytes)
    }

    pub(crate) fn op_download(&self, src: &WgpuStorage, layout: &Layout) -> Result<HostVec> {
        let dtype = src.dtype();
        let esize = dtype.size_in_bytes() as u64;
        let Some(range) = layout.contiguous_range() else {
            // Gather the view on the device first: one dispatch instead of a host loop.
            let dense = self.op_copy_strided(src, layout)?;
            return self.op_download(&dense, &Layout::contiguous(layout.shape().clone()));
        };
        // Copies move whole words: read the covering word range and cut the elements out.
        let (start, end) = (range.start as u64 * esize, range.end as u64 * esize);
        let (w0, w1) = (start / 4 * 4, end.div_ceil(4) * 4);
        let bytes = self.download_bytes(src.buffer(), w0..w1)?;
        let cut = &bytes[(start - w0) as usize..(end - w0) as usize];
        HostVec::from_bytes(dtype, cut)
            .ok_or_else(|| Error::backend("wgpu", "read-back of a partial element"))
    }

    pub(crate) fn op_rand(
        &self,
        dtype: DType,
        len: usize,
        sample: impl Fn(usize) -> f64,
    ) -> Result<WgpuStorage> {
        // The CPU backend's counter-based streams, drawn on the host and uploaded once: the
        // same seed gives the same tensor on every backend.
        match dtype {
            DType::F32 => {
                let v: Vec<f32> = (0..len).map(|i| sample(i) as f32).collect();
                self.op_upload(HostSlice::F32(&v))
            }
            DType::F16 => {
                self.elem(dtype, "rand")?;
                let v: Vec<f16> = (0..len).map(|i| f16::from_f64(sample(i))).collect();
                self.op_upload(HostSlice::F16(&v))
            }
            DType::U32 => Err(Error::invalid("rand", "u32 is not a float dtype")),
            DType::BF16 | DType::F64 => Err(unsupported("rand", dtype)),
        }
    }

    pub(crate) fn op_rand_uniform(
        &self,
        dtype: DType,
        len: usize,
        low: f64,
        high: f64,
        seed: u64,
    ) -> Result<WgpuStorage> {
        match dtype {
            DType::F16 => self.op_rand(dtype, len, |i| {
                random::uniform_at::<f16>(low, high, seed, i).to_f64()
            }),
            _ => self.op_rand(dtype, len, |i| {
                f64::from(random::uniform_at::<f32>(low, high, seed, i))
            }),
        }
    }

    pub(crate) fn op_rand_normal(
        &self,
        dtype: DType,
        len: usize,
        mean: f64,
        std: f64,
        seed: u64,
    ) -> Result<WgpuStorage> {
        self.op_rand(dtype, len, |i| random::normal_at::<f64>(mean, std, seed, i))
    }

    // ------------------------------------------------------------------ copies

    pub(crate) fn op_copy_strided(
        &self,
        src: &WgpuStorage,
        layout: &Layout,
    ) -> Result<WgpuStorage> {
        let dtype = src.dtype();
        let t = self.elem(dtype, "copy_strided")?;
        let n = layout.elem_count();
        let out = self.alloc(dtype, n)?;
        if n == 0 {
            return Ok(out);
        }
        let mut p = Params::new();
        p.usize(n)?;
        push_view(&mut p, layout)?;
        self.dispatch(
            &Kernel::new("copy.wgsl", "copy_strided", t),
            &p,
            &[out.buffer(), src.buffer()],
            workgroups_for(n, WG),
        )?;
        Ok(out)
    }
}

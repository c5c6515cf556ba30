//! The primitives of the CUDA backend: memory, random numbers, element-wise ops, reductions
//! and index ops. Each launches one kernel of `kernels/cuda/{elementwise,reduce,indexing,
//! random}.cu` (after merging dimensions so that kernels see rank <= 8); the matrix product is
//! in `matmul.rs`.

use cudarc::driver::{CudaSlice, DevicePtrMut, LaunchConfig, PushKernelArg};
use glimpse_tensor::{
    BinaryOp, DType, Error, HostSlice, HostVec, Layout, ReduceOp, Result, UnaryOp,
};

use crate::backend::{CudaBackend, drv, grid_for, grid_for_vec16, unsupported};
use crate::klayout::{KLayout, MergedExt, contiguous_strides};
use crate::storage::{CudaData, CudaStorage, with_data};
use glimpse_tensor::merge::Merged;

/// The kernel-name suffix of a dtype.
pub(crate) fn suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F32 => "f32",
        DType::U32 => "u32",
        DType::F64 => "f64",
    }
}

/// The suffix of the raw-bits kernels (fill, copy, where, index ops) for a dtype's width.
fn bits(dtype: DType) -> &'static str {
    if dtype.size_in_bytes() == 2 {
        "b16"
    } else {
        "b32"
    }
}

fn mismatch(op: &str) -> Error {
    Error::backend(
        "cuda",
        format!("{op}: operands of different dtypes reached the backend"),
    )
}

/// The 16- or 32-bit pattern of `value` converted to `dtype` (`DType::bits_of`).
fn fill_bits(dtype: DType, value: f64) -> Result<u32> {
    dtype
        .bits_of(value)
        .ok_or_else(|| unsupported("full", dtype))
}

impl CudaBackend {
    // ------------------------------------------------------------------ memory

    pub(crate) fn op_full(&self, dtype: DType, len: usize, value: f64) -> Result<CudaStorage> {
        let pattern = fill_bits(dtype, value)?;
        let mut data = self.alloc_data(dtype, len)?;
        if len > 0 {
            self.fill(&mut data, len, pattern)?;
        }
        Ok(CudaStorage::new(data, len))
    }

    /// Writes the bit pattern `pattern` (the low 16 bits for half types) to the first `len`
    /// elements of `data`.
    pub(crate) fn fill(&self, data: &mut CudaData, len: usize, pattern: u32) -> Result<()> {
        let n = len as u64;
        let narrow = pattern as u16;
        let (name, launched) = match data {
            CudaData::F16(_) | CudaData::BF16(_) => {
                let f = self.function("elementwise.cu", "fill_b16")?;
                let mut b = self.stream().launch_builder(&f);
                b.arg(&narrow);
                match data {
                    CudaData::F16(s) => b.arg(s),
                    CudaData::BF16(s) => b.arg(s),
                    _ => unreachable!(),
                };
                b.arg(&n);
                // SAFETY: fill_b16(gl_u16 value, gl_u16* out, gl_u64 n): a u16, a 16-bit
                // buffer of at least `len` elements, and n = len.
                ("fill_b16", unsafe { b.launch(grid_for(len)) }.map(|_| ()))
            }
            CudaData::F32(_) | CudaData::U32(_) => {
                let f = self.function("elementwise.cu", "fill_b32")?;
                let mut b = self.stream().launch_builder(&f);
                b.arg(&pattern);
                match data {
                    CudaData::F32(s) => b.arg(s),
                    CudaData::U32(s) => b.arg(s),
                    _ => unreachable!(),
                };
                b.arg(&n);
                // SAFETY: fill_b32(gl_u32 value, gl_u32* out, gl_u64 n): a u32, a 32-bit
                // buffer of at least `len` elements, and n = len.
                ("fill_b32", unsafe { b.launch(grid_for(len)) }.map(|_| ()))
            }
        };
        self.check_launch(name, launched)
    }

    pub(crate) fn op_upload(&self, data: HostSlice<'_>) -> Result<CudaStorage> {
        let len = data.len();
        if len == 0 {
            return self.alloc_storage(data.dtype(), 0);
        }
        let up = |e| drv("uploading", e);
        let stream = self.stream();
        let data = match data {
            HostSlice::F16(v) => CudaData::F16(stream.memcpy_stod(v).map_err(up)?),
            HostSlice::BF16(v) => CudaData::BF16(stream.memcpy_stod(v).map_err(up)?),
            HostSlice::F32(v) => CudaData::F32(stream.memcpy_stod(v).map_err(up)?),
            HostSlice::U32(v) => CudaData::U32(stream.memcpy_stod(v).map_err(up)?),
            HostSlice::F64(_) => return Err(unsupported("upload", DType::F64)),
        };
        Ok(CudaStorage::new(data, len))
    }

    /// Copies little-endian bytes straight into a new buffer (no host-side decoding).
    pub(crate) fn op_upload_bytes(&self, dtype: DType, bytes: &[u8]) -> Result<CudaStorage> {
        if dtype == DType::F64 {
            return Err(unsupported("upload_bytes", dtype));
        }
        let size = dtype.size_in_bytes();
        if !bytes.len().is_multiple_of(size) {
            return Err(Error::invalid(
                "upload_bytes",
                format!(
                    "{} bytes is not a whole number of {dtype} elements",
                    bytes.len()
                ),
            ));
        }
        let len = bytes.len() / size;
        let mut data = self.alloc_data(dtype, len)?;
        if len > 0 {
            let stream = self.stream();
            let copied = with_data!(&mut data, s => {
                let (ptr, _record) = s.device_ptr_mut(stream);
                // SAFETY: the buffer holds `len * size == bytes.len()` bytes from `ptr`; the
                // copy is ordered on this stream and the host waits for it below, before
                // `bytes` can go away.
                unsafe {
                    cudarc::driver::result::memcpy_htod_async(ptr, bytes, stream.cu_stream())
                }
            });
            copied.map_err(|e| drv("uploading bytes", e))?;
            self.synchronize()?;
        }
        Ok(CudaStorage::new(data, len))
    }

    pub(crate) fn op_download(&self, src: &CudaStorage, layout: &Layout) -> Result<HostVec> {
        use glimpse_tensor::BackendStorage;
        let n = layout.elem_count();
        if n == 0 {
            return Ok(match src.dtype() {
                DType::F16 => HostVec::F16(Vec::new()),
                DType::BF16 => HostVec::BF16(Vec::new()),
                DType::F32 => HostVec::F32(Vec::new()),
                DType::U32 => HostVec::U32(Vec::new()),
                DType::F64 => HostVec::F64(Vec::new()),
            });
        }
        let (owned, start) = match layout.contiguous_range() {
            Some(r) => (None, r.start),
            None => (Some(self.copy_contiguous(src, layout)?), 0),
        };
        let data = owned.as_ref().unwrap_or(src).data();
        let stream = self.stream();
        let down = |e| drv("downloading", e);
        Ok(match data {
            CudaData::F16(s) => HostVec::F16(
                stream
                    .memcpy_dtov(&s.slice(start..start + n))
                    .map_err(down)?,
            ),
            CudaData::BF16(s) => HostVec::BF16(
                stream
                    .memcpy_dtov(&s.slice(start..start + n))
                    .map_err(down)?,
            ),
            CudaData::F32(s) => HostVec::F32(
                stream
                    .memcpy_dtov(&s.slice(start..start + n))
                    .map_err(down)?,
            ),
            CudaData::U32(s) => HostVec::U32(
                stream
                    .memcpy_dtov(&s.slice(start..start + n))
                    .map_err(down)?,
            ),
        })
    }

    // ------------------------------------------------------------------ random

    /// Uniform samples in `[a, b)` (`normal == false`) or normal samples with mean `a` and
    /// standard deviation `b`.
    pub(crate) fn op_random(
        &self,
        normal: bool,
        dtype: DType,
        len: usize,
        a: f64,
        b: f64,
        seed: u64,
    ) -> Result<CudaStorage> {
        let op = if normal {
            "rand_normal"
        } else {
            "rand_uniform"
        };
        match dtype {
            DType::F16 | DType::BF16 | DType::F32 => {}
            DType::U32 => return Err(Error::invalid(op, "u32 is not a float dtype")),
            DType::F64 => return Err(unsupported(op, dtype)),
        }
        let mut data = self.alloc_data(dtype, len)?;
        if len > 0 {
            let name = format!("{op}_{}", suffix(dtype));
            let f = self.function("random.cu", &name)?;
            let n = len as u64;
            let mut builder = self.stream().launch_builder(&f);
            with_data!(&mut data, s => builder.arg(s));
            builder.arg(&n).arg(&seed).arg(&a).arg(&b);
            // SAFETY: rand_{uniform,normal}_<dt>(T* out, gl_u64 n, gl_u64 seed, double, double):
            // `out` is a buffer of `dtype` with at least `len` elements, n = len, then a u64
            // seed and two f64 parameters.
            let launched = unsafe { builder.launch(grid_for(len)) }.map(|_| ());
            self.check_launch(&name, launched)?;
        }
        Ok(CudaStorage::new(data, len))
    }

    // ------------------------------------------------------------------ copies

    /// A contiguous copy of a view (any strides, offset and zero strides).
    pub(crate) fn copy_contiguous(
        &self,
        src: &CudaStorage,
        layout: &Layout,
    ) -> Result<CudaStorage> {
        use glimpse_tensor::BackendStorage;
        let n = layout.elem_count();
        let mut out = self.alloc_data(src.dtype(), n)?;
        if n == 0 {
            return Ok(CudaStorage::new(out, n));
        }
        if let Some(r) = layout.contiguous_range() {
            let stream = self.stream();
            let copied = match (src.data(), &mut out) {
                (CudaData::F16(s), CudaData::F16(d)) => {
                    stream.memcpy_dtod(&s.slice(r), &mut d.slice_mut(0..n))
                }
                (CudaData::BF16(s), CudaData::BF16(d)) => {
                    stream.memcpy_dtod(&s.slice(r), &mut d.slice_mut(0..n))
                }
                (CudaData::F32(s), CudaData::F32(d)) => {
                    stream.memcpy_dtod(&s.slice(r), &mut d.slice_mut(0..n))
                }
                (CudaData::U32(s), CudaData::U32(d)) => {
                    stream.memcpy_dtod(&s.slice(r), &mut d.slice_mut(0..n))
                }
                _ => return Err(mismatch("copy")),
            };
            copied.map_err(|e| drv("copying", e))?;
            return Ok(CudaStorage::new(out, n));
        }
        let dims = layout.dims();
        let m = Merged::new(dims, &[layout.strides(), &contiguous_strides(dims)], None);
        let src_l = m.klayout(0, layout.offset())?;
        let dst_l = m.klayout(1, 0)?;
        self.copy_view(src, &src_l, &mut out, &dst_l, n)?;
        Ok(CudaStorage::new(out, n))
    }

    /// `out[dst view] = src[src view]` for `n` elements (both views have the same dims).
    fn copy_view(
        &self,
        src: &CudaStorage,
        src_l: &KLayout,
        out: &mut CudaData,
        dst_l: &KLayout,
        n: usize,
    ) -> Result<()> {
        use glimpse_tensor::BackendStorage;
        let name = format!("copy_{}", bits(src.dtype()));
        let f = self.function("elementwise.cu", &name)?;
        let n64 = n as u64;
        let mut b = self.stream().launch_builder(&f);
        b.arg(src_l);
        with_data!(src.data(), s => b.arg(s));
        b.arg(dst_l);
        match (src.data(), &mut *out) {
            (CudaData::F16(_), CudaData::F16(d)) => b.arg(d),
            (CudaData::BF16(_), CudaData::BF16(d)) => b.arg(d),
            (CudaData::F32(_), CudaData::F32(d)) => b.arg(d),
            (CudaData::U32(_), CudaData::U32(d)) => b.arg(d),
            _ => return Err(mismatch("copy")),
        };
        b.arg(&n64);
        // SAFETY: copy_b<w>(GlLayout src, const T* x, GlLayout dst, T* out, gl_u64 n): two
        // KLayouts (GlLayout's mirror) and two buffers of the same dtype whose width <w>
        // matches the kernel; the views have `n` elements and stay inside their buffers (the
        // tensor crate checked the source view, the destination view is built by the caller
        // inside `out`).
        let launched =
            unsafe { b.launch(grid_for_vec16(n, src.dtype().size_in_bytes())) }.map(|_| ());
        self.check_launch(&name, launched)
    }

    pub(crate) fn op_concat(
        &self,
        parts: &[(&CudaStorage, &Layout)],
        dim: usize,
    ) -> Result<CudaStorage> {
        use glimpse_tensor::BackendStorage;
        let (first, first_l) = parts
            .first()
            .ok_or_else(|| Error::invalid("cat", "no tensors to concatenate"))?;
        let dtype = first.dtype();
        let mut out_dims = first_l.dims().to_vec();
        out_dims[dim] = parts.iter().map(|(_, l)| l.dims()[dim]).sum();
        let total: usize = out_dims.iter().product();
        let out_strides = contiguous_strides(&out_dims);
        let mut out = self.alloc_data(dtype, total)?;
        let mut at = 0;
        for (s, l) in parts {
            if s.dtype() != dtype {
                return Err(mismatch("concat"));
            }
            let n = l.elem_count();
            if n > 0 {
                let m = Merged::new(l.dims(), &[l.strides(), &out_strides], None);
                let src_l = m.klayout(0, l.offset())?;
                let dst_l = m.klayout(1, at * out_strides[dim])?;
                self.copy_view(s, &src_l, &mut out, &dst_l, n)?;
            }
            at += l.dims()[dim];
        }
        Ok(CudaStorage::new(out, total))
    }

    pub(crate) fn op_cast(
        &self,
        src: &CudaStorage,
        layout: &Layout,
        dtype: DType,
    ) -> Result<CudaStorage> {
        use glimpse_tensor::BackendStorage;
        if dtype == DType::F64 {
            return Err(unsupported("cast", dtype));
        }
        if dtype == src.dtype() {
            return self.copy_contiguous(src, layout);
        }
        let n = layout.elem_count();
        let mut out = self.alloc_data(dtype, n)?;
        if n > 0 {
            let name = format!("cast_{}_{}", suffix(src.dtype()), suffix(dtype));
            let f = self.function("elementwise.cu", &name)?;
            let kl = KLayout::of(layout)?;
            let n64 = n as u64;
            let mut b = self.stream().launch_builder(&f);
            b.arg(&kl);
            with_data!(src.data(), s => b.arg(s));
            with_data!(&mut out, d => b.arg(d));
            b.arg(&n64);
            // SAFETY: cast_<s>_<d>(GlLayout src, const S* x, D* out, gl_u64 n): the kernel is
            // chosen by the two dtypes, so `x` and `out` have its element types; the view has
            // `n` elements inside `x`, and `out` holds at least `n`.
            let launched = unsafe { b.launch(grid_for(n)) }.map(|_| ());
            self.check_launch(&name, launched)?;
        }
        Ok(CudaStorage::new(out, n))
    }

    // ------------------------------------------------------------------ element-wise

    pub(crate) fn op_unary(
        &self,
        op: UnaryOp,
        src: &CudaStorage,
        layout: &Layout,
    ) -> Result<CudaStorage> {
        use glimpse_tensor::BackendStorage;
        let dtype = src.dtype();
        let (code, p0, p1) = op.code();
        if dtype == DType::U32
            && !matches!(
                op,
                UnaryOp::Abs
                    | UnaryOp::Relu
                    | UnaryOp::Sqr
                    | UnaryOp::Affine { .. }
                    | UnaryOp::Clamp { .. }
            )
        {
            return Err(unsupported("unary", dtype));
        }
        let n = layout.elem_count();
        let mut out = self.alloc_data(dtype, n)?;
        if n > 0 {
            let name = format!("unary_{}", suffix(dtype));
            let f = self.function("elementwise.cu", &name)?;
            let kl = KLayout::of(layout)?;
            let n64 = n as u64;
            let mut b = self.stream().launch_builder(&f);
            b.arg(&code).arg(&p0).arg(&p1).arg(&kl);
            with_data!(src.data(), s => b.arg(s));
            with_data!(&mut out, d => b.arg(d));
            b.arg(&n64);
            // The float kernels have a 16-byte dense path; u32 goes element by element.
            let grid = if dtype == DType::U32 {
                grid_for(n)
            } else {
                grid_for_vec16(n, dtype.size_in_bytes())
            };
            // SAFETY: unary_<dt>(gl_u32 op, double p0, double p1, GlLayout src, const T* x,
            // T* out, gl_u64 n): u32, f64, f64, KLayout, then input and output buffers of the
            // kernel's dtype; the view has `n` elements inside `x`, `out` holds `n`.
            let launched = unsafe { b.launch(grid) }.map(|_| ());
            self.check_launch(&name, launched)?;
        }
        Ok(CudaStorage::new(out, n))
    }

    pub(crate) fn op_binary(
        &self,
        op: BinaryOp,
        lhs: &CudaStorage,
        ll: &Layout,
        rhs: &CudaStorage,
        rl: &Layout,
    ) -> Result<CudaStorage> {
        use glimpse_tensor::BackendStorage;
        let dtype = lhs.dtype();
        if rhs.dtype() != dtype || ll.dims() != rl.dims() {
            return Err(mismatch("binary"));
        }
        let compare = op.is_comparison();
        let out_dtype = if compare { DType::U32 } else { dtype };
        let n = ll.elem_count();
        let mut out = self.alloc_data(out_dtype, n)?;
        if n == 0 {
            return Ok(CudaStorage::new(out, n));
        }
        let m = Merged::new(ll.dims(), &[ll.strides(), rl.strides()], None);
        let la = m.klayout(0, ll.offset())?;
        let lb = m.klayout(1, rl.offset())?;
        let code = op.code();
        let kind = if compare { "compare" } else { "binary" };
        let name = format!("{kind}_{}", suffix(dtype));
        let f = self.function("elementwise.cu", &name)?;
        let n64 = n as u64;
        let integer_arith = dtype == DType::U32 && !compare;
        let mut flag: Option<CudaSlice<u32>> = if integer_arith {
            Some(self.alloc_zeros::<u32>(1)?)
        } else {
            None
        };
        let mut b = self.stream().launch_builder(&f);
        b.arg(&code).arg(&la);
        with_data!(lhs.data(), s => b.arg(s));
        b.arg(&lb);
        with_data!(rhs.data(), s => b.arg(s));
        with_data!(&mut out, d => b.arg(d));
        b.arg(&n64);
        if let Some(flag) = flag.as_mut() {
            b.arg(flag);
        }
        // Float arithmetic has a 16-byte dense path; comparisons and u32 go element by element.
        let grid = if compare || integer_arith {
            grid_for(n)
        } else {
            grid_for_vec16(n, dtype.size_in_bytes())
        };
        // SAFETY: binary_<dt>(gl_u32 op, GlLayout la, const T* a, GlLayout lb, const T* b,
        // T* out, gl_u64 n[, gl_u32* div_by_zero for u32]) or compare_<dt>(.., gl_u32* out,
        // gl_u64 n): the kernel is picked by the operands' dtype, `out` has the kernel's output
        // type (u32 for comparisons), both views have `n` elements inside their buffers, and
        // the u32 kernel gets its one-element flag buffer.
        let launched = unsafe { b.launch(grid) }.map(|_| ());
        self.check_launch(&name, launched)?;
        if op == BinaryOp::Div
            && let Some(flag) = &flag
        {
            let seen = self
                .stream()
                .memcpy_dtov(flag)
                .map_err(|e| drv("reading the division flag", e))?;
            if seen[0] != 0 {
                return Err(Error::invalid("div", "integer division by zero"));
            }
        }
        Ok(CudaStorage::new(out, n))
    }

    pub(crate) fn op_where(
        &self,
        cond: &CudaStorage,
        cl: &Layout,
        on_true: &CudaStorage,
        tl: &Layout,
        on_false: &CudaStorage,
        fl: &Layout,
    ) -> Result<CudaStorage> {
        use glimpse_tensor::BackendStorage;
        let dtype = on_true.dtype();
        if on_false.dtype() != dtype || cond.dtype() != DType::U32 {
            return Err(mismatch("where_cond"));
        }
        let n = cl.elem_count();
        let mut out = self.alloc_data(dtype, n)?;
        if n == 0 {
            return Ok(CudaStorage::new(out, n));
        }
        let m = Merged::new(cl.dims(), &[cl.strides(), tl.strides(), fl.strides()], None);
        let (lc, lt, lf) = (
            m.klayout(0, cl.offset())?,
            m.klayout(1, tl.offset())?,
            m.klayout(2, fl.offset())?,
        );
        let name = format!("where_{}", bits(dtype));
        let f = self.function("elementwise.cu", &name)?;
        let n64 = n as u64;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&lc).arg(cond.as_u32()?).arg(&lt);
        with_data!(on_true.data(), s => b.arg(s));
        b.arg(&lf);
        with_data!(on_false.data(), s => b.arg(s));
        with_data!(&mut out, d => b.arg(d));
        b.arg(&n64);
        // SAFETY: where_b<w>(GlLayout lc, const gl_u32* c, GlLayout lt, const T* t,
        // GlLayout lf, const T* f, T* out, gl_u64 n): the condition is u32, both branches and
        // the output share the dtype whose width <w> names the kernel, and all three views
        // have `n` elements inside their buffers.
        let launched = unsafe { b.launch(grid_for(n)) }.map(|_| ());
        self.check_launch(&name, launched)?;
        Ok(CudaStorage::new(out, n))
    }

    // ------------------------------------------------------------------ reductions

    pub(crate) fn op_reduce(
        &self,
        op: ReduceOp,
        src: &CudaStorage,
        layout: &Layout,
        dim: usize,
    ) -> Result<CudaStorage> {
        use glimpse_tensor::BackendStorage;
        let dtype = src.dtype();
        let (dims, strides) = (layout.dims(), layout.strides());
        if dim >= dims.len() {
            return Err(Error::DimOutOfRange {
                op: "reduce",
                dim: dim as isize,
                rank: dims.len(),
            });
        }
        let (len, stride) = (dims[dim], strides[dim]);
        let outer_dims: Vec<usize> = dims
            .iter()
            .enumerate()
            .filter(|&(d, _)| d != dim)
            .map(|(_, &x)| x)
            .collect();
        let outer_strides: Vec<usize> = strides
            .iter()
            .enumerate()
            .filter(|&(d, _)| d != dim)
            .map(|(_, &x)| x)
            .collect();
        let rows: usize = outer_dims.iter().product();
        let (arg, code, out_dtype) = match op {
            ReduceOp::Sum => (false, 0u32, dtype),
            ReduceOp::Max => (false, 1, dtype),
            ReduceOp::Min => (false, 2, dtype),
            ReduceOp::ArgMax => (true, 0, DType::U32),
            ReduceOp::ArgMin => (true, 1, DType::U32),
        };
        let mut out = self.alloc_data(out_dtype, rows)?;
        if rows == 0 {
            return Ok(CudaStorage::new(out, rows));
        }
        let m = Merged::new(&outer_dims, &[&outer_strides], None);
        let outer = m.klayout(0, layout.offset())?;
        let name = format!(
            "{}_{}",
            if arg { "argreduce" } else { "reduce" },
            suffix(dtype)
        );
        let f = self.function("reduce.cu", &name)?;
        let threads = (len.next_power_of_two()).clamp(32, 256) as u32;
        let cfg = LaunchConfig {
            grid_dim: (rows.min(65_535) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows64, len64, stride64) = (rows as u64, len as u64, stride as u64);
        let mut b = self.stream().launch_builder(&f);
        b.arg(&code)
            .arg(&outer)
            .arg(&rows64)
            .arg(&len64)
            .arg(&stride64);
        with_data!(src.data(), s => b.arg(s));
        with_data!(&mut out, d => b.arg(d));
        // SAFETY: {arg,}reduce_<dt>(gl_u32 op, GlLayout outer, gl_u64 rows, gl_u64 len,
        // gl_u64 stride, const T* x, T-or-u32* out): the input has the kernel's dtype and
        // every `row start + j * stride` (j < len) lies inside the checked view; `out` holds
        // `rows` elements of the output dtype (u32 for arg reductions); blockDim is a power of
        // two <= GL_REDUCE_THREADS as the shared-memory tree needs.
        let launched = unsafe { b.launch(cfg) }.map(|_| ());
        self.check_launch(&name, launched)?;
        Ok(CudaStorage::new(out, rows))
    }

    // ------------------------------------------------------------------ index ops

    /// A device cell for the first bad index of an index op (all ones = none).
    fn index_error_cell(&self) -> Result<CudaSlice<u64>> {
        self.stream()
            .memcpy_stod(&[u64::MAX])
            .map_err(|e| drv("allocating the index error cell", e))
    }

    /// Reads the cell back (waits for the kernel) and reports a bad index.
    fn check_index_cell(&self, op: &'static str, cell: &CudaSlice<u64>, size: usize) -> Result<()> {
        let v = self
            .stream()
            .memcpy_dtov(cell)
            .map_err(|e| drv("reading the index error cell", e))?[0];
        if v == u64::MAX {
            Ok(())
        } else {
            Err(Error::IndexOutOfRange {
                op,
                index: (v & 0xffff_ffff) as usize,
                size,
            })
        }
    }

    /// Checks indices on the host; used when the op itself has no element to compute (the
    /// CPU backend reports bad indices even then).
    fn check_ids_on_host(
        &self,
        op: &'static str,
        ids: &CudaStorage,
        il: &Layout,
        size: usize,
    ) -> Result<()> {
        if il.elem_count() == 0 {
            return Ok(());
        }
        let HostVec::U32(v) = self.op_download(ids, il)? else {
            return Err(mismatch(op));
        };
        match v.iter().find(|&&i| i as usize >= size) {
            Some(&bad) => Err(Error::IndexOutOfRange {
                op,
                index: bad as usize,
                size,
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn op_index_select(
        &self,
        src: &CudaStorage,
        sl: &Layout,
        ids: &CudaStorage,
        il: &Layout,
        dim: usize,
    ) -> Result<CudaStorage> {
        use glimpse_tensor::BackendStorage;
        const OP: &str = "index_select";
        let size = sl.dims()[dim];
        let mut out_dims = sl.dims().to_vec();
        out_dims[dim] = il.elem_count();
        let n: usize = out_dims.iter().product();
        let mut out = self.alloc_data(src.dtype(), n)?;
        if n == 0 {
            self.check_ids_on_host(OP, ids, il, size)?;
            return Ok(CudaStorage::new(out, n));
        }
        let m = Merged::new(&out_dims, &[sl.strides()], Some(dim));
        let src_l = m.klayout(0, sl.offset())?;
        let ids_l = KLayout::of(il)?;
        let kdim = m.keep.expect("dim kept") as u32;
        let size64 = size as u64;
        let n64 = n as u64;
        let mut err = self.index_error_cell()?;
        let name = format!("{OP}_{}", bits(src.dtype()));
        let f = self.function("indexing.cu", &name)?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&src_l)
            .arg(&kdim)
            .arg(&size64)
            .arg(&ids_l)
            .arg(ids.as_u32()?);
        with_data!(src.data(), s => b.arg(s));
        with_data!(&mut out, d => b.arg(d));
        b.arg(&n64).arg(&mut err);
        // SAFETY: index_select_b<w>(GlLayout src, gl_u32 dim, gl_u64 size, GlLayout ids,
        // const gl_u32* id, const T* x, T* out, gl_u64 n, gl_u64* err): `src_l` has the output
        // dims with the source's strides (the kernel replaces coordinate `dim` by a checked
        // id < size, so reads stay inside the source view), ids are u32, `x` and `out` share
        // the dtype of width <w>, `out` holds `n` elements and `err` one u64.
        let launched = unsafe { b.launch(grid_for(n)) }.map(|_| ());
        self.check_launch(&name, launched)?;
        self.check_index_cell(OP, &err, size)?;
        Ok(CudaStorage::new(out, n))
    }

    pub(crate) fn op_gather(
        &self,
        src: &CudaStorage,
        sl: &Layout,
        ids: &CudaStorage,
        il: &Layout,
        dim: usize,
    ) -> Result<CudaStorage> {
        use glimpse_tensor::BackendStorage;
        const OP: &str = "gather";
        let size = sl.dims()[dim];
        let n = il.elem_count();
        let mut out = self.alloc_data(src.dtype(), n)?;
        if n == 0 {
            return Ok(CudaStorage::new(out, n));
        }
        let m = Merged::new(il.dims(), &[sl.strides(), il.strides()], Some(dim));
        let src_l = m.klayout(0, sl.offset())?;
        let ids_l = m.klayout(1, il.offset())?;
        let kdim = m.keep.expect("dim kept") as u32;
        let size64 = size as u64;
        let n64 = n as u64;
        let mut err = self.index_error_cell()?;
        let name = format!("{OP}_{}", bits(src.dtype()));
        let f = self.function("indexing.cu", &name)?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&src_l)
            .arg(&kdim)
            .arg(&size64)
            .arg(&ids_l)
            .arg(ids.as_u32()?);
        with_data!(src.data(), s => b.arg(s));
        with_data!(&mut out, d => b.arg(d));
        b.arg(&n64).arg(&mut err);
        // SAFETY: gather_b<w>(GlLayout src, gl_u32 dim, gl_u64 size, GlLayout ids,
        // const gl_u32* id, const T* x, T* out, gl_u64 n, gl_u64* err): `src_l` has the ids'
        // dims (equal to the source's except at `dim`, which takes a checked id < size) and
        // the source's strides, the ids view has `n` u32 elements, `x` and `out` share the
        // dtype of width <w>, `out` holds `n` elements and `err` one u64.
        let launched = unsafe { b.launch(grid_for(n)) }.map(|_| ());
        self.check_launch(&name, launched)?;
        self.check_index_cell(OP, &err, size)?;
        Ok(CudaStorage::new(out, n))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_scatter_add(
        &self,
        dst: &CudaStorage,
        dl: &Layout,
        ids: &CudaStorage,
        il: &Layout,
        src: &CudaStorage,
        sl: &Layout,
        dim: usize,
    ) -> Result<CudaStorage> {
        use glimpse_tensor::BackendStorage;
        const OP: &str = "scatter_add";
        let dtype = dst.dtype();
        if src.dtype() != dtype {
            return Err(mismatch(OP));
        }
        let size = dl.dims()[dim];
        let out = self.copy_contiguous(dst, dl)?;
        let total = out.len();
        let n = il.elem_count();
        if n == 0 {
            return Ok(out);
        }
        let mut data = out.into_data();
        let out_strides = contiguous_strides(dl.dims());
        let m = Merged::new(
            il.dims(),
            &[&out_strides, sl.strides(), il.strides()],
            Some(dim),
        );
        let dst_l = m.klayout(0, 0)?;
        let src_l = m.klayout(1, sl.offset())?;
        let ids_l = m.klayout(2, il.offset())?;
        let kdim = m.keep.expect("dim kept") as u32;
        let size64 = size as u64;
        let n64 = n as u64;
        let mut err = self.index_error_cell()?;
        let name = format!("{OP}_{}", suffix(dtype));
        let f = self.function("indexing.cu", &name)?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&dst_l).arg(&kdim).arg(&size64).arg(&src_l);
        with_data!(src.data(), s => b.arg(s));
        b.arg(&ids_l).arg(ids.as_u32()?);
        with_data!(&mut data, d => b.arg(d));
        b.arg(&n64).arg(&mut err);
        // SAFETY: scatter_add_<dt>(GlLayout dst, gl_u32 dim, gl_u64 size, GlLayout src,
        // const T* s, GlLayout ids, const gl_u32* id, T* out, gl_u64 n, gl_u64* err): `out` is
        // the fresh contiguous copy of the destination (`total` elements, 4-byte aligned as
        // every allocation), `dst_l` has the source's dims with out's contiguous strides so
        // every target (coordinate `dim` replaced by a checked id < size) lies inside it; the
        // source and ids views have `n` elements inside their buffers; dtypes match the kernel.
        let launched = unsafe { b.launch(grid_for(n)) }.map(|_| ());
        self.check_launch(&name, launched)?;
        self.check_index_cell(OP, &err, size)?;
        Ok(CudaStorage::new(data, total))
    }
}

//! The primitives of the wgpu backend: memory, random numbers, copies, element-wise ops,
//! reductions and index ops (the matrix product is in `matmul.rs`). Each records one or a few
//! dispatches of the kernels in `kernels/wgsl` (`copy`, `elementwise`, `reduce`, `indexing`),
//! after merging dimensions so that views stay small and contiguous views walk without div/mod.
//!
//! No op reads back to the host. Index ops (and u32 division) find bad indices (zero divisors)
//! on the device: the kernel records the position of the first one in a two-word cell (an
//! atomic), a one-invocation kernel copies the offending value next to it, and the backend
//! reads every pending cell together with the next read-back (or `synchronize`), which then
//! returns `Error::IndexOutOfRange` (or the division error) instead of the data. Errors are
//! reported late, as a GPU reports them, but never lost and never turned into garbage: a bad
//! index reads 0.

use glimpse_tensor::merge::{Merged, contiguous_strides};
use glimpse_tensor::{
    BackendStorage, BinaryOp, DType, Error, HostSlice, HostVec, Layout, ReduceOp, Result, UnaryOp,
    random,
};
use half::f16;

use crate::backend::{
    DeferredError, Elem, Kernel, Params, WgpuBackend, unsupported, workgroups_for,
};
use crate::storage::WgpuStorage;

/// Threads per workgroup of the 1-D element-wise kernels (their `WG` override's default).
pub(crate) const WG: u32 = 256;

/// The 32-bit word that fills a buffer of `dtype` with `value` (converted exactly as the CPU
/// backend converts it; a 16-bit pattern is repeated in both halves).
fn fill_word(dtype: DType, value: f64) -> Result<u32> {
    match (dtype, dtype.bits_of(value)) {
        (DType::F16, Some(h)) => Ok(h | (h << 16)),
        (DType::F32 | DType::U32, Some(w)) => Ok(w),
        _ => Err(unsupported("full", dtype)),
    }
}

/// Pushes the merged view of `layout` alone.
pub(crate) fn push_view(p: &mut Params, layout: &Layout) -> Result<()> {
    let m = Merged::new(layout.dims(), &[layout.strides()], None);
    p.view(&m.dims, &m.strides[0], layout.offset())?;
    Ok(())
}

/// A dtype mismatch the tensor crate should have caught.
fn mismatch(op: &str) -> Error {
    Error::backend(
        "wgpu",
        format!("{op}: operands of different dtypes reached the backend"),
    )
}

/// Pushes the views `(strides, offset)` over the same `dims`, merged jointly.
fn push_joint(p: &mut Params, dims: &[usize], views: &[(&[usize], usize)]) -> Result<()> {
    let strides: Vec<&[usize]> = views.iter().map(|v| v.0).collect();
    let m = Merged::new(dims, &strides, None);
    for (s, &(_, offset)) in m.strides.iter().zip(views) {
        p.view(&m.dims, s, offset)?;
    }
    Ok(())
}

/// `(op, a, b)` of a float unary op in elementwise.wgsl's `unary_f` (`UnaryOp::code`; the
/// parameters in f32, as the CPU backend converts them).
fn unary_float_code(op: UnaryOp) -> (u32, f32, f32) {
    let (code, a, b) = op.code();
    (code, a as f32, b as f32)
}

/// `[op, a, b, c, d]` of a u32 unary op in elementwise.wgsl's `unary_u`, or `None` where the
/// CPU backend has no u32 version. The CPU computes clamp and affine in f64 and truncates
/// (saturating); these words reproduce that exactly, except affine with a non-integer (or
/// huge) mul, which is computed in f32 (exact while x mul + add stays below 2^24).
fn unary_u32_words(op: UnaryOp) -> Option<[u32; 5]> {
    Some(match op {
        UnaryOp::Abs | UnaryOp::Relu => [32, 0, 0, 0, 0],
        UnaryOp::Sqr => [33, 0, 0, 0, 0],
        UnaryOp::Clamp { min, max } => {
            let [a, b, c, d] = clamp_table(min, max);
            [34, a, b, c, d]
        }
        UnaryOp::Affine { mul, add } => {
            // Exact with an integer mul: x mul is an integer P, and trunc(P + add) is
            // P + trunc(add), less one where the fraction is negative and the sum positive.
            // The CPU rounds P + add to f64 first, which moves the result only for fractions
            // within 2^-20 of +-1 (or beyond 2^52, where everything saturates).
            let (whole, frac) = (add.trunc(), add.fract());
            let exact = mul.fract() == 0.0
                && mul.abs() < 4_294_967_296.0
                && add.abs() < 4_503_599_627_370_496.0
                && frac.abs() <= 1.0 - 1.0 / 1_048_576.0;
            if exact {
                let signs = u32::from(mul < 0.0)
                    | (u32::from(whole < 0.0) << 1)
                    | (u32::from(frac < 0.0) << 2);
                let a = whole.abs() as u64;
                [35, mul.abs() as u32, signs, a as u32, (a >> 32) as u32]
            } else {
                [36, (mul as f32).to_bits(), (add as f32).to_bits(), 0, 0]
            }
        }
        _ => return None,
    })
}

/// The u32 clamp `(x as f64).max(min).min(max) as u32` as a table `[a, b, c, d]`:
/// `x < a -> b`, else `x > c -> d`, else `x`, for any bounds (NaN, inverted, out of range).
fn clamp_table(min: f64, max: f64) -> [u32; 4] {
    const TOP: f64 = u32::MAX as f64;
    // x < min for exactly the integers x < ceil(min); beyond u32::MAX every x is below (and
    // x = u32::MAX then gets the same value through the second test).
    let a = if min.is_nan() {
        0
    } else {
        min.ceil().clamp(0.0, TOP) as u32
    };
    // Below min, x becomes min, then min(min, max).
    let b = if min > max { max as u32 } else { min as u32 };
    // x > max for the integers x > floor(max): none for NaN or max >= u32::MAX, all for max < 0
    // (then x > 0 -> 0 and x = 0 stays 0).
    let (c, d) = if max.is_nan() {
        (u32::MAX, 0)
    } else if max < 0.0 {
        (0, 0)
    } else {
        (max.floor().min(TOP) as u32, max as u32)
    };
    [a, b, c, d]
}

/// The most indices one scatter_add dispatch walks per column (see indexing.wgsl).
const SCATTER_STEPS: usize = 32_768;

/// Reductions over a dimension at least this long, or shorter ones over a contiguous
/// dimension or with few rows, run one workgroup per row (`reduce.wgsl`'s `*_wg` kernels);
/// others one invocation per row.
const REDUCE_WG_MIN_LEN: usize = 32;
/// Fewer rows than this leave a GPU mostly idle with one invocation per row.
const REDUCE_FEW_ROWS: usize = 4096;
/// Rows longer than this are reduced in two passes, by segments of this many elements.
const REDUCE_SEGMENT: usize = 65_536;

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

impl WgpuBackend {
    // ------------------------------------------------------------------ element-wise

    /// Records one 1-D dispatch of an elementwise.wgsl kernel over `n` elements.
    fn elementwise(
        &self,
        entry: &'static str,
        t: Elem,
        u: Elem,
        p: &Params,
        buffers: &[&wgpu::Buffer],
        n: usize,
    ) -> Result<()> {
        self.dispatch(
            &Kernel::new("elementwise.wgsl", entry, t).with_u(u),
            p,
            buffers,
            workgroups_for(n, WG),
        )
    }

    pub(crate) fn op_concat(
        &self,
        parts: &[(&WgpuStorage, &Layout)],
        dim: usize,
    ) -> Result<WgpuStorage> {
        let (first, first_l) = parts
            .first()
            .ok_or_else(|| Error::invalid("cat", "no tensors to concatenate"))?;
        let dtype = first.dtype();
        let t = self.elem(dtype, "concat")?;
        let mut out_dims = first_l.dims().to_vec();
        out_dims[dim] = parts.iter().map(|(_, l)| l.dims()[dim]).sum();
        let out_strides = contiguous_strides(&out_dims);
        let out = self.alloc(dtype, out_dims.iter().product())?;
        // Each part is copied into its slab of the output: the part's view and the slab (the
        // output's strides from `at` along dim) merged jointly, one dispatch per part.
        let mut at = 0;
        for (s, l) in parts {
            if s.dtype() != dtype {
                return Err(mismatch("concat"));
            }
            let n = l.elem_count();
            if n > 0 {
                let mut p = Params::new();
                p.usize(n)?;
                push_joint(
                    &mut p,
                    l.dims(),
                    &[
                        (l.strides(), l.offset()),
                        (&out_strides, at * out_strides[dim]),
                    ],
                )?;
                self.elementwise("copy_view", t, t, &p, &[out.buffer(), s.buffer()], n)?;
            }
            at += l.dims()[dim];
        }
        Ok(out)
    }

    pub(crate) fn op_cast(
        &self,
        src: &WgpuStorage,
        layout: &Layout,
        dtype: DType,
    ) -> Result<WgpuStorage> {
        let t = self.elem(src.dtype(), "cast")?;
        let u = self.elem(dtype, "cast")?;
        if t == u {
            return self.op_copy_strided(src, layout);
        }
        let n = layout.elem_count();
        let out = self.alloc(dtype, n)?;
        if n > 0 {
            let mut p = Params::new();
            p.usize(n)?;
            push_view(&mut p, layout)?;
            self.elementwise("cast_to", t, u, &p, &[out.buffer(), src.buffer()], n)?;
        }
        Ok(out)
    }

    pub(crate) fn op_unary(
        &self,
        op: UnaryOp,
        src: &WgpuStorage,
        layout: &Layout,
    ) -> Result<WgpuStorage> {
        let dtype = src.dtype();
        let t = self.elem(dtype, "unary")?;
        let words = if t == Elem::U32 {
            unary_u32_words(op).ok_or_else(|| unsupported("unary", dtype))?
        } else {
            let (code, a, b) = unary_float_code(op);
            [code, a.to_bits(), b.to_bits(), 0, 0]
        };
        let n = layout.elem_count();
        let out = self.alloc(dtype, n)?;
        if n > 0 {
            let mut p = Params::new();
            p.usize(n)?;
            for w in words {
                p.u32(w);
            }
            push_view(&mut p, layout)?;
            self.elementwise("unary", t, t, &p, &[out.buffer(), src.buffer()], n)?;
        }
        Ok(out)
    }

    pub(crate) fn op_binary(
        &self,
        op: BinaryOp,
        lhs: &WgpuStorage,
        ll: &Layout,
        rhs: &WgpuStorage,
        rl: &Layout,
    ) -> Result<WgpuStorage> {
        let dtype = lhs.dtype();
        if rhs.dtype() != dtype || ll.dims() != rl.dims() {
            return Err(mismatch("binary"));
        }
        let t = self.elem(dtype, "binary")?;
        let compare = op.is_comparison();
        let n = ll.elem_count();
        if t == Elem::U32 && op == BinaryOp::Div {
            // The CPU backend refuses integer division by zero: zeros in the divisor are
            // flagged on the device and reported with the next read-back.
            self.defer_range_check(rhs, rl, 1, u32::MAX, DeferredError::DivisionByZero)?;
        }
        let (entry, u, out_dtype) = if compare {
            ("compare", Elem::U32, DType::U32)
        } else {
            ("binary", t, dtype)
        };
        let out = self.alloc(out_dtype, n)?;
        if n > 0 {
            let mut p = Params::new();
            p.usize(n)?.u32(op.code());
            push_joint(
                &mut p,
                ll.dims(),
                &[(ll.strides(), ll.offset()), (rl.strides(), rl.offset())],
            )?;
            self.elementwise(
                entry,
                t,
                u,
                &p,
                &[out.buffer(), lhs.buffer(), rhs.buffer()],
                n,
            )?;
        }
        Ok(out)
    }

    pub(crate) fn op_where(
        &self,
        cond: &WgpuStorage,
        cl: &Layout,
        on_true: &WgpuStorage,
        tl: &Layout,
        on_false: &WgpuStorage,
        fl: &Layout,
    ) -> Result<WgpuStorage> {
        let dtype = on_true.dtype();
        if on_false.dtype() != dtype || cond.dtype() != DType::U32 {
            return Err(mismatch("where_cond"));
        }
        let t = self.elem(dtype, "where_cond")?;
        let n = cl.elem_count();
        let out = self.alloc(dtype, n)?;
        if n > 0 {
            let mut p = Params::new();
            p.usize(n)?;
            push_joint(
                &mut p,
                cl.dims(),
                &[
                    (cl.strides(), cl.offset()),
                    (tl.strides(), tl.offset()),
                    (fl.strides(), fl.offset()),
                ],
            )?;
            self.elementwise(
                "where_cond",
                t,
                t,
                &p,
                &[
                    out.buffer(),
                    cond.buffer(),
                    on_true.buffer(),
                    on_false.buffer(),
                ],
                n,
            )?;
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ reductions

    pub(crate) fn op_reduce(
        &self,
        op: ReduceOp,
        src: &WgpuStorage,
        layout: &Layout,
        dim: usize,
    ) -> Result<WgpuStorage> {
        let dtype = src.dtype();
        let t = self.elem(dtype, "reduce")?;
        let (dims, strides) = (layout.dims(), layout.strides());
        if dim >= dims.len() {
            return Err(Error::DimOutOfRange {
                op: "reduce",
                dim: dim as isize,
                rank: dims.len(),
            });
        }
        let (len, stride) = (dims[dim], strides[dim]);
        let others = |v: &[usize]| -> Vec<usize> {
            v.iter()
                .enumerate()
                .filter(|&(d, _)| d != dim)
                .map(|(_, &x)| x)
                .collect()
        };
        let (outer_dims, outer_strides) = (others(dims), others(strides));
        let rows: usize = outer_dims.iter().product();
        let (arg, code) = match op {
            ReduceOp::Sum => (false, 0),
            ReduceOp::Max => (false, 1),
            ReduceOp::Min => (false, 2),
            ReduceOp::ArgMax => (true, 0),
            ReduceOp::ArgMin => (true, 1),
        };
        let out = self.alloc(if arg { DType::U32 } else { dtype }, rows)?;
        if rows == 0 {
            return Ok(out);
        }
        // Accumulators: f32 for the floats, u32 for u32.
        let (u, acc_dtype) = if t == Elem::U32 {
            (Elem::U32, DType::U32)
        } else {
            (Elem::F32, DType::F32)
        };
        let per_workgroup = len >= REDUCE_WG_MIN_LEN && (stride == 1 || rows < REDUCE_FEW_ROWS)
            || len >= 64 * REDUCE_WG_MIN_LEN;
        // Rows longer than a segment go in two passes (see reduce.wgsl).
        let segs = if per_workgroup {
            len.div_ceil(REDUCE_SEGMENT)
        } else {
            1
        };
        let mut p = Params::new();
        p.usize(rows)?.usize(len)?.usize(stride)?.u32(code);
        p.usize(if segs > 1 { REDUCE_SEGMENT } else { len })?
            .usize(segs)?;
        let m = Merged::new(&outer_dims, &[&outer_strides], None);
        p.view(&m.dims, &m.strides[0], layout.offset())?;
        let kernel = |entry: &'static str, constants: &'static [(&'static str, u32)]| {
            Kernel::new("reduce.wgsl", entry, t)
                .with_u(u)
                .with_constants(constants)
        };
        let items = rows * segs;
        let wg_groups = [items.min(65_535) as u32, 1, 1];
        if !per_workgroup {
            let entry = if arg { "argreduce_rows" } else { "reduce_rows" };
            self.dispatch(
                &kernel(entry, &[]),
                &p,
                &[out.buffer(), src.buffer()],
                workgroups_for(rows, WG),
            )?;
        } else if segs == 1 {
            // A power of two, 32..=256, about the row's length.
            let wg = match len.next_power_of_two() {
                ..=32 => &[("WG", 32)],
                64 => &[("WG", 64)],
                128 => &[("WG", 128)],
                _ => &[("WG", 256)],
            };
            let entry = if arg { "argreduce_wg" } else { "reduce_wg" };
            self.dispatch(
                &kernel(entry, wg),
                &p,
                &[out.buffer(), src.buffer()],
                wg_groups,
            )?;
        } else if arg {
            let values = self.alloc(acc_dtype, items)?;
            let indices = self.alloc(DType::U32, items)?;
            self.dispatch(
                &kernel("argreduce_wg_parts", &[]),
                &p,
                &[indices.buffer(), src.buffer(), values.buffer()],
                wg_groups,
            )?;
            self.dispatch(
                &kernel("argreduce_parts", &[]),
                &p,
                &[out.buffer(), values.buffer(), indices.buffer()],
                workgroups_for(rows, WG),
            )?;
        } else {
            let parts = self.alloc(acc_dtype, items)?;
            self.dispatch(
                &kernel("reduce_wg_parts", &[]),
                &p,
                &[parts.buffer(), src.buffer()],
                wg_groups,
            )?;
            self.dispatch(
                &kernel("reduce_parts", &[]),
                &p,
                &[out.buffer(), parts.buffer()],
                workgroups_for(rows, WG),
            )?;
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ index ops

    /// A two-word check cell (`[position, value]`, `u32::MAX` while nothing is wrong).
    fn check_cell(&self) -> Result<WgpuStorage> {
        let cell = self.alloc(DType::U32, 2)?;
        self.fill_words(cell.buffer(), 2, u32::MAX)?;
        Ok(cell)
    }

    /// After the kernels that record a bad position in `cell`: copies the offending element of
    /// `values` (a u32 view, walked row-major) into the cell and hands the cell to the
    /// backend, which reports it with the next read-back.
    fn defer_cell(
        &self,
        cell: WgpuStorage,
        values: &WgpuStorage,
        layout: &Layout,
        what: DeferredError,
    ) -> Result<()> {
        let mut p = Params::new();
        push_view(&mut p, layout)?;
        self.dispatch(
            &Kernel::new("indexing.wgsl", "record_bad_value", Elem::U32),
            &p,
            &[cell.buffer(), values.buffer()],
            [1, 1, 1],
        )?;
        self.defer_check(cell, what)
    }

    /// Flags, deferred, the first element `v` of a u32 view with `v.wrapping_sub(lo) >= span`.
    fn defer_range_check(
        &self,
        values: &WgpuStorage,
        layout: &Layout,
        lo: u32,
        span: u32,
        what: DeferredError,
    ) -> Result<()> {
        let n = layout.elem_count();
        if n == 0 {
            return Ok(());
        }
        let cell = self.check_cell()?;
        let mut p = Params::new();
        p.usize(n)?.u32(lo).u32(span);
        push_view(&mut p, layout)?;
        self.dispatch(
            &Kernel::new("indexing.wgsl", "check_range", Elem::U32),
            &p,
            &[cell.buffer(), values.buffer()],
            workgroups_for(n, WG),
        )?;
        self.defer_cell(cell, values, layout, what)
    }

    /// The 1-D dispatch of an indexing.wgsl kernel over `n` items, then its index check.
    #[allow(clippy::too_many_arguments)]
    fn indexing(
        &self,
        op: &'static str,
        t: Elem,
        p: &Params,
        out: &WgpuStorage,
        src: &WgpuStorage,
        ids: &WgpuStorage,
        il: &Layout,
        size: usize,
        n: usize,
    ) -> Result<()> {
        let cell = self.check_cell()?;
        self.dispatch(
            &Kernel::new("indexing.wgsl", op, t),
            p,
            &[out.buffer(), src.buffer(), ids.buffer(), cell.buffer()],
            workgroups_for(n, WG),
        )?;
        self.defer_cell(cell, ids, il, DeferredError::Index { op, size })
    }

    pub(crate) fn op_index_select(
        &self,
        src: &WgpuStorage,
        sl: &Layout,
        ids: &WgpuStorage,
        il: &Layout,
        dim: usize,
    ) -> Result<WgpuStorage> {
        const OP: &str = "index_select";
        let t = self.elem(src.dtype(), OP)?;
        if ids.dtype() != DType::U32 {
            return Err(mismatch(OP));
        }
        let size = sl.dims()[dim];
        let mut out_dims = sl.dims().to_vec();
        out_dims[dim] = il.elem_count();
        let n: usize = out_dims.iter().product();
        let out = self.alloc(src.dtype(), n)?;
        if n == 0 {
            // Nothing to pick, but bad indices are still errors (as on the CPU).
            let span = u32::try_from(size).unwrap_or(u32::MAX);
            let what = DeferredError::Index { op: OP, size };
            self.defer_range_check(ids, il, 0, span, what)?;
            return Ok(out);
        }
        // The source view over the output's dims (dim kept alone), then the ids.
        let m = Merged::new(&out_dims, &[sl.strides()], Some(dim));
        let kd = m.keep.expect("the indexed dimension is kept");
        let inner: usize = m.dims[kd + 1..].iter().product();
        let mut p = Params::new();
        p.usize(n)?.usize(kd)?.usize(size)?.usize(inner)?;
        p.view(&m.dims, &m.strides[0], sl.offset())?;
        push_view(&mut p, il)?;
        self.indexing(OP, t, &p, &out, src, ids, il, size, n)?;
        Ok(out)
    }

    pub(crate) fn op_gather(
        &self,
        src: &WgpuStorage,
        sl: &Layout,
        ids: &WgpuStorage,
        il: &Layout,
        dim: usize,
    ) -> Result<WgpuStorage> {
        const OP: &str = "gather";
        let t = self.elem(src.dtype(), OP)?;
        if ids.dtype() != DType::U32 {
            return Err(mismatch(OP));
        }
        let size = sl.dims()[dim];
        let n = il.elem_count();
        let out = self.alloc(src.dtype(), n)?;
        if n == 0 {
            return Ok(out);
        }
        let m = Merged::new(il.dims(), &[sl.strides(), il.strides()], Some(dim));
        let kd = m.keep.expect("the indexed dimension is kept");
        let mut p = Params::new();
        p.usize(n)?.usize(kd)?.usize(size)?;
        p.view(&m.dims, &m.strides[0], sl.offset())?;
        p.view(&m.dims, &m.strides[1], il.offset())?;
        self.indexing(OP, t, &p, &out, src, ids, il, size, n)?;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_scatter_add(
        &self,
        dst: &WgpuStorage,
        dl: &Layout,
        ids: &WgpuStorage,
        il: &Layout,
        src: &WgpuStorage,
        sl: &Layout,
        dim: usize,
    ) -> Result<WgpuStorage> {
        const OP: &str = "scatter_add";
        let dtype = dst.dtype();
        if src.dtype() != dtype || ids.dtype() != DType::U32 {
            return Err(mismatch(OP));
        }
        let t = self.elem(dtype, OP)?;
        let size = dl.dims()[dim];
        // The sums land in a contiguous copy of dst.
        let out = self.op_copy_strided(dst, dl)?;
        let n = il.elem_count();
        if n == 0 {
            return Ok(out);
        }
        let out_strides = contiguous_strides(dl.dims());
        let m = Merged::new(
            il.dims(),
            &[&out_strides, sl.strides(), il.strides()],
            Some(dim),
        );
        let kd = m.keep.expect("the indexed dimension is kept");
        let n_ids = m.dims[kd];
        let inner: usize = m.dims[kd + 1..].iter().product();
        let columns = n / n_ids;
        // One dispatch per range of j (see indexing.wgsl), all reporting to one cell.
        let cell = self.check_cell()?;
        for j0 in (0..n_ids).step_by(SCATTER_STEPS) {
            let mut p = Params::new();
            p.usize(columns)?
                .usize(kd)?
                .usize(size)?
                .usize(n_ids)?
                .usize(inner)?
                .usize(j0)?
                .usize((j0 + SCATTER_STEPS).min(n_ids))?;
            p.view(&m.dims, &m.strides[0], 0)?;
            p.view(&m.dims, &m.strides[1], sl.offset())?;
            p.view(&m.dims, &m.strides[2], il.offset())?;
            self.dispatch(
                &Kernel::new("indexing.wgsl", OP, t),
                &p,
                &[out.buffer(), src.buffer(), ids.buffer(), cell.buffer()],
                workgroups_for(columns, WG),
            )?;
        }
        self.defer_cell(cell, ids, il, DeferredError::Index { op: OP, size })?;
        Ok(out)
    }
}

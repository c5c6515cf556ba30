//! The [`Tensor`] type: shared device storage plus a [`Layout`].

use std::sync::Arc;

use crate::backend::{
    AttentionGrads, AttentionOptions, AttentionOutput, BinaryOp, ContrastiveGrads,
    ContrastiveOutput, GeluKind, PatchEmbedGrads, PatchEmbedOptions, ReduceOp, SharedBytes,
    Storage, UnaryOp,
};
use crate::{DType, Device, Dim, Error, HostVec, Layout, Result, Shape, WithDType};

/// An n-dimensional array on a [`Device`].
///
/// Cloning is cheap (a reference count). View operations (`reshape` of contiguous data,
/// `permute`, `transpose`, `broadcast_as`, `narrow`, `squeeze`, `unsqueeze`) share the storage
/// and only change the layout; every other operation returns a new contiguous tensor.
#[derive(Clone)]
pub struct Tensor(Arc<TensorInner>);

struct TensorInner {
    storage: Storage,
    layout: Layout,
    device: Device,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({}, {}, {})",
            self.shape(),
            self.dtype(),
            self.device()
        )
    }
}

fn check_same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device().same_device(b.device()) {
        Ok(())
    } else {
        Err(Error::DeviceMismatch {
            op,
            lhs: a.device().to_string(),
            rhs: b.device().to_string(),
        })
    }
}

fn check_same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() == b.dtype() {
        Ok(())
    } else {
        Err(Error::DTypeMismatch {
            op,
            expected: a.dtype(),
            got: b.dtype(),
        })
    }
}

fn check_float(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType {
            op,
            dtype: t.dtype(),
            backend: None,
        })
    }
}

fn check_dtype(op: &'static str, t: &Tensor, expected: DType) -> Result<()> {
    if t.dtype() == expected {
        Ok(())
    } else {
        Err(Error::DTypeMismatch {
            op,
            expected,
            got: t.dtype(),
        })
    }
}

fn check_supported(op: &'static str, device: &Device, dtype: DType) -> Result<()> {
    if device.backend().supports_dtype(dtype) {
        Ok(())
    } else {
        Err(Error::UnsupportedDType {
            op,
            dtype,
            backend: Some(device.location().backend.to_string()),
        })
    }
}

/// The result of a reduction that may drop the reduced dimension.
fn maybe_squeeze(t: Tensor, dim: usize, keepdim: bool) -> Result<Tensor> {
    if keepdim { Ok(t) } else { t.squeeze(dim) }
}

impl Tensor {
    // ------------------------------------------------------------------ construction

    /// Wraps a storage produced by a backend. Checks that the layout stays inside the storage
    /// and that storage and device agree on nothing more (backends vouch for the rest).
    pub fn from_storage(storage: Storage, layout: Layout, device: Device) -> Result<Tensor> {
        let reach = layout
            .checked_max_index()
            .ok_or_else(|| Error::invalid("from_storage", "layout addresses past usize::MAX"))?;
        if reach > storage.len() {
            return Err(Error::invalid(
                "from_storage",
                format!(
                    "layout reaches element {reach} of a storage of {}",
                    storage.len()
                ),
            ));
        }
        Ok(Tensor(Arc::new(TensorInner {
            storage,
            layout,
            device,
        })))
    }

    /// A new tensor of `dtype` holding `data` converted on the host (so devices without `f64`
    /// can be filled from values computed in `f64`).
    pub fn from_f64_slice(
        data: &[f64],
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != data.len() {
            return Err(Error::ElementCount {
                op: "from_f64_slice",
                expected: shape.elem_count(),
                got: data.len(),
                shape,
            });
        }
        check_supported("from_f64_slice", device, dtype)?;
        let host = HostVec::from_f64_slice(dtype, data);
        let storage = device.backend().upload(host.as_slice())?;
        Tensor::contiguous_from(storage, shape, device)
    }

    fn contiguous_from(storage: Storage, shape: Shape, device: &Device) -> Result<Tensor> {
        Tensor::from_storage(storage, Layout::contiguous(shape), device.clone())
    }

    /// A new tensor holding `data` with the given shape.
    pub fn from_vec<T: WithDType>(
        data: Vec<T>,
        shape: impl Into<Shape>,
        device: &Device,
    ) -> Result<Tensor> {
        Tensor::from_slice(&data, shape, device)
    }

    /// A new tensor holding a copy of `data` with the given shape.
    pub fn from_slice<T: WithDType>(
        data: &[T],
        shape: impl Into<Shape>,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != data.len() {
            return Err(Error::ElementCount {
                op: "from_slice",
                expected: shape.elem_count(),
                got: data.len(),
                shape,
            });
        }
        check_supported("from_slice", device, T::DTYPE)?;
        let storage = device.backend().upload(T::host_slice(data))?;
        Tensor::contiguous_from(storage, shape, device)
    }

    /// A new tensor from raw little-endian bytes (a CPU device may keep them without a copy).
    pub fn from_bytes(
        bytes: SharedBytes,
        dtype: DType,
        shape: impl Into<Shape>,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let expected =
            shape.check_alloc(dtype.size_in_bytes(), "from_bytes")? * dtype.size_in_bytes();
        if bytes.bytes().len() != expected {
            return Err(Error::ElementCount {
                op: "from_bytes",
                expected: shape.elem_count(),
                got: bytes.bytes().len() / dtype.size_in_bytes(),
                shape,
            });
        }
        check_supported("from_bytes", device, dtype)?;
        let storage = device.backend().upload_bytes(dtype, bytes)?;
        Tensor::contiguous_from(storage, shape, device)
    }

    /// A tensor filled with `value`.
    pub fn full(
        value: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        check_supported("full", device, dtype)?;
        let len = shape.check_alloc(dtype.size_in_bytes(), "full")?;
        let storage = device.backend().full(dtype, len, value)?;
        Tensor::contiguous_from(storage, shape, device)
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(0.0, shape, dtype, device)
    }

    pub fn ones(shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, device)
    }

    /// `start, start + step, ...` up to but excluding `end`, as a 1-D tensor.
    pub fn arange_step(
        start: f64,
        end: f64,
        step: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(Error::invalid(
                "arange",
                format!("cannot step from {start} to {end} by {step}"),
            ));
        }
        let count = ((end - start) / step).ceil().max(0.0);
        if count > (isize::MAX as usize / 8) as f64 {
            return Err(Error::invalid(
                "arange",
                format!("{count} elements would not fit in memory"),
            ));
        }
        let n = count as usize;
        let values: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
        if dtype == DType::U32 && values.iter().any(|&v| v < 0.0 || v > u32::MAX as f64) {
            return Err(Error::invalid("arange", "values out of range for u32"));
        }
        // Converted on the host, so that a backend without f64 (a GPU) can still take it.
        fn build<T: WithDType>(values: &[f64], device: &Device) -> Result<Tensor> {
            let v: Vec<T> = values.iter().map(|&x| T::from_f64(x)).collect();
            let n = v.len();
            Tensor::from_vec(v, n, device)
        }
        match dtype {
            DType::F16 => build::<half::f16>(&values, device),
            DType::BF16 => build::<half::bf16>(&values, device),
            DType::F32 => build::<f32>(&values, device),
            DType::F64 => build::<f64>(&values, device),
            DType::U32 => build::<u32>(&values, device),
        }
    }

    /// `start, start + 1, ...` up to but excluding `end`.
    pub fn arange(start: f64, end: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::arange_step(start, end, 1.0, dtype, device)
    }

    /// Uniform samples in `[low, high)`, the same for the same `seed` on every run.
    pub fn rand_uniform(
        low: f64,
        high: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        seed: u64,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if !dtype.is_float() || low.partial_cmp(&high) != Some(std::cmp::Ordering::Less) {
            return Err(Error::invalid(
                "rand_uniform",
                format!("need a float dtype and low < high, got {dtype}, [{low}, {high})"),
            ));
        }
        check_supported("rand_uniform", device, dtype)?;
        let len = shape.check_alloc(dtype.size_in_bytes(), "rand_uniform")?;
        let storage = device.backend().rand_uniform(dtype, len, low, high, seed)?;
        Tensor::contiguous_from(storage, shape, device)
    }

    /// Normal samples, the same for the same `seed` on every run.
    pub fn rand_normal(
        mean: f64,
        std: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        seed: u64,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if !dtype.is_float() || std.is_nan() || std < 0.0 {
            return Err(Error::invalid(
                "rand_normal",
                format!("need a float dtype and std >= 0, got {dtype}, std {std}"),
            ));
        }
        check_supported("rand_normal", device, dtype)?;
        let len = shape.check_alloc(dtype.size_in_bytes(), "rand_normal")?;
        let storage = device.backend().rand_normal(dtype, len, mean, std, seed)?;
        Tensor::contiguous_from(storage, shape, device)
    }

    /// A tensor of the same shape, dtype and device filled with `value`.
    pub fn full_like(&self, value: f64) -> Result<Tensor> {
        Tensor::full(value, self.shape().clone(), self.dtype(), self.device())
    }

    pub fn zeros_like(&self) -> Result<Tensor> {
        self.full_like(0.0)
    }

    pub fn ones_like(&self) -> Result<Tensor> {
        self.full_like(1.0)
    }

    // ------------------------------------------------------------------ accessors

    pub fn shape(&self) -> &Shape {
        self.0.layout.shape()
    }

    pub fn dims(&self) -> &[usize] {
        self.0.layout.dims()
    }

    pub fn rank(&self) -> usize {
        self.shape().rank()
    }

    pub fn elem_count(&self) -> usize {
        self.shape().elem_count()
    }

    /// Size of one dimension (negative counts from the back).
    pub fn dim(&self, dim: impl Dim) -> Result<usize> {
        self.shape().size(dim, "dim")
    }

    pub fn dtype(&self) -> DType {
        self.0.storage.dtype()
    }

    pub fn device(&self) -> &Device {
        &self.0.device
    }

    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }

    pub fn storage(&self) -> &Storage {
        &self.0.storage
    }

    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }

    /// True if both tensors are views of the same storage.
    pub fn shares_storage_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor(Arc::new(TensorInner {
            storage: self.0.storage.clone(),
            layout,
            device: self.0.device.clone(),
        }))
    }

    fn result_tensor(&self, storage: Storage, shape: Shape) -> Result<Tensor> {
        Tensor::contiguous_from(storage, shape, self.device())
    }

    // ------------------------------------------------------------------ read back

    /// Every element in row-major order, as host data of the tensor's dtype.
    pub fn to_host(&self) -> Result<HostVec> {
        self.device()
            .backend()
            .download(&**self.storage(), self.layout())
    }

    /// Every element in row-major order. `T` must match the dtype.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        check_dtype("to_vec", self, T::DTYPE)?;
        let host = self.to_host()?;
        T::from_host_vec(host).ok_or_else(|| Error::backend("download", "returned the wrong dtype"))
    }

    /// The tensor on `device` (itself when it is already there), copied through the host.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device().location() == device.location() {
            return Ok(self.clone());
        }
        let host = self.to_host()?;
        let storage = device.backend().upload(host.as_slice())?;
        Tensor::from_storage(
            storage,
            Layout::contiguous(self.shape().clone()),
            device.clone(),
        )
    }

    /// Every element converted to `f64`, whatever the dtype.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        Ok(self.to_host()?.to_f64_vec())
    }

    /// The single element of a tensor with one element.
    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::bad_shape(
                "to_scalar",
                "expected exactly one element",
                self.shape(),
            ));
        }
        Ok(self.to_vec::<T>()?[0])
    }

    // ------------------------------------------------------------------ views

    /// The same elements with another shape. A view when the data is contiguous, a copy
    /// otherwise.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.checked_elem_count("reshape")? != self.elem_count() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape().clone(),
                rhs: shape,
            });
        }
        match self.layout().reshape(shape.clone()) {
            Some(layout) => Ok(self.with_layout(layout)),
            None => self.contiguous()?.reshape(shape),
        }
    }

    /// Flattens every dimension into one.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(self.elem_count())
    }

    /// Reorders dimensions: dimension `i` of the result is dimension `perm[i]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout().permute(perm)?))
    }

    /// Swaps two dimensions.
    pub fn transpose(&self, d1: impl Dim, d2: impl Dim) -> Result<Tensor> {
        let d1 = self.shape().dim(d1, "transpose")?;
        let d2 = self.shape().dim(d2, "transpose")?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(d1, d2);
        self.permute(&perm)
    }

    /// Swaps the last two dimensions.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::bad_shape(
                "t",
                "needs at least two dimensions",
                self.shape(),
            ));
        }
        self.transpose(-2isize, -1isize)
    }

    /// Stretches size-1 dimensions (and adds leading ones) to `shape`, without copying.
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        shape.checked_elem_count("broadcast_as")?;
        Ok(self.with_layout(self.layout().broadcast_as(&shape)?))
    }

    /// Keeps `len` entries of `dim` starting at `start`, without copying.
    pub fn narrow(&self, dim: impl Dim, start: usize, len: usize) -> Result<Tensor> {
        let dim = self.shape().dim(dim, "narrow")?;
        Ok(self.with_layout(self.layout().narrow(dim, start, len)?))
    }

    /// Removes a size-1 dimension.
    pub fn squeeze(&self, dim: impl Dim) -> Result<Tensor> {
        let dim = self.shape().dim(dim, "squeeze")?;
        Ok(self.with_layout(self.layout().squeeze(dim)?))
    }

    /// Inserts a size-1 dimension at `dim` (`0..=rank`).
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange {
                op: "unsqueeze",
                dim: dim as isize,
                rank: self.rank(),
            });
        }
        Ok(self.with_layout(self.layout().unsqueeze(dim)))
    }

    /// A contiguous tensor with the same elements (`self` if it already is contiguous).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let storage = self
            .device()
            .backend()
            .copy_strided(&**self.storage(), self.layout())?;
        self.result_tensor(storage, self.shape().clone())
    }

    /// A contiguous copy that never shares storage with `self`.
    pub fn copy(&self) -> Result<Tensor> {
        let storage = self
            .device()
            .backend()
            .copy_strided(&**self.storage(), self.layout())?;
        self.result_tensor(storage, self.shape().clone())
    }

    /// Concatenates tensors along `dim`; all other dimensions must agree.
    pub fn cat(tensors: &[&Tensor], dim: impl Dim) -> Result<Tensor> {
        let first = *tensors
            .first()
            .ok_or_else(|| Error::invalid("cat", "no tensors to concatenate"))?;
        let dim = first.shape().dim(dim, "cat")?;
        let mut out_dims = first.dims().to_vec();
        out_dims[dim] = 0;
        for t in tensors {
            check_same_device("cat", first, t)?;
            check_same_dtype("cat", first, t)?;
            let same_rest = t.rank() == first.rank()
                && t.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .all(|(i, (a, b))| i == dim || a == b);
            if !same_rest {
                return Err(Error::ShapeMismatch {
                    op: "cat",
                    lhs: first.shape().clone(),
                    rhs: t.shape().clone(),
                });
            }
            out_dims[dim] += t.dims()[dim];
        }
        let parts: Vec<_> = tensors
            .iter()
            .map(|t| (&**t.storage(), t.layout()))
            .collect();
        let storage = first.device().backend().concat(&parts, dim)?;
        first.result_tensor(storage, Shape::new(out_dims))
    }

    // ------------------------------------------------------------------ element-wise

    /// Converts to another dtype (a no-op clone when it already has it).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        check_supported("to_dtype", self.device(), dtype)?;
        let storage = self
            .device()
            .backend()
            .cast(&**self.storage(), self.layout(), dtype)?;
        self.result_tensor(storage, self.shape().clone())
    }

    /// Applies an element-wise function (float dtypes; `Abs`, `Sqr`, `Relu`,
    /// `Clamp` and `Affine` also accept `U32` where the result stays representable).
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let integer_ok = matches!(
            op,
            UnaryOp::Abs
                | UnaryOp::Sqr
                | UnaryOp::Relu
                | UnaryOp::Clamp { .. }
                | UnaryOp::Affine { .. }
        );
        if !self.dtype().is_float() && !integer_ok {
            return Err(Error::UnsupportedDType {
                op: "unary",
                dtype: self.dtype(),
                backend: None,
            });
        }
        let storage = self
            .device()
            .backend()
            .unary(op, &**self.storage(), self.layout())?;
        self.result_tensor(storage, self.shape().clone())
    }

    /// Applies an element-wise function of two operands, broadcasting them to a common shape.
    pub fn binary(&self, op: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        check_same_device("binary", self, rhs)?;
        check_same_dtype("binary", self, rhs)?;
        let shape = self.shape().broadcast_with(rhs.shape(), "binary")?;
        shape.check_alloc(self.dtype().size_in_bytes(), "binary")?;
        let lhs_layout = self.layout().broadcast_as(&shape)?;
        let rhs_layout = rhs.layout().broadcast_as(&shape)?;
        let storage = self.device().backend().binary(
            op,
            &**self.storage(),
            &lhs_layout,
            &**rhs.storage(),
            &rhs_layout,
        )?;
        self.result_tensor(storage, shape)
    }

    /// `self != 0 ? on_true : on_false`, with `self` a `U32` condition; all three broadcast.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        check_dtype("where_cond", self, DType::U32)?;
        check_same_device("where_cond", self, on_true)?;
        check_same_device("where_cond", self, on_false)?;
        check_same_dtype("where_cond", on_true, on_false)?;
        let shape = self
            .shape()
            .broadcast_with(on_true.shape(), "where_cond")?
            .broadcast_with(on_false.shape(), "where_cond")?;
        shape.check_alloc(on_true.dtype().size_in_bytes(), "where_cond")?;
        let storage = self.device().backend().where_cond(
            &**self.storage(),
            &self.layout().broadcast_as(&shape)?,
            &**on_true.storage(),
            &on_true.layout().broadcast_as(&shape)?,
            &**on_false.storage(),
            &on_false.layout().broadcast_as(&shape)?,
        )?;
        self.result_tensor(storage, shape)
    }

    /// A tensor of this tensor's dtype and device holding one value, broadcastable anywhere.
    pub fn scalar_like(&self, value: f64) -> Result<Tensor> {
        Tensor::full(value, Shape::scalar(), self.dtype(), self.device())
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqr)
    }
    pub fn recip(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Recip)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sin)
    }
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Cos)
    }
    pub fn erf(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Erf)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }
    /// `self * mul + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Affine { mul, add })
    }
    pub fn powf(&self, exponent: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Powf(exponent))
    }
    pub fn clamp(&self, min: f64, max: f64) -> Result<Tensor> {
        if min.is_nan() || max.is_nan() || min > max {
            return Err(Error::invalid(
                "clamp",
                format!("bounds must satisfy min <= max, got [{min}, {max}]"),
            ));
        }
        self.unary(UnaryOp::Clamp { min, max })
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, rhs)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Sub, rhs)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, rhs)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Div, rhs)
    }
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Maximum, rhs)
    }
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Minimum, rhs)
    }
    pub fn pow(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Pow, rhs)
    }
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Eq, rhs)
    }
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Ne, rhs)
    }
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Lt, rhs)
    }
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Le, rhs)
    }
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Gt, rhs)
    }
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Ge, rhs)
    }

    // ------------------------------------------------------------------ reductions

    /// Reduces `dim`; `keepdim` keeps it with size 1.
    pub fn reduce(&self, op: ReduceOp, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        let dim = self.shape().dim(dim, "reduce")?;
        if self.dims()[dim] == 0 && op != ReduceOp::Sum {
            return Err(Error::bad_shape(
                "reduce",
                format!("{op:?} over an empty dimension {dim}"),
                self.shape(),
            ));
        }
        let storage = self
            .device()
            .backend()
            .reduce(op, &**self.storage(), self.layout(), dim)?;
        let mut dims = self.dims().to_vec();
        dims[dim] = 1;
        let out = self.result_tensor(storage, Shape::new(dims))?;
        maybe_squeeze(out, dim, keepdim)
    }

    pub fn sum(&self, dim: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::Sum, dim, false)
    }
    pub fn sum_keepdim(&self, dim: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::Sum, dim, true)
    }
    pub fn max(&self, dim: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::Max, dim, false)
    }
    pub fn max_keepdim(&self, dim: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::Max, dim, true)
    }
    pub fn min(&self, dim: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::Min, dim, false)
    }
    pub fn min_keepdim(&self, dim: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::Min, dim, true)
    }
    pub fn argmax(&self, dim: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::ArgMax, dim, false)
    }
    pub fn argmin(&self, dim: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::ArgMin, dim, false)
    }
    pub fn mean_keepdim(&self, dim: impl Dim) -> Result<Tensor> {
        let dim = self.shape().dim(dim, "mean")?;
        let n = self.dims()[dim];
        self.sum_keepdim(dim)?.affine(1.0 / n as f64, 0.0)
    }
    pub fn mean(&self, dim: impl Dim) -> Result<Tensor> {
        let dim = self.shape().dim(dim, "mean")?;
        self.mean_keepdim(dim)?.squeeze(dim)
    }
    /// Sum of every element, as a scalar tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.flatten_all()?.sum(0)
    }
    /// Mean of every element, as a scalar tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.flatten_all()?.mean(0)
    }

    // ------------------------------------------------------------------ products and indexing

    /// Matrix product over the last two dimensions, broadcasting leading (batch) dimensions.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        check_same_device("matmul", self, rhs)?;
        check_same_dtype("matmul", self, rhs)?;
        check_float("matmul", self)?;
        if self.rank() < 2 || rhs.rank() < 2 {
            return Err(Error::ShapeMismatch {
                op: "matmul (both operands need rank >= 2)",
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
            });
        }
        let (l, r) = (self.dims(), rhs.dims());
        let (m, k) = (l[l.len() - 2], l[l.len() - 1]);
        let (k2, n) = (r[r.len() - 2], r[r.len() - 1]);
        if k != k2 {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
            });
        }
        let batch = Shape::new(l[..l.len() - 2].to_vec())
            .broadcast_with(&Shape::new(r[..r.len() - 2].to_vec()), "matmul")?;
        let mut lhs_dims = batch.dims().to_vec();
        lhs_dims.extend([m, k]);
        let mut rhs_dims = batch.dims().to_vec();
        rhs_dims.extend([k, n]);
        let mut out_dims = batch.dims().to_vec();
        out_dims.extend([m, n]);
        let out_shape = Shape::new(out_dims);
        out_shape.check_alloc(self.dtype().size_in_bytes(), "matmul")?;
        let lhs_layout = self.layout().broadcast_as(&Shape::new(lhs_dims))?;
        let rhs_layout = rhs.layout().broadcast_as(&Shape::new(rhs_dims))?;
        let storage = self.device().backend().matmul(
            &**self.storage(),
            &lhs_layout,
            &**rhs.storage(),
            &rhs_layout,
        )?;
        self.result_tensor(storage, out_shape)
    }

    /// Picks entries of `dim` by a 1-D `U32` index tensor (an embedding lookup with `dim = 0`).
    /// Out-of-range indices are an error.
    pub fn index_select(&self, ids: &Tensor, dim: impl Dim) -> Result<Tensor> {
        let dim = self.shape().dim(dim, "index_select")?;
        check_same_device("index_select", self, ids)?;
        check_dtype("index_select", ids, DType::U32)?;
        if ids.rank() != 1 {
            return Err(Error::bad_shape(
                "index_select",
                "indices must be 1-D",
                ids.shape(),
            ));
        }
        let storage = self.device().backend().index_select(
            &**self.storage(),
            self.layout(),
            &**ids.storage(),
            ids.layout(),
            dim,
        )?;
        let mut dims = self.dims().to_vec();
        dims[dim] = ids.elem_count();
        self.result_tensor(storage, Shape::new(dims))
    }

    /// `out[.., i, ..] = self[.., ids[.., i, ..], ..]` along `dim`. `ids` (`U32`) has the
    /// output's shape, which matches `self` except at `dim`.
    pub fn gather(&self, ids: &Tensor, dim: impl Dim) -> Result<Tensor> {
        let dim = self.shape().dim(dim, "gather")?;
        check_same_device("gather", self, ids)?;
        check_dtype("gather", ids, DType::U32)?;
        self.check_index_shape("gather", ids, dim)?;
        let storage = self.device().backend().gather(
            &**self.storage(),
            self.layout(),
            &**ids.storage(),
            ids.layout(),
            dim,
        )?;
        self.result_tensor(storage, ids.shape().clone())
    }

    /// A copy of `self` with `src[.., i, ..]` added at `self[.., ids[.., i, ..], ..]` along
    /// `dim`; `ids` (`U32`) and `src` share a shape that matches `self` except at `dim`.
    pub fn scatter_add(&self, ids: &Tensor, src: &Tensor, dim: impl Dim) -> Result<Tensor> {
        let dim = self.shape().dim(dim, "scatter_add")?;
        check_same_device("scatter_add", self, ids)?;
        check_same_device("scatter_add", self, src)?;
        check_dtype("scatter_add", ids, DType::U32)?;
        check_same_dtype("scatter_add", self, src)?;
        if ids.shape() != src.shape() {
            return Err(Error::ShapeMismatch {
                op: "scatter_add",
                lhs: ids.shape().clone(),
                rhs: src.shape().clone(),
            });
        }
        self.check_index_shape("scatter_add", ids, dim)?;
        let storage = self.device().backend().scatter_add(
            &**self.storage(),
            self.layout(),
            &**ids.storage(),
            ids.layout(),
            &**src.storage(),
            src.layout(),
            dim,
        )?;
        self.result_tensor(storage, self.shape().clone())
    }

    fn check_index_shape(&self, op: &'static str, ids: &Tensor, dim: usize) -> Result<()> {
        let fits = ids.rank() == self.rank()
            && ids
                .dims()
                .iter()
                .zip(self.dims())
                .enumerate()
                .all(|(i, (a, b))| i == dim || a == b);
        if fits {
            Ok(())
        } else {
            Err(Error::ShapeMismatch {
                op,
                lhs: self.shape().clone(),
                rhs: ids.shape().clone(),
            })
        }
    }

    // ------------------------------------------------------------------ fused ops

    /// Softmax over `dim` (fused when `dim` is the last one).
    pub fn softmax(&self, dim: impl Dim) -> Result<Tensor> {
        check_float("softmax", self)?;
        self.along_last_dim(dim, "softmax", |t| t.device().backend().softmax_last_dim(t))
    }

    /// Log-softmax over `dim` (fused when `dim` is the last one).
    pub fn log_softmax(&self, dim: impl Dim) -> Result<Tensor> {
        check_float("log_softmax", self)?;
        self.along_last_dim(dim, "log_softmax", |t| {
            t.device().backend().log_softmax_last_dim(t)
        })
    }

    fn along_last_dim(
        &self,
        dim: impl Dim,
        op: &'static str,
        f: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if self.rank() == 0 {
            return Err(Error::bad_shape(
                op,
                "needs at least one dimension",
                self.shape(),
            ));
        }
        let dim = self.shape().dim(dim, op)?;
        let last = self.rank() - 1;
        if dim == last {
            f(self)
        } else {
            f(&self.transpose(dim, last)?)?.transpose(dim, last)
        }
    }

    /// Layer norm over the last dimension; `weight` and `bias` have the last dimension's size.
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        check_float("layer_norm", self)?;
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::invalid(
                "layer_norm",
                format!("eps must be finite and >= 0, got {eps}"),
            ));
        }
        let last = *self.dims().last().ok_or_else(|| {
            Error::bad_shape("layer_norm", "needs at least one dimension", self.shape())
        })?;
        for p in [weight, bias].into_iter().flatten() {
            check_same_device("layer_norm", self, p)?;
            check_same_dtype("layer_norm", self, p)?;
            if p.dims() != [last] {
                return Err(Error::ShapeMismatch {
                    op: "layer_norm (weight/bias vs last dimension)",
                    lhs: self.shape().clone(),
                    rhs: p.shape().clone(),
                });
            }
        }
        self.device().backend().layer_norm(self, weight, bias, eps)
    }

    /// GELU of the given kind.
    pub fn gelu(&self, kind: GeluKind) -> Result<Tensor> {
        check_float("gelu", self)?;
        self.device().backend().gelu(self, kind)
    }

    /// The gradient of [`Tensor::gelu`] at `self` given the output's gradient `d_out` (same
    /// shape and dtype).
    pub fn gelu_backward(&self, d_out: &Tensor, kind: GeluKind) -> Result<Tensor> {
        const OP: &str = "gelu_backward";
        check_float(OP, self)?;
        check_same_device(OP, self, d_out)?;
        check_same_dtype(OP, self, d_out)?;
        if self.shape() != d_out.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: d_out.shape().clone(),
            });
        }
        self.device().backend().gelu_backward(self, d_out, kind)
    }

    /// Gradients of [`Tensor::layer_norm`] at `self` (statistics recomputed) given the
    /// output's gradient `d_out` (same shape and dtype).
    pub fn layer_norm_backward(
        &self,
        weight: Option<&Tensor>,
        eps: f64,
        d_out: &Tensor,
    ) -> Result<crate::LayerNormGrads> {
        const OP: &str = "layer_norm_backward";
        check_float(OP, self)?;
        check_same_device(OP, self, d_out)?;
        check_same_dtype(OP, self, d_out)?;
        if self.shape() != d_out.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: d_out.shape().clone(),
            });
        }
        let last = *self
            .dims()
            .last()
            .ok_or_else(|| Error::bad_shape(OP, "needs at least one dimension", self.shape()))?;
        if let Some(w) = weight {
            check_same_device(OP, self, w)?;
            check_same_dtype(OP, self, w)?;
            if w.dims() != [last] {
                return Err(Error::bad_shape(
                    OP,
                    format!("weight must be ({last})"),
                    w.shape(),
                ));
            }
        }
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::invalid(
                OP,
                format!("eps must be finite and >= 0, got {eps}"),
            ));
        }
        self.device()
            .backend()
            .layer_norm_backward(self, weight, eps, d_out)
    }

    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`.
    pub fn gelu_erf(&self) -> Result<Tensor> {
        self.gelu(GeluKind::Erf)
    }

    /// The tanh approximation of GELU.
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.gelu(GeluKind::Tanh)
    }

    /// `x * sigmoid(1.702 x)`.
    pub fn quick_gelu(&self) -> Result<Tensor> {
        self.gelu(GeluKind::Quick)
    }

    /// Scaled dot-product attention (fused). `q` is `(B, H, Nq, D)`, `k` is `(B, H, Nk, D)`,
    /// `v` is `(B, H, Nk, Dv)`; returns the output and the log-sum-exp of every score row.
    pub fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<AttentionOutput> {
        check_attention_args(q, k, v, opts)?;
        q.device().backend().attention(q, k, v, opts)
    }

    /// Gradients of [`Tensor::attention`] with respect to `q`, `k` and `v`.
    pub fn attention_backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &AttentionOutput,
        d_out: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<AttentionGrads> {
        check_attention_args(q, k, v, opts)?;
        for t in [&out.out, d_out] {
            check_same_device("attention_backward", q, t)?;
            check_same_dtype("attention_backward", q, t)?;
            if t.dims() != [q.dims()[0], q.dims()[1], q.dims()[2], v.dims()[3]] {
                return Err(Error::bad_shape(
                    "attention_backward",
                    "output and its gradient must be (B, H, Nq, Dv)",
                    t.shape(),
                ));
            }
        }
        check_same_device("attention_backward", q, &out.lse)?;
        check_float("attention_backward", &out.lse)?;
        if out.lse.dims() != &q.dims()[..3] {
            return Err(Error::bad_shape(
                "attention_backward",
                "lse must be (B, H, Nq)",
                out.lse.shape(),
            ));
        }
        q.device()
            .backend()
            .attention_backward(q, k, v, out, d_out, opts)
    }

    /// A fully connected layer, `self @ weight^T + bias`: `self` is `(M, K)`, `weight` is
    /// `(N, K)` (the PyTorch layout of a linear layer's weight), `bias` is `(N)`; the result
    /// is `(M, N)`. Backends may keep a prepared form of `weight` between calls (the CPU
    /// backend caches its packed panels), so pass the layer's own weight tensor each time.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "linear";
        check_float(OP, self)?;
        check_same_device(OP, self, weight)?;
        check_same_dtype(OP, self, weight)?;
        if self.rank() != 2 || weight.rank() != 2 || self.dims()[1] != weight.dims()[1] {
            return Err(Error::ShapeMismatch {
                op: "linear (x must be (M, K) and weight (N, K))",
                lhs: self.shape().clone(),
                rhs: weight.shape().clone(),
            });
        }
        if let Some(b) = bias {
            check_same_device(OP, self, b)?;
            check_same_dtype(OP, self, b)?;
            if b.dims() != [weight.dims()[0]] {
                return Err(Error::bad_shape(
                    OP,
                    format!("bias must be ({})", weight.dims()[0]),
                    b.shape(),
                ));
            }
        }
        self.device().backend().linear(self, weight, bias)
    }

    /// Patch embedding: a convolution with stride equal to its kernel over `(B, C, H, W)`
    /// images, flattened to `(B, [1 +] (H/P)(W/P), E)` rows, with optional class row and
    /// position embedding added.
    pub fn patch_embed(
        images: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: &PatchEmbedOptions,
    ) -> Result<Tensor> {
        check_patch_embed_args("patch_embed", images, weight, bias, opts)?;
        images
            .device()
            .backend()
            .patch_embed(images, weight, bias, opts)
    }

    /// Gradients of [`Tensor::patch_embed`] given the output's gradient `d_out`
    /// `(B, [1 +] (H/P)(W/P), E)`. The images' gradient is computed only when `need_images`.
    pub fn patch_embed_backward(
        images: &Tensor,
        weight: &Tensor,
        opts: &PatchEmbedOptions,
        d_out: &Tensor,
        need_images: bool,
    ) -> Result<PatchEmbedGrads> {
        const OP: &str = "patch_embed_backward";
        let rows = check_patch_embed_args(OP, images, weight, None, opts)?;
        check_same_device(OP, images, d_out)?;
        check_same_dtype(OP, images, d_out)?;
        let want = [images.dims()[0], rows, weight.dims()[0]];
        if d_out.dims() != want {
            return Err(Error::bad_shape(
                OP,
                format!("the output's gradient must be {want:?}"),
                d_out.shape(),
            ));
        }
        images
            .device()
            .backend()
            .patch_embed_backward(images, weight, opts, d_out, need_images)
    }

    /// CLIP's contrastive loss: the mean of the cross-entropies of `scale * image @ text^T`
    /// over rows and over columns, with matching pairs on the diagonal.
    pub fn contrastive_loss(
        image: &Tensor,
        text: &Tensor,
        scale: &Tensor,
    ) -> Result<ContrastiveOutput> {
        check_contrastive_args(image, text, scale)?;
        image
            .device()
            .backend()
            .contrastive_loss(image, text, scale)
    }

    /// Gradients of [`Tensor::contrastive_loss`] given the loss's gradient `d_loss` (a scalar).
    pub fn contrastive_loss_backward(
        image: &Tensor,
        text: &Tensor,
        scale: &Tensor,
        saved: &ContrastiveOutput,
        d_loss: &Tensor,
    ) -> Result<ContrastiveGrads> {
        check_contrastive_args(image, text, scale)?;
        let n = image.dims()[0];
        for t in [&saved.lse_rows, &saved.lse_cols, d_loss] {
            check_same_device("contrastive_loss_backward", image, t)?;
            check_float("contrastive_loss_backward", t)?;
        }
        for t in [&saved.lse_rows, &saved.lse_cols] {
            if t.dims() != [n] {
                return Err(Error::bad_shape(
                    "contrastive_loss_backward",
                    format!("saved log-sum-exps must be ({n})"),
                    t.shape(),
                ));
            }
        }
        if d_loss.elem_count() != 1 {
            return Err(Error::bad_shape(
                "contrastive_loss_backward",
                "d_loss must be a scalar",
                d_loss.shape(),
            ));
        }
        image
            .device()
            .backend()
            .contrastive_loss_backward(image, text, scale, saved, d_loss)
    }
}

fn check_attention_args(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<()> {
    const OP: &str = "attention";
    check_float(OP, q)?;
    for t in [k, v] {
        check_same_device(OP, q, t)?;
        check_same_dtype(OP, q, t)?;
    }
    for t in [q, k, v] {
        if t.rank() != 4 {
            return Err(Error::bad_shape(
                OP,
                "q, k and v must be (B, H, N, D)",
                t.shape(),
            ));
        }
    }
    let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
    if qd[..2] != kd[..2] || kd[..3] != vd[..3] || qd[3] != kd[3] {
        return Err(Error::invalid(
            OP,
            format!(
                "q {}, k {}, v {} do not fit: need q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, Dv)",
                q.shape(),
                k.shape(),
                v.shape()
            ),
        ));
    }
    if qd[3] == 0 {
        return Err(Error::bad_shape(
            OP,
            "the head dimension must not be 0",
            q.shape(),
        ));
    }
    if let Some(mask) = &opts.key_padding_mask {
        check_same_device(OP, q, mask)?;
        check_dtype("attention key_padding_mask", mask, DType::U32)?;
        if mask.dims() != [qd[0], kd[2]] {
            return Err(Error::bad_shape(
                OP,
                format!(
                    "key_padding_mask must be (batch, n_k) = ({}, {})",
                    qd[0], kd[2]
                ),
                mask.shape(),
            ));
        }
    }
    if let Some(s) = opts.scale
        && !s.is_finite()
    {
        return Err(Error::invalid(OP, format!("scale must be finite, got {s}")));
    }
    Ok(())
}

fn check_contrastive_args(image: &Tensor, text: &Tensor, scale: &Tensor) -> Result<()> {
    const OP: &str = "contrastive_loss";
    check_float(OP, image)?;
    check_same_device(OP, image, text)?;
    check_same_device(OP, image, scale)?;
    check_same_dtype(OP, image, text)?;
    if image.rank() != 2 || image.shape() != text.shape() || image.dims()[0] == 0 {
        return Err(Error::ShapeMismatch {
            op: "contrastive_loss (image and text must both be (N, D), N > 0)",
            lhs: image.shape().clone(),
            rhs: text.shape().clone(),
        });
    }
    if scale.elem_count() != 1 || !scale.dtype().is_float() {
        return Err(Error::bad_shape(
            OP,
            "scale must be a float tensor with one element",
            scale.shape(),
        ));
    }
    Ok(())
}

macro_rules! bin_trait {
    ($trait:ident, $fn:ident, $method:ident) => {
        impl std::ops::$trait<&Tensor> for &Tensor {
            type Output = Result<Tensor>;
            fn $fn(self, rhs: &Tensor) -> Result<Tensor> {
                self.$method(rhs)
            }
        }
        impl std::ops::$trait<Tensor> for Tensor {
            type Output = Result<Tensor>;
            fn $fn(self, rhs: Tensor) -> Result<Tensor> {
                (&self).$method(&rhs)
            }
        }
        impl std::ops::$trait<&Tensor> for Tensor {
            type Output = Result<Tensor>;
            fn $fn(self, rhs: &Tensor) -> Result<Tensor> {
                (&self).$method(rhs)
            }
        }
        impl std::ops::$trait<f64> for &Tensor {
            type Output = Result<Tensor>;
            fn $fn(self, rhs: f64) -> Result<Tensor> {
                self.$method(&self.scalar_like(rhs)?)
            }
        }
        impl std::ops::$trait<f64> for Tensor {
            type Output = Result<Tensor>;
            fn $fn(self, rhs: f64) -> Result<Tensor> {
                (&self).$method(&self.scalar_like(rhs)?)
            }
        }
    };
}

bin_trait!(Add, add, add);
bin_trait!(Sub, sub, sub);
bin_trait!(Mul, mul, mul);
bin_trait!(Div, div, div);

impl std::ops::Neg for &Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        Tensor::neg(self)
    }
}

/// Checks the arguments of patch embedding; returns the number of output rows.
fn check_patch_embed_args(
    op: &'static str,
    images: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &PatchEmbedOptions,
) -> Result<usize> {
    check_float(op, images)?;
    let p = opts.patch_size;
    if images.rank() != 4 {
        return Err(Error::bad_shape(
            op,
            "images must be (B, C, H, W)",
            images.shape(),
        ));
    }
    let [_, c, h, w] = [
        images.dims()[0],
        images.dims()[1],
        images.dims()[2],
        images.dims()[3],
    ];
    if c == 0 {
        return Err(Error::bad_shape(
            op,
            "images need at least one channel",
            images.shape(),
        ));
    }
    if p == 0 || h < p || w < p {
        return Err(Error::bad_shape(
            op,
            format!("patch size {p} does not fit the image"),
            images.shape(),
        ));
    }
    check_same_device(op, images, weight)?;
    check_same_dtype(op, images, weight)?;
    if weight.rank() != 4 || weight.dims()[1..] != [c, p, p] {
        return Err(Error::bad_shape(
            op,
            format!("weight must be (E, {c}, {p}, {p})"),
            weight.shape(),
        ));
    }
    let e = weight.dims()[0];
    let rows = (h / p) * (w / p) + usize::from(opts.class_embedding.is_some());
    let expect = |t: &Tensor, dims: &[usize], what: &str| -> Result<()> {
        check_same_device(op, images, t)?;
        check_same_dtype(op, images, t)?;
        if t.dims() != dims {
            return Err(Error::bad_shape(
                op,
                format!("{what} must be {dims:?}"),
                t.shape(),
            ));
        }
        Ok(())
    };
    if let Some(b) = bias {
        expect(b, &[e], "bias")?;
    }
    if let Some(cls) = &opts.class_embedding {
        expect(cls, &[e], "class embedding")?;
    }
    if let Some(pos) = &opts.position_embedding {
        expect(pos, &[rows, e], "position embedding")?;
    }
    Ok(rows)
}

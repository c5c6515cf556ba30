//! The backend traits. A backend is one crate that implements [`Backend`] (and a storage type
//! implementing [`BackendStorage`]); model code only ever sees [`Device`](crate::Device).
//!
//! The traits are object safe on purpose: a device is an `Arc<dyn Backend>`, operations are
//! named by enums ([`UnaryOp`], [`BinaryOp`], [`ReduceOp`]) rather than generic methods, and
//! there is no closed list of backends anywhere.
//!
//! * **Required primitives** take storages with their [`Layout`]s (any strides) and return a new
//!   contiguous storage.
//! * **Fused ops** take and return [`Tensor`]s and have a default body, the *default
//!   composition* of primitives in [`crate::compose`]. A new backend runs every model on day one
//!   and overrides fused ops one at a time; the default composition is the oracle its fused
//!   kernel is tested against.

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use crate::compose;
use crate::{DType, HostSlice, HostVec, Layout, Result, Tensor};

/// Device memory owned by a backend. Backends downcast through [`BackendStorage::as_any`].
pub trait BackendStorage: Any + Send + Sync + Debug {
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn as_any(&self) -> &dyn Any;
}

/// A reference-counted storage.
pub type Storage = Arc<dyn BackendStorage>;

/// Read-only bytes shared with whoever produced them (for instance a memory-mapped file).
/// A backend may keep them alive and read from them without a copy.
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: std::ops::Range<usize>,
}

impl SharedBytes {
    /// Shares `owner[range]`. Fails if the range lies outside the owner's bytes.
    pub fn new(
        owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: std::ops::Range<usize>,
    ) -> Option<Self> {
        let len = (*owner).as_ref().len();
        (range.start <= range.end && range.end <= len).then_some(SharedBytes { owner, range })
    }

    pub fn bytes(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }

    pub fn owner(&self) -> &Arc<dyn AsRef<[u8]> + Send + Sync> {
        &self.owner
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.range.clone()
    }
}

impl Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.range.len())
    }
}

/// Where a device is: the backend's name and its ordinal. Two devices with equal locations
/// share memory, so their tensors may be mixed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeviceLocation {
    pub backend: &'static str,
    pub ordinal: usize,
}

impl std::fmt::Display for DeviceLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.backend, self.ordinal)
    }
}

/// Element-wise functions of one operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Sqr,
    Recip,
    Tanh,
    Sin,
    Cos,
    Erf,
    Relu,
    Sigmoid,
    /// `x * mul + add`.
    Affine {
        mul: f64,
        add: f64,
    },
    /// `x ^ exponent`.
    Powf(f64),
    /// `min(max(x, min), max)`.
    Clamp {
        min: f64,
        max: f64,
    },
    /// Gaussian error linear unit, `0.5 x (1 + erf(x / sqrt 2))`.
    GeluErf,
    /// The tanh approximation of GELU, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    GeluTanh,
    /// `x * sigmoid(1.702 x)`, as in CLIP.
    QuickGelu,
}

/// Element-wise functions of two operands of the same shape and dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
    Pow,
    /// Comparisons produce `U32` (1 or 0).
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl UnaryOp {
    /// The op's position in this enum and its two parameters (0 where it has none): the op
    /// code and parameters the GPU backends' element-wise kernels take.
    pub fn code(self) -> (u32, f64, f64) {
        match self {
            UnaryOp::Neg => (0, 0.0, 0.0),
            UnaryOp::Abs => (1, 0.0, 0.0),
            UnaryOp::Exp => (2, 0.0, 0.0),
            UnaryOp::Log => (3, 0.0, 0.0),
            UnaryOp::Sqrt => (4, 0.0, 0.0),
            UnaryOp::Sqr => (5, 0.0, 0.0),
            UnaryOp::Recip => (6, 0.0, 0.0),
            UnaryOp::Tanh => (7, 0.0, 0.0),
            UnaryOp::Sin => (8, 0.0, 0.0),
            UnaryOp::Cos => (9, 0.0, 0.0),
            UnaryOp::Erf => (10, 0.0, 0.0),
            UnaryOp::Relu => (11, 0.0, 0.0),
            UnaryOp::Sigmoid => (12, 0.0, 0.0),
            UnaryOp::Affine { mul, add } => (13, mul, add),
            UnaryOp::Powf(e) => (14, e, 0.0),
            UnaryOp::Clamp { min, max } => (15, min, max),
            UnaryOp::GeluErf => (16, 0.0, 0.0),
            UnaryOp::GeluTanh => (17, 0.0, 0.0),
            UnaryOp::QuickGelu => (18, 0.0, 0.0),
        }
    }
}

impl BinaryOp {
    /// The op code the GPU backends' kernels take: the position among the arithmetic ops
    /// (Add..Pow) or among the comparisons (Eq..Ge), which have kernels of their own.
    pub fn code(self) -> u32 {
        match self {
            BinaryOp::Add | BinaryOp::Eq => 0,
            BinaryOp::Sub | BinaryOp::Ne => 1,
            BinaryOp::Mul | BinaryOp::Lt => 2,
            BinaryOp::Div | BinaryOp::Le => 3,
            BinaryOp::Maximum | BinaryOp::Gt => 4,
            BinaryOp::Minimum | BinaryOp::Ge => 5,
            BinaryOp::Pow => 6,
        }
    }

    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
        )
    }
}

/// Reductions over one dimension (kept with size 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
    /// Index of the first maximum, as `U32`.
    ArgMax,
    /// Index of the first minimum, as `U32`.
    ArgMin,
}

/// Which GELU a fused activation computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GeluKind {
    Erf,
    Tanh,
    Quick,
}

impl GeluKind {
    pub fn unary_op(self) -> UnaryOp {
        match self {
            GeluKind::Erf => UnaryOp::GeluErf,
            GeluKind::Tanh => UnaryOp::GeluTanh,
            GeluKind::Quick => UnaryOp::QuickGelu,
        }
    }
}

/// Options of the fused attention op.
#[derive(Clone, Debug, Default)]
pub struct AttentionOptions {
    /// Multiplies `q @ k^T`; `None` means `1 / sqrt(head_dim)`.
    pub scale: Option<f64>,
    /// Query `i` sees key `j` only if `j <= i + (n_k - n_q)` (aligned at the bottom right, so
    /// that with equal lengths this is the usual lower-triangular mask).
    pub causal: bool,
    /// `(batch, n_k)` `U32` tensor: nonzero keys are attended, zero keys are masked out (the
    /// Hugging Face `attention_mask` convention).
    pub key_padding_mask: Option<Tensor>,
}

impl AttentionOptions {
    /// The scale applied to `q @ k^T` for a head dimension of `head_dim`: the explicit one, or
    /// `1 / sqrt(head_dim)`.
    pub fn scale_for(&self, head_dim: usize) -> f64 {
        self.scale.unwrap_or_else(|| 1.0 / (head_dim as f64).sqrt())
    }
}

/// Output of the fused attention op.
#[derive(Clone, Debug)]
pub struct AttentionOutput {
    /// `(batch, heads, n_q, d_v)` in the dtype of the inputs.
    pub out: Tensor,
    /// `(batch, heads, n_q)` in `F32` (`F64` for `F64` inputs): the log-sum-exp of each row of
    /// scaled, masked scores. `-inf` where a query sees no key (its output row is zero).
    pub lse: Tensor,
}

/// Gradients of attention with respect to its three inputs.
#[derive(Clone, Debug)]
pub struct AttentionGrads {
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
}

/// Gradients of layer norm with respect to its input and affine parameters.
#[derive(Clone, Debug)]
pub struct LayerNormGrads {
    /// In the shape and dtype of the input.
    pub dx: Tensor,
    /// `(D)` in the weight's dtype, when the norm has a weight.
    pub dweight: Option<Tensor>,
    /// `(D)` in the input's dtype: the gradient of a bias (whether or not the norm has one).
    pub dbias: Tensor,
}

/// Options of the fused patch embedding (a convolution whose stride equals its kernel).
#[derive(Clone, Debug)]
pub struct PatchEmbedOptions {
    pub patch_size: usize,
    /// `(embed)`: when given, the output has a leading class-token row holding it.
    pub class_embedding: Option<Tensor>,
    /// `(rows, embed)` added to every output row (class row included), where `rows` is the
    /// number of output rows.
    pub position_embedding: Option<Tensor>,
}

/// Gradients of patch embedding.
#[derive(Clone, Debug)]
pub struct PatchEmbedGrads {
    /// `(B, C, H, W)`, when asked for (pixels no patch covers get zero).
    pub d_images: Option<Tensor>,
    /// `(E, C, P, P)`.
    pub d_weight: Tensor,
    /// `(E)`: the gradient of a bias (whether or not the embedding has one).
    pub d_bias: Tensor,
    /// `(E)`, when the options have a class embedding.
    pub d_class: Option<Tensor>,
    /// `(rows, E)`, when the options have a position embedding.
    pub d_position: Option<Tensor>,
}

/// Output of the fused contrastive loss.
#[derive(Clone, Debug)]
pub struct ContrastiveOutput {
    /// Scalar (shape `[]`): the mean of the image-to-text and text-to-image cross-entropies.
    pub loss: Tensor,
    /// `(n)`: log-sum-exp of each row of the logits (one per image).
    pub lse_rows: Tensor,
    /// `(n)`: log-sum-exp of each column of the logits (one per text).
    pub lse_cols: Tensor,
}

/// Gradients of the contrastive loss.
#[derive(Clone, Debug)]
pub struct ContrastiveGrads {
    pub d_image: Tensor,
    pub d_text: Tensor,
    /// Scalar: gradient with respect to the multiplier `scale`.
    pub d_scale: Tensor,
}

/// A compute backend. See the module documentation for what is required and what may be
/// overridden.
///
/// Contract for primitives: every returned storage is contiguous with the output layout's
/// element count; input layouts may have any strides (zero strides included) and are already
/// checked by the tensor crate to be within their storages, to have matching shapes and
/// matching dtypes where the operation requires it.
pub trait Backend: Send + Sync + Debug + 'static {
    /// Where this device lives.
    fn location(&self) -> DeviceLocation;

    /// Which dtypes this device can hold and compute with.
    fn supports_dtype(&self, dtype: DType) -> bool;

    /// The backend as `Any`, for code that needs the concrete type behind a [`Device`]
    /// (a decorating backend finding itself, for instance). `None` unless a backend opts in.
    ///
    /// [`Device`]: crate::Device
    fn as_any(&self) -> Option<&dyn Any> {
        None
    }

    // ----- memory -----

    /// A storage of `len` elements, all equal to `value` (converted to `dtype`).
    fn full(&self, dtype: DType, len: usize, value: f64) -> Result<Storage>;
    /// Copies host data to the device.
    fn upload(&self, data: HostSlice<'_>) -> Result<Storage>;
    /// Makes a storage from raw little-endian bytes. Backends that can read host memory in
    /// place (the CPU) may keep the bytes without copying.
    fn upload_bytes(&self, dtype: DType, bytes: SharedBytes) -> Result<Storage> {
        let host = HostVec::from_bytes(dtype, bytes.bytes()).ok_or_else(|| {
            crate::Error::invalid(
                "upload_bytes",
                format!(
                    "{} bytes is not a whole number of {dtype} elements",
                    bytes.bytes().len()
                ),
            )
        })?;
        self.upload(host.as_slice())
    }
    /// Copies the elements of a view, in row-major order, to the host.
    fn download(&self, src: &dyn BackendStorage, layout: &Layout) -> Result<HostVec>;
    /// Uniform samples in `[low, high)`, reproducible from `seed`.
    fn rand_uniform(
        &self,
        dtype: DType,
        len: usize,
        low: f64,
        high: f64,
        seed: u64,
    ) -> Result<Storage>;
    /// Normal samples, reproducible from `seed`.
    fn rand_normal(
        &self,
        dtype: DType,
        len: usize,
        mean: f64,
        std: f64,
        seed: u64,
    ) -> Result<Storage>;

    // ----- primitives -----

    /// A contiguous copy of a view.
    fn copy_strided(&self, src: &dyn BackendStorage, layout: &Layout) -> Result<Storage>;
    /// Concatenation of views along `dim`; all shapes agree except at `dim`.
    fn concat(&self, parts: &[(&dyn BackendStorage, &Layout)], dim: usize) -> Result<Storage>;
    /// Conversion to another dtype (floats round to nearest; float to `U32` truncates and
    /// saturates).
    fn cast(&self, src: &dyn BackendStorage, layout: &Layout, dtype: DType) -> Result<Storage>;
    fn unary(&self, op: UnaryOp, src: &dyn BackendStorage, layout: &Layout) -> Result<Storage>;
    /// Both layouts have the same shape (broadcasting is already expressed by zero strides).
    fn binary(
        &self,
        op: BinaryOp,
        lhs: &dyn BackendStorage,
        lhs_layout: &Layout,
        rhs: &dyn BackendStorage,
        rhs_layout: &Layout,
    ) -> Result<Storage>;
    /// `cond != 0 ? on_true : on_false`; `cond` is `U32`, all three layouts have one shape.
    fn where_cond(
        &self,
        cond: &dyn BackendStorage,
        cond_layout: &Layout,
        on_true: &dyn BackendStorage,
        true_layout: &Layout,
        on_false: &dyn BackendStorage,
        false_layout: &Layout,
    ) -> Result<Storage>;
    /// Reduces dimension `dim` to size 1.
    fn reduce(
        &self,
        op: ReduceOp,
        src: &dyn BackendStorage,
        layout: &Layout,
        dim: usize,
    ) -> Result<Storage>;
    /// Batched matrix product: `lhs` is `(batch.., m, k)`, `rhs` is `(batch.., k, n)` with the
    /// same batch dimensions (possibly zero-strided), output `(batch.., m, n)`.
    fn matmul(
        &self,
        lhs: &dyn BackendStorage,
        lhs_layout: &Layout,
        rhs: &dyn BackendStorage,
        rhs_layout: &Layout,
    ) -> Result<Storage>;
    /// Selects entries along `dim` by a 1-D `U32` index list: output has `ids.len()` at `dim`.
    /// Out-of-range indices must be reported as [`Error::IndexOutOfRange`](crate::Error).
    fn index_select(
        &self,
        src: &dyn BackendStorage,
        src_layout: &Layout,
        ids: &dyn BackendStorage,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Storage>;
    /// `out[.., i, ..] = src[.., ids[.., i, ..], ..]` along `dim`; `ids` has the output shape.
    /// Out-of-range indices must be reported as [`Error::IndexOutOfRange`](crate::Error).
    fn gather(
        &self,
        src: &dyn BackendStorage,
        src_layout: &Layout,
        ids: &dyn BackendStorage,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Storage>;
    /// A copy of `dst` with `dst[.., ids[.., i, ..], ..] += src[.., i, ..]` along `dim`; `ids`
    /// and `src` share a shape. Indices are already checked to be in range.
    #[allow(clippy::too_many_arguments)]
    fn scatter_add(
        &self,
        dst: &dyn BackendStorage,
        dst_layout: &Layout,
        ids: &dyn BackendStorage,
        ids_layout: &Layout,
        src: &dyn BackendStorage,
        src_layout: &Layout,
        dim: usize,
    ) -> Result<Storage>;

    // ----- fused ops: default compositions, override with a kernel -----

    /// A fully connected layer: `x` `(M, K)` times the transpose of `weight` `(N, K)` (the
    /// PyTorch layout), plus `bias` `(N)` on every row. Weights are immutable, so a backend
    /// may keep a prepared (for instance packed) form of `weight` across calls.
    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        compose::linear(x, weight, bias)
    }

    /// Softmax over the last dimension.
    fn softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        compose::softmax_last_dim(x)
    }
    /// Log-softmax over the last dimension.
    fn log_softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        compose::log_softmax_last_dim(x)
    }
    /// Layer norm over the last dimension, with optional affine weight and bias.
    fn layer_norm(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        compose::layer_norm(x, weight, bias, eps)
    }
    /// A GELU activation.
    fn gelu(&self, x: &Tensor, kind: GeluKind) -> Result<Tensor> {
        x.unary(kind.unary_op())
    }
    /// The gradient of [`Backend::gelu`] at `x` given the output's gradient `d_out`.
    fn gelu_backward(&self, x: &Tensor, d_out: &Tensor, kind: GeluKind) -> Result<Tensor> {
        compose::gelu_backward(x, d_out, kind)
    }
    /// Gradients of [`Backend::layer_norm`] (statistics recomputed from `x`).
    fn layer_norm_backward(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        eps: f64,
        d_out: &Tensor,
    ) -> Result<LayerNormGrads> {
        compose::layer_norm_backward(x, weight, eps, d_out)
    }
    /// Scaled dot-product attention; `q` is `(B, H, Nq, D)`, `k` is `(B, H, Nk, D)`, `v` is
    /// `(B, H, Nk, Dv)`.
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<AttentionOutput> {
        compose::attention(q, k, v, opts)
    }
    /// Gradients of [`Backend::attention`], recomputing scores from the saved log-sum-exp.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &AttentionOutput,
        d_out: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<AttentionGrads> {
        compose::attention_backward(q, k, v, out, d_out, opts)
    }
    /// Patch embedding: `images` `(B, C, H, W)`, `weight` `(E, C, P, P)`, `bias` `(E)`;
    /// output `(B, [1 +] (H/P)(W/P), E)`.
    fn patch_embed(
        &self,
        images: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: &PatchEmbedOptions,
    ) -> Result<Tensor> {
        compose::patch_embed(images, weight, bias, opts)
    }
    /// Gradients of [`Backend::patch_embed`] given the output's gradient `d_out`; the images'
    /// gradient only when `need_images`. Half-precision inputs accumulate in f32.
    fn patch_embed_backward(
        &self,
        images: &Tensor,
        weight: &Tensor,
        opts: &PatchEmbedOptions,
        d_out: &Tensor,
        need_images: bool,
    ) -> Result<PatchEmbedGrads> {
        compose::patch_embed_backward(images, weight, opts, d_out, need_images)
    }
    /// CLIP's symmetric cross-entropy over `scale * image @ text^T` with the diagonal as labels;
    /// `image` and `text` are `(N, D)`, `scale` a scalar tensor.
    fn contrastive_loss(
        &self,
        image: &Tensor,
        text: &Tensor,
        scale: &Tensor,
    ) -> Result<ContrastiveOutput> {
        compose::contrastive_loss(image, text, scale)
    }
    /// Gradients of [`Backend::contrastive_loss`] given the gradient of the loss.
    fn contrastive_loss_backward(
        &self,
        image: &Tensor,
        text: &Tensor,
        scale: &Tensor,
        saved: &ContrastiveOutput,
        d_loss: &Tensor,
    ) -> Result<ContrastiveGrads> {
        compose::contrastive_loss_backward(image, text, scale, saved, d_loss)
    }
}

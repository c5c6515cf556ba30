//! Reverse-mode automatic differentiation as a device decorator.
//!
//! [`Autodiff::wrap`] turns any [`Device`] into one that computes exactly what the wrapped
//! device computes and, for every operation whose inputs need a gradient, records a node
//! with the operation's backward rule. [`backward`] walks the nodes reachable from a scalar
//! loss in reverse creation order and returns the gradient of every variable
//! ([`Autodiff::var`]) it depends on.
//!
//! Design choices:
//!
//! * The graph lives in the storages: each output storage holds an `Arc` to the node that
//!   made it, and each node holds what its rule needs. Dropping the tensors drops the graph,
//!   and an operation none of whose inputs needs a gradient (inference, data preparation)
//!   records nothing, so inference on this device holds no graph.
//! * Gradients are kept per *storage*, as a dense vector of the storage's elements. View
//!   operations (reshape, permute, narrow, broadcast) only change layouts and launch nothing,
//!   so they need no node: an operation's rule returns the gradient in the shape of the view
//!   it read, and [`backward`] maps it back through that view's layout (summing over
//!   broadcast dimensions, un-permuting, or scattering for general strides).
//! * Rules run on the wrapped device with plain tensors, so gradients use the same kernels
//!   as the forward pass; the fused ops (attention, contrastive loss) use the backend's own
//!   fused backward. Higher-order gradients are not supported: gradients carry no graph.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use glimpse_tensor::{
    AttentionGrads, AttentionOptions, AttentionOutput, Backend, BackendStorage, BinaryOp,
    ContrastiveGrads, ContrastiveOutput, DType, Device, DeviceLocation, Error, GeluKind, HostSlice,
    HostVec, Layout, PatchEmbedOptions, ReduceOp, Result, SharedBytes, Storage, Tensor, UnaryOp,
};

/// A gradient rule: given the gradient of the node's output (in the output's shape), the
/// gradients of its inputs in the shapes of the views it read (`None` where an input needs
/// none).
type Rule = Box<dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// One recorded operation.
struct Node {
    /// The id of the storage this node produced (ids grow, so inputs have smaller ids).
    id: u64,
    /// The layout the output was produced with, so the rule sees the gradient in its shape.
    out_layout: Layout,
    inputs: Vec<Edge>,
    rule: Rule,
}

/// An input of a node: which storage, through which view.
struct Edge {
    id: u64,
    layout: Layout,
    storage_len: usize,
    requires_grad: bool,
    node: Option<Arc<Node>>,
}

/// Storage of the autodiff device: the wrapped device's storage plus its place in the graph.
pub struct AutodiffStorage {
    inner: Storage,
    id: u64,
    /// A variable ([`Autodiff::var`]) or the result of an operation on one.
    requires_grad: bool,
    node: Option<Arc<Node>>,
}

impl std::fmt::Debug for AutodiffStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutodiffStorage")
            .field("id", &self.id)
            .field("requires_grad", &self.requires_grad)
            .field("inner", &self.inner)
            .finish()
    }
}

impl BackendStorage for AutodiffStorage {
    fn dtype(&self) -> DType {
        self.inner.dtype()
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl AutodiffStorage {
    /// The wrapped device's storage.
    pub fn inner(&self) -> &Storage {
        &self.inner
    }

    fn edge(&self, layout: &Layout) -> Edge {
        Edge {
            id: self.id,
            layout: layout.clone(),
            storage_len: self.inner.len(),
            requires_grad: self.requires_grad,
            node: self.node.clone(),
        }
    }
}

/// The autodiff decorator. Build one with [`Autodiff::wrap`].
pub struct Autodiff {
    inner: Device,
    location: DeviceLocation,
    grad_enabled: AtomicBool,
    /// This decorator's own handle, so that results land on the very same device.
    me: Weak<Autodiff>,
}

impl std::fmt::Debug for Autodiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Autodiff({})", self.inner)
    }
}

/// Interned backend names (`"autodiff(cpu)"`), since a location names its backend with a
/// `&'static str`; one leak per distinct wrapped backend.
fn location_name(inner: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    names
        .entry(inner.to_string())
        .or_insert_with(|| Box::leak(format!("autodiff({inner})").into_boxed_str()))
}

impl Autodiff {
    /// A device that records gradients on top of `inner`. Its tensors can be mixed only with
    /// each other; [`Autodiff::var`] and [`Autodiff::lift`] bring tensors in, [`unwrap`]
    /// takes them out.
    pub fn wrap(inner: &Device) -> Device {
        let loc = inner.location();
        let ad: Arc<Autodiff> = Arc::new_cyclic(|me| Autodiff {
            inner: inner.clone(),
            location: DeviceLocation {
                backend: location_name(loc.backend),
                ordinal: loc.ordinal,
            },
            grad_enabled: AtomicBool::new(true),
            me: me.clone(),
        });
        Device::new(ad)
    }

    /// The decorator behind an autodiff device, or an error naming the device.
    pub fn of(device: &Device) -> Result<&Autodiff> {
        device
            .backend()
            .as_any()
            .and_then(|a| a.downcast_ref::<Autodiff>())
            .ok_or_else(|| {
                Error::invalid(
                    "autodiff",
                    format!("{device} is not an autodiff device (see Autodiff::wrap)"),
                )
            })
    }

    /// The wrapped device.
    pub fn inner(&self) -> &Device {
        &self.inner
    }

    /// Turns recording on or off (off: every result is a constant). Returns the old value.
    pub fn set_grad_enabled(&self, enabled: bool) -> bool {
        self.grad_enabled.swap(enabled, Ordering::Relaxed)
    }

    fn device(&self) -> Result<Device> {
        let me: Arc<Autodiff> = self
            .me
            .upgrade()
            .ok_or_else(|| Error::invalid("autodiff", "the autodiff device was dropped"))?;
        Ok(Device::new(me))
    }

    /// A variable: `value` (on the wrapped device, or on this one) as a leaf whose gradient
    /// [`backward`] reports.
    pub fn var(device: &Device, value: &Tensor) -> Result<Tensor> {
        Self::leaf(device, value, true)
    }

    /// A constant on the autodiff device (no gradient is computed for it).
    pub fn lift(device: &Device, value: &Tensor) -> Result<Tensor> {
        Self::leaf(device, value, false)
    }

    fn leaf(device: &Device, value: &Tensor, requires_grad: bool) -> Result<Tensor> {
        let ad = Self::of(device)?;
        let value = if value.device().same_device(device) {
            unwrap(value)?
        } else {
            value.clone()
        };
        if !value.device().same_device(&ad.inner) {
            return Err(Error::DeviceMismatch {
                op: "autodiff var",
                lhs: value.device().location().to_string(),
                rhs: ad.inner.location().to_string(),
            });
        }
        let value = value.contiguous()?;
        let storage = Arc::new(AutodiffStorage {
            inner: value.storage().clone(),
            id: next_id(),
            requires_grad,
            node: None,
        });
        Tensor::from_storage(storage, value.layout().clone(), device.clone())
    }

    fn wrap_storage(&self, inner: Storage) -> Storage {
        Arc::new(AutodiffStorage {
            inner,
            id: next_id(),
            requires_grad: false,
            node: None,
        })
    }

    /// The inner-device view of an input of a primitive.
    fn view(&self, storage: &dyn BackendStorage, layout: &Layout) -> Result<Tensor> {
        Tensor::from_storage(
            ad_storage(storage)?.inner.clone(),
            layout.clone(),
            self.inner.clone(),
        )
    }

    /// Wraps the result of an operation and, when an input needs a gradient and recording is
    /// on, attaches a node with `rule` (built lazily so that constants pay nothing).
    fn record(
        &self,
        out: Storage,
        out_layout: Layout,
        inputs: Vec<Edge>,
        rule: impl FnOnce() -> Result<Rule>,
    ) -> Result<Storage> {
        let differentiable = out.dtype().is_float();
        if !differentiable
            || !self.grad_enabled.load(Ordering::Relaxed)
            || !inputs.iter().any(|e| e.requires_grad)
        {
            return Ok(self.wrap_storage(out));
        }
        let id = next_id();
        let node = Node {
            id,
            out_layout,
            inputs,
            rule: rule()?,
        };
        Ok(Arc::new(AutodiffStorage {
            inner: out,
            id,
            requires_grad: true,
            node: Some(Arc::new(node)),
        }))
    }

    /// [`Autodiff::record`] for fused ops, which take and return tensors.
    fn record_tensor(&self, out: Tensor, inputs: &[&Tensor], rule: Rule) -> Result<Tensor> {
        let edges = inputs
            .iter()
            .map(|t| Ok(ad_storage(&**t.storage())?.edge(t.layout())))
            .collect::<Result<Vec<_>>>()?;
        let layout = out.layout().clone();
        let storage = self.record(out.storage().clone(), layout.clone(), edges, || Ok(rule))?;
        Tensor::from_storage(storage, layout, self.device()?)
    }

    /// A result that records nothing (a non-differentiable output of a fused op).
    fn constant(&self, t: Tensor) -> Result<Tensor> {
        let layout = t.layout().clone();
        Tensor::from_storage(
            self.wrap_storage(t.storage().clone()),
            layout,
            self.device()?,
        )
    }
}

/// The inner-device tensor behind a tensor of an autodiff device (the same memory, no graph).
/// Tensors of other devices are returned unchanged.
pub fn unwrap(t: &Tensor) -> Result<Tensor> {
    let Some(ad) = t.storage().as_any().downcast_ref::<AutodiffStorage>() else {
        return Ok(t.clone());
    };
    let inner = Autodiff::of(t.device())?.inner.clone();
    Tensor::from_storage(ad.inner.clone(), t.layout().clone(), inner)
}

/// `opts` with its key-padding mask moved to the wrapped device.
fn inner_attention_options(opts: &AttentionOptions) -> Result<AttentionOptions> {
    Ok(AttentionOptions {
        scale: opts.scale,
        causal: opts.causal,
        key_padding_mask: opts.key_padding_mask.as_ref().map(unwrap).transpose()?,
    })
}

fn ad_storage(s: &dyn BackendStorage) -> Result<&AutodiffStorage> {
    s.as_any().downcast_ref::<AutodiffStorage>().ok_or_else(|| {
        Error::invalid(
            "autodiff",
            "a tensor of another device reached the autodiff device",
        )
    })
}

/// Whether `t` is a variable or depends on one (and so has a gradient).
pub fn requires_grad(t: &Tensor) -> bool {
    t.storage()
        .as_any()
        .downcast_ref::<AutodiffStorage>()
        .is_some_and(|s| s.requires_grad)
}

// ------------------------------------------------------------------------------ backward

/// Gradients by variable, as returned by [`backward`].
pub struct Gradients {
    /// Dense gradient of each storage's elements, on the wrapped device.
    by_storage: HashMap<u64, Tensor>,
}

impl std::fmt::Debug for Gradients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gradients({} tensors)", self.by_storage.len())
    }
}

impl Gradients {
    /// The gradient of the loss with respect to `var` (shape of `var`, on the wrapped device),
    /// or `None` when the loss does not depend on it.
    pub fn get(&self, var: &Tensor) -> Option<Tensor> {
        let s = var.storage().as_any().downcast_ref::<AutodiffStorage>()?;
        let dense = self.by_storage.get(&s.id)?;
        // The gradient of a view of the storage, read through the same layout.
        Tensor::from_storage(
            dense.storage().clone(),
            var.layout().clone(),
            dense.device().clone(),
        )
        .ok()?
        .contiguous()
        .ok()
    }

    /// Gradients of several variables, in order.
    pub fn get_all<'a>(&self, vars: impl IntoIterator<Item = &'a Tensor>) -> Vec<Option<Tensor>> {
        vars.into_iter().map(|v| self.get(v)).collect()
    }
}

/// Gradients of the scalar `loss` with respect to every variable it depends on.
pub fn backward(loss: &Tensor) -> Result<Gradients> {
    if loss.elem_count() != 1 {
        return Err(Error::bad_shape(
            "backward",
            "the loss must have exactly one element",
            loss.shape(),
        ));
    }
    let ad = Autodiff::of(loss.device())?;
    let storage = ad_storage(&**loss.storage())?;
    let ones = Tensor::ones(loss.shape().clone(), loss.dtype(), &ad.inner)?;
    backward_with(storage, loss.layout(), ones)
}

/// Backpropagates `grad` (in the shape of `layout`) from `storage`.
fn backward_with(storage: &AutodiffStorage, layout: &Layout, grad: Tensor) -> Result<Gradients> {
    let mut grads: HashMap<u64, Tensor> = HashMap::new();
    if !storage.requires_grad {
        return Ok(Gradients { by_storage: grads });
    }
    accumulate(&mut grads, storage.id, layout, storage.inner.len(), grad)?;

    // Every node reachable from the loss, processed in decreasing id order: a node's output
    // id is larger than the ids of everything it read, so this is a topological order.
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<Arc<Node>> = storage.node.iter().cloned().collect();
    while let Some(node) = stack.pop() {
        if !seen.insert(node.id) {
            continue;
        }
        for e in &node.inputs {
            if let Some(n) = &e.node
                && !seen.contains(&n.id)
            {
                stack.push(n.clone());
            }
        }
        nodes.push(node);
    }
    nodes.sort_by_key(|n| std::cmp::Reverse(n.id));

    let mut leaves = std::collections::HashSet::new();
    for node in nodes {
        let Some(dense) = grads.remove(&node.id) else {
            continue;
        };
        let g_out = Tensor::from_storage(
            dense.storage().clone(),
            node.out_layout.clone(),
            dense.device().clone(),
        )?;
        let input_grads = (node.rule)(&g_out)?;
        if input_grads.len() != node.inputs.len() {
            return Err(Error::invalid(
                "backward",
                "a gradient rule returned the wrong number of gradients",
            ));
        }
        for (edge, g) in node.inputs.iter().zip(input_grads) {
            let Some(g) = g else { continue };
            if !edge.requires_grad {
                continue;
            }
            if g.dims() != edge.layout.dims() {
                return Err(Error::invalid(
                    "backward",
                    format!(
                        "a gradient rule returned shape {:?} for an input of shape {:?}",
                        g.dims(),
                        edge.layout.dims()
                    ),
                ));
            }
            if edge.node.is_none() {
                leaves.insert(edge.id);
            }
            accumulate(&mut grads, edge.id, &edge.layout, edge.storage_len, g)?;
        }
    }
    // What is left are the leaves' (variables') gradients.
    if storage.node.is_none() {
        leaves.insert(storage.id);
    }
    grads.retain(|id, _| leaves.contains(id));
    Ok(Gradients { by_storage: grads })
}

/// Adds `g` (the gradient of the view `layout` of a storage of `len` elements) to the dense
/// gradient of that storage.
fn accumulate(
    grads: &mut HashMap<u64, Tensor>,
    id: u64,
    layout: &Layout,
    len: usize,
    g: Tensor,
) -> Result<()> {
    let dense = dense_grad(g, layout, len)?;
    let sum = match grads.remove(&id) {
        Some(prev) => prev.add(&dense)?,
        None => dense,
    };
    grads.insert(id, sum);
    Ok(())
}

/// The gradient of a storage of `len` elements given the gradient `g` of its view `layout`.
fn dense_grad(g: Tensor, layout: &Layout, len: usize) -> Result<Tensor> {
    let dims = layout.dims();
    let strides = layout.strides();
    // Broadcast dimensions read one element many times: their gradients add up.
    let mut g = g;
    let mut sizes = dims.to_vec();
    for d in (0..dims.len()).rev() {
        if strides[d] == 0 && dims[d] > 1 {
            g = g.sum_keepdim(d)?;
            sizes[d] = 1;
        }
    }
    // The dimensions that remain, sorted by decreasing stride: if they tile the storage
    // exactly (a permutation of a contiguous layout), un-permuting is one copy.
    let mut kept: Vec<usize> = (0..dims.len()).filter(|&d| sizes[d] > 1).collect();
    kept.sort_by_key(|&d| std::cmp::Reverse(strides[d]));
    let count: usize = sizes.iter().product();
    let mut expected = 1;
    let mut tiles = layout.offset() == 0 && count == len;
    for &d in kept.iter().rev() {
        tiles &= strides[d] == expected;
        expected *= sizes[d];
    }
    if tiles {
        // `g` with size-1 dims dropped keeps the original dim order; permute into stride order.
        let order: Vec<usize> = {
            let mut orig: Vec<usize> = kept.clone();
            orig.sort_unstable();
            kept.iter()
                .map(|d| orig.iter().position(|o| o == d).unwrap_or(0))
                .collect()
        };
        let gg = g
            .reshape(
                (0..dims.len())
                    .filter(|&d| sizes[d] > 1)
                    .map(|d| sizes[d])
                    .collect::<Vec<_>>(),
            )?
            .permute(&order)?
            .contiguous()?;
        return gg.reshape([len]);
    }
    // General strides (narrowed views, overlaps): scatter-add by storage index.
    let reduced = Layout::new(sizes.clone(), strides.to_vec(), layout.offset())?;
    let ids: Vec<u32> = reduced
        .indices()
        .map(|i| {
            u32::try_from(i).map_err(|_| {
                Error::invalid(
                    "backward",
                    "a storage past 2^32 elements needs a strided gradient",
                )
            })
        })
        .collect::<Result<_>>()?;
    let ids = Tensor::from_vec(ids, [count], g.device())?;
    let zeros = Tensor::zeros([len], g.dtype(), g.device())?;
    zeros.scatter_add(&ids, &g.contiguous()?.reshape([count])?, 0)
}

// ------------------------------------------------------------------------------ rules

fn scalar(t: &Tensor, v: f64) -> Result<Tensor> {
    t.scalar_like(v)
}

/// `1` where `mask` (U32) is nonzero, `0` elsewhere, in `like`'s dtype.
fn mask_to(mask: &Tensor, like: &Tensor) -> Result<Tensor> {
    mask.to_dtype(like.dtype())
}

/// The derivative of a unary op at `x` (with result `y`), times `g`.
fn unary_grad(op: UnaryOp, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Tensor> {
    use std::f64::consts::PI;
    match op {
        UnaryOp::Neg => g.neg(),
        UnaryOp::Abs => {
            let pos = mask_to(&x.gt(&scalar(x, 0.0)?)?, g)?;
            let neg = mask_to(&x.lt(&scalar(x, 0.0)?)?, g)?;
            g.mul(&pos.sub(&neg)?)
        }
        UnaryOp::Exp => g.mul(y),
        UnaryOp::Log => g.div(x),
        UnaryOp::Sqrt => g.div(&y.affine(2.0, 0.0)?),
        UnaryOp::Sqr => g.mul(&x.affine(2.0, 0.0)?),
        UnaryOp::Recip => g.mul(&y.sqr()?)?.neg(),
        UnaryOp::Tanh => g.mul(&y.sqr()?.affine(-1.0, 1.0)?),
        UnaryOp::Sin => g.mul(&x.cos()?),
        UnaryOp::Cos => g.mul(&x.sin()?)?.neg(),
        UnaryOp::Erf => g.mul(&x.sqr()?.neg()?.exp()?.affine(2.0 / PI.sqrt(), 0.0)?),
        UnaryOp::Relu => g.mul(&mask_to(&x.gt(&scalar(x, 0.0)?)?, g)?),
        UnaryOp::Sigmoid => g.mul(&y.mul(&y.affine(-1.0, 1.0)?)?),
        UnaryOp::Affine { mul, .. } => g.affine(mul, 0.0),
        UnaryOp::Powf(e) => g.mul(&x.powf(e - 1.0)?.affine(e, 0.0)?),
        UnaryOp::Clamp { min, max } => {
            let inside = x.ge(&scalar(x, min)?)?.mul(&x.le(&scalar(x, max)?)?)?;
            g.mul(&mask_to(&inside, g)?)
        }
        UnaryOp::GeluErf => x.gelu_backward(g, GeluKind::Erf),
        UnaryOp::GeluTanh => x.gelu_backward(g, GeluKind::Tanh),
        UnaryOp::QuickGelu => x.gelu_backward(g, GeluKind::Quick),
    }
}

/// Half types compute gradients in f32 and return them in their own dtype.
fn upcast(t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::F16 | DType::BF16 => t.to_dtype(DType::F32),
        _ => Ok(t.clone()),
    }
}

// ------------------------------------------------------------------------------ backend

fn unsupported_nested() -> Error {
    Error::invalid(
        "autodiff",
        "gradients of a backward op are not supported (no higher-order gradients)",
    )
}

impl Backend for Autodiff {
    fn location(&self) -> DeviceLocation {
        self.location.clone()
    }

    fn supports_dtype(&self, dtype: DType) -> bool {
        self.inner.backend().supports_dtype(dtype)
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }

    fn full(&self, dtype: DType, len: usize, value: f64) -> Result<Storage> {
        Ok(self.wrap_storage(self.inner.backend().full(dtype, len, value)?))
    }

    fn upload(&self, data: HostSlice<'_>) -> Result<Storage> {
        Ok(self.wrap_storage(self.inner.backend().upload(data)?))
    }

    fn upload_bytes(&self, dtype: DType, bytes: SharedBytes) -> Result<Storage> {
        Ok(self.wrap_storage(self.inner.backend().upload_bytes(dtype, bytes)?))
    }

    fn download(&self, src: &dyn BackendStorage, layout: &Layout) -> Result<HostVec> {
        self.inner
            .backend()
            .download(&*ad_storage(src)?.inner, layout)
    }

    fn rand_uniform(
        &self,
        dtype: DType,
        len: usize,
        low: f64,
        high: f64,
        seed: u64,
    ) -> Result<Storage> {
        let s = self
            .inner
            .backend()
            .rand_uniform(dtype, len, low, high, seed)?;
        Ok(self.wrap_storage(s))
    }

    fn rand_normal(
        &self,
        dtype: DType,
        len: usize,
        mean: f64,
        std: f64,
        seed: u64,
    ) -> Result<Storage> {
        let s = self
            .inner
            .backend()
            .rand_normal(dtype, len, mean, std, seed)?;
        Ok(self.wrap_storage(s))
    }

    fn copy_strided(&self, src: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        let a = ad_storage(src)?;
        let out = self.inner.backend().copy_strided(&*a.inner, layout)?;
        self.record(
            out,
            Layout::contiguous(layout.shape().clone()),
            vec![a.edge(layout)],
            || Ok(Box::new(|g: &Tensor| Ok(vec![Some(g.clone())]))),
        )
    }

    fn concat(&self, parts: &[(&dyn BackendStorage, &Layout)], dim: usize) -> Result<Storage> {
        let inner: Vec<(&dyn BackendStorage, &Layout)> = parts
            .iter()
            .map(|(s, l)| Ok((&*ad_storage(*s)?.inner as &dyn BackendStorage, *l)))
            .collect::<Result<_>>()?;
        let out = self.inner.backend().concat(&inner, dim)?;
        let mut shape = parts[0].1.dims().to_vec();
        shape[dim] = parts.iter().map(|(_, l)| l.dims()[dim]).sum();
        let edges = parts
            .iter()
            .map(|(s, l)| Ok(ad_storage(*s)?.edge(l)))
            .collect::<Result<Vec<_>>>()?;
        let lens: Vec<usize> = parts.iter().map(|(_, l)| l.dims()[dim]).collect();
        self.record(out, Layout::contiguous(shape), edges, || {
            Ok(Box::new(move |g: &Tensor| {
                let mut start = 0;
                lens.iter()
                    .map(|&n| {
                        let part = g.narrow(dim, start, n)?;
                        start += n;
                        Ok(Some(part))
                    })
                    .collect()
            }))
        })
    }

    fn cast(&self, src: &dyn BackendStorage, layout: &Layout, dtype: DType) -> Result<Storage> {
        let a = ad_storage(src)?;
        let out = self.inner.backend().cast(&*a.inner, layout, dtype)?;
        let from = a.inner.dtype();
        let edges = if from.is_float() {
            vec![a.edge(layout)]
        } else {
            vec![]
        };
        self.record(
            out,
            Layout::contiguous(layout.shape().clone()),
            edges,
            || {
                Ok(Box::new(move |g: &Tensor| {
                    Ok(vec![Some(g.to_dtype(from)?)])
                }))
            },
        )
    }

    fn unary(&self, op: UnaryOp, src: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        let a = ad_storage(src)?;
        let out = self.inner.backend().unary(op, &*a.inner, layout)?;
        let out_layout = Layout::contiguous(layout.shape().clone());
        let edges = vec![a.edge(layout)];
        let y_storage = out.clone();
        self.record(out, out_layout.clone(), edges, || {
            let x = self.view(src, layout)?;
            let y = Tensor::from_storage(y_storage, out_layout, self.inner.clone())?;
            Ok(Box::new(move |g: &Tensor| {
                Ok(vec![Some(unary_grad(op, &x, &y, g)?)])
            }))
        })
    }

    fn binary(
        &self,
        op: BinaryOp,
        lhs: &dyn BackendStorage,
        lhs_layout: &Layout,
        rhs: &dyn BackendStorage,
        rhs_layout: &Layout,
    ) -> Result<Storage> {
        let (a, b) = (ad_storage(lhs)?, ad_storage(rhs)?);
        let out = self
            .inner
            .backend()
            .binary(op, &*a.inner, lhs_layout, &*b.inner, rhs_layout)?;
        let out_layout = Layout::contiguous(lhs_layout.shape().clone());
        let edges = vec![a.edge(lhs_layout), b.edge(rhs_layout)];
        let y_storage = out.clone();
        self.record(out, out_layout.clone(), edges, || {
            let x = self.view(lhs, lhs_layout)?;
            let z = self.view(rhs, rhs_layout)?;
            let y = Tensor::from_storage(y_storage, out_layout, self.inner.clone())?;
            Ok(Box::new(move |g: &Tensor| {
                let (dx, dz) = match op {
                    BinaryOp::Add => (g.clone(), g.clone()),
                    BinaryOp::Sub => (g.clone(), g.neg()?),
                    BinaryOp::Mul => (g.mul(&z)?, g.mul(&x)?),
                    BinaryOp::Div => (g.div(&z)?, g.mul(&y)?.div(&z)?.neg()?),
                    BinaryOp::Maximum | BinaryOp::Minimum => {
                        // The larger (smaller) operand gets the gradient; ties split it.
                        let (win_x, win_z) = if op == BinaryOp::Maximum {
                            (x.gt(&z)?, x.lt(&z)?)
                        } else {
                            (x.lt(&z)?, x.gt(&z)?)
                        };
                        let tie = mask_to(&x.eq(&z)?, g)?.affine(0.5, 0.0)?;
                        let wx = mask_to(&win_x, g)?.add(&tie)?;
                        let wz = mask_to(&win_z, g)?.add(&tie)?;
                        (g.mul(&wx)?, g.mul(&wz)?)
                    }
                    BinaryOp::Pow => {
                        // d/dx x^z = z x^(z-1); d/dz x^z = x^z ln x (0 where x <= 0).
                        let dx = g.mul(&z)?.mul(&x.pow(&z.affine(1.0, -1.0)?)?)?;
                        let positive = x.gt(&scalar(&x, 0.0)?)?;
                        let safe_x = positive.where_cond(&x, &x.ones_like()?)?;
                        let dz = g.mul(&y)?.mul(&safe_x.log()?)?;
                        let dz = positive.where_cond(&dz, &dz.zeros_like()?)?;
                        (dx, dz)
                    }
                    _ => return Ok(vec![None, None]),
                };
                Ok(vec![Some(dx), Some(dz)])
            }))
        })
    }

    fn where_cond(
        &self,
        cond: &dyn BackendStorage,
        cond_layout: &Layout,
        on_true: &dyn BackendStorage,
        true_layout: &Layout,
        on_false: &dyn BackendStorage,
        false_layout: &Layout,
    ) -> Result<Storage> {
        let (c, t, f) = (
            ad_storage(cond)?,
            ad_storage(on_true)?,
            ad_storage(on_false)?,
        );
        let out = self.inner.backend().where_cond(
            &*c.inner,
            cond_layout,
            &*t.inner,
            true_layout,
            &*f.inner,
            false_layout,
        )?;
        let edges = vec![t.edge(true_layout), f.edge(false_layout)];
        self.record(
            out,
            Layout::contiguous(cond_layout.shape().clone()),
            edges,
            || {
                let c = self.view(cond, cond_layout)?;
                Ok(Box::new(move |g: &Tensor| {
                    let zero = g.zeros_like()?;
                    Ok(vec![
                        Some(c.where_cond(g, &zero)?),
                        Some(c.where_cond(&zero, g)?),
                    ])
                }))
            },
        )
    }

    fn reduce(
        &self,
        op: ReduceOp,
        src: &dyn BackendStorage,
        layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        let a = ad_storage(src)?;
        let out = self.inner.backend().reduce(op, &*a.inner, layout, dim)?;
        let mut shape = layout.dims().to_vec();
        shape[dim] = 1;
        let in_shape = layout.shape().clone();
        self.record(out, Layout::contiguous(shape), vec![a.edge(layout)], || {
            let x = self.view(src, layout)?;
            Ok(Box::new(move |g: &Tensor| {
                let d = match op {
                    ReduceOp::Sum => g.broadcast_as(in_shape.clone())?.contiguous()?,
                    ReduceOp::Max | ReduceOp::Min => {
                        // The first extremum gets the gradient, as the index a
                        // max/min-with-indices reduction reports.
                        let idx = x.reduce(
                            if op == ReduceOp::Max {
                                ReduceOp::ArgMax
                            } else {
                                ReduceOp::ArgMin
                            },
                            dim,
                            true,
                        )?;
                        let zeros = Tensor::zeros(in_shape.clone(), g.dtype(), g.device())?;
                        zeros.scatter_add(&idx, g, dim)?
                    }
                    ReduceOp::ArgMax | ReduceOp::ArgMin => return Ok(vec![None]),
                };
                Ok(vec![Some(d)])
            }))
        })
    }

    fn matmul(
        &self,
        lhs: &dyn BackendStorage,
        lhs_layout: &Layout,
        rhs: &dyn BackendStorage,
        rhs_layout: &Layout,
    ) -> Result<Storage> {
        let (a, b) = (ad_storage(lhs)?, ad_storage(rhs)?);
        let out = self
            .inner
            .backend()
            .matmul(&*a.inner, lhs_layout, &*b.inner, rhs_layout)?;
        let mut shape = lhs_layout.dims().to_vec();
        let n = shape.len();
        shape[n - 1] = rhs_layout.dims()[n - 1];
        let edges = vec![a.edge(lhs_layout), b.edge(rhs_layout)];
        let (need_a, need_b) = (a.requires_grad, b.requires_grad);
        self.record(out, Layout::contiguous(shape), edges, || {
            let x = self.view(lhs, lhs_layout)?;
            let z = self.view(rhs, rhs_layout)?;
            Ok(Box::new(move |g: &Tensor| {
                // (.., m, n) = (.., m, k) @ (.., k, n)
                let dx = if need_a {
                    Some(g.matmul(&z.transpose(-1, -2)?)?)
                } else {
                    None
                };
                let dz = if need_b {
                    Some(x.transpose(-1, -2)?.matmul(g)?)
                } else {
                    None
                };
                Ok(vec![dx, dz])
            }))
        })
    }

    fn index_select(
        &self,
        src: &dyn BackendStorage,
        src_layout: &Layout,
        ids: &dyn BackendStorage,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        let (a, i) = (ad_storage(src)?, ad_storage(ids)?);
        let out = self
            .inner
            .backend()
            .index_select(&*a.inner, src_layout, &*i.inner, ids_layout, dim)?;
        let mut shape = src_layout.dims().to_vec();
        shape[dim] = ids_layout.elem_count();
        let in_shape = src_layout.shape().clone();
        self.record(
            out,
            Layout::contiguous(shape),
            vec![a.edge(src_layout)],
            || {
                let ids = self.view(ids, ids_layout)?;
                Ok(Box::new(move |g: &Tensor| {
                    // index_add: every selected row's gradient goes back to its source row.
                    let mut view = vec![1; g.rank()];
                    view[dim] = ids.elem_count();
                    let ids = ids.reshape(view)?.broadcast_as(g.shape().clone())?;
                    let zeros = Tensor::zeros(in_shape.clone(), g.dtype(), g.device())?;
                    Ok(vec![Some(zeros.scatter_add(&ids, g, dim)?)])
                }))
            },
        )
    }

    fn gather(
        &self,
        src: &dyn BackendStorage,
        src_layout: &Layout,
        ids: &dyn BackendStorage,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        let (a, i) = (ad_storage(src)?, ad_storage(ids)?);
        let out = self
            .inner
            .backend()
            .gather(&*a.inner, src_layout, &*i.inner, ids_layout, dim)?;
        let in_shape = src_layout.shape().clone();
        self.record(
            out,
            Layout::contiguous(ids_layout.shape().clone()),
            vec![a.edge(src_layout)],
            || {
                let ids = self.view(ids, ids_layout)?;
                Ok(Box::new(move |g: &Tensor| {
                    let zeros = Tensor::zeros(in_shape.clone(), g.dtype(), g.device())?;
                    Ok(vec![Some(zeros.scatter_add(&ids, g, dim)?)])
                }))
            },
        )
    }

    fn scatter_add(
        &self,
        dst: &dyn BackendStorage,
        dst_layout: &Layout,
        ids: &dyn BackendStorage,
        ids_layout: &Layout,
        src: &dyn BackendStorage,
        src_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        let (d, i, s) = (ad_storage(dst)?, ad_storage(ids)?, ad_storage(src)?);
        let out = self.inner.backend().scatter_add(
            &*d.inner, dst_layout, &*i.inner, ids_layout, &*s.inner, src_layout, dim,
        )?;
        self.record(
            out,
            Layout::contiguous(dst_layout.shape().clone()),
            vec![d.edge(dst_layout), s.edge(src_layout)],
            || {
                let ids = self.view(ids, ids_layout)?;
                Ok(Box::new(move |g: &Tensor| {
                    Ok(vec![Some(g.clone()), Some(g.gather(&ids, dim)?)])
                }))
            },
        )
    }

    // ----- fused ops: the wrapped backend's kernels, with their own rules -----

    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (xi, wi) = (unwrap(x)?, unwrap(weight)?);
        let bi = bias.map(unwrap).transpose()?;
        let y = xi.linear(&wi, bi.as_ref())?;
        let mut inputs = vec![x, weight];
        inputs.extend(bias);
        let need_x = requires_grad(x);
        let rule: Rule = Box::new(move |g: &Tensor| {
            // y (M, N) = x (M, K) @ w^T + b
            let dx = if need_x { Some(g.matmul(&wi)?) } else { None };
            let dw = g.t()?.matmul(&xi)?;
            let mut grads = vec![dx, Some(dw)];
            if bi.is_some() {
                grads.push(Some(upcast(g)?.sum(0)?.to_dtype(g.dtype())?));
            }
            Ok(grads)
        });
        self.record_tensor(y, &inputs, rule)
    }

    fn softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        let y = unwrap(x)?.softmax(-1)?;
        let yy = y.clone();
        let rule: Rule = Box::new(move |g: &Tensor| {
            let (y32, g32) = (upcast(&yy)?, upcast(g)?);
            let dot = g32.mul(&y32)?.sum_keepdim(-1)?;
            Ok(vec![Some(y32.mul(&g32.sub(&dot)?)?.to_dtype(g.dtype())?)])
        });
        self.record_tensor(y, &[x], rule)
    }

    fn log_softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        let y = unwrap(x)?.log_softmax(-1)?;
        let yy = y.clone();
        let rule: Rule = Box::new(move |g: &Tensor| {
            let (y32, g32) = (upcast(&yy)?, upcast(g)?);
            let total = g32.sum_keepdim(-1)?;
            Ok(vec![Some(
                g32.sub(&y32.exp()?.mul(&total)?)?.to_dtype(g.dtype())?,
            )])
        });
        self.record_tensor(y, &[x], rule)
    }

    fn layer_norm(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        let xi = unwrap(x)?;
        let wi = weight.map(unwrap).transpose()?;
        let bi = bias.map(unwrap).transpose()?;
        let y = xi.layer_norm(wi.as_ref(), bi.as_ref(), eps)?;
        let mut inputs = vec![x];
        inputs.extend(weight);
        inputs.extend(bias);
        let has_bias = bias.is_some();
        let rule: Rule = Box::new(move |g: &Tensor| {
            let grads = xi.layer_norm_backward(wi.as_ref(), eps, g)?;
            let mut out = vec![Some(grads.dx)];
            if wi.is_some() {
                out.push(grads.dweight);
            }
            if has_bias {
                out.push(Some(grads.dbias));
            }
            Ok(out)
        });
        self.record_tensor(y, &inputs, rule)
    }

    fn gelu(&self, x: &Tensor, kind: GeluKind) -> Result<Tensor> {
        let xi = unwrap(x)?;
        let y = xi.gelu(kind)?;
        let rule: Rule = Box::new(move |g: &Tensor| Ok(vec![Some(xi.gelu_backward(g, kind)?)]));
        self.record_tensor(y, &[x], rule)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<AttentionOutput> {
        let (qi, ki, vi) = (unwrap(q)?, unwrap(k)?, unwrap(v)?);
        let inner_opts = inner_attention_options(opts)?;
        let out = Tensor::attention(&qi, &ki, &vi, &inner_opts)?;
        let saved = out.clone();
        let rule: Rule = Box::new(move |g: &Tensor| {
            let grads = Tensor::attention_backward(&qi, &ki, &vi, &saved, g, &inner_opts)?;
            Ok(vec![Some(grads.dq), Some(grads.dk), Some(grads.dv)])
        });
        let lse = self.constant(out.lse)?;
        let out = self.record_tensor(out.out, &[q, k, v], rule)?;
        Ok(AttentionOutput { out, lse })
    }

    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &AttentionOutput,
        d_out: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<AttentionGrads> {
        if [q, k, v, d_out].into_iter().any(requires_grad) {
            return Err(unsupported_nested());
        }
        let inner_opts = inner_attention_options(opts)?;
        let inner_out = AttentionOutput {
            out: unwrap(&out.out)?,
            lse: unwrap(&out.lse)?,
        };
        let g = Tensor::attention_backward(
            &unwrap(q)?,
            &unwrap(k)?,
            &unwrap(v)?,
            &inner_out,
            &unwrap(d_out)?,
            &inner_opts,
        )?;
        Ok(AttentionGrads {
            dq: self.constant(g.dq)?,
            dk: self.constant(g.dk)?,
            dv: self.constant(g.dv)?,
        })
    }

    fn patch_embed(
        &self,
        images: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: &PatchEmbedOptions,
    ) -> Result<Tensor> {
        let (ii, wi) = (unwrap(images)?, unwrap(weight)?);
        let bi = bias.map(unwrap).transpose()?;
        let inner_opts = PatchEmbedOptions {
            patch_size: opts.patch_size,
            class_embedding: opts.class_embedding.as_ref().map(unwrap).transpose()?,
            position_embedding: opts.position_embedding.as_ref().map(unwrap).transpose()?,
        };
        let y = Tensor::patch_embed(&ii, &wi, bi.as_ref(), &inner_opts)?;
        let mut inputs = vec![images, weight];
        let (has_bias, has_cls, has_pos) = (
            bias.is_some(),
            opts.class_embedding.is_some(),
            opts.position_embedding.is_some(),
        );
        inputs.extend(bias);
        inputs.extend(opts.class_embedding.as_ref());
        inputs.extend(opts.position_embedding.as_ref());
        let need_images = requires_grad(images);
        let rule: Rule = Box::new(move |g: &Tensor| {
            let pg = Tensor::patch_embed_backward(&ii, &wi, &inner_opts, g, need_images)?;
            let mut grads = vec![pg.d_images, Some(pg.d_weight)];
            if has_bias {
                grads.push(Some(pg.d_bias));
            }
            if has_cls {
                grads.push(pg.d_class);
            }
            if has_pos {
                grads.push(pg.d_position);
            }
            Ok(grads)
        });
        self.record_tensor(y, &inputs, rule)
    }

    fn contrastive_loss(
        &self,
        image: &Tensor,
        text: &Tensor,
        scale: &Tensor,
    ) -> Result<ContrastiveOutput> {
        let (ii, ti, si) = (unwrap(image)?, unwrap(text)?, unwrap(scale)?);
        let out = Tensor::contrastive_loss(&ii, &ti, &si)?;
        let saved = out.clone();
        let rule: Rule = Box::new(move |g: &Tensor| {
            let grads = Tensor::contrastive_loss_backward(&ii, &ti, &si, &saved, g)?;
            let d_scale = grads
                .d_scale
                .reshape(si.shape().clone())?
                .to_dtype(si.dtype())?;
            Ok(vec![Some(grads.d_image), Some(grads.d_text), Some(d_scale)])
        });
        let lse_rows = self.constant(out.lse_rows)?;
        let lse_cols = self.constant(out.lse_cols)?;
        let loss = self.record_tensor(out.loss, &[image, text, scale], rule)?;
        Ok(ContrastiveOutput {
            loss,
            lse_rows,
            lse_cols,
        })
    }

    fn contrastive_loss_backward(
        &self,
        image: &Tensor,
        text: &Tensor,
        scale: &Tensor,
        saved: &ContrastiveOutput,
        d_loss: &Tensor,
    ) -> Result<ContrastiveGrads> {
        if [image, text, scale, d_loss].into_iter().any(requires_grad) {
            return Err(unsupported_nested());
        }
        let inner_saved = ContrastiveOutput {
            loss: unwrap(&saved.loss)?,
            lse_rows: unwrap(&saved.lse_rows)?,
            lse_cols: unwrap(&saved.lse_cols)?,
        };
        let g = Tensor::contrastive_loss_backward(
            &unwrap(image)?,
            &unwrap(text)?,
            &unwrap(scale)?,
            &inner_saved,
            &unwrap(d_loss)?,
        )?;
        Ok(ContrastiveGrads {
            d_image: self.constant(g.d_image)?,
            d_text: self.constant(g.d_text)?,
            d_scale: self.constant(g.d_scale)?,
        })
    }
}

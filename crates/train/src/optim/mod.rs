//! Optimizers and the gradient plumbing around them.
//!
//! * [`Param`] is a named f32 master weight with its weight-decay flag ([`Param::new`]
//!   applies the usual grouping rule).
//! * [`Optimizer`] is the interface of [`Sgd`] and [`AdamW`], which follow `torch.optim.SGD`
//!   and `torch.optim.AdamW` (single-tensor implementation) step for step, with checkpointable
//!   state.
//! * [`clip_grad_norm`] is `torch.nn.utils.clip_grad_norm_`.
//! * [`GradAccumulator`] sums (or averages) the gradients of several micro-batches.
//! * [`LossScaler`] is dynamic loss scaling for f16 training (`torch.cuda.amp.GradScaler`).
//! * [`compute_copies`] and [`grads_to_f32`] serve mixed precision with f32 master weights.
//!
//! Everything here works on plain tensors through the [`Tensor`] API only, so it runs on any
//! backend, and knows nothing about how gradients were computed.
//!
//! A training step with every piece:
//!
//! ```
//! # fn main() -> glimpse_tensor::Result<()> {
//! use glimpse_tensor::{DType, Tensor};
//! use glimpse_train::optim::{AdamW, AdamWConfig, Optimizer, Param, clip_grad_norm};
//! let device = glimpse_cpu::device();
//! let mut params = vec![
//!     Param::new("fc.weight", Tensor::ones([2, 3], DType::F32, &device)?),
//!     Param::new("fc.bias", Tensor::zeros(2, DType::F32, &device)?),
//! ];
//! assert!(params[0].weight_decay && !params[1].weight_decay);
//! let mut opt = AdamW::new(AdamWConfig::default())?;
//! // Gradients come from elsewhere (the autodiff device); `None` means "no gradient".
//! let mut grads = vec![Some(Tensor::full(0.5, [2, 3], DType::F32, &device)?), None];
//! let norm = clip_grad_norm(&mut grads, 1.0)?;
//! if norm.is_finite() {
//!     opt.step(&mut params, &grads, 1e-3)?;
//! }
//! assert_eq!(opt.steps_taken(), 1);
//! # Ok(()) }
//! ```

mod accumulate;
mod adamw;
mod clip;
mod scaler;
mod sgd;

use std::collections::{HashMap, HashSet};

use glimpse_tensor::{DType, Device, Error, Layout, Result, Tensor};

pub use accumulate::GradAccumulator;
pub use adamw::{AdamW, AdamWConfig};
pub use clip::clip_grad_norm;
pub use scaler::{LossScaler, LossScalerConfig, LossScalerState};
pub use sgd::{Sgd, SgdConfig};

/// Substrings of a parameter name that exclude it from weight decay: normalisation layers,
/// learned position embeddings, class tokens and CLIP's temperature. Decaying these only
/// pulls them towards zero, which hurts (the convention of timm, open_clip and BERT).
pub const NO_WEIGHT_DECAY_PATTERNS: [&str; 5] = [
    "norm",
    "position_embedding",
    "cls_token",
    "class_embedding",
    "logit_scale",
];

/// The default weight-decay rule: decay iff the tensor has rank >= 2 and `name` contains none
/// of [`NO_WEIGHT_DECAY_PATTERNS`]. Biases and norm weights are rank 1, so they never decay;
/// the name patterns catch the rank >= 2 tensors that should not (position embeddings,
/// class tokens stored as `(1, 1, D)`).
pub fn default_weight_decay(name: &str, rank: usize) -> bool {
    rank >= 2 && !NO_WEIGHT_DECAY_PATTERNS.iter().any(|p| name.contains(p))
}

/// A trainable tensor: its name (the checkpoint key, also used to name optimizer state), its
/// value (an f32 master weight in mixed-precision training) and whether weight decay applies.
#[derive(Clone, Debug)]
pub struct Param {
    /// The parameter's name, unique among the parameters given to one optimizer.
    pub name: String,
    /// The current value; [`Optimizer::step`] replaces it with the updated tensor.
    pub value: Tensor,
    /// Whether the optimizer's weight decay applies to this parameter.
    pub weight_decay: bool,
}

impl Param {
    /// A parameter whose weight-decay flag follows [`default_weight_decay`].
    pub fn new(name: impl Into<String>, value: Tensor) -> Param {
        let name = name.into();
        let weight_decay = default_weight_decay(&name, value.rank());
        Param {
            name,
            value,
            weight_decay,
        }
    }

    /// The same parameter with the weight-decay flag overridden.
    pub fn with_weight_decay(mut self, weight_decay: bool) -> Param {
        self.weight_decay = weight_decay;
        self
    }
}

/// An optimizer: updates parameters from their gradients, and saves and restores its state.
pub trait Optimizer: Send {
    /// One update with learning rate `lr`. `grads[i]` is the gradient of `params[i]` (same
    /// shape, any float dtype: it is cast to the parameter's dtype); `None` skips the
    /// parameter entirely, state included, as PyTorch does for parameters without `.grad`.
    fn step(&mut self, params: &mut [Param], grads: &[Option<Tensor>], lr: f64) -> Result<()>;

    /// The state to checkpoint, as named tensors on the parameters' device, every name
    /// starting with `optim.`: `optim.step` (the number of steps taken, a `U32` scalar) and
    /// per-parameter entries such as `optim.exp_avg.{param name}`. Parameters that were never
    /// updated have no entries. Loading this into a fresh optimizer of the same kind and
    /// configuration with [`Optimizer::load_state`] continues the run bit for bit.
    fn state(&self, params: &[Param]) -> Result<Vec<(String, Tensor)>>;

    /// Restores the state saved by [`Optimizer::state`]. Entries not starting with `optim.`
    /// are ignored (the map may be a whole checkpoint); every `optim.` entry must belong to
    /// this optimizer and one of `params`, with the parameter's shape and dtype, or nothing
    /// is changed and the error names the offending entry. Tensors on another device are
    /// copied to the parameter's device.
    fn load_state(&mut self, params: &[Param], state: &HashMap<String, Tensor>) -> Result<()>;

    /// How many times [`Optimizer::step`] succeeded (restored by [`Optimizer::load_state`]).
    fn steps_taken(&self) -> u64;
}

/// The prefix of every optimizer state name.
const STATE_PREFIX: &str = "optim.";
/// The name of the step counter in the saved state.
const STEP_KEY: &str = "optim.step";

/// Casts the f32 master weights to the dtype the forward pass computes in (f16 or bf16 in
/// mixed precision). A parameter already of that dtype is returned as is (no copy).
pub fn compute_copies(params: &[Param], dtype: DType) -> Result<Vec<Tensor>> {
    if !dtype.is_float() {
        return Err(Error::invalid(
            "compute_copies",
            format!("the compute dtype must be a float dtype, got {dtype}"),
        ));
    }
    params.iter().map(|p| p.value.to_dtype(dtype)).collect()
}

/// Casts gradients computed in a half dtype back to f32, the dtype of the master weights
/// (`None` stays `None`; f32 gradients are returned as is). The optimizers also cast on their
/// own; this is for code that works on the gradients before the step (clipping,
/// accumulation) and wants f32 range and precision.
pub fn grads_to_f32(grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
    grads
        .iter()
        .map(|g| {
            g.as_ref()
                .map(|g| {
                    check_float_grad("grads_to_f32", g)?;
                    g.to_dtype(DType::F32)
                })
                .transpose()
        })
        .collect()
}

fn check_float_grad(op: &'static str, g: &Tensor) -> Result<()> {
    if g.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType {
            op,
            dtype: g.dtype(),
            backend: None,
        })
    }
}

/// `t * factor`, computed in f32 for half dtypes (as PyTorch's opmath does) so that the factor
/// is not first rounded to the half dtype.
fn scale_tensor(t: &Tensor, factor: f64) -> Result<Tensor> {
    let compute = t.dtype().compute_dtype();
    if compute == t.dtype() {
        t.mul(&t.scalar_like(factor)?)
    } else {
        let up = t.to_dtype(compute)?;
        up.mul(&up.scalar_like(factor)?)?.to_dtype(t.dtype())
    }
}

/// Checks what every optimizer step needs: one gradient slot per parameter, a usable learning
/// rate, float parameters, and unique names (optimizer state is keyed by name).
fn check_step_args(
    op: &'static str,
    params: &[Param],
    grads: &[Option<Tensor>],
    lr: f64,
) -> Result<()> {
    if params.len() != grads.len() {
        return Err(Error::invalid(
            op,
            format!(
                "{} parameters but {} gradient slots; grads[i] must belong to params[i]",
                params.len(),
                grads.len()
            ),
        ));
    }
    if !(lr.is_finite() && lr >= 0.0) {
        return Err(Error::invalid(
            op,
            format!("the learning rate must be finite and >= 0, got {lr}"),
        ));
    }
    for p in params {
        if !p.value.dtype().is_float() {
            return Err(Error::invalid(
                op,
                format!(
                    "parameter `{}` has dtype {}; parameters must be floats",
                    p.name,
                    p.value.dtype()
                ),
            ));
        }
    }
    check_unique_names(op, params)
}

fn check_unique_names(op: &'static str, params: &[Param]) -> Result<()> {
    let mut seen = HashSet::with_capacity(params.len());
    for p in params {
        if !seen.insert(p.name.as_str()) {
            return Err(Error::invalid(
                op,
                format!(
                    "two parameters are named `{}`; names must be unique",
                    p.name
                ),
            ));
        }
    }
    Ok(())
}

/// The gradient of `param` checked against it and cast to its dtype.
fn master_grad(op: &'static str, param: &Param, grad: &Tensor) -> Result<Tensor> {
    if grad.shape() != param.value.shape() {
        return Err(Error::bad_shape(
            op,
            format!(
                "the gradient of `{}` does not have the parameter's shape {}",
                param.name,
                param.value.shape()
            ),
            grad.shape(),
        ));
    }
    if !grad.dtype().is_float() {
        return Err(Error::invalid(
            op,
            format!(
                "the gradient of `{}` has dtype {}; gradients must be floats",
                param.name,
                grad.dtype()
            ),
        ));
    }
    if !grad.device().same_device(param.value.device()) {
        return Err(Error::DeviceMismatch {
            op,
            lhs: param.value.device().to_string(),
            rhs: grad.device().to_string(),
        });
    }
    grad.to_dtype(param.value.dtype())
}

/// Checks that per-parameter state kept from earlier steps still fits the parameter (a
/// different model passed to the same optimizer would otherwise fail deep in an operation).
fn check_state_fits(op: &'static str, param: &Param, what: &str, t: &Tensor) -> Result<()> {
    if t.shape() != param.value.shape() || t.dtype() != param.value.dtype() {
        return Err(Error::invalid(
            op,
            format!(
                "the {what} of `{}` is {} {} but the parameter is {} {}",
                param.name,
                t.dtype(),
                t.shape(),
                param.value.dtype(),
                param.value.shape()
            ),
        ));
    }
    Ok(())
}

/// A step counter as a `U32` scalar: exact, and a dtype every backend supports (f64 is not).
fn count_tensor(op: &'static str, count: u64, device: &Device) -> Result<Tensor> {
    let count = u32::try_from(count).map_err(|_| {
        Error::invalid(
            op,
            format!("step count {count} does not fit the u32 it is saved as"),
        )
    })?;
    Tensor::full(f64::from(count), (), DType::U32, device)
}

/// Reads back a counter written by [`count_tensor`].
fn read_count(op: &'static str, key: &str, t: &Tensor) -> Result<u64> {
    if t.dtype() != DType::U32 || t.elem_count() != 1 {
        return Err(Error::invalid(
            op,
            format!(
                "state entry `{key}` must be a u32 scalar, got {} {}",
                t.dtype(),
                t.shape()
            ),
        ));
    }
    Ok(u64::from(t.to_vec::<u32>()?[0]))
}

/// `t` on `device`, copied through the host when it lives elsewhere (a checkpoint read on the
/// CPU and a model on a GPU).
fn to_device(t: &Tensor, device: &Device) -> Result<Tensor> {
    if t.device().same_device(device) {
        return Ok(t.clone());
    }
    let host = t.to_host()?;
    let storage = device.backend().upload(host.as_slice())?;
    Tensor::from_storage(
        storage,
        Layout::contiguous(t.shape().clone()),
        device.clone(),
    )
}

/// The `optim.` entries of a state map, handed out one by one so that entries nobody asked
/// for (state of another model or another optimizer) are reported instead of ignored.
struct StateReader<'a> {
    op: &'static str,
    entries: &'a HashMap<String, Tensor>,
    taken: HashSet<&'a str>,
}

impl<'a> StateReader<'a> {
    fn new(op: &'static str, entries: &'a HashMap<String, Tensor>) -> Self {
        StateReader {
            op,
            entries,
            taken: HashSet::new(),
        }
    }

    fn take(&mut self, key: &str) -> Option<&'a Tensor> {
        let (k, t) = self.entries.get_key_value(key)?;
        self.taken.insert(k.as_str());
        Some(t)
    }

    /// The entry for `param`, checked to have its shape and dtype and moved to its device.
    fn take_for(&mut self, key: &str, param: &Param) -> Result<Option<Tensor>> {
        let Some(t) = self.take(key) else {
            return Ok(None);
        };
        if t.shape() != param.value.shape() || t.dtype() != param.value.dtype() {
            return Err(Error::invalid(
                self.op,
                format!(
                    "state entry `{key}` is {} {} but parameter `{}` is {} {}",
                    t.dtype(),
                    t.shape(),
                    param.name,
                    param.value.dtype(),
                    param.value.shape()
                ),
            ));
        }
        to_device(t, param.value.device()).map(Some)
    }

    /// The step counter, required whenever there are parameters.
    fn take_steps(&mut self, params: &[Param]) -> Result<u64> {
        match self.take(STEP_KEY) {
            Some(t) => read_count(self.op, STEP_KEY, t),
            None if params.is_empty() => Ok(0),
            None => Err(Error::invalid(
                self.op,
                format!("the state has no `{STEP_KEY}` entry: not a checkpoint of this optimizer"),
            )),
        }
    }

    /// Fails on the first (in sorted order, for a stable message) `optim.` entry not taken.
    fn finish(self, optimizer: &str) -> Result<()> {
        let mut unused: Vec<&String> = self
            .entries
            .keys()
            .filter(|k| k.starts_with(STATE_PREFIX) && !self.taken.contains(k.as_str()))
            .collect();
        unused.sort();
        match unused.first() {
            None => Ok(()),
            Some(key) => Err(Error::invalid(
                self.op,
                format!(
                    "state entry `{key}` does not belong to this {optimizer} or to any of the \
                     given parameters ({} unexpected entries in all): a checkpoint of another \
                     model or optimizer configuration?",
                    unused.len()
                ),
            )),
        }
    }
}

/// The global step counter entry, placed on the first parameter's device (there is no state
/// to save without parameters).
fn step_entry(op: &'static str, steps: u64, params: &[Param]) -> Result<Option<(String, Tensor)>> {
    params
        .first()
        .map(|p| {
            Ok((
                STEP_KEY.to_string(),
                count_tensor(op, steps, p.value.device())?,
            ))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Device {
        glimpse_cpu::device()
    }

    #[test]
    fn default_grouping_rule() -> Result<()> {
        let d = dev();
        let w2 = Tensor::zeros([3, 4], DType::F32, &d)?;
        let w1 = Tensor::zeros(4, DType::F32, &d)?;
        let w3 = Tensor::zeros([1, 1, 4], DType::F32, &d)?;
        assert!(Param::new("encoder.layers.0.mlp.fc1.weight", w2.clone()).weight_decay);
        assert!(Param::new("patch_embedding.weight", w3.clone()).weight_decay);
        assert!(!Param::new("encoder.layers.0.mlp.fc1.bias", w1.clone()).weight_decay);
        assert!(!Param::new("encoder.layers.0.layer_norm1.weight", w1).weight_decay);
        assert!(!Param::new("embeddings.position_embedding.weight", w2.clone()).weight_decay);
        assert!(!Param::new("vit.cls_token", w3.clone()).weight_decay);
        assert!(!Param::new("embeddings.class_embedding", w3).weight_decay);
        assert!(!Param::new("logit_scale", w2.clone()).weight_decay);
        assert!(!Param::new("pre_layrnorm.norm", w2.clone()).weight_decay);
        assert!(
            !Param::new("fc.weight", w2.clone())
                .with_weight_decay(false)
                .weight_decay
        );
        let scalar = Tensor::zeros((), DType::F32, &d)?;
        assert!(
            Param::new("anything", scalar)
                .with_weight_decay(true)
                .weight_decay
        );
        Ok(())
    }

    #[test]
    fn mixed_precision_helpers() -> Result<()> {
        let d = dev();
        let w = Tensor::from_vec(vec![1.0f32, 1.0 + 1e-4, -2.5], 3, &d)?;
        let params = vec![Param::new("w", w.clone())];
        let same = compute_copies(&params, DType::F32)?;
        assert!(same[0].shares_storage_with(&w));
        let half = compute_copies(&params, DType::F16)?;
        assert_eq!(half[0].dtype(), DType::F16);
        assert_eq!(half[0].to_f64_vec()?, vec![1.0, 1.0, -2.5]);
        assert!(compute_copies(&params, DType::U32).is_err());

        let grads = vec![Some(half[0].clone()), None, Some(w.clone())];
        let back = grads_to_f32(&grads)?;
        assert_eq!(back[0].as_ref().map(|g| g.dtype()), Some(DType::F32));
        assert!(back[1].is_none());
        assert!(back[2].as_ref().is_some_and(|g| g.shares_storage_with(&w)));
        let ids = Tensor::zeros(3, DType::U32, &d)?;
        assert!(grads_to_f32(&[Some(ids)]).is_err());
        Ok(())
    }

    #[test]
    fn counters_round_trip() -> Result<()> {
        let d = dev();
        let t = count_tensor("t", 123_456, &d)?;
        assert_eq!(t.dims(), &[] as &[usize]);
        assert_eq!(read_count("t", "k", &t)?, 123_456);
        assert!(count_tensor("t", u64::from(u32::MAX) + 1, &d).is_err());
        let f = Tensor::zeros((), DType::F32, &d)?;
        assert!(read_count("t", "k", &f).is_err());
        Ok(())
    }

    #[test]
    fn step_argument_checks() -> Result<()> {
        let d = dev();
        let w = Tensor::zeros([2, 2], DType::F32, &d)?;
        let params = vec![Param::new("a", w.clone()), Param::new("a", w.clone())];
        let grads = vec![None, None];
        assert!(check_step_args("t", &params, &grads, 0.1).is_err());
        let params = vec![Param::new("a", w.clone()), Param::new("b", w.clone())];
        assert!(check_step_args("t", &params, &grads, 0.1).is_ok());
        assert!(check_step_args("t", &params, &grads[..1], 0.1).is_err());
        assert!(check_step_args("t", &params, &grads, f64::NAN).is_err());
        assert!(check_step_args("t", &params, &grads, -1.0).is_err());
        let g = Tensor::zeros([2, 3], DType::F32, &d)?;
        assert!(master_grad("t", &params[0], &g).is_err());
        let g = Tensor::zeros([2, 2], DType::U32, &d)?;
        assert!(master_grad("t", &params[0], &g).is_err());
        let g = Tensor::zeros([2, 2], DType::BF16, &d)?;
        assert_eq!(master_grad("t", &params[0], &g)?.dtype(), DType::F32);
        Ok(())
    }
}

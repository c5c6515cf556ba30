//! Weight lookup by key path.
//!
//! A [`VarBuilder`] is how a model loads its weights: it holds a source of named tensors (a
//! [`Checkpoint`] or an in-memory map), a key prefix, the dtype weights are converted to and
//! the device they are loaded on.
//!
//! ```
//! # fn main() -> glimpse_tensor::Result<()> {
//! use std::collections::HashMap;
//! use glimpse_tensor::{DType, Tensor, VarBuilder};
//! let device = glimpse_cpu::device();
//! let w = Tensor::zeros([4, 3], DType::F32, &device)?;
//! let vb = VarBuilder::from_tensors(
//!     HashMap::from([("encoder.0.fc.weight".to_string(), w)]),
//!     DType::F16,
//!     &device,
//! );
//! let layer = vb.pp("encoder").pp(0);
//! assert_eq!(layer.prefix(), "encoder.0");
//! let w = layer.get([4, 3], "fc.weight")?;
//! assert_eq!(w.dtype(), DType::F16);
//! vb.finish_strict()?; // every weight was used
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::safetensors::{Checkpoint, nearest_keys};
use crate::{DType, Device, Error, Result, Shape, Tensor};

/// How many nearest keys a [`Error::MissingKey`] suggests.
const NEAREST: usize = 5;

enum Source {
    Checkpoint(Checkpoint),
    Memory(HashMap<String, Tensor>),
}

impl Source {
    fn keys(&self) -> Vec<&str> {
        match self {
            Source::Checkpoint(c) => c.names(),
            Source::Memory(m) => {
                let mut k: Vec<&str> = m.keys().map(String::as_str).collect();
                k.sort_unstable();
                k
            }
        }
    }

    fn contains(&self, key: &str) -> bool {
        match self {
            Source::Checkpoint(c) => c.contains(key),
            Source::Memory(m) => m.contains_key(key),
        }
    }

    /// Shape and "is integer" of a key, without loading it.
    fn describe(&self, key: &str) -> Option<(Shape, bool)> {
        match self {
            Source::Checkpoint(c) => c.info(key).map(|i| {
                let int = !i.dtype.to_dtype().is_some_and(DType::is_float);
                (Shape::new(i.shape.clone()), int)
            }),
            Source::Memory(m) => m
                .get(key)
                .map(|t| (t.shape().clone(), !t.dtype().is_float())),
        }
    }

    fn load(&self, key: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        match self {
            Source::Checkpoint(c) => c.load_as(key, dtype, device),
            Source::Memory(m) => {
                let t = m.get(key).ok_or_else(|| Error::MissingKey {
                    key: key.to_string(),
                    nearest: Vec::new(),
                })?;
                let t = if t.device().same_device(device) {
                    t.clone()
                } else {
                    t.to_device(device)?
                };
                t.to_dtype(dtype)
            }
        }
    }
}

type Predicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What a builder and all its clones share: the keys asked for, and the keys allowed to stay
/// unused.
#[derive(Default)]
struct Tracker {
    requested: HashSet<String>,
    allowed_prefixes: Vec<String>,
    allowed_if: Vec<Predicate>,
}

impl Tracker {
    fn allowed(&self, key: &str) -> bool {
        self.allowed_prefixes.iter().any(|p| {
            p.is_empty()
                || key == p
                || (key.starts_with(p.as_str()) && key.as_bytes().get(p.len()) == Some(&b'.'))
        }) || self.allowed_if.iter().any(|f| f(key))
    }
}

/// Loads weights by key path, checking shapes and converting dtypes.
///
/// Cloning is cheap, and clones made by [`pp`](Self::pp) share the source and the record of
/// which keys were asked for, so [`unused_keys`](Self::unused_keys) on the root builder sees
/// the requests of every sub-builder (strict loading).
///
/// Floating-point weights are converted to the builder's [`dtype`](Self::dtype). Integer
/// tensors (`U32`, and `I64` buffers such as `position_ids`, converted to `U32`) stay `U32`
/// when the builder's dtype is a float, since turning ids into floats is never what a model
/// wants; [`get_as`](Self::get_as) picks a dtype explicitly.
#[derive(Clone)]
pub struct VarBuilder {
    source: Arc<Source>,
    prefix: String,
    dtype: DType,
    device: Device,
    tracker: Arc<Mutex<Tracker>>,
}

impl fmt::Debug for VarBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, len) = match &*self.source {
            Source::Checkpoint(c) => ("checkpoint", c.len()),
            Source::Memory(m) => ("memory", m.len()),
        };
        f.debug_struct("VarBuilder")
            .field("source", &kind)
            .field("tensors", &len)
            .field("prefix", &self.prefix)
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .finish()
    }
}

impl VarBuilder {
    fn new(source: Source, dtype: DType, device: &Device) -> Self {
        VarBuilder {
            source: Arc::new(source),
            prefix: String::new(),
            dtype,
            device: device.clone(),
            tracker: Arc::new(Mutex::new(Tracker::default())),
        }
    }

    /// A builder over a checkpoint, loading weights as `dtype` on `device`.
    pub fn from_checkpoint(checkpoint: Checkpoint, dtype: DType, device: &Device) -> Self {
        Self::new(Source::Checkpoint(checkpoint), dtype, device)
    }

    /// Opens a checkpoint (see [`Checkpoint::open`]: a file, an index or a directory) and
    /// returns a builder over it.
    pub fn from_path(path: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self::from_checkpoint(
            Checkpoint::open(path)?,
            dtype,
            device,
        ))
    }

    /// A builder over tensors held in memory (tests, models built from random weights).
    /// Tensors on another device are copied to `device` when loaded.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, dtype: DType, device: &Device) -> Self {
        Self::new(Source::Memory(tensors), dtype, device)
    }

    /// A sub-builder whose prefix is this one's followed by `.segment` (`segment` may be any
    /// `Display`, so layer indices work: `vb.pp("layers").pp(3)` is `layers.3`).
    pub fn pp(&self, segment: impl fmt::Display) -> Self {
        let segment = segment.to_string();
        VarBuilder {
            prefix: self.key(&segment),
            ..self.clone()
        }
    }

    /// The same builder, converting weights to `dtype` instead (shares the record of requested
    /// keys).
    pub fn with_dtype(&self, dtype: DType) -> Self {
        VarBuilder {
            dtype,
            ..self.clone()
        }
    }

    /// The key prefix (`""` for the root), segments joined by `.`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The dtype floating-point weights are converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device weights are loaded on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The full key of `name` under this builder's prefix.
    pub fn key(&self, name: &str) -> String {
        match (self.prefix.is_empty(), name.is_empty()) {
            (true, _) => name.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{name}", self.prefix),
        }
    }

    /// True if the source holds `name` under this builder's prefix. Does not count as a
    /// request for strict loading.
    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(&self.key(name))
    }

    /// The shape of `name` without loading it.
    pub fn shape_of(&self, name: &str) -> Result<Shape> {
        let key = self.key(name);
        match self.source.describe(&key) {
            Some((shape, _)) => Ok(shape),
            None => Err(self.missing(key)),
        }
    }

    /// Every key of the source under this builder's prefix (full keys, sorted).
    pub fn keys(&self) -> Vec<String> {
        self.source
            .keys()
            .into_iter()
            .filter(|k| self.under_prefix(k))
            .map(str::to_string)
            .collect()
    }

    fn under_prefix(&self, key: &str) -> bool {
        self.prefix.is_empty()
            || key == self.prefix
            || (key.starts_with(&self.prefix)
                && key.as_bytes().get(self.prefix.len()) == Some(&b'.'))
    }

    fn missing(&self, key: String) -> Error {
        let nearest = nearest_keys(&key, self.source.keys(), NEAREST);
        Error::MissingKey { key, nearest }
    }

    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        // A panic elsewhere while the lock was held leaves the set of keys intact.
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fetch(&self, name: &str, shape: Option<Shape>, dtype: Option<DType>) -> Result<Tensor> {
        let key = self.key(name);
        let Some((got, is_int)) = self.source.describe(&key) else {
            return Err(self.missing(key));
        };
        self.tracker().requested.insert(key.clone());
        if let Some(expected) = shape
            && expected != got
        {
            return Err(Error::WeightShape { key, expected, got });
        }
        let dtype = match dtype {
            Some(d) => d,
            None if is_int && self.dtype.is_float() => DType::U32,
            None => self.dtype,
        };
        self.source.load(&key, dtype, &self.device)
    }

    /// Loads `name`, checking that it has shape `shape` ([`Error::WeightShape`] otherwise) and
    /// converting it to the builder's dtype. A missing key is an [`Error::MissingKey`] that
    /// suggests the nearest existing keys.
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        self.fetch(name, Some(shape.into()), None)
    }

    /// [`get`](Self::get) converting to `dtype` rather than the builder's dtype.
    pub fn get_as(&self, shape: impl Into<Shape>, name: &str, dtype: DType) -> Result<Tensor> {
        self.fetch(name, Some(shape.into()), Some(dtype))
    }

    /// Loads `name` whatever its shape, converted like [`get`](Self::get).
    pub fn get_unchecked(&self, name: &str) -> Result<Tensor> {
        self.fetch(name, None, None)
    }

    /// Lets keys under `prefix` (relative to this builder's prefix) stay unused in strict
    /// loading. A key matches if it equals the full prefix or continues it with `.`, so
    /// `vb.pp("embeddings").allow_unused("position_ids")` allows
    /// `embeddings.position_ids`. Applies to every clone of the builder.
    pub fn allow_unused(&self, prefix: impl fmt::Display) -> &Self {
        let full = self.key(&prefix.to_string());
        self.tracker().allowed_prefixes.push(full);
        self
    }

    /// Lets every key (full key) for which `predicate` is true stay unused in strict loading,
    /// for instance `vb.allow_unused_if(|k| k.ends_with(".position_ids"))`.
    pub fn allow_unused_if(
        &self,
        predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> &Self {
        self.tracker().allowed_if.push(Arc::new(predicate));
        self
    }

    /// The keys under this builder's prefix that no builder sharing its record has asked for
    /// (with [`get`](Self::get) and friends) and that are not allowed to stay unused, sorted.
    pub fn unused_keys(&self) -> Vec<String> {
        let tracker = self.tracker();
        self.source
            .keys()
            .into_iter()
            .filter(|k| {
                self.under_prefix(k) && !tracker.requested.contains(*k) && !tracker.allowed(k)
            })
            .map(str::to_string)
            .collect()
    }

    /// Strict loading: [`Error::UnusedKeys`] if [`unused_keys`](Self::unused_keys) is not
    /// empty. Call it on the root builder after building the model.
    pub fn finish_strict(&self) -> Result<()> {
        let keys = self.unused_keys();
        if keys.is_empty() {
            Ok(())
        } else {
            Err(Error::UnusedKeys { keys })
        }
    }
}

//! Training checkpoints: parameters, optimizer state and the loop's position in one
//! safetensors file, written atomically (temporary file, fsync, rename).

use std::collections::HashMap;
use std::path::Path;

use glimpse_tensor::safetensors::{self, SafeTensorsFile};
use glimpse_tensor::{Device, Error, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::optim::{LossScalerState, Param};

/// The metadata key holding [`TrainState`] as JSON.
pub const STATE_KEY: &str = "glimpse.train_state";
/// Parameter tensors are stored as `param.{name}`.
pub const PARAM_PREFIX: &str = "param.";

/// Where a run stands: enough, with the parameters and the optimizer state, to continue
/// exactly as if it had never stopped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// What is trained (`"vit-fashion-mnist"`, `"clip-shapes"`); a checkpoint of another
    /// task is refused.
    pub task: String,
    /// Optimizer steps taken.
    pub step: u64,
    /// The run's settings and model configuration, compared on resume.
    pub run: serde_json::Value,
    /// Dynamic loss scaling state (f16 training).
    pub loss_scaler: Option<LossScalerState>,
}

/// Saves parameters, optimizer state and `state` to `path`, atomically.
pub fn save(
    path: &Path,
    params: &[Param],
    optimizer_state: &[(String, Tensor)],
    state: &TrainState,
) -> Result<()> {
    let names: Vec<String> = params
        .iter()
        .map(|p| format!("{PARAM_PREFIX}{}", p.name))
        .collect();
    let mut tensors: Vec<(&str, &Tensor)> = names
        .iter()
        .zip(params)
        .map(|(n, p)| (n.as_str(), &p.value))
        .collect();
    tensors.extend(optimizer_state.iter().map(|(n, t)| (n.as_str(), t)));
    let json = serde_json::to_string(state)
        .map_err(|e| Error::invalid("checkpoint", format!("cannot serialize the state: {e}")))?;
    let metadata = HashMap::from([(STATE_KEY.to_string(), json)]);
    safetensors::save(&tensors, path, Some(metadata))
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Loaded {
    pub state: TrainState,
    /// Parameters by name (without the prefix).
    pub params: HashMap<String, Tensor>,
    /// Everything else (the optimizer's state), by its stored name.
    pub optimizer_state: HashMap<String, Tensor>,
}

/// Loads a checkpoint written by [`save`] onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    // Read into memory rather than mapped: the next checkpoint replaces this file.
    let ckpt = SafeTensorsFile::read(path)?;
    let where_ = path.display().to_string();
    let json = ckpt.metadata().get(STATE_KEY).ok_or_else(|| {
        Error::config(
            &where_,
            format!("not a glimpse training checkpoint (no `{STATE_KEY}` metadata)"),
        )
    })?;
    let state: TrainState = serde_json::from_str(json)
        .map_err(|e| Error::config(&where_, format!("bad training state: {e}")))?;
    let mut params = HashMap::new();
    let mut optimizer_state = HashMap::new();
    for name in ckpt.names() {
        let t = ckpt.load(name, device)?;
        match name.strip_prefix(PARAM_PREFIX) {
            Some(p) => {
                params.insert(p.to_string(), t);
            }
            None => {
                optimizer_state.insert(name.to_string(), t);
            }
        }
    }
    Ok(Loaded {
        state,
        params,
        optimizer_state,
    })
}

/// Replaces the values of `params` with the checkpoint's, checking names, shapes and dtypes.
pub fn restore_params(params: &mut [Param], loaded: &HashMap<String, Tensor>) -> Result<()> {
    if loaded.len() != params.len() {
        let extra: Vec<&String> = loaded
            .keys()
            .filter(|k| !params.iter().any(|p| &p.name == *k))
            .take(3)
            .collect();
        return Err(Error::invalid(
            "resume",
            format!(
                "the checkpoint has {} parameters, the model {} (unexpected: {extra:?})",
                loaded.len(),
                params.len()
            ),
        ));
    }
    for p in params.iter_mut() {
        let t = loaded.get(&p.name).ok_or_else(|| Error::MissingKey {
            key: format!("{PARAM_PREFIX}{}", p.name),
            nearest: Vec::new(),
        })?;
        if t.shape() != p.value.shape() || t.dtype() != p.value.dtype() {
            return Err(Error::invalid(
                "resume",
                format!(
                    "parameter `{}` is {:?} {} in the checkpoint but {:?} {} in the model",
                    p.name,
                    t.dims(),
                    t.dtype(),
                    p.value.dims(),
                    p.value.dtype()
                ),
            ));
        }
        p.value = t.clone();
    }
    Ok(())
}

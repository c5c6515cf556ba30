//! A device is a handle to a backend.

use std::sync::Arc;

use crate::{Backend, DeviceLocation};

/// A handle to a backend: cheap to clone, and the only thing model code knows about where
/// tensors live. Backend crates hand them out (for instance `glimpse_cpu::device()`).
#[derive(Clone)]
pub struct Device(Arc<dyn Backend>);

impl Device {
    /// Wraps a backend.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Device(backend)
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.0
    }

    pub fn location(&self) -> DeviceLocation {
        self.0.location()
    }

    /// True if tensors of both devices may be mixed in one operation.
    pub fn same_device(&self, other: &Device) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.location() == other.location()
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.location())
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.location())
    }
}

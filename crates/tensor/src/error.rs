//! The one error type of glimpse. Every fallible operation returns [`Result`].

use crate::{DType, Shape};

/// Everything that can go wrong in a tensor operation, a backend, or while loading weights.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two operands (or an operand and a request) have shapes that do not fit together.
    #[error("{op}: shape mismatch, {lhs} vs {rhs}")]
    ShapeMismatch {
        op: &'static str,
        lhs: Shape,
        rhs: Shape,
    },
    /// An operand has the wrong shape for what the operation expects.
    #[error("{op}: {msg} (got shape {shape})")]
    BadShape {
        op: &'static str,
        msg: String,
        shape: Shape,
    },
    /// A buffer holds a different number of elements than the shape asks for.
    #[error("{op}: shape {shape} needs {expected} elements, got {got}")]
    ElementCount {
        op: &'static str,
        shape: Shape,
        expected: usize,
        got: usize,
    },
    /// Operands of different dtypes, or a dtype other than the one required.
    #[error("{op}: dtype mismatch, expected {expected:?}, got {got:?}")]
    DTypeMismatch {
        op: &'static str,
        expected: DType,
        got: DType,
    },
    /// The operation (or the backend) does not support this dtype.
    #[error("{op}: dtype {dtype:?} is not supported{}", on_backend(.backend))]
    UnsupportedDType {
        op: &'static str,
        dtype: DType,
        backend: Option<String>,
    },
    /// Operands live on different devices.
    #[error("{op}: operands are on different devices ({lhs} and {rhs})")]
    DeviceMismatch {
        op: &'static str,
        lhs: String,
        rhs: String,
    },
    /// A dimension index past the rank of the tensor.
    #[error("{op}: dimension {dim} is out of range for a tensor of rank {rank}")]
    DimOutOfRange {
        op: &'static str,
        dim: isize,
        rank: usize,
    },
    /// An index (or range) past the size of the dimension it addresses.
    #[error("{op}: index {index} is out of range for a dimension of size {size}")]
    IndexOutOfRange {
        op: &'static str,
        index: usize,
        size: usize,
    },
    /// An argument with a value the operation cannot accept.
    #[error("{op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },
    /// A weight that a model asked for is not in the checkpoint.
    #[error("missing weight `{key}`{}", nearest_keys(.nearest))]
    MissingKey { key: String, nearest: Vec<String> },
    /// A weight exists but its shape is not what the model expects.
    #[error("weight `{key}` has shape {got}, expected {expected}")]
    WeightShape {
        key: String,
        expected: Shape,
        got: Shape,
    },
    /// Weights in a checkpoint that the model never asked for (strict loading).
    #[error("{} unused weight(s) in the checkpoint: {}", .keys.len(), .keys.join(", "))]
    UnusedKeys { keys: Vec<String> },
    /// A safetensors file (or index) that cannot be parsed.
    #[error("corrupt safetensors file {path}: {msg}")]
    SafeTensors { path: String, msg: String },
    /// A model configuration (a `config.json`, or one built in code) that is malformed, or
    /// that does not fit the model or its weights.
    #[error("bad model configuration {path}: {msg}")]
    Config { path: String, msg: String },
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A GPU kernel that failed to compile, with the compiler's log.
    #[error("kernel `{kernel}` failed to compile:\n{log}")]
    KernelCompile { kernel: String, log: String },
    /// Any other failure reported by a backend.
    #[error("{backend} backend: {msg}")]
    Backend { backend: String, msg: String },
}

fn on_backend(backend: &Option<String>) -> String {
    match backend {
        Some(b) => format!(" on the {b} backend"),
        None => String::new(),
    }
}

fn nearest_keys(nearest: &[String]) -> String {
    if nearest.is_empty() {
        String::new()
    } else {
        format!("; nearest existing keys: {}", nearest.join(", "))
    }
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }

    /// Shorthand for [`Error::BadShape`].
    pub fn bad_shape(op: &'static str, msg: impl Into<String>, shape: &Shape) -> Self {
        Error::BadShape {
            op,
            msg: msg.into(),
            shape: shape.clone(),
        }
    }

    /// Shorthand for [`Error::Backend`].
    pub fn backend(backend: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Backend {
            backend: backend.into(),
            msg: msg.into(),
        }
    }

    /// Shorthand for [`Error::Config`]; `path` names the file, or the config type when it
    /// did not come from a file.
    pub fn config(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// `Result` with glimpse's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Returns early with an [`Error::InvalidArgument`] built from a format string.
#[macro_export]
macro_rules! bail {
    ($op:expr, $($arg:tt)*) => {
        return Err($crate::Error::InvalidArgument { op: $op, msg: format!($($arg)*) })
    };
}

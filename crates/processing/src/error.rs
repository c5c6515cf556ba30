//! The error type of glimpse-processing.

/// Everything that can go wrong while loading or pre-processing images and text.
///
/// Errors about a file name the file. Converts into [`glimpse_tensor::Error`] (so a model crate
/// returning glimpse's `Result` can use `?` on it), and from it (tensor construction).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessingError {
    /// A file that cannot be opened or read (missing, a directory, no permission).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A file that is not an image in a supported format (PNG, JPEG, GIF, WebP, BMP), or whose
    /// data is corrupt or truncated.
    #[error("cannot decode image {path}: {msg}")]
    Decode {
        /// The file.
        path: String,
        /// What the decoder said.
        msg: String,
    },
    /// An image with no pixels (a width or a height of zero).
    #[error("image {path} is empty ({width}x{height})")]
    EmptyImage {
        /// The file, or a description of the in-memory image.
        path: String,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// A `preprocessor_config.json` that cannot be parsed, or that asks for something this crate
    /// does not do (an unknown filter code, a size key other than `shortest_edge` or
    /// `height`/`width`, a processor type it has no defaults for, ...).
    #[error("bad image processor configuration {path}: {msg}")]
    Config {
        /// The file, or `ImageProcessorConfig` for a configuration built in code.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// A `tokenizer.json` that cannot be loaded, or a failure of the tokenizer.
    #[error("tokenizer {path}: {msg}")]
    Tokenizer {
        /// The file the tokenizer was loaded from.
        path: String,
        /// What the tokenizers library said.
        msg: String,
    },
    /// An argument that the operation cannot accept (an empty batch, a zero size, ...).
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A failure while building a tensor.
    #[error(transparent)]
    Tensor(#[from] glimpse_tensor::Error),
}

impl ProcessingError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        ProcessingError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn decode(path: &std::path::Path, msg: impl std::fmt::Display) -> Self {
        ProcessingError::Decode {
            path: path.display().to_string(),
            msg: msg.to_string(),
        }
    }

    pub(crate) fn config(path: impl Into<String>, msg: impl Into<String>) -> Self {
        ProcessingError::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        ProcessingError::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }
}

impl From<ProcessingError> for glimpse_tensor::Error {
    fn from(e: ProcessingError) -> Self {
        match e {
            ProcessingError::Tensor(e) => e,
            ProcessingError::Io { path, source } => glimpse_tensor::Error::Io { path, source },
            ProcessingError::InvalidArgument { op, msg } => {
                glimpse_tensor::Error::InvalidArgument { op, msg }
            }
            other => glimpse_tensor::Error::InvalidArgument {
                op: "glimpse-processing",
                msg: other.to_string(),
            },
        }
    }
}

/// `Result` with [`ProcessingError`].
pub type Result<T> = std::result::Result<T, ProcessingError>;

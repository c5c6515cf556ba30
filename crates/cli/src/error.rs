//! The errors of the command-line tool: each one says which file (or argument) is at fault
//! and what is wrong with it, in one paragraph.

use std::path::Path;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Arguments that parse but do not make sense together (exit code 2, as clap's own
    /// usage errors).
    #[error("{0}")]
    Usage(String),
    /// A device whose backend is not compiled into this binary (exit code 2: the command
    /// line asks for something this build cannot do).
    #[error(
        "the {name} backend is not built into this binary. GPU backends are enabled at build \
         time with the cargo feature `{name}` (`cargo install --path crates/cli --features \
         {name}`, where the backend exists); until then run with `--device cpu`"
    )]
    DeviceNotBuilt {
        /// `cuda` or `wgpu`.
        name: &'static str,
    },
    /// A backend that is built in but cannot open a device (no driver, no GPU).
    #[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))]
    #[error("cannot use the {name} device: {msg}")]
    DeviceUnavailable {
        /// `cuda` or `wgpu`.
        name: &'static str,
        /// Why, as the backend says it.
        msg: String,
    },
    /// An input file (image, labels file) that is missing, unreadable or malformed.
    #[error("{what} {path}: {msg}")]
    Input {
        /// What the file is for: "image", "labels file".
        what: &'static str,
        /// The file, as given on the command line.
        path: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A model directory that is incomplete or whose files do not fit together.
    #[error("model directory {dir}: {msg}")]
    Model {
        /// The directory, as given on the command line.
        dir: String,
        /// What is wrong with it.
        msg: String,
    },
    /// An output file that cannot be written.
    #[error("cannot write {path}: {msg}")]
    Output {
        /// The file, as given on the command line.
        path: String,
        /// Why.
        msg: String,
    },
    /// A failure while computing (a tensor operation, a backend).
    #[error("{context}: {source}")]
    Compute {
        /// What was being done.
        context: String,
        /// The library's error.
        #[source]
        source: glimpse_tensor::Error,
    },
}

impl CliError {
    /// The process exit code: 2 for usage errors (as clap), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::DeviceNotBuilt { .. } => 2,
            _ => 1,
        }
    }

    /// A problem with the input file `path`, which is `what` ("image", "labels file").
    pub fn input(what: &'static str, path: &Path, msg: impl Into<String>) -> Self {
        CliError::Input {
            what,
            path: path.display().to_string(),
            msg: msg.into(),
        }
    }

    /// A problem with the model directory `dir`.
    pub fn model(dir: &Path, msg: impl Into<String>) -> Self {
        CliError::Model {
            dir: dir.display().to_string(),
            msg: msg.into(),
        }
    }

    /// A problem writing `path`.
    pub fn output(path: &Path, msg: impl Into<String>) -> Self {
        CliError::Output {
            path: path.display().to_string(),
            msg: msg.into(),
        }
    }

    /// A library error while doing `context`.
    pub fn compute(context: impl Into<String>, source: glimpse_tensor::Error) -> Self {
        CliError::Compute {
            context: context.into(),
            source,
        }
    }
}

/// `Result` with [`CliError`].
pub type Result<T> = std::result::Result<T, CliError>;

/// Attaches a context to library errors.
pub trait Context<T> {
    /// Wraps the error as [`CliError::Compute`] with `context`.
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for glimpse_tensor::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| CliError::compute(context(), e))
    }
}

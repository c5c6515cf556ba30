//! Device selection, the progress bar and writing to stdout.

use std::io::{IsTerminal, Write};

use glimpse_tensor::Device;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::DeviceArg;
use crate::error::{CliError, Result};

/// The device for `--device`. The CPU backend is always built in; wgpu with the default cargo
/// feature `wgpu` (first adapter), CUDA with the feature `cuda` (first GPU); a backend not
/// built in is reported before anything is read.
pub fn device(arg: DeviceArg) -> Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(glimpse_cpu::device()),
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda => glimpse_cuda::device(0).map_err(|e| CliError::DeviceUnavailable {
            name: "cuda",
            msg: e.to_string(),
        }),
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Cuda => Err(CliError::DeviceNotBuilt { name: "cuda" }),
        #[cfg(feature = "wgpu")]
        DeviceArg::Wgpu => glimpse_wgpu::device(0).map_err(|e| CliError::DeviceUnavailable {
            name: "wgpu",
            msg: e.to_string(),
        }),
        #[cfg(not(feature = "wgpu"))]
        DeviceArg::Wgpu => Err(CliError::DeviceNotBuilt { name: "wgpu" }),
    }
}

/// A progress bar on stderr over `total` items, shown only when the work takes more than
/// one batch, stderr is a terminal and the output is not JSON.
pub fn progress(total: usize, batch_size: usize, json: bool) -> ProgressBar {
    if json || total <= batch_size || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} {elapsed} (eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Writes `text` to stdout. A closed pipe (`glimpse ... | head`) is not an error.
pub fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Output {
            path: "stdout".into(),
            msg: e.to_string(),
        }),
    }
}

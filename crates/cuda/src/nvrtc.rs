//! Finding the CUDA libraries at run time, and compiling kernel sources with NVRTC.
//!
//! cudarc loads `libcuda`, `libnvrtc` and `libcublas` on first use and panics when one is
//! missing (or lacks a symbol of the CUDA 13.0 API). Every first touch of a library goes
//! through [`library_present`], which looks for it without panicking, and through
//! [`guard`], which turns a panic inside cudarc into an error.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};
use glimpse_kernels::KernelSource;
use glimpse_tensor::{Error, Result};

/// A CUDA library loaded at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Library {
    /// The driver, `libcuda.so` (part of the NVIDIA driver).
    Driver,
    /// The run-time compiler, `libnvrtc.so.13` (CUDA toolkit or the `nvidia-cuda-nvrtc` wheel).
    Nvrtc,
    /// cuBLAS, `libcublas.so.13` (CUDA toolkit or the `nvidia-cublas` wheel).
    Cublas,
    /// cuBLASLt, `libcublasLt.so.13` (beside cuBLAS, which uses it).
    CublasLt,
}

impl Library {
    fn name(self) -> &'static str {
        match self {
            Library::Driver => "libcuda",
            Library::Nvrtc => "libnvrtc",
            Library::Cublas => "libcublas",
            Library::CublasLt => "libcublasLt",
        }
    }
}

/// Runs `f`, turning a panic (cudarc panics when a library cannot be loaded) into an error
/// message.
pub fn guard<T>(what: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        format!("{what}: {msg}")
    })
}

/// Whether `lib` can be loaded (checked once per process), with the reason when it cannot.
pub fn library_present(lib: Library) -> std::result::Result<(), String> {
    static DRIVER: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    static NVRTC: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    static CUBLAS: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    static CUBLASLT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let (cell, probe): (_, unsafe fn() -> bool) = match lib {
        Library::Driver => (&DRIVER, cudarc::driver::sys::is_culib_present),
        Library::Nvrtc => (&NVRTC, cudarc::nvrtc::sys::is_culib_present),
        Library::Cublas => (&CUBLAS, cudarc::cublas::sys::is_culib_present),
        Library::CublasLt => (&CUBLASLT, cudarc::cublaslt::sys::is_culib_present),
    };
    cell.get_or_init(|| {
        // SAFETY: the probe only tries to dlopen the library under its usual names and
        // resolve its symbols; it calls nothing in it.
        match guard(lib.name(), || unsafe { probe() }) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "{} could not be loaded (not installed, or not on LD_LIBRARY_PATH)",
                lib.name()
            )),
            Err(e) => Err(format!("{} is present but unusable: {e}", lib.name())),
        }
    })
    .clone()
}

/// The NVRTC options for a source: the target architecture (`sm_XY`, from the device's
/// compute capability `XY`) and C++17. No `--use_fast_math`: exp, log, erf and division keep
/// their accuracy, which the tests compare against the CPU.
pub fn options(source: &str, arch: u32) -> CompileOptions {
    CompileOptions {
        options: vec![
            format!("--gpu-architecture=sm_{arch}"),
            "-std=c++17".into(),
            "--device-as-default-execution-space".into(),
        ],
        name: Some(source.to_string()),
        ..Default::default()
    }
}

/// The text NVRTC compiles for a source: `common.cuh` then the source, each behind a `#line`
/// directive so that the compiler's messages name the right file and line.
pub fn full_source(source: &KernelSource) -> String {
    format!(
        "#line 1 \"common.cuh\"\n{}\n#line 1 \"{}\"\n{}\n",
        glimpse_kernels::CUDA_COMMON,
        source.name,
        source.source
    )
}

/// Compiles one kernel source (with `common.cuh` in front) to PTX for `sm_<arch>` (for
/// instance `arch = 90` for an H100). Needs only libnvrtc, no GPU. A compile failure is
/// [`Error::KernelCompile`] with NVRTC's log; a missing libnvrtc is [`Error::Backend`].
pub fn compile(source: &KernelSource, arch: u32) -> Result<Ptx> {
    compile_text(source.name, full_source(source), arch)
}

/// Compiles `text` (a whole translation unit, named `name` in messages) as [`compile`] does.
pub(crate) fn compile_text(name: &str, text: String, arch: u32) -> Result<Ptx> {
    library_present(Library::Nvrtc).map_err(|e| Error::backend("cuda", e))?;
    let opts = options(name, arch);
    let result = guard("nvrtc", || cudarc::nvrtc::compile_ptx_with_opts(text, opts))
        .map_err(|e| Error::backend("cuda", e))?;
    result.map_err(|e| match e {
        CompileError::CompileError {
            nvrtc,
            options,
            log,
        } => Error::KernelCompile {
            kernel: name.to_string(),
            log: format!(
                "{:?} with options {options:?}:\n{}",
                nvrtc,
                log.to_string_lossy()
            ),
        },
        other => Error::KernelCompile {
            kernel: name.to_string(),
            log: format!("{other:?}"),
        },
    })
}

/// Compiles the kernel source named `name` (a file name listed in `glimpse_kernels::CUDA`)
/// for `sm_<arch>` and returns the PTX text. Meant for compile checks without a GPU.
pub fn compile_to_ptx(name: &str, arch: u32) -> Result<String> {
    let source = glimpse_kernels::find(name)
        .ok_or_else(|| Error::invalid("compile", format!("no kernel source named {name}")))?;
    Ok(compile(source, arch)?.to_src())
}

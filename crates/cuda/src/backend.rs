//! [`CudaBackend`]: one CUDA device, its stream, its compiled kernels and its cuBLAS handle.
//!
//! # Internal API for fused kernels (`fused.rs`)
//!
//! Everything runs on one stream per device, so work is ordered without events.
//!
//! * `be.function(source, name) -> Result<CudaFunction>`: the kernel `name` (an
//!   `extern "C" __global__` function) of `source`, a file name listed in
//!   `glimpse_kernels::CUDA` (e.g. `"attention.cu"`). The source is compiled with
//!   `common.cuh` in front, by NVRTC for this device's `sm_XY`, at first use, and cached per
//!   source; a compile error is `Error::KernelCompile` with NVRTC's log.
//! * `be.stream() -> &Arc<CudaStream>`: launch with
//!   `be.stream().launch_builder(&f).arg(..)...`, then `unsafe { b.launch(cfg) }`, and hand
//!   the launch's result to `be.check_launch("kernel name", result)`, which maps the error and,
//!   when launches are synchronised (`GLIMPSE_CUDA_SYNC=1`, or poisoning on), waits for the
//!   kernel and reports its asynchronous errors at the op that caused them.
//! * `be.alloc::<T>(len)`: an uninitialised buffer (filled with 0xFF bytes, NaN for floats,
//!   when poisoning is on; at least one element, since CUDA cannot allocate zero bytes);
//!   `be.alloc_zeros::<T>(len)`; `be.alloc_data(dtype, len)` for a typed
//!   [`CudaData`](crate::storage::CudaData); `be.alloc_storage(dtype, len)` for a whole
//!   [`CudaStorage`]; `be.fill(&mut data, len, bits)` writes a 16/32-bit pattern.
//! * [`grid_for`]`(n)`: the 1-D launch shape of grid-stride kernels over `n` elements.
//! * [`KLayout`](crate::klayout::KLayout): a strided view passed by value (`GlLayout` in
//!   `common.cuh`); `KLayout::of(layout)` merges contiguous dimensions (rank <= 8 after
//!   merging, else an error). `crate::ops::suffix(dtype)` is the kernel-name suffix
//!   (`f16`, `bf16`, `f32`, `u32`).
//! * Storages: [`storage_of`](crate::storage::storage_of)`(&tensor)` downcasts a tensor's
//!   storage; `CudaStorage::{as_f32, as_f16, as_bf16, as_u32}` give the typed `CudaSlice`
//!   (index it from the layout's offset); `CudaStorage::new(CudaData::F32(slice), len)` wraps
//!   a result and `storage.into_tensor(shape, &like)` makes the contiguous output tensor.
//! * `be.copy_contiguous(storage, layout)`: a contiguous copy of any view, for kernels that
//!   want contiguous inputs (`tensor.contiguous()` does the same at the tensor level).
//!
//! The fused ops of [`Backend`] keep their default compositions unless `fused.rs` provides a
//! kernel; the impl below names each one it routes there (all but `linear`, which is a cuBLAS
//! product plus a bias add either way).

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError,
    LaunchConfig, ValidAsZeroBits,
};
use glimpse_tensor::{
    AttentionGrads, AttentionOptions, AttentionOutput, Backend, BackendStorage, BinaryOp,
    ContrastiveGrads, ContrastiveOutput, DType, DeviceLocation, Error, HostSlice, HostVec, Layout,
    PatchEmbedOptions, ReduceOp, Result, SharedBytes, Storage, Tensor, UnaryOp,
};
use half::{bf16, f16};

use crate::fused;
use crate::nvrtc::{self, Library, guard, library_present};
use crate::storage::{CudaData, CudaStorage, cuda_storage};

/// Threads per block of the grid-stride kernels.
pub const BLOCK: u32 = 256;

/// The launch shape of a grid-stride kernel over `n` elements: 256-thread blocks, enough of
/// them to cover `n` once, capped (the kernels loop over the rest).
pub fn grid_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 1 << 18) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The launch shape of the element-wise kernels with 16-byte dense fast paths: one thread per
/// 16 bytes of `n` elements of `elem_bytes` each (their scalar paths loop over the rest).
pub fn grid_for_vec16(n: usize, elem_bytes: usize) -> LaunchConfig {
    grid_for(n.div_ceil((16 / elem_bytes.clamp(1, 16)).max(1)))
}

/// A driver error as a backend error.
pub(crate) fn drv(what: &str, e: DriverError) -> Error {
    Error::backend("cuda", format!("{what}: {e:?}"))
}

/// A tuning or testing variable of the environment: `default` when `var` is unset, else what
/// `parse` makes of its value. A value `parse` refuses is reported on stderr and gives
/// `default`: such a variable should not keep the device from opening.
fn env_setting<T>(var: &str, default: T, parse: impl FnOnce(&str) -> Result<T>) -> T {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => default,
        Ok(v) => parse(&v).unwrap_or_else(|e| {
            eprintln!("glimpse-cuda: ignoring {var}={v:?}: {e}");
            default
        }),
        Err(e) => {
            eprintln!("glimpse-cuda: ignoring {var}: {e}");
            default
        }
    }
}

/// `GLIMPSE_CUDA_ATTN_FWD_ROWS`'s syntax: 64 or 128 (a fixed tiling of the attention forward),
/// or empty or `auto` (`None`: chosen by shape).
fn parse_attention_forward_rows(v: &str) -> Result<Option<usize>> {
    match v.trim() {
        "" | "auto" => Ok(None),
        "64" => Ok(Some(64)),
        "128" => Ok(Some(128)),
        _ => Err(Error::invalid(
            "GLIMPSE_CUDA_ATTN_FWD_ROWS",
            "it takes 64, 128 or auto",
        )),
    }
}

/// `GLIMPSE_CUDA_SMEM_LIMIT`'s syntax: a number of bytes, or of KiB with a `K` suffix
/// (`99K` is Ada's 101376 bytes per block).
fn parse_shared_memory_limit(v: &str) -> Result<usize> {
    let v = v.trim();
    let (digits, unit) = match v.strip_suffix(['K', 'k']) {
        Some(d) => (d, 1024),
        None => (v, 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| {
            Error::invalid(
                "GLIMPSE_CUDA_SMEM_LIMIT",
                "it takes a number of bytes, or of KiB with a K suffix (99K)",
            )
        })
}

/// Kernel variants that are written, compiled and tested by the CUDA test suite but have not
/// yet run on a GPU, so the backend leaves them off unless asked. A device run of the bundle
/// tests and times each one (`run.sh` turns them all on for a second pass); one that passes
/// and wins becomes the default and leaves this list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCandidates {
    /// `attn-fwd-skip`: the tensor-core attention forward leaves out the multiplies and
    /// exponentials of padding (query rows past Nq, keys past Nk or past the causal limit)
    /// instead of computing and masking them: a third of the work at N = 197.
    pub attention_forward_skip_padding: bool,
    /// `attn-fwd-k64`: the 128-row tensor-core forward at D = 128 takes 64-key tiles (and
    /// skips padding, which is what lets it fit its registers) instead of 32-key tiles: half
    /// the barriers and softmax bookkeeping per key. Only where two of its 103 KB blocks fit
    /// a multiprocessor (Hopper); elsewhere the default runs.
    pub attention_forward_wide_key_tiles: bool,
    /// `attn-bwd-prefetch`: the tensor-core attention backward loads the next query tile's Q
    /// and dO while the dQ products of the current one run, with one barrier fewer per tile.
    pub attention_backward_prefetch: bool,
    /// `attn-bwd-red2`: the tensor-core attention backward adds each pair of dQ columns with
    /// one vector reduction (`red.global.add.v2.f32`, sm_90 and later) instead of two f32
    /// atomics: half the atomic requests.
    pub attention_backward_vector_atomics: bool,
    /// `linear-lt`: `linear` with a bias is one cuBLASLt product that adds the bias in its
    /// epilogue, instead of bias rows written first and accumulated onto (one write and one
    /// read of the output fewer).
    pub linear_lt: bool,
    /// `patch-k64`: the tensor-core patch embedding in K steps of 64 through 3 pipeline
    /// stages (108 KB of shared memory; devices that cannot hold two such blocks keep the
    /// default) instead of 32 through 4: half the barriers.
    pub patch_embed_k64: bool,
}

impl KernelCandidates {
    /// Every candidate on.
    pub const ALL: KernelCandidates = KernelCandidates {
        attention_forward_skip_padding: true,
        attention_forward_wide_key_tiles: true,
        attention_backward_prefetch: true,
        attention_backward_vector_atomics: true,
        linear_lt: true,
        patch_embed_k64: true,
    };

    /// Parses `GLIMPSE_CUDA_CANDIDATES`'s syntax: `all`, `none`, empty, or a comma-separated
    /// list of `attn-fwd-skip`, `attn-fwd-k64`, `attn-bwd-prefetch`, `attn-bwd-red2`,
    /// `linear-lt` and `patch-k64`.
    pub fn parse(list: &str) -> Result<KernelCandidates> {
        let mut c = KernelCandidates::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "all" => c = KernelCandidates::ALL,
                "none" => c = KernelCandidates::default(),
                "attn-fwd-skip" => c.attention_forward_skip_padding = true,
                "attn-fwd-k64" => c.attention_forward_wide_key_tiles = true,
                "attn-bwd-prefetch" => c.attention_backward_prefetch = true,
                "attn-bwd-red2" => c.attention_backward_vector_atomics = true,
                "linear-lt" => c.linear_lt = true,
                "patch-k64" => c.patch_embed_k64 = true,
                other => {
                    return Err(Error::invalid(
                        "kernel candidates",
                        format!(
                            "unknown candidate {other:?}; known: attn-fwd-skip, \
                             attn-fwd-k64, attn-bwd-prefetch, attn-bwd-red2, linear-lt, \
                             patch-k64, all, none"
                        ),
                    ));
                }
            }
        }
        Ok(c)
    }

    fn bits(self) -> usize {
        usize::from(self.attention_forward_skip_padding)
            | usize::from(self.attention_backward_prefetch) << 1
            | usize::from(self.linear_lt) << 2
            | usize::from(self.patch_embed_k64) << 3
            | usize::from(self.attention_backward_vector_atomics) << 4
            | usize::from(self.attention_forward_wide_key_tiles) << 5
    }

    fn from_bits(bits: usize) -> KernelCandidates {
        KernelCandidates {
            attention_forward_skip_padding: bits & 1 != 0,
            attention_backward_prefetch: bits & 2 != 0,
            linear_lt: bits & 4 != 0,
            patch_embed_k64: bits & 8 != 0,
            attention_backward_vector_atomics: bits & 16 != 0,
            attention_forward_wide_key_tiles: bits & 32 != 0,
        }
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The kernel choices a thread may fix for its own CUDA ops with [`with_kernel_choices`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelChoices {
    /// The kernel candidates in use.
    pub candidates: KernelCandidates,
    /// Query rows per block of the tensor-core attention forward (64 or 128), or `None` to
    /// choose by shape (see [`CudaBackend::set_attention_forward_rows`]).
    pub attention_forward_rows: Option<usize>,
}

thread_local! {
    /// The choices [`with_kernel_choices`] has put in force on this thread, if any.
    static THREAD_CHOICES: Cell<Option<KernelChoices>> = const { Cell::new(None) };
    /// `linear` products the `linear-lt` candidate has run on this thread.
    static THREAD_LINEAR_LT_PRODUCTS: Cell<usize> = const { Cell::new(0) };
}

/// Runs `body` with `choices` in force for the CUDA ops this thread runs, on every device and
/// over the devices' own settings; the thread's previous choices come back afterwards, also
/// when `body` panics. An op's host side runs on the thread that calls it, so tests and
/// benchmarks can compare kernels side by side while ops on other threads keep the devices'
/// settings. An attention tiling other than 64 or 128 rows is an error.
///
/// ```no_run
/// use glimpse_cuda::{KernelCandidates, KernelChoices, with_kernel_choices};
/// use glimpse_tensor::{DType, Tensor};
/// # fn main() -> glimpse_tensor::Result<()> {
/// let device = glimpse_cuda::device(0)?;
/// let x = Tensor::rand_normal(0.0, 1.0, [256, 768], DType::BF16, 0, &device)?;
/// let w = Tensor::rand_normal(0.0, 1.0, [3072, 768], DType::BF16, 1, &device)?;
/// let b = Tensor::zeros([3072], DType::BF16, &device)?;
/// let lt = KernelChoices {
///     candidates: KernelCandidates::parse("linear-lt")?,
///     ..KernelChoices::default()
/// };
/// let y = with_kernel_choices(lt, || x.linear(&w, Some(&b)))??;
/// # Ok(()) }
/// ```
pub fn with_kernel_choices<R>(choices: KernelChoices, body: impl FnOnce() -> R) -> Result<R> {
    if let Some(rows) = choices.attention_forward_rows {
        check_attention_forward_rows("with_kernel_choices", rows)?;
    }
    struct Restore(Option<KernelChoices>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_CHOICES.set(self.0);
        }
    }
    let _restore = Restore(THREAD_CHOICES.replace(Some(choices)));
    Ok(body())
}

/// How many `linear` products the `linear-lt` candidate has run on this thread (it steps
/// aside for inputs it does not take): for tests and benchmarks that must know it ran.
pub fn linear_lt_products_on_this_thread() -> usize {
    THREAD_LINEAR_LT_PRODUCTS.get()
}

pub(crate) fn count_linear_lt_product() {
    THREAD_LINEAR_LT_PRODUCTS.set(THREAD_LINEAR_LT_PRODUCTS.get() + 1);
}

fn check_attention_forward_rows(op: &'static str, rows: usize) -> Result<()> {
    if matches!(rows, 64 | 128) {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("{rows} rows per block; the kernels take 64 or 128"),
        ))
    }
}

/// A library handle of a device, made at first use, or why it could not be.
type HandleCell<H> = OnceLock<std::result::Result<Mutex<H>, String>>;

/// One CUDA device. Create it through [`crate::device`] (one per ordinal per process).
pub struct CudaBackend {
    ordinal: usize,
    name: String,
    /// Compute capability as `10 * major + minor` (90 for an H100).
    arch: u32,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
    blas: HandleCell<CudaBlas>,
    lt: HandleCell<crate::lt::LtHandle>,
    poison: AtomicBool,
    sync_launches: AtomicBool,
    allow_tf32: AtomicBool,
    /// Streaming multiprocessors on the device.
    sm_count: usize,
    /// The most dynamic shared memory one block may opt in to, in bytes, or less where
    /// `GLIMPSE_CUDA_SMEM_LIMIT` says so.
    smem_optin: usize,
    /// Query rows per block of the tensor-core attention forward: 64, 128, or 0 to choose by
    /// shape. Starts as `GLIMPSE_CUDA_ATTN_FWD_ROWS` (64, 128 or auto); a thread's
    /// [`with_kernel_choices`] overrides it.
    attention_forward_rows: AtomicUsize,
    /// [`KernelCandidates`] as bits; starts as `GLIMPSE_CUDA_CANDIDATES`.
    candidates: AtomicUsize,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaBackend(cuda:{}, {}, sm_{})",
            self.ordinal, self.name, self.arch
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CudaBackend {
    /// Opens device `ordinal`. Fails cleanly (never panics) when there is no driver or no
    /// such device.
    pub(crate) fn create(ordinal: usize) -> Result<CudaBackend> {
        library_present(Library::Driver).map_err(|e| Error::backend("cuda", e))?;
        let opened = guard("the CUDA driver", || -> Result<_> {
            let count = CudaContext::device_count().map_err(|e| drv("cuInit", e))?;
            if ordinal >= count.max(0) as usize {
                return Err(Error::backend(
                    "cuda",
                    format!("no CUDA device {ordinal} ({count} device(s) found)"),
                ));
            }
            let ctx = CudaContext::new(ordinal).map_err(|e| drv("creating the context", e))?;
            let (major, minor) = ctx
                .compute_capability()
                .map_err(|e| drv("reading the compute capability", e))?;
            let name = ctx.name().map_err(|e| drv("reading the device name", e))?;
            use cudarc::driver::sys::CUdevice_attribute as Attr;
            let sm_count = ctx
                .attribute(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(|e| drv("reading the multiprocessor count", e))?;
            let smem_optin = ctx
                .attribute(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
                .map_err(|e| drv("reading the shared-memory limit", e))?;
            // SAFETY: every buffer of this backend is allocated, used and freed on its one
            // stream, so there is no cross-stream use for cudarc's per-buffer events to order;
            // without them an allocation costs no event creation.
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx.default_stream();
            let limits = (sm_count.max(1) as usize, smem_optin.max(0) as usize);
            Ok((ctx, stream, name, (10 * major + minor) as u32, limits))
        })
        .map_err(|e| Error::backend("cuda", e))??;
        let (ctx, stream, name, arch, (sm_count, smem_optin)) = opened;
        let rows = env_setting(
            "GLIMPSE_CUDA_ATTN_FWD_ROWS",
            None,
            parse_attention_forward_rows,
        );
        let candidates = env_setting(
            "GLIMPSE_CUDA_CANDIDATES",
            KernelCandidates::default(),
            KernelCandidates::parse,
        );
        let smem_optin = smem_optin.min(env_setting(
            "GLIMPSE_CUDA_SMEM_LIMIT",
            usize::MAX,
            parse_shared_memory_limit,
        ));
        Ok(CudaBackend {
            ordinal,
            name,
            arch,
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            blas: OnceLock::new(),
            lt: OnceLock::new(),
            poison: AtomicBool::new(env_flag("GLIMPSE_CUDA_POISON")),
            sync_launches: AtomicBool::new(env_flag("GLIMPSE_CUDA_SYNC")),
            allow_tf32: AtomicBool::new(env_flag("GLIMPSE_CUDA_ALLOW_TF32")),
            sm_count,
            smem_optin,
            attention_forward_rows: AtomicUsize::new(rows.unwrap_or(0)),
            candidates: AtomicUsize::new(candidates.bits()),
        })
    }

    /// The device's name as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The compute capability as `10 * major + minor` (kernels are compiled for `sm_<arch>`).
    pub fn arch(&self) -> u32 {
        self.arch
    }

    /// When on, every fresh allocation is filled with 0xFF bytes (NaN in every float dtype,
    /// `u32::MAX` in u32), so an output element a kernel forgets to write shows up, and every
    /// launch is synchronised. Starts as `GLIMPSE_CUDA_POISON=1`.
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    /// Whether fresh allocations are poisoned.
    pub fn poison(&self) -> bool {
        self.poison.load(Ordering::Relaxed)
    }

    /// When on, the host waits for every kernel and reports its errors at the op that
    /// launched it (slower; for debugging). Starts as `GLIMPSE_CUDA_SYNC=1`.
    pub fn set_sync_launches(&self, on: bool) {
        self.sync_launches.store(on, Ordering::Relaxed);
    }

    /// Lets f32 matrix products use TF32 tensor cores (about 1e-3 relative error instead of
    /// f32's 1e-6). Off unless `GLIMPSE_CUDA_ALLOW_TF32=1`.
    pub fn set_allow_tf32(&self, on: bool) {
        self.allow_tf32.store(on, Ordering::Relaxed);
    }

    /// Whether f32 matrix products may use TF32.
    pub fn allow_tf32(&self) -> bool {
        self.allow_tf32.load(Ordering::Relaxed)
    }

    /// Streaming multiprocessors on the device.
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// The most dynamic shared memory one block may opt in to, in bytes (227 KB on Hopper,
    /// 163 KB on an A100, 99 KB on Ada and consumer Ampere), which decides between kernels
    /// with larger and smaller tiles. `GLIMPSE_CUDA_SMEM_LIMIT` (bytes, or KiB with a `K`
    /// suffix) lowers it, so that one card can run the kernels smaller cards get (the bundle
    /// runs the fused tests at `99K` on its GPU).
    pub fn max_shared_memory_per_block(&self) -> usize {
        self.smem_optin
    }

    /// Fixes the query rows per block of the tensor-core attention forward: `Some(64)` (one
    /// 16-row tile per warp), `Some(128)` (two per warp: half the shared-memory reads per
    /// multiply, more registers, fewer blocks) or `None` to choose by shape (the default,
    /// unless `GLIMPSE_CUDA_ATTN_FWD_ROWS` says otherwise). For benchmarks and for tests that
    /// must reach both kernels; any other value is an error.
    pub fn set_attention_forward_rows(&self, rows: Option<usize>) -> Result<()> {
        if let Some(r) = rows {
            check_attention_forward_rows("set_attention_forward_rows", r)?;
        }
        self.attention_forward_rows
            .store(rows.unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// The fixed query rows per block of the attention forward on this thread, if any: the
    /// thread's [`with_kernel_choices`], else the device's setting.
    pub fn attention_forward_rows(&self) -> Option<usize> {
        if let Some(c) = THREAD_CHOICES.get() {
            return c.attention_forward_rows;
        }
        match self.attention_forward_rows.load(Ordering::Relaxed) {
            0 => None,
            r => Some(r),
        }
    }

    /// Turns kernel candidates on or off for every thread (see [`KernelCandidates`]; all off
    /// unless `GLIMPSE_CUDA_CANDIDATES` says otherwise). For benchmarks; tests that compare a
    /// candidate with the kernel it would replace use [`with_kernel_choices`], which leaves
    /// other threads alone.
    pub fn set_kernel_candidates(&self, candidates: KernelCandidates) {
        self.candidates.store(candidates.bits(), Ordering::Relaxed);
    }

    /// The kernel candidates in use on this thread: the thread's [`with_kernel_choices`],
    /// else the device's setting.
    pub fn kernel_candidates(&self) -> KernelCandidates {
        match THREAD_CHOICES.get() {
            Some(c) => c.candidates,
            None => KernelCandidates::from_bits(self.candidates.load(Ordering::Relaxed)),
        }
    }

    /// Waits until every queued operation has finished, reporting asynchronous errors.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| drv("synchronize", e))
    }

    /// Device memory held by live buffers of this device, in bytes: `(now, most since the last
    /// [`reset_memory_high_water`](Self::reset_memory_high_water))`. Read off the device's
    /// default memory pool, which every buffer of this backend comes from; an error where the
    /// device has no stream-ordered allocator.
    pub fn memory_in_use(&self) -> Result<(u64, u64)> {
        let pool = self.default_pool()?;
        let read = |attr| -> Result<u64> {
            let mut value = 0u64;
            // SAFETY: `pool` is the device's live default pool, and both attributes are
            // 64-bit integers written into `value`.
            unsafe {
                cudarc::driver::sys::cuMemPoolGetAttribute(
                    pool,
                    attr,
                    (&mut value as *mut u64).cast(),
                )
            }
            .result()
            .map_err(|e| drv("reading the memory pool", e))?;
            Ok(value)
        };
        use cudarc::driver::sys::CUmemPool_attribute::*;
        Ok((
            read(CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
            read(CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
        ))
    }

    /// Starts the high-water mark of [`memory_in_use`](Self::memory_in_use) again from the
    /// memory held now.
    pub fn reset_memory_high_water(&self) -> Result<()> {
        let pool = self.default_pool()?;
        let mut zero = 0u64;
        // SAFETY: `pool` is the device's live default pool; resetting the high-water mark
        // takes a 64-bit zero.
        unsafe {
            cudarc::driver::sys::cuMemPoolSetAttribute(
                pool,
                cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            )
        }
        .result()
        .map_err(|e| drv("resetting the memory pool's high-water mark", e))
    }

    fn default_pool(&self) -> Result<cudarc::driver::sys::CUmemoryPool> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| drv("binding the context", e))?;
        let mut pool = std::ptr::null_mut();
        // SAFETY: the context is current and `cu_device` is its device; the call writes one
        // pool handle.
        unsafe { cudarc::driver::sys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device()) }
            .result()
            .map_err(|e| drv("finding the default memory pool", e))?;
        Ok(pool)
    }

    /// The stream every operation of this device runs on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The kernel `name` of the source file `source` (listed in `glimpse_kernels::CUDA`),
    /// compiled for this device at first use.
    pub(crate) fn function(&self, source: &str, name: &str) -> Result<CudaFunction> {
        let src = glimpse_kernels::CUDA
            .iter()
            .find(|k| k.name == source)
            .ok_or_else(|| {
                Error::backend("cuda", format!("no CUDA kernel source named {source}"))
            })?;
        let key = (src.name, name.to_string());
        if let Some(f) = lock(&self.functions).get(&key) {
            return Ok(f.clone());
        }
        let module = self.module(src)?;
        let f = module.load_function(name).map_err(|e| {
            Error::backend(
                "cuda",
                format!("kernel {name} not found in {source} (check its extern \"C\" name): {e:?}"),
            )
        })?;
        lock(&self.functions).insert(key, f.clone());
        Ok(f)
    }

    fn module(&self, src: &'static glimpse_kernels::KernelSource) -> Result<Arc<CudaModule>> {
        let mut modules = lock(&self.modules);
        if let Some(m) = modules.get(src.name) {
            return Ok(m.clone());
        }
        let ptx = nvrtc::compile(src, self.arch)?;
        let module = self.ctx.load_module(ptx).map_err(|e| {
            Error::backend(
                "cuda",
                format!(
                    "loading the PTX of {} failed: {e:?} (a libnvrtc newer than the driver \
                     writes PTX the driver cannot read: use the toolkit matching the driver)",
                    src.name
                ),
            )
        })?;
        modules.insert(src.name, module.clone());
        Ok(module)
    }

    /// Maps a launch's result to glimpse's error type; when launches are synchronised, waits
    /// for the kernel so that its asynchronous errors are reported here.
    pub(crate) fn check_launch(
        &self,
        kernel: &str,
        launched: std::result::Result<(), DriverError>,
    ) -> Result<()> {
        launched.map_err(|e| drv(&format!("launching {kernel}"), e))?;
        if self.sync_launches.load(Ordering::Relaxed) || self.poison() {
            self.stream
                .synchronize()
                .map_err(|e| drv(&format!("running {kernel}"), e))?;
        }
        Ok(())
    }

    /// An uninitialised buffer of `len` elements (at least one is allocated), poisoned with
    /// 0xFF bytes when poisoning is on.
    pub(crate) fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        let n = len.max(1);
        // SAFETY: the memory is uninitialised; every caller writes the elements it reads back
        // (poisoning makes a forgotten element visible), and all element types are plain
        // numbers for which any bit pattern is valid.
        let mut slice = unsafe { self.stream.alloc::<T>(n) }
            .map_err(|e| drv(&format!("allocating {n} elements"), e))?;
        if self.poison() {
            let bytes = n * std::mem::size_of::<T>();
            let (ptr, _record) =
                cudarc::driver::DevicePtrMut::device_ptr_mut(&mut slice, &self.stream);
            // SAFETY: `ptr` is the start of the `bytes`-byte allocation just made on this
            // stream; memset writes only inside it, in stream order.
            unsafe {
                cudarc::driver::result::memset_d8_async(ptr, 0xff, bytes, self.stream.cu_stream())
            }
            .map_err(|e| drv("poisoning an allocation", e))?;
        }
        Ok(slice)
    }

    /// A zero-filled buffer of `len` elements (at least one).
    pub(crate) fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| drv("allocating zeros", e))
    }

    /// An uninitialised typed buffer of `len` elements of `dtype`.
    pub(crate) fn alloc_data(&self, dtype: DType, len: usize) -> Result<CudaData> {
        Ok(match dtype {
            DType::F16 => CudaData::F16(self.alloc::<f16>(len)?),
            DType::BF16 => CudaData::BF16(self.alloc::<bf16>(len)?),
            DType::F32 => CudaData::F32(self.alloc::<f32>(len)?),
            DType::U32 => CudaData::U32(self.alloc::<u32>(len)?),
            DType::F64 => return Err(unsupported("alloc", dtype)),
        })
    }

    /// A storage of `len` elements of `dtype` whose contents are unspecified (0xFF bytes when
    /// poisoning is on). Kernels that write every element use it for their outputs.
    pub fn alloc_storage(&self, dtype: DType, len: usize) -> Result<CudaStorage> {
        Ok(CudaStorage::new(self.alloc_data(dtype, len)?, len))
    }

    /// The cuBLAS handle, created at first use on this device's stream.
    pub(crate) fn blas(&self) -> Result<MutexGuard<'_, CudaBlas>> {
        self.library_handle(&self.blas, Library::Cublas, "cuBLAS", || {
            CudaBlas::new(self.stream.clone())
                .map_err(|e| format!("creating the cuBLAS handle: {e:?}"))
        })
    }

    /// The device's cuBLASLt handle and workspace (created at first use).
    pub(crate) fn lt(&self) -> Result<MutexGuard<'_, crate::lt::LtHandle>> {
        self.library_handle(&self.lt, Library::CublasLt, "cuBLASLt", || {
            crate::lt::LtHandle::new(self)
        })
    }

    /// The handle in `cell`, made by `make` at first use where `lib` loads; a failure (a
    /// missing library, an error, a panic) is kept and reported again at every later call.
    /// Binds this device's context to the thread first: cuBLAS and cuBLASLt work in the
    /// thread's current context.
    fn library_handle<'a, H>(
        &self,
        cell: &'a HandleCell<H>,
        lib: Library,
        what: &str,
        make: impl FnOnce() -> std::result::Result<H, String>,
    ) -> Result<MutexGuard<'a, H>> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| drv("binding the context", e))?;
        match cell.get_or_init(|| {
            library_present(lib)?;
            guard(what, make)?.map(Mutex::new)
        }) {
            Ok(m) => Ok(lock(m)),
            Err(e) => Err(Error::backend("cuda", e.clone())),
        }
    }
}

/// The error for a dtype this backend cannot hold (f64).
pub(crate) fn unsupported(op: &'static str, dtype: DType) -> Error {
    Error::UnsupportedDType {
        op,
        dtype,
        backend: Some("cuda".into()),
    }
}

fn wrap(s: CudaStorage) -> Storage {
    Arc::new(s)
}

impl Backend for CudaBackend {
    fn location(&self) -> DeviceLocation {
        DeviceLocation {
            backend: "cuda",
            ordinal: self.ordinal,
        }
    }

    fn supports_dtype(&self, dtype: DType) -> bool {
        !matches!(dtype, DType::F64)
    }

    fn full(&self, dtype: DType, len: usize, value: f64) -> Result<Storage> {
        Ok(wrap(self.op_full(dtype, len, value)?))
    }

    fn upload(&self, data: HostSlice<'_>) -> Result<Storage> {
        Ok(wrap(self.op_upload(data)?))
    }

    fn upload_bytes(&self, dtype: DType, bytes: SharedBytes) -> Result<Storage> {
        Ok(wrap(self.op_upload_bytes(dtype, bytes.bytes())?))
    }

    fn download(&self, src: &dyn BackendStorage, layout: &Layout) -> Result<HostVec> {
        self.op_download(cuda_storage(src)?, layout)
    }

    fn rand_uniform(
        &self,
        dtype: DType,
        len: usize,
        low: f64,
        high: f64,
        seed: u64,
    ) -> Result<Storage> {
        Ok(wrap(self.op_random(false, dtype, len, low, high, seed)?))
    }

    fn rand_normal(
        &self,
        dtype: DType,
        len: usize,
        mean: f64,
        std: f64,
        seed: u64,
    ) -> Result<Storage> {
        Ok(wrap(self.op_random(true, dtype, len, mean, std, seed)?))
    }

    fn copy_strided(&self, src: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        Ok(wrap(self.copy_contiguous(cuda_storage(src)?, layout)?))
    }

    fn concat(&self, parts: &[(&dyn BackendStorage, &Layout)], dim: usize) -> Result<Storage> {
        let parts = parts
            .iter()
            .map(|(s, l)| Ok((cuda_storage(*s)?, *l)))
            .collect::<Result<Vec<_>>>()?;
        Ok(wrap(self.op_concat(&parts, dim)?))
    }

    fn cast(&self, src: &dyn BackendStorage, layout: &Layout, dtype: DType) -> Result<Storage> {
        Ok(wrap(self.op_cast(cuda_storage(src)?, layout, dtype)?))
    }

    fn unary(&self, op: UnaryOp, src: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        Ok(wrap(self.op_unary(op, cuda_storage(src)?, layout)?))
    }

    fn binary(
        &self,
        op: BinaryOp,
        lhs: &dyn BackendStorage,
        lhs_layout: &Layout,
        rhs: &dyn BackendStorage,
        rhs_layout: &Layout,
    ) -> Result<Storage> {
        Ok(wrap(self.op_binary(
            op,
            cuda_storage(lhs)?,
            lhs_layout,
            cuda_storage(rhs)?,
            rhs_layout,
        )?))
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
        Ok(wrap(self.op_where(
            cuda_storage(cond)?,
            cond_layout,
            cuda_storage(on_true)?,
            true_layout,
            cuda_storage(on_false)?,
            false_layout,
        )?))
    }

    fn reduce(
        &self,
        op: ReduceOp,
        src: &dyn BackendStorage,
        layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        Ok(wrap(self.op_reduce(op, cuda_storage(src)?, layout, dim)?))
    }

    fn matmul(
        &self,
        lhs: &dyn BackendStorage,
        lhs_layout: &Layout,
        rhs: &dyn BackendStorage,
        rhs_layout: &Layout,
    ) -> Result<Storage> {
        Ok(wrap(crate::matmul::matmul(
            self,
            cuda_storage(lhs)?,
            lhs_layout,
            cuda_storage(rhs)?,
            rhs_layout,
        )?))
    }

    fn index_select(
        &self,
        src: &dyn BackendStorage,
        src_layout: &Layout,
        ids: &dyn BackendStorage,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        Ok(wrap(self.op_index_select(
            cuda_storage(src)?,
            src_layout,
            cuda_storage(ids)?,
            ids_layout,
            dim,
        )?))
    }

    fn gather(
        &self,
        src: &dyn BackendStorage,
        src_layout: &Layout,
        ids: &dyn BackendStorage,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        Ok(wrap(self.op_gather(
            cuda_storage(src)?,
            src_layout,
            cuda_storage(ids)?,
            ids_layout,
            dim,
        )?))
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
        Ok(wrap(self.op_scatter_add(
            cuda_storage(dst)?,
            dst_layout,
            cuda_storage(ids)?,
            ids_layout,
            cuda_storage(src)?,
            src_layout,
            dim,
        )?))
    }

    // ----- fused ops: the kernels of crate::fused (which fall back to the default
    // compositions for the cases they do not cover).

    /// `x @ W^T + b` as one cuBLAS product accumulating (beta = 1) onto the bias rows, instead
    /// of a product and then a broadcast add over the whole output.
    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let Some(b) = bias else {
            return glimpse_tensor::compose::linear(x, weight, None);
        };
        if !matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return glimpse_tensor::compose::linear(x, weight, bias);
        }
        if self.kernel_candidates().linear_lt
            && let Some(y) = crate::lt::linear(self, x, weight, b)?
        {
            return Ok(y);
        }
        let (m, n) = (x.dims()[0], weight.dims()[0]);
        // c is (M, N): the bias broadcast over the rows, made contiguous.
        let rows = b
            .layout()
            .broadcast_as(&glimpse_tensor::Shape::from([m, n]))?;
        let c = self.copy_contiguous(cuda_storage(&**b.storage())?, &rows)?;
        let wt = weight.t()?;
        let out = crate::matmul::matmul_into(
            self,
            cuda_storage(&**x.storage())?,
            x.layout(),
            cuda_storage(&**wt.storage())?,
            wt.layout(),
            Some(c),
        )?;
        out.into_tensor([m, n], x)
    }

    fn softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        fused::softmax_last_dim(self, x)
    }

    fn log_softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        fused::log_softmax_last_dim(self, x)
    }

    fn layer_norm(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        fused::layer_norm(self, x, weight, bias, eps)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<AttentionOutput> {
        fused::attention(self, q, k, v, opts)
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
        fused::attention_backward(self, q, k, v, out, d_out, opts)
    }

    fn patch_embed(
        &self,
        images: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: &PatchEmbedOptions,
    ) -> Result<Tensor> {
        fused::patch_embed(self, images, weight, bias, opts)
    }

    fn contrastive_loss(
        &self,
        image: &Tensor,
        text: &Tensor,
        scale: &Tensor,
    ) -> Result<ContrastiveOutput> {
        fused::contrastive_loss(self, image, text, scale)
    }

    fn contrastive_loss_backward(
        &self,
        image: &Tensor,
        text: &Tensor,
        scale: &Tensor,
        saved: &ContrastiveOutput,
        d_loss: &Tensor,
    ) -> Result<ContrastiveGrads> {
        fused::contrastive_loss_backward(self, image, text, scale, saved, d_loss)
    }
}

#[cfg(test)]
mod tests {
    use super::{
        KernelCandidates, KernelChoices, THREAD_CHOICES, parse_attention_forward_rows,
        parse_shared_memory_limit, with_kernel_choices,
    };

    #[test]
    fn kernel_candidate_lists_parse() {
        let none = KernelCandidates::default();
        for list in ["", " ", "none", "all,none"] {
            assert_eq!(KernelCandidates::parse(list).unwrap(), none, "{list:?}");
        }
        assert_eq!(
            KernelCandidates::parse("all").unwrap(),
            KernelCandidates::ALL
        );
        assert_eq!(
            KernelCandidates::parse(
                " attn-bwd-prefetch ,attn-fwd-skip,linear-lt,patch-k64, attn-bwd-red2,attn-fwd-k64"
            )
            .unwrap(),
            KernelCandidates::ALL
        );
        let skip = KernelCandidates::parse("attn-fwd-skip,").unwrap();
        assert_eq!(
            skip,
            KernelCandidates {
                attention_forward_skip_padding: true,
                ..KernelCandidates::default()
            }
        );
        let err = KernelCandidates::parse("attn-fwd-skip,wgmma").unwrap_err();
        assert!(err.to_string().contains("\"wgmma\""), "{err}");
        for c in [none, skip, KernelCandidates::ALL] {
            assert_eq!(KernelCandidates::from_bits(c.bits()), c);
        }
    }

    #[test]
    fn tuning_variables_parse() {
        assert_eq!(parse_shared_memory_limit("99K").unwrap(), 101376);
        assert_eq!(parse_shared_memory_limit(" 163k ").unwrap(), 163 * 1024);
        assert_eq!(parse_shared_memory_limit("101376").unwrap(), 101376);
        for bad in ["", "K", "-1", "99 KB", "1.5K", "99999999999999999999K"] {
            let err = parse_shared_memory_limit(bad).unwrap_err();
            assert!(err.to_string().contains("GLIMPSE_CUDA_SMEM_LIMIT"), "{err}");
        }
        for (v, want) in [
            ("", None),
            ("auto", None),
            (" 64", Some(64)),
            ("128", Some(128)),
        ] {
            assert_eq!(parse_attention_forward_rows(v).unwrap(), want, "{v:?}");
        }
        for bad in ["32", "64,128", "all"] {
            assert!(parse_attention_forward_rows(bad).is_err(), "{bad:?}");
        }
    }

    /// `with_kernel_choices` puts the thread's previous choices back, after nesting and after
    /// a panic, leaves other threads alone and refuses a tiling the kernels lack.
    #[test]
    fn thread_kernel_choices_are_scoped_to_the_thread() {
        let skip = KernelChoices {
            candidates: KernelCandidates::parse("attn-fwd-skip").unwrap(),
            attention_forward_rows: Some(128),
        };
        let all = KernelChoices {
            candidates: KernelCandidates::ALL,
            attention_forward_rows: None,
        };
        assert_eq!(THREAD_CHOICES.get(), None);
        let seen = with_kernel_choices(skip, || {
            let inner = with_kernel_choices(all, || THREAD_CHOICES.get()).unwrap();
            let other_thread = std::thread::spawn(|| THREAD_CHOICES.get()).join().unwrap();
            (THREAD_CHOICES.get(), inner, other_thread)
        })
        .unwrap();
        assert_eq!(seen, (Some(skip), Some(all), None));
        assert_eq!(THREAD_CHOICES.get(), None);

        let panicked = std::panic::catch_unwind(|| {
            with_kernel_choices(all, || panic!("a failing comparison")).unwrap();
        });
        assert!(panicked.is_err());
        assert_eq!(THREAD_CHOICES.get(), None);

        let odd = KernelChoices {
            attention_forward_rows: Some(96),
            ..KernelChoices::default()
        };
        let err = with_kernel_choices(odd, || unreachable!("refused before running")).unwrap_err();
        assert!(err.to_string().contains("96 rows"), "{err}");
    }
}

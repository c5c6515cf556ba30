//! [`WgpuBackend`]: one wgpu adapter and device, its compiled pipelines, its buffer pool and
//! the batch of dispatches waiting to be submitted.
//!
//! # Internal API for op code (`ops.rs`, `fused.rs`)
//!
//! * `be.elem(dtype, op)`: the kernel element type of a dtype ([`Elem`]), or
//!   `Error::UnsupportedDType` (bf16 and f64 always; f16 without `SHADER_F16`).
//! * `be.alloc(dtype, len)`: an output storage from the pool (poisoned with 0xFF bytes when
//!   poisoning is on, so an element a kernel forgets to write reads as NaN / `u32::MAX`).
//! * `be.dispatch(&Kernel { file, entry, t, u, constants }, &params, &[&buffers..], [x, y, z])`:
//!   records one dispatch. `file` is a name in `glimpse_kernels::WGSL`; the module is compiled
//!   for the element types `t` and `u` (the `T` and `U` aliases of the shader; `u` is `t` for
//!   one-type kernels) and the pipeline for `entry` with the given override constants, once,
//!   then cached. Binding 0 is the parameter words ([`Params`]), bindings 1.. are `buffers` in
//!   order. Nothing is submitted until the batch fills up or someone reads back.
//! * [`workgroups_for`]`(n, wg)`: the 1-D workgroup count of a grid-stride kernel.
//! * `be.download_bytes(buffer, byte_range)`: submits the batch and reads bytes back.
//!
//! Every dispatch's parameters go into one buffer per submission, so a dispatch costs no
//! allocation; all dispatches of a batch are encoded into one compute pass at submission.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use glimpse_tensor::{DType, DeviceLocation, Error, Result};
use wgpu::util::DeviceExt;

use crate::pool::{BufferPool, PoolStats, PooledBuffer, USAGE, size_class};
use crate::storage::WgpuStorage;

/// Dispatches recorded before the batch is submitted on its own.
const DEFAULT_MAX_BATCH: usize = 512;

/// The largest number of workgroups of a 1-D grid-stride dispatch.
const MAX_GROUPS: u32 = 65_535;

/// The element types kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    F16,
    U32,
}

impl Elem {
    /// The WGSL scalar type.
    pub fn wgsl(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F16 => "f16",
            Elem::U32 => "u32",
        }
    }

    /// The type header a module is compiled with: `enable f16;` when a half type is involved,
    /// then the aliases `T` and `U`.
    pub fn header(t: Elem, u: Elem) -> String {
        let enable = if t == Elem::F16 || u == Elem::F16 {
            "enable f16;\n"
        } else {
            ""
        };
        format!("{enable}alias T = {};\nalias U = {};\n", t.wgsl(), u.wgsl())
    }
}

/// The `(T, U)` element-type variants a WGSL kernel file declares in its line
/// `// variants (T/U): f32/f32 f16/f16 ...`. The backend compiles only those, and the naga
/// test validates each of them.
pub fn kernel_variants(source: &str) -> Result<Vec<(Elem, Elem)>> {
    let bad = |msg: String| Error::backend("wgpu", msg);
    let line = source
        .lines()
        .find_map(|l| l.strip_prefix("// variants (T/U):"))
        .ok_or_else(|| bad("a WGSL kernel without a `// variants (T/U):` line".into()))?;
    let elem = |name: &str| match name {
        "f32" => Ok(Elem::F32),
        "f16" => Ok(Elem::F16),
        "u32" => Ok(Elem::U32),
        other => Err(bad(format!(
            "unknown element type {other:?} in a variants line"
        ))),
    };
    line.split_whitespace()
        .map(|v| {
            let (t, u) = v
                .split_once('/')
                .ok_or_else(|| bad(format!("variant {v:?} is not written T/U")))?;
            Ok((elem(t)?, elem(u)?))
        })
        .collect()
}

/// One kernel variant to dispatch.
#[derive(Clone, Copy, Debug)]
pub struct Kernel<'a> {
    /// A file name of `glimpse_kernels::WGSL`.
    pub file: &'static str,
    /// The entry point.
    pub entry: &'static str,
    /// The `T` alias.
    pub t: Elem,
    /// The `U` alias (equal to `t` for kernels of one element type).
    pub u: Elem,
    /// Override constants (workgroup sizes, tile sizes).
    pub constants: &'a [(&'static str, u32)],
}

impl<'a> Kernel<'a> {
    /// A kernel of one element type with its default constants.
    pub fn new(file: &'static str, entry: &'static str, t: Elem) -> Self {
        Kernel {
            file,
            entry,
            t,
            u: t,
            constants: &[],
        }
    }

    /// The same kernel with `U` set.
    pub fn with_u(self, u: Elem) -> Self {
        Kernel { u, ..self }
    }

    /// The same kernel with override constants.
    pub fn with_constants(self, constants: &'a [(&'static str, u32)]) -> Self {
        Kernel { constants, ..self }
    }
}

/// The workgroup count of a 1-D grid-stride dispatch over `n` items with `wg` threads per
/// workgroup: enough to cover `n` once, capped (the kernels loop over the rest).
pub fn workgroups_for(n: usize, wg: u32) -> [u32; 3] {
    let groups = n.div_ceil(wg as usize).clamp(1, MAX_GROUPS as usize) as u32;
    [groups, 1, 1]
}

/// The parameter words of one dispatch.
#[derive(Clone, Debug, Default)]
pub struct Params(Vec<u32>);

impl Params {
    pub fn new() -> Self {
        Params(Vec::with_capacity(32))
    }

    /// Appends a count or index; fails when it does not fit in 32 bits.
    pub fn usize(&mut self, v: usize) -> Result<&mut Self> {
        let w = u32::try_from(v).map_err(|_| {
            Error::backend(
                "wgpu",
                format!("{v} does not fit the 32-bit indices of the WGSL kernels"),
            )
        })?;
        self.0.push(w);
        Ok(self)
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.push(v);
        self
    }

    pub fn f32(&mut self, v: f32) -> &mut Self {
        self.0.push(v.to_bits());
        self
    }

    /// Appends a strided view (rank, offset, dims, strides): the layout `strided_index` of
    /// common.wgsl reads. Fails when an index does not fit in 32 bits.
    pub fn view(&mut self, dims: &[usize], strides: &[usize], offset: usize) -> Result<&mut Self> {
        debug_assert_eq!(dims.len(), strides.len());
        self.usize(dims.len())?;
        self.usize(offset)?;
        for &d in dims {
            self.usize(d)?;
        }
        for &s in strides {
            self.usize(s)?;
        }
        Ok(self)
    }

    /// The number of words so far (where the next value goes).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn words(&self) -> &[u32] {
        &self.0
    }
}

/// Queue traffic since the device was opened (or since [`WgpuBackend::reset_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Kernel dispatches recorded.
    pub dispatches: u64,
    /// Command buffers submitted to the queue.
    pub submissions: u64,
    /// Reads from device to host (each waits for the GPU).
    pub readbacks: u64,
    /// Pipelines compiled (each kernel variant once).
    pub pipelines: u64,
    /// The buffer pool's counters.
    pub pool: PoolStats,
}

/// What a deferred device-side check reports when its cell is set.
#[derive(Clone, Copy, Debug)]
pub(crate) enum DeferredError {
    /// An index op met an index `>= size`.
    Index { op: &'static str, size: usize },
    /// A u32 division met a zero divisor.
    DivisionByZero,
}

/// A two-word cell a kernel fills on the device (`[position, value]`, `u32::MAX` while
/// nothing is wrong), read with the next read-back.
struct DeferredCheck {
    cell: WgpuStorage,
    what: DeferredError,
    /// The thread whose op recorded it: its read-backs report it, other threads' do not.
    thread: std::thread::ThreadId,
}

/// Checks waiting for a read-back before one is forced.
const MAX_DEFERRED_CHECKS: usize = 1024;

struct PendingDispatch {
    pipeline: wgpu::ComputePipeline,
    buffers: Vec<wgpu::Buffer>,
    /// Word range of the parameters in the batch's parameter words.
    params: std::ops::Range<usize>,
    groups: [u32; 3],
}

#[derive(Default)]
struct Batch {
    dispatches: Vec<PendingDispatch>,
    params: Vec<u32>,
}

type ModuleKey = (&'static str, Elem, Elem);
type PipelineKey = (
    &'static str,
    &'static str,
    Elem,
    Elem,
    Vec<(&'static str, u32)>,
);

/// One wgpu device. Open it through [`crate::device`] (one per adapter per process).
pub struct WgpuBackend {
    ordinal: usize,
    info: wgpu::AdapterInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    shader_f16: bool,
    limits: wgpu::Limits,
    modules: Mutex<HashMap<ModuleKey, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    pool: Arc<BufferPool>,
    batch: Mutex<Batch>,
    /// Device-side checks (bad indices, zero divisors) not yet read back.
    checks: Mutex<Vec<DeferredCheck>>,
    /// Errors of set cells found by another thread's read-back, kept for their own thread.
    resolved: Mutex<Vec<(std::thread::ThreadId, Error)>>,
    /// The first error wgpu reported outside an error scope (validation of a dispatch, a lost
    /// device), returned by the next op that submits.
    error: Arc<Mutex<Option<String>>>,
    max_batch: AtomicU64,
    poison: AtomicBool,
    dispatches: AtomicU64,
    submissions: AtomicU64,
    readbacks: AtomicU64,
    compiled: AtomicU64,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WgpuBackend(wgpu:{}, {} on {:?})",
            self.ordinal, self.info.name, self.info.backend
        )
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// `dtype` is not supported by this device for `op`.
pub(crate) fn unsupported(op: &'static str, dtype: DType) -> Error {
    Error::UnsupportedDType {
        op,
        dtype,
        backend: Some("wgpu".into()),
    }
}

/// A wgpu error as a backend error.
pub(crate) fn wgpu_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::backend("wgpu", format!("{what}: {e}"))
}

/// The adapters this build can use, in the order ordinals count them.
pub(crate) fn adapters() -> Vec<wgpu::Adapter> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(desc);
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
}

impl WgpuBackend {
    /// Opens adapter `ordinal`. Fails cleanly (never panics) when there is no such adapter.
    pub(crate) fn create(ordinal: usize) -> Result<WgpuBackend> {
        let mut all = adapters();
        if ordinal >= all.len() {
            return Err(Error::backend(
                "wgpu",
                format!(
                    "no wgpu adapter {ordinal} ({} found among Vulkan, Metal and DX12); on \
                     Debian or Ubuntu `apt install mesa-vulkan-drivers` provides lavapipe, a \
                     software Vulkan driver",
                    all.len()
                ),
            ));
        }
        let adapter = all.swap_remove(ordinal);
        let info = adapter.get_info();
        let shader_f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
        let required_features = if shader_f16 {
            wgpu::Features::SHADER_F16
        } else {
            wgpu::Features::empty()
        };
        // Take every limit the adapter offers: kernels bind up to a dozen storage buffers and
        // large models need large bindings.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("glimpse"),
            required_features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| wgpu_err(&format!("opening {}", info.name), e))?;
        let error: Arc<Mutex<Option<String>>> = Arc::default();
        let slot = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            lock(&slot).get_or_insert_with(|| e.to_string());
        }));
        let pool_mb = std::env::var("GLIMPSE_WGPU_POOL_MB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(2048);
        Ok(WgpuBackend {
            ordinal,
            info,
            device,
            queue,
            shader_f16,
            limits,
            modules: Mutex::default(),
            pipelines: Mutex::default(),
            pool: Arc::new(BufferPool::new(pool_mb << 20)),
            batch: Mutex::default(),
            checks: Mutex::default(),
            resolved: Mutex::default(),
            error,
            max_batch: AtomicU64::new(DEFAULT_MAX_BATCH as u64),
            poison: AtomicBool::new(env_flag("GLIMPSE_WGPU_POISON")),
            dispatches: AtomicU64::new(0),
            submissions: AtomicU64::new(0),
            readbacks: AtomicU64::new(0),
            compiled: AtomicU64::new(0),
        })
    }

    /// The adapter as wgpu describes it (name, driver, backend API, device type).
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Whether the adapter offers `SHADER_F16`, and so whether this device computes in `F16`.
    pub fn has_f16(&self) -> bool {
        self.shader_f16
    }

    /// The dtypes this device holds and computes with: `F32` and `U32` always, `F16` where the
    /// adapter offers `SHADER_F16`. `BF16` and `F64` are never supported (WGSL has neither).
    pub fn dtypes(&self) -> Vec<DType> {
        DType::ALL
            .into_iter()
            .filter(|&d| self.elem_of(d).is_some())
            .collect()
    }

    pub(crate) fn location(&self) -> DeviceLocation {
        DeviceLocation {
            backend: "wgpu",
            ordinal: self.ordinal,
        }
    }

    fn elem_of(&self, dtype: DType) -> Option<Elem> {
        match dtype {
            DType::F32 => Some(Elem::F32),
            DType::U32 => Some(Elem::U32),
            DType::F16 if self.shader_f16 => Some(Elem::F16),
            _ => None,
        }
    }

    /// The kernel element type of `dtype`, or `UnsupportedDType` naming `op`.
    pub(crate) fn elem(&self, dtype: DType, op: &'static str) -> Result<Elem> {
        self.elem_of(dtype).ok_or_else(|| unsupported(op, dtype))
    }

    /// When on, every buffer an op allocates is filled with 0xFF bytes first (NaN in f32 and
    /// f16, `u32::MAX` in u32), so an output element a kernel forgets to write shows up.
    /// Starts as `GLIMPSE_WGPU_POISON=1`.
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    /// Dispatches recorded before the batch is submitted without a read-back (default 512;
    /// 1 submits every dispatch on its own).
    pub fn set_max_batch(&self, dispatches: usize) {
        self.max_batch
            .store(dispatches.max(1) as u64, Ordering::Relaxed);
    }

    /// Queue traffic so far.
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            dispatches: self.dispatches.load(Ordering::Relaxed),
            submissions: self.submissions.load(Ordering::Relaxed),
            readbacks: self.readbacks.load(Ordering::Relaxed),
            pipelines: self.compiled.load(Ordering::Relaxed),
            pool: self.pool.stats(),
        }
    }

    /// Zeroes the dispatch, submission and read-back counters.
    pub fn reset_stats(&self) {
        for c in [&self.dispatches, &self.submissions, &self.readbacks] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Frees the pool's idle buffers.
    pub fn release_pooled_memory(&self) {
        self.pool.clear();
    }

    /// The largest storage buffer a kernel can bind, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    // ------------------------------------------------------------------ memory

    fn check_size(&self, bytes: u64, op: &str) -> Result<()> {
        if bytes > self.max_binding_bytes() {
            return Err(Error::backend(
                "wgpu",
                format!(
                    "{op}: {bytes} bytes exceed the largest buffer this adapter binds ({} bytes)",
                    self.max_binding_bytes()
                ),
            ));
        }
        Ok(())
    }

    /// A pooled buffer of at least `bytes` bytes (whole words).
    fn buffer(&self, bytes: u64, op: &str) -> Result<PooledBuffer> {
        let size = size_class(bytes);
        self.check_size(size.max(bytes), op)?;
        let buffer = match self.pool.take(size) {
            Some(b) => b,
            None => {
                self.pool.note_created();
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size,
                    usage: USAGE,
                    mapped_at_creation: false,
                })
            }
        };
        Ok(PooledBuffer::new(buffer, self.pool.clone()))
    }

    /// An output storage of `len` elements of `dtype` (contents undefined, or poisoned).
    pub(crate) fn alloc(&self, dtype: DType, len: usize) -> Result<WgpuStorage> {
        self.elem(dtype, "alloc")?;
        let bytes = (len as u64) * dtype.size_in_bytes() as u64;
        let buffer = self.buffer(bytes, "alloc")?;
        if self.poison.load(Ordering::Relaxed) {
            self.fill_words(buffer.buffer(), bytes.div_ceil(4), u32::MAX)?;
        }
        Ok(WgpuStorage::new(buffer, dtype, len))
    }

    /// A storage holding `bytes` (little-endian elements of `dtype`), in a fresh mapped buffer.
    pub(crate) fn upload_raw(&self, dtype: DType, len: usize, bytes: &[u8]) -> Result<WgpuStorage> {
        self.elem(dtype, "upload")?;
        let size = size_class(bytes.len() as u64);
        self.check_size(size, "upload")?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: USAGE,
            mapped_at_creation: true,
        });
        // Mapped ranges are whole words; the bytes fill a prefix.
        buffer
            .get_mapped_range_mut(..bytes.len().next_multiple_of(4) as u64)
            .map_err(|e| wgpu_err("mapping a new buffer", e))?
            .slice(..bytes.len())
            .copy_from_slice(bytes);
        buffer.unmap();
        self.pool.note_created();
        Ok(WgpuStorage::new(
            PooledBuffer::new(buffer, self.pool.clone()),
            dtype,
            len,
        ))
    }

    /// Writes the 32-bit `pattern` to the first `words` words of `buffer`.
    pub(crate) fn fill_words(&self, buffer: &wgpu::Buffer, words: u64, pattern: u32) -> Result<()> {
        if words == 0 {
            return Ok(());
        }
        let mut p = Params::new();
        p.usize(words as usize)?.u32(pattern);
        self.dispatch(
            &Kernel::new("fill.wgsl", "fill", Elem::U32),
            &p,
            &[buffer],
            workgroups_for(words as usize, 256),
        )
    }

    /// Registers a check cell filled by dispatches already recorded: its error is returned by
    /// the next read-back (or [`WgpuBackend::synchronize`]) of the same thread, which reads
    /// the cell in the same copy. Ops never wait for the device to report bad input.
    pub(crate) fn defer_check(&self, cell: WgpuStorage, what: DeferredError) -> Result<()> {
        let full = {
            let mut checks = lock(&self.checks);
            checks.push(DeferredCheck {
                cell,
                what,
                thread: std::thread::current().id(),
            });
            checks.len() >= MAX_DEFERRED_CHECKS
        };
        if full {
            self.read_back(None).map(drop)
        } else {
            Ok(())
        }
    }

    /// Submits the batch and reads `range` (bytes, word aligned) of `buffer` back, with every
    /// pending check cell in the same copy; a set cell is returned as its error.
    pub(crate) fn download_bytes(
        &self,
        buffer: &wgpu::Buffer,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>> {
        debug_assert!(range.start.is_multiple_of(4) && range.end.is_multiple_of(4));
        if range.is_empty() && lock(&self.checks).is_empty() {
            return Ok(Vec::new());
        }
        self.read_back(Some((buffer, range)))
    }

    fn read_back(&self, what: Option<(&wgpu::Buffer, std::ops::Range<u64>)>) -> Result<Vec<u8>> {
        let me = std::thread::current().id();
        self.take_resolved(me)?;
        let checks = std::mem::take(&mut *lock(&self.checks));
        let size = what.as_ref().map_or(0, |(_, r)| r.end - r.start);
        let total = size + 8 * checks.len() as u64;
        if total == 0 {
            return self.synchronize_queue().map(|()| Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("glimpse read-back"),
            size: total,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.submit(|enc| {
            if let Some((buffer, range)) = &what
                && size > 0
            {
                enc.copy_buffer_to_buffer(buffer, range.start, &staging, 0, size);
            }
            for (i, c) in checks.iter().enumerate() {
                enc.copy_buffer_to_buffer(c.cell.buffer(), 0, &staging, size + 8 * i as u64, 8);
            }
        })?;
        self.readbacks.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| wgpu_err("waiting for the device", e))?;
        rx.recv()
            .map_err(|e| wgpu_err("reading back", e))?
            .map_err(|e| wgpu_err("mapping the read-back buffer", e))?;
        let mut bytes = staging
            .get_mapped_range(..)
            .map_err(|e| wgpu_err("reading the read-back buffer", e))?
            .to_vec();
        staging.unmap();
        staging.destroy();
        self.take_error()?;
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let mut mine = None;
        for (i, c) in checks.iter().enumerate() {
            let at = size as usize + 8 * i;
            if word(at) != u32::MAX {
                let e = match c.what {
                    DeferredError::Index { op, size } => Error::IndexOutOfRange {
                        op,
                        index: word(at + 4) as usize,
                        size,
                    },
                    DeferredError::DivisionByZero => {
                        Error::invalid("div", "integer division by zero")
                    }
                };
                if c.thread == me {
                    mine.get_or_insert(e);
                } else {
                    lock(&self.resolved).push((c.thread, e));
                }
            }
        }
        if let Some(e) = mine {
            return Err(e);
        }
        bytes.truncate(size as usize);
        Ok(bytes)
    }

    /// The first error another thread's read-back found for thread `me`.
    fn take_resolved(&self, me: std::thread::ThreadId) -> Result<()> {
        let mut resolved = lock(&self.resolved);
        match resolved.iter().position(|(t, _)| *t == me) {
            Some(i) => Err(resolved.remove(i).1),
            None => Ok(()),
        }
    }

    // ------------------------------------------------------------------ kernels

    fn pipeline(&self, k: &Kernel<'_>) -> Result<wgpu::ComputePipeline> {
        let key: PipelineKey = (k.file, k.entry, k.t, k.u, k.constants.to_vec());
        if let Some(p) = lock(&self.pipelines).get(&key) {
            return Ok(p.clone());
        }
        let label = format!(
            "{}::{} (T = {}, U = {})",
            k.file,
            k.entry,
            k.t.wgsl(),
            k.u.wgsl()
        );
        let compile_error = |log: String| Error::KernelCompile {
            kernel: label.clone(),
            log,
        };
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = {
            let mut modules = lock(&self.modules);
            match modules.get(&(k.file, k.t, k.u)) {
                Some(m) => m.clone(),
                None => {
                    let source = glimpse_kernels::find(k.file)
                        .filter(|s| s.language == glimpse_kernels::Language::Wgsl)
                        .ok_or_else(|| compile_error(format!("no WGSL kernel file {}", k.file)))?;
                    if !kernel_variants(source.source)?.contains(&(k.t, k.u)) {
                        return Err(compile_error(format!(
                            "{} does not declare the variant {}/{}",
                            k.file,
                            k.t.wgsl(),
                            k.u.wgsl()
                        )));
                    }
                    let text = format!(
                        "{}{}\n{}",
                        Elem::header(k.t, k.u),
                        glimpse_kernels::WGSL_COMMON,
                        source.source
                    );
                    let m = self
                        .device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(k.file),
                            source: wgpu::ShaderSource::Wgsl(text.into()),
                        });
                    modules.insert((k.file, k.t, k.u), m.clone());
                    m
                }
            }
        };
        let constants: Vec<(&str, f64)> = k
            .constants
            .iter()
            .map(|&(n, v)| (n, f64::from(v)))
            .collect();
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: None,
                module: &module,
                entry_point: Some(k.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    // Kernels initialise the workgroup memory they read.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            // A broken module stays broken: forget it so the error repeats with its log.
            lock(&self.modules).remove(&(k.file, k.t, k.u));
            return Err(compile_error(e.to_string()));
        }
        self.compiled.fetch_add(1, Ordering::Relaxed);
        lock(&self.pipelines).insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Records one dispatch (see the module documentation). Submits the batch when it is full.
    pub(crate) fn dispatch(
        &self,
        k: &Kernel<'_>,
        params: &Params,
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) -> Result<()> {
        let max_groups = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max_groups) {
            return Err(Error::backend(
                "wgpu",
                format!(
                    "{}::{}: {groups:?} workgroups exceed the adapter's {max_groups} per dimension",
                    k.file, k.entry
                ),
            ));
        }
        let pipeline = self.pipeline(k)?;
        self.dispatches.fetch_add(1, Ordering::Relaxed);
        if groups.contains(&0) {
            return Ok(());
        }
        let full = {
            let mut batch = lock(&self.batch);
            // Each dispatch's parameters start at an offset the adapter can bind.
            let align = (self.limits.min_storage_buffer_offset_alignment as usize / 4).max(1);
            let start = batch.params.len().next_multiple_of(align);
            batch.params.resize(start, 0);
            batch.params.extend_from_slice(params.words());
            if params.is_empty() {
                batch.params.push(0);
            }
            let end = batch.params.len();
            batch.dispatches.push(PendingDispatch {
                pipeline,
                buffers: buffers.iter().map(|&b| b.clone()).collect(),
                params: start..end,
                groups,
            });
            batch.dispatches.len() as u64 >= self.max_batch.load(Ordering::Relaxed)
        };
        if full { self.submit(|_| {}) } else { Ok(()) }
    }

    /// Encodes every pending dispatch into one compute pass, lets `then` append commands
    /// (a copy for a read-back), and submits. Reports the first error wgpu raised since the
    /// last submission.
    pub(crate) fn submit(&self, then: impl FnOnce(&mut wgpu::CommandEncoder)) -> Result<()> {
        // The batch stays locked until it is on the queue: another thread's later batch must
        // not reach the queue first (its dispatches may read what this one writes).
        let mut pending = lock(&self.batch);
        let batch = std::mem::take(&mut *pending);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        if !batch.dispatches.is_empty() {
            let words = self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("glimpse parameters"),
                    contents: bytemuck::cast_slice(&batch.params),
                    usage: wgpu::BufferUsages::STORAGE,
                });
            let groups: Vec<wgpu::BindGroup> = batch
                .dispatches
                .iter()
                .map(|d| {
                    let mut entries = Vec::with_capacity(d.buffers.len() + 1);
                    entries.push(wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &words,
                            offset: (d.params.start * 4) as u64,
                            size: wgpu::BufferSize::new((d.params.len() * 4) as u64),
                        }),
                    });
                    for (i, b) in d.buffers.iter().enumerate() {
                        entries.push(wgpu::BindGroupEntry {
                            binding: i as u32 + 1,
                            resource: b.as_entire_binding(),
                        });
                    }
                    self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &d.pipeline.get_bind_group_layout(0),
                        entries: &entries,
                    })
                })
                .collect();
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            for (d, g) in batch.dispatches.iter().zip(&groups) {
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, g, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
        }
        then(&mut encoder);
        self.queue.submit([encoder.finish()]);
        drop(pending);
        self.submissions.fetch_add(1, Ordering::Relaxed);
        self.take_error()
    }

    /// Submits pending work and waits until the device has finished it; reports the errors
    /// of device-side checks (bad indices, zero divisors) recorded since the last read-back.
    pub fn synchronize(&self) -> Result<()> {
        self.take_resolved(std::thread::current().id())?;
        if lock(&self.checks).is_empty() {
            self.synchronize_queue()
        } else {
            self.read_back(None).map(drop)
        }
    }

    fn synchronize_queue(&self) -> Result<()> {
        self.submit(|_| {})?;
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| wgpu_err("waiting for the device", e))?;
        self.take_error()
    }

    fn take_error(&self) -> Result<()> {
        match lock(&self.error).take() {
            Some(e) => Err(Error::backend("wgpu", e)),
            None => Ok(()),
        }
    }
}

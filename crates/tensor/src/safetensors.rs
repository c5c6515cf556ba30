//! Loading and saving [safetensors](https://github.com/huggingface/safetensors) files.
//!
//! * [`SafeTensorsFile`]: one memory-mapped `.safetensors` file whose header has been fully
//!   validated on open. Loading a tensor on the CPU reads the mapped bytes in place (no copy)
//!   when they are aligned.
//! * [`Checkpoint`]: a single file or a sharded checkpoint (`model.safetensors.index.json` and
//!   its shards) behind one list/load API.
//! * [`save`], [`save_map`] and [`save_sharded`] write files atomically: a temporary file in the
//!   same directory is written, flushed to disk and renamed over the destination, so readers
//!   see either the old or the new content, never a partial file.
//!
//! Every problem with the bytes of a file (or with an index) is reported as
//! [`Error::SafeTensors`]; no byte input makes these functions panic.
//!
//! ```
//! # fn main() -> glimpse_tensor::Result<()> {
//! use glimpse_tensor::{DType, Tensor, safetensors};
//! let device = glimpse_cpu::device();
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("model.safetensors");
//! let w = Tensor::from_vec(vec![1f32, 2., 3., 4.], [2, 2], &device)?;
//! safetensors::save(&[("w", &w)], &path, None)?;
//! let file = safetensors::SafeTensorsFile::open(&path)?;
//! assert_eq!(file.names(), vec!["w"]);
//! let w16 = file.load_as("w", DType::F16, &device)?;
//! assert_eq!(w16.to_f64_vec()?, vec![1., 2., 3., 4.]);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::de::{Deserializer, MapAccess, Visitor};

use crate::{DType, Device, Error, HostVec, Result, SharedBytes, Tensor, WithDType, write_atomic};

/// Largest header accepted, in bytes. Real headers are a few hundred kilobytes at most; a
/// larger length field is a sign of corruption and would otherwise make us parse garbage.
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// The file name of the index of a sharded checkpoint, as written by Hugging Face tools.
pub const INDEX_FILE_NAME: &str = "model.safetensors.index.json";

/// The file name of a single-file checkpoint.
pub const SINGLE_FILE_NAME: &str = "model.safetensors";

type Bytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

fn st_err(path: impl AsRef<Path>, msg: impl Into<String>) -> Error {
    Error::SafeTensors {
        path: path.as_ref().display().to_string(),
        msg: msg.into(),
    }
}

// ---------------------------------------------------------------------------------- dtypes

/// An element type as named in a safetensors header. Only some of them map to a glimpse
/// [`DType`] (see [`FileDType::to_dtype`]); the others can be listed but not loaded, except
/// `I64`, which [`SafeTensorsFile::load`] converts to `U32` when every value fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileDType {
    /// Booleans, one byte each.
    Bool,
    /// Unsigned 8-bit integers.
    U8,
    /// Signed 8-bit integers.
    I8,
    /// 8-bit floats, 5 exponent and 2 mantissa bits (`F8_E5M2`).
    F8E5M2,
    /// 8-bit floats, 4 exponent and 3 mantissa bits (`F8_E4M3`).
    F8E4M3,
    /// 8-bit scale factors, exponent only (`F8_E8M0`).
    F8E8M0,
    /// 4-bit floats (`F4`), two per byte.
    F4,
    /// 6-bit floats, 2 exponent and 3 mantissa bits (`F6_E2M3`).
    F6E2M3,
    /// 6-bit floats, 3 exponent and 2 mantissa bits (`F6_E3M2`).
    F6E3M2,
    /// Signed 16-bit integers.
    I16,
    /// Unsigned 16-bit integers.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integers.
    I32,
    /// Unsigned 32-bit integers.
    U32,
    /// IEEE single precision.
    F32,
    /// Complex numbers of two `f32`.
    C64,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integers (token ids, `position_ids` buffers).
    I64,
    /// Unsigned 64-bit integers.
    U64,
}

impl FileDType {
    const ALL: [FileDType; 20] = [
        FileDType::Bool,
        FileDType::U8,
        FileDType::I8,
        FileDType::F8E5M2,
        FileDType::F8E4M3,
        FileDType::F8E8M0,
        FileDType::F4,
        FileDType::F6E2M3,
        FileDType::F6E3M2,
        FileDType::I16,
        FileDType::U16,
        FileDType::F16,
        FileDType::BF16,
        FileDType::I32,
        FileDType::U32,
        FileDType::F32,
        FileDType::C64,
        FileDType::F64,
        FileDType::I64,
        FileDType::U64,
    ];

    /// The name used in headers (`"F32"`, `"I64"`, `"F8_E4M3"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FileDType::Bool => "BOOL",
            FileDType::U8 => "U8",
            FileDType::I8 => "I8",
            FileDType::F8E5M2 => "F8_E5M2",
            FileDType::F8E4M3 => "F8_E4M3",
            FileDType::F8E8M0 => "F8_E8M0",
            FileDType::F4 => "F4",
            FileDType::F6E2M3 => "F6_E2M3",
            FileDType::F6E3M2 => "F6_E3M2",
            FileDType::I16 => "I16",
            FileDType::U16 => "U16",
            FileDType::F16 => "F16",
            FileDType::BF16 => "BF16",
            FileDType::I32 => "I32",
            FileDType::U32 => "U32",
            FileDType::F32 => "F32",
            FileDType::C64 => "C64",
            FileDType::F64 => "F64",
            FileDType::I64 => "I64",
            FileDType::U64 => "U64",
        }
    }

    /// Parses a header name; `None` for a name this crate does not know.
    pub fn from_name(name: &str) -> Option<FileDType> {
        FileDType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Size of one element in bits (4 and 6 for the sub-byte float formats).
    pub fn bits(self) -> usize {
        match self {
            FileDType::F4 => 4,
            FileDType::F6E2M3 | FileDType::F6E3M2 => 6,
            FileDType::Bool
            | FileDType::U8
            | FileDType::I8
            | FileDType::F8E5M2
            | FileDType::F8E4M3
            | FileDType::F8E8M0 => 8,
            FileDType::I16 | FileDType::U16 | FileDType::F16 | FileDType::BF16 => 16,
            FileDType::I32 | FileDType::U32 | FileDType::F32 => 32,
            FileDType::C64 | FileDType::F64 | FileDType::I64 | FileDType::U64 => 64,
        }
    }

    /// The glimpse dtype with the same memory representation, if there is one.
    pub fn to_dtype(self) -> Option<DType> {
        match self {
            FileDType::F16 => Some(DType::F16),
            FileDType::BF16 => Some(DType::BF16),
            FileDType::F32 => Some(DType::F32),
            FileDType::F64 => Some(DType::F64),
            FileDType::U32 => Some(DType::U32),
            _ => None,
        }
    }
}

impl From<DType> for FileDType {
    fn from(d: DType) -> Self {
        match d {
            DType::F16 => FileDType::F16,
            DType::BF16 => FileDType::BF16,
            DType::F32 => FileDType::F32,
            DType::F64 => FileDType::F64,
            DType::U32 => FileDType::U32,
        }
    }
}

impl fmt::Display for FileDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------- header

/// What the header says about one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type as stored in the file.
    pub dtype: FileDType,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Byte range of the data, relative to the start of the data section (after the header).
    pub data_offsets: (usize, usize),
}

/// The header's top-level JSON object, kept as an ordered list so that duplicate keys (which
/// a map would silently merge) can be reported.
struct RawHeader(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RawHeader, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(RawHeader(entries))
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// The validated header of a safetensors file.
#[derive(Clone, Debug, Default)]
struct Header {
    tensors: HashMap<String, TensorInfo>,
    metadata: HashMap<String, String>,
}

fn as_usize(v: &serde_json::Value) -> Option<usize> {
    v.as_u64().and_then(|x| usize::try_from(x).ok())
}

/// Parses and validates a whole file image: the length prefix, the JSON header, and the data
/// ranges of every tensor. Returns the header and the absolute offset of the data section.
fn parse(bytes: &[u8], path: &Path) -> Result<(Header, usize)> {
    let err = |msg: String| st_err(path, msg);
    if bytes.len() < 8 {
        return Err(err(format!(
            "file is {} bytes long, shorter than the 8-byte header length prefix",
            bytes.len()
        )));
    }
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&bytes[..8]);
    let header_len = u64::from_le_bytes(prefix);
    let available = (bytes.len() - 8) as u64;
    if header_len > MAX_HEADER_BYTES {
        return Err(err(format!(
            "header length {header_len} is larger than the limit of {MAX_HEADER_BYTES} bytes"
        )));
    }
    if header_len > available {
        return Err(err(format!(
            "header length {header_len} runs past the end of the file ({available} bytes after \
             the length prefix)"
        )));
    }
    // Both fit in usize: header_len <= bytes.len().
    let data_start = 8 + header_len as usize;
    let header_bytes = &bytes[8..data_start];
    let text = std::str::from_utf8(header_bytes)
        .map_err(|e| err(format!("header is not valid UTF-8: {e}")))?;
    let raw: RawHeader = serde_json::from_str(text)
        .map_err(|e| err(format!("header is not a valid JSON object: {e}")))?;

    let data_len = bytes.len() - data_start;
    let mut header = Header::default();
    let mut seen = HashSet::new();
    for (name, value) in raw.0 {
        if !seen.insert(name.clone()) {
            return Err(err(format!("key `{name}` appears twice in the header")));
        }
        if name == "__metadata__" {
            let obj = value
                .as_object()
                .ok_or_else(|| err("`__metadata__` is not a JSON object".into()))?;
            for (k, v) in obj {
                let v = v.as_str().ok_or_else(|| {
                    err(format!("`__metadata__` value for `{k}` is not a string"))
                })?;
                header.metadata.insert(k.clone(), v.to_string());
            }
            continue;
        }
        let info = parse_info(&value).map_err(|m| err(format!("tensor `{name}`: {m}")))?;
        let (start, end) = info.data_offsets;
        if end > data_len {
            return Err(err(format!(
                "tensor `{name}`: data_offsets [{start}, {end}] run past the end of the data \
                 section ({data_len} bytes)"
            )));
        }
        header.tensors.insert(name, info);
    }

    // The data ranges must tile the data section exactly: sorted by start, each one begins
    // where the previous one ends, the first at 0 and the last at the end of the file.
    let mut ranges: Vec<(&str, usize, usize)> = header
        .tensors
        .iter()
        .map(|(n, i)| (n.as_str(), i.data_offsets.0, i.data_offsets.1))
        .collect();
    ranges.sort_by(|a, b| (a.1, a.2, a.0).cmp(&(b.1, b.2, b.0)));
    let mut cursor = 0usize;
    let mut prev: Option<&str> = None;
    for &(name, start, end) in &ranges {
        if start < cursor {
            return Err(err(format!(
                "tensor `{name}` (bytes {start}..{end}) overlaps tensor `{}` (ending at byte \
                 {cursor})",
                prev.unwrap_or("?")
            )));
        }
        if start > cursor {
            return Err(err(format!(
                "data is not contiguous: {} unused bytes before tensor `{name}` (bytes \
                 {start}..{end})",
                start - cursor
            )));
        }
        cursor = end;
        prev = Some(name);
    }
    if cursor != data_len {
        return Err(err(format!(
            "tensors cover {cursor} bytes but the data section holds {data_len} bytes"
        )));
    }
    Ok((header, data_start))
}

fn parse_info(value: &serde_json::Value) -> std::result::Result<TensorInfo, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| "entry is not a JSON object".to_string())?;
    let dtype_name = obj
        .get("dtype")
        .ok_or("missing field `dtype`")?
        .as_str()
        .ok_or("`dtype` is not a string")?;
    let dtype =
        FileDType::from_name(dtype_name).ok_or_else(|| format!("unknown dtype `{dtype_name}`"))?;
    let shape_json = obj
        .get("shape")
        .ok_or("missing field `shape`")?
        .as_array()
        .ok_or("`shape` is not an array")?;
    let shape = shape_json
        .iter()
        .map(as_usize)
        .collect::<Option<Vec<usize>>>()
        .ok_or("`shape` holds something other than non-negative integers")?;
    let offsets = obj
        .get("data_offsets")
        .ok_or("missing field `data_offsets`")?
        .as_array()
        .ok_or("`data_offsets` is not an array")?;
    let (start, end) = match offsets.as_slice() {
        [s, e] => (
            as_usize(s).ok_or("`data_offsets` holds a non-integer or negative value")?,
            as_usize(e).ok_or("`data_offsets` holds a non-integer or negative value")?,
        ),
        _ => return Err("`data_offsets` must hold exactly two integers".into()),
    };
    if start > end {
        return Err(format!(
            "data_offsets [{start}, {end}] end before they start"
        ));
    }
    // Strides and offsets are products of dimensions, so even with a zero dimension the
    // product of the others (in bits) must fit in a usize.
    shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(dtype.bits(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("element count of shape {shape:?} overflows"))?;
    let elems: usize = shape.iter().product();
    let bits = elems
        .checked_mul(dtype.bits())
        .ok_or_else(|| format!("byte size of shape {shape:?} overflows"))?;
    if bits % 8 != 0 {
        return Err(format!(
            "{elems} elements of {dtype} do not fill a whole number of bytes"
        ));
    }
    let nbytes = bits / 8;
    if end - start != nbytes {
        return Err(format!(
            "shape {shape:?} of {dtype} needs {nbytes} bytes but data_offsets [{start}, {end}] \
             hold {}",
            end - start
        ));
    }
    Ok(TensorInfo {
        dtype,
        shape,
        data_offsets: (start, end),
    })
}

// ---------------------------------------------------------------------------------- one file

/// One safetensors file, memory-mapped (or held in memory), with a validated header.
///
/// Opening checks everything about the file's layout (header length, JSON, dtypes, shapes,
/// that the data ranges are in bounds and tile the data section without overlaps or gaps), so
/// loading a tensor afterwards can only fail on an unsupported dtype or device.
///
/// # Memory mapping
///
/// [`SafeTensorsFile::open`] maps the file read-only. The mapping reflects the file: if another
/// process modifies or truncates it while it is mapped, tensors read from it may change or the
/// process may be killed (`SIGBUS`). Checkpoints are treated as immutable while in use, as
/// every ML framework that maps weights does; [`SafeTensorsFile::read`] copies the file into
/// memory for callers who cannot make that promise.
#[derive(Clone)]
pub struct SafeTensorsFile {
    path: PathBuf,
    bytes: Bytes,
    data_start: usize,
    header: Arc<Header>,
}

impl fmt::Debug for SafeTensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafeTensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.header.tensors.len())
            .field("bytes", &(*self.bytes).as_ref().len())
            .finish()
    }
}

impl SafeTensorsFile {
    /// Maps `path` into memory and validates its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 8 {
            // Also avoids mapping an empty file, which fails on some platforms.
            return Err(st_err(
                path,
                format!("file is {len} bytes long, shorter than the 8-byte header length prefix"),
            ));
        }
        // SAFETY: mapping a file is unsafe because the mapped bytes can change (or vanish,
        // raising SIGBUS) if another process writes to or truncates the file while it is
        // mapped, which Rust's aliasing rules cannot see. We map read-only and never write
        // through the mapping; a checkpoint being modified while it is in use is outside
        // what we support (documented on the type, with `read` as the copying alternative).
        // Every offset we read is validated against the mapping's length at open time.
        let mmap =
            unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::from_shared(Arc::new(mmap), path)
    }

    /// Reads `path` into memory (no mapping) and validates its header.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(bytes, path)
    }

    /// Validates a file image held in memory; `path` is only used in error messages.
    pub fn from_bytes(bytes: Vec<u8>, path: impl AsRef<Path>) -> Result<Self> {
        Self::from_shared(Arc::new(bytes), path.as_ref())
    }

    fn from_shared(bytes: Bytes, path: &Path) -> Result<Self> {
        let (header, data_start) = parse((*bytes).as_ref(), path)?;
        Ok(SafeTensorsFile {
            path: path.to_path_buf(),
            bytes,
            data_start,
            header: Arc::new(header),
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of all tensors, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.header.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.header.tensors.len()
    }

    /// True if the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.header.tensors.is_empty()
    }

    /// True if the file holds a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.header.tensors.contains_key(name)
    }

    /// What the header says about `name`.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.get(name)
    }

    /// Every tensor with its header entry, sorted by name.
    pub fn tensors(&self) -> Vec<(&str, &TensorInfo)> {
        let mut v: Vec<(&str, &TensorInfo)> = self
            .header
            .tensors
            .iter()
            .map(|(n, i)| (n.as_str(), i))
            .collect();
        v.sort_unstable_by_key(|(n, _)| *n);
        v
    }

    /// The `__metadata__` map of the header (empty if there is none).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.header.metadata
    }

    fn info_or_missing(&self, name: &str) -> Result<&TensorInfo> {
        self.header
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingKey {
                key: name.to_string(),
                nearest: nearest_keys(name, self.header.tensors.keys().map(String::as_str), 5),
            })
    }

    /// The raw little-endian bytes of `name`.
    pub fn raw_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.info_or_missing(name)?;
        let (start, end) = info.data_offsets;
        (*self.bytes)
            .as_ref()
            .get(self.data_start + start..self.data_start + end)
            .ok_or_else(|| st_err(&self.path, format!("tensor `{name}`: data out of bounds")))
    }

    /// Loads `name` in its stored dtype. On the CPU, aligned data is read in place from the
    /// mapping (no copy). `I64` data is converted to `U32` if every value fits; other dtypes
    /// without a glimpse equivalent are an error.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let info = self.info_or_missing(name)?;
        match info.dtype.to_dtype() {
            Some(dtype) => {
                let (start, end) = info.data_offsets;
                let shared = SharedBytes::new(
                    self.bytes.clone(),
                    self.data_start + start..self.data_start + end,
                )
                .ok_or_else(|| {
                    st_err(&self.path, format!("tensor `{name}`: data out of bounds"))
                })?;
                Tensor::from_bytes(shared, dtype, info.shape.clone(), device)
            }
            None if info.dtype == FileDType::I64 => self.load_i64(name, info, DType::U32, device),
            None => Err(self.unsupported(name, info)),
        }
    }

    /// Loads `name` converted to `dtype`. `I64` data converts to any dtype (to `U32` only if
    /// every value lies in `0..=u32::MAX`).
    pub fn load_as(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let info = self.info_or_missing(name)?;
        if info.dtype == FileDType::I64 {
            return self.load_i64(name, info, dtype, device);
        }
        self.load(name, device)?.to_dtype(dtype)
    }

    fn unsupported(&self, name: &str, info: &TensorInfo) -> Error {
        st_err(
            &self.path,
            format!(
                "tensor `{name}` has dtype {}, which glimpse cannot load (supported: F16, BF16, \
                 F32, F64, U32, and I64 converted on load)",
                info.dtype
            ),
        )
    }

    fn load_i64(
        &self,
        name: &str,
        info: &TensorInfo,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let bytes = self.raw_bytes(name)?;
        let values = bytes.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            i64::from_le_bytes(b)
        });
        let host = if dtype == DType::U32 {
            let v = values
                .map(u32::try_from)
                .collect::<std::result::Result<Vec<u32>, _>>()
                .map_err(|_| {
                    st_err(
                        &self.path,
                        format!(
                            "tensor `{name}` is I64 with values outside 0..=4294967295, so it \
                             cannot be converted to U32"
                        ),
                    )
                })?;
            HostVec::U32(v)
        } else {
            // Float targets: convert through f64 (exact below 2^53, rounded above).
            let f: Vec<f64> = values.map(|x| x as f64).collect();
            host_from_f64(dtype, &f)
        };
        let tensor = upload_host(&host, info.shape.clone(), device)?;
        Ok(tensor)
    }
}

fn host_from_f64(dtype: DType, v: &[f64]) -> HostVec {
    fn conv<T: WithDType>(v: &[f64]) -> Vec<T> {
        v.iter().map(|&x| T::from_f64(x)).collect()
    }
    match dtype {
        DType::F16 => HostVec::F16(conv(v)),
        DType::BF16 => HostVec::BF16(conv(v)),
        DType::F32 => HostVec::F32(conv(v)),
        DType::F64 => HostVec::F64(conv(v)),
        DType::U32 => HostVec::U32(conv(v)),
    }
}

fn upload_host(host: &HostVec, shape: Vec<usize>, device: &Device) -> Result<Tensor> {
    match host {
        HostVec::F16(v) => Tensor::from_slice(v, shape, device),
        HostVec::BF16(v) => Tensor::from_slice(v, shape, device),
        HostVec::F32(v) => Tensor::from_slice(v, shape, device),
        HostVec::F64(v) => Tensor::from_slice(v, shape, device),
        HostVec::U32(v) => Tensor::from_slice(v, shape, device),
    }
}

// ---------------------------------------------------------------------------------- checkpoints

/// A checkpoint: one safetensors file, or the shards listed by a
/// `model.safetensors.index.json`, behind one list/load API.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    path: PathBuf,
    shards: Vec<SafeTensorsFile>,
    /// For a sharded checkpoint: tensor name to index in `shards`. `None` for a single file.
    weight_map: Option<BTreeMap<String, usize>>,
    index_metadata: HashMap<String, String>,
}

impl Checkpoint {
    /// Opens a checkpoint:
    /// * a directory: its `model.safetensors.index.json` if there is one, else its
    ///   `model.safetensors`;
    /// * a file whose name ends in `.json`: an index, whose shards are resolved relative to the
    ///   index's directory;
    /// * any other file: a single safetensors file.
    ///
    /// Every shard is opened and validated, and every weight the index lists is checked to be
    /// in its shard, so errors surface here rather than in the middle of loading a model.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            let index = path.join(INDEX_FILE_NAME);
            if index.is_file() {
                return Self::open_index(&index);
            }
            let single = path.join(SINGLE_FILE_NAME);
            if single.is_file() {
                return Self::open_file(&single);
            }
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("directory holds neither {INDEX_FILE_NAME} nor {SINGLE_FILE_NAME}"),
                ),
            ));
        }
        if path.extension().is_some_and(|e| e == "json") {
            Self::open_index(path)
        } else {
            Self::open_file(path)
        }
    }

    /// Opens a single safetensors file as a checkpoint.
    pub fn open_file(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::from_file(SafeTensorsFile::open(path)?))
    }

    /// Wraps an already opened file.
    pub fn from_file(file: SafeTensorsFile) -> Self {
        Checkpoint {
            path: file.path().to_path_buf(),
            shards: vec![file],
            weight_map: None,
            index_metadata: HashMap::new(),
        }
    }

    /// Opens a sharded checkpoint from its index (`{"metadata": {...}, "weight_map": {name:
    /// file}}`).
    pub fn open_index(index_path: impl AsRef<Path>) -> Result<Self> {
        let index_path = index_path.as_ref();
        let text = std::fs::read(index_path).map_err(|e| Error::io(index_path, e))?;
        let err = |msg: String| st_err(index_path, msg);
        let json: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| err(format!("index is not valid JSON: {e}")))?;
        let obj = json
            .as_object()
            .ok_or_else(|| err("index is not a JSON object".into()))?;
        let map = obj
            .get("weight_map")
            .ok_or_else(|| err("index has no `weight_map`".into()))?
            .as_object()
            .ok_or_else(|| err("`weight_map` is not a JSON object".into()))?;
        let mut index_metadata = HashMap::new();
        match obj.get("metadata") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(m)) => {
                for (k, v) in m {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    index_metadata.insert(k.clone(), v);
                }
            }
            Some(_) => return Err(err("`metadata` is not a JSON object".into())),
        }
        let dir = index_path.parent().unwrap_or_else(|| Path::new(""));
        let mut shard_ids: HashMap<String, usize> = HashMap::new();
        let mut shards = Vec::new();
        let mut weight_map = BTreeMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                err(format!(
                    "`weight_map` entry for `{name}` is not a file name string"
                ))
            })?;
            let id = match shard_ids.get(file) {
                Some(&id) => id,
                None => {
                    let rel = Path::new(file);
                    if file.is_empty()
                        || !rel
                            .components()
                            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
                    {
                        return Err(err(format!(
                            "shard file name `{file}` (for `{name}`) must be a relative path \
                             inside the index's directory"
                        )));
                    }
                    let shard_path = dir.join(rel);
                    if !shard_path.is_file() {
                        return Err(err(format!(
                            "shard `{}` (holding `{name}`) does not exist",
                            shard_path.display()
                        )));
                    }
                    shards.push(SafeTensorsFile::open(&shard_path)?);
                    shard_ids.insert(file.to_string(), shards.len() - 1);
                    shards.len() - 1
                }
            };
            if !shards[id].contains(name) {
                return Err(err(format!(
                    "weight `{name}` is listed in shard `{file}` but that shard does not hold it"
                )));
            }
            weight_map.insert(name.clone(), id);
        }
        Ok(Checkpoint {
            path: index_path.to_path_buf(),
            shards,
            weight_map: Some(weight_map),
            index_metadata,
        })
    }

    /// The path the checkpoint was opened from (the file, or the index).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if the checkpoint was opened from an index.
    pub fn is_sharded(&self) -> bool {
        self.weight_map.is_some()
    }

    /// The files of the checkpoint (one for a single file).
    pub fn shards(&self) -> &[SafeTensorsFile] {
        &self.shards
    }

    /// The `metadata` object of the index, with non-string values rendered as JSON (empty for
    /// a single file; see [`SafeTensorsFile::metadata`] for a file's own metadata).
    pub fn index_metadata(&self) -> &HashMap<String, String> {
        &self.index_metadata
    }

    fn file_of(&self, name: &str) -> Option<&SafeTensorsFile> {
        match &self.weight_map {
            None => self.shards.first().filter(|f| f.contains(name)),
            Some(map) => map.get(name).and_then(|&i| self.shards.get(i)),
        }
    }

    fn file_or_missing(&self, name: &str) -> Result<&SafeTensorsFile> {
        self.file_of(name).ok_or_else(|| Error::MissingKey {
            key: name.to_string(),
            nearest: nearest_keys(name, self.names(), 5),
        })
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        match &self.weight_map {
            None => self.shards.first().map(|f| f.names()).unwrap_or_default(),
            Some(map) => map.keys().map(String::as_str).collect(),
        }
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        match &self.weight_map {
            None => self.shards.first().map_or(0, |f| f.len()),
            Some(map) => map.len(),
        }
    }

    /// True if the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if the checkpoint holds a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.file_of(name).is_some()
    }

    /// What the header of its file says about `name`.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.file_of(name)?.info(name)
    }

    /// The shape of `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.info(name).map(|i| i.shape.as_slice())
    }

    /// The stored dtype of `name`.
    pub fn dtype(&self, name: &str) -> Option<FileDType> {
        self.info(name).map(|i| i.dtype)
    }

    /// Loads `name` in its stored dtype (see [`SafeTensorsFile::load`]).
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.file_or_missing(name)?.load(name, device)
    }

    /// Loads `name` converted to `dtype` (see [`SafeTensorsFile::load_as`]).
    pub fn load_as(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        self.file_or_missing(name)?.load_as(name, dtype, device)
    }
}

// ---------------------------------------------------------------------------------- nearest keys

/// Edit distance (insertions, deletions, substitutions) between two strings, by bytes.
fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

/// Up to `n` keys nearest to `key`: smallest edit distance first, ties broken by the longest
/// common prefix, then alphabetically.
pub(crate) fn nearest_keys<'a>(
    key: &str,
    keys: impl IntoIterator<Item = &'a str>,
    n: usize,
) -> Vec<String> {
    let mut scored: Vec<(usize, std::cmp::Reverse<usize>, &str)> = keys
        .into_iter()
        .map(|k| {
            (
                edit_distance(key.as_bytes(), k.as_bytes()),
                std::cmp::Reverse(common_prefix(key, k)),
                k,
            )
        })
        .collect();
    scored.sort_unstable();
    scored
        .into_iter()
        .take(n)
        .map(|(_, _, k)| k.to_string())
        .collect()
}

// ---------------------------------------------------------------------------------- saving

/// Downloads every tensor and lays out the file: sorted by element size (largest first, so
/// every tensor stays aligned) and then by name.
fn serialize(
    tensors: &[(&str, &Tensor)],
    metadata: Option<&HashMap<String, String>>,
    path: &Path,
) -> Result<(Vec<u8>, Vec<HostVec>)> {
    let mut seen = HashSet::new();
    for (name, _) in tensors {
        if *name == "__metadata__" {
            return Err(Error::invalid(
                "save",
                "`__metadata__` cannot be a tensor name",
            ));
        }
        if !seen.insert(*name) {
            return Err(Error::invalid(
                "save",
                format!("tensor name `{name}` appears twice"),
            ));
        }
    }
    let mut order: Vec<&(&str, &Tensor)> = tensors.iter().collect();
    order.sort_by(|a, b| {
        (std::cmp::Reverse(a.1.dtype().size_in_bytes()), a.0)
            .cmp(&(std::cmp::Reverse(b.1.dtype().size_in_bytes()), b.0))
    });
    let mut header = serde_json::Map::new();
    if let Some(meta) = metadata {
        let m: serde_json::Map<String, serde_json::Value> = meta
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut data = Vec::with_capacity(order.len());
    let mut offset = 0usize;
    for (name, tensor) in order {
        let host = tensor.to_host()?;
        let len = host.as_slice().as_bytes().len();
        header.insert(
            (*name).to_string(),
            serde_json::json!({
                "dtype": tensor.dtype().safetensors_name(),
                "shape": tensor.dims(),
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
        data.push(host);
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| st_err(path, format!("cannot serialize header: {e}")))?;
    // Pad with spaces so that the data section starts 8-byte aligned.
    while (json.len() + 8) % 8 != 0 {
        json.push(b' ');
    }
    Ok((json, data))
}

/// Saves tensors (any device, any layout) to a safetensors file at `path`, atomically, with an
/// optional `__metadata__` map. Names must be unique.
pub fn save(
    tensors: &[(&str, &Tensor)],
    path: impl AsRef<Path>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let (header, data) = serialize(tensors, metadata.as_ref(), path)?;
    write_atomic(path, |file| {
        let mut w = std::io::BufWriter::new(file);
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for host in &data {
            w.write_all(host.as_slice().as_bytes())?;
        }
        w.flush()
    })
}

/// [`save`] for tensors held in a map.
pub fn save_map(
    tensors: &HashMap<String, Tensor>,
    path: impl AsRef<Path>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let list: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    save(&list, path, metadata)
}

/// Saves tensors as a sharded checkpoint in `dir`: files `model-00001-of-0000N.safetensors`,
/// each holding at most `max_shard_bytes` of tensor data (a tensor larger than that gets a
/// shard of its own), and a `model.safetensors.index.json` mapping every name to its shard.
/// Tensors are assigned to shards in name order. Every file is written atomically, the index
/// last, so an index on disk always refers to complete shards. Returns the index's path.
pub fn save_sharded(
    tensors: &[(&str, &Tensor)],
    dir: impl AsRef<Path>,
    max_shard_bytes: usize,
) -> Result<PathBuf> {
    let dir = dir.as_ref();
    let mut sorted: Vec<(&str, &Tensor)> = tensors.to_vec();
    sorted.sort_by_key(|(n, _)| *n);
    if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::invalid(
            "save_sharded",
            format!("tensor name `{}` appears twice", w[0].0),
        ));
    }
    let mut groups: Vec<Vec<(&str, &Tensor)>> = Vec::new();
    let mut current_bytes = 0usize;
    let mut total = 0usize;
    for (name, t) in sorted {
        let bytes = t.elem_count() * t.dtype().size_in_bytes();
        total += bytes;
        match groups.last_mut() {
            Some(g) if current_bytes + bytes <= max_shard_bytes => {
                g.push((name, t));
                current_bytes += bytes;
            }
            _ => {
                groups.push(vec![(name, t)]);
                current_bytes = bytes;
            }
        }
    }
    if groups.is_empty() {
        groups.push(Vec::new());
    }
    let n = groups.len();
    let mut weight_map = serde_json::Map::new();
    for (i, group) in groups.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        save(group, dir.join(&file), Some(meta))?;
        for (name, _) in group {
            weight_map.insert((*name).to_string(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({
        "metadata": { "total_size": total },
        "weight_map": weight_map,
    });
    let index_path = dir.join(INDEX_FILE_NAME);
    let text = serde_json::to_vec_pretty(&index)
        .map_err(|e| st_err(&index_path, format!("cannot serialize index: {e}")))?;
    write_atomic(&index_path, |f| f.write_all(&text))?;
    Ok(index_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance(b"", b"abc"), 3);
        assert_eq!(edit_distance(b"kitten", b"sitting"), 3);
        assert_eq!(edit_distance(b"layer", b"layers"), 1);
    }

    #[test]
    fn nearest_prefers_close_keys() {
        let keys = [
            "encoder.layers.0.attn.q.weight",
            "encoder.layers.0.attn.k.weight",
            "decoder.layers.0.attn.q.weight",
            "embeddings.weight",
        ];
        let near = nearest_keys("encoder.layer.0.attn.q.weight", keys, 2);
        assert_eq!(near[0], "encoder.layers.0.attn.q.weight");
    }

    #[test]
    fn tiny_inputs_do_not_panic() {
        for len in 0..16 {
            let bytes = vec![0xffu8; len];
            assert!(parse(&bytes, Path::new("x")).is_err());
        }
        // Header length 2, header "{}": a valid empty file.
        let mut ok = 2u64.to_le_bytes().to_vec();
        ok.extend_from_slice(b"{}");
        assert!(parse(&ok, Path::new("x")).is_ok());
    }
}

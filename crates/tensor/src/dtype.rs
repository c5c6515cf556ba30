//! Element types.

use half::{bf16, f16};

/// The element type of a tensor.
///
/// Half types (`F16`, `BF16`) are stored in half precision and computed in `f32` registers.
/// `F64` exists for gradient checks on the CPU; GPU backends may reject it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    U32,
}

impl DType {
    /// Every dtype, in a fixed order (useful for tests).
    pub const ALL: [DType; 5] = [DType::F16, DType::BF16, DType::F32, DType::F64, DType::U32];

    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::U32 => 4,
            DType::F64 => 8,
        }
    }

    /// True for the floating-point dtypes.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::U32)
    }

    /// The name used in safetensors headers (`"F32"`, `"BF16"`, ...).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::U32 => "U32",
        }
    }

    /// The bit pattern of `value` converted to this dtype exactly as the CPU backend converts it
    /// (correct rounding for floats; u32 truncates and saturates), in the low 16 bits for the
    /// half types; `None` for F64, whose 64 bits do not fit. GPU backends fill buffers with it.
    pub fn bits_of(self, value: f64) -> Option<u32> {
        Some(match self {
            DType::F16 => u32::from(<f16 as WithDType>::from_f64(value).to_bits()),
            DType::BF16 => u32::from(<bf16 as WithDType>::from_f64(value).to_bits()),
            DType::F32 => <f32 as WithDType>::from_f64(value).to_bits(),
            DType::U32 => <u32 as WithDType>::from_f64(value),
            DType::F64 => return None,
        })
    }

    /// The dtype in which arithmetic on this dtype is carried out on the CPU.
    pub fn compute_dtype(self) -> DType {
        match self {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::U32 => "u32",
        })
    }
}

/// A Rust type that can be the element of a tensor.
pub trait WithDType:
    bytemuck::Pod + Copy + Send + Sync + std::fmt::Debug + PartialOrd + 'static
{
    const DTYPE: DType;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    /// Wraps a borrowed slice as host data for upload.
    fn host_slice(data: &[Self]) -> HostSlice<'_>;
    /// Unwraps host data of this type.
    fn from_host_vec(v: HostVec) -> Option<Vec<Self>>;
    /// Wraps owned data as host data.
    fn into_host_vec(v: Vec<Self>) -> HostVec;
}

macro_rules! with_dtype {
    ($ty:ty, $variant:ident, $to:expr, $from:expr) => {
        impl WithDType for $ty {
            const DTYPE: DType = DType::$variant;
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            fn host_slice(data: &[Self]) -> HostSlice<'_> {
                HostSlice::$variant(data)
            }
            fn from_host_vec(v: HostVec) -> Option<Vec<Self>> {
                match v {
                    HostVec::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn into_host_vec(v: Vec<Self>) -> HostVec {
                HostVec::$variant(v)
            }
        }
    };
}

// `half`'s `from_f64` drops the low 32 bits of the f64 before rounding, which turns near-ties
// into ties (`1 + 2^-11 + 2^-40` became `1` in f16, and so did the f32 `1 + 2^-11 + 2^-23`).
// Rounding to f32 with round-to-odd first keeps enough information for the second, correct
// rounding to the narrow type.
with_dtype!(f16, F16, |x: f16| x.to_f64(), |v: f64| f16::from_f32(
    f64_to_f32_round_odd(v)
));
with_dtype!(bf16, BF16, |x: bf16| x.to_f64(), |v: f64| bf16::from_f32(
    f64_to_f32_round_odd(v)
));
with_dtype!(f32, F32, |x: f32| x as f64, |v: f64| v as f32);
with_dtype!(f64, F64, |x: f64| x, |v: f64| v);
with_dtype!(u32, U32, |x: u32| x as f64, |v: f64| v as u32);

/// `v` as an f32 rounded to odd: truncated toward zero, with the last bit set when inexact. A
/// later round-to-nearest to any format with at least two fewer significand bits (f16, bf16)
/// then gives the correctly rounded result of `v`.
fn f64_to_f32_round_odd(v: f64) -> f32 {
    let f = v as f32;
    if !v.is_finite() || f as f64 == v {
        return f;
    }
    let mut bits = f.to_bits();
    if (f as f64).abs() > v.abs() {
        // Step the magnitude one ulp toward zero (from infinity, to the largest finite f32).
        bits -= 1;
    }
    f32::from_bits(bits | 1)
}

/// Borrowed host data of one dtype, handed to a backend for upload.
#[derive(Clone, Copy, Debug)]
pub enum HostSlice<'a> {
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    U32(&'a [u32]),
}

/// Owned host data of one dtype, returned by a backend's download.
#[derive(Clone, Debug, PartialEq)]
pub enum HostVec {
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    U32(Vec<u32>),
}

macro_rules! host_dispatch {
    ($value:expr, $v:ident => $body:expr) => {
        match $value {
            Self::F16($v) => $body,
            Self::BF16($v) => $body,
            Self::F32($v) => $body,
            Self::F64($v) => $body,
            Self::U32($v) => $body,
        }
    };
}

impl HostSlice<'_> {
    pub fn dtype(&self) -> DType {
        match self {
            HostSlice::F16(_) => DType::F16,
            HostSlice::BF16(_) => DType::BF16,
            HostSlice::F32(_) => DType::F32,
            HostSlice::F64(_) => DType::F64,
            HostSlice::U32(_) => DType::U32,
        }
    }

    pub fn len(&self) -> usize {
        host_dispatch!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw little-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        host_dispatch!(self, v => bytemuck::cast_slice(v))
    }
}

impl HostVec {
    pub fn dtype(&self) -> DType {
        self.as_slice().dtype()
    }

    pub fn len(&self) -> usize {
        host_dispatch!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice(&self) -> HostSlice<'_> {
        match self {
            HostVec::F16(v) => HostSlice::F16(v),
            HostVec::BF16(v) => HostSlice::BF16(v),
            HostVec::F32(v) => HostSlice::F32(v),
            HostVec::F64(v) => HostSlice::F64(v),
            HostVec::U32(v) => HostSlice::U32(v),
        }
    }

    /// Every element converted to `f64` (exact for all dtypes but very large u32).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        host_dispatch!(self, v => v.iter().map(|x| x.to_f64()).collect())
    }

    /// `data` converted to `dtype` element by element (rounding to nearest; u32 truncates and
    /// saturates), as a cast on the CPU would.
    pub fn from_f64_slice(dtype: DType, data: &[f64]) -> HostVec {
        fn conv<T: WithDType>(data: &[f64]) -> Vec<T> {
            data.iter().map(|&v| T::from_f64(v)).collect()
        }
        match dtype {
            DType::F16 => HostVec::F16(conv(data)),
            DType::BF16 => HostVec::BF16(conv(data)),
            DType::F32 => HostVec::F32(conv(data)),
            DType::F64 => HostVec::F64(data.to_vec()),
            DType::U32 => HostVec::U32(conv(data)),
        }
    }

    /// Decodes little-endian bytes of `dtype` into host data; the length must be a multiple of
    /// the element size.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Option<HostVec> {
        if !bytes.len().is_multiple_of(dtype.size_in_bytes()) {
            return None;
        }
        fn read<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
            // pod_collect_to_vec copies, so the source alignment does not matter.
            bytemuck::pod_collect_to_vec(bytes)
        }
        Some(match dtype {
            DType::F16 => HostVec::F16(read(bytes)),
            DType::BF16 => HostVec::BF16(read(bytes)),
            DType::F32 => HostVec::F32(read(bytes)),
            DType::F64 => HostVec::F64(read(bytes)),
            DType::U32 => HostVec::U32(read(bytes)),
        })
    }
}

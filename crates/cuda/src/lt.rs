//! `linear` as one cuBLASLt product with the bias added in the product's epilogue (the kernel
//! candidate `linear-lt`, see [`crate::KernelCandidates`]).
//!
//! The default `linear` writes the bias into every output row first and lets cuBLAS
//! accumulate onto them (beta = 1): one extra write and one extra read of the whole output.
//! Here cuBLASLt adds the bias while it stores the product (`CUBLASLT_EPILOGUE_BIAS`), so the
//! output is written once and never read.
//!
//! Row-major `y (M, N) = x (M, K) W^T + b` is the column-major `y^T (N, M) = W x^T`: cuBLASLt's
//! A is `W` (stored column-major as `K x N` with the weight's row stride, read transposed),
//! its B is `x` (column-major `K x M` with x's row stride, read as is), and D is `y^T` with
//! leading dimension N, i.e. `y` row-major. The epilogue adds `b[i]` to row i of D, one value
//! per output feature.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use glimpse_tensor::{DType, Error, Result, Tensor};

use crate::backend::CudaBackend;
use crate::storage::{cuda_storage, with_data};

/// The workspace cuBLASLt may use per product (its guidance for Hopper; older GPUs use less).
const WORKSPACE_BYTES: usize = 32 << 20;

/// What the algorithm heuristic depends on: dtype, compute type (TF32 or not), m, n, k, the
/// leading dimensions of A and B, and the alignments of A, B and D.
type PlanKey = (DType, bool, [usize; 5], [u32; 3]);

/// A cuBLASLt handle, its workspace and the algorithms already chosen (the heuristic costs
/// tens of microseconds of host time; a model asks for the same few shapes again and again),
/// created once per device on first use.
pub(crate) struct LtHandle {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    /// `None`: cuBLASLt has no algorithm for that key (the default `linear` runs).
    plans: HashMap<PlanKey, Option<sys::cublasLtMatmulAlgo_t>>,
}

// SAFETY: the handle is a pointer to cuBLASLt's context, which cuBLASLt allows to be used from
// any thread as long as calls do not overlap; the backend keeps it behind a Mutex.
unsafe impl Send for LtHandle {}

impl LtHandle {
    pub(crate) fn new(be: &CudaBackend) -> std::result::Result<LtHandle, String> {
        let handle =
            lt::create_handle().map_err(|e| format!("creating the cuBLASLt handle: {e:?}"))?;
        // SAFETY: the allocation is never read before cuBLASLt writes it (it is scratch).
        let workspace = unsafe { be.stream().alloc::<u8>(WORKSPACE_BYTES) };
        match workspace {
            Ok(workspace) => Ok(LtHandle {
                handle,
                workspace,
                plans: HashMap::new(),
            }),
            Err(e) => {
                // SAFETY: the handle was just created and is not used anywhere else.
                let _ = unsafe { lt::destroy_handle(handle) };
                Err(format!("allocating the cuBLASLt workspace: {e:?}"))
            }
        }
    }
}

impl Drop for LtHandle {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `new` and is destroyed exactly once, here.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// Destroys a cuBLASLt descriptor when dropped, whatever path leaves the function.
struct Owned<T: Copy>(T, unsafe fn(T) -> std::result::Result<(), lt::CublasError>);

impl<T: Copy> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: each `Owned` holds a descriptor created in `linear` and destroys it once.
        let _ = unsafe { (self.1)(self.0) };
    }
}

fn lt_err(what: &str, e: lt::CublasError) -> Error {
    Error::backend("cuda", format!("cuBLASLt {what}: {e:?}"))
}

/// A descriptor attribute's value as cuBLASLt's setters take it: its address and size in bytes
/// (so the size always matches the value's type).
fn attribute<T>(value: &T) -> (*const c_void, usize) {
    ((value as *const T).cast(), std::mem::size_of::<T>())
}

/// Reports, once per process, why this path stepped aside (the default `linear` then runs).
fn step_aside(why: &str) -> Result<Option<Tensor>> {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!("glimpse-cuda: linear-lt unavailable, using the default linear: {why}");
    }
    Ok(None)
}

/// The leading dimension of a row-major `rows x cols` matrix with strides `(rs, cs)` read as
/// the column-major `cols x rows` as is: the matrix product's own reading
/// ([`crate::matmul::operand`]) when it needs no transpose.
fn leading_dim(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    match crate::matmul::operand(rows, cols, rs, cs) {
        Some((cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N, ld)) => Some(ld),
        _ => None,
    }
}

/// The largest power of two (up to 256) dividing a device address: what the heuristic may
/// assume of the pointer's alignment.
fn alignment(address: u64) -> u32 {
    if address == 0 {
        256
    } else {
        1u32 << address.trailing_zeros().min(8)
    }
}

/// `x (M, K) @ weight (N, K)^T + bias (N)` through cuBLASLt. `Ok(None)` when this path does
/// not take the inputs (operands whose rows are not unit-stride, empty sizes, sizes past
/// cuBLASLt's integers, no algorithm for the shapes) or cuBLASLt cannot be used (not
/// installed, its handle or heuristic failing): the caller then uses the default. Errors of
/// the product itself are errors.
pub(crate) fn linear(
    be: &CudaBackend,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<Option<Tensor>> {
    let dtype = x.dtype();
    let (data_type, elem) = match dtype {
        DType::F32 => (sys::cudaDataType::CUDA_R_32F, 4usize),
        DType::F16 => (sys::cudaDataType::CUDA_R_16F, 2),
        DType::BF16 => (sys::cudaDataType::CUDA_R_16BF, 2),
        DType::U32 | DType::F64 => return Ok(None),
    };
    if weight.dtype() != dtype || bias.dtype() != dtype || x.rank() != 2 || weight.rank() != 2 {
        return Ok(None);
    }
    let (m, k, n) = (x.dims()[0], x.dims()[1], weight.dims()[0]);
    if m == 0 || n == 0 || k == 0 || weight.dims()[1] != k || bias.dims() != [n] {
        return Ok(None);
    }
    let (xs, ws) = (x.layout().strides(), weight.layout().strides());
    let (Some(ld_x), Some(ld_w)) = (
        leading_dim(m, k, xs[0], xs[1]),
        leading_dim(n, k, ws[0], ws[1]),
    ) else {
        return Ok(None);
    };
    if [m, n, k, ld_x, ld_w].iter().any(|&v| v > i32::MAX as usize) {
        return Ok(None);
    }
    // The epilogue reads the bias as a unit-stride vector from a 16-byte aligned address; a
    // fresh copy is both (allocations are 256-byte aligned).
    let bias_ok = bias.layout().strides()[0] == 1 || n == 1;
    let bias_addr = |b: &Tensor| -> Result<u64> {
        let s = cuda_storage(&**b.storage())?;
        let (ptr, _sync) = with_data!(s.data(), d => d.device_ptr(be.stream()));
        Ok(ptr + (b.layout().offset() * elem) as u64)
    };
    let bias = if bias_ok && bias_addr(bias)? % 16 == 0 {
        bias.clone()
    } else {
        bias.copy()?
    };

    let compute = if dtype == DType::F32 && be.allow_tf32() {
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
    };
    let mut out = be.alloc_data(dtype, m * n)?;
    let mut guard = match be.lt() {
        Ok(guard) => guard,
        Err(e) => return step_aside(&e.to_string()),
    };
    let h = &mut *guard;
    let stream = be.stream();
    let (xst, wst, bst) = (
        cuda_storage(&**x.storage())?,
        cuda_storage(&**weight.storage())?,
        cuda_storage(&**bias.storage())?,
    );
    let x_ptr = with_data!(xst.data(), s => s.device_ptr(stream));
    let w_ptr = with_data!(wst.data(), s => s.device_ptr(stream));
    let b_ptr = with_data!(bst.data(), s => s.device_ptr(stream));
    let d_ptr = with_data!(&mut out, s => s.device_ptr_mut(stream));
    let ws_ptr = h.workspace.device_ptr_mut(stream);
    let x_at = x_ptr.0 + (x.layout().offset() * elem) as u64;
    let w_at = w_ptr.0 + (weight.layout().offset() * elem) as u64;
    let b_at: u64 = b_ptr.0 + (bias.layout().offset() * elem) as u64;
    let d_at = d_ptr.0;

    let desc = Owned(
        lt::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F)
            .map_err(|e| lt_err("matmul descriptor", e))?,
        lt::destroy_matmul_desc,
    );
    use sys::cublasLtMatmulDescAttributes_t as D;
    let (op_t, op_n) = (
        cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T as i32,
        cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N as i32,
    );
    let epilogue = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS as u32;
    for (attr, (value, size)) in [
        (D::CUBLASLT_MATMUL_DESC_TRANSA, attribute(&op_t)),
        (D::CUBLASLT_MATMUL_DESC_TRANSB, attribute(&op_n)),
        (D::CUBLASLT_MATMUL_DESC_EPILOGUE, attribute(&epilogue)),
        (D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, attribute(&b_at)),
    ] {
        // SAFETY: `desc` is a live descriptor; `value` points at `size` bytes of the type the
        // attribute takes (i32 for transposes, u32 for the epilogue, a device address for the
        // bias), alive for the call (cuBLASLt copies the value).
        unsafe { lt::set_matmul_desc_attribute(desc.0, attr, value, size) }
            .map_err(|e| lt_err("matmul descriptor attribute", e))?;
    }

    let layout = |rows: usize, cols: usize, ld: usize| -> Result<Owned<_>> {
        Ok(Owned(
            lt::create_matrix_layout(data_type, rows as u64, cols as u64, ld as i64)
                .map_err(|e| lt_err("matrix layout", e))?,
            lt::destroy_matrix_layout,
        ))
    };
    let a_layout = layout(k, n, ld_w)?; // W as stored: K x N column-major, read transposed
    let b_layout = layout(k, m, ld_x)?; // x as stored: K x M column-major
    let d_layout = layout(n, m, n)?; // y^T: N x M column-major = y row-major

    let aligned = [alignment(w_at), alignment(x_at), alignment(d_at)];
    let key: PlanKey = (
        dtype,
        compute == sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        [m, n, k, ld_x, ld_w],
        aligned,
    );
    let algo = match h.plans.get(&key) {
        Some(&plan) => plan,
        None => {
            // The heuristic's preferences, needed only for a new key.
            let pref = Owned(
                lt::create_matmul_pref().map_err(|e| lt_err("preference", e))?,
                lt::destroy_matmul_pref,
            );
            use sys::cublasLtMatmulPreferenceAttributes_t as P;
            let workspace = WORKSPACE_BYTES as u64;
            // Only algorithms that work at the operands' actual alignment (the default
            // assumes 256).
            let [a_w, a_x, a_d] = &aligned;
            for (attr, (value, size)) in [
                (
                    P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    attribute(&workspace),
                ),
                (
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    attribute(a_w),
                ),
                (
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    attribute(a_x),
                ),
                (
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    attribute(a_d),
                ),
                (
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                    attribute(a_d),
                ),
            ] {
                // SAFETY: `pref` is live; `value` points at `size` bytes of the attribute's
                // type (u64 for the workspace size, u32 for alignments), copied by cuBLASLt.
                unsafe { lt::set_matmul_pref_attribute(pref.0, attr, value, size) }
                    .map_err(|e| lt_err("preference attribute", e))?;
            }
            // SAFETY: every descriptor is live; the layouts describe the buffers as above.
            let heuristic = unsafe {
                lt::get_matmul_algo_heuristic(
                    h.handle, desc.0, a_layout.0, b_layout.0, d_layout.0, d_layout.0, pref.0,
                )
            };
            let plan = match heuristic {
                Ok(found) => Some(found.algo),
                Err(lt::CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED)) => None,
                Err(e) => return step_aside(&format!("algorithm heuristic: {e:?}")),
            };
            h.plans.insert(key, plan);
            plan
        }
    };
    let Some(algo) = algo else {
        return Ok(None);
    };
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: D (n x m, ld n) = op_T(A) B + bias with f32 host scalars (the descriptor's scale
    // type). A is the weight view (K x N column-major with ld_w: every element read lies on
    // the view, whose rows are unit-stride), B the x view likewise (ld_x), D (and C, unread as
    // beta = 0) the fresh m * n output; the bias is a unit-stride, 16-byte aligned vector of n
    // elements of the same dtype; the algorithm was chosen for the same dtype, sizes, leading
    // dimensions and alignments (the plan key), and the workspace holds WORKSPACE_BYTES.
    // Everything runs on the backend's one stream.
    unsafe {
        lt::matmul(
            h.handle,
            desc.0,
            (&alpha as *const f32).cast(),
            (&beta as *const f32).cast(),
            w_at as *const c_void,
            a_layout.0,
            x_at as *const c_void,
            b_layout.0,
            d_at as *const c_void,
            d_layout.0,
            d_at as *mut c_void,
            d_layout.0,
            &algo,
            ws_ptr.0 as *mut c_void,
            WORKSPACE_BYTES,
            stream.cu_stream() as sys::cudaStream_t,
        )
    }
    .map_err(|e| lt_err("matmul", e))?;
    drop((x_ptr, w_ptr, b_ptr, d_ptr, ws_ptr));
    drop(guard);
    be.check_launch("cublasLtMatmul", Ok(()))?;
    crate::backend::count_linear_lt_product();
    crate::storage::CudaStorage::new(out, m * n)
        .into_tensor([m, n], x)
        .map(Some)
}

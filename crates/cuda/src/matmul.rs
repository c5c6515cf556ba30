//! Batched matrix products through cuBLAS (`cublasGemmStridedBatchedEx`).
//!
//! Row-major `C (m, n) = A (m, k) B (k, n)` is computed as the column-major product
//! `C^T = B^T A^T`: cuBLAS's first operand is `B`, its second `A`, and `C^T` is a column-major
//! `(n, m)` matrix with leading dimension `n`, which is `C` row-major. A row-major operand
//! (unit column stride) is its own transpose in column-major terms (`op = N`, leading
//! dimension = row stride); a column-major one (unit row stride, e.g. a transposed view) is
//! read with `op = T` (leading dimension = column stride). Any other matrix (broadcast rows,
//! gaps in both directions) is copied to a contiguous buffer first.
//!
//! Batch dimensions (broadcast ones too: cuBLAS accepts a zero batch stride) are merged; the
//! last merged one becomes cuBLAS's strided batch and the others are looped over on the host.
//!
//! f32 runs with `CUBLAS_COMPUTE_32F` (no TF32 unless allowed, see
//! [`CudaBackend::set_allow_tf32`]); f16 and bf16 use f32 compute and are rounded once when
//! stored, as the CPU backend.

use std::ffi::{c_int, c_longlong, c_void};

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::DevicePtr;
use glimpse_tensor::{BackendStorage, DType, Error, Layout, Result};

use crate::backend::{CudaBackend, unsupported};
use crate::klayout::contiguous_strides;
use crate::storage::{CudaStorage, with_data};
use glimpse_tensor::merge::Merged;

/// How cuBLAS reads one row-major operand of `rows x cols` with strides `(rs, cs)`: whether it
/// transposes, and the leading dimension. `None` if neither reading works.
pub(crate) fn operand(
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Option<(cublasOperation_t, usize)> {
    // Row-major: unit column stride; X^T is column-major (cols x rows) with ld = rs.
    let ld = if rows <= 1 { cols.max(1) } else { rs };
    if (cols <= 1 || cs == 1) && ld >= cols.max(1) {
        return Some((cublasOperation_t::CUBLAS_OP_N, ld));
    }
    // Column-major: unit row stride; X is column-major (rows x cols) with ld = cs.
    let ld = if cols <= 1 { rows.max(1) } else { cs };
    if (rows <= 1 || rs == 1) && ld >= rows.max(1) {
        return Some((cublasOperation_t::CUBLAS_OP_T, ld));
    }
    None
}

fn int(what: &str, v: usize) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| {
        Error::backend(
            "cuda",
            format!("matmul: {what} = {v} exceeds cuBLAS's 32-bit arguments"),
        )
    })
}

/// Offsets (in elements) of every position of `dims` with the given per-view `strides`.
fn positions(dims: &[usize], strides: &[&[usize]]) -> Vec<Vec<usize>> {
    let total: usize = dims.iter().product();
    (0..total)
        .map(|mut flat| {
            let mut offs = vec![0; strides.len()];
            for d in (0..dims.len()).rev() {
                let c = flat % dims[d];
                flat /= dims[d];
                for (o, s) in offs.iter_mut().zip(strides) {
                    *o += c * s[d];
                }
            }
            offs
        })
        .collect()
}

/// `lhs (batch.., m, k) @ rhs (batch.., k, n)` with equal batch dims (zero strides allowed).
pub(crate) fn matmul(
    be: &CudaBackend,
    lhs: &CudaStorage,
    ll: &Layout,
    rhs: &CudaStorage,
    rl: &Layout,
) -> Result<CudaStorage> {
    matmul_into(be, lhs, ll, rhs, rl, None)
}

/// [`matmul`], accumulating onto `init` when given: a contiguous `(batch.., m, n)` buffer of
/// the operands' dtype that the product is added to (cuBLAS's beta = 1), as `linear` uses it
/// to start from the bias rows.
pub(crate) fn matmul_into(
    be: &CudaBackend,
    lhs: &CudaStorage,
    ll: &Layout,
    rhs: &CudaStorage,
    rl: &Layout,
    init: Option<CudaStorage>,
) -> Result<CudaStorage> {
    let dtype = lhs.dtype();
    if rhs.dtype() != dtype {
        return Err(Error::backend(
            "cuda",
            "matmul: operands of different dtypes reached the backend",
        ));
    }
    let (data_type, elem) = match dtype {
        DType::F32 => (cudaDataType::CUDA_R_32F, 4usize),
        DType::F16 => (cudaDataType::CUDA_R_16F, 2),
        DType::BF16 => (cudaDataType::CUDA_R_16BF, 2),
        DType::U32 | DType::F64 => return Err(unsupported("matmul", dtype)),
    };
    let r = ll.dims().len();
    if r < 2 || rl.dims().len() != r || ll.dims()[..r - 2] != rl.dims()[..r - 2] {
        return Err(Error::backend(
            "cuda",
            format!(
                "matmul: layouts {:?} and {:?} do not fit",
                ll.dims(),
                rl.dims()
            ),
        ));
    }
    let (m, k, n) = (ll.dims()[r - 2], ll.dims()[r - 1], rl.dims()[r - 1]);
    let batch_dims = &ll.dims()[..r - 2];
    let batches: usize = batch_dims.iter().product();
    let total = batches * m * n;
    let accumulate = init.is_some();
    let mut out = match init {
        Some(c) if c.len() == total && c.dtype() == dtype => c.into_data(),
        Some(_) => {
            return Err(Error::backend(
                "cuda",
                "matmul: the buffer to accumulate onto does not fit the product",
            ));
        }
        None => be.alloc_data(dtype, total)?,
    };
    if total == 0 {
        return Ok(CudaStorage::new(out, total));
    }
    if k == 0 {
        if !accumulate {
            be.fill(&mut out, total, 0)?;
        }
        return Ok(CudaStorage::new(out, total));
    }

    // Operands cuBLAS can read in place, or contiguous copies.
    let prepare = |s: &CudaStorage,
                   l: &Layout,
                   rows: usize,
                   cols: usize|
     -> Result<(Option<CudaStorage>, Layout)> {
        let st = l.strides();
        if operand(rows, cols, st[r - 2], st[r - 1]).is_some() {
            Ok((None, l.clone()))
        } else {
            Ok((
                Some(be.copy_contiguous(s, l)?),
                Layout::contiguous(l.shape().clone()),
            ))
        }
    };
    let (a_copy, al) = prepare(lhs, ll, m, k)?;
    let (b_copy, bl) = prepare(rhs, rl, k, n)?;
    let a = a_copy.as_ref().unwrap_or(lhs);
    let b = b_copy.as_ref().unwrap_or(rhs);
    let (op_a, ld_a) = operand(m, k, al.strides()[r - 2], al.strides()[r - 1]).expect("prepared");
    let (op_b, ld_b) = operand(k, n, bl.strides()[r - 2], bl.strides()[r - 1]).expect("prepared");

    // Batch dimensions merged over A, B and the contiguous output.
    let mut c_strides = contiguous_strides(batch_dims);
    for s in &mut c_strides {
        *s *= m * n;
    }
    let merged = Merged::new(
        batch_dims,
        &[&al.strides()[..r - 2], &bl.strides()[..r - 2], &c_strides],
        None,
    );
    let (count, stride_a, stride_b, stride_c, outer_dims, outer_strides) =
        match merged.dims.split_last() {
            None => (1, 0, 0, m * n, Vec::new(), vec![Vec::new(); 3]),
            Some((&last, rest)) => {
                let q = rest.len();
                (
                    last,
                    merged.strides[0][q],
                    merged.strides[1][q],
                    merged.strides[2][q],
                    rest.to_vec(),
                    merged.strides.iter().map(|s| s[..q].to_vec()).collect(),
                )
            }
        };
    let outer = positions(
        &outer_dims,
        &[&outer_strides[0], &outer_strides[1], &outer_strides[2]],
    );

    let compute = if dtype == DType::F32 && be.allow_tf32() {
        cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        cublasComputeType_t::CUBLAS_COMPUTE_32F
    };
    let (cm, cn, ck) = (int("n", n)?, int("m", m)?, int("k", k)?);
    let (lda, ldb, ldc) = (int("ld", ld_b)?, int("ld", ld_a)?, int("n", n)?);
    let batch_count = int("batch", count)?;
    let (sa, sb, sc) = (
        stride_b as c_longlong,
        stride_a as c_longlong,
        stride_c as c_longlong,
    );
    let alpha = 1.0f32;
    let beta = if accumulate { 1.0f32 } else { 0.0f32 };

    let blas = be.blas()?;
    let stream = be.stream();
    let a_ptr = with_data!(a.data(), s => s.device_ptr(stream));
    let b_ptr = with_data!(b.data(), s => s.device_ptr(stream));
    let c_ptr = with_data!(&mut out, s => cudarc::driver::DevicePtrMut::device_ptr_mut(s, stream));
    for offs in &outer {
        let a_at = a_ptr.0 + ((al.offset() + offs[0]) * elem) as u64;
        let b_at = b_ptr.0 + ((bl.offset() + offs[1]) * elem) as u64;
        let c_at = c_ptr.0 + (offs[2] * elem) as u64;
        // SAFETY: cuBLAS computes C^T (n x m, ldc = n) = op(B^T view) op(A^T view) with host
        // scalars alpha/beta of the f32 compute type. The pointers are device addresses inside
        // the live buffers of A, B (checked views, or contiguous copies alive until the end of
        // this function) and the fresh output (`batches * m * n` elements); `operand` chose
        // each op and leading dimension so that every element read lies on the view, the batch
        // strides come from the merged batch dims, and the data types match the buffers.
        let status = unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                *blas.handle(),
                op_b,
                op_a,
                cm,
                cn,
                ck,
                &alpha as *const f32 as *const c_void,
                b_at as *const c_void,
                data_type,
                lda,
                sa,
                a_at as *const c_void,
                data_type,
                ldb,
                sb,
                &beta as *const f32 as *const c_void,
                c_at as *mut c_void,
                data_type,
                ldc,
                sc,
                batch_count,
                compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        status.map_err(|e| Error::backend("cuda", format!("cublasGemmStridedBatchedEx: {e:?}")))?;
    }
    drop((a_ptr, b_ptr, c_ptr));
    be.check_launch("cublasGemmStridedBatchedEx", Ok(()))?;
    Ok(CudaStorage::new(out, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operands_are_read_in_place_or_copied() {
        use cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};
        // contiguous (3 x 4)
        assert_eq!(operand(3, 4, 4, 1), Some((N, 4)));
        // transposed view of a contiguous (4 x 3)
        assert_eq!(operand(3, 4, 1, 3), Some((T, 3)));
        // narrowed columns: row stride larger than cols
        assert_eq!(operand(3, 4, 10, 1), Some((N, 10)));
        // broadcast rows and gaps in both directions need a copy
        assert_eq!(operand(3, 4, 0, 1), None);
        assert_eq!(operand(3, 4, 8, 2), None);
        // vectors: any stride of a size-1 dim
        assert_eq!(operand(1, 4, 99, 1), Some((N, 4)));
        assert_eq!(operand(4, 1, 1, 99), Some((N, 1)));
        assert_eq!(operand(4, 1, 0, 99), None);
        assert_eq!(operand(4, 3, 1, 4), Some((T, 4)));
        assert_eq!(operand(4, 1, 7, 0), Some((N, 7)));
    }
}

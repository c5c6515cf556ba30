//! [`CpuBackend`]: the primitives, and fused kernels overriding the default compositions.

use glimpse_tensor::{
    AttentionGrads, AttentionOptions, AttentionOutput, Backend, BackendStorage, BinaryOp,
    ContrastiveGrads, ContrastiveOutput, DType, DeviceLocation, Error, GeluKind, HostSlice,
    HostVec, Layout, PatchEmbedOptions, ReduceOp, Result, SharedBytes, Storage, Tensor, UnaryOp,
    compose,
};
use half::{bf16, f16};
use std::sync::Arc;

use crate::fused::{self, kernel_dtype};
use crate::ops;
use crate::random;
use crate::storage::CpuStorage;

/// The CPU backend. Stateless: work runs on the global rayon pool.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

/// Downcasts a storage handed to the CPU backend.
pub fn cpu_storage(s: &dyn BackendStorage) -> Result<&CpuStorage> {
    s.as_any()
        .downcast_ref::<CpuStorage>()
        .ok_or_else(|| Error::backend("cpu", format!("got a storage of another backend ({s:?})")))
}

fn wrap(s: CpuStorage) -> Storage {
    Arc::new(s)
}

impl Backend for CpuBackend {
    fn location(&self) -> DeviceLocation {
        DeviceLocation {
            backend: "cpu",
            ordinal: 0,
        }
    }

    fn supports_dtype(&self, _dtype: DType) -> bool {
        true
    }

    fn full(&self, dtype: DType, len: usize, value: f64) -> Result<Storage> {
        Ok(wrap(ops::full(dtype, len, value)))
    }

    fn upload(&self, data: HostSlice<'_>) -> Result<Storage> {
        Ok(wrap(CpuStorage::from_host(data)))
    }

    fn upload_bytes(&self, dtype: DType, bytes: SharedBytes) -> Result<Storage> {
        let len = bytes.bytes().len();
        CpuStorage::from_bytes(dtype, bytes)
            .map(wrap)
            .ok_or_else(|| {
                Error::invalid(
                    "upload_bytes",
                    format!("{len} bytes is not a whole number of {dtype} elements"),
                )
            })
    }

    fn download(&self, src: &dyn BackendStorage, layout: &Layout) -> Result<HostVec> {
        Ok(ops::download(cpu_storage(src)?, layout))
    }

    fn rand_uniform(
        &self,
        dtype: DType,
        len: usize,
        low: f64,
        high: f64,
        seed: u64,
    ) -> Result<Storage> {
        Ok(wrap(match dtype {
            DType::F16 => ops::storage_from_vec(random::uniform::<f16>(len, low, high, seed)),
            DType::BF16 => ops::storage_from_vec(random::uniform::<bf16>(len, low, high, seed)),
            DType::F32 => ops::storage_from_vec(random::uniform::<f32>(len, low, high, seed)),
            DType::F64 => ops::storage_from_vec(random::uniform::<f64>(len, low, high, seed)),
            DType::U32 => return Err(Error::invalid("rand_uniform", "u32 is not a float dtype")),
        }))
    }

    fn rand_normal(
        &self,
        dtype: DType,
        len: usize,
        mean: f64,
        std: f64,
        seed: u64,
    ) -> Result<Storage> {
        Ok(wrap(match dtype {
            DType::F16 => ops::storage_from_vec(random::normal::<f16>(len, mean, std, seed)),
            DType::BF16 => ops::storage_from_vec(random::normal::<bf16>(len, mean, std, seed)),
            DType::F32 => ops::storage_from_vec(random::normal::<f32>(len, mean, std, seed)),
            DType::F64 => ops::storage_from_vec(random::normal::<f64>(len, mean, std, seed)),
            DType::U32 => return Err(Error::invalid("rand_normal", "u32 is not a float dtype")),
        }))
    }

    fn copy_strided(&self, src: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        Ok(wrap(ops::copy_strided(cpu_storage(src)?, layout)))
    }

    fn concat(&self, parts: &[(&dyn BackendStorage, &Layout)], dim: usize) -> Result<Storage> {
        let parts = parts
            .iter()
            .map(|(s, l)| Ok((cpu_storage(*s)?, *l)))
            .collect::<Result<Vec<_>>>()?;
        Ok(wrap(ops::concat(&parts, dim)?))
    }

    fn cast(&self, src: &dyn BackendStorage, layout: &Layout, dtype: DType) -> Result<Storage> {
        Ok(wrap(ops::cast(cpu_storage(src)?, layout, dtype)))
    }

    fn unary(&self, op: UnaryOp, src: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        Ok(wrap(ops::unary(op, cpu_storage(src)?, layout)?))
    }

    fn binary(
        &self,
        op: BinaryOp,
        lhs: &dyn BackendStorage,
        lhs_layout: &Layout,
        rhs: &dyn BackendStorage,
        rhs_layout: &Layout,
    ) -> Result<Storage> {
        Ok(wrap(ops::binary(
            op,
            cpu_storage(lhs)?,
            lhs_layout,
            cpu_storage(rhs)?,
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
        Ok(wrap(ops::where_cond(
            cpu_storage(cond)?,
            cond_layout,
            cpu_storage(on_true)?,
            true_layout,
            cpu_storage(on_false)?,
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
        Ok(wrap(ops::reduce(op, cpu_storage(src)?, layout, dim)?))
    }

    fn matmul(
        &self,
        lhs: &dyn BackendStorage,
        lhs_layout: &Layout,
        rhs: &dyn BackendStorage,
        rhs_layout: &Layout,
    ) -> Result<Storage> {
        Ok(wrap(ops::matmul(
            cpu_storage(lhs)?,
            lhs_layout,
            cpu_storage(rhs)?,
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
        Ok(wrap(ops::index_select(
            cpu_storage(src)?,
            src_layout,
            cpu_storage(ids)?,
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
        Ok(wrap(ops::gather_dim(
            cpu_storage(src)?,
            src_layout,
            cpu_storage(ids)?,
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
        Ok(wrap(ops::scatter_add(
            cpu_storage(dst)?,
            dst_layout,
            cpu_storage(ids)?,
            ids_layout,
            cpu_storage(src)?,
            src_layout,
            dim,
        )?))
    }

    // ----- fused ops: f32 kernels for f32/f16/bf16, default compositions for f64 -----

    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        if kernel_dtype(x.dtype()) {
            fused::linear(x, weight, bias)
        } else {
            compose::linear(x, weight, bias)
        }
    }

    fn softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        if kernel_dtype(x.dtype()) {
            fused::softmax_last_dim(x, false)
        } else {
            compose::softmax_last_dim(x)
        }
    }

    fn log_softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        if kernel_dtype(x.dtype()) {
            fused::softmax_last_dim(x, true)
        } else {
            compose::log_softmax_last_dim(x)
        }
    }

    fn layer_norm(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        if kernel_dtype(x.dtype()) {
            fused::layer_norm(x, weight, bias, eps)
        } else {
            compose::layer_norm(x, weight, bias, eps)
        }
    }

    fn gelu(&self, x: &Tensor, kind: GeluKind) -> Result<Tensor> {
        if kernel_dtype(x.dtype()) {
            fused::gelu(x, kind)
        } else {
            x.unary(kind.unary_op())
        }
    }

    fn gelu_backward(&self, x: &Tensor, d_out: &Tensor, kind: GeluKind) -> Result<Tensor> {
        if kernel_dtype(x.dtype()) {
            fused::gelu_backward(x, d_out, kind)
        } else {
            compose::gelu_backward(x, d_out, kind)
        }
    }

    fn layer_norm_backward(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        eps: f64,
        d_out: &Tensor,
    ) -> Result<glimpse_tensor::LayerNormGrads> {
        if kernel_dtype(x.dtype()) {
            fused::layer_norm_backward(x, weight, eps, d_out)
        } else {
            compose::layer_norm_backward(x, weight, eps, d_out)
        }
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<AttentionOutput> {
        if fused::attention_supported(q, v) {
            fused::attention(q, k, v, opts)
        } else {
            compose::attention(q, k, v, opts)
        }
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
        if fused::attention_supported(q, v) {
            fused::attention_backward(q, k, v, out, d_out, opts)
        } else {
            compose::attention_backward(q, k, v, out, d_out, opts)
        }
    }

    fn patch_embed(
        &self,
        images: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: &PatchEmbedOptions,
    ) -> Result<Tensor> {
        if kernel_dtype(images.dtype()) {
            fused::patch_embed(images, weight, bias, opts)
        } else {
            compose::patch_embed(images, weight, bias, opts)
        }
    }

    fn contrastive_loss(
        &self,
        image: &Tensor,
        text: &Tensor,
        scale: &Tensor,
    ) -> Result<ContrastiveOutput> {
        if kernel_dtype(image.dtype()) {
            fused::contrastive_loss(image, text, scale)
        } else {
            compose::contrastive_loss(image, text, scale)
        }
    }

    fn contrastive_loss_backward(
        &self,
        image: &Tensor,
        text: &Tensor,
        scale: &Tensor,
        saved: &ContrastiveOutput,
        d_loss: &Tensor,
    ) -> Result<ContrastiveGrads> {
        if kernel_dtype(image.dtype()) {
            fused::contrastive_loss_backward(image, text, scale, saved, d_loss)
        } else {
            compose::contrastive_loss_backward(image, text, scale, saved, d_loss)
        }
    }
}

//! `impl Backend for WgpuBackend`: memory and primitives route to `ops.rs`, fused ops with a
//! WGSL kernel to `fused.rs`; the rest keep their default compositions.

use std::any::Any;
use std::sync::Arc;

use glimpse_tensor::{
    AttentionGrads, AttentionOptions, AttentionOutput, Backend, BackendStorage, BinaryOp,
    ContrastiveGrads, ContrastiveOutput, DType, DeviceLocation, GeluKind, HostSlice, HostVec,
    LayerNormGrads, Layout, PatchEmbedGrads, PatchEmbedOptions, ReduceOp, Result, Storage, Tensor,
    UnaryOp,
};

use crate::backend::WgpuBackend;
use crate::storage::{WgpuStorage, wgpu_storage};
use crate::{attention, contrastive, matmul, norm, patch_embed};

fn wrap(s: WgpuStorage) -> Storage {
    Arc::new(s)
}

impl Backend for WgpuBackend {
    fn location(&self) -> DeviceLocation {
        WgpuBackend::location(self)
    }

    fn supports_dtype(&self, dtype: DType) -> bool {
        self.dtypes().contains(&dtype)
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }

    fn full(&self, dtype: DType, len: usize, value: f64) -> Result<Storage> {
        self.op_full(dtype, len, value).map(wrap)
    }

    fn upload(&self, data: HostSlice<'_>) -> Result<Storage> {
        self.op_upload(data).map(wrap)
    }

    fn download(&self, src: &dyn BackendStorage, layout: &Layout) -> Result<HostVec> {
        self.op_download(wgpu_storage(src)?, layout)
    }

    fn rand_uniform(
        &self,
        dtype: DType,
        len: usize,
        low: f64,
        high: f64,
        seed: u64,
    ) -> Result<Storage> {
        self.op_rand_uniform(dtype, len, low, high, seed).map(wrap)
    }

    fn rand_normal(
        &self,
        dtype: DType,
        len: usize,
        mean: f64,
        std: f64,
        seed: u64,
    ) -> Result<Storage> {
        self.op_rand_normal(dtype, len, mean, std, seed).map(wrap)
    }

    fn copy_strided(&self, src: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        self.op_copy_strided(wgpu_storage(src)?, layout).map(wrap)
    }

    fn concat(&self, parts: &[(&dyn BackendStorage, &Layout)], dim: usize) -> Result<Storage> {
        let parts = parts
            .iter()
            .map(|&(s, l)| Ok((wgpu_storage(s)?, l)))
            .collect::<Result<Vec<_>>>()?;
        self.op_concat(&parts, dim).map(wrap)
    }

    fn cast(&self, src: &dyn BackendStorage, layout: &Layout, dtype: DType) -> Result<Storage> {
        self.op_cast(wgpu_storage(src)?, layout, dtype).map(wrap)
    }

    fn unary(&self, op: UnaryOp, src: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        self.op_unary(op, wgpu_storage(src)?, layout).map(wrap)
    }

    fn binary(
        &self,
        op: BinaryOp,
        lhs: &dyn BackendStorage,
        lhs_layout: &Layout,
        rhs: &dyn BackendStorage,
        rhs_layout: &Layout,
    ) -> Result<Storage> {
        self.op_binary(
            op,
            wgpu_storage(lhs)?,
            lhs_layout,
            wgpu_storage(rhs)?,
            rhs_layout,
        )
        .map(wrap)
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
        self.op_where(
            wgpu_storage(cond)?,
            cond_layout,
            wgpu_storage(on_true)?,
            true_layout,
            wgpu_storage(on_false)?,
            false_layout,
        )
        .map(wrap)
    }

    fn reduce(
        &self,
        op: ReduceOp,
        src: &dyn BackendStorage,
        layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        self.op_reduce(op, wgpu_storage(src)?, layout, dim)
            .map(wrap)
    }

    fn matmul(
        &self,
        lhs: &dyn BackendStorage,
        lhs_layout: &Layout,
        rhs: &dyn BackendStorage,
        rhs_layout: &Layout,
    ) -> Result<Storage> {
        self.op_matmul(
            wgpu_storage(lhs)?,
            lhs_layout,
            wgpu_storage(rhs)?,
            rhs_layout,
        )
        .map(wrap)
    }

    fn index_select(
        &self,
        src: &dyn BackendStorage,
        src_layout: &Layout,
        ids: &dyn BackendStorage,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        self.op_index_select(
            wgpu_storage(src)?,
            src_layout,
            wgpu_storage(ids)?,
            ids_layout,
            dim,
        )
        .map(wrap)
    }

    fn gather(
        &self,
        src: &dyn BackendStorage,
        src_layout: &Layout,
        ids: &dyn BackendStorage,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        self.op_gather(
            wgpu_storage(src)?,
            src_layout,
            wgpu_storage(ids)?,
            ids_layout,
            dim,
        )
        .map(wrap)
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
        self.op_scatter_add(
            wgpu_storage(dst)?,
            dst_layout,
            wgpu_storage(ids)?,
            ids_layout,
            wgpu_storage(src)?,
            src_layout,
            dim,
        )
        .map(wrap)
    }

    // ----- fused ops (each module's functions say which have a kernel)

    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        matmul::linear(self, x, weight, bias)
    }

    fn softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        norm::softmax_last_dim(self, x)
    }

    fn log_softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        norm::log_softmax_last_dim(self, x)
    }

    fn layer_norm(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        norm::layer_norm(self, x, weight, bias, eps)
    }

    fn gelu(&self, x: &Tensor, kind: GeluKind) -> Result<Tensor> {
        norm::gelu(self, x, kind)
    }

    fn gelu_backward(&self, x: &Tensor, d_out: &Tensor, kind: GeluKind) -> Result<Tensor> {
        norm::gelu_backward(self, x, d_out, kind)
    }

    fn layer_norm_backward(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        eps: f64,
        d_out: &Tensor,
    ) -> Result<LayerNormGrads> {
        norm::layer_norm_backward(self, x, weight, eps, d_out)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<AttentionOutput> {
        attention::attention(self, q, k, v, opts)
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
        attention::attention_backward(self, q, k, v, out, d_out, opts)
    }

    fn patch_embed(
        &self,
        images: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: &PatchEmbedOptions,
    ) -> Result<Tensor> {
        patch_embed::patch_embed(self, images, weight, bias, opts)
    }

    fn patch_embed_backward(
        &self,
        images: &Tensor,
        weight: &Tensor,
        opts: &PatchEmbedOptions,
        d_out: &Tensor,
        need_images: bool,
    ) -> Result<PatchEmbedGrads> {
        patch_embed::patch_embed_backward(self, images, weight, opts, d_out, need_images)
    }

    fn contrastive_loss(
        &self,
        image: &Tensor,
        text: &Tensor,
        scale: &Tensor,
    ) -> Result<ContrastiveOutput> {
        contrastive::contrastive_loss(self, image, text, scale)
    }

    fn contrastive_loss_backward(
        &self,
        image: &Tensor,
        text: &Tensor,
        scale: &Tensor,
        saved: &ContrastiveOutput,
        d_loss: &Tensor,
    ) -> Result<ContrastiveGrads> {
        contrastive::contrastive_loss_backward(self, image, text, scale, saved, d_loss)
    }
}

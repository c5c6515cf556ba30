//! Fused f32 CPU kernels on raw slices.
//!
//! All kernels take contiguous row-major buffers (or explicitly strided views), are
//! parallelized with rayon, and dispatch at run time to AVX-512 / AVX2 code paths with a portable
//! fallback (see [`simd`]). Matrix products go through [`crate::gemm::sgemm`].

pub(crate) mod simd;

pub mod attention;
pub mod contrastive;
pub mod gelu;
pub mod layer_norm;
pub mod patch_embed;
pub mod softmax;

pub use attention::{AttnDims, AttnView, attention_backward, attention_forward};
pub use contrastive::{contrastive_backward, contrastive_forward};
pub use gelu::{erf_f32, gelu_erf, gelu_tanh, quick_gelu, tanh_f32};
pub use layer_norm::layer_norm_rows;
pub use patch_embed::{PatchDims, patch_embed, patch_embed_weight_grad};
pub use softmax::{log_softmax_rows, softmax_rows};

#[cfg(test)]
pub(crate) mod testutil;

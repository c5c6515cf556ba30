//! The backend conformance suite: every check compares a device with the CPU backend (the
//! reference) on the same inputs, and takes a [`Target`] saying which device that is and what
//! it holds.
//!
//! * [`primitives`]: every primitive (copies, casts, unary, binary, where, reductions, matmul,
//!   indexing, cat, random) on random shapes (rank 0-4, zero-size dimensions), contiguous,
//!   permuted, narrowed and broadcast views, each dtype of the target.
//! * [`fused`]: the fused ops (softmax, layer norm, gelu, attention forward and backward, patch
//!   embedding, contrastive loss) on proptest shapes that cross the usual tile sizes, strided
//!   and misaligned inputs, each float dtype of the target.
//! * [`compositions`]: a smoke test of the models' building blocks, small fixed shapes.
//!
//! A backend declares the suite's tests in three test files, one line each (plus a `target`
//! function that opens its device, or returns `None` after printing why the test skips):
//!
//! ```text
//! mod common;
//! glimpse_testkit::primitives_tests!(common::target);
//! ```
//!
//! which expands to one `#[test]` per check, named as the check:
//! `fn unary_float() { let Some(t) = common::target("unary_float") else { return }; ... }`.
//! The device should poison fresh allocations (fill them with NaN) where the backend can, so
//! that an output element a kernel forgets to write fails the comparison.

use glimpse_tensor::{DType, Device, Tensor};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::{assert_close_scaled, run_cases, tol, values};

pub mod compositions;
pub mod fused;
pub mod primitives;

/// The head dims [`fused::attention_forward_edge_cases`] and
/// [`fused::attention_backward_edge_cases`] run at unless the target says otherwise: those of
/// the ViT and CLIP models (64, 80, 128) and a small one (32). CUDA's tensor-core kernels are
/// specialised for exactly these.
pub const HEAD_DIMS: [usize; 4] = [32, 64, 80, 128];

/// The batch size of [`fused::contrastive_loss_at_large_n`] unless the target says otherwise:
/// large enough that CUDA's backward holds its gradient weights in 2 (bf16) or 3 (f32) strips.
pub const CONTRASTIVE_LARGE_N: usize = 12_000;

/// A backend under test: its device, the dtypes it holds, and what the checks may adapt to it.
#[derive(Clone, Debug)]
pub struct Target {
    /// Names the backend in failure messages ("cuda", "wgpu", ...).
    pub name: String,
    /// The device under test.
    pub device: Device,
    /// Every dtype the device holds (floats and u32); the checks draw their dtypes from it.
    pub dtypes: Vec<DType>,
    /// The float dtypes among `dtypes`.
    pub floats: Vec<DType>,
    /// The attention head dims of the edge-case checks (default [`HEAD_DIMS`]).
    pub head_dims: Vec<usize>,
    /// The batch size N of [`fused::contrastive_loss_at_large_n`] (default
    /// [`CONTRASTIVE_LARGE_N`]); a software device may lower it to save minutes.
    pub contrastive_large_n: usize,
    /// Factors on every tolerance of the suite, per dtype (1 for a dtype not listed): for a
    /// backend that computes with less precision than the CPU (say, approximate `exp`).
    pub loosen: Vec<(DType, f64)>,
}

impl Target {
    /// A target holding `dtypes` on `device`, default head dims, default tolerances.
    pub fn new(name: impl Into<String>, device: Device, dtypes: &[DType]) -> Target {
        Target {
            name: name.into(),
            device,
            dtypes: dtypes.to_vec(),
            floats: dtypes.iter().copied().filter(|d| d.is_float()).collect(),
            head_dims: HEAD_DIMS.to_vec(),
            contrastive_large_n: CONTRASTIVE_LARGE_N,
            loosen: Vec::new(),
        }
    }

    /// Runs the attention edge cases at `dims` instead of [`HEAD_DIMS`].
    pub fn with_head_dims(mut self, dims: &[usize]) -> Target {
        self.head_dims = dims.to_vec();
        self
    }

    /// Runs [`fused::contrastive_loss_at_large_n`] at batch size `n`.
    pub fn with_contrastive_large_n(mut self, n: usize) -> Target {
        self.contrastive_large_n = n;
        self
    }

    /// Multiplies every tolerance of `dtype` by `factor`.
    pub fn with_tolerance_factor(mut self, dtype: DType, factor: f64) -> Target {
        self.loosen.retain(|&(d, _)| d != dtype);
        self.loosen.push((dtype, factor));
        self
    }

    /// The factor on the tolerances of `dtype` (1 unless loosened).
    pub fn factor(&self, dtype: DType) -> f64 {
        self.loosen
            .iter()
            .find(|&&(d, _)| d == dtype)
            .map_or(1.0, |&(_, f)| f)
    }

    /// [`tol`] of `dtype` times the target's factor.
    pub fn tol(&self, dtype: DType) -> f64 {
        tol(dtype) * self.factor(dtype)
    }

    /// One of the target's dtypes.
    pub fn any_dtype(&self) -> impl Strategy<Value = DType> + use<> {
        crate::any_of(&self.dtypes)
    }

    /// One of the target's float dtypes.
    pub fn any_float(&self) -> impl Strategy<Value = DType> + use<> {
        crate::any_of(&self.floats)
    }

    /// Whether the device holds `dtype`.
    pub fn holds(&self, dtype: DType) -> bool {
        self.dtypes.contains(&dtype)
    }

    /// Runs `test` on `cases` values of `strategy` on the device, panicking with the shrunk
    /// failure (named `"{target}: {check}"`).
    pub fn run<S>(
        &self,
        check: &str,
        cases: u32,
        strategy: S,
        test: impl Fn(&Device, S::Value) -> Result<(), TestCaseError>,
    ) where
        S: Strategy,
        S::Value: std::fmt::Debug,
    {
        let name = format!("{}: {check}", self.name);
        run_cases(&name, &self.device, cases, strategy, test);
    }

    /// The device's result has the CPU result's dims and dtype and its values within
    /// [`Target::tol`] (scale 1).
    pub fn assert_matches(&self, got: &Tensor, want: &Tensor, what: &str) {
        assert_eq!(got.dims(), want.dims(), "{what}: dims");
        assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
        assert_close_scaled(
            &values(got),
            &values(want),
            &[1.0],
            self.tol(want.dtype()),
            what,
        );
    }
}

/// One `#[test]` per named check of `suite::$module`, each opening its target with
/// `$target(name)` (`None`: skipped) and running the check on it.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_tests {
    ($target:path, $module:ident: $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let Some(t) = $target(stringify!($check)) else {
                    return;
                };
                $crate::suite::$module::$check(&t);
            }
        )*
    };
}

/// Declares one `#[test]` per check of [`suite::primitives`](crate::suite::primitives);
/// `$target` is a `fn(&str) -> Option<Target>` taking the test's name.
#[macro_export]
macro_rules! primitives_tests {
    ($target:path) => {
        $crate::__suite_tests!(
            $target,
            primitives: upload_download_and_contiguous_copies,
            full_zeros_ones,
            upload_bytes_reads_raw_little_endian,
            cast_between_all_dtypes,
            unsupported_dtypes_are_refused,
            unary_float,
            unary_u32,
            unary_special_values,
            binary_float_broadcast,
            binary_u32,
            float_maximum_minimum_propagate_nan,
            where_cond_broadcast,
            reductions,
            reductions_of_long_rows_and_many_rows,
            reductions_with_nan,
            argmax_argmin_take_the_first_of_equal_values,
            matmul_batched,
            matmul_larger,
            matmul_with_k_zero_and_many_batch_dims,
            matmul_f32_is_not_tf32_by_default,
            index_select_matches_cpu,
            gather_matches_cpu,
            scatter_add_accumulates_repeated_indices,
            scatter_add_with_heavy_contention,
            cat_along_every_dim,
            ranks_past_eight_merge_or_fail_cleanly,
            rand_reproducible_in_range_and_like_the_cpu,
            rand_moments,
            large_element_wise_ops_cover_every_element,
        );
    };
}

/// Declares one `#[test]` per check of [`suite::fused`](crate::suite::fused); `$target` is a
/// `fn(&str) -> Option<Target>` taking the test's name.
#[macro_export]
macro_rules! fused_tests {
    ($target:path) => {
        $crate::__suite_tests!(
            $target,
            fused: softmax_and_log_softmax_match_cpu,
            layer_norm_matches_cpu,
            gelu_matches_cpu,
            attention_forward_matches_cpu,
            attention_forward_edge_cases,
            attention_backward_matches_cpu,
            attention_backward_edge_cases,
            patch_embed_matches_cpu,
            patch_embed_vit_shape,
            contrastive_loss_matches_cpu,
            contrastive_loss_at_large_n,
        );
    };
}

/// Declares one `#[test]` per check of [`suite::compositions`](crate::suite::compositions);
/// `$target` is a `fn(&str) -> Option<Target>` taking the test's name.
#[macro_export]
macro_rules! compositions_tests {
    ($target:path) => {
        $crate::__suite_tests!(
            $target,
            compositions: softmax_layer_norm_gelu_linear,
            attention_with_key_padding,
            patch_embed_with_class_and_positions,
            arange_on_the_device,
            causal_attention_and_contrastive_loss,
        );
    };
}

#[cfg(test)]
mod tests {
    /// The public checks (`pub fn name(t: &Target)`) of a suite module's source.
    fn checks(source: &str) -> Vec<&str> {
        source
            .lines()
            .filter_map(|l| l.strip_prefix("pub fn ")?.strip_suffix("(t: &Target) {"))
            .collect()
    }

    /// The names a `*_tests!` macro of this file declares.
    fn declared(macro_name: &str) -> Vec<&'static str> {
        let source = include_str!("mod.rs");
        let start = source
            .find(&format!("macro_rules! {macro_name} "))
            .expect("the macro");
        let body = &source[start..];
        let body = &body[body.find(": ").unwrap() + 2..body.find(");").unwrap()];
        body.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Every check of every suite module is declared by its macro, and nothing else is, so
    /// that each backend runs the whole suite.
    #[test]
    fn the_macros_declare_every_check() {
        for (module, source) in [
            ("primitives_tests", include_str!("primitives.rs")),
            ("fused_tests", include_str!("fused.rs")),
            ("compositions_tests", include_str!("compositions.rs")),
        ] {
            let mut defined = checks(source);
            let mut listed = declared(module);
            assert!(!defined.is_empty(), "{module}: no checks found");
            defined.sort_unstable();
            listed.sort_unstable();
            assert_eq!(listed, defined, "{module}");
        }
    }
}

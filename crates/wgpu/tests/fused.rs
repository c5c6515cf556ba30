//! The fused ops of the wgpu backend (softmax, layer norm, gelu, attention forward and
//! backward, patch embedding, contrastive loss) against the CPU backend: the fused checks of
//! the backend conformance suite (`glimpse_testkit::suite::fused`, one test per check, named as
//! the check) on wgpu device 0, every float dtype the adapter holds, with poisoned (NaN)
//! allocations.
//!
//! Without an adapter every test prints one line and passes (`GLIMPSE_REQUIRE_WGPU=1` fails
//! instead).

mod common;

glimpse_testkit::fused_tests!(common::target);

//! The models' building blocks on the wgpu device (its fused kernels, or the default
//! compositions of its primitives) against the CPU backend: the compositions of the backend
//! conformance suite (`glimpse_testkit::suite::compositions`, one test per check, named as the
//! check) on wgpu device 0, every float dtype the adapter holds, with poisoned (NaN)
//! allocations.
//!
//! Without an adapter every test prints one line and passes (`GLIMPSE_REQUIRE_WGPU=1` fails
//! instead).

mod common;

glimpse_testkit::compositions_tests!(common::target);

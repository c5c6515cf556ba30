//! Every primitive of the wgpu backend against the CPU backend: the primitives of the backend
//! conformance suite (`glimpse_testkit::suite::primitives`, one test per check, named as the
//! check) on wgpu device 0, every dtype the adapter holds, with poisoned (NaN) allocations.
//!
//! Without an adapter every test prints one line and passes (`GLIMPSE_REQUIRE_WGPU=1` fails
//! instead).

mod common;

glimpse_testkit::primitives_tests!(common::target);

//! Every primitive of the CUDA backend against the CPU backend: the primitives of the backend
//! conformance suite (`glimpse_testkit::suite::primitives`, one test per check, named as the
//! check) on CUDA device 0, every GPU dtype, with poisoned (NaN) allocations.
//!
//! Without a GPU every test prints one line and passes (`GLIMPSE_REQUIRE_CUDA=1` fails
//! instead); `GLIMPSE_CUDA_TESTS_ON_CPU=1` runs them on the CPU device to check the checks
//! (`unsupported_dtypes_are_refused` then fails by design: the CPU holds f64).

mod common;

glimpse_testkit::primitives_tests!(common::target);

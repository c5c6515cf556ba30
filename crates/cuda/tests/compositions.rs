//! The fused ops on the CUDA device (default compositions of the primitives, or the fused
//! kernels where the backend routes them there) against the CPU backend, in every float
//! dtype: the compositions of the backend conformance suite
//! (`glimpse_testkit::suite::compositions`, one test per check, named as the check).
//!
//! Without a GPU every test prints one line and passes (`GLIMPSE_REQUIRE_CUDA=1` fails
//! instead); `GLIMPSE_CUDA_TESTS_ON_CPU=1` runs them on the CPU device to check the checks.

mod common;

glimpse_testkit::compositions_tests!(common::target);

//! Shared helpers of the glimpse benchmarks.

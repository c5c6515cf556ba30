//! Cross-crate integration tests of glimpse live in `tests/tests/`. The README's examples are
//! compiled and run here as doctests, so the front page cannot drift from the code.
#![doc = include_str!("../../README.md")]

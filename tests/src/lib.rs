//! Cross-crate integration tests of glimpse live in `tests/tests/`.

//! Weight lookup by key path.

/// Placeholder, replaced below.
#[derive(Debug)]
pub struct VarBuilder;

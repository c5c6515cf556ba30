//! A lookup table of embeddings.

use glimpse_tensor::{DType, Error, Result, Tensor, VarBuilder};

use crate::Module;

/// A table of `num` embeddings of size `dim`, looked up by `U32` ids.
#[derive(Clone, Debug)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    /// Loads `weight` `(num, dim)` from `vb`.
    pub fn new(vb: VarBuilder, num: usize, dim: usize) -> Result<Self> {
        Ok(Embedding {
            weight: vb.get([num, dim], "weight")?,
        })
    }

    /// The table, `(num, dim)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Size of one embedding.
    pub fn dim(&self) -> usize {
        self.weight.dims()[1]
    }
}

impl Module for Embedding {
    /// `ids` is `U32` of any shape `S`; the result is `S + [dim]`. An id past the table is an
    /// error.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        if ids.dtype() != DType::U32 {
            return Err(Error::DTypeMismatch {
                op: "Embedding (ids)",
                expected: DType::U32,
                got: ids.dtype(),
            });
        }
        // flat is (prod S) -> rows is (prod S, dim)
        let flat = ids.flatten_all()?;
        let rows = self.weight.index_select(&flat, 0)?;
        let mut dims = ids.dims().to_vec();
        dims.push(self.dim());
        rows.reshape(dims)
    }
}

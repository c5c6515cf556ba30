//! Shapes and dimension indices.

use crate::{Error, Result};

/// The sizes of a tensor's dimensions, outermost first.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    /// The shape of a scalar (rank 0).
    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar).
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }

    /// Number of elements, or an error if it does not fit in `usize`.
    pub fn checked_elem_count(&self, op: &'static str) -> Result<usize> {
        self.0
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::bad_shape(op, "the element count overflows usize", self))
    }

    /// Checks that a buffer of this shape and element size can be allocated at all (at most
    /// `isize::MAX` bytes), returning the element count.
    pub fn check_alloc(&self, elem_size: usize, op: &'static str) -> Result<usize> {
        let n = self.checked_elem_count(op)?;
        match n.checked_mul(elem_size) {
            Some(bytes) if bytes <= isize::MAX as usize => Ok(n),
            _ => Err(Error::bad_shape(
                op,
                "the tensor would not fit in memory",
                self,
            )),
        }
    }

    /// Row-major strides of a contiguous tensor of this shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.rank()];
        let mut acc = 1;
        for (s, &d) in strides.iter_mut().zip(&self.0).rev() {
            *s = acc;
            acc *= d;
        }
        strides
    }

    /// Resolves a possibly negative dimension index (`-1` is the last).
    pub fn dim(&self, dim: impl Dim, op: &'static str) -> Result<usize> {
        dim.resolve(self.rank(), op)
    }

    /// The size of one dimension.
    pub fn size(&self, dim: impl Dim, op: &'static str) -> Result<usize> {
        Ok(self.0[self.dim(dim, op)?])
    }

    /// The shape both operands broadcast to (numpy rules: align on the right, 1 stretches).
    pub fn broadcast_with(&self, other: &Shape, op: &'static str) -> Result<Shape> {
        let rank = self.rank().max(other.rank());
        let mut out = vec![0; rank];
        for (i, o) in out.iter_mut().enumerate() {
            let a = dim_from_right(&self.0, rank - 1 - i);
            let b = dim_from_right(&other.0, rank - 1 - i);
            *o = match (a, b) {
                (a, b) if a == b => a,
                (1, b) => b,
                (a, 1) => a,
                _ => {
                    return Err(Error::ShapeMismatch {
                        op,
                        lhs: self.clone(),
                        rhs: other.clone(),
                    });
                }
            };
        }
        Ok(Shape(out))
    }
}

fn dim_from_right(dims: &[usize], from_right: usize) -> usize {
    if from_right < dims.len() {
        dims[dims.len() - 1 - from_right]
    } else {
        1
    }
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}

impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}

impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}

impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape::scalar()
    }
}

impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}

/// A dimension index: a `usize` counts from the front, an `isize` below zero from the back
/// (`-1` is the last dimension).
pub trait Dim: Copy {
    fn resolve(self, rank: usize, op: &'static str) -> Result<usize>;
}

impl Dim for usize {
    fn resolve(self, rank: usize, op: &'static str) -> Result<usize> {
        if self < rank {
            Ok(self)
        } else {
            Err(Error::DimOutOfRange {
                op,
                dim: self as isize,
                rank,
            })
        }
    }
}

impl Dim for isize {
    fn resolve(self, rank: usize, op: &'static str) -> Result<usize> {
        let resolved = if self < 0 { rank as isize + self } else { self };
        if resolved >= 0 && (resolved as usize) < rank {
            Ok(resolved as usize)
        } else {
            Err(Error::DimOutOfRange {
                op,
                dim: self,
                rank,
            })
        }
    }
}

impl Dim for i32 {
    fn resolve(self, rank: usize, op: &'static str) -> Result<usize> {
        (self as isize).resolve(rank, op)
    }
}

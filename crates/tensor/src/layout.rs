//! How a tensor's elements sit in its storage: shape, strides (in elements) and offset.

use crate::{Error, Result, Shape};

/// Shape, strides and start offset of a tensor view over a storage buffer.
///
/// Strides are in elements and never negative; a stride of 0 repeats an element (broadcast).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    /// A row-major contiguous layout starting at offset 0.
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let strides = shape.contiguous_strides();
        Layout {
            shape,
            strides,
            offset: 0,
        }
    }

    /// A layout with explicit strides and offset. The caller vouches that every element it
    /// addresses lies inside the storage; backends check [`Layout::max_index`] against it.
    pub fn new(shape: impl Into<Shape>, strides: Vec<usize>, offset: usize) -> Result<Self> {
        let shape = shape.into();
        if strides.len() != shape.rank() {
            return Err(Error::invalid(
                "layout",
                format!(
                    "{} strides for a shape of rank {}",
                    strides.len(),
                    shape.rank()
                ),
            ));
        }
        Ok(Layout {
            shape,
            strides,
            offset,
        })
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    /// One past the largest storage index this layout touches (`offset` for empty tensors).
    ///
    /// # Panics
    /// If that index overflows `usize`; [`Layout::checked_max_index`] reports it instead.
    pub fn max_index(&self) -> usize {
        self.checked_max_index()
            .expect("layout addresses past usize::MAX")
    }

    /// [`Layout::max_index`], or `None` if it overflows `usize`.
    pub fn checked_max_index(&self) -> Option<usize> {
        if self.shape.checked_elem_count("layout").ok()? == 0 {
            return Some(self.offset);
        }
        self.dims()
            .iter()
            .zip(&self.strides)
            .try_fold(self.offset, |acc, (&d, &s)| {
                acc.checked_add((d - 1).checked_mul(s)?)
            })?
            .checked_add(1)
    }

    /// Row-major contiguous (size-1 dimensions may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// The contiguous range `offset..offset + n` if the layout is contiguous.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous()
            .then(|| self.offset..self.offset + self.elem_count())
    }

    /// Same data seen with a new shape; only for contiguous layouts.
    pub fn reshape(&self, shape: Shape) -> Option<Layout> {
        if !self.is_contiguous() || shape.elem_count() != self.elem_count() {
            return None;
        }
        let strides = shape.contiguous_strides();
        Some(Layout {
            shape,
            strides,
            offset: self.offset,
        })
    }

    /// Reorders the dimensions: dimension `i` of the result is dimension `perm[i]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Result<Layout> {
        let rank = self.shape.rank();
        let mut seen = vec![false; rank];
        if perm.len() != rank {
            return Err(Error::bad_shape(
                "permute",
                format!("{} axes given for rank {rank}", perm.len()),
                &self.shape,
            ));
        }
        for &p in perm {
            if p >= rank || seen[p] {
                return Err(Error::invalid(
                    "permute",
                    format!("{perm:?} is not a permutation of 0..{rank}"),
                ));
            }
            seen[p] = true;
        }
        let dims: Vec<usize> = perm.iter().map(|&p| self.dims()[p]).collect();
        let strides = perm.iter().map(|&p| self.strides[p]).collect();
        Ok(Layout {
            shape: Shape::new(dims),
            strides,
            offset: self.offset,
        })
    }

    /// Keeps `len` elements of dimension `dim`, starting at `start`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        let size = self.dims()[dim];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::IndexOutOfRange {
                op: "narrow",
                index: start.saturating_add(len),
                size,
            });
        }
        let mut dims = self.dims().to_vec();
        dims[dim] = len;
        let shape = Shape::new(dims);
        // An empty view keeps its offset: moving it could point past the end of the storage
        // (an empty storage has nonzero strides once permuted), which backends slice from.
        let offset = if shape.elem_count() == 0 {
            self.offset
        } else {
            self.offset + start * self.strides[dim]
        };
        Ok(Layout {
            shape,
            strides: self.strides.clone(),
            offset,
        })
    }

    /// Stretches size-1 (or missing leading) dimensions to `shape` with stride 0.
    pub fn broadcast_as(&self, shape: &Shape) -> Result<Layout> {
        let rank = shape.rank();
        if rank < self.shape.rank() {
            return Err(Error::ShapeMismatch {
                op: "broadcast_as",
                lhs: self.shape.clone(),
                rhs: shape.clone(),
            });
        }
        let lead = rank - self.shape.rank();
        let mut strides = vec![0; rank];
        for i in 0..self.shape.rank() {
            let (from, to) = (self.dims()[i], shape.dims()[lead + i]);
            strides[lead + i] = if from == to {
                self.strides[i]
            } else if from == 1 {
                0
            } else {
                return Err(Error::ShapeMismatch {
                    op: "broadcast_as",
                    lhs: self.shape.clone(),
                    rhs: shape.clone(),
                });
            };
        }
        Ok(Layout {
            shape: shape.clone(),
            strides,
            offset: self.offset,
        })
    }

    /// Inserts a size-1 dimension at `dim`.
    pub fn unsqueeze(&self, dim: usize) -> Layout {
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides.clone();
        let stride = if dim < dims.len() {
            strides[dim] * dims[dim]
        } else {
            1
        };
        dims.insert(dim, 1);
        strides.insert(dim, stride);
        Layout {
            shape: Shape::new(dims),
            strides,
            offset: self.offset,
        }
    }

    /// Removes dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: usize) -> Result<Layout> {
        if self.dims()[dim] != 1 {
            return Err(Error::bad_shape(
                "squeeze",
                format!("dimension {dim} has size {}, not 1", self.dims()[dim]),
                &self.shape,
            ));
        }
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides.clone();
        dims.remove(dim);
        strides.remove(dim);
        Ok(Layout {
            shape: Shape::new(dims),
            strides,
            offset: self.offset,
        })
    }

    /// Storage index of every element, in row-major order of the view.
    pub fn indices(&self) -> StridedIndices<'_> {
        StridedIndices::new(self)
    }

    /// Splits the view into runs that are contiguous in storage: yields `(start, len)` pairs in
    /// row-major order. Lets backends copy or map whole runs instead of single elements.
    pub fn contiguous_runs(&self) -> ContiguousRuns {
        ContiguousRuns::new(self)
    }
}

/// Iterator over the storage index of each element of a [`Layout`], in row-major order.
#[derive(Debug)]
pub struct StridedIndices<'a> {
    layout: &'a Layout,
    counter: Vec<usize>,
    next: Option<usize>,
}

impl<'a> StridedIndices<'a> {
    fn new(layout: &'a Layout) -> Self {
        let next = (layout.elem_count() > 0).then_some(layout.offset);
        StridedIndices {
            layout,
            counter: vec![0; layout.shape.rank()],
            next,
        }
    }
}

impl Iterator for StridedIndices<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let current = self.next?;
        let dims = self.layout.dims();
        let strides = &self.layout.strides;
        let mut index = current;
        let mut d = dims.len();
        loop {
            if d == 0 {
                self.next = None;
                break;
            }
            d -= 1;
            if self.counter[d] + 1 < dims[d] {
                self.counter[d] += 1;
                index += strides[d];
                self.next = Some(index);
                break;
            }
            index -= self.counter[d] * strides[d];
            self.counter[d] = 0;
        }
        Some(current)
    }
}

/// Iterator over `(start, len)` runs of a layout that are contiguous in storage.
#[derive(Debug)]
pub struct ContiguousRuns {
    run_len: usize,
    outer: Layout,
    outer_iter_pos: Vec<usize>,
    remaining: usize,
    next_start: usize,
}

impl ContiguousRuns {
    fn new(layout: &Layout) -> Self {
        // Merge trailing dimensions while they are contiguous with each other.
        let dims = layout.dims();
        let strides = layout.strides();
        let mut run_len = 1;
        let mut split = dims.len();
        while split > 0 {
            let d = split - 1;
            if dims[d] == 1 || strides[d] == run_len {
                run_len *= dims[d];
                split -= 1;
            } else {
                break;
            }
        }
        let outer = Layout {
            shape: Shape::new(dims[..split].to_vec()),
            strides: strides[..split].to_vec(),
            offset: layout.offset,
        };
        let remaining = if run_len == 0 { 0 } else { outer.elem_count() };
        ContiguousRuns {
            run_len,
            outer_iter_pos: vec![0; split],
            next_start: layout.offset,
            outer,
            remaining,
        }
    }

    /// Length of every run.
    pub fn run_len(&self) -> usize {
        self.run_len
    }
}

impl Iterator for ContiguousRuns {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let start = self.next_start;
        let dims = self.outer.dims();
        let strides = self.outer.strides();
        for d in (0..dims.len()).rev() {
            if self.outer_iter_pos[d] + 1 < dims[d] {
                self.outer_iter_pos[d] += 1;
                self.next_start += strides[d];
                break;
            }
            self.next_start -= self.outer_iter_pos[d] * strides[d];
            self.outer_iter_pos[d] = 0;
        }
        Some((start, self.run_len))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_indices(l: &Layout) -> Vec<usize> {
        let n = l.elem_count();
        let dims = l.dims();
        (0..n)
            .map(|mut flat| {
                let mut idx = l.offset();
                for d in (0..dims.len()).rev() {
                    idx += (flat % dims[d]) * l.strides()[d];
                    flat /= dims[d];
                }
                idx
            })
            .collect()
    }

    #[test]
    fn strided_indices_and_runs_agree_with_naive_walk() {
        let base = Layout::contiguous([2, 3, 4, 5]);
        let views = [
            base.clone(),
            base.permute(&[0, 2, 1, 3]).unwrap(),
            base.permute(&[3, 1, 0, 2]).unwrap(),
            base.narrow(2, 1, 2).unwrap(),
            base.narrow(3, 0, 1).unwrap().narrow(1, 2, 1).unwrap(),
            Layout::contiguous([3, 1])
                .broadcast_as(&Shape::new([2, 3, 4]))
                .unwrap(),
            Layout::contiguous([0, 3]),
        ];
        for v in &views {
            let expected = naive_indices(v);
            assert_eq!(v.indices().collect::<Vec<_>>(), expected, "{v:?}");
            let from_runs: Vec<usize> = v.contiguous_runs().flat_map(|(s, n)| s..s + n).collect();
            assert_eq!(from_runs, expected, "{v:?}");
        }
    }

    #[test]
    fn contiguity_and_reshape() {
        let l = Layout::contiguous([2, 3]);
        assert!(l.is_contiguous());
        let t = l.permute(&[1, 0]).unwrap();
        assert!(!t.is_contiguous());
        assert!(t.reshape(Shape::new([6])).is_none());
        assert_eq!(l.reshape(Shape::new([3, 2])).unwrap().strides(), &[2, 1]);
        assert_eq!(l.max_index(), 6);
    }
}

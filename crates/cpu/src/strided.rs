//! Walking strided views: contiguous copies, rows, and index decompositions.

use std::borrow::Cow;

use glimpse_tensor::Layout;
use rayon::prelude::*;

/// Below this many elements, work stays on the calling thread.
pub const PAR_THRESHOLD: usize = 1 << 15;

/// The elements of a view in row-major order: borrowed when contiguous, copied otherwise.
pub fn view<'a, T: Copy + Send + Sync>(data: &'a [T], layout: &Layout) -> Cow<'a, [T]> {
    match layout.contiguous_range() {
        Some(r) => Cow::Borrowed(&data[r]),
        None => Cow::Owned(gather(data, layout)),
    }
}

/// A contiguous copy of a view.
pub fn gather<T: Copy + Send + Sync>(data: &[T], layout: &Layout) -> Vec<T> {
    if let Some(r) = layout.contiguous_range() {
        return data[r].to_vec();
    }
    let runs = layout.contiguous_runs();
    let mut out = Vec::with_capacity(layout.elem_count());
    if runs.run_len() == 1 {
        out.extend(layout.indices().map(|i| data[i]));
    } else {
        for (start, len) in runs {
            out.extend_from_slice(&data[start..start + len]);
        }
    }
    out
}

/// Splits a view into rows along its last dimension: the storage offset of each row start (in
/// row-major order of the other dimensions), the row length and the stride within a row.
pub fn rows(layout: &Layout) -> (Vec<usize>, usize, usize) {
    let dims = layout.dims();
    let Some((&n, outer_dims)) = dims.split_last() else {
        return (vec![layout.offset()], 1, 1);
    };
    let strides = layout.strides();
    let stride = strides[strides.len() - 1];
    let outer = Layout::new(
        outer_dims.to_vec(),
        strides[..strides.len() - 1].to_vec(),
        layout.offset(),
    )
    .expect("ranks agree");
    (outer.indices().collect(), n, stride)
}

/// Storage offsets (relative, offset 0) of every position of `dims` with `strides`.
pub fn offsets(dims: &[usize], strides: &[usize]) -> Vec<usize> {
    Layout::new(dims.to_vec(), strides.to_vec(), 0)
        .expect("ranks agree")
        .indices()
        .collect()
}

/// Applies `f` to every element of a view, producing a contiguous result.
pub fn map<T, U, F>(data: &[T], layout: &Layout, f: F) -> Vec<U>
where
    T: Copy + Send + Sync,
    U: Copy + Send + Sync,
    F: Fn(T) -> U + Sync + Send,
{
    let x = view(data, layout);
    if x.len() < PAR_THRESHOLD {
        x.iter().map(|&v| f(v)).collect()
    } else {
        x.par_iter().with_min_len(4096).map(|&v| f(v)).collect()
    }
}

/// Applies `f` element-wise to two views of the same shape, producing a contiguous result.
pub fn zip_map<A, B, O, F>(
    lhs: &[A],
    lhs_layout: &Layout,
    rhs: &[B],
    rhs_layout: &Layout,
    f: F,
) -> Vec<O>
where
    A: Copy + Send + Sync,
    B: Copy + Send + Sync,
    O: Copy + Send + Sync + Default,
    F: Fn(A, B) -> O + Sync + Send,
{
    let total = lhs_layout.elem_count();
    if let (Some(a), Some(b)) = (lhs_layout.contiguous_range(), rhs_layout.contiguous_range()) {
        let (a, b) = (&lhs[a], &rhs[b]);
        return if total < PAR_THRESHOLD {
            a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
        } else {
            a.par_iter()
                .zip(b.par_iter())
                .with_min_len(4096)
                .map(|(&x, &y)| f(x, y))
                .collect()
        };
    }
    let (lhs_rows, n, ls) = rows(lhs_layout);
    let (rhs_rows, _, rs) = rows(rhs_layout);
    let mut out = vec![O::default(); total];
    if n == 0 || total == 0 {
        return out;
    }
    let row = |dst: &mut [O], lb: usize, rb: usize| match (ls, rs) {
        (1, 1) => {
            for ((d, &x), &y) in dst.iter_mut().zip(&lhs[lb..lb + n]).zip(&rhs[rb..rb + n]) {
                *d = f(x, y);
            }
        }
        (1, 0) => {
            let y = rhs[rb];
            for (d, &x) in dst.iter_mut().zip(&lhs[lb..lb + n]) {
                *d = f(x, y);
            }
        }
        (0, 1) => {
            let x = lhs[lb];
            for (d, &y) in dst.iter_mut().zip(&rhs[rb..rb + n]) {
                *d = f(x, y);
            }
        }
        _ => {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = f(lhs[lb + j * ls], rhs[rb + j * rs]);
            }
        }
    };
    if total < PAR_THRESHOLD {
        for ((dst, &lb), &rb) in out.chunks_mut(n).zip(&lhs_rows).zip(&rhs_rows) {
            row(dst, lb, rb);
        }
    } else {
        out.par_chunks_mut(n)
            .zip(lhs_rows.par_iter().zip(rhs_rows.par_iter()))
            .with_min_len((4096 / n).max(1))
            .for_each(|(dst, (&lb, &rb))| row(dst, lb, rb));
    }
    out
}

/// A layout split around dimension `dim`: relative offsets of the outer positions (dimensions
/// before `dim`), the stride of `dim`, and relative offsets of the inner positions.
pub struct AroundDim {
    pub outer: Vec<usize>,
    pub dim_size: usize,
    pub dim_stride: usize,
    pub inner: Vec<usize>,
}

pub fn around_dim(layout: &Layout, dim: usize) -> AroundDim {
    let (dims, strides) = (layout.dims(), layout.strides());
    AroundDim {
        outer: offsets(&dims[..dim], &strides[..dim]),
        dim_size: dims[dim],
        dim_stride: strides[dim],
        inner: offsets(&dims[dim + 1..], &strides[dim + 1..]),
    }
}

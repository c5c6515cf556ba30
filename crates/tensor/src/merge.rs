//! Dimension merging for kernels: several strided views over the same dims, rewritten with
//! fewer dimensions where every view allows it. GPU backends pass views to kernels as fixed-size
//! dims/strides arrays, so merging keeps ranks small (and contiguous views become rank 1).

/// Several views over the same dims with their dimensions merged jointly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The merged dims.
    pub dims: Vec<usize>,
    /// One stride list per view, matching `dims`.
    pub strides: Vec<Vec<usize>>,
    /// Where the kept dimension went, if one was kept.
    pub keep: Option<usize>,
}

impl Merged {
    /// Drops size-1 dimensions and merges dimension `d` into `d - 1` wherever every view has
    /// `stride[d - 1] == stride[d] * dims[d]`, so that each view addresses the same elements
    /// in the same row-major order with fewer dimensions. Dimension `keep` is never dropped or
    /// merged (index ops need it by itself); its size may differ between the views, so `dims`
    /// at `keep` is whatever the caller passed.
    pub fn new(dims: &[usize], strides: &[&[usize]], keep: Option<usize>) -> Self {
        let views = strides.len();
        let mut out_dims: Vec<usize> = Vec::with_capacity(dims.len());
        let mut out_strides: Vec<Vec<usize>> = vec![Vec::with_capacity(dims.len()); views];
        let mut out_keep = None;
        let mut last_is_keep = false;
        for (d, &size) in dims.iter().enumerate() {
            let is_keep = keep == Some(d);
            if size == 1 && !is_keep {
                continue;
            }
            let mergeable = !is_keep
                && !last_is_keep
                && !out_dims.is_empty()
                && (0..views).all(|v| *out_strides[v].last().unwrap() == strides[v][d] * size);
            if mergeable {
                *out_dims.last_mut().unwrap() *= size;
                for v in 0..views {
                    *out_strides[v].last_mut().unwrap() = strides[v][d];
                }
            } else {
                if is_keep {
                    out_keep = Some(out_dims.len());
                }
                out_dims.push(size);
                for v in 0..views {
                    out_strides[v].push(strides[v][d]);
                }
            }
            last_is_keep = is_keep;
        }
        Merged {
            dims: out_dims,
            strides: out_strides,
            keep: out_keep,
        }
    }
}

/// Row-major contiguous strides of `dims`.
pub fn contiguous_strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![0; dims.len()];
    let mut acc = 1;
    for (st, &d) in s.iter_mut().zip(dims).rev() {
        *st = acc;
        acc *= d;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Layout;

    /// Storage indices of every element of a view, in row-major order.
    fn walk(dims: &[usize], strides: &[usize], offset: usize) -> Vec<usize> {
        let n: usize = dims.iter().product();
        (0..n)
            .map(|mut flat| {
                let mut idx = offset;
                for d in (0..dims.len()).rev() {
                    idx += (flat % dims[d]) * strides[d];
                    flat /= dims[d];
                }
                idx
            })
            .collect()
    }

    #[test]
    fn merging_keeps_every_view_intact() {
        let base = Layout::contiguous([2, 3, 4, 5]);
        let views = [
            base.clone(),
            base.permute(&[0, 2, 1, 3]).unwrap(),
            base.narrow(2, 1, 2).unwrap(),
            Layout::contiguous([3, 1])
                .broadcast_as(&crate::Shape::new([2, 3, 4]))
                .unwrap(),
            Layout::contiguous([1, 1, 1]),
            Layout::contiguous(Vec::<usize>::new()),
        ];
        for v in &views {
            let m = Merged::new(v.dims(), &[v.strides()], None);
            assert_eq!(
                walk(&m.dims, &m.strides[0], v.offset()),
                walk(v.dims(), v.strides(), v.offset()),
                "{v:?} -> {m:?}"
            );
        }
        let m = Merged::new(base.dims(), &[base.strides()], None);
        assert_eq!(m.dims, [120]);
        // Two views merge only where both allow it.
        let t = base.permute(&[0, 1, 3, 2]).unwrap();
        let m = Merged::new(
            t.dims(),
            &[t.strides(), &contiguous_strides(t.dims())],
            None,
        );
        assert_eq!(m.dims, [6, 5, 4]);
    }

    #[test]
    fn the_kept_dimension_stays_alone() {
        let l = Layout::contiguous([2, 3, 1, 4, 5]);
        let m = Merged::new(l.dims(), &[l.strides()], Some(2));
        assert_eq!(m.dims, [6, 1, 20]);
        assert_eq!(m.keep, Some(1));
        let m = Merged::new(l.dims(), &[l.strides()], Some(0));
        assert_eq!(m.dims, [2, 60]);
        assert_eq!(m.keep, Some(0));
    }
}

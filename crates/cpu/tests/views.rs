//! Views and layouts: random chains of permute / transpose / t / narrow / unsqueeze / squeeze /
//! broadcast_as / reshape against a naive strided reference, in every dtype, with zero-size
//! dimensions; plus storage sharing, contiguity and the layout iterators backends rely on.

mod common;

use common::*;
use glimpse_tensor::{DType, Layout, Shape, Tensor};
use proptest::prelude::*;

/// Applies one random view op to the tensor and to the reference; returns its name.
fn step(t: &mut Tensor, r: &mut RefView, rng: &mut Gen) -> String {
    let rank = r.dims.len();
    let choice = rng.below(8);
    match choice {
        0 => {
            let p = rng.perm(rank);
            *t = t.permute(&p).unwrap();
            *r = r.permute(&p);
            format!("permute({p:?})")
        }
        1 | 2 if rank >= 1 => {
            let (a, b) = (rng.below(rank), rng.below(rank));
            let mut p: Vec<usize> = (0..rank).collect();
            p.swap(a, b);
            *t = if choice == 1 {
                t.transpose(a, b).unwrap()
            } else {
                // negative dims address the same dimensions
                t.transpose(a as isize - rank as isize, b as isize - rank as isize)
                    .unwrap()
            };
            *r = r.permute(&p);
            format!("transpose({a}, {b})")
        }
        3 if rank >= 2 => {
            let mut p: Vec<usize> = (0..rank).collect();
            p.swap(rank - 2, rank - 1);
            *t = t.t().unwrap();
            *r = r.permute(&p);
            "t()".into()
        }
        4 if rank >= 1 => {
            let d = rng.below(rank);
            let size = r.dims[d];
            let start = rng.below(size + 1);
            let len = rng.below(size - start + 1);
            *t = t.narrow(d, start, len).unwrap();
            *r = r.narrow(d, start, len);
            format!("narrow({d}, {start}, {len})")
        }
        5 if rank < 6 => {
            let d = rng.below(rank + 1);
            *t = t.unsqueeze(d).unwrap();
            *r = r.unsqueeze(d);
            format!("unsqueeze({d})")
        }
        6 => {
            if let Some(d) = (0..rank).find(|&d| r.dims[d] == 1) {
                *t = if rng.coin() {
                    t.squeeze(d).unwrap()
                } else {
                    t.squeeze(d as isize - rank as isize).unwrap()
                };
                *r = r.squeeze(d);
                format!("squeeze({d})")
            } else {
                "no squeeze".into()
            }
        }
        7 if rank < 6 => {
            // Stretch size-1 dims and maybe add a leading one.
            let mut shape: Vec<usize> = r
                .dims
                .iter()
                .map(|&d| if d == 1 { 1 + rng.below(3) } else { d })
                .collect();
            if rng.coin() {
                shape.insert(0, rng.below(3));
            }
            *t = t.broadcast_as(shape.clone()).unwrap();
            *r = r.broadcast_as(&shape);
            format!("broadcast_as({shape:?})")
        }
        _ => {
            // Reshape: merge two adjacent dims or flatten everything.
            let values = r.values();
            let shape: Vec<usize> = if rank >= 2 && rng.coin() {
                let d = rng.below(rank - 1);
                let mut s = r.dims.clone();
                let merged = s[d] * s[d + 1];
                s.splice(d..d + 2, [merged]);
                s
            } else {
                vec![values.len()]
            };
            let was_contiguous = t.is_contiguous();
            let before = t.clone();
            *t = t.reshape(shape.clone()).unwrap();
            assert_eq!(
                t.shares_storage_with(&before),
                was_contiguous,
                "reshape is a view exactly when the data is contiguous"
            );
            *r = RefView::contiguous(values, &shape);
            format!("reshape({shape:?})")
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn view_chains_match_naive_strides(
        shape in shape_in(0, 4, 0),
        dtype in any_dtype(),
        n_steps in 0usize..8,
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let data = representable(dtype, &(0..numel(&shape)).map(|i| i as f64).collect::<Vec<_>>());
        let base = tensor(&data, &shape, dtype);
        let mut t = base.clone();
        let mut r = RefView::contiguous(data, &shape);
        let mut trace = vec![];
        for _ in 0..n_steps {
            trace.push(step(&mut t, &mut r, &mut rng));
            prop_assert_eq!(t.dims(), &r.dims[..], "{:?}", trace);
            prop_assert_eq!(t.elem_count(), numel(&r.dims));
            prop_assert_eq!(t.rank(), r.dims.len());
            prop_assert_eq!(values(&t), r.values(), "{:?}", trace);
        }
        prop_assert_eq!(t.dtype(), dtype);
        let c = t.contiguous().unwrap();
        prop_assert!(c.is_contiguous());
        prop_assert_eq!(c.shares_storage_with(&t), t.is_contiguous());
        prop_assert_eq!(values(&c), r.values());
        let copy = t.copy().unwrap();
        prop_assert!(!copy.shares_storage_with(&t) && copy.is_contiguous());
        prop_assert_eq!(values(&copy), r.values());
        // An element-wise op reads through the view; the base is untouched.
        if dtype.is_float() {
            let y = t.affine(2.0, 1.0).unwrap();
            let want: Vec<f64> = r.values().iter().map(|v| round_to(dtype, v * 2.0 + 1.0)).collect();
            prop_assert_eq!(values(&y), want);
        }
        prop_assert_eq!(values(&base), representable(dtype, &(0..numel(&shape)).map(|i| i as f64).collect::<Vec<_>>()));
    }

    /// `Layout::indices` and `Layout::contiguous_runs` (what backends walk views with) agree
    /// with a naive offset computation on arbitrary strides, zero and size-1 dims included.
    #[test]
    fn layout_iterators_match_naive(
        dims in shape_in(0, 4, 0),
        strides_seed: u64,
        offset in 0usize..5,
    ) {
        let mut rng = Gen::new(strides_seed);
        let strides: Vec<usize> = dims.iter().map(|_| rng.below(7)).collect();
        let l = Layout::new(dims.clone(), strides.clone(), offset).unwrap();
        let naive: Vec<usize> = (0..numel(&dims))
            .map(|flat| {
                let idx = unravel(flat, &dims);
                offset + idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()
            })
            .collect();
        prop_assert_eq!(l.indices().collect::<Vec<_>>(), naive.clone());
        let runs: Vec<usize> = l.contiguous_runs().flat_map(|(s, n)| s..s + n).collect();
        prop_assert_eq!(runs, naive.clone());
        let max = naive.iter().max().map_or(offset, |m| m + 1);
        prop_assert_eq!(l.max_index(), max);
        // Contiguous means: the naive offsets are offset, offset + 1, ...
        let dense = naive.iter().enumerate().all(|(i, &o)| o == offset + i);
        if !naive.is_empty() {
            prop_assert_eq!(l.is_contiguous(), dense);
        }
    }
}

#[test]
fn views_share_storage_and_report_contiguity() {
    let x = Tensor::arange(0.0, 24.0, DType::F32, &dev())
        .unwrap()
        .reshape([2, 3, 4])
        .unwrap();
    assert!(x.is_contiguous());
    let p = x.permute(&[2, 0, 1]).unwrap();
    assert!(p.shares_storage_with(&x) && !p.is_contiguous());
    assert_eq!(p.dims(), &[4, 2, 3]);
    let n = x.narrow(1, 1, 2).unwrap();
    assert!(n.shares_storage_with(&x) && !n.is_contiguous());
    assert_eq!(
        values(&n),
        [
            4., 5., 6., 7., 8., 9., 10., 11., 16., 17., 18., 19., 20., 21., 22., 23.
        ]
    );
    // A narrow of the outermost dim stays contiguous (an offset only).
    let o = x.narrow(0, 1, 1).unwrap();
    assert!(o.is_contiguous());
    assert_eq!(values(&o.reshape([12]).unwrap())[0], 12.0);
    let b = x
        .narrow(2, 0, 1)
        .unwrap()
        .broadcast_as([5, 2, 3, 4])
        .unwrap();
    assert!(b.shares_storage_with(&x) && !b.is_contiguous());
    assert_eq!(b.dims(), &[5, 2, 3, 4]);
    assert_eq!(b.layout().strides(), &[0, 12, 4, 0]);
    let u = x.unsqueeze(3).unwrap().squeeze(-1isize).unwrap();
    assert!(u.shares_storage_with(&x) && u.is_contiguous());
    // reshape of a non-contiguous view copies, in row-major order of the view
    let r = p.reshape([24]).unwrap();
    assert!(!r.shares_storage_with(&x));
    assert_eq!(values(&r)[..4], [0.0, 4.0, 8.0, 12.0]);
    assert_eq!(x.dim(-1isize).unwrap(), 4);
    assert_eq!(x.dim(0usize).unwrap(), 2);
    let flat = x.flatten_all().unwrap();
    assert_eq!(flat.dims(), &[24]);
    assert_eq!(Shape::new([2, 3, 4]).contiguous_strides(), [12, 4, 1]);
}

#[test]
fn scalars_and_empty_tensors() {
    let d = dev();
    let s = Tensor::full(3.5, (), DType::F64, &d).unwrap();
    assert_eq!(s.rank(), 0);
    assert_eq!(s.to_scalar::<f64>().unwrap(), 3.5);
    assert_eq!(values(&s.unsqueeze(0).unwrap()), [3.5]);
    assert_eq!(
        s.broadcast_as([2, 2]).unwrap().to_vec::<f64>().unwrap(),
        [3.5; 4]
    );
    assert_eq!(s.reshape([1, 1]).unwrap().dims(), &[1, 1]);
    let e = Tensor::zeros([3, 0, 2], DType::F16, &d).unwrap();
    assert_eq!(e.elem_count(), 0);
    assert!(values(&e.permute(&[2, 0, 1]).unwrap()).is_empty());
    assert_eq!(e.reshape([0, 5]).unwrap().dims(), &[0, 5]);
    assert!(values(&e.narrow(0, 3, 0).unwrap()).is_empty());
}

//! Primitives of the CPU backend against naive f64 references: element-wise ops with
//! broadcasting, where_cond, reductions, matmul, indexing, cat, casts, creation and random
//! numbers. Inputs are random shapes (zero-size dimensions included) laid out as contiguous,
//! permuted, narrowed and broadcast views, in every dtype.

mod common;

use common::*;
use glimpse_tensor::{BinaryOp, DType, Error, ReduceOp, Tensor, UnaryOp};
use proptest::prelude::*;

const CASES: u32 = 48;

/// A naive reference of an element-wise function.
type RefFn = fn(f64) -> f64;

// ---------------------------------------------------------------------------------- unary

const UNARY: [UnaryOp; 19] = [
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Sqr,
    UnaryOp::Recip,
    UnaryOp::Tanh,
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Erf,
    UnaryOp::Relu,
    UnaryOp::Sigmoid,
    UnaryOp::Affine {
        mul: -1.5,
        add: 0.25,
    },
    UnaryOp::Powf(2.5),
    UnaryOp::Clamp {
        min: -1.0,
        max: 0.5,
    },
    UnaryOp::GeluErf,
    UnaryOp::GeluTanh,
    UnaryOp::QuickGelu,
];

fn unary_ref(op: UnaryOp, x: f64) -> f64 {
    use std::f64::consts::PI;
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Sqr => x * x,
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Erf => libm::erf(x),
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Affine { mul, add } => x * mul + add,
        UnaryOp::Powf(e) => x.powf(e),
        UnaryOp::Clamp { min, max } => x.max(min).min(max),
        UnaryOp::GeluErf => 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt())),
        UnaryOp::GeluTanh => {
            0.5 * x * (1.0 + ((2.0 / PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }
        UnaryOp::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
    }
}

/// Log, sqrt, recip and a fractional power only see positive inputs.
fn unary_domain(op: UnaryOp) -> Values {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Recip | UnaryOp::Powf(_) => {
            Values::Uniform(0.05, 4.0)
        }
        _ => Values::Uniform(-4.0, 4.0),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn unary_float(shape in any_shape(), dtype in any_float(), kind in any_kind(), seed: u64) {
        let mut rng = Gen::new(seed);
        for op in UNARY {
            let x = input(&shape, dtype, kind, unary_domain(op), &mut rng);
            let y = x.t.unary(op).unwrap();
            prop_assert_eq!(y.dims(), &shape[..]);
            prop_assert_eq!(y.dtype(), dtype);
            let want: Vec<f64> = x.v().iter().map(|&v| unary_ref(op, v)).collect();
            assert_close(&values(&y), &want, dtype, &format!("{op:?} {dtype} {kind:?}"));
        }
    }

    #[test]
    fn unary_u32(shape in any_shape(), kind in any_kind(), seed: u64) {
        let mut rng = Gen::new(seed);
        let x = input(&shape, DType::U32, kind, Values::Ints(0, 70_000), &mut rng);
        let cases: [(UnaryOp, RefFn); 6] = [
            (UnaryOp::Abs, |x| x),
            (UnaryOp::Relu, |x| x),
            // wrapping, as every u32 arithmetic op
            (UnaryOp::Sqr, |x| ((x as u128 * x as u128) % (1u128 << 32)) as f64),
            (UnaryOp::Clamp { min: 10.0, max: 500.0 }, |x| x.clamp(10.0, 500.0)),
            // truncates toward zero
            (UnaryOp::Affine { mul: 0.5, add: 0.75 }, |x| (x * 0.5 + 0.75).trunc()),
            // saturates at 0
            (UnaryOp::Affine { mul: -1.0, add: 3.0 }, |x| (3.0 - x).max(0.0)),
        ];
        for (op, f) in cases {
            let y = x.t.unary(op).unwrap();
            prop_assert_eq!(y.dtype(), DType::U32);
            let want: Vec<f64> = x.v().iter().map(|&v| f(v)).collect();
            prop_assert_eq!(values(&y), want, "{:?}", op);
        }
    }
}

// ---------------------------------------------------------------------------------- binary

const ARITH: [BinaryOp; 7] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Maximum,
    BinaryOp::Minimum,
    BinaryOp::Pow,
];
const CMP: [BinaryOp; 6] = [
    BinaryOp::Eq,
    BinaryOp::Ne,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Gt,
    BinaryOp::Ge,
];

fn cmp_ref(op: BinaryOp, a: f64, b: f64) -> f64 {
    let r = match op {
        BinaryOp::Eq => a == b,
        BinaryOp::Ne => a != b,
        BinaryOp::Lt => a < b,
        BinaryOp::Le => a <= b,
        BinaryOp::Gt => a > b,
        BinaryOp::Ge => a >= b,
        _ => unreachable!(),
    };
    f64::from(u8::from(r))
}

fn float_binary_ref(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Maximum => a.max(b),
        BinaryOp::Minimum => a.min(b),
        BinaryOp::Pow => a.powf(b),
        c => cmp_ref(c, a, b),
    }
}

/// Operand domains: divisors away from 0, powers of positive bases, integers (so that ties
/// happen) for max/min and comparisons.
fn binary_domains(op: BinaryOp) -> (Values, Values) {
    match op {
        BinaryOp::Div => (Values::Uniform(-3.0, 3.0), Values::AwayFromZero(0.5, 3.0)),
        BinaryOp::Pow => (Values::Uniform(0.1, 3.0), Values::Uniform(-2.0, 2.0)),
        BinaryOp::Maximum | BinaryOp::Minimum => (Values::Ints(-3, 3), Values::Ints(-3, 3)),
        c if c.is_comparison() => (Values::Ints(-2, 2), Values::Ints(-2, 2)),
        _ => (Values::Uniform(-3.0, 3.0), Values::Uniform(-3.0, 3.0)),
    }
}

/// `a op b` evaluated with numpy broadcasting on naive arrays.
fn broadcast_ref(a: &Nd, b: &Nd, f: impl Fn(f64, f64) -> f64) -> Nd {
    let shape = broadcast_shape(&a.shape, &b.shape);
    Nd::from_fn(&shape, |i| f(a.at_broadcast(i), b.at_broadcast(i)))
}

fn u32_binary_ref(op: BinaryOp, a: f64, b: f64) -> f64 {
    let (a, b) = (a as u128, b as u128);
    let m = 1u128 << 32;
    let r = match op {
        BinaryOp::Add => (a + b) % m,
        BinaryOp::Sub => (a + m - b) % m,
        BinaryOp::Mul => (a * b) % m,
        BinaryOp::Div => a / b,
        BinaryOp::Maximum => a.max(b),
        BinaryOp::Minimum => a.min(b),
        BinaryOp::Pow => (0..b).fold(1u128, |acc, _| (acc * a) % m),
        c => return cmp_ref(c, a as f64, b as f64),
    };
    r as f64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn binary_float_broadcast(
        out in any_shape(),
        dtype in any_float(),
        ka in any_kind(),
        kb in any_kind(),
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let sa = broadcastable_to(&out, &mut rng);
        let sb = broadcastable_to(&out, &mut rng);
        for op in ARITH.iter().chain(&CMP).copied() {
            let (va, vb) = binary_domains(op);
            let a = input(&sa, dtype, ka, va, &mut rng);
            let b = input(&sb, dtype, kb, vb, &mut rng);
            let y = a.t.binary(op, &b.t).unwrap();
            let want = broadcast_ref(&a.nd, &b.nd, |x, z| float_binary_ref(op, x, z));
            prop_assert_eq!(y.dims(), &want.shape[..]);
            let what = format!("{op:?} {dtype} {sa:?}({ka:?}) {sb:?}({kb:?})");
            if op.is_comparison() {
                prop_assert_eq!(y.dtype(), DType::U32);
                prop_assert_eq!(values(&y), want.data, "{}", what);
            } else {
                prop_assert_eq!(y.dtype(), dtype);
                assert_close(&values(&y), &want.data, dtype, &what);
            }
        }
    }

    #[test]
    fn binary_u32(out in any_shape(), ka in any_kind(), kb in any_kind(), big: bool, seed: u64) {
        let mut rng = Gen::new(seed);
        let sa = broadcastable_to(&out, &mut rng);
        let sb = broadcastable_to(&out, &mut rng);
        // Large values exercise wrapping add/sub/mul.
        let any = if big {
            Values::Ints(u32::MAX as i64 - 6, u32::MAX as i64)
        } else {
            Values::Ints(0, 6)
        };
        for op in ARITH.iter().chain(&CMP).copied() {
            let (va, vb) = match op {
                BinaryOp::Div => (any, Values::Ints(1, 6)),
                BinaryOp::Pow => (Values::Ints(0, 300), Values::Ints(0, 5)),
                _ => (any, any),
            };
            let a = input(&sa, DType::U32, ka, va, &mut rng);
            let b = input(&sb, DType::U32, kb, vb, &mut rng);
            let y = a.t.binary(op, &b.t).unwrap();
            let want = broadcast_ref(&a.nd, &b.nd, |x, z| u32_binary_ref(op, x, z));
            prop_assert_eq!(y.dtype(), DType::U32);
            prop_assert_eq!(y.dims(), &want.shape[..]);
            prop_assert_eq!(values(&y), want.data, "{:?}", op);
        }
    }

    #[test]
    fn where_cond_broadcast(
        out in any_shape(),
        dtype in any_dtype(),
        kinds in (any_kind(), any_kind(), any_kind()),
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let (sc, st, sf) = (
            broadcastable_to(&out, &mut rng),
            broadcastable_to(&out, &mut rng),
            broadcastable_to(&out, &mut rng),
        );
        let c = input(&sc, DType::U32, kinds.0, Values::Ints(0, 2), &mut rng);
        let t = input(&st, dtype, kinds.1, Values::Ints(0, 100), &mut rng);
        let f = input(&sf, dtype, kinds.2, Values::Ints(0, 100), &mut rng);
        let y = c.t.where_cond(&t.t, &f.t).unwrap();
        let shape = broadcast_shape(&broadcast_shape(&sc, &st), &sf);
        let want = Nd::from_fn(&shape, |i| {
            if c.nd.at_broadcast(i) != 0.0 { t.nd.at_broadcast(i) } else { f.nd.at_broadcast(i) }
        });
        prop_assert_eq!(y.dims(), &shape[..]);
        prop_assert_eq!(y.dtype(), dtype);
        prop_assert_eq!(values(&y), want.data);
    }
}

#[test]
fn float_maximum_minimum_propagate_nan() {
    let a = tensor(&[f64::NAN, 1.0, 2.0], &[3], DType::F32);
    let b = tensor(&[0.0, f64::NAN, 1.0], &[3], DType::F32);
    for y in [a.maximum(&b).unwrap(), a.minimum(&b).unwrap()] {
        let v = values(&y);
        assert!(v[0].is_nan() && v[1].is_nan(), "{v:?}");
    }
}

// ---------------------------------------------------------------------------------- reduce

/// Reduces dimension `dim` of `x` with `f` over the row of values along it.
fn reduce_ref(x: &Nd, dim: usize, f: impl Fn(&[f64]) -> f64) -> Nd {
    let mut shape = x.shape.clone();
    shape[dim] = 1;
    Nd::from_fn(&shape, |idx| {
        let mut i = idx.to_vec();
        let row: Vec<f64> = (0..x.shape[dim])
            .map(|j| {
                i[dim] = j;
                x.at(&i)
            })
            .collect();
        f(&row)
    })
}

/// Index of the first best element (`better(a, b)`: a is strictly better than b).
fn first_best(row: &[f64], better: fn(f64, f64) -> bool) -> f64 {
    let mut best = 0;
    for j in 1..row.len() {
        if better(row[j], row[best]) {
            best = j;
        }
    }
    best as f64
}

fn reduce_expect(op: ReduceOp, row: &[f64]) -> f64 {
    match op {
        ReduceOp::Sum => row.iter().sum(),
        ReduceOp::Max => row.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ReduceOp::Min => row.iter().copied().fold(f64::INFINITY, f64::min),
        ReduceOp::ArgMax => first_best(row, |a, b| a > b),
        ReduceOp::ArgMin => first_best(row, |a, b| a < b),
    }
}

/// The output shape without the reduced dimension unless `keepdim`.
fn reduced_dims(shape: &[usize], dim: usize, keepdim: bool) -> Vec<usize> {
    let mut d = shape.to_vec();
    if keepdim {
        d[dim] = 1;
    } else {
        d.remove(dim);
    }
    d
}

const REDUCE: [ReduceOp; 5] = [
    ReduceOp::Sum,
    ReduceOp::Max,
    ReduceOp::Min,
    ReduceOp::ArgMax,
    ReduceOp::ArgMin,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn reductions(
        shape in shape_in(1, 4, 0),
        dtype in any_dtype(),
        kind in any_kind(),
        keepdim: bool,
        negative: bool,
        ties: bool,
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let dim = rng.below(shape.len());
        // Integer values make ties, which argmax/argmin break by the first index.
        let vals = if ties || dtype == DType::U32 { Values::Ints(0, 3) } else { Values::Uniform(-3.0, 3.0) };
        let x = input(&shape, dtype, kind, vals, &mut rng);
        for op in REDUCE {
            let y = if negative {
                x.t.reduce(op, dim as isize - shape.len() as isize, keepdim)
            } else {
                x.t.reduce(op, dim, keepdim)
            };
            if shape[dim] == 0 && op != ReduceOp::Sum {
                let is_bad_shape = matches!(y, Err(Error::BadShape { .. }));
                prop_assert!(is_bad_shape, "{:?}", y);
                continue;
            }
            let y = y.unwrap();
            prop_assert_eq!(y.dims(), &reduced_dims(&shape, dim, keepdim)[..]);
            let want = reduce_ref(&x.nd, dim, |r| reduce_expect(op, r));
            let what = format!("{op:?} {dtype} {shape:?} dim {dim} {kind:?}");
            match op {
                ReduceOp::ArgMax | ReduceOp::ArgMin => {
                    prop_assert_eq!(y.dtype(), DType::U32);
                    prop_assert_eq!(values(&y), want.data, "{}", what);
                }
                ReduceOp::Sum => {
                    prop_assert_eq!(y.dtype(), dtype);
                    let scale = reduce_ref(&x.nd, dim, |r| r.iter().map(|v| v.abs()).sum());
                    assert_close_scaled(&values(&y), &want.data, &scale.data, tol(dtype), &what);
                }
                _ => prop_assert_eq!(values(&y), want.data, "{}", what),
            }
        }
        if dtype.is_float() {
            let n = shape[dim] as f64;
            let want = reduce_ref(&x.nd, dim, |r| r.iter().sum::<f64>() / n);
            let scale = reduce_ref(&x.nd, dim, |r| r.iter().map(|v| v.abs()).sum::<f64>() / n);
            let m = x.t.mean(dim).unwrap();
            prop_assert_eq!(m.dims(), &reduced_dims(&shape, dim, false)[..]);
            assert_close_scaled(&values(&m), &want.data, &scale.data, tol(dtype), "mean");
            let mk = x.t.mean_keepdim(dim).unwrap();
            prop_assert_eq!(mk.dims(), &reduced_dims(&shape, dim, true)[..]);
            assert_close_scaled(&values(&mk), &want.data, &scale.data, tol(dtype), "mean_keepdim");
        }
    }

    #[test]
    fn sum_all_and_mean_all(shape in any_shape(), dtype in any_float(), kind in any_kind(), seed: u64) {
        let mut rng = Gen::new(seed);
        let x = input(&shape, dtype, kind, Values::Uniform(-2.0, 2.0), &mut rng);
        let n = x.v().len() as f64;
        let sum: f64 = x.v().iter().sum();
        let abs: f64 = x.v().iter().map(|v| v.abs()).sum();
        let s = x.t.sum_all().unwrap();
        prop_assert_eq!(s.dims(), &[] as &[usize]);
        assert_close_scaled(&values(&s), &[sum], &[abs], tol(dtype), "sum_all");
        let m = x.t.mean_all().unwrap();
        prop_assert_eq!(m.dims(), &[] as &[usize]);
        assert_close_scaled(&values(&m), &[sum / n], &[abs / n], tol(dtype), "mean_all");
    }
}

#[test]
fn argmax_argmin_take_the_first_of_equal_values() {
    let x = tensor(&[1.0, 3.0, 3.0, 0.0, 0.0, 3.0], &[2, 3], DType::F32);
    assert_eq!(values(&x.argmax(1).unwrap()), [1.0, 2.0]);
    assert_eq!(values(&x.argmin(1).unwrap()), [0.0, 0.0]);
    assert_eq!(values(&x.argmax(0).unwrap()), [0.0, 0.0, 0.0]);
    let u = tensor(&[5.0, 5.0, 5.0], &[3], DType::U32);
    assert_eq!(values(&u.argmax(0).unwrap()), [0.0]);
    assert_eq!(values(&u.argmin(-1isize).unwrap()), [0.0]);
}

// ---------------------------------------------------------------------------------- matmul

fn transpose_last(x: &Nd) -> Nd {
    let r = x.shape.len();
    let mut shape = x.shape.clone();
    shape.swap(r - 2, r - 1);
    Nd::from_fn(&shape, |i| {
        let mut j = i.to_vec();
        j.swap(r - 2, r - 1);
        x.at(&j)
    })
}

/// An operand of shape `(batch.., rows, cols)`: laid out as `kind`, or stored as
/// `(batch.., cols, rows)` and transposed.
fn matmul_operand(
    batch: &[usize],
    rows: usize,
    cols: usize,
    dtype: DType,
    kind: Kind,
    transposed: bool,
    rng: &mut Gen,
) -> Input {
    let mut shape = batch.to_vec();
    if transposed {
        shape.extend([cols, rows]);
        let x = input(&shape, dtype, kind, Values::Uniform(-2.0, 2.0), rng);
        Input {
            t: x.t.t().unwrap(),
            nd: transpose_last(&x.nd),
        }
    } else {
        shape.extend([rows, cols]);
        input(&shape, dtype, kind, Values::Uniform(-2.0, 2.0), rng)
    }
}

/// Naive batched product with broadcast batch dimensions; also returns `sum |a||b|` per entry.
fn matmul_ref(a: &Nd, b: &Nd) -> (Nd, Nd) {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    let mut shape = broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2]);
    shape.extend([m, n]);
    let r = shape.len();
    let entry = |idx: &[usize], abs: bool| {
        let (i, j) = (idx[r - 2], idx[r - 1]);
        let mut s = 0.0;
        for p in 0..k {
            let mut ia = idx[..r - 2].to_vec();
            ia.extend([i, p]);
            let mut ib = idx[..r - 2].to_vec();
            ib.extend([p, j]);
            let t = a.at_broadcast(&ia) * b.at_broadcast(&ib);
            s += if abs { t.abs() } else { t };
        }
        s
    };
    (
        Nd::from_fn(&shape, |idx| entry(idx, false)),
        Nd::from_fn(&shape, |idx| entry(idx, true)),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn matmul_batched(
        out_batch in shape_in(0, 2, 0),
        mkn in (0usize..6, 0usize..6, 0usize..6),
        dtype in any_float(),
        ka in any_kind(),
        kb in any_kind(),
        ta: bool,
        tb: bool,
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let (m, k, n) = mkn;
        let ba = broadcastable_to(&out_batch, &mut rng);
        let bb = broadcastable_to(&out_batch, &mut rng);
        let a = matmul_operand(&ba, m, k, dtype, ka, ta, &mut rng);
        let b = matmul_operand(&bb, k, n, dtype, kb, tb, &mut rng);
        let y = a.t.matmul(&b.t).unwrap();
        let (want, scale) = matmul_ref(&a.nd, &b.nd);
        prop_assert_eq!(y.dims(), &want.shape[..]);
        prop_assert_eq!(y.dtype(), dtype);
        assert_close_scaled(&values(&y), &want.data, &scale.data, tol(dtype), "matmul");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Sizes past any register or cache block of a tiled kernel.
    #[test]
    fn matmul_larger(
        mkn in (1usize..80, 1usize..80, 1usize..80),
        batch in 1usize..3,
        dtype in prop::sample::select(vec![DType::F32, DType::F16, DType::F64]),
        ta: bool,
        tb: bool,
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let (m, k, n) = mkn;
        let a = matmul_operand(&[batch], m, k, dtype, Kind::Contiguous, ta, &mut rng);
        let b = matmul_operand(&[], k, n, dtype, Kind::Narrowed, tb, &mut rng);
        let y = a.t.matmul(&b.t).unwrap();
        let (want, scale) = matmul_ref(&a.nd, &b.nd);
        prop_assert_eq!(y.dims(), &want.shape[..]);
        assert_close_scaled(&values(&y), &want.data, &scale.data, tol(dtype), "matmul");
    }
}

#[test]
fn matmul_with_k_zero_is_zeros() {
    for dtype in FLOATS {
        let a = Tensor::zeros([2, 3, 0], dtype, &dev()).unwrap();
        let b = Tensor::zeros([0, 4], dtype, &dev()).unwrap();
        let y = a.matmul(&b).unwrap();
        assert_eq!(y.dims(), &[2, 3, 4]);
        assert_eq!(values(&y), vec![0.0; 24]);
    }
}

// ---------------------------------------------------------------------------------- indexing

/// Picks `dim` of a random rank-1..=4 shape, as a positive or negative index.
fn pick_dim(rank: usize, rng: &mut Gen) -> (usize, isize) {
    let d = rng.below(rank);
    let as_isize = if rng.coin() {
        d as isize - rank as isize
    } else {
        d as isize
    };
    (d, as_isize)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn index_select_matches_reference(
        shape in shape_in(1, 4, 0),
        n_ids in 0usize..7,
        dtype in any_dtype(),
        kind in any_kind(),
        ids_kind in any_kind(),
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let (dim, sdim) = pick_dim(shape.len(), &mut rng);
        let n_ids = if shape[dim] == 0 { 0 } else { n_ids };
        let x = input(&shape, dtype, kind, Values::Uniform(-5.0, 5.0), &mut rng);
        let hi = shape[dim].max(1) as i64 - 1;
        let ids = input(&[n_ids], DType::U32, ids_kind, Values::Ints(0, hi), &mut rng);
        let y = x.t.index_select(&ids.t, sdim).unwrap();
        let mut out = shape.clone();
        out[dim] = n_ids;
        let want = Nd::from_fn(&out, |i| {
            let mut j = i.to_vec();
            j[dim] = ids.v()[i[dim]] as usize;
            x.nd.at(&j)
        });
        prop_assert_eq!(y.dims(), &out[..]);
        prop_assert_eq!(y.dtype(), dtype);
        prop_assert_eq!(values(&y), want.data);
    }

    #[test]
    fn gather_matches_reference(
        shape in shape_in(1, 4, 0),
        m in 0usize..6,
        dtype in any_dtype(),
        kind in any_kind(),
        ids_kind in any_kind(),
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let (dim, sdim) = pick_dim(shape.len(), &mut rng);
        let mut ids_shape = shape.clone();
        ids_shape[dim] = if shape[dim] == 0 { 0 } else { m };
        let x = input(&shape, dtype, kind, Values::Uniform(-5.0, 5.0), &mut rng);
        let hi = shape[dim].max(1) as i64 - 1;
        let ids = input(&ids_shape, DType::U32, ids_kind, Values::Ints(0, hi), &mut rng);
        let y = x.t.gather(&ids.t, sdim).unwrap();
        let want = Nd::from_fn(&ids_shape, |i| {
            let mut j = i.to_vec();
            j[dim] = ids.nd.at(i) as usize;
            x.nd.at(&j)
        });
        prop_assert_eq!(y.dims(), &ids_shape[..]);
        prop_assert_eq!(values(&y), want.data);
    }

    #[test]
    fn scatter_add_accumulates_repeated_indices(
        shape in shape_in(1, 4, 1),
        m in 0usize..6,
        dtype in any_dtype(),
        kinds in (any_kind(), any_kind(), any_kind()),
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let (dim, sdim) = pick_dim(shape.len(), &mut rng);
        let mut src_shape = shape.clone();
        src_shape[dim] = m;
        let vals = if dtype == DType::U32 { Values::Ints(0, 50) } else { Values::Uniform(-3.0, 3.0) };
        let dst = input(&shape, dtype, kinds.0, vals, &mut rng);
        // Few distinct indices: repeats are the common case.
        let hi = (shape[dim] as i64 - 1).min(2);
        let ids = input(&src_shape, DType::U32, kinds.1, Values::Ints(0, hi), &mut rng);
        let src = input(&src_shape, dtype, kinds.2, vals, &mut rng);
        let y = dst.t.scatter_add(&ids.t, &src.t, sdim).unwrap();
        let mut want = dst.nd.clone();
        let mut scale: Vec<f64> = want.data.iter().map(|v| v.abs()).collect();
        for flat in 0..numel(&src_shape) {
            let i = unravel(flat, &src_shape);
            let mut j = i.clone();
            j[dim] = ids.nd.at(&i) as usize;
            let at = ravel(&j, &shape);
            want.data[at] += src.nd.data[flat];
            scale[at] += src.nd.data[flat].abs();
        }
        prop_assert_eq!(y.dims(), &shape[..]);
        prop_assert_eq!(y.dtype(), dtype);
        // Half types round after every addition: up to `m + 1` roundings.
        assert_close_scaled(&values(&y), &want.data, &scale, tol(dtype) * (m as f64 + 1.0), "scatter_add");
        // The destination is not modified in place.
        prop_assert_eq!(values(&dst.t), dst.nd.data.clone());
    }

    #[test]
    fn cat_along_every_dim(
        shape in shape_in(1, 4, 0),
        sizes in prop::collection::vec(0usize..5, 1..4),
        dtype in any_dtype(),
        kinds in prop::collection::vec(any_kind(), 3),
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let (dim, sdim) = pick_dim(shape.len(), &mut rng);
        let parts: Vec<Input> = sizes
            .iter()
            .zip(&kinds)
            .map(|(&s, &k)| {
                let mut sh = shape.clone();
                sh[dim] = s;
                input(&sh, dtype, k, Values::Uniform(-5.0, 5.0), &mut rng)
            })
            .collect();
        let refs: Vec<&Tensor> = parts.iter().map(|p| &p.t).collect();
        let y = Tensor::cat(&refs, sdim).unwrap();
        let mut out = shape.clone();
        out[dim] = sizes.iter().sum();
        let want = Nd::from_fn(&out, |i| {
            let mut j = i.to_vec();
            for p in &parts {
                if j[dim] < p.nd.shape[dim] {
                    return p.nd.at(&j);
                }
                j[dim] -= p.nd.shape[dim];
            }
            unreachable!()
        });
        prop_assert_eq!(y.dims(), &out[..]);
        prop_assert_eq!(values(&y), want.data);
    }
}

// ---------------------------------------------------------------------------------- casts

/// Values that probe rounding (ties, near-ties decided by low bits), overflow of the half
/// types, and float-to-u32 truncation and saturation.
fn cast_specials() -> Vec<f64> {
    let p = |e: i32| 2f64.powi(e);
    vec![
        0.0,
        -0.0,
        0.5,
        -0.7,
        1.5,
        2.5,
        3.99,
        -1.5,
        // f16 tie (rounds to even) and near-ties just above it
        1.0 + p(-11),
        1.0 + p(-11) + p(-23),
        1.0 + p(-11) + p(-40),
        // bf16 tie and near-ties
        1.0 + p(-8),
        1.0 + p(-8) + p(-23),
        1.0 + p(-8) + p(-40),
        65504.0,
        65519.0,
        65520.0,
        16_777_217.0,
        4_294_967_295.0,
        4_294_967_296.0,
        1e10,
        -1e10,
        3e38,
        1e-6,
        1e-9,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn cast_between_all_dtypes(
        n in 0usize..40,
        src in any_dtype(),
        kind in any_kind(),
        seed: u64,
    ) {
        let mut rng = Gen::new(seed);
        let specials = cast_specials();
        let vals = if src == DType::U32 { Values::Ints(0, 100_000) } else { Values::Uniform(-300.0, 70_000.0) };
        let mut x = input(&[n], src, kind, vals, &mut rng);
        // Mix in the special values (rounded to the source dtype), contiguously.
        if src == DType::U32 {
            let extra = representable(src, &[0.0, 7.0, 2049.0, 16_777_217.0, 4_294_967_295.0, 2_147_483_649.0]);
            let e = tensor(&extra, &[extra.len()], src);
            x = Input { t: Tensor::cat(&[&x.t, &e], 0).unwrap(), nd: Nd::new(&[n + extra.len()], [x.v(), &extra[..]].concat()) };
        } else {
            let extra = representable(src, &specials);
            let e = tensor(&extra, &[extra.len()], src);
            x = Input { t: Tensor::cat(&[&x.t, &e], 0).unwrap(), nd: Nd::new(&[n + extra.len()], [x.v(), &extra[..]].concat()) };
        }
        for dst in ALL {
            let y = x.t.to_dtype(dst).unwrap();
            prop_assert_eq!(y.dtype(), dst);
            let want = representable(dst, x.v());
            let got = values(&y);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                prop_assert!(
                    g == w || (g.is_nan() && w.is_nan()),
                    "{src} -> {dst}: {} gave {g}, want {w} (element {i})", x.v()[i]
                );
            }
        }
    }
}

/// Rounding to the half types must look at every bit of the source (the `half` crate's
/// `from_f64` ignores the low 32 bits of an f64, which turns near-ties into ties).
#[test]
fn cast_rounds_near_ties_to_nearest() {
    let p = |e: i32| 2f64.powi(e);
    // (source dtype, value, target dtype, expected)
    let cases = [
        (DType::F64, 1.0 + p(-11) + p(-40), DType::F16, 1.0 + p(-10)),
        (DType::F64, 1.0 + p(-8) + p(-40), DType::BF16, 1.0 + p(-7)),
        (DType::F32, 1.0 + p(-11) + p(-23), DType::F16, 1.0 + p(-10)),
        (DType::F32, 1.0 + p(-8) + p(-23), DType::BF16, 1.0 + p(-7)),
        (DType::F64, 1.0 + p(-11), DType::F16, 1.0),
        (DType::F64, 1.0 + p(-8), DType::BF16, 1.0),
        (DType::U32, 16_777_217.0, DType::F32, 16_777_216.0),
        (DType::U32, 16_777_219.0, DType::F32, 16_777_220.0),
        (DType::U32, 2049.0, DType::F16, 2048.0),
        (DType::U32, 65520.0, DType::F16, f64::INFINITY),
        (DType::F64, -0.5 - p(-40), DType::U32, 0.0),
        (DType::F64, 1e10, DType::U32, u32::MAX as f64),
        (DType::F64, 7.99, DType::U32, 7.0),
    ];
    for (src, v, dst, want) in cases {
        let x = tensor(&[v], &[1], src);
        let got = values(&x.to_dtype(dst).unwrap())[0];
        assert_eq!(got, want, "{src} {v} -> {dst}");
    }
    let f = Tensor::full(1.0 + p(-11) + p(-40), [2], DType::F16, &dev()).unwrap();
    assert_eq!(values(&f), [1.0 + p(-10); 2], "full rounds like a cast");
}

// ---------------------------------------------------------------------------------- creation

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn full_zeros_ones(shape in any_shape(), dtype in any_dtype(), v in -100i32..100) {
        let d = dev();
        let t = Tensor::full(v as f64 + 0.5, shape.clone(), dtype, &d).unwrap();
        prop_assert_eq!(t.dims(), &shape[..]);
        prop_assert_eq!(t.dtype(), dtype);
        let want = round_to(dtype, v as f64 + 0.5);
        prop_assert_eq!(values(&t), vec![want; numel(&shape)]);
        prop_assert_eq!(values(&Tensor::zeros(shape.clone(), dtype, &d).unwrap()), vec![0.0; numel(&shape)]);
        prop_assert_eq!(values(&Tensor::ones(shape.clone(), dtype, &d).unwrap()), vec![1.0; numel(&shape)]);
    }

    #[test]
    fn arange_matches_naive_loop(start in -20i32..20, len in -3i32..30, step in prop::sample::select(vec![1.0f64, 2.0, 0.5, 3.0, -1.0, -2.5]), dtype in any_float()) {
        let start = start as f64;
        let end = start + len as f64 * step;
        let mut want = vec![];
        let mut i = 0;
        loop {
            let v = start + i as f64 * step;
            if (step > 0.0 && v >= end) || (step < 0.0 && v <= end) {
                break;
            }
            want.push(round_to(dtype, v));
            i += 1;
        }
        let t = Tensor::arange_step(start, end, step, dtype, &dev()).unwrap();
        prop_assert_eq!(t.dims(), &[want.len()][..]);
        prop_assert_eq!(t.dtype(), dtype);
        prop_assert_eq!(values(&t), want);
    }
}

#[test]
fn arange_u32_and_unit_step() {
    let t = Tensor::arange(2.0, 7.0, DType::U32, &dev()).unwrap();
    assert_eq!(t.to_vec::<u32>().unwrap(), [2, 3, 4, 5, 6]);
    let e = Tensor::arange(5.0, 5.0, DType::F32, &dev()).unwrap();
    assert_eq!(e.dims(), &[0]);
    let f = Tensor::arange(-1.5, 1.0, DType::F64, &dev()).unwrap();
    assert_eq!(values(&f), [-1.5, -0.5, 0.5]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn rand_reproducible_and_seed_dependent(
        shape in shape_in(0, 3, 0),
        dtype in any_float(),
        seed: u64,
        lo in -5.0f64..5.0,
        width in 0.5f64..10.0,
    ) {
        let d = dev();
        let hi = lo + width;
        let u = |s: u64| Tensor::rand_uniform(lo, hi, shape.clone(), dtype, s, &d).unwrap();
        let n = |s: u64| Tensor::rand_normal(lo, width, shape.clone(), dtype, s, &d).unwrap();
        let (u1, u2, u3) = (u(seed), u(seed), u(seed.wrapping_add(1)));
        prop_assert_eq!(u1.dims(), &shape[..]);
        prop_assert_eq!(u1.dtype(), dtype);
        prop_assert_eq!(values(&u1), values(&u2));
        // Every sample in [low, high) as rounded to the dtype.
        let rlo = round_to(dtype, lo);
        for v in values(&u1) {
            prop_assert!(v >= rlo.min(lo) && v < hi, "{v} outside [{lo}, {hi})");
        }
        let (n1, n2, n3) = (n(seed), n(seed), n(seed.wrapping_add(1)));
        prop_assert_eq!(n1.dims(), &shape[..]);
        prop_assert_eq!(values(&n1), values(&n2));
        if numel(&shape) >= 4 {
            prop_assert_ne!(values(&u1), values(&u3));
            prop_assert_ne!(values(&n1), values(&n3));
        }
    }
}

#[test]
fn rand_moments() {
    let d = dev();
    for dtype in FLOATS {
        let u = values(&Tensor::rand_uniform(-1.0, 3.0, [20_000], dtype, 5, &d).unwrap());
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        assert!((mean - 1.0).abs() < 0.05, "{dtype} uniform mean {mean}");
        assert!(u.iter().all(|&v| (-1.0..3.0).contains(&v)));
        let n = values(&Tensor::rand_normal(2.0, 0.5, [20_000], dtype, 6, &d).unwrap());
        let m = n.iter().sum::<f64>() / n.len() as f64;
        let sd = (n.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n.len() as f64).sqrt();
        assert!(
            (m - 2.0).abs() < 0.03 && (sd - 0.5).abs() < 0.03,
            "{dtype} normal {m} {sd}"
        );
    }
}

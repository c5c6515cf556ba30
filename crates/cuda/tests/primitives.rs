//! Every primitive of the CUDA backend against the CPU backend: random shapes (rank 0-4,
//! zero-size dimensions), contiguous, permuted, narrowed and broadcast views, every GPU dtype.
//! Allocations are poisoned (NaN), so an output element a kernel does not write fails.
//!
//! Without a GPU every test prints one line and passes (`GLIMPSE_REQUIRE_CUDA=1` fails
//! instead).

mod common;

use common::*;
use glimpse_tensor::{BinaryOp, DType, ReduceOp, Tensor, UnaryOp};
use proptest::prelude::*;

const CASES: u32 = 48;

// ---------------------------------------------------------------------------------- memory

#[test]
fn upload_download_and_contiguous_copies() {
    check(
        "upload_download_and_contiguous_copies",
        CASES,
        (any_shape(), any_dtype(), any_kind(), any::<u64>()),
        |g, (shape, dtype, kind, seed)| {
            let mut rng = Gen::new(seed);
            let x = pair(
                &shape,
                dtype,
                kind,
                Values::Uniform(-100.0, 100.0),
                &mut rng,
                g,
            );
            // download of a view (strided read) and of a contiguous copy
            assert_same(&x.gpu, &x.cpu, "download");
            let c = x.gpu.copy().unwrap();
            prop_assert!(c.is_contiguous());
            assert_same(&c, &x.cpu, &format!("copy {dtype} {kind:?}"));
            Ok(())
        },
    );
}

#[test]
fn full_zeros_ones() {
    check(
        "full_zeros_ones",
        CASES,
        (any_shape(), any_dtype(), -100i32..100),
        |g, (shape, dtype, v)| {
            for value in [
                v as f64 + 0.5,
                1.0 + 2f64.powi(-11) + 2f64.powi(-40),
                -3.0,
                0.0,
            ] {
                let want = Tensor::full(value, shape.clone(), dtype, &cpu()).unwrap();
                let got = Tensor::full(value, shape.clone(), dtype, g).unwrap();
                assert_same(&got, &want, &format!("full {value} {dtype}"));
            }
            assert_same(
                &Tensor::ones(shape.clone(), dtype, g).unwrap(),
                &Tensor::ones(shape.clone(), dtype, &cpu()).unwrap(),
                "ones",
            );
            Ok(())
        },
    );
}

#[test]
fn upload_bytes_reads_raw_little_endian() {
    let Some(g) = gpu("upload_bytes_reads_raw_little_endian") else {
        return;
    };
    let v: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    // An odd start offset: the bytes are not aligned for f32 on the host.
    let mut shifted = vec![0u8];
    shifted.extend(&bytes);
    let owner: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync> = std::sync::Arc::new(shifted);
    let shared = glimpse_tensor::SharedBytes::new(owner, 1..1 + bytes.len()).unwrap();
    let t = Tensor::from_bytes(shared, DType::F32, [37], &g).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), v);
}

// ---------------------------------------------------------------------------------- casts

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
        1.0 + p(-11),
        1.0 + p(-11) + p(-23),
        1.0 + p(-8),
        1.0 + p(-8) + p(-23),
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
        f64::NAN,
    ]
}

#[test]
fn cast_between_all_dtypes() {
    check(
        "cast_between_all_dtypes",
        CASES,
        (0usize..40, any_dtype(), any_kind(), any::<u64>()),
        |g, (n, src, kind, seed)| {
            let mut rng = Gen::new(seed);
            let vals = if src == DType::U32 {
                Values::Ints(0, 100_000)
            } else {
                Values::Uniform(-300.0, 70_000.0)
            };
            let x = pair(&[n], src, kind, vals, &mut rng, g);
            let extra: Vec<f64> = if src == DType::U32 {
                vec![
                    0.0,
                    7.0,
                    2049.0,
                    65519.0,
                    65520.0,
                    16_777_217.0,
                    16_777_219.0,
                    4_294_967_295.0,
                    2_147_483_649.0,
                    0x0101_0101 as f64,
                    0x0180_8001 as f64,
                ]
            } else {
                cast_specials()
            };
            let e_cpu = tensor(&extra, &[extra.len()], src, &cpu());
            let e_gpu = tensor(&extra, &[extra.len()], src, g);
            let xc = Tensor::cat(&[&x.cpu, &e_cpu], 0).unwrap();
            let xg = Tensor::cat(&[&x.gpu, &e_gpu], 0).unwrap();
            for dst in DTYPES {
                let want = xc.to_dtype(dst).unwrap();
                let got = xg.to_dtype(dst).unwrap();
                assert_same(&got, &want, &format!("{src} -> {dst}"));
                // strided source too
                let got = x.gpu.to_dtype(dst).unwrap();
                assert_same(
                    &got,
                    &x.cpu.to_dtype(dst).unwrap(),
                    &format!("{src} -> {dst} {kind:?}"),
                );
            }
            Ok(())
        },
    );
}

#[test]
fn f64_is_not_supported() {
    let Some(g) = gpu("f64_is_not_supported") else {
        return;
    };
    assert!(!g.backend().supports_dtype(DType::F64));
    let is_unsupported = |r: glimpse_tensor::Result<Tensor>| {
        matches!(r, Err(glimpse_tensor::Error::UnsupportedDType { .. }))
    };
    assert!(is_unsupported(Tensor::zeros([2], DType::F64, &g)));
    assert!(is_unsupported(Tensor::from_vec(vec![1.0f64], [1], &g)));
    let x = Tensor::ones([2], DType::F32, &g).unwrap();
    assert!(is_unsupported(x.to_dtype(DType::F64)));
}

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

fn unary_domain(op: UnaryOp) -> Values {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Recip | UnaryOp::Powf(_) => {
            Values::Uniform(0.05, 4.0)
        }
        _ => Values::Uniform(-4.0, 4.0),
    }
}

#[test]
fn unary_float() {
    check(
        "unary_float",
        CASES,
        (any_shape(), any_float(), any_kind(), any::<u64>()),
        |g, (shape, dtype, kind, seed)| {
            let mut rng = Gen::new(seed);
            for op in UNARY {
                let x = pair(&shape, dtype, kind, unary_domain(op), &mut rng, g);
                let got = x.gpu.unary(op).unwrap();
                let want = x.cpu.unary(op).unwrap();
                assert_matches(&got, &want, &format!("{op:?} {dtype} {kind:?} {shape:?}"));
            }
            Ok(())
        },
    );
}

#[test]
fn unary_u32() {
    check(
        "unary_u32",
        CASES,
        (any_shape(), any_kind(), any::<u64>()),
        |g, (shape, kind, seed)| {
            let mut rng = Gen::new(seed);
            let x = pair(
                &shape,
                DType::U32,
                kind,
                Values::Ints(0, 70_000),
                &mut rng,
                g,
            );
            for op in [
                UnaryOp::Abs,
                UnaryOp::Relu,
                UnaryOp::Sqr,
                UnaryOp::Clamp {
                    min: 10.0,
                    max: 500.0,
                },
                UnaryOp::Affine {
                    mul: 0.5,
                    add: 0.75,
                },
                UnaryOp::Affine {
                    mul: -1.0,
                    add: 3.0,
                },
            ] {
                assert_same(
                    &x.gpu.unary(op).unwrap(),
                    &x.cpu.unary(op).unwrap(),
                    &format!("{op:?}"),
                );
            }
            Ok(())
        },
    );
}

#[test]
fn unary_special_values() {
    let Some(g) = gpu("unary_special_values") else {
        return;
    };
    let v = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -0.0,
        1e-30,
        -1e30,
        88.0,
        -88.0,
    ];
    for dtype in FLOATS {
        let (c, x) = (
            tensor(&v, &[v.len()], dtype, &cpu()),
            tensor(&v, &[v.len()], dtype, &g),
        );
        for op in UNARY {
            assert_matches(
                &x.unary(op).unwrap(),
                &c.unary(op).unwrap(),
                &format!("{op:?} {dtype}"),
            );
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

fn binary_domains(op: BinaryOp) -> (Values, Values) {
    match op {
        BinaryOp::Div => (Values::Uniform(-3.0, 3.0), Values::AwayFromZero(0.5, 3.0)),
        BinaryOp::Pow => (Values::Uniform(0.1, 3.0), Values::Uniform(-2.0, 2.0)),
        BinaryOp::Maximum | BinaryOp::Minimum => (Values::Ints(-3, 3), Values::Ints(-3, 3)),
        c if c.is_comparison() => (Values::Ints(-2, 2), Values::Ints(-2, 2)),
        _ => (Values::Uniform(-3.0, 3.0), Values::Uniform(-3.0, 3.0)),
    }
}

#[test]
fn binary_float_broadcast() {
    check(
        "binary_float_broadcast",
        CASES,
        (
            any_shape(),
            any_float(),
            any_kind(),
            any_kind(),
            any::<u64>(),
        ),
        |g, (out, dtype, ka, kb, seed)| {
            let mut rng = Gen::new(seed);
            let sa = broadcastable_to(&out, &mut rng);
            let sb = broadcastable_to(&out, &mut rng);
            for op in ARITH.iter().chain(&CMP).copied() {
                let (va, vb) = binary_domains(op);
                let a = pair(&sa, dtype, ka, va, &mut rng, g);
                let b = pair(&sb, dtype, kb, vb, &mut rng, g);
                let got = a.gpu.binary(op, &b.gpu).unwrap();
                let want = a.cpu.binary(op, &b.cpu).unwrap();
                let what = format!("{op:?} {dtype} {sa:?}({ka:?}) {sb:?}({kb:?})");
                if op.is_comparison() {
                    assert_same(&got, &want, &what);
                } else {
                    assert_matches(&got, &want, &what);
                }
            }
            Ok(())
        },
    );
}

#[test]
fn binary_u32() {
    check(
        "binary_u32",
        CASES,
        (
            any_shape(),
            any_kind(),
            any_kind(),
            any::<bool>(),
            any::<u64>(),
        ),
        |g, (out, ka, kb, big, seed)| {
            let mut rng = Gen::new(seed);
            let sa = broadcastable_to(&out, &mut rng);
            let sb = broadcastable_to(&out, &mut rng);
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
                let a = pair(&sa, DType::U32, ka, va, &mut rng, g);
                let b = pair(&sb, DType::U32, kb, vb, &mut rng, g);
                assert_same(
                    &a.gpu.binary(op, &b.gpu).unwrap(),
                    &a.cpu.binary(op, &b.cpu).unwrap(),
                    &format!("{op:?}"),
                );
            }
            Ok(())
        },
    );
}

#[test]
fn float_maximum_minimum_propagate_nan() {
    let Some(g) = gpu("float_maximum_minimum_propagate_nan") else {
        return;
    };
    for dtype in FLOATS {
        let a = tensor(&[f64::NAN, 1.0, 2.0], &[3], dtype, &g);
        let b = tensor(&[0.0, f64::NAN, 1.0], &[3], dtype, &g);
        for y in [a.maximum(&b).unwrap(), a.minimum(&b).unwrap()] {
            let v = values(&y);
            assert!(v[0].is_nan() && v[1].is_nan(), "{dtype} {v:?}");
        }
    }
}

#[test]
fn where_cond_broadcast() {
    check(
        "where_cond_broadcast",
        CASES,
        (
            any_shape(),
            any_dtype(),
            (any_kind(), any_kind(), any_kind()),
            any::<u64>(),
        ),
        |g, (out, dtype, kinds, seed)| {
            let mut rng = Gen::new(seed);
            let (sc, st, sf) = (
                broadcastable_to(&out, &mut rng),
                broadcastable_to(&out, &mut rng),
                broadcastable_to(&out, &mut rng),
            );
            let c = pair(&sc, DType::U32, kinds.0, Values::Ints(0, 2), &mut rng, g);
            let t = pair(
                &st,
                dtype,
                kinds.1,
                Values::Uniform(-100.0, 100.0),
                &mut rng,
                g,
            );
            let f = pair(
                &sf,
                dtype,
                kinds.2,
                Values::Uniform(-100.0, 100.0),
                &mut rng,
                g,
            );
            assert_same(
                &c.gpu.where_cond(&t.gpu, &f.gpu).unwrap(),
                &c.cpu.where_cond(&t.cpu, &f.cpu).unwrap(),
                &format!("where {dtype}"),
            );
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------- reduce

const REDUCE: [ReduceOp; 5] = [
    ReduceOp::Sum,
    ReduceOp::Max,
    ReduceOp::Min,
    ReduceOp::ArgMax,
    ReduceOp::ArgMin,
];

/// `sum |x|` along `dim` on the CPU in f64: the scale of a sum's rounding error.
fn abs_sum(x: &Tensor, dim: usize, keepdim: bool) -> Vec<f64> {
    let a = x.to_dtype(DType::F64).unwrap().abs().unwrap();
    values(&a.reduce(ReduceOp::Sum, dim, keepdim).unwrap())
}

fn check_reductions(x: &Pair, dim: usize, keepdim: bool, what: &str) {
    for op in REDUCE {
        if x.cpu.dims()[dim] == 0 && op != ReduceOp::Sum {
            continue;
        }
        let got = x.gpu.reduce(op, dim, keepdim).unwrap();
        let want = x.cpu.reduce(op, dim, keepdim).unwrap();
        let what = format!("{op:?} {what} dim {dim}");
        assert_eq!(got.dims(), want.dims(), "{what}");
        if op == ReduceOp::Sum && x.cpu.dtype() != DType::U32 {
            let scale = abs_sum(&x.cpu, dim, keepdim);
            assert_close_scaled(
                &values(&got),
                &values(&want),
                &scale,
                tol(x.cpu.dtype()),
                &what,
            );
        } else {
            assert_same(&got, &want, &what);
        }
    }
}

#[test]
fn reductions() {
    check(
        "reductions",
        CASES,
        (
            shape_in(1, 4, 0),
            any_dtype(),
            any_kind(),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
        ),
        |g, (shape, dtype, kind, keepdim, ties, seed)| {
            let mut rng = Gen::new(seed);
            let dim = rng.below(shape.len());
            let vals = if ties || dtype == DType::U32 {
                Values::Ints(0, 3)
            } else {
                Values::Uniform(-3.0, 3.0)
            };
            let x = pair(&shape, dtype, kind, vals, &mut rng, g);
            check_reductions(&x, dim, keepdim, &format!("{dtype} {shape:?} {kind:?}"));
            Ok(())
        },
    );
}

#[test]
fn reductions_of_long_rows_and_many_rows() {
    let Some(g) = gpu("reductions_of_long_rows_and_many_rows") else {
        return;
    };
    let mut rng = Gen::new(7);
    for dtype in DTYPES {
        for (shape, kind) in [
            (vec![3, 5000], Kind::Contiguous),
            (vec![70_000, 3], Kind::Contiguous),
            (vec![40, 300, 7], Kind::Permuted),
            (vec![1, 1025], Kind::Narrowed),
        ] {
            let vals = if dtype == DType::U32 {
                Values::Ints(0, 1000)
            } else {
                Values::Uniform(-3.0, 3.0)
            };
            let x = pair(&shape, dtype, kind, vals, &mut rng, &g);
            for dim in 0..shape.len() {
                check_reductions(&x, dim, false, &format!("{dtype} {shape:?} {kind:?}"));
            }
        }
    }
}

#[test]
fn reductions_with_nan() {
    let Some(g) = gpu("reductions_with_nan") else {
        return;
    };
    let nan = f64::NAN;
    let rows: [&[f64]; 5] = [
        &[1.0, nan, 3.0, 0.5],
        &[nan, 1.0, 3.0, 0.5],
        &[2.0, 3.0, nan, 3.0],
        &[nan, nan, nan, nan],
        &[-1.0, -1.0, f64::NEG_INFINITY, nan],
    ];
    for dtype in FLOATS {
        let data: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let c = Pair {
            cpu: tensor(&data, &[5, 4], dtype, &cpu()),
            gpu: tensor(&data, &[5, 4], dtype, &g),
        };
        check_reductions(&c, 1, true, &format!("nan rows {dtype}"));
        // and a long row, so that the NaN meets the shared-memory tree
        let mut long = vec![1.0; 3000];
        long[1777] = nan;
        long[2000] = 5.0;
        let c = Pair {
            cpu: tensor(&long, &[3000], dtype, &cpu()),
            gpu: tensor(&long, &[3000], dtype, &g),
        };
        check_reductions(&c, 0, false, &format!("long nan row {dtype}"));
    }
}

#[test]
fn argmax_argmin_take_the_first_of_equal_values() {
    let Some(g) = gpu("argmax_argmin_take_the_first_of_equal_values") else {
        return;
    };
    for dtype in DTYPES {
        let x = tensor(&[1.0, 3.0, 3.0, 0.0, 0.0, 3.0], &[2, 3], dtype, &g);
        assert_eq!(values(&x.argmax(1).unwrap()), [1.0, 2.0]);
        assert_eq!(values(&x.argmin(1).unwrap()), [0.0, 0.0]);
        assert_eq!(values(&x.argmax(0).unwrap()), [0.0, 0.0, 0.0]);
        let long = tensor(&vec![2.0; 2000], &[2000], dtype, &g);
        assert_eq!(values(&long.argmax(0).unwrap()), [0.0]);
        assert_eq!(values(&long.argmin(0).unwrap()), [0.0]);
    }
}

// ---------------------------------------------------------------------------------- matmul

/// An operand of shape `(batch.., rows, cols)`: laid out as `kind`, or stored as
/// `(batch.., cols, rows)` and transposed.
#[allow(clippy::too_many_arguments)]
fn matmul_operand(
    batch: &[usize],
    rows: usize,
    cols: usize,
    dtype: DType,
    kind: Kind,
    transposed: bool,
    rng: &mut Gen,
    g: &glimpse_tensor::Device,
) -> Pair {
    let mut shape = batch.to_vec();
    if transposed {
        shape.extend([cols, rows]);
        let x = pair(&shape, dtype, kind, Values::Uniform(-2.0, 2.0), rng, g);
        Pair {
            cpu: x.cpu.t().unwrap(),
            gpu: x.gpu.t().unwrap(),
        }
    } else {
        shape.extend([rows, cols]);
        pair(&shape, dtype, kind, Values::Uniform(-2.0, 2.0), rng, g)
    }
}

/// Compares a product with the CPU's: tolerance `tol(dtype)` scaled by `sum |a||b|` per
/// entry (computed in f64) and by `k / 64` for long dot products.
fn check_matmul(a: &Pair, b: &Pair, what: &str) {
    let got = a.gpu.matmul(&b.gpu).unwrap();
    let want = a.cpu.matmul(&b.cpu).unwrap();
    assert_eq!(got.dims(), want.dims(), "{what}");
    assert_eq!(got.dtype(), want.dtype(), "{what}");
    let abs = |t: &Tensor| t.to_dtype(DType::F64).unwrap().abs().unwrap();
    let scale = values(&abs(&a.cpu).matmul(&abs(&b.cpu)).unwrap());
    let k = a.cpu.dims()[a.cpu.rank() - 1];
    let t = tol(want.dtype()) * (k as f64 / 64.0).max(1.0);
    assert_close_scaled(&values(&got), &values(&want), &scale, t, what);
}

#[test]
fn matmul_batched() {
    check(
        "matmul_batched",
        CASES,
        (
            shape_in(0, 2, 0),
            (0usize..6, 0usize..6, 0usize..6),
            any_float(),
            (any_kind(), any_kind()),
            (any::<bool>(), any::<bool>()),
            any::<u64>(),
        ),
        |g, (out_batch, (m, k, n), dtype, (ka, kb), (ta, tb), seed)| {
            let mut rng = Gen::new(seed);
            let ba = broadcastable_to(&out_batch, &mut rng);
            let bb = broadcastable_to(&out_batch, &mut rng);
            let a = matmul_operand(&ba, m, k, dtype, ka, ta, &mut rng, g);
            let b = matmul_operand(&bb, k, n, dtype, kb, tb, &mut rng, g);
            check_matmul(
                &a,
                &b,
                &format!("{dtype} a {ba:?}+{m}x{k} {ka:?} t{ta}, b {bb:?}+{k}x{n} {kb:?} t{tb}"),
            );
            Ok(())
        },
    );
}

#[test]
fn matmul_larger() {
    check(
        "matmul_larger",
        16,
        (
            (1usize..300, 1usize..300, 1usize..300),
            1usize..4,
            any_float(),
            (any::<bool>(), any::<bool>()),
            any::<u64>(),
        ),
        |g, ((m, k, n), batch, dtype, (ta, tb), seed)| {
            let mut rng = Gen::new(seed);
            let a = matmul_operand(&[batch], m, k, dtype, Kind::Contiguous, ta, &mut rng, g);
            let b = matmul_operand(&[], k, n, dtype, Kind::Narrowed, tb, &mut rng, g);
            check_matmul(&a, &b, &format!("{dtype} {batch}x{m}x{k}x{n} t{ta} t{tb}"));
            Ok(())
        },
    );
}

#[test]
fn matmul_with_k_zero_and_many_batch_dims() {
    let Some(g) = gpu("matmul_with_k_zero_and_many_batch_dims") else {
        return;
    };
    for dtype in FLOATS {
        let a = Tensor::zeros([2, 3, 0], dtype, &g).unwrap();
        let b = Tensor::zeros([0, 4], dtype, &g).unwrap();
        let y = a.matmul(&b).unwrap();
        assert_eq!(y.dims(), &[2, 3, 4]);
        assert_eq!(values(&y), vec![0.0; 24]);
        // Batch dims that cannot merge (a permuted batch): looped on the host.
        let mut rng = Gen::new(3);
        let a = pair(
            &[3, 4, 5, 6],
            dtype,
            Kind::Permuted,
            Values::Uniform(-1.0, 1.0),
            &mut rng,
            &g,
        );
        let b = pair(
            &[3, 4, 6, 2],
            dtype,
            Kind::PermutedNarrowed,
            Values::Uniform(-1.0, 1.0),
            &mut rng,
            &g,
        );
        check_matmul(&a, &b, &format!("{dtype} permuted batches"));
    }
}

#[test]
fn matmul_f32_is_not_tf32_by_default() {
    let Some(g) = gpu("matmul_f32_is_not_tf32_by_default") else {
        return;
    };
    // 1 + 2^-20 is exact in f32 but rounds to 1 in TF32 (10 mantissa bits). Each row of `a`
    // holds it once (the rest zeros), so every entry of `a @ ones` is exactly it in f32.
    let v = 1.0 + 2f64.powi(-20);
    let a: Vec<f64> = (0..64 * 64)
        .map(|i| if i % 64 == i / 64 { v } else { 0.0 })
        .collect();
    let a = tensor(&a, &[64, 64], DType::F32, &g);
    let b = tensor(&vec![1.0; 64 * 64], &[64, 64], DType::F32, &g);
    let y = values(&a.matmul(&b).unwrap());
    assert!(y.iter().all(|&x| x == v), "{} vs {v}", y[0]);
}

// ---------------------------------------------------------------------------------- indexing

fn pick_dim(rank: usize, rng: &mut Gen) -> usize {
    rng.below(rank)
}

#[test]
fn index_select_matches_cpu() {
    check(
        "index_select_matches_cpu",
        CASES,
        (
            shape_in(1, 4, 0),
            0usize..7,
            any_dtype(),
            any_kind(),
            any_kind(),
            any::<u64>(),
        ),
        |g, (shape, n_ids, dtype, kind, ids_kind, seed)| {
            let mut rng = Gen::new(seed);
            let dim = pick_dim(shape.len(), &mut rng);
            let n_ids = if shape[dim] == 0 { 0 } else { n_ids };
            let x = pair(&shape, dtype, kind, Values::Uniform(-5.0, 5.0), &mut rng, g);
            let hi = shape[dim].max(1) as i64 - 1;
            let ids = pair(
                &[n_ids],
                DType::U32,
                ids_kind,
                Values::Ints(0, hi),
                &mut rng,
                g,
            );
            assert_same(
                &x.gpu.index_select(&ids.gpu, dim).unwrap(),
                &x.cpu.index_select(&ids.cpu, dim).unwrap(),
                &format!("{dtype} {shape:?} dim {dim} {kind:?}"),
            );
            Ok(())
        },
    );
}

#[test]
fn gather_matches_cpu() {
    check(
        "gather_matches_cpu",
        CASES,
        (
            shape_in(1, 4, 0),
            0usize..6,
            any_dtype(),
            any_kind(),
            any_kind(),
            any::<u64>(),
        ),
        |g, (shape, m, dtype, kind, ids_kind, seed)| {
            let mut rng = Gen::new(seed);
            let dim = pick_dim(shape.len(), &mut rng);
            let mut ids_shape = shape.clone();
            ids_shape[dim] = if shape[dim] == 0 { 0 } else { m };
            let x = pair(&shape, dtype, kind, Values::Uniform(-5.0, 5.0), &mut rng, g);
            let hi = shape[dim].max(1) as i64 - 1;
            let ids = pair(
                &ids_shape,
                DType::U32,
                ids_kind,
                Values::Ints(0, hi),
                &mut rng,
                g,
            );
            assert_same(
                &x.gpu.gather(&ids.gpu, dim).unwrap(),
                &x.cpu.gather(&ids.cpu, dim).unwrap(),
                &format!("{dtype} {shape:?} dim {dim} {kind:?}"),
            );
            Ok(())
        },
    );
}

#[test]
fn scatter_add_accumulates_repeated_indices() {
    check(
        "scatter_add_accumulates_repeated_indices",
        CASES,
        (
            shape_in(1, 4, 1),
            0usize..6,
            any_dtype(),
            (any_kind(), any_kind(), any_kind()),
            any::<u64>(),
        ),
        |g, (shape, m, dtype, kinds, seed)| {
            let mut rng = Gen::new(seed);
            let dim = pick_dim(shape.len(), &mut rng);
            let mut src_shape = shape.clone();
            src_shape[dim] = m;
            let vals = if dtype == DType::U32 {
                Values::Ints(0, 50)
            } else {
                Values::Uniform(-3.0, 3.0)
            };
            let dst = pair(&shape, dtype, kinds.0, vals, &mut rng, g);
            let hi = (shape[dim] as i64 - 1).min(2);
            let ids = pair(
                &src_shape,
                DType::U32,
                kinds.1,
                Values::Ints(0, hi),
                &mut rng,
                g,
            );
            let src = pair(&src_shape, dtype, kinds.2, vals, &mut rng, g);
            let got = dst.gpu.scatter_add(&ids.gpu, &src.gpu, dim).unwrap();
            let want = dst.cpu.scatter_add(&ids.cpu, &src.cpu, dim).unwrap();
            // Both round after every addition, in different orders: up to m + 1 roundings,
            // relative to the sum of the magnitudes that met in each element.
            let scale = {
                let abs = |t: &Tensor| t.to_dtype(DType::F64).unwrap().abs().unwrap();
                values(
                    &abs(&dst.cpu)
                        .scatter_add(&ids.cpu, &abs(&src.cpu), dim)
                        .unwrap(),
                )
            };
            let what = format!("{dtype} {shape:?} dim {dim} {kinds:?}");
            assert_eq!(got.dims(), want.dims(), "{what}");
            assert_close_scaled(
                &values(&got),
                &values(&want),
                &scale,
                tol(dtype) * (m as f64 + 1.0),
                &what,
            );
            // the destination is not modified
            assert_same(&dst.gpu, &dst.cpu, "dst untouched");
            Ok(())
        },
    );
}

#[test]
fn scatter_add_with_heavy_contention() {
    let Some(g) = gpu("scatter_add_with_heavy_contention") else {
        return;
    };
    // 100k additions into 3 (f16/bf16: neighbouring 16-bit halves of one word) elements.
    for dtype in DTYPES {
        let n = 100_000;
        let ids: Vec<f64> = (0..n).map(|i| (i % 3) as f64).collect();
        let ones = vec![1.0; n];
        let dst_c = Tensor::zeros([3], dtype, &cpu()).unwrap();
        let dst_g = Tensor::zeros([3], dtype, &g).unwrap();
        let want = dst_c
            .scatter_add(
                &tensor(&ids, &[n], DType::U32, &cpu()),
                &tensor(&ones, &[n], dtype, &cpu()),
                0,
            )
            .unwrap();
        let got = dst_g
            .scatter_add(
                &tensor(&ids, &[n], DType::U32, &g),
                &tensor(&ones, &[n], dtype, &g),
                0,
            )
            .unwrap();
        // Adding ones saturates identically in any order (f16 stops at 2048, bf16 at 256).
        assert_same(&got, &want, &format!("{dtype}"));
    }
}

#[test]
fn cat_along_every_dim() {
    check(
        "cat_along_every_dim",
        CASES,
        (
            shape_in(1, 4, 0),
            prop::collection::vec(0usize..5, 1..4),
            any_dtype(),
            prop::collection::vec(any_kind(), 3),
            any::<u64>(),
        ),
        |g, (shape, sizes, dtype, kinds, seed)| {
            let mut rng = Gen::new(seed);
            let dim = pick_dim(shape.len(), &mut rng);
            let parts: Vec<Pair> = sizes
                .iter()
                .zip(&kinds)
                .map(|(&s, &k)| {
                    let mut sh = shape.clone();
                    sh[dim] = s;
                    pair(&sh, dtype, k, Values::Uniform(-5.0, 5.0), &mut rng, g)
                })
                .collect();
            let gp: Vec<&Tensor> = parts.iter().map(|p| &p.gpu).collect();
            let cp: Vec<&Tensor> = parts.iter().map(|p| &p.cpu).collect();
            assert_same(
                &Tensor::cat(&gp, dim).unwrap(),
                &Tensor::cat(&cp, dim).unwrap(),
                &format!("{dtype} {shape:?} dim {dim} {sizes:?}"),
            );
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------- high rank

#[test]
fn ranks_past_eight_merge_or_fail_cleanly() {
    let Some(g) = gpu("ranks_past_eight_merge_or_fail_cleanly") else {
        return;
    };
    let dims = [2usize, 1, 2, 2, 1, 2, 2, 1, 2, 2, 3];
    let n: usize = dims.iter().product();
    let data: Vec<f64> = (0..n).map(|i| i as f64 * 0.01).collect();
    let c = tensor(&data, &dims, DType::F32, &cpu());
    let x = tensor(&data, &dims, DType::F32, &g);
    // Contiguous (merges to rank 1), and a permutation that keeps most dims mergeable.
    assert_matches(&x.exp().unwrap(), &c.exp().unwrap(), "rank 11 contiguous");
    let p: Vec<usize> = (0..dims.len()).rev().collect();
    let r = x.permute(&p).unwrap().contiguous();
    match r {
        Ok(t) => assert_same(
            &t,
            &c.permute(&p).unwrap().contiguous().unwrap(),
            "rank 11 reversed",
        ),
        Err(e) => assert!(matches!(e, glimpse_tensor::Error::Backend { .. }), "{e}"),
    }
    // a reduction over a high-rank view
    assert_close_scaled(
        &values(&x.sum(10).unwrap()),
        &values(&c.sum(10).unwrap()),
        &[10.0],
        1e-5,
        "rank 11 sum",
    );
}

// ---------------------------------------------------------------------------------- random

#[test]
fn rand_reproducible_in_range_and_like_the_cpu() {
    check(
        "rand_reproducible_in_range_and_like_the_cpu",
        24,
        (
            shape_in(0, 3, 0),
            any_float(),
            any::<u64>(),
            -5.0f64..5.0,
            0.5f64..10.0,
        ),
        |g, (shape, dtype, seed, lo, width)| {
            let hi = lo + width;
            let u = |s: u64, d: &glimpse_tensor::Device| {
                Tensor::rand_uniform(lo, hi, shape.clone(), dtype, s, d).unwrap()
            };
            let nrm = |s: u64, d: &glimpse_tensor::Device| {
                Tensor::rand_normal(lo, width, shape.clone(), dtype, s, d).unwrap()
            };
            let (u1, u2, u3) = (u(seed, g), u(seed, g), u(seed.wrapping_add(1), g));
            prop_assert_eq!(u1.dims(), &shape[..]);
            prop_assert_eq!(values(&u1), values(&u2));
            for v in values(&u1) {
                prop_assert!(
                    v >= lo.min(values(&Tensor::full(lo, [1], dtype, g).unwrap())[0]) && v < hi,
                    "{} outside [{}, {})",
                    v,
                    lo,
                    hi
                );
            }
            let (n1, n2, n3) = (nrm(seed, g), nrm(seed, g), nrm(seed.wrapping_add(1), g));
            prop_assert_eq!(values(&n1), values(&n2));
            let count: usize = shape.iter().product();
            if count >= 4 {
                prop_assert_ne!(values(&u1), values(&u3));
                prop_assert_ne!(values(&n1), values(&n3));
            }
            // The same generator as the CPU's, computed in f64 on the device.
            let scale = [lo.abs() + width];
            assert_close_scaled(
                &values(&u1),
                &values(&u(seed, &cpu())),
                &scale,
                tol(dtype),
                "uniform vs cpu",
            );
            assert_close_scaled(
                &values(&n1),
                &values(&nrm(seed, &cpu())),
                &scale,
                tol(dtype),
                "normal vs cpu",
            );
            Ok(())
        },
    );
}

#[test]
fn rand_moments() {
    let Some(g) = gpu("rand_moments") else {
        return;
    };
    for dtype in FLOATS {
        let u = values(&Tensor::rand_uniform(-1.0, 3.0, [200_000], dtype, 5, &g).unwrap());
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        assert!((mean - 1.0).abs() < 0.02, "{dtype} uniform mean {mean}");
        assert!(u.iter().all(|&v| (-1.0..3.0).contains(&v)));
        let n = values(&Tensor::rand_normal(2.0, 0.5, [200_000], dtype, 6, &g).unwrap());
        let m = n.iter().sum::<f64>() / n.len() as f64;
        let sd = (n.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n.len() as f64).sqrt();
        assert!(
            (m - 2.0).abs() < 0.01 && (sd - 0.5).abs() < 0.01,
            "{dtype} normal {m} {sd}"
        );
    }
}

// ---------------------------------------------------------------------------------- big

#[test]
fn large_element_wise_ops_cover_every_element() {
    let Some(g) = gpu("large_element_wise_ops_cover_every_element") else {
        return;
    };
    let mut rng = Gen::new(11);
    // More elements than one pass of the grid covers is too big for a test; this still
    // spans thousands of blocks and a non-contiguous broadcast.
    for dtype in FLOATS {
        let a = pair(
            &[1000, 1500],
            dtype,
            Kind::Permuted,
            Values::Uniform(-2.0, 2.0),
            &mut rng,
            &g,
        );
        let b = pair(
            &[1, 1500],
            dtype,
            Kind::Contiguous,
            Values::Uniform(-2.0, 2.0),
            &mut rng,
            &g,
        );
        assert_matches(
            &a.gpu.mul(&b.gpu).unwrap(),
            &a.cpu.mul(&b.cpu).unwrap(),
            "big mul",
        );
        assert_matches(
            &a.gpu.gelu_erf().unwrap(),
            &a.cpu.gelu_erf().unwrap(),
            "big gelu",
        );
    }
}

//! Every primitive of a backend against the CPU backend: random shapes (rank 0-4, zero-size
//! dimensions), contiguous, permuted, narrowed and broadcast views, every dtype of the target.
//! With poisoned allocations (NaN) an output element a kernel does not write fails.

use glimpse_tensor::{BinaryOp, DType, ReduceOp, Tensor, UnaryOp};
use proptest::prelude::*;

use crate::*;

const CASES: u32 = 48;

// ---------------------------------------------------------------------------------- memory

/// Uploads and downloads (of views, through strided reads) and contiguous copies of every view
/// kind reproduce the bits exactly.
pub fn upload_download_and_contiguous_copies(t: &Target) {
    t.run(
        "upload_download_and_contiguous_copies",
        CASES,
        (any_shape(), t.any_dtype(), any_kind(), any::<u64>()),
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

/// `full` (values exact in the dtype, values that round, zero) and `ones` equal the CPU's.
pub fn full_zeros_ones(t: &Target) {
    t.run(
        "full_zeros_ones",
        CASES,
        (any_shape(), t.any_dtype(), -100i32..100),
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

/// `Tensor::from_bytes` reads raw little-endian f32 bytes that are not aligned on the host.
pub fn upload_bytes_reads_raw_little_endian(t: &Target) {
    let g = &t.device;
    let v: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    // An odd start offset: the bytes are not aligned for f32 on the host.
    let mut shifted = vec![0u8];
    shifted.extend(&bytes);
    let owner: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync> = std::sync::Arc::new(shifted);
    let shared = glimpse_tensor::SharedBytes::new(owner, 1..1 + bytes.len()).unwrap();
    let x = Tensor::from_bytes(shared, DType::F32, [37], g).unwrap();
    assert_eq!(x.to_vec::<f32>().unwrap(), v);
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

/// Casts between every pair of the target's dtypes, of random values and of the hard cases
/// (rounding ties, overflow to infinity, saturation to u32, NaN, signed zero), from contiguous
/// and strided sources, equal the CPU's bit for bit.
pub fn cast_between_all_dtypes(t: &Target) {
    t.run(
        "cast_between_all_dtypes",
        CASES,
        (0usize..40, t.any_dtype(), any_kind(), any::<u64>()),
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
            for &dst in &t.dtypes {
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

/// Every dtype the target does not hold (CUDA: f64; wgpu: f64, bf16 and f16 without
/// `SHADER_F16`) is refused with `Error::UnsupportedDType`: the backend says so, and
/// allocating, uploading and casting to it are errors, not panics or garbage.
///
/// The CPU backend holds every dtype, so the CPU standing in for a GPU fails this by design.
pub fn unsupported_dtypes_are_refused(t: &Target) {
    let g = &t.device;
    let is_unsupported = |r: glimpse_tensor::Result<Tensor>| {
        matches!(r, Err(glimpse_tensor::Error::UnsupportedDType { .. }))
    };
    let x = Tensor::ones([2], DType::F32, g).unwrap();
    for dtype in DType::ALL.into_iter().filter(|&d| !t.holds(d)) {
        assert!(!g.backend().supports_dtype(dtype), "{dtype}: supported");
        assert!(
            is_unsupported(Tensor::zeros([2], dtype, g)),
            "{dtype}: zeros"
        );
        assert!(
            is_unsupported(try_tensor(&[1.0], &[1], dtype, g)),
            "{dtype}: upload"
        );
        assert!(is_unsupported(x.to_dtype(dtype)), "{dtype}: cast");
    }
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

/// Every float unary op (including the affine, power, clamp and gelu variants) on each
/// float dtype and view kind, within the dtype's tolerance.
pub fn unary_float(t: &Target) {
    t.run(
        "unary_float",
        CASES,
        (any_shape(), t.any_float(), any_kind(), any::<u64>()),
        |g, (shape, dtype, kind, seed)| {
            let mut rng = Gen::new(seed);
            for op in UNARY {
                let x = pair(&shape, dtype, kind, unary_domain(op), &mut rng, g);
                let got = x.gpu.unary(op).unwrap();
                let want = x.cpu.unary(op).unwrap();
                t.assert_matches(&got, &want, &format!("{op:?} {dtype} {kind:?} {shape:?}"));
            }
            Ok(())
        },
    );
}

/// The unary ops defined on u32 (abs, relu, sqr, clamp, affine with rounding and negative
/// factors) equal the CPU's exactly.
pub fn unary_u32(t: &Target) {
    t.run(
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

/// Every float unary op on NaN, infinities, signed zeros, tiny and huge values and
/// exp's overflow edges (±88) matches the CPU, NaN for NaN and infinity for infinity.
pub fn unary_special_values(t: &Target) {
    let g = &t.device;
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
    for &dtype in &t.floats {
        let (c, x) = (
            tensor(&v, &[v.len()], dtype, &cpu()),
            tensor(&v, &[v.len()], dtype, g),
        );
        for op in UNARY {
            t.assert_matches(
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

/// Every float binary op (arithmetic within tolerance, comparisons exactly) on two
/// operands broadcast to a common shape, each of any view kind.
pub fn binary_float_broadcast(t: &Target) {
    t.run(
        "binary_float_broadcast",
        CASES,
        (
            any_shape(),
            t.any_float(),
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
                    t.assert_matches(&got, &want, &what);
                }
            }
            Ok(())
        },
    );
}

/// Every binary op on u32 operands broadcast to a common shape, small values and values near
/// `u32::MAX` (wrapping), equals the CPU's exactly.
pub fn binary_u32(t: &Target) {
    t.run(
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

/// Float `maximum` and `minimum` return NaN when either operand is NaN.
pub fn float_maximum_minimum_propagate_nan(t: &Target) {
    let g = &t.device;
    for &dtype in &t.floats {
        let a = tensor(&[f64::NAN, 1.0, 2.0], &[3], dtype, g);
        let b = tensor(&[0.0, f64::NAN, 1.0], &[3], dtype, g);
        for y in [a.maximum(&b).unwrap(), a.minimum(&b).unwrap()] {
            let v = values(&y);
            assert!(v[0].is_nan() && v[1].is_nan(), "{dtype} {v:?}");
        }
    }
}

/// `where_cond` with a u32 condition and two branches of the same dtype, all three
/// broadcast and of any view kind, equals the CPU's exactly.
pub fn where_cond_broadcast(t: &Target) {
    t.run(
        "where_cond_broadcast",
        CASES,
        (
            any_shape(),
            t.any_dtype(),
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
            let on_true = pair(
                &st,
                dtype,
                kinds.1,
                Values::Uniform(-100.0, 100.0),
                &mut rng,
                g,
            );
            let on_false = pair(
                &sf,
                dtype,
                kinds.2,
                Values::Uniform(-100.0, 100.0),
                &mut rng,
                g,
            );
            assert_same(
                &c.gpu.where_cond(&on_true.gpu, &on_false.gpu).unwrap(),
                &c.cpu.where_cond(&on_true.cpu, &on_false.cpu).unwrap(),
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

fn check_reductions(t: &Target, x: &Pair, dim: usize, keepdim: bool, what: &str) {
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
                t.tol(x.cpu.dtype()),
                &what,
            );
        } else {
            assert_same(&got, &want, &what);
        }
    }
}

/// Sum (within tolerance, scaled by `sum |x|`), max, min, argmax and argmin (exactly) along
/// each dim of every view kind and dtype, with and without keepdim, with ties and empty
/// reduced dims (sum only).
pub fn reductions(t: &Target) {
    t.run(
        "reductions",
        CASES,
        (
            shape_in(1, 4, 0),
            t.any_dtype(),
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
            check_reductions(t, &x, dim, keepdim, &format!("{dtype} {shape:?} {kind:?}"));
            Ok(())
        },
    );
}

/// Reductions of long rows (5000, 1025 narrowed), of many short rows (70 000 x 3) and
/// along each dim of a permuted 3-d tensor, every dtype: the shapes that split a row over
/// several workgroups or give each its own.
pub fn reductions_of_long_rows_and_many_rows(t: &Target) {
    let g = &t.device;
    let mut rng = Gen::new(7);
    for &dtype in &t.dtypes {
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
            let x = pair(&shape, dtype, kind, vals, &mut rng, g);
            for dim in 0..shape.len() {
                check_reductions(t, &x, dim, false, &format!("{dtype} {shape:?} {kind:?}"));
            }
        }
    }
}

/// Max, min, argmax and argmin with NaN in the row (first, middle, all NaN, next to
/// -inf) and in a long row, as the CPU: NaN wins and its first index is the arg.
pub fn reductions_with_nan(t: &Target) {
    let g = &t.device;
    let nan = f64::NAN;
    let rows: [&[f64]; 5] = [
        &[1.0, nan, 3.0, 0.5],
        &[nan, 1.0, 3.0, 0.5],
        &[2.0, 3.0, nan, 3.0],
        &[nan, nan, nan, nan],
        &[-1.0, -1.0, f64::NEG_INFINITY, nan],
    ];
    for &dtype in &t.floats {
        let data: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let c = Pair {
            cpu: tensor(&data, &[5, 4], dtype, &cpu()),
            gpu: tensor(&data, &[5, 4], dtype, g),
        };
        check_reductions(t, &c, 1, true, &format!("nan rows {dtype}"));
        // and a long row, so that the NaN meets the workgroup's tree reduction
        let mut long = vec![1.0; 3000];
        long[1777] = nan;
        long[2000] = 5.0;
        let c = Pair {
            cpu: tensor(&long, &[3000], dtype, &cpu()),
            gpu: tensor(&long, &[3000], dtype, g),
        };
        check_reductions(t, &c, 0, false, &format!("long nan row {dtype}"));
    }
}

/// Argmax and argmin return the first index of equal extremes, in short rows and
/// in a long row of one value.
pub fn argmax_argmin_take_the_first_of_equal_values(t: &Target) {
    let g = &t.device;
    for &dtype in &t.dtypes {
        let x = tensor(&[1.0, 3.0, 3.0, 0.0, 0.0, 3.0], &[2, 3], dtype, g);
        assert_eq!(values(&x.argmax(1).unwrap()), [1.0, 2.0]);
        assert_eq!(values(&x.argmin(1).unwrap()), [0.0, 0.0]);
        assert_eq!(values(&x.argmax(0).unwrap()), [0.0, 0.0, 0.0]);
        let long = tensor(&vec![2.0; 2000], &[2000], dtype, g);
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
fn check_matmul(t: &Target, a: &Pair, b: &Pair, what: &str) {
    let got = a.gpu.matmul(&b.gpu).unwrap();
    let want = a.cpu.matmul(&b.cpu).unwrap();
    assert_eq!(got.dims(), want.dims(), "{what}");
    assert_eq!(got.dtype(), want.dtype(), "{what}");
    let abs = |x: &Tensor| x.to_dtype(DType::F64).unwrap().abs().unwrap();
    let scale = values(&abs(&a.cpu).matmul(&abs(&b.cpu)).unwrap());
    let k = a.cpu.dims()[a.cpu.rank() - 1];
    let bound = t.tol(want.dtype()) * (k as f64 / 64.0).max(1.0);
    assert_close_scaled(&values(&got), &values(&want), &scale, bound, what);
}

/// Batched matmul of small (zero-size included) operands with broadcast batch dims, any view
/// kind, transposed or not, each float dtype; tolerance scaled by `sum |a||b|`.
pub fn matmul_batched(t: &Target) {
    t.run(
        "matmul_batched",
        CASES,
        (
            shape_in(0, 2, 0),
            (0usize..6, 0usize..6, 0usize..6),
            t.any_float(),
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
                t,
                &a,
                &b,
                &format!("{dtype} a {ba:?}+{m}x{k} {ka:?} t{ta}, b {bb:?}+{k}x{n} {kb:?} t{tb}"),
            );
            Ok(())
        },
    );
}

/// Matmul of up to 300 x 300 x 300 operands (a batch against an unbatched, narrowed one,
/// transposed or not): every tile edge and remainder.
pub fn matmul_larger(t: &Target) {
    t.run(
        "matmul_larger",
        16,
        (
            (1usize..300, 1usize..300, 1usize..300),
            1usize..4,
            t.any_float(),
            (any::<bool>(), any::<bool>()),
            any::<u64>(),
        ),
        |g, ((m, k, n), batch, dtype, (ta, tb), seed)| {
            let mut rng = Gen::new(seed);
            let a = matmul_operand(&[batch], m, k, dtype, Kind::Contiguous, ta, &mut rng, g);
            let b = matmul_operand(&[], k, n, dtype, Kind::Narrowed, tb, &mut rng, g);
            check_matmul(
                t,
                &a,
                &b,
                &format!("{dtype} {batch}x{m}x{k}x{n} t{ta} t{tb}"),
            );
            Ok(())
        },
    );
}

/// A product with an empty inner dim is zeros, and batch dims that cannot merge (a
/// permuted batch) still multiply right.
pub fn matmul_with_k_zero_and_many_batch_dims(t: &Target) {
    let g = &t.device;
    for &dtype in &t.floats {
        let a = Tensor::zeros([2, 3, 0], dtype, g).unwrap();
        let b = Tensor::zeros([0, 4], dtype, g).unwrap();
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
            g,
        );
        let b = pair(
            &[3, 4, 6, 2],
            dtype,
            Kind::PermutedNarrowed,
            Values::Uniform(-1.0, 1.0),
            &mut rng,
            g,
        );
        check_matmul(t, &a, &b, &format!("{dtype} permuted batches"));
    }
}

/// f32 matmul keeps f32's 24 significant bits (no TF32 or f16 arithmetic by default).
pub fn matmul_f32_is_not_tf32_by_default(t: &Target) {
    let g = &t.device;
    if !t.holds(DType::F32) {
        return;
    }
    // 1 + 2^-20 is exact in f32 but rounds to 1 in TF32 (10 mantissa bits). Each row of `a`
    // holds it once (the rest zeros), so every entry of `a @ ones` is exactly it in f32.
    let v = 1.0 + 2f64.powi(-20);
    let a: Vec<f64> = (0..64 * 64)
        .map(|i| if i % 64 == i / 64 { v } else { 0.0 })
        .collect();
    let a = tensor(&a, &[64, 64], DType::F32, g);
    let b = tensor(&vec![1.0; 64 * 64], &[64, 64], DType::F32, g);
    let y = values(&a.matmul(&b).unwrap());
    assert!(y.iter().all(|&x| x == v), "{} vs {v}", y[0]);
}

// ---------------------------------------------------------------------------------- indexing

fn pick_dim(rank: usize, rng: &mut Gen) -> usize {
    rng.below(rank)
}

/// `index_select` along each dim, of any view kind and dtype, with ids (repeated, empty,
/// strided) of any view kind, equals the CPU's exactly.
pub fn index_select_matches_cpu(t: &Target) {
    t.run(
        "index_select_matches_cpu",
        CASES,
        (
            shape_in(1, 4, 0),
            0usize..7,
            t.any_dtype(),
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

/// `gather` along each dim, of any view kind and dtype, with ids of any view kind, equals the
/// CPU's exactly.
pub fn gather_matches_cpu(t: &Target) {
    t.run(
        "gather_matches_cpu",
        CASES,
        (
            shape_in(1, 4, 0),
            0usize..6,
            t.any_dtype(),
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

/// `scatter_add` with repeated ids (at most 3 targets per row) accumulates every
/// addition (within `m + 1` roundings for floats, exactly for u32) and leaves the destination
/// untouched.
pub fn scatter_add_accumulates_repeated_indices(t: &Target) {
    t.run(
        "scatter_add_accumulates_repeated_indices",
        CASES,
        (
            shape_in(1, 4, 1),
            0usize..6,
            t.any_dtype(),
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
                let abs = |x: &Tensor| x.to_dtype(DType::F64).unwrap().abs().unwrap();
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
                t.tol(dtype) * (m as f64 + 1.0),
                &what,
            );
            // the destination is not modified
            assert_same(&dst.gpu, &dst.cpu, "dst untouched");
            Ok(())
        },
    );
}

/// 100 000 additions of one into 3 elements (neighbouring 16-bit halves of one word
/// for f16/bf16) lose none: the result saturates exactly as the CPU's, every dtype.
pub fn scatter_add_with_heavy_contention(t: &Target) {
    let g = &t.device;
    // 100k additions into 3 (f16/bf16: neighbouring 16-bit halves of one word) elements.
    for &dtype in &t.dtypes {
        let n = 100_000;
        let ids: Vec<f64> = (0..n).map(|i| (i % 3) as f64).collect();
        let ones = vec![1.0; n];
        let dst_c = Tensor::zeros([3], dtype, &cpu()).unwrap();
        let dst_g = Tensor::zeros([3], dtype, g).unwrap();
        let want = dst_c
            .scatter_add(
                &tensor(&ids, &[n], DType::U32, &cpu()),
                &tensor(&ones, &[n], dtype, &cpu()),
                0,
            )
            .unwrap();
        let got = dst_g
            .scatter_add(
                &tensor(&ids, &[n], DType::U32, g),
                &tensor(&ones, &[n], dtype, g),
                0,
            )
            .unwrap();
        // Adding ones saturates identically in any order (f16 stops at 2048, bf16 at 256).
        assert_same(&got, &want, &format!("{dtype}"));
    }
}

/// `cat` of 1-3 parts (empty ones included) of any view kind along each dim, every dtype,
/// equals the CPU's exactly.
pub fn cat_along_every_dim(t: &Target) {
    t.run(
        "cat_along_every_dim",
        CASES,
        (
            shape_in(1, 4, 0),
            prop::collection::vec(0usize..5, 1..4),
            t.any_dtype(),
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

/// Rank-11 tensors: element-wise ops and reductions work (their dims merge), and a
/// copy whose dims do not merge either works or returns `Error::Backend`, never garbage.
pub fn ranks_past_eight_merge_or_fail_cleanly(t: &Target) {
    let g = &t.device;
    let dims = [2usize, 1, 2, 2, 1, 2, 2, 1, 2, 2, 3];
    let n: usize = dims.iter().product();
    let data: Vec<f64> = (0..n).map(|i| i as f64 * 0.01).collect();
    let c = tensor(&data, &dims, DType::F32, &cpu());
    let x = tensor(&data, &dims, DType::F32, g);
    // Contiguous (merges to rank 1), and a permutation that keeps most dims mergeable.
    t.assert_matches(&x.exp().unwrap(), &c.exp().unwrap(), "rank 11 contiguous");
    let p: Vec<usize> = (0..dims.len()).rev().collect();
    let r = x.permute(&p).unwrap().contiguous();
    match r {
        Ok(y) => assert_same(
            &y,
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
        t.tol(DType::F32),
        "rank 11 sum",
    );
}

// ---------------------------------------------------------------------------------- random

/// `rand_uniform` and `rand_normal` give the same values for the same seed,
/// other values for another, uniform values inside `[lo, hi)`, and the CPU backend's values
/// (the same generator) within the dtype's tolerance.
pub fn rand_reproducible_in_range_and_like_the_cpu(t: &Target) {
    t.run(
        "rand_reproducible_in_range_and_like_the_cpu",
        24,
        (
            shape_in(0, 3, 0),
            t.any_float(),
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
            // The same generator as the CPU's (CUDA computes it in f64 on the device).
            let scale = [lo.abs() + width];
            assert_close_scaled(
                &values(&u1),
                &values(&u(seed, &cpu())),
                &scale,
                t.tol(dtype),
                "uniform vs cpu",
            );
            assert_close_scaled(
                &values(&n1),
                &values(&nrm(seed, &cpu())),
                &scale,
                t.tol(dtype),
                "normal vs cpu",
            );
            Ok(())
        },
    );
}

/// 200 000 uniform and normal samples have the right mean and standard deviation, every
/// float dtype.
pub fn rand_moments(t: &Target) {
    let g = &t.device;
    for &dtype in &t.floats {
        let u = values(&Tensor::rand_uniform(-1.0, 3.0, [200_000], dtype, 5, g).unwrap());
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        assert!((mean - 1.0).abs() < 0.02, "{dtype} uniform mean {mean}");
        assert!(u.iter().all(|&v| (-1.0..3.0).contains(&v)));
        let n = values(&Tensor::rand_normal(2.0, 0.5, [200_000], dtype, 6, g).unwrap());
        let m = n.iter().sum::<f64>() / n.len() as f64;
        let sd = (n.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n.len() as f64).sqrt();
        assert!(
            (m - 2.0).abs() < 0.01 && (sd - 0.5).abs() < 0.01,
            "{dtype} normal {m} {sd}"
        );
    }
}

// ---------------------------------------------------------------------------------- big

/// Element-wise ops on 1.5 million elements (a permuted operand times a broadcast
/// row, gelu) write every element: the grid-stride or multi-dimensional dispatch covers all.
pub fn large_element_wise_ops_cover_every_element(t: &Target) {
    let g = &t.device;
    let mut rng = Gen::new(11);
    // More elements than one pass of a grid-stride loop covers is too big for a test; this
    // still spans thousands of workgroups and a non-contiguous broadcast.
    for &dtype in &t.floats {
        let a = pair(
            &[1000, 1500],
            dtype,
            Kind::Permuted,
            Values::Uniform(-2.0, 2.0),
            &mut rng,
            g,
        );
        let b = pair(
            &[1, 1500],
            dtype,
            Kind::Contiguous,
            Values::Uniform(-2.0, 2.0),
            &mut rng,
            g,
        );
        t.assert_matches(
            &a.gpu.mul(&b.gpu).unwrap(),
            &a.cpu.mul(&b.cpu).unwrap(),
            "big mul",
        );
        t.assert_matches(
            &a.gpu.gelu_erf().unwrap(),
            &a.cpu.gelu_erf().unwrap(),
            "big gelu",
        );
    }
}

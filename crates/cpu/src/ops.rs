//! The primitives of the CPU backend, for every dtype.

use glimpse_tensor::{BinaryOp, DType, Error, Layout, ReduceOp, Result, UnaryOp, WithDType};
use half::{bf16, f16};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::float::{Float, FloatElem};
use crate::gemm::{self, MatRef};
use crate::storage::CpuStorage;
use crate::strided::{self, PAR_THRESHOLD, around_dim, gather, map, rows, view, zip_map};

/// Wraps a `Vec` of any element type as storage.
pub fn storage_from_vec<T: WithDType>(v: Vec<T>) -> CpuStorage {
    CpuStorage::from_host_vec(T::into_host_vec(v))
}

/// Runs `$body` with `$v` bound to the typed slice and `$T` to its float element type; `U32`
/// storages evaluate `$int` instead.
macro_rules! float_dispatch {
    ($s:expr, $v:ident: $T:ident => $body:expr, u32 $iv:ident => $int:expr) => {
        match $s {
            CpuStorage::F16(b) => {
                type $T = f16;
                let $v = b.as_slice();
                $body
            }
            CpuStorage::BF16(b) => {
                type $T = bf16;
                let $v = b.as_slice();
                $body
            }
            CpuStorage::F32(b) => {
                type $T = f32;
                let $v = b.as_slice();
                $body
            }
            CpuStorage::F64(b) => {
                type $T = f64;
                let $v = b.as_slice();
                $body
            }
            CpuStorage::U32(b) => {
                let $iv = b.as_slice();
                $int
            }
        }
    };
}

/// Every storage is one of these; mismatches are caught by the tensor crate, so a mismatch
/// here is a broken invariant reported as a backend error.
fn mismatch(op: &str) -> Error {
    Error::backend(
        "cpu",
        format!("{op}: operands of different dtypes reached the backend"),
    )
}

pub fn copy_strided(src: &CpuStorage, layout: &Layout) -> CpuStorage {
    crate::with_slice!(src, v => storage_from_vec(gather(v, layout)))
}

pub fn full(dtype: DType, len: usize, value: f64) -> CpuStorage {
    fn fill<T: WithDType>(len: usize, value: f64) -> CpuStorage {
        storage_from_vec(vec![T::from_f64(value); len])
    }
    match dtype {
        DType::F16 => fill::<f16>(len, value),
        DType::BF16 => fill::<bf16>(len, value),
        DType::F32 => fill::<f32>(len, value),
        DType::F64 => fill::<f64>(len, value),
        DType::U32 => fill::<u32>(len, value),
    }
}

pub fn cast(src: &CpuStorage, layout: &Layout, dtype: DType) -> CpuStorage {
    fn to<T: WithDType, U: WithDType>(v: &[T], layout: &Layout) -> CpuStorage {
        storage_from_vec(map(v, layout, |x| U::from_f64(x.to_f64())))
    }
    crate::with_slice!(src, v => match dtype {
        DType::F16 => to::<_, f16>(v, layout),
        DType::BF16 => to::<_, bf16>(v, layout),
        DType::F32 => to::<_, f32>(v, layout),
        DType::F64 => to::<_, f64>(v, layout),
        DType::U32 => to::<_, u32>(v, layout),
    })
}

/// The scalar function behind each unary op.
fn unary_fn<A: Float>(op: UnaryOp) -> Box<dyn Fn(A) -> A + Send + Sync> {
    let c = A::from_f64;
    match op {
        UnaryOp::Neg => Box::new(|x: A| -x),
        UnaryOp::Abs => Box::new(|x: A| x.abs()),
        UnaryOp::Exp => Box::new(|x: A| x.exp()),
        UnaryOp::Log => Box::new(|x: A| x.ln()),
        UnaryOp::Sqrt => Box::new(|x: A| x.sqrt()),
        UnaryOp::Sqr => Box::new(|x: A| x * x),
        UnaryOp::Recip => Box::new(|x: A| A::ONE / x),
        UnaryOp::Tanh => Box::new(|x: A| x.tanh()),
        UnaryOp::Sin => Box::new(|x: A| x.sin()),
        UnaryOp::Cos => Box::new(|x: A| x.cos()),
        UnaryOp::Erf => Box::new(|x: A| x.erf()),
        UnaryOp::Relu => Box::new(|x: A| if x > A::ZERO { x } else { A::ZERO }),
        UnaryOp::Sigmoid => Box::new(|x: A| A::ONE / (A::ONE + (-x).exp())),
        UnaryOp::Affine { mul, add } => {
            let (m, a) = (c(mul), c(add));
            Box::new(move |x: A| x * m + a)
        }
        UnaryOp::Powf(e) => {
            let e = c(e);
            Box::new(move |x: A| x.powf(e))
        }
        UnaryOp::Clamp { min, max } => {
            let (lo, hi) = (c(min), c(max));
            Box::new(move |x: A| {
                if x < lo {
                    lo
                } else if x > hi {
                    hi
                } else {
                    x
                }
            })
        }
        UnaryOp::GeluErf => {
            let (half, inv_sqrt2) = (c(0.5), c(std::f64::consts::FRAC_1_SQRT_2));
            Box::new(move |x: A| half * x * (A::ONE + (x * inv_sqrt2).erf()))
        }
        UnaryOp::GeluTanh => {
            let (half, k, a) = (c(0.5), c((2.0 / std::f64::consts::PI).sqrt()), c(0.044715));
            Box::new(move |x: A| half * x * (A::ONE + (k * (x + a * x * x * x)).tanh()))
        }
        UnaryOp::QuickGelu => {
            let k = c(1.702);
            Box::new(move |x: A| x / (A::ONE + (-(k * x)).exp()))
        }
    }
}

pub fn unary(op: UnaryOp, src: &CpuStorage, layout: &Layout) -> Result<CpuStorage> {
    float_dispatch!(src, v: T => {
        let f = unary_fn::<<T as FloatElem>::Acc>(op);
        Ok(storage_from_vec(map(v, layout, |x: T| T::from_acc(f(x.to_acc())))))
    }, u32 v => {
        let f: Box<dyn Fn(u32) -> u32 + Send + Sync> = match op {
            UnaryOp::Abs | UnaryOp::Relu => Box::new(|x| x),
            UnaryOp::Sqr => Box::new(|x: u32| x.wrapping_mul(x)),
            // max/min rather than f64::clamp: no panic whatever the bounds.
            UnaryOp::Clamp { min, max } => Box::new(move |x: u32| (x as f64).max(min).min(max) as u32),
            UnaryOp::Affine { mul, add } => Box::new(move |x: u32| (x as f64 * mul + add) as u32),
            _ => return Err(Error::UnsupportedDType { op: "unary", dtype: DType::U32, backend: Some("cpu".into()) }),
        };
        Ok(storage_from_vec(map(v, layout, f)))
    })
}

fn binary_fn<A: Float>(op: BinaryOp) -> fn(A, A) -> A {
    match op {
        BinaryOp::Add => |a, b| a + b,
        BinaryOp::Sub => |a, b| a - b,
        BinaryOp::Mul => |a, b| a * b,
        BinaryOp::Div => |a, b| a / b,
        // NaN propagates, as in PyTorch.
        BinaryOp::Maximum => |a, b| if a.is_nan() || a > b { a } else { b },
        BinaryOp::Minimum => |a, b| if a.is_nan() || a < b { a } else { b },
        BinaryOp::Pow => |a, b| a.powf(b),
        _ => unreachable!("comparisons are handled apart"),
    }
}

fn compare<T: PartialOrd>(op: BinaryOp) -> fn(T, T) -> u32 {
    match op {
        BinaryOp::Eq => |a, b| u32::from(a == b),
        BinaryOp::Ne => |a, b| u32::from(a != b),
        BinaryOp::Lt => |a, b| u32::from(a < b),
        BinaryOp::Le => |a, b| u32::from(a <= b),
        BinaryOp::Gt => |a, b| u32::from(a > b),
        BinaryOp::Ge => |a, b| u32::from(a >= b),
        _ => unreachable!("only comparisons"),
    }
}

pub fn binary(
    op: BinaryOp,
    lhs: &CpuStorage,
    ll: &Layout,
    rhs: &CpuStorage,
    rl: &Layout,
) -> Result<CpuStorage> {
    macro_rules! float_case {
        ($T:ty, $a:expr, $b:expr) => {{
            if op.is_comparison() {
                let cmp = compare::<<$T as FloatElem>::Acc>(op);
                storage_from_vec(zip_map($a, ll, $b, rl, move |x: $T, y: $T| {
                    cmp(x.to_acc(), y.to_acc())
                }))
            } else {
                type A = <$T as FloatElem>::Acc;
                // The four arithmetic ops get their own instantiation of the loop, which then
                // vectorises; through a function pointer every element is an indirect call.
                macro_rules! apply {
                    ($f:expr) => {{
                        let f = $f;
                        storage_from_vec(zip_map($a, ll, $b, rl, move |x: $T, y: $T| {
                            <$T>::from_acc(f(x.to_acc(), y.to_acc()))
                        }))
                    }};
                }
                match op {
                    BinaryOp::Add => apply!(|x: A, y: A| x + y),
                    BinaryOp::Sub => apply!(|x: A, y: A| x - y),
                    BinaryOp::Mul => apply!(|x: A, y: A| x * y),
                    BinaryOp::Div => apply!(|x: A, y: A| x / y),
                    _ => apply!(binary_fn::<A>(op)),
                }
            }
        }};
    }
    Ok(match (lhs, rhs) {
        (CpuStorage::F16(a), CpuStorage::F16(b)) => float_case!(f16, a.as_slice(), b.as_slice()),
        (CpuStorage::BF16(a), CpuStorage::BF16(b)) => float_case!(bf16, a.as_slice(), b.as_slice()),
        (CpuStorage::F32(a), CpuStorage::F32(b)) => float_case!(f32, a.as_slice(), b.as_slice()),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => float_case!(f64, a.as_slice(), b.as_slice()),
        (CpuStorage::U32(a), CpuStorage::U32(b)) => {
            let (a, b) = (a.as_slice(), b.as_slice());
            if op.is_comparison() {
                storage_from_vec(zip_map(a, ll, b, rl, compare::<u32>(op)))
            } else {
                if op == BinaryOp::Div && view(b, rl).contains(&0) {
                    return Err(Error::invalid("div", "integer division by zero"));
                }
                let f: fn(u32, u32) -> u32 = match op {
                    BinaryOp::Add => u32::wrapping_add,
                    BinaryOp::Sub => u32::wrapping_sub,
                    BinaryOp::Mul => u32::wrapping_mul,
                    BinaryOp::Div => |x, y| x / y,
                    BinaryOp::Maximum => u32::max,
                    BinaryOp::Minimum => u32::min,
                    BinaryOp::Pow => u32::wrapping_pow,
                    _ => unreachable!(),
                };
                storage_from_vec(zip_map(a, ll, b, rl, f))
            }
        }
        _ => return Err(mismatch("binary")),
    })
}

pub fn where_cond(
    cond: &CpuStorage,
    cl: &Layout,
    on_true: &CpuStorage,
    tl: &Layout,
    on_false: &CpuStorage,
    fl: &Layout,
) -> Result<CpuStorage> {
    let cond = view(cond.u32s().ok_or_else(|| mismatch("where_cond"))?, cl);
    fn pick<T: WithDType>(cond: &[u32], t: &[T], tl: &Layout, f: &[T], fl: &Layout) -> CpuStorage {
        let (t, f) = (view(t, tl), view(f, fl));
        storage_from_vec(
            cond.iter()
                .zip(t.iter().zip(f.iter()))
                .map(|(&c, (&a, &b))| if c != 0 { a } else { b })
                .collect(),
        )
    }
    Ok(match (on_true, on_false) {
        (CpuStorage::F16(a), CpuStorage::F16(b)) => pick(&cond, a.as_slice(), tl, b.as_slice(), fl),
        (CpuStorage::BF16(a), CpuStorage::BF16(b)) => {
            pick(&cond, a.as_slice(), tl, b.as_slice(), fl)
        }
        (CpuStorage::F32(a), CpuStorage::F32(b)) => pick(&cond, a.as_slice(), tl, b.as_slice(), fl),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => pick(&cond, a.as_slice(), tl, b.as_slice(), fl),
        (CpuStorage::U32(a), CpuStorage::U32(b)) => pick(&cond, a.as_slice(), tl, b.as_slice(), fl),
        _ => return Err(mismatch("where_cond")),
    })
}

/// Reduces every row of `layout` (its last dimension, after moving `dim` there).
fn reduce_rows<T: Copy + Send + Sync, O: Copy + Send + Sync>(
    data: &[T],
    layout: &Layout,
    dim: usize,
    f: impl Fn(&mut dyn Iterator<Item = T>) -> O + Sync + Send,
) -> Vec<O> {
    let rank = layout.dims().len();
    let mut perm: Vec<usize> = (0..rank).filter(|&d| d != dim).collect();
    perm.push(dim);
    let moved = layout.permute(&perm).expect("valid permutation");
    let (starts, n, stride) = rows(&moved);
    let row = |&s: &usize| f(&mut (0..n).map(|j| data[s + j * stride]));
    if layout.elem_count() < PAR_THRESHOLD {
        starts.iter().map(row).collect()
    } else {
        starts
            .par_iter()
            .with_min_len((4096 / n.max(1)).max(1))
            .map(row)
            .collect()
    }
}

/// Sum over `dim` of a contiguous layout whose `dim` is not the last: for each outer index the
/// rows of `inner` values are added in order into one accumulator row, so the loop runs over
/// contiguous memory and vectorises (a bias gradient, the column sums of `(rows, cols)`, is the
/// common case). Each output element still adds its inputs in the same order as the generic
/// row-by-row path, so the two give the same bits.
fn sum_leading<T: FloatElem + Send + Sync>(data: &[T], layout: &Layout, dim: usize) -> Vec<T>
where
    T::Acc: Send,
{
    type Acc<T> = <T as FloatElem>::Acc;
    let dims = layout.dims();
    let outer: usize = dims[..dim].iter().product();
    let len = dims[dim];
    let inner: usize = dims[dim + 1..].iter().product();
    let src = &data[layout.offset()..][..outer * len * inner];
    let mut out = vec![T::from_acc(Acc::<T>::ZERO); outer * inner];
    if out.is_empty() {
        return out;
    }
    // One task per (outer index, block of columns): the reduced dimension is never split, so
    // the order of the additions does not depend on the thread count.
    const COLS: usize = 1024;
    let tasks: Vec<(usize, usize, &mut [T])> = out
        .chunks_mut(inner)
        .enumerate()
        .flat_map(|(o, row)| {
            row.chunks_mut(COLS)
                .enumerate()
                .map(move |(b, dst)| (o, b * COLS, dst))
        })
        .collect();
    let task = |(o, c0, dst): (usize, usize, &mut [T])| {
        let mut acc = vec![Acc::<T>::ZERO; dst.len()];
        for r in 0..len {
            let row = &src[(o * len + r) * inner + c0..][..dst.len()];
            for (a, &x) in acc.iter_mut().zip(row) {
                *a += x.to_acc();
            }
        }
        for (d, a) in dst.iter_mut().zip(acc) {
            *d = T::from_acc(a);
        }
    };
    if layout.elem_count() < PAR_THRESHOLD || tasks.len() == 1 {
        tasks.into_iter().for_each(task);
    } else {
        tasks.into_par_iter().for_each(task);
    }
    out
}

fn arg_best<T: PartialOrd + Copy>(
    it: &mut dyn Iterator<Item = T>,
    better: fn(&T, &T) -> bool,
) -> u32 {
    let mut best: Option<(usize, T)> = None;
    for (i, x) in it.enumerate() {
        match best {
            Some((_, b)) if !better(&x, &b) => {}
            _ => best = Some((i, x)),
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

pub fn reduce(op: ReduceOp, src: &CpuStorage, layout: &Layout, dim: usize) -> Result<CpuStorage> {
    Ok(float_dispatch!(src, v: T => {
        type A = <T as FloatElem>::Acc;
        match op {
            ReduceOp::Sum if layout.is_contiguous() && dim + 1 < layout.dims().len() => {
                storage_from_vec(sum_leading(v, layout, dim))
            }
            ReduceOp::Sum => storage_from_vec(reduce_rows(v, layout, dim, |it| {
                let mut acc = A::ZERO;
                for x in it { acc += x.to_acc(); }
                T::from_acc(acc)
            })),
            ReduceOp::Max => storage_from_vec(reduce_rows(v, layout, dim, |it| {
                let mut acc = A::NEG_INFINITY;
                for x in it { let x = x.to_acc(); if x.is_nan() || x > acc { acc = x; if x.is_nan() { break; } } }
                T::from_acc(acc)
            })),
            ReduceOp::Min => storage_from_vec(reduce_rows(v, layout, dim, |it| {
                let mut acc = -A::NEG_INFINITY;
                for x in it { let x = x.to_acc(); if x.is_nan() || x < acc { acc = x; if x.is_nan() { break; } } }
                T::from_acc(acc)
            })),
            ReduceOp::ArgMax => storage_from_vec(reduce_rows(v, layout, dim, |it| arg_best(&mut it.map(|x| x.to_acc()), |a, b| a > b))),
            ReduceOp::ArgMin => storage_from_vec(reduce_rows(v, layout, dim, |it| arg_best(&mut it.map(|x| x.to_acc()), |a, b| a < b))),
        }
    }, u32 v => match op {
        ReduceOp::Sum => storage_from_vec(reduce_rows(v, layout, dim, |it| it.fold(0u32, u32::wrapping_add))),
        ReduceOp::Max => storage_from_vec(reduce_rows(v, layout, dim, |it| it.max().unwrap_or(0))),
        ReduceOp::Min => storage_from_vec(reduce_rows(v, layout, dim, |it| it.min().unwrap_or(0))),
        ReduceOp::ArgMax => storage_from_vec(reduce_rows(v, layout, dim, |it| arg_best(it, |a, b| a > b))),
        ReduceOp::ArgMin => storage_from_vec(reduce_rows(v, layout, dim, |it| arg_best(it, |a, b| a < b))),
    }))
}

/// Batch offsets, and the `(rows, cols, row_stride, col_stride)` of the matrices of a
/// `(batch.., rows, cols)` layout.
fn matrices(layout: &Layout) -> (Vec<usize>, [usize; 4]) {
    let (d, s) = (layout.dims(), layout.strides());
    let r = d.len();
    let starts = strided::offsets(&d[..r - 2], &s[..r - 2])
        .into_iter()
        .map(|o| o + layout.offset())
        .collect();
    (starts, [d[r - 2], d[r - 1], s[r - 2], s[r - 1]])
}

fn matmul_f32(a: &[f32], al: &Layout, b: &[f32], bl: &Layout) -> Vec<f32> {
    let (a_starts, [m, k, ars, acs]) = matrices(al);
    let (b_starts, [_, n, brs, bcs]) = matrices(bl);
    let batches = a_starts.len();
    let len = batches * m * n;
    // With k = 0 the product is all zeros, and an empty operand's batch offsets may point past
    // the end of its (empty) storage, so it must not be sliced.
    if m * n == 0 || k == 0 {
        return vec![0.0f32; len];
    }
    // No zero-fill: the products write every element (each batch is one `m x n` block with
    // leading dimension `n`).
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let one = |c: &mut [MaybeUninit<f32>], ao: usize, bo: usize, parallel: bool| {
        gemm::sgemm_uninit(
            m,
            n,
            k,
            1.0,
            MatRef::new(&a[ao..], ars, acs),
            MatRef::new(&b[bo..], brs, bcs),
            c,
            n,
            parallel,
        );
    };
    let threads = rayon::current_num_threads();
    let spare = &mut out.spare_capacity_mut()[..len];
    if batches >= 2 * threads && m * n * k < 1 << 24 {
        spare
            .par_chunks_mut(m * n)
            .zip(a_starts.par_iter().zip(b_starts.par_iter()))
            .for_each(|(c, (&ao, &bo))| one(c, ao, bo, false));
    } else {
        for (c, (&ao, &bo)) in spare.chunks_mut(m * n).zip(a_starts.iter().zip(&b_starts)) {
            one(c, ao, bo, true);
        }
    }
    // SAFETY: the chunks cover `0..len` and `sgemm_uninit` wrote every element of each.
    unsafe { out.set_len(len) };
    out
}

fn matmul_f64(a: &[f64], al: &Layout, b: &[f64], bl: &Layout) -> Vec<f64> {
    let (a_starts, [m, k, ars, acs]) = matrices(al);
    let (b_starts, [_, n, brs, bcs]) = matrices(bl);
    let mut out = vec![0.0f64; a_starts.len() * m * n];
    // With k = 0 the product is all zeros, and an empty operand's batch offsets may point past
    // the end of its (empty) storage, so it must not be sliced.
    if m * n == 0 || k == 0 {
        return out;
    }
    out.par_chunks_mut(m * n)
        .zip(a_starts.par_iter().zip(b_starts.par_iter()))
        .for_each(|(c, (&ao, &bo))| {
            gemm::dgemm(
                m,
                n,
                k,
                1.0,
                (&a[ao..], ars, acs),
                (&b[bo..], brs, bcs),
                false,
                c,
                n,
            )
        });
    out
}

pub fn matmul(lhs: &CpuStorage, ll: &Layout, rhs: &CpuStorage, rl: &Layout) -> Result<CpuStorage> {
    fn via_f32<T: FloatElem<Acc = f32>>(a: &[T], al: &Layout, b: &[T], bl: &Layout) -> CpuStorage {
        let a32: Vec<f32> = map(a, al, |x: T| x.to_acc());
        let b32: Vec<f32> = map(b, bl, |x: T| x.to_acc());
        let out = matmul_f32(
            &a32,
            &Layout::contiguous(al.shape()),
            &b32,
            &Layout::contiguous(bl.shape()),
        );
        storage_from_vec(out.into_iter().map(T::from_acc).collect::<Vec<T>>())
    }
    Ok(match (lhs, rhs) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            storage_from_vec(matmul_f32(a.as_slice(), ll, b.as_slice(), rl))
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            storage_from_vec(matmul_f64(a.as_slice(), ll, b.as_slice(), rl))
        }
        (CpuStorage::F16(a), CpuStorage::F16(b)) => via_f32(a.as_slice(), ll, b.as_slice(), rl),
        (CpuStorage::BF16(a), CpuStorage::BF16(b)) => via_f32(a.as_slice(), ll, b.as_slice(), rl),
        (CpuStorage::U32(_), _) => {
            return Err(Error::UnsupportedDType {
                op: "matmul",
                dtype: DType::U32,
                backend: Some("cpu".into()),
            });
        }
        _ => return Err(mismatch("matmul")),
    })
}

/// The indices of a `U32` view, checked against `size`.
fn checked_ids(
    op: &'static str,
    ids: &CpuStorage,
    layout: &Layout,
    size: usize,
) -> Result<Vec<u32>> {
    let ids = gather(ids.u32s().ok_or_else(|| mismatch(op))?, layout);
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= size) {
        return Err(Error::IndexOutOfRange {
            op,
            index: bad as usize,
            size,
        });
    }
    Ok(ids)
}

pub fn index_select(
    src: &CpuStorage,
    sl: &Layout,
    ids: &CpuStorage,
    il: &Layout,
    dim: usize,
) -> Result<CpuStorage> {
    let a = around_dim(sl, dim);
    let ids = checked_ids("index_select", ids, il, a.dim_size)?;
    fn select<T: Copy>(v: &[T], base: usize, a: &strided::AroundDim, ids: &[u32]) -> Vec<T> {
        let mut out = Vec::with_capacity(a.outer.len() * ids.len() * a.inner.len());
        for &o in &a.outer {
            for &i in ids {
                let start = base + o + i as usize * a.dim_stride;
                out.extend(a.inner.iter().map(|&r| v[start + r]));
            }
        }
        out
    }
    Ok(crate::with_slice!(src, v => storage_from_vec(select(v, sl.offset(), &a, &ids))))
}

pub fn gather_dim(
    src: &CpuStorage,
    sl: &Layout,
    ids: &CpuStorage,
    il: &Layout,
    dim: usize,
) -> Result<CpuStorage> {
    let a = around_dim(sl, dim);
    let ids = checked_ids("gather", ids, il, a.dim_size)?;
    let n_ids = il.dims()[dim];
    fn pick<T: Copy>(
        v: &[T],
        base: usize,
        a: &strided::AroundDim,
        ids: &[u32],
        n_ids: usize,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(ids.len());
        let mut it = ids.iter();
        for &o in &a.outer {
            for _ in 0..n_ids {
                for &r in &a.inner {
                    let i = *it.next().expect("ids has the output shape");
                    out.push(v[base + o + i as usize * a.dim_stride + r]);
                }
            }
        }
        out
    }
    Ok(crate::with_slice!(src, v => storage_from_vec(pick(v, sl.offset(), &a, &ids, n_ids))))
}

pub fn scatter_add(
    dst: &CpuStorage,
    dl: &Layout,
    ids: &CpuStorage,
    il: &Layout,
    src: &CpuStorage,
    sl: &Layout,
    dim: usize,
) -> Result<CpuStorage> {
    let out_layout = Layout::contiguous(dl.shape());
    let a = around_dim(&out_layout, dim);
    let ids = checked_ids("scatter_add", ids, il, a.dim_size)?;
    let n_ids = il.dims()[dim];
    /// `dst` with `src` added at the indexed positions, element sums by `plus`.
    #[allow(clippy::too_many_arguments)]
    fn add<T: Copy + Send + Sync>(
        d: &[T],
        dl: &Layout,
        s: &[T],
        sl: &Layout,
        a: &strided::AroundDim,
        ids: &[u32],
        n_ids: usize,
        plus: impl Fn(T, T) -> T,
    ) -> Vec<T> {
        let mut out = gather(d, dl);
        let src = view(s, sl);
        let mut k = 0;
        for &o in &a.outer {
            for _ in 0..n_ids {
                for &r in &a.inner {
                    let at = o + ids[k] as usize * a.dim_stride + r;
                    out[at] = plus(out[at], src[k]);
                    k += 1;
                }
            }
        }
        out
    }
    fn float_plus<T: FloatElem>(x: T, y: T) -> T {
        T::from_acc(x.to_acc() + y.to_acc())
    }
    macro_rules! case {
        ($d:expr, $s:expr, $plus:expr) => {
            storage_from_vec(add(
                $d.as_slice(),
                dl,
                $s.as_slice(),
                sl,
                &a,
                &ids,
                n_ids,
                $plus,
            ))
        };
    }
    Ok(match (dst, src) {
        (CpuStorage::F16(d), CpuStorage::F16(s)) => case!(d, s, float_plus),
        (CpuStorage::BF16(d), CpuStorage::BF16(s)) => case!(d, s, float_plus),
        (CpuStorage::F32(d), CpuStorage::F32(s)) => case!(d, s, float_plus),
        (CpuStorage::F64(d), CpuStorage::F64(s)) => case!(d, s, float_plus),
        (CpuStorage::U32(d), CpuStorage::U32(s)) => case!(d, s, u32::wrapping_add),
        _ => return Err(mismatch("scatter_add")),
    })
}

pub fn concat(parts: &[(&CpuStorage, &Layout)], dim: usize) -> Result<CpuStorage> {
    let first = parts[0].1;
    let outer: usize = first.dims()[..dim].iter().product();
    let inner: usize = first.dims()[dim + 1..].iter().product();
    fn join<T: Copy + Send + Sync>(
        parts: &[(&[T], &Layout)],
        outer: usize,
        inner: usize,
        dim: usize,
    ) -> Vec<T> {
        let views: Vec<_> = parts
            .iter()
            .map(|(v, l)| (view(v, l), l.dims()[dim] * inner))
            .collect();
        let mut out = Vec::with_capacity(views.iter().map(|(v, _)| v.len()).sum());
        for o in 0..outer {
            for (v, chunk) in &views {
                out.extend_from_slice(&v[o * chunk..(o + 1) * chunk]);
            }
        }
        out
    }
    macro_rules! case {
        ($variant:ident) => {{
            let typed: Option<Vec<_>> = parts
                .iter()
                .map(|(s, l)| match s {
                    CpuStorage::$variant(b) => Some((b.as_slice(), *l)),
                    _ => None,
                })
                .collect();
            storage_from_vec(join(
                &typed.ok_or_else(|| mismatch("concat"))?,
                outer,
                inner,
                dim,
            ))
        }};
    }
    Ok(match parts[0].0 {
        CpuStorage::F16(_) => case!(F16),
        CpuStorage::BF16(_) => case!(BF16),
        CpuStorage::F32(_) => case!(F32),
        CpuStorage::F64(_) => case!(F64),
        CpuStorage::U32(_) => case!(U32),
    })
}

pub fn download(src: &CpuStorage, layout: &Layout) -> glimpse_tensor::HostVec {
    crate::with_slice!(src, v => WithDType::into_host_vec(gather(v, layout)))
}

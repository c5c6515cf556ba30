//! Bad input returns the right `Error` variant and never panics: shapes, dtypes, dimension and
//! index ranges, element counts, fused-op arguments, and tensors of different devices (through a
//! test-only backend that forwards to the CPU one but reports another location).

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use common::*;
use glimpse_cpu::CpuBackend;
use glimpse_tensor::{
    AttentionOptions, Backend, BackendStorage, BinaryOp, DType, Device, DeviceLocation, Error,
    HostSlice, HostVec, Layout, PatchEmbedOptions, ReduceOp, Result, Storage, Tensor, UnaryOp,
    compose,
};
use proptest::prelude::*;

/// Runs `f`, failing the test if it panics; returns its result.
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => panic!("{what}: panicked instead of returning an error"),
    }
}

/// Asserts that an expression returns `Err` matching a pattern, without panicking.
macro_rules! assert_err {
    ($e:expr, $pat:pat) => {{
        let r = no_panic(stringify!($e), || $e);
        match r {
            Err($pat) => {}
            Err(other) => panic!("{}: wrong error {other:?}", stringify!($e)),
            Ok(v) => panic!("{}: expected an error, got {v:?}", stringify!($e)),
        }
    }};
}

fn f32s(shape: &[usize]) -> Tensor {
    Tensor::ones(shape.to_vec(), DType::F32, &dev()).unwrap()
}

fn of(shape: &[usize], dtype: DType) -> Tensor {
    Tensor::ones(shape.to_vec(), dtype, &dev()).unwrap()
}

fn ids(v: &[u32]) -> Tensor {
    Tensor::from_slice(v, v.len(), &dev()).unwrap()
}

#[test]
fn mismatched_shapes() {
    let (a, b) = (f32s(&[2, 3]), f32s(&[4]));
    assert_err!(a.add(&b), Error::ShapeMismatch { .. });
    assert_err!(a.eq(&b), Error::ShapeMismatch { .. });
    assert_err!(
        f32s(&[2, 3]).matmul(&f32s(&[2, 3])),
        Error::ShapeMismatch { .. }
    );
    assert_err!(
        f32s(&[3]).matmul(&f32s(&[3, 2])),
        Error::ShapeMismatch { .. }
    );
    assert_err!(
        f32s(&[2, 2, 3]).matmul(&f32s(&[3, 3, 4])),
        Error::ShapeMismatch { .. }
    );
    assert_err!(
        Tensor::cat(&[&a, &f32s(&[3, 3])], 1),
        Error::ShapeMismatch { .. }
    );
    assert_err!(
        Tensor::cat(&[&a, &f32s(&[2, 3, 1])], 0),
        Error::ShapeMismatch { .. }
    );
    assert_err!(Tensor::cat(&[], 0), Error::InvalidArgument { .. });
    let cond = of(&[2, 3], DType::U32);
    assert_err!(
        cond.where_cond(&f32s(&[4]), &f32s(&[2, 3])),
        Error::ShapeMismatch { .. }
    );
    assert_err!(
        cond.where_cond(&f32s(&[2, 3]), &f32s(&[2, 2])),
        Error::ShapeMismatch { .. }
    );
    assert_err!(a.reshape([4, 2]), Error::ShapeMismatch { .. });
    assert_err!(a.broadcast_as([2, 4]), Error::ShapeMismatch { .. });
    assert_err!(a.broadcast_as([3]), Error::ShapeMismatch { .. });
    assert_err!(a.squeeze(0), Error::BadShape { .. });
    assert_err!(f32s(&[3]).t(), Error::BadShape { .. });
    assert_err!(a.permute(&[0]), Error::BadShape { .. });
    assert_err!(a.permute(&[0, 0]), Error::InvalidArgument { .. });
    assert_err!(a.to_scalar::<f32>(), Error::BadShape { .. });
    assert_err!(f32s(&[2, 0]).max(1), Error::BadShape { .. });
    assert_err!(f32s(&[2, 0]).argmin(1), Error::BadShape { .. });
    assert_err!(f32s(&[]).softmax(0), Error::BadShape { .. });
    assert_err!(
        f32s(&[]).layer_norm(None, None, 1e-5),
        Error::BadShape { .. }
    );
    assert_err!(
        a.layer_norm(Some(&f32s(&[2])), None, 1e-5),
        Error::ShapeMismatch { .. }
    );
    assert_err!(
        a.index_select(&of(&[1, 1], DType::U32), 0),
        Error::BadShape { .. }
    );
    assert_err!(
        a.gather(&of(&[2, 2], DType::U32), 0),
        Error::ShapeMismatch { .. }
    );
    assert_err!(
        a.gather(&of(&[2], DType::U32), 0),
        Error::ShapeMismatch { .. }
    );
    assert_err!(
        a.scatter_add(&of(&[1, 3], DType::U32), &f32s(&[1, 2]), 0),
        Error::ShapeMismatch { .. }
    );
    assert_err!(
        a.scatter_add(&of(&[1, 2], DType::U32), &f32s(&[1, 2]), 0),
        Error::ShapeMismatch { .. }
    );
}

#[test]
fn wrong_dtypes() {
    let (a, h) = (f32s(&[2, 3]), of(&[2, 3], DType::F16));
    assert_err!(a.add(&h), Error::DTypeMismatch { .. });
    assert_err!(a.lt(&h), Error::DTypeMismatch { .. });
    assert_err!(
        a.matmul(&of(&[3, 2], DType::F16)),
        Error::DTypeMismatch { .. }
    );
    assert_err!(Tensor::cat(&[&a, &h], 0), Error::DTypeMismatch { .. });
    assert_err!(a.where_cond(&a, &a), Error::DTypeMismatch { .. });
    let cond = of(&[2, 3], DType::U32);
    assert_err!(cond.where_cond(&a, &h), Error::DTypeMismatch { .. });
    assert_err!(a.index_select(&f32s(&[2]), 0), Error::DTypeMismatch { .. });
    assert_err!(a.gather(&f32s(&[1, 3]), 0), Error::DTypeMismatch { .. });
    assert_err!(
        a.scatter_add(&f32s(&[1, 3]), &a.narrow(0, 0, 1).unwrap(), 0),
        Error::DTypeMismatch { .. }
    );
    assert_err!(
        a.scatter_add(&of(&[1, 3], DType::U32), &of(&[1, 3], DType::F16), 0),
        Error::DTypeMismatch { .. }
    );
    assert_err!(a.to_vec::<f64>(), Error::DTypeMismatch { .. });
    assert_err!(
        a.layer_norm(Some(&of(&[3], DType::F16)), None, 1e-5),
        Error::DTypeMismatch { .. }
    );
    // U32 in float-only ops
    let u = of(&[2, 3], DType::U32);
    for op in [
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Sin,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Recip,
        UnaryOp::Erf,
        UnaryOp::GeluErf,
        UnaryOp::Powf(2.0),
        UnaryOp::Neg,
    ] {
        assert_err!(u.unary(op), Error::UnsupportedDType { .. });
    }
    assert_err!(
        u.matmul(&of(&[3, 2], DType::U32)),
        Error::UnsupportedDType { .. }
    );
    assert_err!(u.softmax(-1isize), Error::UnsupportedDType { .. });
    assert_err!(u.log_softmax(-1isize), Error::UnsupportedDType { .. });
    assert_err!(
        u.layer_norm(None, None, 1e-5),
        Error::UnsupportedDType { .. }
    );
    assert_err!(u.gelu_erf(), Error::UnsupportedDType { .. });
    assert_err!(
        Tensor::rand_uniform(0.0, 1.0, [2], DType::U32, 0, &dev()),
        Error::InvalidArgument { .. }
    );
    assert_err!(
        Tensor::rand_normal(0.0, 1.0, [2], DType::U32, 0, &dev()),
        Error::InvalidArgument { .. }
    );
    // integer division by zero is an error, not a panic
    assert_err!(
        ids(&[1, 2]).div(&ids(&[1, 0])),
        Error::InvalidArgument { .. }
    );
}

#[test]
fn dims_out_of_range() {
    let a = f32s(&[2, 3]);
    assert_err!(a.sum(2), Error::DimOutOfRange { .. });
    assert_err!(a.sum(-3isize), Error::DimOutOfRange { .. });
    assert_err!(
        a.reduce(ReduceOp::ArgMax, 5, true),
        Error::DimOutOfRange { .. }
    );
    assert_err!(a.mean(2), Error::DimOutOfRange { .. });
    assert_err!(a.transpose(0, 2), Error::DimOutOfRange { .. });
    assert_err!(a.transpose(-3isize, 0isize), Error::DimOutOfRange { .. });
    assert_err!(a.narrow(2, 0, 1), Error::DimOutOfRange { .. });
    assert_err!(a.narrow(-3isize, 0, 1), Error::DimOutOfRange { .. });
    assert_err!(a.squeeze(4), Error::DimOutOfRange { .. });
    assert_err!(a.unsqueeze(3), Error::DimOutOfRange { .. });
    assert_err!(a.softmax(2), Error::DimOutOfRange { .. });
    assert_err!(a.log_softmax(-3isize), Error::DimOutOfRange { .. });
    assert_err!(a.index_select(&ids(&[0]), 2), Error::DimOutOfRange { .. });
    assert_err!(
        a.gather(&of(&[2, 3], DType::U32), -3isize),
        Error::DimOutOfRange { .. }
    );
    assert_err!(
        a.scatter_add(&of(&[2, 3], DType::U32), &a, 2),
        Error::DimOutOfRange { .. }
    );
    assert_err!(Tensor::cat(&[&a, &a], 2), Error::DimOutOfRange { .. });
    assert_err!(Tensor::cat(&[&a, &a], -3isize), Error::DimOutOfRange { .. });
    assert_err!(a.dim(-3isize), Error::DimOutOfRange { .. });
    assert_err!(f32s(&[]).sum(0), Error::DimOutOfRange { .. });
}

#[test]
fn ranges_indices_and_counts() {
    let a = f32s(&[2, 3]);
    assert_err!(a.narrow(0, 1, 2), Error::IndexOutOfRange { .. });
    assert_err!(a.narrow(1, 4, 0), Error::IndexOutOfRange { .. });
    assert_err!(a.narrow(1, usize::MAX, 2), Error::IndexOutOfRange { .. });
    assert_err!(
        a.index_select(&ids(&[0, 2]), 0),
        Error::IndexOutOfRange { .. }
    );
    assert_err!(a.index_select(&ids(&[3]), 1), Error::IndexOutOfRange { .. });
    let bad = Tensor::from_slice(&[0u32, 1, 3, 0, 0, 0], [2, 3], &dev()).unwrap();
    assert_err!(a.gather(&bad, 1), Error::IndexOutOfRange { .. });
    assert_err!(
        a.gather(
            &Tensor::from_slice(&[0u32, 9, 0], [1, 3], &dev()).unwrap(),
            0
        ),
        Error::IndexOutOfRange { .. }
    );
    assert_err!(
        a.scatter_add(&bad, &f32s(&[2, 3]), 1),
        Error::IndexOutOfRange { .. }
    );
    assert_err!(
        a.scatter_add(
            &Tensor::from_slice(&[2u32, 0, 0], [1, 3], &dev()).unwrap(),
            &f32s(&[1, 3]),
            0
        ),
        Error::IndexOutOfRange { .. }
    );
    assert_err!(
        Tensor::from_slice(&[1.0f32, 2.0], [3], &dev()),
        Error::ElementCount { .. }
    );
    assert_err!(
        Tensor::from_vec(vec![1u32; 5], [2, 2], &dev()),
        Error::ElementCount { .. }
    );
    assert_err!(
        Tensor::from_slice::<f64>(&[], (), &dev()),
        Error::ElementCount { .. }
    );
    assert_err!(
        Tensor::arange_step(0.0, 1.0, 0.0, DType::F32, &dev()),
        Error::InvalidArgument { .. }
    );
    assert_err!(
        Tensor::arange_step(0.0, f64::INFINITY, 1.0, DType::F32, &dev()),
        Error::InvalidArgument { .. }
    );
    assert_err!(
        Tensor::arange(-2.0, 2.0, DType::U32, &dev()),
        Error::InvalidArgument { .. }
    );
    assert_err!(
        Tensor::rand_uniform(1.0, 1.0, [2], DType::F32, 0, &dev()),
        Error::InvalidArgument { .. }
    );
    assert_err!(
        Tensor::rand_normal(0.0, -1.0, [2], DType::F32, 0, &dev()),
        Error::InvalidArgument { .. }
    );
}

fn attn(q: &[usize], k: &[usize], v: &[usize], opts: &AttentionOptions) -> Result<()> {
    Tensor::attention(&f32s(q), &f32s(k), &f32s(v), opts).map(|_| ())
}

#[test]
fn attention_arguments() {
    let o = AttentionOptions::default();
    assert_err!(
        attn(&[1, 2, 3], &[1, 2, 3, 4], &[1, 2, 3, 4], &o),
        Error::BadShape { .. }
    );
    assert_err!(
        attn(&[1, 2, 3, 4], &[1, 2, 3], &[1, 2, 3, 4], &o),
        Error::BadShape { .. }
    );
    assert_err!(
        attn(&[1, 2, 3, 4], &[1, 2, 5, 4], &[1, 2, 5, 4, 1], &o),
        Error::BadShape { .. }
    );
    // head dims, key counts, batch or heads that disagree
    assert_err!(
        attn(&[1, 2, 3, 4], &[1, 2, 5, 3], &[1, 2, 5, 4], &o),
        Error::InvalidArgument { .. }
    );
    assert_err!(
        attn(&[1, 2, 3, 4], &[1, 2, 5, 4], &[1, 2, 6, 4], &o),
        Error::InvalidArgument { .. }
    );
    assert_err!(
        attn(&[1, 2, 3, 4], &[2, 2, 5, 4], &[2, 2, 5, 4], &o),
        Error::InvalidArgument { .. }
    );
    assert_err!(
        attn(&[1, 2, 3, 4], &[1, 1, 5, 4], &[1, 1, 5, 4], &o),
        Error::InvalidArgument { .. }
    );
    let mask = |shape: &[usize], dtype| AttentionOptions {
        key_padding_mask: Some(of(shape, dtype)),
        ..Default::default()
    };
    assert_err!(
        attn(
            &[2, 1, 3, 4],
            &[2, 1, 5, 4],
            &[2, 1, 5, 4],
            &mask(&[2, 4], DType::U32)
        ),
        Error::BadShape { .. }
    );
    assert_err!(
        attn(
            &[2, 1, 3, 4],
            &[2, 1, 5, 4],
            &[2, 1, 5, 4],
            &mask(&[1, 5], DType::U32)
        ),
        Error::BadShape { .. }
    );
    assert_err!(
        attn(
            &[2, 1, 3, 4],
            &[2, 1, 5, 4],
            &[2, 1, 5, 4],
            &mask(&[2, 1, 5], DType::U32)
        ),
        Error::BadShape { .. }
    );
    assert_err!(
        attn(
            &[2, 1, 3, 4],
            &[2, 1, 5, 4],
            &[2, 1, 5, 4],
            &mask(&[2, 5], DType::F32)
        ),
        Error::DTypeMismatch { .. }
    );
    let nan = AttentionOptions {
        scale: Some(f64::NAN),
        ..Default::default()
    };
    assert_err!(
        attn(&[1, 1, 3, 4], &[1, 1, 5, 4], &[1, 1, 5, 4], &nan),
        Error::InvalidArgument { .. }
    );
    let (q, k, v) = (
        f32s(&[1, 1, 3, 4]),
        f32s(&[1, 1, 5, 4]),
        f32s(&[1, 1, 5, 2]),
    );
    assert_err!(
        Tensor::attention(&q, &of(&[1, 1, 5, 4], DType::F16), &v, &o),
        Error::DTypeMismatch { .. }
    );
    let qu = of(&[1, 1, 3, 4], DType::U32);
    assert_err!(
        Tensor::attention(&qu, &qu, &qu, &o),
        Error::UnsupportedDType { .. }
    );
    // backward: output, its gradient and lse of the wrong shapes
    let out = Tensor::attention(&q, &k, &v, &o).unwrap();
    assert_err!(
        Tensor::attention_backward(&q, &k, &v, &out, &f32s(&[1, 1, 3, 4]), &o),
        Error::BadShape { .. }
    );
    let mut bad = out.clone();
    bad.lse = f32s(&[1, 1, 4]);
    assert_err!(
        Tensor::attention_backward(&q, &k, &v, &bad, &f32s(&[1, 1, 3, 2]), &o),
        Error::BadShape { .. }
    );
    assert_err!(
        Tensor::attention_backward(&q, &k, &v, &out, &of(&[1, 1, 3, 2], DType::F16), &o),
        Error::DTypeMismatch { .. }
    );
}

#[test]
fn patch_embed_and_contrastive_arguments() {
    let img = f32s(&[1, 3, 8, 8]);
    let o = |p: usize| PatchEmbedOptions {
        patch_size: p,
        class_embedding: None,
        position_embedding: None,
    };
    assert_err!(
        Tensor::patch_embed(&img, &f32s(&[5, 3, 4, 2]), None, &o(4)),
        Error::BadShape { .. }
    );
    assert_err!(
        Tensor::patch_embed(&img, &f32s(&[5, 2, 4, 4]), None, &o(4)),
        Error::BadShape { .. }
    );
    assert_err!(
        Tensor::patch_embed(&img, &f32s(&[5, 3, 4]), None, &o(4)),
        Error::BadShape { .. }
    );
    assert_err!(
        Tensor::patch_embed(&img, &f32s(&[5, 3, 4, 4]), Some(&f32s(&[4])), &o(4)),
        Error::BadShape { .. }
    );
    assert_err!(
        Tensor::patch_embed(&img, &f32s(&[5, 3, 0, 0]), None, &o(0)),
        Error::BadShape { .. }
    );
    assert_err!(
        Tensor::patch_embed(&img, &f32s(&[5, 3, 9, 9]), None, &o(9)),
        Error::BadShape { .. }
    );
    assert_err!(
        Tensor::patch_embed(&f32s(&[3, 8, 8]), &f32s(&[5, 3, 4, 4]), None, &o(4)),
        Error::BadShape { .. }
    );
    assert_err!(
        Tensor::patch_embed(&img, &of(&[5, 3, 4, 4], DType::F16), None, &o(4)),
        Error::DTypeMismatch { .. }
    );
    let with_pos = PatchEmbedOptions {
        position_embedding: Some(f32s(&[4, 5])),
        class_embedding: Some(f32s(&[5])),
        ..o(4)
    };
    assert_err!(
        Tensor::patch_embed(&img, &f32s(&[5, 3, 4, 4]), None, &with_pos),
        Error::BadShape { .. }
    );
    let with_cls = PatchEmbedOptions {
        class_embedding: Some(f32s(&[4])),
        ..o(4)
    };
    assert_err!(
        Tensor::patch_embed(&img, &f32s(&[5, 3, 4, 4]), None, &with_cls),
        Error::BadShape { .. }
    );
    assert_err!(
        Tensor::patch_embed(
            &of(&[1, 3, 8, 8], DType::U32),
            &of(&[5, 3, 4, 4], DType::U32),
            None,
            &o(4)
        ),
        Error::UnsupportedDType { .. }
    );

    let s = f32s(&[]);
    assert_err!(
        Tensor::contrastive_loss(&f32s(&[3, 4]), &f32s(&[3, 5]), &s),
        Error::ShapeMismatch { .. }
    );
    assert_err!(
        Tensor::contrastive_loss(&f32s(&[3, 4]), &f32s(&[2, 4]), &s),
        Error::ShapeMismatch { .. }
    );
    assert_err!(
        Tensor::contrastive_loss(&f32s(&[0, 4]), &f32s(&[0, 4]), &s),
        Error::ShapeMismatch { .. }
    );
    assert_err!(
        Tensor::contrastive_loss(&f32s(&[4]), &f32s(&[4]), &s),
        Error::ShapeMismatch { .. }
    );
    assert_err!(
        Tensor::contrastive_loss(&f32s(&[3, 4]), &f32s(&[3, 4]), &f32s(&[2])),
        Error::BadShape { .. }
    );
    assert_err!(
        Tensor::contrastive_loss(&f32s(&[3, 4]), &f32s(&[3, 4]), &of(&[], DType::U32)),
        Error::BadShape { .. }
    );
    assert_err!(
        Tensor::contrastive_loss(&f32s(&[3, 4]), &of(&[3, 4], DType::F16), &s),
        Error::DTypeMismatch { .. }
    );
    let (i, t) = (f32s(&[3, 4]), f32s(&[3, 4]));
    let saved = Tensor::contrastive_loss(&i, &t, &s).unwrap();
    assert_err!(
        Tensor::contrastive_loss_backward(&i, &t, &s, &saved, &f32s(&[2])),
        Error::BadShape { .. }
    );
    let mut bad = saved.clone();
    bad.lse_cols = f32s(&[2]);
    assert_err!(
        Tensor::contrastive_loss_backward(&i, &t, &s, &bad, &s),
        Error::BadShape { .. }
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any pair of shapes: broadcasting succeeds exactly when numpy's rules allow it.
    #[test]
    fn binary_broadcast_errors(a in any_shape(), b in any_shape()) {
        let (x, y) = (f32s(&a), f32s(&b));
        let ok = (0..a.len().max(b.len())).all(|i| {
            let da = if i < a.len() { a[a.len() - 1 - i] } else { 1 };
            let db = if i < b.len() { b[b.len() - 1 - i] } else { 1 };
            da == db || da == 1 || db == 1
        });
        let r = no_panic("add", || x.add(&y));
        match r {
            Ok(z) => {
                prop_assert!(ok);
                prop_assert_eq!(z.dims(), &broadcast_shape(&a, &b)[..]);
            }
            Err(e) => {
                prop_assert!(!ok);
                prop_assert!(matches!(e, Error::ShapeMismatch { .. }), "{:?}", e);
            }
        }
    }

    /// Dimension arguments in `-6..6` on shapes of rank `0..=4`: fine in range, DimOutOfRange
    /// outside, for every op that takes one.
    #[test]
    fn dim_arguments(shape in shape_in(0, 4, 1), dim in -6isize..6) {
        let x = f32s(&shape);
        let rank = shape.len() as isize;
        let in_range = dim >= -rank && dim < rank;
        let results: Vec<(&str, Result<Tensor>)> = vec![
            ("sum", no_panic("sum", || x.sum(dim))),
            ("max_keepdim", no_panic("max", || x.max_keepdim(dim))),
            ("argmax", no_panic("argmax", || x.argmax(dim))),
            ("mean", no_panic("mean", || x.mean(dim))),
            ("narrow", no_panic("narrow", || x.narrow(dim, 0, 1))),
            ("transpose", no_panic("transpose", || x.transpose(dim, 0isize))),
            ("softmax", no_panic("softmax", || x.softmax(dim))),
            ("cat", no_panic("cat", || Tensor::cat(&[&x, &x], dim))),
            ("index_select", no_panic("index_select", || x.index_select(&ids(&[0, 0]), dim))),
            ("squeeze", no_panic("squeeze", || x.squeeze(dim))),
        ];
        for (name, r) in results {
            match r {
                Ok(_) => prop_assert!(in_range, "{name} accepted dim {dim} for rank {rank}"),
                Err(Error::DimOutOfRange { .. }) => prop_assert!(!in_range, "{name} rejected dim {dim}"),
                // squeeze of a non-1 dim
                Err(Error::BadShape { .. }) if name == "squeeze" => prop_assert!(in_range),
                Err(Error::BadShape { .. }) if name == "softmax" => prop_assert!(rank == 0),
                Err(e) => prop_assert!(false, "{name}: unexpected {e:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------- devices

/// A backend at another location that forwards everything to the CPU backend.
#[derive(Debug)]
struct Fake;

impl Backend for Fake {
    fn location(&self) -> DeviceLocation {
        DeviceLocation {
            backend: "fake",
            ordinal: 0,
        }
    }
    fn supports_dtype(&self, dtype: DType) -> bool {
        CpuBackend.supports_dtype(dtype)
    }
    fn full(&self, dtype: DType, len: usize, value: f64) -> Result<Storage> {
        CpuBackend.full(dtype, len, value)
    }
    fn upload(&self, data: HostSlice<'_>) -> Result<Storage> {
        CpuBackend.upload(data)
    }
    fn download(&self, src: &dyn BackendStorage, layout: &Layout) -> Result<HostVec> {
        CpuBackend.download(src, layout)
    }
    fn rand_uniform(
        &self,
        dtype: DType,
        len: usize,
        low: f64,
        high: f64,
        seed: u64,
    ) -> Result<Storage> {
        CpuBackend.rand_uniform(dtype, len, low, high, seed)
    }
    fn rand_normal(
        &self,
        dtype: DType,
        len: usize,
        mean: f64,
        std: f64,
        seed: u64,
    ) -> Result<Storage> {
        CpuBackend.rand_normal(dtype, len, mean, std, seed)
    }
    fn copy_strided(&self, src: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        CpuBackend.copy_strided(src, layout)
    }
    fn concat(&self, parts: &[(&dyn BackendStorage, &Layout)], dim: usize) -> Result<Storage> {
        CpuBackend.concat(parts, dim)
    }
    fn cast(&self, src: &dyn BackendStorage, layout: &Layout, dtype: DType) -> Result<Storage> {
        CpuBackend.cast(src, layout, dtype)
    }
    fn unary(&self, op: UnaryOp, src: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        CpuBackend.unary(op, src, layout)
    }
    fn binary(
        &self,
        op: BinaryOp,
        lhs: &dyn BackendStorage,
        lhs_layout: &Layout,
        rhs: &dyn BackendStorage,
        rhs_layout: &Layout,
    ) -> Result<Storage> {
        CpuBackend.binary(op, lhs, lhs_layout, rhs, rhs_layout)
    }
    fn where_cond(
        &self,
        cond: &dyn BackendStorage,
        cond_layout: &Layout,
        on_true: &dyn BackendStorage,
        true_layout: &Layout,
        on_false: &dyn BackendStorage,
        false_layout: &Layout,
    ) -> Result<Storage> {
        CpuBackend.where_cond(
            cond,
            cond_layout,
            on_true,
            true_layout,
            on_false,
            false_layout,
        )
    }
    fn reduce(
        &self,
        op: ReduceOp,
        src: &dyn BackendStorage,
        layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        CpuBackend.reduce(op, src, layout, dim)
    }
    fn matmul(
        &self,
        lhs: &dyn BackendStorage,
        lhs_layout: &Layout,
        rhs: &dyn BackendStorage,
        rhs_layout: &Layout,
    ) -> Result<Storage> {
        CpuBackend.matmul(lhs, lhs_layout, rhs, rhs_layout)
    }
    fn index_select(
        &self,
        src: &dyn BackendStorage,
        src_layout: &Layout,
        ids: &dyn BackendStorage,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        CpuBackend.index_select(src, src_layout, ids, ids_layout, dim)
    }
    fn gather(
        &self,
        src: &dyn BackendStorage,
        src_layout: &Layout,
        ids: &dyn BackendStorage,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        CpuBackend.gather(src, src_layout, ids, ids_layout, dim)
    }
    fn scatter_add(
        &self,
        dst: &dyn BackendStorage,
        dst_layout: &Layout,
        ids: &dyn BackendStorage,
        ids_layout: &Layout,
        src: &dyn BackendStorage,
        src_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        CpuBackend.scatter_add(dst, dst_layout, ids, ids_layout, src, src_layout, dim)
    }
}

#[test]
fn mixing_devices_is_device_mismatch() {
    let fake = Device::new(Arc::new(Fake));
    assert!(!fake.same_device(&dev()));
    let f = |shape: &[usize]| Tensor::ones(shape.to_vec(), DType::F32, &fake).unwrap();
    // The fake device works on its own (it forwards to the CPU backend)...
    let x = f(&[2, 3]);
    assert_eq!(values(&x.add(&x).unwrap()), [2.0; 6]);
    assert_eq!(
        values(&compose::softmax_last_dim(&f(&[1, 4])).unwrap()),
        [0.25; 4]
    );
    // ...and refuses CPU tensors.
    let c = f32s(&[2, 3]);
    assert_err!(x.add(&c), Error::DeviceMismatch { .. });
    assert_err!(c.mul(&x), Error::DeviceMismatch { .. });
    assert_err!(x.matmul(&f32s(&[3, 2])), Error::DeviceMismatch { .. });
    assert_err!(Tensor::cat(&[&c, &x], 0), Error::DeviceMismatch { .. });
    let cond = Tensor::ones([2, 3], DType::U32, &fake).unwrap();
    assert_err!(cond.where_cond(&c, &x), Error::DeviceMismatch { .. });
    assert_err!(cond.where_cond(&x, &c), Error::DeviceMismatch { .. });
    assert_err!(x.index_select(&ids(&[0]), 0), Error::DeviceMismatch { .. });
    assert_err!(
        x.gather(&of(&[1, 3], DType::U32), 0),
        Error::DeviceMismatch { .. }
    );
    let fids = Tensor::zeros([1, 3], DType::U32, &fake).unwrap();
    assert_err!(
        x.scatter_add(&fids, &f32s(&[1, 3]), 0),
        Error::DeviceMismatch { .. }
    );
    assert_err!(
        x.layer_norm(Some(&f32s(&[3])), None, 1e-5),
        Error::DeviceMismatch { .. }
    );
    let (q, k) = (f(&[1, 1, 2, 4]), f32s(&[1, 1, 2, 4]));
    assert_err!(
        Tensor::attention(&q, &k, &k, &AttentionOptions::default()),
        Error::DeviceMismatch { .. }
    );
    let mask = AttentionOptions {
        key_padding_mask: Some(of(&[1, 2], DType::U32)),
        ..Default::default()
    };
    assert_err!(
        Tensor::attention(&q, &q, &q, &mask),
        Error::DeviceMismatch { .. }
    );
    let img = f(&[1, 3, 4, 4]);
    let po = PatchEmbedOptions {
        patch_size: 2,
        class_embedding: None,
        position_embedding: None,
    };
    assert_err!(
        Tensor::patch_embed(&img, &f32s(&[5, 3, 2, 2]), None, &po),
        Error::DeviceMismatch { .. }
    );
    assert_err!(
        Tensor::contrastive_loss(&f(&[2, 3]), &f32s(&[2, 3]), &f(&[])),
        Error::DeviceMismatch { .. }
    );
    assert_err!(
        Tensor::contrastive_loss(&f(&[2, 3]), &f(&[2, 3]), &f32s(&[])),
        Error::DeviceMismatch { .. }
    );
}

#[test]
fn linear_arguments() {
    let x = f32s(&[4, 8]);
    let w = f32s(&[6, 8]);
    assert_err!(x.linear(&f32s(&[6, 7]), None), Error::ShapeMismatch { .. });
    assert_err!(
        f32s(&[2, 4, 8]).linear(&w, None),
        Error::ShapeMismatch { .. }
    );
    assert_err!(x.linear(&f32s(&[8]), None), Error::ShapeMismatch { .. });
    assert_err!(x.linear(&w, Some(&f32s(&[8]))), Error::BadShape { .. });
    assert_err!(x.linear(&w, Some(&f32s(&[1, 6]))), Error::BadShape { .. });
    assert_err!(
        x.linear(&of(&[6, 8], DType::F16), None),
        Error::DTypeMismatch { .. }
    );
    assert_err!(
        x.linear(&w, Some(&of(&[6], DType::BF16))),
        Error::DTypeMismatch { .. }
    );
    assert_err!(
        of(&[4, 8], DType::U32).linear(&of(&[6, 8], DType::U32), None),
        Error::UnsupportedDType { .. } | Error::DTypeMismatch { .. }
    );
    // Empty operands are fine: (0, 8) rows, or k = 0 (all bias).
    assert_eq!(f32s(&[0, 8]).linear(&w, None).unwrap().dims(), &[0, 6]);
    let y = f32s(&[3, 0])
        .linear(&f32s(&[5, 0]), Some(&f32s(&[5])))
        .unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![1.0; 15]);
}

//! Opening the device (cleanly failing without CUDA), poisoned allocations, and the errors the
//! backend reports from device memory (bad indices, integer division by zero).

mod common;

use common::*;
use glimpse_tensor::{BackendStorage, DType, Error, Tensor};

#[test]
fn opening_a_device_never_panics() {
    // Works on any machine: with CUDA this opens the device, without it this is an error.
    let available = glimpse_cuda::is_available();
    match glimpse_cuda::device(0) {
        Ok(d) => {
            assert!(available);
            assert_eq!(d.location().backend, "cuda");
            assert_eq!(d.location().ordinal, 0);
            // one shared handle per ordinal
            assert!(d.same_device(&glimpse_cuda::device(0).unwrap()));
            glimpse_cuda::synchronize(&d).unwrap();
        }
        Err(e) => {
            assert!(!available);
            assert!(matches!(e, Error::Backend { .. }), "{e}");
            println!("no CUDA device here: {e}");
        }
    }
    assert!(glimpse_cuda::synchronize(&cpu()).is_err());
    // An ordinal no machine has is an error either way.
    assert!(matches!(
        glimpse_cuda::device(4096),
        Err(Error::Backend { .. })
    ));
}

#[test]
fn fresh_allocations_are_poisoned() {
    let Some(_) = gpu("fresh_allocations_are_poisoned") else {
        return;
    };
    let b = glimpse_cuda::backend(0).unwrap();
    assert!(b.poison());
    for dtype in DTYPES {
        let s = b.alloc_storage(dtype, 5).unwrap();
        assert_eq!((s.dtype(), s.len()), (dtype, 5));
        let t = Tensor::from_storage(
            std::sync::Arc::new(s),
            glimpse_tensor::Layout::contiguous([5]),
            glimpse_cuda::device(0).unwrap(),
        )
        .unwrap();
        let v = values(&t);
        if dtype == DType::U32 {
            assert_eq!(v, vec![u32::MAX as f64; 5]);
        } else {
            assert!(v.iter().all(|x| x.is_nan()), "{dtype}: {v:?}");
        }
    }
    // Empty storages work too (CUDA cannot allocate zero bytes).
    let e = b.alloc_storage(DType::F32, 0).unwrap();
    assert_eq!(e.len(), 0);
}

#[test]
fn bad_indices_are_errors() {
    let Some(g) = gpu("bad_indices_are_errors") else {
        return;
    };
    let a = Tensor::ones([2, 3], DType::F32, &g).unwrap();
    let ids = |v: &[u32], shape: &[usize]| Tensor::from_slice(v, shape.to_vec(), &g).unwrap();
    let is_oob = |r: glimpse_tensor::Result<Tensor>, index: usize, size: usize| match r {
        Err(Error::IndexOutOfRange {
            index: i, size: s, ..
        }) => i == index && s == size,
        other => panic!("expected IndexOutOfRange, got {other:?}"),
    };
    assert!(is_oob(a.index_select(&ids(&[0, 2], &[2]), 0), 2, 2));
    assert!(is_oob(a.index_select(&ids(&[3, 0, 7], &[3]), 1), 3, 3));
    let bad = ids(&[0, 1, 3, 0, 0, 5], &[2, 3]);
    assert!(is_oob(a.gather(&bad, 1), 3, 3));
    assert!(is_oob(a.gather(&ids(&[0, 9, 0], &[1, 3]), 0), 9, 2));
    let src = Tensor::ones([2, 3], DType::F32, &g).unwrap();
    assert!(is_oob(a.scatter_add(&bad, &src, 1), 3, 3));
    // Bad ids are reported even when the output is empty.
    let empty = Tensor::ones([0, 3], DType::F32, &g).unwrap();
    assert!(is_oob(empty.index_select(&ids(&[4], &[1]), 1), 4, 3));
    // The device is still usable afterwards.
    assert_eq!(values(&a.sum_all().unwrap()), [6.0]);
}

#[test]
fn integer_division_by_zero_is_an_error() {
    let Some(g) = gpu("integer_division_by_zero_is_an_error") else {
        return;
    };
    let a = Tensor::from_slice(&[1u32, 2], [2], &g).unwrap();
    let b = Tensor::from_slice(&[1u32, 0], [2], &g).unwrap();
    assert!(matches!(a.div(&b), Err(Error::InvalidArgument { .. })));
    let c = Tensor::from_slice(&[1u32, 2], [2], &g).unwrap();
    assert_eq!(a.div(&c).unwrap().to_vec::<u32>().unwrap(), [1, 1]);
}

#[test]
fn tensors_of_another_backend_are_rejected() {
    let Some(g) = gpu("tensors_of_another_backend_are_rejected") else {
        return;
    };
    let x = Tensor::ones([2], DType::F32, &g).unwrap();
    let y = Tensor::ones([2], DType::F32, &cpu()).unwrap();
    assert!(matches!(x.add(&y), Err(Error::DeviceMismatch { .. })));
    assert!(glimpse_cuda::cuda_storage(&**y.storage()).is_err());
    assert!(glimpse_cuda::storage_of(&x).unwrap().as_f32().is_ok());
    assert!(glimpse_cuda::storage_of(&x).unwrap().as_u32().is_err());
}

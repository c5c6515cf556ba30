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

/// The element-wise kernels' 16-byte dense paths (unit-stride views with 16-byte aligned
/// starts) and the broadcast-row copy (a bias repeated over rows) against the CPU, exactly:
/// both compute in f32 and round once. Lengths with and without a tail past the last full
/// 16 bytes, starts that are and are not aligned, rows that are and are not whole vectors.
#[test]
fn dense_element_wise_paths_match_the_cpu_exactly() {
    let Some(g) = gpu("dense_element_wise_paths_match_the_cpu_exactly") else {
        return;
    };
    let c = cpu();
    for dtype in FLOATS {
        for (len, off) in [(8192, 0), (8195, 0), (8195, 8), (8192, 1), (5, 0), (21, 3)] {
            let base = |seed| {
                Tensor::rand_uniform(-3.0, 3.0, [len + 16], dtype, seed, &c)
                    .unwrap()
                    .narrow(0, off, len)
                    .unwrap()
            };
            let (x, y) = (base(1), base(2));
            let (gx, gy) = (x.to_device(&g).unwrap(), y.to_device(&g).unwrap());
            let what = format!("{dtype} len {len} offset {off}");
            assert_eq!(
                values(&gx.add(&gy).unwrap()),
                values(&x.add(&y).unwrap()),
                "add, {what}"
            );
            assert_eq!(
                values(&gx.mul(&gy).unwrap()),
                values(&x.mul(&y).unwrap()),
                "mul, {what}"
            );
            assert_eq!(
                values(&gx.maximum(&gy).unwrap()),
                values(&x.maximum(&y).unwrap()),
                "maximum, {what}"
            );
            assert_eq!(
                values(&gx.relu().unwrap()),
                values(&x.relu().unwrap()),
                "relu, {what}"
            );
            assert_eq!(
                values(&gx.sqr().unwrap()),
                values(&x.sqr().unwrap()),
                "sqr, {what}"
            );
        }
        for (cols, off) in [(16, 0), (16, 8), (16, 1), (12, 0), (768, 0)] {
            let bias = Tensor::rand_uniform(-1.0, 1.0, [cols + 8], dtype, 3, &c)
                .unwrap()
                .narrow(0, off, cols)
                .unwrap();
            let rows = |t: &Tensor| t.broadcast_as([33, cols]).unwrap().contiguous().unwrap();
            let on_gpu = rows(&bias.to_device(&g).unwrap());
            assert_eq!(
                values(&on_gpu),
                values(&rows(&bias)),
                "{dtype} bias rows of {cols} from offset {off}"
            );
        }
    }
}

//! Opening the device, memory, copies, the queue counters and clean errors.

mod common;

use common::{assert_same, cpu, wgpu};
use glimpse_tensor::{DType, Error, Tensor};

#[test]
fn reports_the_adapter_and_its_dtypes() {
    let _serial = common::serial();
    let Some((device, be)) = wgpu("reports_the_adapter_and_its_dtypes") else {
        return;
    };
    let info = be.adapter_info();
    eprintln!(
        "adapter: {} ({:?}, {:?}, driver {} {}), dtypes {:?}",
        info.name,
        info.backend,
        info.device_type,
        info.driver,
        info.driver_info,
        be.dtypes()
    );
    assert_eq!(device.location().backend, "wgpu");
    assert!(be.dtypes().contains(&DType::F32) && be.dtypes().contains(&DType::U32));
    assert!(!be.dtypes().contains(&DType::BF16) && !be.dtypes().contains(&DType::F64));
}

#[test]
fn upload_download_full_and_strided_copies_round_trip() {
    let _serial = common::serial();
    let Some((device, be)) = wgpu("upload_download_full_and_strided_copies_round_trip") else {
        return;
    };
    for dtype in be.dtypes() {
        let host: Vec<f64> = (0..2 * 3 * 5).map(|i| i as f64).collect();
        let x = Tensor::from_vec(host.clone(), [2, 3, 5], &cpu())
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let g = x.to_device(&device).unwrap();
        assert_same(&g, &x, &format!("round trip {dtype}"));
        // Views: permuted, narrowed (odd offsets for 16-bit types), broadcast.
        let views = [
            (
                g.permute(&[2, 0, 1]).unwrap(),
                x.permute(&[2, 0, 1]).unwrap(),
            ),
            (g.narrow(2, 1, 3).unwrap(), x.narrow(2, 1, 3).unwrap()),
            (g.narrow(0, 1, 1).unwrap(), x.narrow(0, 1, 1).unwrap()),
        ];
        for (i, (gv, xv)) in views.iter().enumerate() {
            assert_same(gv, xv, &format!("view {i} {dtype}"));
            let gc = gv.contiguous().unwrap();
            assert_same(&gc, xv, &format!("copy of view {i} {dtype}"));
        }
        let f = Tensor::full(2.5, [7], dtype, &device).unwrap();
        let want = Tensor::full(2.5, [7], dtype, &cpu()).unwrap();
        assert_same(&f, &want, &format!("full {dtype}"));
    }
}

#[test]
fn random_tensors_match_the_cpu_backend() {
    let _serial = common::serial();
    let Some((device, _)) = wgpu("random_tensors_match_the_cpu_backend") else {
        return;
    };
    for dtype in common::floats() {
        let a = Tensor::rand_normal(0.5, 2.0, [33, 7], dtype, 11, &device).unwrap();
        let b = Tensor::rand_normal(0.5, 2.0, [33, 7], dtype, 11, &cpu()).unwrap();
        assert_same(&a, &b, &format!("normal {dtype}"));
        let a = Tensor::rand_uniform(-1.0, 1.0, [100], dtype, 3, &device).unwrap();
        let b = Tensor::rand_uniform(-1.0, 1.0, [100], dtype, 3, &cpu()).unwrap();
        assert_same(&a, &b, &format!("uniform {dtype}"));
    }
}

#[test]
fn unsupported_dtypes_and_missing_adapters_are_errors() {
    let _serial = common::serial();
    let Some((device, _)) = wgpu("unsupported_dtypes_and_missing_adapters_are_errors") else {
        return;
    };
    let err = Tensor::zeros([3], DType::BF16, &device).unwrap_err();
    assert!(matches!(err, Error::UnsupportedDType { .. }), "{err}");
    let err = Tensor::from_vec(vec![1.0f64, 2.0], [2], &device).unwrap_err();
    assert!(matches!(err, Error::UnsupportedDType { .. }), "{err}");
    let err = glimpse_wgpu::device(999).unwrap_err();
    assert!(err.to_string().contains("no wgpu adapter 999"), "{err}");
}

#[test]
fn dispatches_are_batched_until_a_read_back() {
    let _serial = common::serial();
    let Some((device, be)) = wgpu("dispatches_are_batched_until_a_read_back") else {
        return;
    };
    // Count the copies alone, without the poisoning fills.
    be.set_poison(false);
    let x = Tensor::rand_normal(0.0, 1.0, [64, 64], DType::F32, 1, &device).unwrap();
    be.synchronize().unwrap();
    let before = be.stats();
    let mut views = Vec::new();
    for i in 0..20 {
        views.push(
            x.narrow(0, i, 8)
                .unwrap()
                .t()
                .unwrap()
                .contiguous()
                .unwrap(),
        );
    }
    let mid = be.stats();
    assert_eq!(mid.dispatches - before.dispatches, 20);
    assert_eq!(
        mid.submissions, before.submissions,
        "no submission before a read-back"
    );
    let last = views.pop().unwrap().to_vec::<f32>().unwrap();
    let after = be.stats();
    assert_eq!(after.submissions - mid.submissions, 1);
    assert_eq!(after.readbacks - mid.readbacks, 1);
    let want = x
        .to_device(&cpu())
        .unwrap()
        .narrow(0, 19, 8)
        .unwrap()
        .t()
        .unwrap();
    assert_eq!(last, want.contiguous().unwrap().to_vec::<f32>().unwrap());
    be.set_poison(true);
}

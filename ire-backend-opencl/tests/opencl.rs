//! OpenCL-specific checks: discovery, device selection, the "no OpenCL" path, sizes that span
//! many work-groups and several reduction passes, both selection paths, empty buffers, f64.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::make_backend;
use ire_backend_opencl::{
    DeviceInfo, DeviceKind, OpenClBackend, platform_count, probe, required_by_env, select_device,
};
use ire_conformance::{self as conformance, Rng, assert_bitwise, assert_close, rel_tol};
use ire_core::device::SelectionPath;
use ire_core::formulas::SgdScalars;
use ire_core::{AdamWConfig, Backend, DType, Error, Reference, Scalar};

/// The backend, or a printed skip line.
fn backend(test: &str) -> Option<OpenClBackend> {
    let b = make_backend();
    if b.is_none() {
        println!("skipped {test}: OpenCL unavailable");
    }
    b
}

fn info(p: usize, d: usize, platform: &str, name: &str, kind: DeviceKind) -> DeviceInfo {
    DeviceInfo {
        platform_index: p,
        device_index: d,
        platform: platform.into(),
        name: name.into(),
        vendor: "Vendor".into(),
        version: "OpenCL 3.0".into(),
        kind,
        fp64: true,
        global_mem_bytes: 1 << 30,
        max_alloc_bytes: 1 << 28,
        compute_units: 4,
        max_work_group_size: 1024,
    }
}

#[test]
fn selectors_pick_the_named_device() {
    let devs = vec![
        info(
            0,
            0,
            "Portable Computing Language",
            "pthread-cpu",
            DeviceKind::Cpu,
        ),
        info(1, 0, "NVIDIA CUDA", "NVIDIA H100", DeviceKind::Gpu),
        info(1, 1, "NVIDIA CUDA", "NVIDIA A100", DeviceKind::Gpu),
    ];
    assert_eq!(
        select_device(&devs, "").unwrap(),
        1,
        "auto prefers the first GPU"
    );
    assert_eq!(select_device(&devs, "auto").unwrap(), 1);
    assert_eq!(select_device(&devs, "0:0").unwrap(), 0);
    assert_eq!(select_device(&devs, " 1:1 ").unwrap(), 2);
    assert_eq!(select_device(&devs, "2").unwrap(), 2);
    assert_eq!(select_device(&devs, "a100").unwrap(), 2);
    assert_eq!(
        select_device(&devs, "pocl").unwrap_or(9),
        9,
        "no substring match"
    );
    assert_eq!(select_device(&devs, "portable").unwrap(), 0);
    for bad in ["2:0", "0:5", "7", "no-such-device"] {
        assert!(
            matches!(select_device(&devs, bad), Err(Error::Unavailable { .. })),
            "{bad}"
        );
    }
    assert!(matches!(
        select_device(&[], ""),
        Err(Error::Unavailable { .. })
    ));
    let cpu_only = vec![info(0, 0, "P", "cpu", DeviceKind::Cpu)];
    assert_eq!(select_device(&cpu_only, "").unwrap(), 0);
    assert!(devs[1].to_string().starts_with("1:0 NVIDIA H100"));
    assert!(devs[1].is_gpu() && !devs[0].is_gpu());
}

#[test]
fn probe_lists_the_opened_device() {
    let Some(b) = backend("probe_lists_the_opened_device") else {
        return;
    };
    assert!(platform_count().unwrap() >= 1);
    let devices = probe().unwrap();
    assert!(devices.contains(b.runtime().info()), "{devices:?}");
    assert_eq!(b.supports_dtype(DType::F64), b.runtime().info().fp64);
    assert!(b.supports_dtype(DType::F32) && b.supports_dtype(DType::U8));
    if !b.runtime().info().fp64 {
        assert!(matches!(
            b.alloc::<f64>(4),
            Err(Error::UnsupportedDType { .. })
        ));
    }
    // A selector naming nothing is a clear "unavailable", not a panic.
    let err = ire_backend_opencl::open_selector("no-such-opencl-device-name").unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    // The measured default: host selection on a CPU device, device selection elsewhere.
    let want = if b.runtime().info().kind == DeviceKind::Cpu {
        SelectionPath::Host
    } else {
        SelectionPath::Device
    };
    assert_eq!(b.selection_path(), want);
}

const CHILD_ENV: &str = "IRE_OPENCL_TEST_NO_PLATFORM_CHILD";

/// Run in a child process whose ICD loader sees an empty vendor folder.
#[test]
fn absent_opencl_child() {
    if std::env::var(CHILD_ENV).is_err() {
        return; // Only meaningful inside `absent_opencl_is_unavailable`.
    }
    assert_eq!(platform_count(), Ok(0));
    assert!(matches!(probe(), Err(Error::Unavailable { .. })));
    let err = ire_backend_opencl::open().unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("no OpenCL platform"), "{err}");
    match ire_backend_opencl::optional() {
        Ok(None) => assert!(!required_by_env()),
        Err(Error::Unavailable { .. }) => assert!(required_by_env()),
        other => panic!("unexpected {other:?}"),
    }
    println!("child: no platform, Unavailable as expected");
}

#[test]
fn absent_opencl_is_unavailable() {
    let empty = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("empty-ocl-vendors-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let exe = std::env::current_exe().unwrap();
    for require in [None, Some("nvrtc,opencl")] {
        let mut cmd = Command::new(&exe);
        cmd.args(["--exact", "absent_opencl_child", "--nocapture"])
            .env(CHILD_ENV, "1")
            .env("OCL_ICD_VENDORS", &empty)
            .env_remove("OCL_ICD_FILENAMES");
        match require {
            Some(r) => cmd.env("IRE_REQUIRE", r),
            None => cmd.env_remove("IRE_REQUIRE"),
        };
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("1 passed"), "{stdout}");
        assert!(stdout.contains("Unavailable as expected"), "{stdout}");
    }
    std::fs::remove_dir_all(&empty).ok();
}

/// Sizes that take three reduction passes (more than 2048·2048 elements).
const BIG: usize = 4_200_011;

fn large_reductions_t<T: Scalar>(b: &OpenClBackend) {
    let mut rng = Rng::new(21);
    let x = rng.values::<T>(BIG);
    let y = rng.values::<T>(BIG);
    let (dx, dy) = (b.alloc_from(&x).unwrap(), b.alloc_from(&y).unwrap());
    // Against the host's pairwise sum (the reference) and, for f32, against the sum
    // accumulated in f64 (exact to far below the f32 tolerance).
    let got = b.sum_squares(&dx).unwrap();
    let tol = rel_tol::<T>("sum_squares");
    assert_close(
        "sum_squares",
        &[got],
        &[ire_core::host::sum_squares(&x)],
        tol,
    );
    if T::DTYPE == DType::F32 {
        let exact: f64 = x.iter().map(|v| v.as_f64() * v.as_f64()).sum();
        assert!(
            (got.as_f64() - exact).abs() <= tol * exact,
            "{got:?} vs {exact}"
        );
    }
    let got = b.sum_squares_product(&dx, &dy).unwrap();
    let want = ire_core::host::sum_squares_product(&x, &y);
    assert_close("sum_squares_product", &[got], &[want], tol);
    // Counts over many work-groups are exact.
    let mut bad = x.clone();
    for i in (0..BIG).step_by(1009) {
        bad[i] = [T::nan(), T::infinity(), T::neg_infinity()][i % 3];
    }
    let want = bad.iter().filter(|v| !v.is_finite()).count();
    assert_eq!(
        b.count_non_finite(&b.alloc_from(&bad).unwrap()).unwrap(),
        want
    );
}

#[test]
fn large_reductions_span_several_passes() {
    let Some(b) = backend("large_reductions_span_several_passes") else {
        return;
    };
    large_reductions_t::<f32>(&b);
    if b.supports_dtype(DType::F64) {
        large_reductions_t::<f64>(&b);
    }
    let mask: Vec<u8> = (0..BIG + 5)
        .map(|i| (i % 7 == 0 || i % 3 == 1) as u8)
        .collect();
    let want = mask.iter().filter(|&&m| m != 0).count();
    let words = b.alloc_from(&ire_core::mask::pack(&mask)).unwrap();
    assert_eq!(b.count_flat(&words).unwrap(), want);
}

fn selection_paths_t<T: Scalar>(b: &OpenClBackend) {
    let mut rng = Rng::new(31);
    let sizes = [1_000_003usize, 0, 257, 600_001];
    let mut parts: Vec<Vec<T>> = sizes.iter().map(|&n| rng.positive::<T>(n)).collect();
    // Ties and signed zeros.
    for (i, v) in parts[0].iter_mut().enumerate().step_by(13) {
        *v = if i % 2 == 0 { T::of(0.25) } else { T::of(-0.0) };
    }
    let bufs: Vec<_> = parts.iter().map(|p| b.alloc_from(p).unwrap()).collect();
    let refs: Vec<_> = bufs.iter().collect();
    let mut all = parts.concat();
    let n = all.len();
    let dev = b.clone().with_selection_path(SelectionPath::Device);
    let host = b.clone().with_selection_path(SelectionPath::Host);
    for k in [1, 2, n / 10, (0.4 * n as f64) as usize, n / 2 + 1, n - 1, n] {
        let want = ire_core::host::kth_largest(&mut all, k).unwrap();
        let d = dev.kth_largest(&refs, k).unwrap();
        let h = host.kth_largest(&refs, k).unwrap();
        assert_bitwise(&format!("device select k={k}"), &[d], &[want]);
        assert_bitwise(&format!("host select k={k}"), &[h], &[want]);
    }
    for path in [&dev, &host] {
        assert!(matches!(
            path.kth_largest(&refs, 0),
            Err(Error::InvalidHyperParameter { field: "k", .. })
        ));
        assert!(path.kth_largest(&refs, n + 1).is_err());
    }
    // Infinities are legal values; a NaN anywhere is refused.
    parts[2][5] = T::infinity();
    parts[3][7] = T::neg_infinity();
    let bufs: Vec<_> = parts.iter().map(|p| b.alloc_from(p).unwrap()).collect();
    let refs: Vec<_> = bufs.iter().collect();
    let mut all = parts.concat();
    for k in [1, 2, n] {
        let want = ire_core::host::kth_largest(&mut all, k).unwrap();
        assert_bitwise(
            "select with inf",
            &[dev.kth_largest(&refs, k).unwrap()],
            &[want],
        );
    }
    parts[3][9] = T::nan();
    let with_nan = b.alloc_from(&parts[3]).unwrap();
    for path in [&dev, &host] {
        assert!(matches!(
            path.kth_largest(&[&bufs[0], &with_nan], 3),
            Err(Error::NonFinite { .. })
        ));
    }
}

#[test]
fn both_selection_paths_equal_the_reference() {
    let Some(b) = backend("both_selection_paths_equal_the_reference") else {
        return;
    };
    selection_paths_t::<f32>(&b);
    if b.supports_dtype(DType::F64) {
        selection_paths_t::<f64>(&b);
    }
}

#[test]
fn suite_checks_that_use_selection_pass_on_the_device_path() {
    let Some(b) = backend("suite_checks_that_use_selection_pass_on_the_device_path") else {
        return;
    };
    let dev = b.with_selection_path(SelectionPath::Device);
    conformance::selection(&dev);
    conformance::mask_rule(&dev);
    conformance::trajectories(&dev);
}

fn large_elementwise_t<T: Scalar>(b: &OpenClBackend) {
    let n = 1_000_003;
    let r = Reference;
    let mut rng = Rng::new(41);
    let (p, g, m, v) = (
        rng.values::<T>(n),
        rng.values::<T>(n),
        rng.values::<T>(n),
        rng.positive::<T>(n),
    );
    let mask = ire_core::mask::pack(&rng.mask(n));
    let kappa = T::of(2.5);
    let s = AdamWConfig::default().scalars::<T>(1e-3, 7);
    let (mut dp, mut dm, mut dv) = (
        b.alloc_from(&p).unwrap(),
        b.alloc_from(&m).unwrap(),
        b.alloc_from(&v).unwrap(),
    );
    let (dg, dmask) = (b.alloc_from(&g).unwrap(), b.alloc_from(&mask).unwrap());
    b.adamw_ire_step(&mut dp, &dg, &mut dm, &mut dv, &s, &dmask, kappa)
        .unwrap();
    let (mut rp, mut rm, mut rv) = (
        r.alloc_from(&p).unwrap(),
        r.alloc_from(&m).unwrap(),
        r.alloc_from(&v).unwrap(),
    );
    let (rg, rmask) = (r.alloc_from(&g).unwrap(), r.alloc_from(&mask).unwrap());
    r.adamw_ire_step(&mut rp, &rg, &mut rm, &mut rv, &s, &rmask, kappa)
        .unwrap();
    assert_bitwise("adamw_ire_step 1M", &b.to_vec(&dp).unwrap(), rp.as_slice());
    assert_bitwise(
        "adamw_ire_step 1M: m",
        &b.to_vec(&dm).unwrap(),
        rm.as_slice(),
    );
    assert_bitwise(
        "adamw_ire_step 1M: v",
        &b.to_vec(&dv).unwrap(),
        rv.as_slice(),
    );
    let s = SgdScalars {
        lr: T::of(0.1),
        weight_decay: T::of(5e-4),
        momentum: T::of(0.9),
        dampening_complement: T::one(),
        nesterov: true,
        first_step: false,
    };
    b.sgd_momentum_ire_step(&mut dp, &dg, &mut dv, &s, &dmask, kappa)
        .unwrap();
    r.sgd_momentum_ire_step(&mut rp, &rg, &mut rv, &s, &rmask, kappa)
        .unwrap();
    assert_bitwise(
        "sgd_momentum_ire_step 1M",
        &b.to_vec(&dp).unwrap(),
        rp.as_slice(),
    );
    assert_bitwise(
        "sgd_momentum_ire_step 1M: b",
        &b.to_vec(&dv).unwrap(),
        rv.as_slice(),
    );
    let tau = p[n / 3];
    let mut dmask2 = b.alloc::<u32>(ire_core::mask::words(n)).unwrap();
    b.mask_le(&b.alloc_from(&p).unwrap(), tau, &mut dmask2)
        .unwrap();
    let want: Vec<u8> = p.iter().map(|&x| (x <= tau) as u8).collect();
    assert_eq!(b.to_vec(&dmask2).unwrap(), ire_core::mask::pack(&want));
}

#[test]
fn large_elementwise_ops_are_bitwise() {
    let Some(b) = backend("large_elementwise_ops_are_bitwise") else {
        return;
    };
    large_elementwise_t::<f32>(&b);
    if b.supports_dtype(DType::F64) {
        large_elementwise_t::<f64>(&b);
    }
}

#[test]
fn empty_buffers_are_no_ops() {
    let Some(b) = backend("empty_buffers_are_no_ops") else {
        return;
    };
    let mut e = b.alloc::<f32>(0).unwrap();
    assert!(e.is_empty() && e.mem().is_none());
    let e2 = b.alloc::<f32>(0).unwrap();
    b.upload(&mut e, &[]).unwrap();
    b.download(&e, &mut []).unwrap();
    b.fill(&mut e, 3.0).unwrap();
    b.copy(&e2, &mut e).unwrap();
    b.axpy(&mut e, 2.0, &e2).unwrap();
    assert_eq!(b.sum_squares(&e).unwrap(), 0.0);
    assert_eq!(b.sum_squares_product(&e, &e2).unwrap(), 0.0);
    assert_eq!(b.count_non_finite(&e).unwrap(), 0);
    let mut m = b.alloc::<u32>(0).unwrap();
    b.mask_le(&e, 1.0, &mut m).unwrap();
    assert_eq!(b.count_flat(&m).unwrap(), 0);
    let mut bytes = b.alloc::<u8>(0).unwrap();
    b.mask_unpack(&m, &mut bytes).unwrap();
    b.mask_pack(&bytes, &mut m).unwrap();
    for path in [SelectionPath::Device, SelectionPath::Host] {
        let p = b.clone().with_selection_path(path);
        assert!(p.kth_largest(&[&e, &e2], 1).is_err());
        let one = p.alloc_from(&[-7.5f32]).unwrap();
        assert_eq!(p.kth_largest(&[&e, &one, &e2], 1).unwrap(), -7.5);
    }
    // A length mismatch with an empty buffer is still an error.
    let one = b.alloc_from(&[1.0f32]).unwrap();
    assert!(matches!(
        b.axpy(&mut e, 1.0, &one),
        Err(Error::SizeMismatch { .. })
    ));
}

#[test]
fn threads_share_one_backend() {
    let Some(b) = backend("threads_share_one_backend") else {
        return;
    };
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let b = b.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(100 + t);
                let n = 50_000 + t as usize;
                let (x, y) = (rng.values::<f32>(n), rng.values::<f32>(n));
                let (mut dy, dx) = (b.alloc_from(&y).unwrap(), b.alloc_from(&x).unwrap());
                let mut want = y.clone();
                for _ in 0..20 {
                    b.axpy(&mut dy, 0.5, &dx).unwrap();
                    for (w, &xi) in want.iter_mut().zip(&x) {
                        *w = ire_core::formulas::axpy(*w, 0.5, xi);
                    }
                }
                assert_bitwise("threaded axpy", &b.to_vec(&dy).unwrap(), &want);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

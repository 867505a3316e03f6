//! Borrowed buffers: the backend and the optimizers run on the caller's memory, in place.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cpu::{CpuBackend, CpuBuffer};
use ire_core::optim::{EstimateInput, Optimizer};
use ire_core::{AdamW, AdamWConfig, Backend, Ire, IreConfig, IreStep, Sgd, SgdConfig};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
        .collect()
}

/// AdmIRE over two tensors for 12 steps, on owned buffers and on the caller's vectors: the same
/// bits, and the caller's memory updated in place (same addresses).
#[test]
fn borrowed_buffers_step_in_place_with_the_same_bits() {
    let b = CpuBackend::new();
    let sizes = [100_003usize, 17];
    let cfg = IreConfig {
        refresh_every: 3,
        ..IreConfig::default()
    };
    let mut owned_opt = Ire::new(AdamW::new(AdamWConfig::default()).unwrap(), cfg).unwrap();
    let mut lent_opt = Ire::new(AdamW::new(AdamWConfig::default()).unwrap(), cfg).unwrap();
    let mut owned: Vec<CpuBuffer<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| CpuBuffer::from_vec(values(n, i as u32)))
        .collect();
    let mut mine: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| values(n, i as u32))
        .collect();
    let addresses: Vec<*const f32> = mine.iter().map(|v| v.as_ptr()).collect();
    for t in 0..12u32 {
        let g: Vec<Vec<f32>> = sizes.iter().map(|&n| values(n, 100 + t)).collect();
        let e: Vec<Vec<f32>> = sizes.iter().map(|&n| values(n, 200 + t)).collect();
        let gb: Vec<CpuBuffer<f32>> = g.iter().map(|v| CpuBuffer::from_vec(v.clone())).collect();
        let eb: Vec<CpuBuffer<f32>> = e.iter().map(|v| CpuBuffer::from_vec(v.clone())).collect();
        let due = owned_opt.refresh_due();
        owned_opt
            .step(
                &b,
                &mut owned,
                &gb,
                IreStep {
                    lr: 1e-3,
                    estimate: due.then_some(EstimateInput::Gradient(&eb)),
                },
            )
            .unwrap();
        // The estimator gradient is lent too: a framework's own tensors.
        let mut slices: Vec<&mut [f32]> = mine.iter_mut().map(|v| &mut v[..]).collect();
        let grads: Vec<&[f32]> = g.iter().map(|v| &v[..]).collect();
        let due = lent_opt.refresh_due();
        let est = e.clone();
        let mut est_slices: Vec<&mut [f32]> = Vec::new();
        let mut est_copy = est;
        est_slices.extend(est_copy.iter_mut().map(|v| &mut v[..]));
        b.with_borrowed(&mut est_slices, &[], |est_bufs, _| {
            b.with_borrowed(&mut slices, &grads, |p, g| {
                assert!(p.iter().all(|x| x.is_borrowed()));
                lent_opt.step(
                    &b,
                    p,
                    g,
                    IreStep {
                        lr: 1e-3,
                        estimate: due.then_some(EstimateInput::Gradient(&*est_bufs)),
                    },
                )
            })
        })
        .unwrap();
    }
    for (i, (o, m)) in owned.iter().zip(&mine).enumerate() {
        assert_eq!(m.as_ptr(), addresses[i], "tensor {i} moved");
        let same = o
            .as_slice()
            .iter()
            .zip(m)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "tensor {i}: borrowed and owned steps differ");
    }
    assert_ne!(
        mine[0],
        values(sizes[0], 0),
        "the caller's memory was not updated"
    );
}

/// A raw-pointer buffer (a framework tensor whose lifetime Rust cannot see) behaves like an
/// owned one; cloning it gives an owned copy; dropping it leaves the memory alone.
#[test]
fn raw_buffers_work_and_clone_to_owned_copies() {
    let b = CpuBackend::new();
    let mut theta = vec![1.0f64, 2.0, 3.0];
    let grad = [0.5f64, 0.5, 0.5];
    {
        // SAFETY: both vectors outlive the buffers and are not touched while they exist.
        let mut p = unsafe { CpuBuffer::from_raw_parts_mut(theta.as_mut_ptr(), theta.len()) };
        let g = unsafe { CpuBuffer::from_raw_parts(grad.as_ptr(), grad.len()) };
        let copy = p.clone();
        assert!(!copy.is_borrowed());
        let mut sgd = Sgd::new(SgdConfig::default()).unwrap();
        sgd.step(
            &b,
            std::slice::from_mut(&mut p),
            std::slice::from_ref(&g),
            2.0,
        )
        .unwrap();
        assert_eq!(b.to_vec(&p).unwrap(), [0.0, 1.0, 2.0]);
        assert_eq!(copy.as_slice(), [1.0, 2.0, 3.0]);
        assert_eq!(p.as_ptr(), theta.as_ptr());
    }
    assert_eq!(theta, [0.0, 1.0, 2.0]);
    // An empty borrowed buffer needs no valid pointer.
    let e = unsafe { CpuBuffer::<f32>::from_raw_parts_mut(std::ptr::null_mut(), 0) };
    assert!(e.is_empty());
}

/// Moving a borrowed buffer out of its scope aborts the process (checked in a child process).
#[test]
fn a_buffer_moved_out_of_its_scope_aborts() {
    if std::env::var_os("IRE_TEST_ESCAPE").is_some() {
        let b = CpuBackend::new();
        let mut v = [1.0f32; 4];
        let mut stolen = CpuBuffer::default();
        b.with_borrowed(&mut [&mut v[..]], &[], |p, _| {
            std::mem::swap(&mut p[0], &mut stolen);
        });
        unreachable!("with_borrowed must not return after an escape");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_buffer_moved_out_of_its_scope_aborts",
            "--nocapture",
        ])
        .env("IRE_TEST_ESCAPE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("moved out of its scope"), "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(6), "SIGABRT expected");
    }
}

/// Reordering borrowed buffers inside the scope is not an escape.
#[test]
fn reordering_inside_the_scope_is_allowed() {
    let b = CpuBackend::new();
    let (mut x, mut y) = (vec![1.0f32; 3], vec![2.0f32; 3]);
    let r = b.with_borrowed(&mut [&mut x[..], &mut y[..]], &[], |p, _| {
        p.swap(0, 1);
        b.fill(&mut p[0], 5.0)
    });
    r.unwrap();
    assert_eq!(y, [5.0; 3]);
    assert_eq!(x, [1.0; 3]);
}

//! The LAPACK eigen-projection and Lanczos (feature `lapack`).
#![cfg(feature = "lapack")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cpu::lapack::{
    LanczosConfig, exact_projector, lambda_max, lanczos_projector, lanczos_top_k, symmetric_eigen,
};
use ire_backend_cpu::projector::{self, ExactProjector};
use ire_conformance::Rng;
use ire_core::{Error, Result};

/// A random symmetric matrix (row-major), entries uniform in [-1, 1).
fn random_symmetric(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let x = rng.uniform() * 2.0 - 1.0;
            a[i * n + j] = x;
            a[j * n + i] = x;
        }
    }
    a
}

fn matvec(a: &[f64], n: usize) -> impl FnMut(&[f64], &mut [f64]) -> Result<()> + '_ {
    move |x, out| {
        for (i, o) in out.iter_mut().enumerate() {
            *o = (0..n).map(|j| a[i * n + j] * x[j]).sum();
        }
        Ok(())
    }
}

#[test]
fn eigh_matches_the_jacobi_reference_and_diagonalises() {
    let n = 12;
    let a = random_symmetric(n, 3);
    let (w, v) = symmetric_eigen(&a, n).unwrap();
    let (wj, _) = projector::symmetric_eigen(&a, n).unwrap();
    for (x, y) in w.iter().zip(&wj) {
        assert!((x - y).abs() < 1e-12, "{x} vs {y}");
    }
    assert!(w.windows(2).all(|p| p[0] <= p[1]), "ascending");
    for r in 0..n {
        let row = &v[r * n..(r + 1) * n];
        let norm: f64 = row.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-13);
        for i in 0..n {
            let ax: f64 = (0..n).map(|j| a[i * n + j] * row[j]).sum();
            assert!((ax - w[r] * row[i]).abs() < 1e-12);
        }
    }
}

#[test]
fn exact_projector_equals_the_jacobi_one() {
    let n = 10;
    let a = random_symmetric(n, 5);
    let u: Vec<f64> = (0..n).map(|i| (i as f64 * 0.7).sin()).collect();
    for sharp in [0, 1, 3, n] {
        let p = exact_projector(&a, n, sharp).unwrap();
        let q = ExactProjector::from_hessian(&a, n, sharp).unwrap();
        assert_eq!(p.sharp_rank(), sharp);
        let (pu, qu) = (p.project_flat(&u).unwrap(), q.project_flat(&u).unwrap());
        for (x, y) in pu.iter().zip(&qu) {
            assert!((x - y).abs() < 1e-11, "sharp {sharp}: {x} vs {y}");
        }
    }
}

#[test]
fn exact_projection_reproduces_the_toy_problem() {
    // IRE-SPEC §4: L(u, v) = (1 + u²) v² / 2 from (1, 0.01), lr 1, κ 1, 100 steps, the flat
    // direction = the eigenvector of the smaller eigenvalue of the local Hessian. Golden values
    // from numpy: `w, V = np.linalg.eigh(H); s = V[:, 1]; θ -= g + κ (g − s (s·g))`, 100 times
    // → u = 0.9999979606199205, v = 0.010099444789341357.
    let (mut u, mut v) = (1.0f64, 0.01f64);
    for _ in 0..100 {
        let g = [u * v * v, (1.0 + u * u) * v];
        let h = [v * v, 2.0 * u * v, 2.0 * u * v, 1.0 + u * u];
        let p = exact_projector(&h, 2, 1).unwrap();
        let mut theta = [u, v];
        p.ire_step(&mut theta, &g, 1.0, 1.0).unwrap();
        (u, v) = (theta[0], theta[1]);
    }
    assert!((u - 0.999_997_960_619_920_5).abs() < 1e-12, "u = {u}");
    assert!((v - 0.010_099_444_789_341_357).abs() < 1e-12, "v = {v}");
}

#[test]
fn lanczos_top_k_matches_eigh_on_a_random_matrix() {
    let n = 120;
    let k = 5;
    let a = random_symmetric(n, 11);
    let (w, v) = symmetric_eigen(&a, n).unwrap();
    let top = lanczos_top_k(n, k, matvec(&a, n), &LanczosConfig::default()).unwrap();
    assert!(top.converged, "{top:?}");
    assert!(top.matvecs <= n);
    for i in 0..k {
        let want = w[n - 1 - i];
        assert!(
            (top.values[i] - want).abs() < 1e-8 * want.abs(),
            "λ{i}: {} vs {want}",
            top.values[i]
        );
        assert!(top.residuals[i] < 1e-8);
        let x = &top.vectors[i * n..(i + 1) * n];
        let y = &v[(n - 1 - i) * n..(n - i) * n];
        let d: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
        assert!((d.abs() - 1.0).abs() < 1e-8, "|<x{i}, y{i}>| = {}", d.abs());
    }
    // The projector built from the Lanczos basis equals the dense one.
    let p = lanczos_projector(n, k, matvec(&a, n), &LanczosConfig::default()).unwrap();
    let q = exact_projector(&a, n, k).unwrap();
    let u: Vec<f64> = (0..n).map(|i| (i as f64).cos()).collect();
    let (pu, qu) = (p.project_flat(&u).unwrap(), q.project_flat(&u).unwrap());
    for (x, y) in pu.iter().zip(&qu) {
        assert!((x - y).abs() < 1e-8);
    }
}

#[test]
fn lambda_max_of_a_diagonal_matrix() {
    // diag(1, 2, …, 500): λ_max = 500.
    let n = 500;
    let hvp = |x: &[f64], out: &mut [f64]| -> Result<()> {
        for (i, (o, &xi)) in out.iter_mut().zip(x).enumerate() {
            *o = (i + 1) as f64 * xi;
        }
        Ok(())
    };
    let l = lambda_max(n, hvp, &LanczosConfig::default()).unwrap();
    assert!((l - 500.0).abs() < 1e-8, "{l}");
    // Too small a Krylov space for that spectral gap: an error, not a wrong value.
    let short = LanczosConfig {
        max_dim: 10,
        ..LanczosConfig::default()
    };
    assert!(matches!(
        lambda_max(n, hvp, &short),
        Err(Error::Device { .. })
    ));
}

#[test]
fn repeated_top_eigenvalues_are_found_through_restarts() {
    // diag(5, 5, 5, 1, …, 1): a Krylov space from one vector holds one direction per distinct
    // eigenvalue; restarts after each breakdown recover the multiplicity.
    let n = 40;
    let hvp = |x: &[f64], out: &mut [f64]| -> Result<()> {
        for (i, (o, &xi)) in out.iter_mut().zip(x).enumerate() {
            *o = if i < 3 { 5.0 } else { 1.0 } * xi;
        }
        Ok(())
    };
    let top = lanczos_top_k(n, 3, hvp, &LanczosConfig::default()).unwrap();
    for l in &top.values {
        assert!((l - 5.0).abs() < 1e-10, "{:?}", top.values);
    }
    // Orthonormal vectors inside span(e0, e1, e2).
    for i in 0..3 {
        let x = &top.vectors[i * n..(i + 1) * n];
        assert!(x[3..].iter().all(|v| v.abs() < 1e-10));
        for j in 0..3 {
            let y = &top.vectors[j * n..(j + 1) * n];
            let d: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
            assert!((d - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10);
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let a = random_symmetric(4, 1);
    assert!(matches!(
        symmetric_eigen(&a, 3),
        Err(Error::SizeMismatch { .. })
    ));
    assert!(symmetric_eigen(&[], 0).is_err());
    let mut bad = a.clone();
    bad[5] = f64::NAN;
    assert!(matches!(
        symmetric_eigen(&bad, 4),
        Err(Error::NonFinite { .. })
    ));
    assert!(exact_projector(&a, 4, 5).is_err());
    assert!(exact_projector(&bad, 4, 1).is_err());
    let cfg = LanczosConfig::default();
    assert!(lanczos_top_k(4, 0, matvec(&a, 4), &cfg).is_err());
    assert!(lanczos_top_k(4, 5, matvec(&a, 4), &cfg).is_err());
    assert!(lanczos_top_k(0, 1, matvec(&a, 4), &cfg).is_err());
    let bad_tol = LanczosConfig {
        tol: f64::NAN,
        ..cfg
    };
    assert!(lanczos_top_k(4, 1, matvec(&a, 4), &bad_tol).is_err());
    let nan_hvp = |_: &[f64], out: &mut [f64]| -> Result<()> {
        out[0] = f64::NAN;
        Ok(())
    };
    assert!(matches!(
        lambda_max(4, nan_hvp, &cfg),
        Err(Error::NonFinite { .. })
    ));
    let failing = |_: &[f64], _: &mut [f64]| -> Result<()> { Err(Error::Protocol("boom".into())) };
    assert_eq!(
        lambda_max(4, failing, &cfg),
        Err(Error::Protocol("boom".into()))
    );
}

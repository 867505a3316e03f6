//! The sharpness meter: Hessian-vector products, Hutchinson's trace and the top eigenvalues,
//! against an analytic quadratic with a known spectrum, against the dense Hessian of a small
//! f64 MLP, through a `Trainer` on the CPU backend, and on bad inputs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use ire_backend_cpu::CpuBackend;
use ire_backend_cpu::projector::symmetric_eigen;
use ire_core::{Backend, Reference};
use ire_models::models::{Model, ModelSpec};
use ire_models::nn::{BnMode, LossOps};
use ire_models::rng::Rng;
use ire_models::sharpness::{
    FnOracle, GradientOracle, SharpnessError, SymmetricOperator, TOP_K, from_fn, hutchinson_trace,
    hutchinson_trace_op, hvp_central, lanczos_op, lanczos_top, measure, power_iteration,
    power_iteration_op, rademacher,
};
use ire_models::train::{DatasetKind, OptimizerKind, TrainConfig, Trainer};

const R: Reference = Reference;

fn randn(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn matvec(a: &[f64], n: usize, v: &[f64]) -> Vec<f64> {
    a.chunks_exact(n).map(|row| dot(row, v)).collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// `A = Q diag(λ) Qᵀ` with `Q` a random orthogonal matrix (Gram–Schmidt of a Gaussian one);
/// returns `A` (row-major) and `Q`'s columns.
fn symmetric_with_spectrum(lambdas: &[f64], seed: u64) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = lambdas.len();
    let mut rng = Rng::new(seed);
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(n);
    while q.len() < n {
        let mut v = randn(&mut rng, n);
        for _ in 0..2 {
            for u in &q {
                let c = dot(u, &v);
                v.iter_mut().zip(u).for_each(|(vi, ui)| *vi -= c * ui);
            }
        }
        let norm = dot(&v, &v).sqrt();
        q.push(v.into_iter().map(|x| x / norm).collect());
    }
    let mut a = vec![0.0; n * n];
    for (k, lk) in lambdas.iter().enumerate() {
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] += lk * q[k][i] * q[k][j];
            }
        }
    }
    (a, q)
}

/// `L = ½ θᵀAθ`: gradient `Aθ`, Hessian `A` everywhere.
struct Quadratic {
    a: Vec<f64>,
    n: usize,
    calls: usize,
}

impl GradientOracle for Quadratic {
    fn dim(&self) -> usize {
        self.n
    }

    fn grad(&mut self, theta: &[f64]) -> Result<Vec<f64>, SharpnessError> {
        self.calls += 1;
        Ok(matvec(&self.a, self.n, theta))
    }
}

/// `A v` exactly.
struct Dense<'a> {
    a: &'a [f64],
    n: usize,
}

impl SymmetricOperator for Dense<'_> {
    fn dim(&self) -> usize {
        self.n
    }

    fn apply(&mut self, v: &[f64]) -> Result<Vec<f64>, SharpnessError> {
        Ok(matvec(self.a, self.n, v))
    }
}

/// Top of the spectrum well separated, the rest spread in [−3, 3].
fn spectrum(n: usize) -> Vec<f64> {
    let mut l = vec![10.0, 6.0, 4.5];
    l.extend((3..n).map(|i| -3.0 + 6.0 * (i - 3) as f64 / (n - 4) as f64));
    l
}

#[test]
fn hvp_on_a_quadratic_is_exact() {
    let n = 40;
    let (a, _) = symmetric_with_spectrum(&spectrum(n), 1);
    let mut o = Quadratic { a, n, calls: 0 };
    let mut rng = Rng::new(2);
    let theta: Vec<f64> = randn(&mut rng, n).into_iter().map(|x| 3.0 * x).collect();
    let mut worst = 0.0f64;
    for (k, scale) in [1.0, 1e-3, 1e3].into_iter().enumerate() {
        for v in [randn(&mut rng, n), rademacher(n, 5, k as u64)] {
            let v: Vec<f64> = v.into_iter().map(|x| scale * x).collect();
            let exact = matvec(&o.a, n, &v);
            for eps in [None, Some(1e-3 / scale), Some(1.0 / scale)] {
                let hv = hvp_central(&mut o, &theta, &v, eps).unwrap();
                // Relative to the size of A v.
                let err = max_abs_diff(&hv, &exact) / scale;
                worst = worst.max(err);
                assert!(err < 1e-9, "scale {scale}, eps {eps:?}: error {err}");
            }
        }
    }
    println!("quadratic HVP: worst error {worst:.2e} (relative to ‖v‖∞ scale)");
    // v = 0 costs nothing and gives 0.
    let calls = o.calls;
    let hv = hvp_central(&mut o, &theta, &vec![0.0; n], None).unwrap();
    assert!(hv.iter().all(|&x| x == 0.0));
    assert_eq!(o.calls, calls);
}

#[test]
fn hutchinson_on_a_quadratic() {
    let n = 40;
    let lambdas = spectrum(n);
    let (a, _) = symmetric_with_spectrum(&lambdas, 3);
    let trace: f64 = lambdas.iter().sum();
    let off2: f64 = (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .filter(|(i, j)| i != j)
        .map(|(i, j)| a[i * n + j] * a[i * n + j])
        .sum();
    let mut o = Quadratic { a, n, calls: 0 };
    let theta = randn(&mut Rng::new(4), n);
    let probes = 200;
    let t = hutchinson_trace(&mut o, &theta, probes, 11, None).unwrap();
    let se_theory = (2.0 * off2 / probes as f64).sqrt();
    println!(
        "quadratic: Tr(A) = {trace:.6}, Hutchinson {:.6} ± {:.6} ({probes} probes), \
         theoretical standard error {se_theory:.6}",
        t.mean, t.std_error
    );
    assert_eq!(t.probes, probes);
    assert_eq!(t.samples.len(), probes);
    assert_eq!(o.calls, 2 * probes);
    assert!(
        (t.mean - trace).abs() <= 3.0 * t.std_error,
        "{} vs {trace} ± {}",
        t.mean,
        t.std_error
    );
    let rel = (t.std_error - se_theory).abs() / se_theory;
    assert!(rel < 0.3, "standard error {} vs {se_theory}", t.std_error);
    // Each sample is exactly zᵀAz for that probe's z.
    for (i, s) in t.samples.iter().enumerate().take(5) {
        let z = rademacher(n, 11, i as u64);
        assert!((s - dot(&z, &matvec(&o.a, n, &z))).abs() < 1e-8);
    }
    // The first probes do not depend on how many are drawn.
    let t50 = hutchinson_trace(&mut o, &theta, 50, 11, None).unwrap();
    assert_eq!(&t50.samples[..], &t.samples[..50]);
    // One probe: an estimate without a standard error.
    let t1 = hutchinson_trace(&mut o, &theta, 1, 11, None).unwrap();
    assert_eq!(t1.samples[0], t.samples[0]);
    assert!(t1.std_error.is_nan());
    // The same estimator on the exact operator agrees with the finite-difference one.
    let exact = hutchinson_trace_op(&mut Dense { a: &o.a, n }, probes, 11).unwrap();
    assert!((exact.mean - t.mean).abs() < 1e-8);
}

#[test]
fn power_iteration_and_lanczos_on_a_quadratic() {
    let n = 60;
    let lambdas = spectrum(n);
    let (a, q) = symmetric_with_spectrum(&lambdas, 5);
    let mut o = Quadratic { a, n, calls: 0 };
    let theta = randn(&mut Rng::new(6), n);

    let e = power_iteration(&mut o, &theta, 500, 1e-11, 9).unwrap();
    println!(
        "power iteration: λ = {:.12} after {} iterations (converged: {})",
        e.value, e.iterations, e.converged
    );
    assert!(e.converged);
    assert!((e.value - 10.0).abs() < 1e-8, "{}", e.value);
    assert!(dot(&e.vector, &q[0]).abs() > 1.0 - 1e-6);
    assert_eq!(o.calls, 2 * e.iterations);
    // The iteration limit is honoured and reported.
    let short = power_iteration(&mut o, &theta, 3, 0.0, 9).unwrap();
    assert_eq!((short.iterations, short.converged), (3, false));

    o.calls = 0;
    let top = lanczos_top(&mut o, &theta, 3, 30, 9).unwrap();
    println!("Lanczos (30 steps of n = {n}): top-3 {top:?}");
    assert_eq!(o.calls, 60);
    for (got, want) in top.iter().zip([10.0, 6.0, 4.5]) {
        assert!((got - want).abs() < 1e-8, "{top:?}");
    }
    assert_eq!(top.len(), 3);

    // On the exact operator, as many steps as dimensions give the whole spectrum.
    let full = lanczos_op(&mut Dense { a: &o.a, n }, 100, 9).unwrap();
    assert_eq!(full.steps(), n);
    assert!(full.invariant);
    let mut want = lambdas.clone();
    want.sort_by(|x, y| y.total_cmp(x));
    assert!(
        max_abs_diff(&full.ritz, &want) < 1e-9,
        "{:?}",
        &full.ritz[..5]
    );
    // Ritz values stay inside the spectrum, λ_max approached from below.
    let short = lanczos_op(&mut Dense { a: &o.a, n }, 4, 9).unwrap();
    assert!(short.ritz[0] <= 10.0 + 1e-12 && *short.ritz.last().unwrap() >= -3.0 - 1e-12);
    // A degenerate spectrum (few distinct eigenvalues) stops early on an invariant space.
    let (b, _) =
        symmetric_with_spectrum(&(0..20).map(|i| [2.0, -1.0][i % 2]).collect::<Vec<_>>(), 7);
    let deg = lanczos_op(&mut Dense { a: &b, n: 20 }, 20, 1).unwrap();
    assert!(deg.invariant && deg.steps() == 2, "{deg:?}");
    assert!(max_abs_diff(&deg.ritz, &[2.0, -1.0]) < 1e-12);
    // Power iteration on the exact operator agrees.
    let pe = power_iteration_op(&mut Dense { a: &o.a, n }, 500, 1e-14, 3).unwrap();
    assert!((pe.value - 10.0).abs() < 1e-8);
}

/// A small f64 MLP on a fixed random batch, through the reference backend: its gradient.
fn mlp_oracle(seed: u64) -> (usize, Vec<f64>, impl FnMut(&[f64]) -> Vec<f64>) {
    let (input, classes, n) = ((1, 3, 3), 4, 16);
    let mut rng = Rng::new(seed);
    let mut m: Box<dyn Model<Reference, f64>> =
        ModelSpec::Mlp(vec![5]).build(&R, input, classes).unwrap();
    let p0 = m.layout().init::<f64>(&mut rng);
    let x = R.alloc_from(&randn(&mut rng, n * 9)).unwrap();
    let labels: Vec<f64> = (0..n).map(|_| rng.below(classes as u64) as f64).collect();
    let labels = R.alloc_from(&labels).unwrap();
    let dim = p0.len();
    let grad = move |p: &[f64]| -> Vec<f64> {
        let pb = R.alloc_from(p).unwrap();
        let mode = BnMode::Train {
            update_running: false,
        };
        m.forward(&R, &pb, &x, n, mode).unwrap();
        let mut d = R.alloc::<f64>(n * classes).unwrap();
        R.softmax_xent(m.logits(), &labels, n, classes, 0.0, 1.0 / n as f64, &mut d)
            .unwrap();
        let mut g = R.alloc::<f64>(p.len()).unwrap();
        m.backward(&R, &pb, &mut g, &x, &d, n).unwrap();
        g.0
    };
    (dim, p0, grad)
}

#[test]
fn small_mlp_against_its_dense_hessian() {
    let (dim, theta, grad) = mlp_oracle(21);
    let mut o = from_fn(dim, grad);
    assert!((60..=90).contains(&dim), "{dim} parameters");
    // Dense Hessian, column by column, by central differences of the analytic gradient.
    let h = 1e-5;
    let mut hess = vec![0.0; dim * dim];
    for i in 0..dim {
        let mut tp = theta.clone();
        tp[i] += h;
        let gp = o.grad(&tp).unwrap();
        tp[i] = theta[i] - h;
        let gm = o.grad(&tp).unwrap();
        for j in 0..dim {
            hess[j * dim + i] = (gp[j] - gm[j]) / (2.0 * h);
        }
    }
    let asym = (0..dim * dim)
        .map(|k| (hess[k] - hess[(k % dim) * dim + k / dim]).abs())
        .fold(0.0, f64::max);
    assert!(asym < 1e-6, "asymmetry {asym}");
    let sym: Vec<f64> = (0..dim * dim)
        .map(|k| 0.5 * (hess[k] + hess[(k % dim) * dim + k / dim]))
        .collect();
    let trace: f64 = (0..dim).map(|i| sym[i * dim + i]).sum();
    let (eig, _) = symmetric_eigen(&sym, dim).unwrap();
    let lmax = *eig.last().unwrap();

    // The default-step HVP matches the dense Hessian.
    let v = randn(&mut Rng::new(1), dim);
    let hv = hvp_central(&mut o, &theta, &v, None).unwrap();
    let hv_dense = matvec(&sym, dim, &v);
    let scale = hv_dense.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(max_abs_diff(&hv, &hv_dense) < 1e-6 * scale);

    let probes = 2000;
    let t = hutchinson_trace(&mut o, &theta, probes, 5, None).unwrap();
    let top = lanczos_top(&mut o, &theta, 3, 40, 5).unwrap();
    let pe = power_iteration(&mut o, &theta, 2000, 1e-13, 5).unwrap();
    println!(
        "MLP with {dim} parameters: Tr(H) exact {trace:.6}, Hutchinson {:.6} ± {:.6} \
         ({probes} probes); λ_max exact {lmax:.9}, Lanczos {:.9} (rel. err {:.1e}), \
         power iteration {:.9} ({} its); top-3 exact {:?}, Lanczos {top:?}",
        t.mean,
        t.std_error,
        top[0],
        (top[0] - lmax).abs() / lmax,
        pe.value,
        pe.iterations,
        &eig[dim - 3..]
    );
    assert!(t.std_error > 0.0);
    assert!(
        (t.mean - trace).abs() <= 3.0 * t.std_error,
        "Hutchinson {} ± {} vs exact {trace}",
        t.mean,
        t.std_error
    );
    assert!(
        (top[0] - lmax).abs() <= 1e-5 * lmax.abs(),
        "{top:?} vs {lmax}"
    );
    assert!((pe.value - lmax).abs() <= 1e-4 * lmax.abs());
}

fn digits() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz")
}

#[test]
fn measure_a_trained_model_through_the_trainer() {
    let cfg = TrainConfig {
        model: "mlp-small".into(),
        dataset: DatasetKind::Digits,
        data: digits(),
        optimizer: OptimizerKind::Sgd,
        lr: 0.05,
        steps: 20,
        batch_size: 32,
        seed: 7,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(CpuBackend::new(), cfg).unwrap();
    for _ in 0..20 {
        t.train_step().unwrap();
    }
    let before = t.params_host().unwrap();
    let r = measure(&mut t, 2, 16, 12, 3).unwrap();
    println!("{r}");
    assert_eq!(t.params_host().unwrap(), before, "parameters changed");
    assert_eq!(r.params, t.param_count());
    assert!(r.loss.is_finite() && r.loss > 0.0);
    assert!(r.trace.mean.is_finite() && r.trace.std_error.is_finite());
    assert!(r.trace.std_error > 0.0);
    assert_eq!(r.trace.probes, 16);
    assert_eq!(r.top.len(), TOP_K);
    assert!(r.top.iter().all(|x| x.is_finite()));
    assert!(r.top.windows(2).all(|w| w[0] >= w[1]), "{:?}", r.top);
    assert!(r.top.iter().all(|&x| r.lambda_max >= x));
    assert_eq!(r.lambda_max, r.top[0]);
    assert!(r.lambda_max > 0.0);
    let shown = r.to_string();
    assert!(shown.contains("Tr(H)") && shown.contains("λ_max") && shown.contains(" ± "));
    // Deterministic in the seed.
    assert_eq!(measure(&mut t, 2, 16, 12, 3).unwrap(), r);
    // Bad arguments are errors, not panics.
    assert!(matches!(
        measure(&mut t, 2, 0, 12, 3),
        Err(SharpnessError::ZeroProbes)
    ));
    assert!(matches!(
        measure(&mut t, 0, 4, 12, 3),
        Err(SharpnessError::InvalidArgument { .. })
    ));
    assert!(matches!(
        measure(&mut t, 2, 4, 0, 3),
        Err(SharpnessError::InvalidArgument { .. })
    ));
}

#[test]
fn bad_inputs_are_errors() {
    let n = 6;
    let (a, _) = symmetric_with_spectrum(&[3.0, 2.0, 1.0, 0.5, 0.0, -1.0], 8);
    let mut o = Quadratic { a, n, calls: 0 };
    let theta = vec![0.5; n];
    let v = vec![1.0; n];
    assert!(matches!(
        hutchinson_trace(&mut o, &theta, 0, 1, None),
        Err(SharpnessError::ZeroProbes)
    ));
    assert!(matches!(
        hutchinson_trace(&mut o, &theta[..5], 4, 1, None),
        Err(SharpnessError::DimensionMismatch { got: 5, .. })
    ));
    assert!(matches!(
        hvp_central(&mut o, &theta, &v[..4], None),
        Err(SharpnessError::DimensionMismatch {
            expected: 6,
            got: 4,
            ..
        })
    ));
    let mut bad_theta = theta.clone();
    bad_theta[2] = f64::NAN;
    assert!(matches!(
        hvp_central(&mut o, &bad_theta, &v, None),
        Err(SharpnessError::NonFinite { .. })
    ));
    for eps in [0.0, -1.0, f64::INFINITY, f64::NAN] {
        assert!(matches!(
            hvp_central(&mut o, &theta, &v, Some(eps)),
            Err(SharpnessError::InvalidArgument { name: "eps", .. })
        ));
    }
    assert!(matches!(
        lanczos_top(&mut o, &theta, 0, 5, 1),
        Err(SharpnessError::InvalidArgument { name: "k", .. })
    ));
    assert!(matches!(
        lanczos_top(&mut o, &theta, 2, 0, 1),
        Err(SharpnessError::InvalidArgument { name: "steps", .. })
    ));
    assert!(matches!(
        power_iteration(&mut o, &theta, 0, 1e-9, 1),
        Err(SharpnessError::InvalidArgument { name: "iters", .. })
    ));
    assert!(matches!(
        power_iteration(&mut o, &theta, 10, -1.0, 1),
        Err(SharpnessError::InvalidArgument { name: "tol", .. })
    ));
    assert_eq!(o.calls, 0, "no gradient was taken for a bad input");

    // An oracle whose gradient turns NaN, or comes back the wrong length.
    let mut nan = from_fn(n, |t: &[f64]| {
        let mut g = t.to_vec();
        g[1] = f64::NAN;
        g
    });
    for r in [
        hvp_central(&mut nan, &theta, &v, None).map(|_| ()),
        hutchinson_trace(&mut nan, &theta, 3, 1, None).map(|_| ()),
        power_iteration(&mut nan, &theta, 5, 0.0, 1).map(|_| ()),
        lanczos_top(&mut nan, &theta, 1, 3, 1).map(|_| ()),
    ] {
        match r {
            Err(SharpnessError::NonFinite { what }) => assert!(what.contains("gradient")),
            other => panic!("{other:?}"),
        }
    }
    let mut short = from_fn(n, |t: &[f64]| t[..3].to_vec());
    assert!(matches!(
        hvp_central(&mut short, &theta, &v, None),
        Err(SharpnessError::DimensionMismatch {
            what: "gradient",
            ..
        })
    ));
    // An oracle's own error passes through.
    let mut failing = FnOracle::new(n, |_: &[f64]| {
        Err(SharpnessError::NonFinite {
            what: "the oracle's loss".into(),
        })
    });
    let e = hutchinson_trace(&mut failing, &theta, 2, 1, None).unwrap_err();
    assert!(e.to_string().contains("oracle's loss"), "{e}");
    // Zero-dimensional problems are refused.
    let mut empty = from_fn(0, |_: &[f64]| Vec::new());
    assert!(hutchinson_trace(&mut empty, &[], 2, 1, None).is_err());
    assert!(lanczos_top(&mut empty, &[], 1, 2, 1).is_err());
}

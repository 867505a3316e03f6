//! Base optimizers against golden values, and IRE's semantics on problems solvable by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_core::optim::{
    EstimateInput, Estimator, KappaSchedule, Optimizer, TensorStep, sharp_count,
};
use ire_core::reference::{HostBuffer, Reference};
use ire_core::{
    AdamW, AdamWConfig, Backend, Error, Ire, IreConfig, IreStep, Result, Sam, SamConfig, Sgd,
    SgdConfig,
};

const R: Reference = Reference;

fn bufs(v: &[&[f64]]) -> Vec<HostBuffer<f64>> {
    v.iter().map(|x| HostBuffer(x.to_vec())).collect()
}

/// Gradient of the diagonal quadratic `f(θ) = ½ Σ a_i θ_i²`.
fn quad_grad(a: &[f64], theta: &[HostBuffer<f64>]) -> Vec<HostBuffer<f64>> {
    vec![HostBuffer(
        theta[0].0.iter().zip(a).map(|(t, a)| a * t).collect(),
    )]
}

const A: [f64; 3] = [1.0, 0.5, -2.0];
const THETA0: [f64; 3] = [1.0, -2.0, 0.5];

fn run3<O: Optimizer<Reference, f64>>(mut opt: O, lr: f64) -> Vec<f64> {
    let mut p = bufs(&[&THETA0]);
    for _ in 0..3 {
        let g = quad_grad(&A, &p);
        opt.step(&R, &mut p, &g, lr).unwrap();
    }
    p[0].0.clone()
}

// Golden values: three steps on f(θ) = ½ Σ a_i θ_i², a = (1, 0.5, −2), θ0 = (1, −2, 0.5),
// from this Python (PyTorch's SGD/AdamW update rules, written in the canonical order):
//
//   def sgd(mu, damp, wd, nest, lr=0.1, steps=3):
//       th = list(th0); b = None
//       for t in range(steps):
//           g = [a[i]*th[i] for i in range(3)]
//           d = [g[i] + wd*th[i] for i in range(3)]
//           if mu != 0:
//               b = list(d) if b is None else [mu*b[i] + (1-damp)*d[i] for i in range(3)]
//               u = [d[i] + mu*b[i] for i in range(3)] if nest else b
//           else: u = d
//           th = [th[i] - lr*u[i] for i in range(3)]
//       return th
//   def adamw(lr=0.01, b1=0.9, b2=0.999, eps=1e-8, wd=0.01, steps=3):
//       th = list(th0); m = [0.0]*3; v = [0.0]*3
//       for t in range(1, steps+1):
//           g = [a[i]*th[i] for i in range(3)]
//           ss = lr/(1 - b1**t); bc2s = math.sqrt(1 - b2**t)
//           for i in range(3):
//               td = th[i]*(1 - lr*wd)
//               m[i] = b1*m[i] + (1-b1)*g[i]
//               v[i] = b2*v[i] + (1-b2)*(g[i]*g[i])
//               th[i] = td - ss*(m[i]/(math.sqrt(v[i])/bc2s + eps))
//       return th
#[test]
fn sgd_matches_golden_values() {
    let cfg = SgdConfig {
        momentum: 0.9,
        dampening: 0.1,
        weight_decay: 0.01,
        nesterov: false,
    };
    assert_eq!(
        run3(Sgd::new(cfg).unwrap(), 0.1),
        [0.50499568619, -1.4791495653799998, 1.116287757595]
    );
    let nesterov = SgdConfig {
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.01,
        nesterov: true,
    };
    assert_eq!(
        run3(Sgd::new(nesterov).unwrap(), 0.1),
        [0.3218596734410001, -1.249531709582, 1.6032873682705]
    );
    let plain = SgdConfig {
        weight_decay: 0.01,
        ..SgdConfig::default()
    };
    assert_eq!(
        run3(Sgd::new(plain).unwrap(), 0.1),
        [0.726572699, -1.7093406979999999, 0.8618417995000001]
    );
}

#[test]
fn adamw_matches_golden_values() {
    let got = run3(AdamW::new(AdamWConfig::default()).unwrap(), 0.01);
    let want = [0.9697132353796779, -1.9694080723952936, 0.529863945814191];
    // `powf` on the host may differ from Python's `**` by an ulp in β^t: allow 4 ulps.
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 4.0 * f64::EPSILON * w.abs(), "{g} vs {w}");
    }
}

#[test]
fn sam_and_asam_take_the_gradient_at_the_perturbed_point() {
    // One SAM step on the quadratic, by hand: ε = ρ g/‖g‖, g' = a(θ + ε), θ ← θ − lr g'.
    for adaptive in [false, true] {
        let rho = 0.05;
        let mut sam = Sam::new(
            Sgd::new(SgdConfig::default()).unwrap(),
            SamConfig { rho, adaptive },
        )
        .unwrap();
        let mut p = bufs(&[&THETA0]);
        let g = quad_grad(&A, &p);
        sam.perturb(&R, &mut p, &g).unwrap();
        let g0: Vec<f64> = A.iter().zip(THETA0).map(|(a, t)| a * t).collect();
        let (w, norm_terms): (Vec<f64>, Vec<f64>) = if adaptive {
            (
                THETA0.iter().map(|t| t * t).collect(),
                THETA0.iter().zip(&g0).map(|(t, g)| t.abs() * g).collect(),
            )
        } else {
            (vec![1.0; 3], g0.clone())
        };
        let norm = norm_terms.iter().map(|x| x * x).sum::<f64>().sqrt();
        let eps: Vec<f64> = w
            .iter()
            .zip(&g0)
            .map(|(w, g)| rho * w * g / (norm + 1e-12))
            .collect();
        for i in 0..3 {
            assert!((p[0].0[i] - (THETA0[i] + eps[i])).abs() < 1e-15);
        }
        let gp = quad_grad(&A, &p);
        sam.step(&R, &mut p, &gp, 0.1).unwrap();
        for i in 0..3 {
            let want = THETA0[i] - 0.1 * (A[i] * (THETA0[i] + eps[i]));
            assert!(
                (p[0].0[i] - want).abs() < 1e-15,
                "adaptive={adaptive} i={i}"
            );
        }
        // Out-of-order use is an error, not a panic.
        assert!(matches!(
            sam.step(&R, &mut p, &gp, 0.1),
            Err(Error::Protocol(_))
        ));
    }
    // The restore is exact, bit for bit, even where θ + ε − ε would round.
    let mut sam = Sam::new(
        Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
        SamConfig::default(),
    )
    .unwrap();
    let theta = [0.1, 1e-17, 3.0];
    let mut p = bufs(&[&theta]);
    let g = bufs(&[&[0.3, 0.7, 1e-9]]);
    sam.perturb(&R, &mut p, &g).unwrap();
    sam.restore(&R, &mut p).unwrap();
    assert_eq!(p[0].0, theta);
    // A non-finite gradient norm is refused and θ is untouched.
    let mut p = bufs(&[&theta]);
    let bad = bufs(&[&[f64::NAN, 0.0, 0.0]]);
    assert!(matches!(
        sam.perturb(&R, &mut p, &bad),
        Err(Error::NonFinite { .. })
    ));
    assert_eq!(p[0].0, theta);
}

#[test]
fn sam_closure_api_equals_two_phase_api() {
    let a = [3.0, -1.0, 0.25, 2.0];
    let t0 = [0.5, 1.5, -2.0, 0.1];
    let cfg = SgdConfig {
        momentum: 0.9,
        ..SgdConfig::default()
    };
    let mut s1 = Sam::new(Sgd::new(cfg).unwrap(), SamConfig::default()).unwrap();
    let mut s2 = Sam::new(Sgd::new(cfg).unwrap(), SamConfig::default()).unwrap();
    let (mut p1, mut p2) = (bufs(&[&t0]), bufs(&[&t0]));
    for _ in 0..5 {
        let g = quad_grad(&a, &p1);
        s1.perturb(&R, &mut p1, &g).unwrap();
        let gp = quad_grad(&a, &p1);
        s1.step(&R, &mut p1, &gp, 0.05).unwrap();
        let mut g2 = quad_grad(&a, &p2);
        s2.step_with(&R, &mut p2, &mut g2, 0.05, |p, g| {
            g[0] = quad_grad(&a, p).remove(0);
            Ok(())
        })
        .unwrap();
    }
    assert_eq!(p1, p2);
    // A failing closure leaves θ restored.
    let before = p2.clone();
    let mut g2 = quad_grad(&a, &p2);
    let r = s2.step_with(&R, &mut p2, &mut g2, 0.05, |_, _| {
        Err(Error::Protocol("boom".into()))
    });
    assert!(r.is_err());
    assert_eq!(p2, before);
    assert!(!s2.is_perturbed());
}

#[test]
fn sharp_count_rule() {
    assert_eq!(sharp_count(10, 0.5), 5);
    assert_eq!(sharp_count(10, 0.9), 1); // not 0, although 1 − 0.9 < 0.1 in binary
    assert_eq!(sharp_count(10, 0.99), 0);
    assert_eq!(sharp_count(7, 0.5), 3);
    assert_eq!(sharp_count(3, 0.6), 1);
    assert_eq!(sharp_count(10, 1.0), 0);
    assert_eq!(sharp_count(10, 0.0), 10);
    assert_eq!(sharp_count(0, 0.3), 0);
    assert_eq!(sharp_count(1_000_000, 0.6), 400_000);
}

/// Diagonal quadratic, plain SGD, powers of two everywhere so every number is exact.
/// a = (64, 16, 4, 1, 0.5, 0.25): with γ = 0.5, k = 3, τ = 4² = 16 → flat iff a² ≤ 16: the last
/// four coordinates (N − k + 1). Flat coordinates must move exactly (1 + κ) times as far.
#[test]
fn ire_sgd_moves_flat_coordinates_one_plus_kappa_times_as_far() {
    let a = [64.0, 16.0, 4.0, 1.0, 0.5, 0.25];
    let lr = 1.0 / 128.0;
    let kappa = 3.0;
    let cfg = IreConfig {
        kappa,
        gamma: 0.5,
        refresh_every: 1,
        ..IreConfig::default()
    };
    let mut ire = Ire::new(Sgd::new(SgdConfig::default()).unwrap(), cfg).unwrap();
    let mut sgd = Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap();
    let mut p = bufs(&[&[1.0; 6]]);
    let mut q = p.clone();
    let g = quad_grad(&a, &p);
    let est = g.clone();
    let rep = ire
        .step(
            &R,
            &mut p,
            &g,
            IreStep {
                lr,
                estimate: Some(EstimateInput::Gradient(&est)),
            },
        )
        .unwrap();
    assert!(rep.refreshed);
    assert_eq!(rep.threshold, Some(16.0));
    assert_eq!(ire.flat_count(&R).unwrap(), 4);
    assert_eq!(ire.mask(&R).unwrap()[0], [0, 0, 1, 1, 1, 1]);
    sgd.step(&R, &mut q, &g, lr).unwrap();
    for i in 0..6 {
        let plain = q[0].0[i] - 1.0;
        let boosted = p[0].0[i] - 1.0;
        let factor = if i >= 2 { 1.0 + kappa } else { 1.0 };
        assert_eq!(boosted, factor * plain, "coordinate {i}");
    }
}

#[test]
fn warmup_refresh_interval_and_kappa_decay() {
    let a = [4.0, 1.0, 0.25, 0.125];
    let cfg = IreConfig {
        kappa: 2.0,
        gamma: 0.5,
        refresh_every: 4,
        warmup_steps: 3,
        beta: 0.0,
        kappa_schedule: KappaSchedule::ProportionalToLr { lr_max: 0.25 },
        estimator: Estimator::SquaredGradient,
        ..IreConfig::default()
    };
    let mut ire = Ire::new(Sgd::new(SgdConfig::default()).unwrap(), cfg).unwrap();
    let mut sgd = Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap();
    let mut p = bufs(&[&[1.0; 4]]);
    let mut q = p.clone();
    let mut refreshed_at = Vec::new();
    for t in 0..12u64 {
        let lr = if t < 6 { 0.25 } else { 0.125 };
        let g = quad_grad(&a, &p);
        let due = ire.refresh_due();
        if due {
            // Without an estimate a due refresh is an error and nothing moves.
            let before = p.clone();
            let e = ire.step(&R, &mut p, &g, IreStep::lr(lr));
            assert!(matches!(e, Err(Error::Protocol(_))), "{e:?}");
            assert_eq!(p, before);
            assert_eq!(ire.step_count(), t);
        }
        let est = g.clone();
        let rep = ire
            .step(
                &R,
                &mut p,
                &g,
                IreStep {
                    lr,
                    estimate: due.then_some(EstimateInput::Gradient(&est)),
                },
            )
            .unwrap();
        if rep.refreshed {
            refreshed_at.push(t);
        }
        // κ_t: 0 in warm-up, then κ · lr / lr_max.
        let want_kappa = if t < 3 { 0.0 } else { 2.0 * lr / 0.25 };
        assert_eq!(rep.kappa, want_kappa, "t={t}");
        // Plain SGD from the same point: equal in warm-up, boosted after (some coordinate flat).
        let gq = quad_grad(&a, &q);
        sgd.step(&R, &mut q, &gq, lr).unwrap();
        if t < 3 {
            assert_eq!(p, q, "warm-up steps are plain SGD (t={t})");
        } else {
            assert_ne!(p, q, "IRE steps differ from plain SGD (t={t})");
        }
        q = p.clone();
    }
    assert_eq!(refreshed_at, [3, 7, 11]);
}

/// A base optimizer written by a user: sign descent on host buffers. IRE wraps it through the
/// trait's provided `step_tensor_boosted` (copy, step, boost).
struct SignDescent {
    steps: u64,
}

impl Optimizer<Reference, f64> for SignDescent {
    fn name(&self) -> &str {
        "sign-descent"
    }
    fn step_tensor(
        &mut self,
        _: &Reference,
        _: usize,
        param: &mut HostBuffer<f64>,
        grad: &HostBuffer<f64>,
        hp: TensorStep,
    ) -> Result<()> {
        for (x, g) in param.0.iter_mut().zip(&grad.0) {
            *x -= hp.lr * g.signum();
        }
        Ok(())
    }
    fn end_step(&mut self) {
        self.steps += 1;
    }
    fn save(&self, _: &Reference) -> Result<ire_core::state::StateDict> {
        let mut d = ire_core::state::StateDict::new("sign-descent");
        d.put("steps", ire_core::state::StateValue::U64(self.steps));
        Ok(d)
    }
    fn load(&mut self, _: &Reference, s: &ire_core::state::StateDict) -> Result<()> {
        s.expect("sign-descent", &["steps".into()])?;
        self.steps = s.get_u64("steps")?;
        Ok(())
    }
}

#[test]
fn a_user_written_optimizer_can_be_wrapped() {
    let cfg = IreConfig {
        kappa: 1.0,
        gamma: 0.5,
        refresh_every: 1,
        ..IreConfig::default()
    };
    let mut ire = Ire::new(SignDescent { steps: 0 }, cfg).unwrap();
    // Two tensors: the threshold is global over both (N = 4, k = 2, τ = 2nd largest h = 9).
    let mut p = bufs(&[&[0.0, 0.0], &[0.0, 0.0]]);
    let g = bufs(&[&[1.0, -1.0], &[-1.0, 1.0]]);
    let est = bufs(&[&[4.0, 1.0], &[3.0, 2.0]]);
    ire.step(
        &R,
        &mut p,
        &g,
        IreStep {
            lr: 0.5,
            estimate: Some(EstimateInput::Gradient(&est)),
        },
    )
    .unwrap();
    // h = (16, 1 | 9, 4): flat iff h ≤ 9 → (0, 1 | 1, 1).
    assert_eq!(p[0].0, [-0.5, 1.0]);
    assert_eq!(p[1].0, [1.0, -1.0]);
    let saved = ire.save(&R).unwrap();
    assert_eq!(saved.get_nested("base").unwrap().optimizer, "sign-descent");
    assert_eq!(ire.base().steps, 1);
}

#[test]
fn hutchinson_and_training_gradient_estimators() {
    // H = diag(a); with z Rademacher, z ⊙ Hz = a exactly.
    let a = [8.0, 0.5, 2.0, 0.25];
    let z = bufs(&[&[1.0, -1.0, -1.0, 1.0]]);
    let hz = vec![HostBuffer(
        z[0].0.iter().zip(a).map(|(z, a)| z * a).collect::<Vec<_>>(),
    )];
    let cfg = IreConfig {
        gamma: 0.5,
        refresh_every: 1,
        estimator: Estimator::Hutchinson,
        ..IreConfig::default()
    };
    let mut ire = Ire::new(
        Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
        cfg,
    )
    .unwrap();
    let mut p = bufs(&[&[1.0; 4]]);
    let g = bufs(&[&[0.0; 4]]);
    ire.step(
        &R,
        &mut p,
        &g,
        IreStep {
            lr: 0.1,
            estimate: Some(EstimateInput::HessianProbe { z: &z, hz: &hz }),
        },
    )
    .unwrap();
    assert_eq!(ire.estimate()[0].0, a);
    assert_eq!(ire.mask(&R).unwrap()[0], [0, 1, 1, 1]); // k = 2, τ = 2
    // The wrong kind of input is a clear error.
    let mut ire2 = Ire::new(
        Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
        cfg,
    )
    .unwrap();
    let e = ire2.step(
        &R,
        &mut p,
        &g,
        IreStep {
            lr: 0.1,
            estimate: Some(EstimateInput::Gradient(&g)),
        },
    );
    assert!(matches!(e, Err(Error::Protocol(_))));
    // The squared training gradient needs no input.
    let cfg = IreConfig {
        gamma: 0.5,
        refresh_every: 1,
        estimator: Estimator::SquaredTrainingGradient,
        ..IreConfig::default()
    };
    let mut ire3 = Ire::new(
        Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
        cfg,
    )
    .unwrap();
    let g = bufs(&[&[3.0, 1.0, -2.0, 0.5]]);
    ire3.step(&R, &mut p, &g, IreStep::lr(0.1)).unwrap();
    assert_eq!(ire3.estimate()[0].0, [9.0, 1.0, 4.0, 0.25]);
    assert_eq!(ire3.mask(&R).unwrap()[0], [0, 1, 1, 1]);
    // EMA: β = 0.5 twice on the same g² gives h = 0.75·g² (from h = 0), then ...
    let cfg = IreConfig {
        gamma: 0.5,
        refresh_every: 1,
        beta: 0.5,
        estimator: Estimator::SquaredTrainingGradient,
        ..IreConfig::default()
    };
    let mut ire4 = Ire::new(
        Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
        cfg,
    )
    .unwrap();
    ire4.step(&R, &mut p, &g, IreStep::lr(0.0)).unwrap();
    ire4.step(&R, &mut p, &g, IreStep::lr(0.0)).unwrap();
    assert_eq!(ire4.estimate()[0].0, [6.75, 0.75, 3.0, 0.1875]);
}

#[test]
fn manual_mask_and_keep_mask() {
    let cfg = IreConfig {
        kappa: 1.0,
        estimator: Estimator::Manual,
        ..IreConfig::default()
    };
    let mut ire = Ire::new(
        Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
        cfg,
    )
    .unwrap();
    let mut p = bufs(&[&[0.0, 0.0]]);
    ire.set_mask(&R, &p, &[&[1, 0]]).unwrap();
    assert!(!ire.refresh_due());
    ire.step(&R, &mut p, &bufs(&[&[1.0, 1.0]]), IreStep::lr(0.5))
        .unwrap();
    assert_eq!(p[0].0, [-1.0, -0.5]);
    assert!(ire.set_mask(&R, &p, &[&[1, 0, 1]]).is_err());
    // keep_mask_this_step skips one due refresh.
    let mut ire = Ire::new(
        Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
        IreConfig::default(),
    )
    .unwrap();
    assert!(ire.refresh_due());
    ire.keep_mask_this_step();
    assert!(!ire.refresh_due());
    let rep = ire
        .step(&R, &mut p, &bufs(&[&[1.0, 1.0]]), IreStep::lr(0.5))
        .unwrap();
    assert!(!rep.refreshed);
}

#[test]
fn bad_hyper_parameters_are_rejected_with_their_name() {
    let field = |e: Error| match e {
        Error::InvalidHyperParameter { field, .. } => field,
        other => panic!("unexpected {other:?}"),
    };
    let ire = |c: IreConfig| {
        Ire::new(Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(), c)
            .err()
            .map(field)
    };
    let d = IreConfig::default();
    assert_eq!(ire(IreConfig { kappa: -1.0, ..d }), Some("kappa"));
    assert_eq!(
        ire(IreConfig {
            kappa: f64::NAN,
            ..d
        }),
        Some("kappa")
    );
    assert_eq!(ire(IreConfig { gamma: 1.5, ..d }), Some("gamma"));
    assert_eq!(ire(IreConfig { gamma: -0.1, ..d }), Some("gamma"));
    assert_eq!(
        ire(IreConfig {
            gamma: f64::NAN,
            ..d
        }),
        Some("gamma")
    );
    assert_eq!(
        ire(IreConfig {
            refresh_every: 0,
            ..d
        }),
        Some("refresh_every")
    );
    assert_eq!(ire(IreConfig { beta: 1.0, ..d }), Some("beta"));
    assert_eq!(
        ire(IreConfig {
            beta: f64::NAN,
            ..d
        }),
        Some("beta")
    );
    assert_eq!(
        ire(IreConfig {
            kappa_schedule: KappaSchedule::ProportionalToLr { lr_max: 0.0 },
            ..d
        }),
        Some("lr_max")
    );
    assert_eq!(ire(d), None);
    let sgd = |c: SgdConfig| Sgd::<Reference, f64>::new(c).err().map(field);
    let s = SgdConfig::default();
    assert_eq!(
        sgd(SgdConfig {
            momentum: -0.1,
            ..s
        }),
        Some("momentum")
    );
    assert_eq!(
        sgd(SgdConfig {
            dampening: 2.0,
            ..s
        }),
        Some("dampening")
    );
    assert_eq!(
        sgd(SgdConfig {
            weight_decay: f64::NAN,
            ..s
        }),
        Some("weight_decay")
    );
    assert_eq!(
        sgd(SgdConfig {
            nesterov: true,
            ..s
        }),
        Some("momentum")
    );
    let adam = |c: AdamWConfig| AdamW::<Reference, f64>::new(c).err().map(field);
    let a = AdamWConfig::default();
    assert_eq!(adam(AdamWConfig { beta1: 1.0, ..a }), Some("beta1"));
    assert_eq!(adam(AdamWConfig { beta2: -0.5, ..a }), Some("beta2"));
    assert_eq!(adam(AdamWConfig { eps: -1.0, ..a }), Some("eps"));
    assert_eq!(
        adam(AdamWConfig {
            weight_decay: -1.0,
            ..a
        }),
        Some("weight_decay")
    );
    let sam = Sam::new(
        Sgd::<Reference, f64>::new(s).unwrap(),
        SamConfig {
            rho: -1.0,
            adaptive: false,
        },
    );
    assert_eq!(sam.err().map(field), Some("rho"));
    // The message names the field and the range.
    let msg = Ire::new(
        Sgd::<Reference, f64>::new(s).unwrap(),
        IreConfig { gamma: 2.0, ..d },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(msg.contains("`gamma`") && msg.contains("[0, 1]"), "{msg}");
    // Learning rate at step time.
    let mut opt = Sgd::<Reference, f64>::new(s).unwrap();
    let mut p = bufs(&[&[1.0]]);
    assert_eq!(
        opt.step(&R, &mut p, &bufs(&[&[1.0]]), f64::NAN)
            .err()
            .map(field),
        Some("lr")
    );
}

#[test]
fn size_mismatches_are_errors() {
    let mut opt = AdamW::<Reference, f64>::new(AdamWConfig::default()).unwrap();
    let mut p = bufs(&[&[1.0, 2.0]]);
    assert!(matches!(
        opt.step(&R, &mut p, &bufs(&[&[1.0]]), 0.1),
        Err(Error::SizeMismatch { .. })
    ));
    assert!(matches!(
        opt.step(&R, &mut p, &bufs(&[&[1.0, 1.0], &[1.0]]), 0.1),
        Err(Error::SizeMismatch { .. })
    ));
    opt.step(&R, &mut p, &bufs(&[&[1.0, 1.0]]), 0.1).unwrap();
    // State allocated for one shape refuses another.
    let mut q = bufs(&[&[1.0, 2.0, 3.0]]);
    assert!(matches!(
        opt.step(&R, &mut q, &bufs(&[&[1.0, 1.0, 1.0]]), 0.1),
        Err(Error::SizeMismatch { .. })
    ));
    let e = R.alloc_from(&[1.0f64]).unwrap();
    let mut f = R.alloc::<f64>(2).unwrap();
    assert!(R.copy(&e, &mut f).is_err());
}

/// Parameter groups: the threshold is ONE selection over the participating groups only, and a
/// group's learning-rate scale and weight decay reach its tensors.
#[test]
fn groups_share_one_threshold_and_keep_their_settings() {
    use ire_core::optim::{ParamGroup, ParamGroups};
    let groups = ParamGroups::new(
        vec![
            ParamGroup::default(),
            ParamGroup {
                lr_scale: 0.5,
                weight_decay: Some(0.0),
                ire: false,
            },
        ],
        vec![0, 1, 0],
    )
    .unwrap();
    let cfg = IreConfig {
        kappa: 1.0,
        gamma: 0.5,
        refresh_every: 1,
        estimator: Estimator::AbsGradient,
        ..IreConfig::default()
    };
    let sgd = SgdConfig {
        weight_decay: 0.1,
        ..SgdConfig::default()
    };
    let mut ire = Ire::new(Sgd::new(sgd).unwrap(), cfg)
        .unwrap()
        .with_groups(groups)
        .unwrap();
    // Participating: tensors 0 and 2, h = (4, 1 | 3, 2): N = 4, k = 2, τ = 3 → (0, 1 | 1, 1).
    // Tensor 1 (h = 100 would be the largest) takes no part.
    let mut p = bufs(&[&[1.0, 1.0], &[1.0, 1.0], &[1.0, 1.0]]);
    let g = bufs(&[&[1.0, 1.0], &[1.0, 1.0], &[1.0, 1.0]]);
    let est = bufs(&[&[4.0, 1.0], &[100.0, 100.0], &[3.0, 2.0]]);
    let rep = ire
        .step(
            &R,
            &mut p,
            &g,
            IreStep {
                lr: 0.5,
                estimate: Some(EstimateInput::Gradient(&est)),
            },
        )
        .unwrap();
    assert_eq!(rep.threshold, Some(3.0));
    assert_eq!(ire.mask(&R).unwrap()[0], [0, 1]);
    assert!(
        ire.mask(&R).unwrap()[1].is_empty(),
        "no state for a tensor outside IRE"
    );
    assert_eq!(ire.mask(&R).unwrap()[2], [1, 1]);
    assert_eq!(ire.flat_count(&R).unwrap(), 3);
    // Group 0: d = g + 0.1 θ = 1.1, step 0.5 · 1.1 = 0.55; boosted ×2 where flat.
    assert_eq!(p[0].0, [1.0 - 0.55, 1.0 - 2.0 * 0.55]);
    assert_eq!(p[2].0, [1.0 - 2.0 * 0.55, 1.0 - 2.0 * 0.55]);
    // Group 1: lr 0.25, no decay, no boost: 1 − 0.25.
    assert_eq!(p[1].0, [0.75, 0.75]);
    // Groups that do not cover the tensors are refused.
    let wrong = ParamGroups::single(2);
    let mut ire2 = Ire::new(Sgd::new(sgd).unwrap(), cfg)
        .unwrap()
        .with_groups(wrong)
        .unwrap();
    let err = ire2
        .step(
            &R,
            &mut p,
            &g,
            IreStep {
                lr: 0.5,
                estimate: Some(EstimateInput::Gradient(&est)),
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
    assert!(ParamGroups::new(vec![ParamGroup::default()], vec![0, 1]).is_err());
    let bad = ParamGroup {
        lr_scale: -1.0,
        ..ParamGroup::default()
    };
    assert!(matches!(
        ParamGroups::new(vec![bad], vec![0]),
        Err(Error::InvalidHyperParameter {
            field: "lr_scale",
            ..
        })
    ));
}

/// SAM-IRE refreshes at the unperturbed θ in its first phase, and the step reports it.
#[test]
fn sam_ire_reports_the_refresh_of_its_first_phase() {
    let cfg = IreConfig {
        gamma: 0.5,
        refresh_every: 2,
        ..IreConfig::default()
    };
    let sam = Sam::new(
        Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
        SamConfig::default(),
    )
    .unwrap();
    let mut ire = Ire::new(sam, cfg).unwrap();
    let mut p = bufs(&[&[1.0, 2.0, 3.0, 4.0]]);
    let g = bufs(&[&[1.0, 1.0, 1.0, 1.0]]);
    let est = bufs(&[&[1.0, 2.0, 3.0, 4.0]]);
    let mut refreshed = Vec::new();
    for t in 0..4 {
        let due = ire.refresh_due();
        let e = due.then_some(EstimateInput::Gradient(&est));
        ire.sam_perturb(&R, &mut p, &g, e).unwrap();
        assert!(!ire.refresh_due(), "the refresh of step {t} is settled");
        let rep = ire.step(&R, &mut p, &g, IreStep::lr(0.1)).unwrap();
        assert_eq!(rep.refreshed, due, "step {t}");
        if rep.refreshed {
            // h = (1, 4, 9, 16), k = 2 → τ = 9.
            assert_eq!(rep.threshold, Some(9.0));
            refreshed.push(t);
        }
    }
    assert_eq!(refreshed, [0, 2]);
    // A due refresh without an estimate is refused before θ moves.
    let mut ire = Ire::new(
        Sam::new(
            Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
            SamConfig::default(),
        )
        .unwrap(),
        cfg,
    )
    .unwrap();
    let before = p.clone();
    assert!(matches!(
        ire.sam_perturb(&R, &mut p, &g, None),
        Err(Error::Protocol(_))
    ));
    assert_eq!(p, before);
}

/// AdamW's bias correction counts the steps of each tensor (PyTorch's per-parameter `step`):
/// a tensor skipped in a step continues as if stepped alone.
#[test]
fn adamw_counts_steps_per_tensor() {
    use ire_core::optim::TensorStep;
    let cfg = AdamWConfig::default();
    let mut both = AdamW::<Reference, f64>::new(cfg).unwrap();
    let mut alone = AdamW::<Reference, f64>::new(cfg).unwrap();
    let mut p = bufs(&[&[1.0, -2.0], &[0.5]]);
    let mut q = bufs(&[&[0.5]]);
    for t in 0..5u64 {
        let g1 = HostBuffer(vec![0.1 * t as f64 + 0.3]);
        both.begin_step(&R, &[2, 1]).unwrap();
        if t % 2 == 0 {
            let g0 = HostBuffer(vec![0.2, -0.1]);
            both.step_tensor(&R, 0, &mut p[0], &g0, TensorStep::lr(0.01))
                .unwrap();
        }
        both.step_tensor(&R, 1, &mut p[1], &g1, TensorStep::lr(0.01))
            .unwrap();
        both.end_step();
        alone.step(&R, &mut q, &[g1], 0.01).unwrap();
    }
    assert_eq!(p[1].0, q[0].0);
    // Tensor 0 took 3 steps: the same as 3 steps alone.
    let mut r0 = bufs(&[&[1.0, -2.0]]);
    let mut solo = AdamW::<Reference, f64>::new(cfg).unwrap();
    for _ in 0..3 {
        solo.step(&R, &mut r0, &bufs(&[&[0.2, -0.1]]), 0.01)
            .unwrap();
    }
    assert_eq!(p[0].0, r0[0].0);
    // The counts survive save and load.
    let saved = both.save(&R).unwrap();
    let mut back = AdamW::<Reference, f64>::new(cfg).unwrap();
    back.load(&R, &saved).unwrap();
    assert_eq!(back.save(&R).unwrap(), saved);
}

/// The external-base protocol is checked: no step without begin, no second begin.
#[test]
fn external_base_steps_are_checked() {
    use ire_core::optim::External;
    let mut ire = Ire::<Reference, f64, External>::new(External, IreConfig::default()).unwrap();
    let mut p = bufs(&[&[1.0, 2.0]]);
    assert!(matches!(
        ire.finish_external(&R, &mut p),
        Err(Error::Protocol(_))
    ));
    let est = bufs(&[&[1.0, 2.0]]);
    ire.begin_external(
        &R,
        &p,
        IreStep {
            lr: 0.1,
            estimate: Some(EstimateInput::Gradient(&est)),
        },
    )
    .unwrap();
    assert!(matches!(
        ire.begin_external(&R, &p, IreStep::lr(0.1)),
        Err(Error::Protocol(_))
    ));
    // θ moved by an outside step −0.5 on both; h = (1, 4), k = ⌊0.2·2⌋ = 0 → all flat, κ = 2.
    for x in p[0].0.iter_mut() {
        *x -= 0.5;
    }
    ire.finish_external(&R, &mut p).unwrap();
    assert_eq!(p[0].0, [1.0 - 1.5, 2.0 - 1.5]);
    assert_eq!(ire.step_count(), 1);
    // Stepping the marker itself is a protocol error.
    let g = bufs(&[&[1.0, 1.0]]);
    assert!(ire.step(&R, &mut p, &g, IreStep::lr(0.1)).is_err());
}

/// The official `rank_increase` schedule moves γ between refreshes (as written).
#[test]
fn rank_increase_moves_the_threshold() {
    use ire_core::optim::GammaSchedule;
    let cfg = IreConfig {
        gamma: 0.4, // rank 0.6
        refresh_every: 1,
        estimator: Estimator::AbsGradient,
        threshold: ire_core::optim::ThresholdRule::SharpTopK,
        gamma_schedule: GammaSchedule::RankIncrease { horizon: 200 },
        ..IreConfig::default()
    };
    let mut ire = Ire::new(
        Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
        cfg,
    )
    .unwrap();
    let est = bufs(&[&(1..=10).map(f64::from).collect::<Vec<_>>()]);
    let mut p = bufs(&[&[0.0; 10]]);
    let g = bufs(&[&[0.0; 10]]);
    let mut taus = Vec::new();
    for _ in 0..6 {
        let rep = ire
            .step(
                &R,
                &mut p,
                &g,
                IreStep {
                    lr: 0.1,
                    estimate: Some(EstimateInput::Gradient(&est)),
                },
            )
            .unwrap();
        taus.push(rep.threshold);
    }
    // H = 200: period 20, half 10. rank_t = 0.6 − 0.05 i for i < 10: k = ⌊10 rank_t⌋ =
    // 6, 5 (5.5), 5, 4 (4.5), 4, 3 (3.5) → τ = 5, 6, 6, 7, 7, 8.
    assert_eq!(
        taus,
        [
            Some(5.0),
            Some(6.0),
            Some(6.0),
            Some(7.0),
            Some(7.0),
            Some(8.0)
        ]
    );
}

/// A refresh between steps (`refresh_now`) settles the refresh due at the next step, takes a
/// γ override, is reported by that step, and refuses a non-finite estimate keeping the mask.
#[test]
fn refresh_now_serves_the_next_step() {
    let cfg = IreConfig {
        kappa: 1.0,
        gamma: 0.5,
        refresh_every: 2,
        estimator: Estimator::AbsGradient,
        ..IreConfig::default()
    };
    let mut ire = Ire::new(
        Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
        cfg,
    )
    .unwrap();
    let mut p = bufs(&[&[0.0; 4]]);
    let g = bufs(&[&[1.0; 4]]);
    let est = bufs(&[&[4.0, 1.0, 3.0, 2.0]]);
    assert!(ire.refresh_due());
    // γ 0.5 → k = 2 sharp, τ = 3 (the 2nd largest): flat iff h ≤ 3, so {1, 2, 3}.
    let tau = ire
        .refresh_now(&R, &[4], &EstimateInput::Gradient(&est), None)
        .unwrap();
    assert_eq!(tau, Some(3.0));
    assert!(!ire.refresh_due());
    let rep = ire.step(&R, &mut p, &g, IreStep::lr(0.1)).unwrap();
    assert!(rep.refreshed);
    assert_eq!(rep.threshold, Some(3.0));
    // Flat coordinates moved (1 + κ) times as far.
    assert_eq!(p[0].0, [-0.1, -0.2, -0.2, -0.2]);
    // Not due at step 1: an extra refresh, here with γ 0.25 → k = ⌊0.75·4⌋ = 3, τ = 2,
    // flat = {1, 3}.
    assert!(!ire.refresh_due());
    let tau = ire
        .refresh_now(&R, &[4], &EstimateInput::Gradient(&est), Some(0.25))
        .unwrap();
    assert_eq!(tau, Some(2.0));
    let rep = ire.step(&R, &mut p, &g, IreStep::lr(0.1)).unwrap();
    assert!(rep.refreshed);
    // Step 2 is due as scheduled; a NaN estimate is refused and the mask {1, 3} kept.
    assert!(ire.refresh_due());
    let bad = bufs(&[&[1.0, f64::NAN, 0.0, 0.0]]);
    assert!(matches!(
        ire.refresh_now(&R, &[4], &EstimateInput::Gradient(&bad), None),
        Err(Error::NonFinite { .. })
    ));
    assert!(ire.refresh_due());
    assert_eq!(ire.mask(&R).unwrap()[0], [0, 1, 0, 1]);
    assert!(
        ire.refresh_now(&R, &[4], &EstimateInput::Gradient(&est), Some(f64::NAN))
            .is_err()
    );
    // Sizes are checked against the state.
    assert!(
        ire.refresh_now(&R, &[5], &EstimateInput::Gradient(&est), None)
            .is_err()
    );
}

/// `set_config` changes the hyper-parameters between steps and keeps the state.
#[test]
fn set_config_keeps_the_state() {
    let cfg = IreConfig {
        kappa: 1.0,
        gamma: 1.0,
        estimator: Estimator::AbsGradient,
        ..IreConfig::default()
    };
    let mut ire = Ire::new(
        Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
        cfg,
    )
    .unwrap();
    let mut p = bufs(&[&[0.0; 2]]);
    let g = bufs(&[&[1.0; 2]]);
    let est = bufs(&[&[1.0, 2.0]]);
    let step = IreStep {
        lr: 0.5,
        estimate: Some(EstimateInput::Gradient(&est)),
    };
    ire.step(&R, &mut p, &g, step).unwrap();
    assert_eq!(p[0].0, [-1.0, -1.0]);
    assert!(matches!(
        ire.set_config(IreConfig { kappa: -1.0, ..cfg }),
        Err(Error::InvalidHyperParameter { field: "kappa", .. })
    ));
    ire.set_config(IreConfig { kappa: 3.0, ..cfg }).unwrap();
    assert_eq!(ire.config().kappa, 3.0);
    ire.step(&R, &mut p, &g, IreStep::lr(0.5)).unwrap();
    // All flat (γ 1), κ 3: each coordinate moves 4 × 0.5.
    assert_eq!(p[0].0, [-3.0, -3.0]);
    assert_eq!(ire.step_count(), 2);
}

/// A failed external base step is abandoned with `cancel_external`: no boost, no count, and
/// the refresh it did serves the retried step.
#[test]
fn cancel_external_abandons_the_step() {
    use ire_core::optim::External;
    let cfg = IreConfig {
        kappa: 2.0,
        gamma: 0.5,
        beta: 0.5,
        ..IreConfig::default()
    };
    let mut ire = Ire::<Reference, f64, External>::new(External, cfg).unwrap();
    let mut p = bufs(&[&[1.0, 2.0]]);
    assert!(matches!(ire.cancel_external(), Err(Error::Protocol(_))));
    let est = bufs(&[&[2.0, 1.0]]);
    let first = IreStep {
        lr: 0.1,
        estimate: Some(EstimateInput::Gradient(&est)),
    };
    assert!(ire.begin_external(&R, &p, first).unwrap().refreshed);
    let h_after = R.to_vec(&ire.estimate()[0]).unwrap();
    ire.cancel_external().unwrap();
    assert_eq!(ire.step_count(), 0);
    assert!(!ire.refresh_due());
    // The retry refreshes nothing (h is not averaged twice) and reports the refresh.
    let rep = ire.begin_external(&R, &p, IreStep::lr(0.1)).unwrap();
    assert!(rep.refreshed);
    assert_eq!(R.to_vec(&ire.estimate()[0]).unwrap(), h_after);
    for x in p[0].0.iter_mut() {
        *x -= 1.0;
    }
    ire.finish_external(&R, &mut p).unwrap();
    // h = (2, 0.5): k = 1 sharp (τ = 2, both ≤ τ → flat, ties flat): both boosted ×3.
    assert_eq!(p[0].0, [-2.0, -1.0]);
    assert_eq!(ire.step_count(), 1);
    // A fused step cannot be cancelled as an external one.
    let mut sgd = Ire::new(
        Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
        IreConfig {
            gamma: 1.0,
            ..IreConfig::default()
        },
    )
    .unwrap();
    sgd.begin_step(
        &R,
        &[2],
        IreStep {
            lr: 0.1,
            estimate: Some(EstimateInput::Gradient(&est)),
        },
    )
    .unwrap();
    assert!(matches!(sgd.cancel_external(), Err(Error::Protocol(_))));
}

#[test]
fn a_clone_continues_exactly_as_the_original() {
    // SAM-IRE over AdamW, cloned mid-run: state allocated, a refresh done, between refreshes,
    // and once more while θ is perturbed.
    let cfg = IreConfig {
        kappa: 2.0,
        gamma: 0.5,
        refresh_every: 3,
        estimator: Estimator::SquaredTrainingGradient,
        ..IreConfig::default()
    };
    let base = Sam::new(
        AdamW::new(AdamWConfig::default()).unwrap(),
        SamConfig::default(),
    )
    .unwrap();
    let mut a = Ire::new(base, cfg).unwrap();
    let mut p = bufs(&[&THETA0]);
    let sam_step = |o: &mut Ire<Reference, f64, Sam<Reference, f64, AdamW<Reference, f64>>>,
                    p: &mut Vec<HostBuffer<f64>>| {
        let mut g = quad_grad(&A, p);
        o.sam_step_with(&R, p, &mut g, IreStep::lr(0.05), |p, g| {
            g[0] = quad_grad(&A, p).remove(0);
            Ok(())
        })
        .unwrap();
    };
    for _ in 0..4 {
        sam_step(&mut a, &mut p);
    }
    let mut b = a.clone();
    let mut q = p.clone();
    for _ in 0..5 {
        sam_step(&mut a, &mut p);
        sam_step(&mut b, &mut q);
    }
    assert_eq!(p, q);
    assert_eq!(a.save(&R).unwrap(), b.save(&R).unwrap());
    // Perturbed: the clone restores the same θ.
    let g = quad_grad(&A, &p);
    a.sam_perturb(&R, &mut p, &g, None).unwrap();
    let mut b = a.clone();
    let mut q = p.clone();
    let g2 = quad_grad(&A, &p);
    a.step(&R, &mut p, &g2, IreStep::lr(0.05)).unwrap();
    b.step(&R, &mut q, &g2, IreStep::lr(0.05)).unwrap();
    assert_eq!(p, q);
    // SGD with momentum keeps its buffer in the copy.
    let mut s = Sgd::new(SgdConfig {
        momentum: 0.9,
        ..SgdConfig::default()
    })
    .unwrap();
    let mut p = bufs(&[&THETA0]);
    let g = quad_grad(&A, &p);
    s.step(&R, &mut p, &g, 0.1).unwrap();
    let mut t = s.clone();
    let mut q = p.clone();
    let g = quad_grad(&A, &p);
    s.step(&R, &mut p, &g, 0.1).unwrap();
    t.step(&R, &mut q, &g, 0.1).unwrap();
    assert_eq!(p, q);
    assert_eq!(s.save(&R).unwrap(), t.save(&R).unwrap());
}

/// Checkpoints keep one byte per coordinate (the format of every earlier checkpoint): the
/// packed mask is unpacked on save and packed on load, tail word included.
#[test]
fn checkpoints_store_the_mask_as_bytes() {
    use ire_core::state::StateValue;
    let cfg = IreConfig {
        kappa: 1.0,
        estimator: Estimator::Manual,
        ..IreConfig::default()
    };
    let new = || {
        Ire::new(
            Sgd::<Reference, f64>::new(SgdConfig::default()).unwrap(),
            cfg,
        )
    };
    let mut ire = new().unwrap();
    let p = bufs(&[&[0.0; 33], &[0.0; 2]]);
    let bytes: Vec<u8> = (0..33).map(|i| u8::from(i % 5 != 1)).collect();
    ire.set_mask(&R, &p, &[&bytes, &[0, 1]]).unwrap();
    let saved = ire.save(&R).unwrap();
    let entry = |name: &str| saved.entries.iter().find(|e| e.name == name).unwrap();
    assert_eq!(entry("mask.0").value, StateValue::U8(bytes.clone()));
    assert_eq!(entry("mask.1").value, StateValue::U8(vec![0, 1]));
    // A mask written with other non-zero bytes (flat) loads as 0/1.
    let mut old = saved.clone();
    for e in old.entries.iter_mut().filter(|e| e.name == "mask.1") {
        e.value = StateValue::U8(vec![0, 7]);
    }
    let mut back = new().unwrap();
    back.load(&R, &old).unwrap();
    assert_eq!(back.mask(&R).unwrap(), vec![bytes, vec![0, 1]]);
    assert_eq!(back.packed_mask()[0].0.len(), 2);
    assert_eq!(
        back.packed_mask()[0].0[1] >> 1,
        0,
        "unused bits of the last word"
    );
    assert_eq!(back.flat_count(&R).unwrap(), ire.flat_count(&R).unwrap());
}

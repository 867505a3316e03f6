//! Property (d): save → load → continue equals an uninterrupted run, bit for bit; a state that
//! does not fit is refused with nothing changed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use candle_core::DType;
use candle_core::backprop::GradStore;
use candle_nn::Optimizer as _;
use common::{Batches, Mlp};
use ire_candle::estimator::{LabelSampler, estimator_gradient};
use ire_candle::{AdmIre, Error, Params, SamIre, SamParams, StateFileProblem};
use ire_core::{AdamWConfig, IreConfig, SamConfig, SgdConfig};

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ire-candle-resume-{}-{name}", std::process::id()))
}

fn ire() -> IreConfig {
    IreConfig {
        kappa: 2.0,
        gamma: 0.7,
        refresh_every: 4,
        warmup_steps: 2,
        ..IreConfig::default()
    }
}

fn lr_at(step: usize) -> f64 {
    1e-2 / (1.0 + step as f64 * 0.05)
}

/// Loss gradients and, when due, the estimator's, at step `step`.
fn grads(m: &Mlp, step: usize, due: bool) -> (GradStore, Option<GradStore>) {
    let (x, y) = Batches::new(64).get(step, DType::F32);
    let (_, g, logits) = m.loss_grads(&x, &y);
    let est = due.then(|| estimator_gradient(&logits, &LabelSampler::new(5), step as u64).unwrap());
    (g, est)
}

fn admire_steps(opt: &mut AdmIre<f32>, m: &Mlp, steps: std::ops::Range<usize>) {
    for step in steps {
        opt.set_learning_rate(lr_at(step));
        let (g, est) = grads(m, step, opt.refresh_due());
        if let Some(e) = est {
            opt.refresh(&e).unwrap();
        }
        opt.step(&g).unwrap();
    }
}

fn sam_steps(opt: &mut SamIre<f32>, m: &Mlp, steps: std::ops::Range<usize>) {
    let data = Batches::new(64);
    for step in steps {
        opt.set_learning_rate(lr_at(step));
        let (g, est) = grads(m, step, opt.refresh_due());
        if let Some(e) = est {
            opt.refresh(&e).unwrap();
        }
        opt.sam_perturb(&g).unwrap();
        let (x, y) = data.get(step, DType::F32);
        let (_, g2, _) = m.loss_grads(&x, &y);
        opt.step(&g2).unwrap();
    }
}

fn admire(m: &Mlp) -> AdmIre<f32> {
    AdmIre::<f32>::new(
        m.vars.clone(),
        Params::new(0.0, AdamWConfig::default(), ire()),
    )
    .unwrap()
}

#[test]
fn admire_save_load_continue_equals_an_uninterrupted_run() {
    let a = Mlp::new(3, 32);
    let mut opt_a = admire(&a);
    admire_steps(&mut opt_a, &a, 0..31);

    // Interrupted at step 17 (between refreshes), resumed in a new model and optimizer.
    let b = Mlp::new(3, 32);
    let mut opt_b = admire(&b);
    admire_steps(&mut opt_b, &b, 0..17);
    let path = temp("admire.safetensors");
    opt_b.save(&path).unwrap();
    let values = b.values();
    drop(opt_b);
    drop(b);
    let c = Mlp::new(99, 32);
    c.set_values(&values);
    let mut opt_c = admire(&c);
    opt_c.load(&path).unwrap();
    assert_eq!(opt_c.learning_rate(), lr_at(16));
    assert_eq!(opt_c.ire().step_count(), 17);
    admire_steps(&mut opt_c, &c, 17..31);
    assert_eq!(a.values(), c.values());
    assert_eq!(
        opt_a.state_dict().unwrap(),
        opt_c.state_dict().unwrap(),
        "optimizer states differ"
    );
    std::fs::remove_file(&path).ok();
}

#[test]
fn sam_ire_save_load_continue_equals_an_uninterrupted_run() {
    let cfg = Params::new(
        0.0,
        SamParams {
            sam: SamConfig::default(),
            base: SgdConfig {
                momentum: 0.9,
                ..SgdConfig::default()
            },
        },
        ire(),
    );
    let a = Mlp::new(4, 32);
    let mut opt_a = SamIre::<f32>::new(a.vars.clone(), cfg.clone()).unwrap();
    sam_steps(&mut opt_a, &a, 0..21);
    let b = Mlp::new(4, 32);
    let mut opt_b = SamIre::<f32>::new(b.vars.clone(), cfg.clone()).unwrap();
    sam_steps(&mut opt_b, &b, 0..9);
    let state = opt_b.state_dict().unwrap();
    let c = Mlp::new(5, 32);
    c.set_values(&b.values());
    let mut opt_c = SamIre::<f32>::new(c.vars.clone(), cfg).unwrap();
    opt_c.load_state_dict(&state).unwrap();
    opt_c.set_learning_rate(opt_b.learning_rate());
    sam_steps(&mut opt_c, &c, 9..21);
    assert_eq!(a.values(), c.values());
}

#[test]
fn a_state_that_does_not_fit_is_refused_and_nothing_changes() {
    let a = Mlp::new(6, 32);
    let mut opt = admire(&a);
    admire_steps(&mut opt, &a, 0..6);
    let path = temp("small.safetensors");
    opt.save(&path).unwrap();

    // Another model size.
    let big = Mlp::new(6, 40);
    let mut other = admire(&big);
    admire_steps(&mut other, &big, 0..3);
    let before = other.state_dict().unwrap();
    assert!(matches!(other.load(&path), Err(Error::StateVars { .. })));
    assert_eq!(other.state_dict().unwrap(), before);

    // Another optimizer.
    let mut sam = SamIre::<f32>::new(
        a.vars.clone(),
        Params::new(
            0.1,
            SamParams {
                sam: SamConfig::default(),
                base: SgdConfig::default(),
            },
            ire(),
        ),
    )
    .unwrap();
    assert!(matches!(
        sam.load(&path),
        Err(Error::Core(ire_core::Error::State(_)))
    ));
    assert_eq!(sam.learning_rate(), 0.1);

    // A truncated file.
    let bytes = std::fs::read(&path).unwrap();
    let cut = temp("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let before = opt.state_dict().unwrap();
    assert!(matches!(
        opt.load(&cut),
        Err(Error::StateFile {
            problem: StateFileProblem::Container(_),
            ..
        })
    ));
    assert_eq!(opt.state_dict().unwrap(), before);
    std::fs::remove_file(&path).ok();
    std::fs::remove_file(&cut).ok();
}

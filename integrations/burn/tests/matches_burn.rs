//! Property (a): with κ = 0 the adapter's AdamW and SGD follow burn's own AdamW and SGD over
//! 50 steps of a real model (an MLP on the shipped digits), within 1e-6 relative (AdamW at betas
//! whose powers burn computes exactly; at the usual betas burn's own f32 bias correction is off
//! by more than that, and the gap is its size).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use burn::optim::Optimizer;
use burn::optim::momentum::MomentumConfig;
use common::{B, Batches, Mlp};
use ire_adapter_testkit::max_relative_diff;
use ire_burn::estimator::{LabelSampler, estimator_gradient};
use ire_burn::{AdmIre, SgdIre};
use ire_core::{AdamWConfig, IreConfig, SgdConfig};

const STEPS: usize = 50;
const TOL: f64 = 1e-6;

fn ire_off() -> IreConfig {
    IreConfig {
        kappa: 0.0,
        gamma: 0.8,
        refresh_every: 5,
        ..IreConfig::default()
    }
}

/// Runs two identical models, one with burn's optimizer and one with the adapter (κ = 0, but
/// refreshing from the sampled-label estimator every 5 steps), and returns the largest
/// relative difference of any tensor at any step.
fn compare<O: Optimizer<Mlp<B>, B>, S>(
    mut theirs: O,
    mut ours: ire_burn::IreOptimizer<B, f32, S>,
    lr: f64,
) -> f64
where
    S: ire_core::Optimizer<ire_backend_cpu::CpuBackend, f32> + Clone + Send,
{
    let mut a = Mlp::<B>::new(1, 32);
    let mut b = Mlp::<B>::new(1, 32);
    let data = Batches::new(64);
    let sampler = LabelSampler::new(9);
    let mut worst = 0.0f64;
    for step in 0..STEPS {
        let (x, y) = data.get::<B>(step);
        let (_, ga) = a.loss_grads(x.clone(), y.clone());
        a = theirs.step(lr, a, ga);
        let (_, gb) = b.loss_grads(x.clone(), y);
        if ours.refresh_due() {
            // burn's backward consumes the graph: the estimator takes its own forward pass.
            let est = estimator_gradient(b.logits(x), &b, &sampler, step as u64).unwrap();
            ours.refresh(&b, est).unwrap();
        }
        let (next, r) = ours.try_step(lr, b, gb);
        b = next;
        r.unwrap();
        for (va, vb) in a.values().iter().zip(b.values()) {
            worst = worst.max(max_relative_diff(&vb, va));
        }
    }
    assert_eq!(ours.access_counts().host_copy, 0);
    worst
}

fn adamw_gap(b1: f32, b2: f32) -> f64 {
    // burn keeps betas, epsilon and weight decay in f32; the adapter gets the same values.
    let (eps, wd) = (1e-8f32, 0.01f32);
    let theirs = burn::optim::AdamWConfig::new()
        .with_beta_1(b1)
        .with_beta_2(b2)
        .with_epsilon(eps)
        .with_weight_decay(wd)
        .init::<B, Mlp<B>>();
    let cfg = AdamWConfig {
        beta1: b1 as f64,
        beta2: b2 as f64,
        eps: eps as f64,
        weight_decay: wd as f64,
    };
    let ours = AdmIre::<B>::adamw(cfg, ire_off()).unwrap();
    let worst = compare(theirs, ours, 3e-3);
    eprintln!("betas ({b1}, {b2}): largest relative difference {worst:e}");
    worst
}

/// burn computes the bias corrections `1 − β^t` in f32 with `powi`; `ire-core` in f64. With
/// betas whose powers are exact in f32 that difference vanishes and the trajectories agree to
/// the rounding of the update itself.
#[test]
fn adamw_with_kappa_zero_follows_burn_adamw() {
    let worst = adamw_gap(0.5, 0.5);
    assert!(worst <= TOL, "largest relative difference {worst:e}");
}

/// At the usual betas (0.9, 0.999) burn's f32 `1 − β2^t` is off by up to 1.4e-5 relative
/// (computed below; largest in the first steps, where `1 − β2^t` is small), more than the
/// tolerance; the trajectories drift apart by less than that error (2.4e-6 measured).
#[test]
fn at_the_usual_betas_the_gap_is_burns_f32_bias_correction() {
    let bc_error = (1..=STEPS as i32)
        .map(|t| {
            let burn = (1f32 - 0.999f32.powi(t)) as f64;
            let exact = 1.0 - (0.999f32 as f64).powi(t);
            (burn / exact - 1.0).abs()
        })
        .fold(0.0, f64::max);
    eprintln!("largest relative error of burn's 1 − β2^t: {bc_error:e}");
    assert!(bc_error > TOL, "{bc_error:e}");
    let worst = adamw_gap(0.9, 0.999);
    assert!(worst <= bc_error, "largest relative difference {worst:e}");
}

#[test]
fn sgd_with_momentum_and_kappa_zero_follows_burn_sgd() {
    let theirs = burn::optim::SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum: 0.9,
            dampening: 0.1,
            nesterov: false,
        }))
        .init::<B, Mlp<B>>();
    let cfg = SgdConfig {
        momentum: 0.9,
        dampening: 0.1,
        ..SgdConfig::default()
    };
    let ours = SgdIre::<B>::sgd(cfg, ire_off()).unwrap();
    let worst = compare(theirs, ours, 0.05);
    assert!(worst <= TOL, "largest relative difference {worst:e}");
}

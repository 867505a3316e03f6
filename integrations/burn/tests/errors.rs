//! Bad input is a typed error naming the problem, and the module and the optimizer's state are
//! left as they were.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::Tensor;
use common::{B, Batches, Mlp};
use ire_burn::estimator::{EstimatorError, LabelSampler, estimator_gradient};
use ire_burn::{AdmIre, Error};
use ire_core::{AdamWConfig, IreConfig};

fn ire() -> IreConfig {
    IreConfig {
        kappa: 1.0,
        gamma: 0.5,
        refresh_every: 2,
        ..IreConfig::default()
    }
}

fn grads(m: &Mlp<B>) -> GradientsParams {
    let (x, y) = Batches::new(32).get::<B>(0);
    m.loss_grads(x, y).1
}

#[test]
fn a_due_refresh_that_was_not_done_refuses_the_step() {
    let m = Mlp::<B>::new(1, 8);
    let mut opt = AdmIre::<B>::adamw(AdamWConfig::default(), ire()).unwrap();
    let before = m.values();
    let g = grads(&m);
    let (m, r) = opt.try_step(1e-3, m, g);
    assert!(
        matches!(r, Err(Error::Core(ire_core::Error::Protocol(_)))),
        "{r:?}"
    );
    assert_eq!(m.values(), before);
    // Through burn's trait: the module comes back unchanged and the error waits.
    let g = grads(&m);
    let m = Optimizer::<Mlp<B>, B>::step(&mut opt, 1e-3, m, g);
    assert!(matches!(
        opt.take_error(),
        Some(Error::Core(ire_core::Error::Protocol(_)))
    ));
    assert!(opt.take_error().is_none());
    assert_eq!(m.values(), before);
    assert_eq!(opt.ire().step_count(), 0);
}

#[test]
fn gradients_that_do_not_fit_and_other_modules_are_refused() {
    let m = Mlp::<B>::new(2, 8);
    let mut opt = AdmIre::<B>::adamw(AdamWConfig::default(), ire()).unwrap();
    opt.refresh(&m, grads(&m)).unwrap();
    let before = m.values();
    let mut g = grads(&m);
    g.register::<burn::backend::NdArray, 1>(
        m.l1.bias.as_ref().unwrap().id,
        Tensor::zeros([9], &Default::default()),
    );
    let (m, r) = opt.try_step(1e-3, m, g);
    assert!(matches!(r, Err(Error::Shape { param: 1, .. })), "{r:?}");
    let (m, r) = opt.try_step(-1.0, m, grads(&Mlp::new(2, 8)));
    assert!(r.is_err());
    assert_eq!(m.values(), before);
    // A step on a module with other parameters than the refresh saw.
    let other = Mlp::<B>::new(3, 12);
    let g = grads(&other);
    let (other, r) = opt.try_step(1e-3, other, g);
    assert!(
        matches!(r, Err(Error::ModuleChanged { found: 4, .. })),
        "{r:?}"
    );
    assert_eq!(other.values(), Mlp::<B>::new(3, 12).values());
    // The right module still steps.
    let g = grads(&m);
    let (m, r) = opt.try_step(1e-3, m, g);
    r.unwrap();
    assert_ne!(m.values(), before);
}

#[test]
fn a_non_finite_estimate_is_refused_and_the_mask_kept() {
    let mut m = Mlp::<B>::new(4, 8);
    let mut opt = AdmIre::<B>::adamw(AdamWConfig::default(), ire()).unwrap();
    opt.refresh(&m, grads(&m)).unwrap();
    for _ in 0..2 {
        let g = grads(&m);
        let (next, r) = opt.try_step(1e-3, m, g);
        m = next;
        r.unwrap();
    }
    assert!(opt.refresh_due());
    let mask: Vec<Vec<u8>> = opt.mask().unwrap();
    let mut bad = grads(&m);
    bad.register::<burn::backend::NdArray, 2>(
        m.l2.weight.id,
        Tensor::full([8, 10], f32::NAN, &Default::default()),
    );
    assert!(matches!(
        opt.refresh(&m, bad),
        Err(Error::Core(ire_core::Error::NonFinite { .. }))
    ));
    // Logits whose graph the training backward already consumed reach no parameter.
    let (x, y) = Batches::new(32).get::<B>(0);
    let logits = m.logits(x);
    let loss = burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&Default::default())
        .forward(logits.clone(), y);
    let _ = loss.backward();
    assert!(matches!(
        estimator_gradient(logits, &m, &LabelSampler::new(0), 0),
        Err(EstimatorError::NoGradient)
    ));
    assert!(matches!(
        opt.refresh(&m, GradientsParams::new()),
        Err(Error::EmptyEstimate)
    ));
    let after: Vec<Vec<u8>> = opt.mask().unwrap();
    assert_eq!(after, mask);
    assert!(opt.refresh_due());
}

//! Property (a): with κ = 0 the adapter's AdamW and SGD follow candle's own AdamW and SGD over
//! 50 steps of a real model (an MLP on the shipped digits), within 1e-6 relative.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use candle_core::DType;
use candle_nn::{Optimizer, ParamsAdamW};
use common::{Batches, Mlp};
use ire_adapter_testkit::max_relative_diff;
use ire_candle::estimator::{LabelSampler, estimator_gradient};
use ire_candle::{AdmIre, CandleElement, Params, SgdIre};
use ire_core::{AdamWConfig, IreConfig, SgdConfig};

const STEPS: usize = 50;
const TOL: f64 = 1e-6;

/// IRE with κ = 0 but everything else on: refreshes every 5 steps from the sampled-label
/// estimator, a real threshold. The boost multiplies by 0, so the base optimizer's step is left.
fn ire_off() -> IreConfig {
    IreConfig {
        kappa: 0.0,
        gamma: 0.8,
        refresh_every: 5,
        ..IreConfig::default()
    }
}

/// Runs `STEPS` steps of two identical models, one with candle's optimizer and one with the
/// adapter, and returns the largest relative difference seen at any step, per dtype.
fn compare<F, G>(dtype: DType, mut framework: F, mut adapter: G) -> f64
where
    F: FnMut(&Mlp, &candle_core::backprop::GradStore),
    G: FnMut(&Mlp, &candle_core::backprop::GradStore, &candle_core::Tensor, usize),
{
    let a = Mlp::with_dtype(1, 32, dtype);
    let b = Mlp::with_dtype(1, 32, dtype);
    let data = Batches::new(64);
    let mut worst = 0.0f64;
    for step in 0..STEPS {
        let (x, y) = data.get(step, dtype);
        let (_, ga, _) = a.loss_grads(&x, &y);
        framework(&a, &ga);
        let (_, gb, logits) = b.loss_grads(&x, &y);
        adapter(&b, &gb, &logits, step);
        for (va, vb) in a.values_f64().iter().zip(b.values_f64()) {
            worst = worst.max(max_relative_diff(&vb, va));
        }
    }
    worst
}

fn adamw_run<T: CandleElement>() -> f64 {
    let p = ParamsAdamW {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let cfg = AdamWConfig {
        beta1: p.beta1,
        beta2: p.beta2,
        eps: p.eps,
        weight_decay: p.weight_decay,
    };
    let sampler = LabelSampler::new(9);
    let mut theirs: Option<candle_nn::AdamW> = None;
    let mut ours: Option<AdmIre<T>> = None;
    compare(
        T::CANDLE_DTYPE,
        |m, g| {
            theirs
                .get_or_insert_with(|| candle_nn::AdamW::new(m.vars.clone(), p.clone()).unwrap())
                .step(g)
                .unwrap()
        },
        |m, g, logits, step| {
            let o = ours.get_or_insert_with(|| {
                AdmIre::<T>::new(m.vars.clone(), Params::new(p.lr, cfg, ire_off())).unwrap()
            });
            if o.refresh_due() {
                o.refresh(&estimator_gradient(logits, &sampler, step as u64).unwrap())
                    .unwrap();
            }
            o.step(g).unwrap();
        },
    )
}

#[test]
fn adamw_with_kappa_zero_follows_candle_adamw_in_f32() {
    let worst = adamw_run::<f32>();
    eprintln!("largest relative difference {worst:e}");
    assert!(worst <= TOL, "largest relative difference {worst:e}");
}

#[test]
fn adamw_with_kappa_zero_follows_candle_adamw_in_f64() {
    let worst = adamw_run::<f64>();
    eprintln!("largest relative difference {worst:e}");
    assert!(worst <= 1e-13, "largest relative difference {worst:e}");
}

#[test]
fn sgd_with_kappa_zero_follows_candle_sgd() {
    let lr = 0.1;
    let mut theirs: Option<candle_nn::SGD> = None;
    let mut ours: Option<SgdIre<f32>> = None;
    let sampler = LabelSampler::new(4);
    let worst = compare(
        DType::F32,
        |m, g| {
            theirs
                .get_or_insert_with(|| candle_nn::SGD::new(m.vars.clone(), lr).unwrap())
                .step(g)
                .unwrap()
        },
        |m, g, logits, step| {
            let o = ours.get_or_insert_with(|| {
                SgdIre::<f32>::new(
                    m.vars.clone(),
                    Params::new(lr, SgdConfig::default(), ire_off()),
                )
                .unwrap()
            });
            if o.refresh_due() {
                o.refresh(&estimator_gradient(logits, &sampler, step as u64).unwrap())
                    .unwrap();
            }
            o.step(g).unwrap();
        },
    );
    eprintln!("largest relative difference {worst:e}");
    assert!(worst <= TOL, "largest relative difference {worst:e}");
}

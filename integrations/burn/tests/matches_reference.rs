//! Property (b): with κ > 0 the adapter equals `ire-core`'s reference backend
//! (`ire_core::Reference`) fed the same gradients, bit for bit in f32, over 50 steps of an MLP
//! on the shipped digits: AdmIRE and SGD-IRE, on the in-place path and on the host round trip
//! a backend without host memory takes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use burn::optim::GradientsParams;
use common::{B, Batches, Mlp};
use ire_adapter_testkit::bits_equal;
use ire_backend_cpu::CpuBackend;
use ire_burn::estimator::{LabelSampler, estimator_gradient};
use ire_burn::{AdmIre, IreOptimizer, MemoryAccess, SgdIre};
use ire_core::optim::{EstimateInput, Estimator, ThresholdRule, sharp_count};
use ire_core::reference::{HostBuffer, Reference};
use ire_core::{AdamW, AdamWConfig, Ire, IreConfig, IreStep, Sgd, SgdConfig};

const STEPS: usize = 50;
const R: Reference = Reference;

/// The gradients of a `GradientsParams` in the model's order, as host buffers.
fn host_grads(m: &Mlp<B>, g: &GradientsParams) -> Vec<HostBuffer<f32>> {
    let read2 = |p: &burn::module::Param<burn::tensor::Tensor<B, 2>>| {
        HostBuffer(
            g.get::<burn::backend::NdArray, 2>(p.id)
                .unwrap()
                .into_data()
                .into_vec::<f32>()
                .unwrap(),
        )
    };
    let read1 = |p: &burn::module::Param<burn::tensor::Tensor<B, 1>>| {
        HostBuffer(
            g.get::<burn::backend::NdArray, 1>(p.id)
                .unwrap()
                .into_data()
                .into_vec::<f32>()
                .unwrap(),
        )
    };
    vec![
        read2(&m.l1.weight),
        read1(m.l1.bias.as_ref().unwrap()),
        read2(&m.l2.weight),
        read1(m.l2.bias.as_ref().unwrap()),
    ]
}

fn run<S, P>(
    mut ours: IreOptimizer<B, f32, S>,
    mut reference: Ire<Reference, f32, P>,
    lr: f64,
) -> Mlp<B>
where
    S: ire_core::Optimizer<CpuBackend, f32> + Clone + Send,
    P: ire_core::Optimizer<Reference, f32>,
{
    let mut m = Mlp::<B>::new(2, 48);
    let mut p: Vec<HostBuffer<f32>> = m.values().into_iter().map(HostBuffer).collect();
    let data = Batches::new(64);
    let sampler = LabelSampler::new(3);
    let mut refreshes = 0;
    for step in 0..STEPS {
        let (x, y) = data.get::<B>(step);
        let (_, g) = m.loss_grads(x.clone(), y);
        let gh = host_grads(&m, &g);
        let est = if ours.refresh_due() && ours.ire().config().estimator.needs_gradient() {
            let e = estimator_gradient(m.logits(x), &m, &sampler, step as u64).unwrap();
            let eh = host_grads(&m, &e);
            ours.refresh(&m, e).unwrap();
            Some(eh)
        } else {
            None
        };
        let (next, r) = ours.try_step(lr, m, g);
        m = next;
        let report = r.unwrap();
        let theirs = reference
            .step(
                &R,
                &mut p,
                &gh,
                IreStep {
                    lr,
                    estimate: est.as_deref().map(EstimateInput::Gradient),
                },
            )
            .unwrap();
        assert_eq!(report, theirs, "step {step}");
        refreshes += report.refreshed as usize;
        for (i, (a, b)) in m.values().iter().zip(&p).enumerate() {
            assert!(bits_equal(a, &b.0), "step {step}, tensor {i} differs");
        }
    }
    assert_eq!(refreshes, 10);
    assert_eq!(
        ours.flat_count().unwrap(),
        reference.flat_count(&R).unwrap()
    );
    m
}

fn ire(kappa: f64) -> IreConfig {
    IreConfig {
        kappa,
        gamma: 0.8,
        refresh_every: 5,
        ..IreConfig::default()
    }
}

#[test]
fn admire_equals_the_reference_bit_for_bit_in_place_and_through_the_host() {
    let cfg = AdamWConfig::default();
    let in_place = run(
        AdmIre::<B>::adamw(cfg, ire(2.0)).unwrap(),
        Ire::new(AdamW::new(cfg).unwrap(), ire(2.0)).unwrap(),
        3e-3,
    );
    let copied = run(
        AdmIre::<B>::adamw(cfg, ire(2.0))
            .unwrap()
            .with_memory_access(MemoryAccess::HostCopy),
        Ire::new(AdamW::new(cfg).unwrap(), ire(2.0)).unwrap(),
        3e-3,
    );
    assert_eq!(in_place.values(), copied.values());
}

#[test]
fn sgd_ire_equals_the_reference_bit_for_bit() {
    let cfg = SgdConfig {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
        ..SgdConfig::default()
    };
    let c = IreConfig {
        threshold: ThresholdRule::FlatKthSmallest,
        estimator: Estimator::SquaredTrainingGradient,
        ..ire(3.0)
    };
    run(
        SgdIre::<B>::sgd(cfg, c).unwrap(),
        Ire::new(Sgd::new(cfg).unwrap(), c).unwrap(),
        0.05,
    );
}

#[test]
fn one_threshold_spans_every_parameter() {
    let mut m = Mlp::<B>::new(5, 16);
    let mut opt = AdmIre::<B>::adamw(AdamWConfig::default(), ire(1.0)).unwrap();
    let data = Batches::new(32);
    let (x, y) = data.get::<B>(0);
    let (_, g) = m.loss_grads(x.clone(), y);
    let e = estimator_gradient(m.logits(x), &m, &LabelSampler::new(1), 0).unwrap();
    opt.refresh(&m, e).unwrap();
    let (next, r) = opt.try_step(1e-3, m, g);
    m = next;
    r.unwrap();
    let n = opt.ranked_count();
    assert_eq!(n, 64 * 16 + 16 + 16 * 10 + 10);
    // τ is the k-th largest of ALL estimates; h ≤ τ is flat: N − k + 1 flat without ties.
    let flat: usize = opt
        .mask()
        .unwrap()
        .iter()
        .map(|m| m.iter().filter(|&&b| b == 1).count())
        .sum();
    assert_eq!(flat, n - sharp_count(n, 0.8) + 1);
    assert_eq!(flat, opt.flat_count().unwrap());
    // A per-tensor threshold would flag 80 % of every tensor; the global one does not.
    let per_tensor: Vec<f64> = opt
        .mask()
        .unwrap()
        .iter()
        .map(|m| m.iter().filter(|&&b| b == 1).count() as f64 / m.len() as f64)
        .collect();
    assert!(
        per_tensor.iter().any(|f| (f - 0.8).abs() > 0.05),
        "{per_tensor:?}"
    );
    assert_eq!(m.values().len(), 4);
}

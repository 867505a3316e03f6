//! The estimator gradient from the training step's own forward pass (`estimator_forward =
//! "shared"`, the default) equals the one from a forward pass of its own (`"separate"`, the
//! official scripts' way) bit for bit: the same estimator gradients at every refresh, the same
//! losses and the same parameters, for a plain network, a batch-norm ResNet and a transformer,
//! with and without gradient accumulation, on the CPU backend and on OpenCL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cpu::CpuBackend;
use ire_models::nn::NnOps;
use ire_models::train::{EstimatorForward, EstimatorKind, OptimizerKind, TrainConfig, Trainer};

mod common;

const STEPS: usize = 7;

fn cfg(model: &str, opt: OptimizerKind, accum: usize, fwd: EstimatorForward) -> TrainConfig {
    let mut c = TrainConfig {
        lr: if opt == OptimizerKind::Admire {
            3e-3
        } else {
            0.05
        },
        steps: STEPS as u64,
        batch_size: 16 / accum,
        grad_accum: accum,
        crop_padding: Some(1),
        seed: 11,
        estimator_forward: fwd,
        ..common::shipped_data_cfg(model, opt)
    };
    c.opt.refresh_every = 3;
    c
}

/// Bits of every loss, of the estimator gradient after each step and of the final parameters.
type Trace = (Vec<u64>, Vec<Vec<u32>>, Vec<u32>, usize);

fn trace<B: NnOps + 'static>(b: B, c: TrainConfig) -> Trace {
    let mut t = Trainer::new(b, c).unwrap();
    let (mut losses, mut est, mut refreshes) = (Vec::new(), Vec::new(), 0);
    for _ in 0..STEPS {
        let m = t.train_step().unwrap();
        refreshes += m.refreshed as usize;
        losses.push(m.loss.to_bits());
        let g = t.estimator_gradient_host().unwrap().unwrap();
        est.push(g.iter().map(|v| v.to_bits()).collect());
    }
    let p = t
        .params_host()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    (losses, est, p, refreshes)
}

fn same<B: NnOps + Clone + 'static>(b: &B, model: &str, opt: OptimizerKind, accum: usize) {
    let shared = trace(b.clone(), cfg(model, opt, accum, EstimatorForward::Shared));
    let separate = trace(
        b.clone(),
        cfg(model, opt, accum, EstimatorForward::Separate),
    );
    assert_eq!(shared.3, 3, "{model}: refreshes at steps 0, 3, 6");
    assert!(
        shared.1[STEPS - 1].iter().any(|&v| v != 0),
        "{model}: the estimator gradient is not all zeros"
    );
    assert_eq!(shared.0, separate.0, "{model} {opt} accum {accum}: losses");
    for (s, (a, b)) in shared.1.iter().zip(&separate.1).enumerate() {
        assert!(
            a == b,
            "{model} {opt} accum {accum}: estimator gradient after step {s}"
        );
    }
    assert!(
        shared.2 == separate.2,
        "{model} {opt} accum {accum}: parameters"
    );
    println!("{model} {opt} accum {accum}: identical");
}

#[test]
fn the_shared_forward_gives_the_separate_estimator_bit_for_bit_on_the_cpu() {
    let b = CpuBackend::new();
    for accum in [1, 2] {
        same(&b, "mlp-small", OptimizerKind::Admire, accum);
        same(&b, "resnet-small", OptimizerKind::SgdIre, accum);
        same(&b, "llama-tiny", OptimizerKind::Admire, accum);
    }
    // SAM-IRE refreshes at the unperturbed point from the first forward too.
    same(&b, "mlp-small", OptimizerKind::SamIre, 1);
}

#[cfg(feature = "opencl")]
#[test]
fn the_shared_forward_gives_the_separate_estimator_bit_for_bit_on_opencl() {
    let Some(b) = common::opencl("the_shared_forward_gives_the_separate_estimator_on_opencl")
    else {
        return;
    };
    same(&b, "resnet-small", OptimizerKind::SgdIre, 2);
    same(&b, "llama-tiny", OptimizerKind::Admire, 1);
}

#[test]
fn estimators_without_a_pass_are_untouched() {
    // The squared training gradient needs no estimator pass: both settings are the plain run.
    let mut a = cfg(
        "mlp-small",
        OptimizerKind::Admire,
        1,
        EstimatorForward::Shared,
    );
    a.opt.estimator = EstimatorKind::SquaredTrainingGradient;
    let mut b = a.clone();
    b.estimator_forward = EstimatorForward::Separate;
    let (la, _, pa, _) = trace(CpuBackend::new(), a);
    let (lb, _, pb, _) = trace(CpuBackend::new(), b);
    assert_eq!(la, lb);
    assert_eq!(pa, pb);
}

#[test]
fn the_config_names_the_choice() {
    let c: TrainConfig = toml::from_str("estimator_forward = \"separate\"").unwrap();
    assert_eq!(c.estimator_forward, EstimatorForward::Separate);
    let e = toml::from_str::<TrainConfig>("estimator_forward = \"twice\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("shared") && e.contains("separate"), "{e}");
}

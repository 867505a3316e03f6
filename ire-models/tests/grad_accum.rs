//! Gradient accumulation: `--grad-accum 4` at batch 8 takes the steps of batch 32.
//!
//! Both runs see the same 32 examples per step (the data source cuts step batches of
//! `batch_size × grad_accum`); the accumulated run sums four micro-batch gradients, each
//! scaled by 1/rows of the whole batch, where the large batch sums the same terms inside each
//! backward. So they differ only by the order of additions, and the curves stay within the
//! bounds below on the CPU backend and on OpenCL, with AdmIRE (the estimator gradient
//! accumulated too, labels sampled with the same uniforms) and with SGD.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use ire_backend_cpu::CpuBackend;
use ire_models::data::Batch;
use ire_models::nn::NnOps;
use ire_models::train::{DatasetKind, OptimizerKind, TrainConfig, Trainer};

mod common;

const STEPS: usize = 20;

/// Largest relative difference between two step losses, and between the final parameter
/// vectors (‖a − b‖₂ / ‖a‖₂), allowed between accumulation and one large batch. Measured
/// (CPU and PoCL): losses ≤ 1.4e-7, parameters ≤ 4e-6. The parameter bound is looser than
/// the loss bound because AdamW divides by √v: on coordinates whose gradient is rounding
/// noise (embedding rows of characters absent from a batch) the order of the additions can
/// flip the sign of a step of size lr.
const LOSS_REL: f64 = 1e-5;
const PARAM_REL: f64 = 1e-4;

fn digits_cfg(opt: OptimizerKind, batch: usize, accum: usize) -> TrainConfig {
    let mut c = TrainConfig {
        model: "mlp-small".into(),
        dataset: DatasetKind::Digits,
        data: common::root().join("data/digits.csv.gz"),
        optimizer: opt,
        lr: 0.05,
        steps: STEPS as u64,
        batch_size: batch,
        grad_accum: accum,
        hflip: Some(false),
        crop_padding: Some(1),
        seed: 3,
        ..TrainConfig::default()
    };
    c.opt.refresh_every = 5;
    if opt == OptimizerKind::Admire {
        c.lr = 2e-3;
        c.opt.weight_decay = 0.01;
    }
    c
}

fn text_cfg(batch: usize, accum: usize) -> TrainConfig {
    let mut c = TrainConfig {
        model: "llama-tiny".into(),
        dataset: DatasetKind::Text,
        data: common::root().join("data/moby-dick-opening.txt"),
        tokenizer: "char".into(),
        context: 16,
        batch_size: batch,
        grad_accum: accum,
        optimizer: OptimizerKind::Admire,
        lr: 3e-3,
        steps: STEPS as u64,
        seed: 5,
        ..TrainConfig::default()
    };
    c.opt.beta2 = 0.95;
    c.opt.refresh_every = 5;
    c
}

/// The per-step losses, the number of examples of each step and the final parameters.
fn run<B: NnOps + 'static>(b: B, cfg: TrainConfig) -> (Vec<f64>, Vec<usize>, Vec<f32>) {
    let mut t = Trainer::new(b, cfg).unwrap();
    let (mut losses, mut seen) = (Vec::new(), Vec::new());
    for _ in 0..STEPS {
        let m = t.train_step().unwrap();
        losses.push(m.loss);
        seen.push(m.n);
    }
    (losses, seen, t.params_host().unwrap())
}

/// Compares accumulation in 4 micro-batches of `batch / 4` with one batch of `batch`.
fn compare<B: NnOps + Clone + 'static>(b: B, make: impl Fn(usize, usize) -> TrainConfig) {
    let (l1, n1, p1) = run(b.clone(), make(32, 1));
    let (l4, n4, p4) = run(b, make(8, 4));
    assert_eq!(n1, n4, "examples per step");
    assert!(n1.iter().all(|&n| n == 32), "{n1:?}");
    let loss_rel = l1
        .iter()
        .zip(&l4)
        .map(|(a, b)| ((a - b) / a).abs())
        .fold(0.0, f64::max);
    let norm = p1.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    let param_rel = p1
        .iter()
        .zip(&p4)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum::<f64>()
        .sqrt()
        / norm;
    println!(
        "losses {:.6} .. {:.6}; largest relative loss difference {loss_rel:.2e} (bound \
         {LOSS_REL:.0e}), parameters {param_rel:.2e} (bound {PARAM_REL:.0e})",
        l1[0],
        l1[STEPS - 1]
    );
    assert!(loss_rel <= LOSS_REL, "{loss_rel:e}");
    assert!(param_rel <= PARAM_REL, "{param_rel:e}");
    // Training happened: the curves are not flat, so equality is not trivial.
    assert!(l1[STEPS - 1] < l1[0], "{l1:?}");
}

#[test]
fn accumulation_equals_one_large_batch_on_the_cpu() {
    for opt in [OptimizerKind::Sgd, OptimizerKind::Admire] {
        println!("mlp-small, {opt}:");
        compare(CpuBackend::new(), |b, a| digits_cfg(opt, b, a));
    }
    println!("llama-tiny, admire:");
    compare(CpuBackend::new(), text_cfg);
}

#[cfg(feature = "opencl")]
#[test]
fn accumulation_equals_one_large_batch_on_opencl() {
    let Some(b) = common::opencl("accumulation_equals_one_large_batch_on_opencl") else {
        return;
    };
    println!("mlp-small, admire:");
    compare(b.clone(), |bs, a| digits_cfg(OptimizerKind::Admire, bs, a));
    println!("llama-tiny, admire:");
    compare(b, text_cfg);
}

#[test]
fn one_micro_batch_is_the_plain_step_bit_for_bit() {
    // grad_accum 1 is the step without accumulation; a step batch of 32 in 1 part and the same
    // configuration written twice agree to the bit (the accumulation path adds nothing then).
    let (l1, _, p1) = run(CpuBackend::new(), digits_cfg(OptimizerKind::Admire, 32, 1));
    let (l2, _, p2) = run(CpuBackend::new(), digits_cfg(OptimizerKind::Admire, 32, 1));
    assert_eq!(l1, l2);
    assert_eq!(p1, p2);
}

#[test]
fn accumulation_is_deterministic() {
    let (l1, _, p1) = run(CpuBackend::new(), digits_cfg(OptimizerKind::Admire, 8, 4));
    let (l2, _, p2) = run(CpuBackend::new(), digits_cfg(OptimizerKind::Admire, 8, 4));
    assert_eq!(l1, l2);
    assert_eq!(
        p1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        p2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn micro_batches_cut_a_batch_evenly_and_in_order() {
    assert_eq!(
        Batch::micro_ranges(32, 4),
        vec![0..8, 8..16, 16..24, 24..32]
    );
    assert_eq!(Batch::micro_ranges(10, 4), vec![0..3, 3..6, 6..8, 8..10]);
    // More parts than examples: one example each, never an empty micro-batch.
    assert_eq!(Batch::micro_ranges(2, 4), vec![0..1, 1..2]);
    assert_eq!(Batch::micro_ranges(5, 1), vec![0..5]);
    assert_eq!(Batch::micro_ranges(5, 0), vec![0..5]);
    let b = Batch {
        x: (0..12).map(|v| v as f32).collect(),
        y: vec![7, 8, 9],
        n: 3,
    };
    let mid = b.examples(1..2);
    assert_eq!(mid.x, vec![4.0, 5.0, 6.0, 7.0]);
    assert_eq!(mid.y, vec![8]);
    assert_eq!(mid.n, 1);
    let parts: Vec<Batch> = Batch::micro_ranges(3, 2)
        .into_iter()
        .map(|r| b.examples(r))
        .collect();
    let x: Vec<f32> = parts.iter().flat_map(|p| p.x.clone()).collect();
    assert_eq!(x, b.x);
}

#[test]
fn grad_accum_zero_is_refused_naming_the_field() {
    let e = Trainer::new(CpuBackend::new(), digits_cfg(OptimizerKind::Sgd, 8, 0))
        .err()
        .expect("grad_accum 0 must be refused");
    let msg = e.to_string();
    assert!(msg.contains("grad_accum"), "{msg}");
}

#[test]
fn the_command_takes_grad_accum() {
    let out_dir = std::env::temp_dir().join(format!("ire-grad-accum-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let data: PathBuf = common::root().join("data/digits.csv.gz");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ire"))
        .args(["train", "--model", "mlp-small", "--dataset", "digits"])
        .arg("--data")
        .arg(&data)
        .args(["--optimizer", "sgd", "--steps", "3", "--batch-size", "4"])
        .args(["--grad-accum", "3", "--backend", "cpu", "--quiet", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("3 steps of batch 12 (3 micro-batches of 4)"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}

//! Every model family and every optimizer trains on the device backends and tracks the CPU
//! backend: for each of the seven small presets (AdmIRE; the language models on the text
//! shipped in `data/`), and for each of the six optimizers on `mlp-small` and `resnet-small`,
//! the loss and gradient at θ₀, the parameters after one step and a 50-step loss curve are
//! within `ire_models::crosscheck::BOUNDS`; and `ire train --backend opencl|cuda` runs every
//! preset through the command. OpenCL runs on PoCL in the test command; the CUDA tests run
//! only on a machine with a GPU (`scripts/gpu-check.sh`).
//!
//! Without a device each test prints a skip line and passes, unless `IRE_REQUIRE` names the
//! backend (the test command sets `opencl`; the GPU check sets `cuda`).
#![cfg(any(feature = "opencl", feature = "cuda"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ire_backend_cpu::CpuBackend;
use ire_models::crosscheck::{SMALL_PRESETS, check_config, check_model, default_text};
use ire_models::nn::NnOps;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[cfg(feature = "opencl")]
fn opencl(test: &str) -> Option<ire_backend_opencl::OpenClBackend> {
    let b = ire_backend_opencl::optional().unwrap();
    if b.is_none() {
        println!("skipped {test}: no OpenCL device");
    }
    b
}

#[cfg(feature = "cuda")]
fn cuda(test: &str) -> Option<ire_backend_cuda::CudaBackend> {
    let required = std::env::var("IRE_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim().eq_ignore_ascii_case("cuda"));
    match ire_backend_cuda::from_env() {
        Ok(b) => Some(b),
        Err(e) if required => panic!("IRE_REQUIRE names cuda but no GPU is usable: {e}"),
        Err(e) => {
            println!("skipped {test}: {e}");
            None
        }
    }
}

/// The presets to check, all of them: the language models train on the text shipped in
/// `data/`.
fn presets() -> Vec<(&'static str, PathBuf)> {
    let text = default_text(&root());
    SMALL_PRESETS.iter().map(|&m| (m, text.clone())).collect()
}

fn tracks_the_cpu_backend<D: NnOps + 'static>(open: impl Fn() -> D) {
    let mut failures = Vec::new();
    let all = presets();
    assert_eq!(all.len(), 7, "every small preset");
    for (model, text) in all {
        let cfg = check_config(model, &root(), &text);
        let c = check_model(CpuBackend::new(), open(), &cfg, 50).unwrap();
        println!(
            "{model} ({} params): loss {:.6} vs {:.6} (rel {:.1e}), grad rel {:.1e}, \
             1-step share {:.1e} (max |Δθ| {:.1e}), 50-step curve rel {:.1e} (bound {:.1e}{})",
            c.params,
            c.loss.0,
            c.loss.1,
            c.loss_rel(),
            c.grad_rel,
            c.step_fraction,
            c.step_max_abs,
            c.curve_rel(),
            c.curve_limit(),
            c.control_rel()
                .map(|v| format!("; the CPU backend against itself one ulp away: {v:.1e}"))
                .unwrap_or_default()
        );
        if !c.violations().is_empty() {
            failures.push(format!("{model}: {:?}", c.violations()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Every optimizer of the trainer (SGD, SGD-IRE, SAM, SAM-IRE, AdamW, AdmIRE) trains a
/// fully connected and a convolutional preset on the device within the bounds of the CPU
/// backend: loss and gradient at θ₀, θ after one step, a 50-step loss curve.
fn every_optimizer_tracks_the_cpu_backend<D: NnOps + 'static>(open: impl Fn() -> D) {
    use ire_models::train::OptimizerKind as K;
    let mut failures = Vec::new();
    for model in ["mlp-small", "resnet-small"] {
        for kind in [K::Sgd, K::SgdIre, K::Sam, K::SamIre, K::Adamw, K::Admire] {
            let mut cfg = check_config(model, &root(), &default_text(&root()));
            cfg.optimizer = kind;
            if !matches!(kind, K::Adamw | K::Admire) {
                // SGD's usual scale: lr 0.05, momentum 0.9 (weight decay 0.01 as configured).
                cfg.lr = 0.05;
                cfg.opt.momentum = 0.9;
            }
            let c = check_model(CpuBackend::new(), open(), &cfg, 50).unwrap();
            println!(
                "{model} {kind}: loss rel {:.1e}, grad rel {:.1e}, 1-step share {:.1e} (max \
                 |Δθ| {:.1e}), 50-step curve rel {:.1e} (final loss {:.4})",
                c.loss_rel(),
                c.grad_rel,
                c.step_fraction,
                c.step_max_abs,
                c.curve_rel(),
                c.curves.1.last().copied().unwrap_or(f64::NAN)
            );
            // Each run trains: the loss of its last 10 steps is below that of its first 10.
            let head: f64 = c.curves.1[..10].iter().sum();
            let tail: f64 = c.curves.1[c.curves.1.len() - 10..].iter().sum();
            if tail >= head || tail.is_nan() {
                failures.push(format!(
                    "{model} {kind}: the loss did not fall ({head} -> {tail})"
                ));
            }
            if !c.violations().is_empty() {
                failures.push(format!("{model} {kind}: {:?}", c.violations()));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn ire_train_runs_every_small_preset(backend: &str) {
    for (model, text) in presets() {
        let out = std::env::temp_dir().join(format!(
            "ire-device-train-{backend}-{model}-{}",
            std::process::id()
        ));
        let cfg = check_config(model, &root(), &text);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ire"));
        cmd.args(["train", "--backend", backend, "--quiet", "--model", model])
            .args(["--optimizer", "admire", "--steps", "4", "--batch-size", "8"])
            .args(["--refresh-every", "2", "--eval-batches", "1"])
            .arg("--data")
            .arg(&cfg.data)
            .arg("--out")
            .arg(&out);
        if cfg.dataset != ire_models::train::DatasetKind::Text {
            cmd.args(["--dataset", "digits", "--test-limit", "64"]);
        } else {
            cmd.args([
                "--dataset",
                "text",
                "--tokenizer",
                "char",
                "--context",
                "16",
            ]);
        }
        let o = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{model}: {stderr}\n{stdout}");
        assert!(
            stderr.contains(&format!("backend: {backend}")),
            "{model}: {stderr}"
        );
        assert!(stdout.contains("steps 4 (finished)"), "{model}: {stdout}");
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[cfg(feature = "opencl")]
#[test]
fn every_small_preset_tracks_the_cpu_backend_on_opencl() {
    let test = "every_small_preset_tracks_the_cpu_backend_on_opencl";
    if let Some(cl) = opencl(test) {
        tracks_the_cpu_backend(|| cl.clone());
    }
}

#[cfg(feature = "opencl")]
#[test]
fn every_optimizer_tracks_the_cpu_backend_on_opencl() {
    if let Some(cl) = opencl("every_optimizer_tracks_the_cpu_backend_on_opencl") {
        every_optimizer_tracks_the_cpu_backend(|| cl.clone());
    }
}

#[cfg(feature = "cuda")]
#[test]
fn every_optimizer_tracks_the_cpu_backend_on_cuda() {
    let test = "every_optimizer_tracks_the_cpu_backend_on_cuda";
    if cuda(test).is_some() {
        every_optimizer_tracks_the_cpu_backend(|| cuda(test).unwrap());
    }
}

#[cfg(feature = "opencl")]
#[test]
fn ire_train_runs_every_small_preset_on_opencl() {
    let test = "ire_train_runs_every_small_preset_on_opencl";
    if opencl(test).is_some() {
        ire_train_runs_every_small_preset("opencl");
    }
}

#[cfg(feature = "cuda")]
#[test]
fn every_small_preset_tracks_the_cpu_backend_on_cuda() {
    let test = "every_small_preset_tracks_the_cpu_backend_on_cuda";
    if cuda(test).is_some() {
        tracks_the_cpu_backend(|| cuda(test).unwrap());
    }
}

#[cfg(feature = "cuda")]
#[test]
fn ire_train_runs_every_small_preset_on_cuda() {
    let test = "ire_train_runs_every_small_preset_on_cuda";
    if cuda(test).is_some() {
        ire_train_runs_every_small_preset("cuda");
    }
}

/// A token id outside the vocabulary fails the step with an error naming it, before anything
/// reaches the device (the device embedding could only produce NaN), and leaves θ as it was.
fn bad_token_id_is_an_error<D: NnOps + 'static>(b: D) {
    use ire_models::text::{CharTokenizer, TokenBatches};
    use ire_models::train::source::Source;
    use ire_models::train::{DatasetKind, OptimizerKind, TrainConfig, TrainError, Trainer};
    let tok = CharTokenizer::fit("abcdefgh");
    let vocab = 8;
    let (ctx, batch) = (4, 2);
    // Every window holds the bad id (the inputs are checked before the labels would be).
    let ids = vec![vocab + 3; 64];
    let src = Source::Text {
        train: TokenBatches::new(ids.clone(), ctx, batch, 0).unwrap(),
        val: TokenBatches::new(ids, ctx, batch, 0).unwrap(),
        tokenizer: Box::new(tok),
    };
    let cfg = TrainConfig {
        model: "llama-tiny".into(),
        dataset: DatasetKind::Text,
        context: ctx,
        batch_size: batch,
        optimizer: OptimizerKind::Admire,
        steps: 1,
        ..TrainConfig::default()
    };
    let mut t = Trainer::with_source(b, cfg, src).unwrap();
    let before = t.params_host().unwrap();
    let err = t.train_step().unwrap_err();
    assert!(
        matches!(err, TrainError::Core(ire_core::Error::InvalidInput { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("token id 11"), "{err}");
    assert_eq!(t.params_host().unwrap(), before);
}

#[test]
fn bad_token_id_is_an_error_on_the_cpu_backend() {
    bad_token_id_is_an_error(CpuBackend::new());
}

#[cfg(feature = "opencl")]
#[test]
fn bad_token_id_is_an_error_on_opencl() {
    if let Some(b) = opencl("bad_token_id_is_an_error_on_opencl") {
        bad_token_id_is_an_error(b);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn bad_token_id_is_an_error_on_cuda() {
    if let Some(b) = cuda("bad_token_id_is_an_error_on_cuda") {
        bad_token_id_is_an_error(b);
    }
}

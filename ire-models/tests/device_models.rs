//! Every model family trains on the device backends and tracks the CPU backend: for each
//! small preset, the loss and gradient at θ₀, the parameters after one AdmIRE step and a
//! 50-step loss curve are within `ire_models::crosscheck::BOUNDS`; and `ire train --backend
//! opencl|cuda` runs every preset through the command. OpenCL runs on PoCL in CI; the CUDA
//! tests run on a GPU machine (`scripts/gpu-check.sh`).
//!
//! Without a device each test prints a skip line and passes, unless `IRE_REQUIRE` names the
//! backend (the test command sets `opencl`; the GPU check sets `cuda`).
#![cfg(any(feature = "opencl", feature = "cuda"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ire_backend_cpu::CpuBackend;
use ire_models::crosscheck::{
    SMALL_PRESETS, check_config, check_model, default_text, is_language_model,
};
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

/// The presets to check: language models need the shared text corpora.
fn presets(test: &str) -> Vec<(&'static str, PathBuf)> {
    let text = default_text(&root());
    SMALL_PRESETS
        .iter()
        .filter_map(|&m| {
            let lm = is_language_model(m);
            match (&text, lm) {
                (None, true) => {
                    println!("skipped {test} for {m}: the shared text corpora are not beside the repository");
                    None
                }
                (t, _) => Some((m, t.clone().unwrap_or_default())),
            }
        })
        .collect()
}

fn tracks_the_cpu_backend<D: NnOps + 'static>(open: impl Fn() -> D, test: &str) {
    let mut failures = Vec::new();
    for (model, text) in presets(test) {
        let cfg = check_config(model, &root(), &text);
        let c = check_model(CpuBackend::new(), open(), &cfg, 50).unwrap();
        println!(
            "{model} ({} params): loss {:.6} vs {:.6} (rel {:.1e}), grad rel {:.1e}, \
             1-step share {:.1e} (max |Δθ| {:.1e}), 50-step curve rel {:.1e}",
            c.params,
            c.loss.0,
            c.loss.1,
            c.loss_rel(),
            c.grad_rel,
            c.step_fraction,
            c.step_max_abs,
            c.curve_rel()
        );
        if !c.violations().is_empty() {
            failures.push(format!("{model}: {:?}", c.violations()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn ire_train_runs_every_small_preset(backend: &str, test: &str) {
    for (model, text) in presets(test) {
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
        if text.as_os_str().is_empty() || cfg.dataset != ire_models::train::DatasetKind::Text {
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
        tracks_the_cpu_backend(|| cl.clone(), test);
    }
}

#[cfg(feature = "opencl")]
#[test]
fn ire_train_runs_every_small_preset_on_opencl() {
    let test = "ire_train_runs_every_small_preset_on_opencl";
    if opencl(test).is_some() {
        ire_train_runs_every_small_preset("opencl", test);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn every_small_preset_tracks_the_cpu_backend_on_cuda() {
    let test = "every_small_preset_tracks_the_cpu_backend_on_cuda";
    if cuda(test).is_some() {
        tracks_the_cpu_backend(|| cuda(test).unwrap(), test);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn ire_train_runs_every_small_preset_on_cuda() {
    let test = "ire_train_runs_every_small_preset_on_cuda";
    if cuda(test).is_some() {
        ire_train_runs_every_small_preset("cuda", test);
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

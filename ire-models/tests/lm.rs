//! A short language-model run on a real corpus: the loss falls, sampling and the sharpness
//! meter work on its checkpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use ire_backend_cpu::CpuBackend;
use ire_models::train::{DatasetKind, OptimizerKind, TrainConfig, Trainer};

mod common;

/// The full *Moby Dick* of the shared data folder (a skip when absent, a failure under
/// `IRE_REQUIRE=data`).
fn corpus(test: &str) -> Option<PathBuf> {
    common::shared_data("text/moby-dick.txt", test)
}

fn cfg(text: PathBuf, opt: OptimizerKind) -> TrainConfig {
    let mut c = TrainConfig {
        model: "llama-tiny".into(),
        dataset: DatasetKind::Text,
        data: text,
        tokenizer: "char".into(),
        context: 32,
        batch_size: 8,
        optimizer: opt,
        lr: 3e-3,
        steps: 60,
        warmup_steps: 5,
        eval_batches: 4,
        seed: 1,
        ..TrainConfig::default()
    };
    c.opt.beta2 = 0.95;
    c.opt.weight_decay = 0.1;
    c.opt.refresh_every = 10;
    c
}

#[test]
fn lm_loss_falls_with_adamw_and_admire() {
    let Some(text) = corpus("lm_loss_falls_with_adamw_and_admire") else {
        return;
    };
    for opt in [OptimizerKind::Adamw, OptimizerKind::Admire] {
        let mut t = Trainer::new(CpuBackend::new(), cfg(text.clone(), opt)).unwrap();
        let first = t.evaluate().unwrap();
        let mut refreshes = 0;
        for _ in 0..60 {
            let m = t.train_step().unwrap();
            refreshes += m.refreshed as usize;
        }
        let last = t.evaluate().unwrap();
        println!(
            "{opt}: validation loss {:.3} -> {:.3}",
            first.loss, last.loss
        );
        // A uniform guess over the character vocabulary costs ln(V) ≈ 4.4 nats; 60 steps must
        // take at least 1.3 nats off (the unigram entropy of English text is about 3.1).
        assert!(first.loss > 4.0, "{}", first.loss);
        assert!(
            last.loss < first.loss - 1.3,
            "{opt}: {} -> {}",
            first.loss,
            last.loss
        );
        assert_eq!(refreshes, if opt.is_ire() { 6 } else { 0 });
    }
}

#[test]
fn sample_and_sharpness_commands() {
    let Some(text) = corpus("sample_and_sharpness_commands") else {
        return;
    };
    let out = std::env::temp_dir().join(format!("ire-lm-{}", std::process::id()));
    let ire = env!("CARGO_BIN_EXE_ire");
    let st = Command::new(ire)
        .args([
            "train",
            "--model",
            "llama-tiny",
            "--dataset",
            "text",
            "--data",
            text.to_str().unwrap(),
            "--tokenizer",
            "char",
            "--context",
            "16",
            "--batch-size",
            "4",
            "--steps",
            "5",
            "--optimizer",
            "admire",
            "--lr",
            "0.003",
            "--eval-batches",
            "2",
            "--quiet",
            "--backend",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(String::from_utf8_lossy(&st.stdout).contains("tokens/s"));
    let ck = out.join("checkpoint.irec");
    let s = Command::new(ire)
        .args([
            "sample",
            ck.to_str().unwrap(),
            "--prompt",
            "Call me",
            "--tokens",
            "20",
            "--backend",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let text_out = String::from_utf8_lossy(&s.stdout);
    assert!(text_out.starts_with("Call me"));
    assert_eq!(
        text_out.trim_end_matches('\n').chars().count(),
        "Call me".len() + 20
    );
    let json = out.join("sharpness.json");
    let h = Command::new(ire)
        .args([
            "sharpness",
            ck.to_str().unwrap(),
            "--batches",
            "1",
            "--probes",
            "3",
            "--lanczos-steps",
            "3",
            "--backend",
            "cpu",
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(h.status.success(), "{}", String::from_utf8_lossy(&h.stderr));
    assert!(String::from_utf8_lossy(&h.stdout).contains("Tr(H)"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["lambda_max"].as_f64().unwrap().is_finite());
    // Sampling an image checkpoint is a clear error.
    let bad = Command::new(ire)
        .args(["sample", "/nonexistent.irec"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

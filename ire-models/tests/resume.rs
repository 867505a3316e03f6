//! Resuming from a checkpoint continues to the bit-identical result of an uninterrupted run,
//! through the library (on the CPU backend and on OpenCL) and through the `ire` command;
//! broken checkpoints are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use ire_backend_cpu::CpuBackend;
use ire_models::nn::NnOps;
use ire_models::train::run::{
    RunOptions, check_resumable, checkpoint_path, read_checkpoint, restore, run,
};
use ire_models::train::{DatasetKind, OptimizerKind, TrainConfig, Trainer};

fn digits() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ire-resume-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn cfg(opt: OptimizerKind) -> TrainConfig {
    let mut c = TrainConfig {
        model: "resnet-small".into(),
        dataset: DatasetKind::Digits,
        data: digits(),
        optimizer: opt,
        lr: 0.05,
        steps: 14,
        batch_size: 16,
        train_limit: 200,
        test_limit: 50,
        seed: 3,
        log_every: 2,
        eval_every: 6,
        ..TrainConfig::default()
    };
    c.opt.refresh_every = 4;
    c
}

/// An uninterrupted run and one stopped after 7 steps and resumed from its checkpoint file in a
/// fresh trainer end with the same bits (parameters, model state, optimizer state, metrics),
/// on the backend `make` opens.
fn resume_is_bit_identical_on<B: NnOps + 'static>(make: impl Fn() -> B, backend: &str) {
    for opt in [OptimizerKind::SamIre, OptimizerKind::Admire] {
        let stop = AtomicBool::new(false);
        // Uninterrupted.
        let out_a = tmp(&format!("a-{backend}-{opt}"));
        let mut a = Trainer::new(make(), cfg(opt)).unwrap();
        let sa = run(
            &mut a,
            &RunOptions {
                out_dir: out_a.clone(),
                progress: false,
                stop_after: None,
                overwrite: false,
            },
            None,
            &stop,
        )
        .unwrap();
        assert!(sa.finished);
        // Interrupted after 7 steps (mid-way between refreshes and evaluations), then resumed
        // in a fresh trainer from the checkpoint file.
        let out_b = tmp(&format!("b-{backend}-{opt}"));
        let mut b1 = Trainer::new(make(), cfg(opt)).unwrap();
        let s1 = run(
            &mut b1,
            &RunOptions {
                out_dir: out_b.clone(),
                progress: false,
                stop_after: Some(7),
                overwrite: false,
            },
            None,
            &stop,
        )
        .unwrap();
        assert!(!s1.finished);
        assert_eq!(s1.steps, 7);
        let (ck, ck_cfg, meta) = read_checkpoint(&checkpoint_path(&out_b)).unwrap();
        check_resumable(&ck_cfg, &cfg(opt)).unwrap();
        let mut b2 = Trainer::new(make(), cfg(opt)).unwrap();
        restore(&mut b2, &ck, &meta).unwrap();
        let pos = ire_models::train::run::metrics_position(&meta);
        assert_eq!(
            pos.window_loss.len(),
            1,
            "step 7 is inside a logging window"
        );
        let s2 = run(
            &mut b2,
            &RunOptions {
                out_dir: out_b.clone(),
                progress: false,
                stop_after: None,
                overwrite: false,
            },
            Some(pos),
            &stop,
        )
        .unwrap();
        assert!(s2.finished);
        let (pa, pb) = (a.params_host().unwrap(), b2.params_host().unwrap());
        assert!(
            pa.iter().zip(&pb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{backend} {opt}: parameters differ after resume"
        );
        assert_eq!(
            a.model_state_host().unwrap(),
            b2.model_state_host().unwrap()
        );
        assert_eq!(a.optimizer_state().unwrap(), b2.optimizer_state().unwrap());
        // The metrics files agree except for timings.
        let strip = |p: &PathBuf| -> Vec<serde_json::Value> {
            ire_models::artifacts::metrics::read_jsonl(&p.join("metrics.jsonl"))
                .unwrap()
                .into_iter()
                .map(|mut v| {
                    v.as_object_mut().unwrap().remove("images_per_sec");
                    v
                })
                .collect()
        };
        assert_eq!(strip(&out_a), strip(&out_b));
        // A different configuration is refused.
        let mut other = cfg(opt);
        other.lr = 0.1;
        let e = check_resumable(&ck_cfg, &other).unwrap_err().to_string();
        assert!(e.contains("lr"), "{e}");
        let _ = std::fs::remove_dir_all(&out_a);
        let _ = std::fs::remove_dir_all(&out_b);
    }
}

#[test]
fn resume_is_bit_identical() {
    resume_is_bit_identical_on(CpuBackend::new, "cpu");
}

/// Device sums have a fixed order (no float atomics), so a device run resumes to the same bits
/// as well.
#[cfg(feature = "opencl")]
#[test]
fn resume_is_bit_identical_on_opencl() {
    if let Some(cl) = common::opencl("resume_is_bit_identical_on_opencl") {
        resume_is_bit_identical_on(|| cl.clone(), "opencl");
    }
}

#[test]
fn corrupt_checkpoints_are_refused() {
    let stop = AtomicBool::new(false);
    let out = tmp("corrupt");
    let mut t = Trainer::new(CpuBackend::new(), cfg(OptimizerKind::SgdIre)).unwrap();
    run(
        &mut t,
        &RunOptions {
            out_dir: out.clone(),
            progress: false,
            stop_after: Some(3),
            overwrite: false,
        },
        None,
        &stop,
    )
    .unwrap();
    let path = checkpoint_path(&out);
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert!(read_checkpoint(&path).is_err(), "truncated at {cut}");
    }
    let mut flipped = bytes.clone();
    let i = flipped.len() / 3;
    flipped[i] ^= 0x40;
    std::fs::write(&path, &flipped).unwrap();
    assert!(read_checkpoint(&path).is_err());
    // A checkpoint of another model does not restore into this one.
    std::fs::write(&path, &bytes).unwrap();
    let (ck, _, meta) = read_checkpoint(&path).unwrap();
    let mut other = cfg(OptimizerKind::SgdIre);
    other.model = "mlp-small".into();
    let mut t2 = Trainer::new(CpuBackend::new(), other).unwrap();
    let before = t2.params_host().unwrap();
    assert!(restore(&mut t2, &ck, &meta).is_err());
    assert_eq!(
        t2.params_host().unwrap(),
        before,
        "a refused restore changes nothing"
    );
}

#[test]
fn resume_through_the_command() {
    let ire = env!("CARGO_BIN_EXE_ire");
    let d = digits();
    let common = |out: &PathBuf| -> Vec<String> {
        [
            "train",
            "--model",
            "mlp-small",
            "--dataset",
            "digits",
            "--data",
            d.to_str().unwrap(),
            "--optimizer",
            "admire",
            "--lr",
            "0.002",
            "--steps",
            "30",
            "--batch-size",
            "32",
            "--refresh-every",
            "4",
            "--seed",
            "5",
            "--quiet",
            "--backend",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = tmp("cli-a");
    let st = Command::new(ire).args(common(&a)).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let b = tmp("cli-b");
    let st = Command::new(ire)
        .args(common(&b))
        .args(["--stop-after", "11"])
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(4), "an interrupted run exits with 4");
    let ck = checkpoint_path(&b);
    let st = Command::new(ire)
        .args(common(&b))
        .args(["--resume", ck.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let wa = ire_models::artifacts::safetensors::import(&a.join("weights.safetensors")).unwrap();
    let wb = ire_models::artifacts::safetensors::import(&b.join("weights.safetensors")).unwrap();
    assert_eq!(wa.len(), 4);
    for ((na, sa, va), (nb, sb, vb)) in wa.iter().zip(&wb) {
        assert_eq!((na, sa), (nb, sb));
        assert!(
            va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{na}"
        );
    }
    // eval on the checkpoint reports the same accuracy as the run's last line.
    let st = Command::new(ire)
        .args([
            "eval",
            checkpoint_path(&a).to_str().unwrap(),
            "--backend",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(st.status.success());
    let out = String::from_utf8_lossy(&st.stdout);
    assert!(out.starts_with("step 30: test loss"), "{out}");
    // Bad flags are clear errors.
    let st = Command::new(ire)
        .args(["train", "--optimizer", "adam"])
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&st.stderr).contains("adam"));
    let st = Command::new(ire)
        .args([
            "train",
            "--model",
            "mlp",
            "--lr=-3",
            "--dataset",
            "digits",
            "--data",
            d.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&st.stderr).contains("`lr`"));
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_exits() {
    let out = tmp("sigint");
    let d = digits();
    let child = Command::new(env!("CARGO_BIN_EXE_ire"))
        .args([
            "train",
            "--model",
            "mlp-small",
            "--dataset",
            "digits",
            "--data",
            d.to_str().unwrap(),
            "--optimizer",
            "sgd-ire",
            "--steps",
            "100000000",
            "--batch-size",
            "8",
            "--log-every",
            "5",
            "--quiet",
            "--backend",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) until training is under way, then send SIGINT as Ctrl-C does.
    let metrics = out.join("metrics.jsonl");
    for _ in 0..600 {
        if std::fs::read_to_string(&metrics)
            .map(|s| s.lines().count() >= 3)
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let res = child.wait_with_output().unwrap();
    assert_eq!(
        res.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(String::from_utf8_lossy(&res.stdout).contains("interrupted"));
    let (_, cfg, meta) = read_checkpoint(&checkpoint_path(&out)).unwrap();
    assert!(meta["step"].as_u64().unwrap() >= 15);
    assert_eq!(cfg.steps, 100_000_000);
}

//! Parameter groups from the model's layout: by default no weight decay on norms, biases and
//! embeddings, decay on the rest; `decay_all` (`--decay-all`) decays everything, as the
//! official scripts do. Checked exactly after one step (the first gradient does not depend on
//! the weight decay): a tensor without decay is bit-identical to a run without any weight
//! decay, a tensor with decay is not; on the CPU backend (parts lent in place) and on OpenCL
//! (parts copied), for AdamW, AdmIRE, SGD and SAM-IRE, on a plain network, a batch-norm ResNet
//! and a transformer with tied embeddings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cpu::CpuBackend;
use ire_models::nn::NnOps;
use ire_models::train::{OptimizerKind, TrainConfig, Trainer};

mod common;

fn cfg(model: &str, opt: OptimizerKind, wd: f64, decay_all: bool) -> TrainConfig {
    let mut c = TrainConfig {
        lr: 0.05,
        steps: 3,
        batch_size: 16,
        crop_padding: Some(0),
        seed: 4,
        decay_all,
        ..common::shipped_data_cfg(model, opt)
    };
    c.opt.weight_decay = wd;
    c.opt.refresh_every = 1;
    c
}

/// Per tensor of the layout: (name, takes decay by default, its values after one step).
fn one_step<B: NnOps + 'static>(b: B, c: TrainConfig) -> Vec<(String, bool, Vec<f32>)> {
    let mut t = Trainer::new(b, c).unwrap();
    t.train_step().unwrap();
    let p = t.params_host().unwrap();
    let layout = t.model().layout();
    layout
        .slots
        .iter()
        .zip(&layout.decay)
        .map(|(s, &d)| {
            let v = p[s.off..s.off + s.len()].to_vec();
            (s.name.clone(), d, v)
        })
        .collect()
}

/// Whether two tensors are the same: bit for bit, or for SAM within 1e-5 relative. SAM's
/// perturbation divides by the norm of the whole gradient, which the groups add up part by
/// part: the same sum in another order.
fn same(a: &[f32], b: &[f32], sam: bool) -> bool {
    if !sam {
        return a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    }
    let scale = a.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * scale)
}

fn check<B: NnOps + Clone + 'static>(b: &B, model: &str, opt: OptimizerKind) {
    let none = one_step(b.clone(), cfg(model, opt, 0.0, false));
    let grouped = one_step(b.clone(), cfg(model, opt, 0.3, false));
    let all = one_step(b.clone(), cfg(model, opt, 0.3, true));
    let sam = opt.is_sam();
    let (mut with, mut without, mut moved_by_decay_all) = (0, 0, 0);
    for (i, (name, decay, v0)) in none.iter().enumerate() {
        let (vg, va) = (&grouped[i].2, &all[i].2);
        if *decay {
            with += 1;
            assert!(
                !same(v0, vg, sam),
                "{model} {opt}: {name} takes weight decay"
            );
            assert!(
                same(vg, va, sam),
                "{model} {opt}: {name} decays alike in both settings"
            );
        } else {
            without += 1;
            assert!(
                same(v0, vg, sam),
                "{model} {opt}: {name} takes no weight decay by default"
            );
            // With decay_all it decays too (a tensor that starts at zero stays put either way).
            moved_by_decay_all += usize::from(!same(v0, va, sam));
        }
    }
    assert!(with > 0 && without > 0, "{model}: {with} / {without}");
    assert!(
        moved_by_decay_all > 0,
        "{model} {opt}: decay_all decays the others too"
    );
    println!(
        "{model} {opt}: {with} tensors with decay, {without} without ({moved_by_decay_all} of \
         them moved by decay_all)"
    );
}

#[test]
fn norms_biases_and_embeddings_take_no_decay_on_the_cpu() {
    let b = CpuBackend::new();
    for opt in [
        OptimizerKind::Adamw,
        OptimizerKind::Admire,
        OptimizerKind::Sgd,
        OptimizerKind::SamIre,
    ] {
        check(&b, "mlp-small", opt);
    }
    check(&b, "resnet-small", OptimizerKind::SgdIre);
    check(&b, "gpt-nano", OptimizerKind::Admire);
}

#[cfg(feature = "opencl")]
#[test]
fn norms_biases_and_embeddings_take_no_decay_on_opencl() {
    let Some(b) = common::opencl("norms_biases_and_embeddings_take_no_decay_on_opencl") else {
        return;
    };
    check(&b, "mlp-small", OptimizerKind::Admire);
    check(&b, "resnet-small", OptimizerKind::SgdIre);
}

#[test]
fn a_checkpoint_from_before_the_groups_reads_as_decay_all() {
    use ire_models::artifacts::checkpoint;
    use ire_models::train::run::{RunOptions, read_checkpoint};
    let dir = std::env::temp_dir().join(format!("ire-groups-old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = cfg("mlp-small", OptimizerKind::Adamw, 0.3, true);
    c.steps = 2;
    let mut t = Trainer::new(CpuBackend::new(), c).unwrap();
    let opts = RunOptions {
        out_dir: dir.clone(),
        ..RunOptions::default()
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    ire_models::train::run::run(&mut t, &opts, None, &stop).unwrap();
    let path = ire_models::train::run::checkpoint_path(&dir);
    // The same checkpoint as an older version wrote it: no `decay_all` in its configuration.
    let mut ck = checkpoint::read(&path).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(&ck.meta).unwrap();
    meta["config"].as_object_mut().unwrap().remove("decay_all");
    ck.meta = meta.to_string();
    checkpoint::write_atomic(&path, &ck).unwrap();
    let (_, cfg, _) = read_checkpoint(&path).unwrap();
    assert!(
        cfg.decay_all,
        "a run from before the groups decayed every parameter"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! A whole training run: the step loop with progress, metrics as JSON lines, evaluation,
//! atomic checkpoints (periodic, final, and on Ctrl-C), resumption to the bit-identical result,
//! loss/accuracy plots and the final weights as safetensors.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ire_core::state::StateDict;
use serde_json::json;

use super::config::TrainConfig;
use super::trainer::{EvalMetrics, TrainError, Trainer};
use crate::artifacts::{self, ArtifactError, Checkpoint, MetricsWriter, Series};
use crate::nn::NnOps;

/// Version of the checkpoint metadata layout written by [`checkpoint`].
pub const CHECKPOINT_META_VERSION: u32 = 1;

impl From<ArtifactError> for TrainError {
    fn from(e: ArtifactError) -> Self {
        TrainError::Config(e.to_string())
    }
}

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Output folder (metrics, plots, checkpoints, weights).
    pub out_dir: PathBuf,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Stop (with a checkpoint) after this many steps of THIS invocation; for tests and for
    /// splitting a long run.
    pub stop_after: Option<u64>,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Steps taken in total (including before a resume).
    pub steps: u64,
    /// Whether the run reached its last step (false: interrupted, checkpoint written).
    pub finished: bool,
    /// Mean training loss over the last logged interval.
    pub train_loss: f64,
    /// Test metrics at the end (when finished).
    pub eval: Option<EvalMetrics>,
    /// Wall time of this invocation, seconds.
    pub seconds: f64,
    /// Training images per second in this invocation.
    pub images_per_sec: f64,
    /// Seconds per epoch (at this throughput).
    pub seconds_per_epoch: f64,
    /// Files written (plots, checkpoint, weights).
    pub files: Vec<PathBuf>,
    /// What `images_per_sec` counts: `images` or `tokens`.
    pub unit: &'static str,
}

/// The checkpoint file of a run folder.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.irec")
}

/// Where the metrics stood at a checkpoint: lines written, and the partial logging window.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsPosition {
    /// Lines of `metrics.jsonl` written.
    pub lines: usize,
    /// Losses of the steps since the last logged line.
    pub window_loss: Vec<f64>,
    /// Accuracies of those steps.
    pub window_acc: Vec<f64>,
    /// Mask refreshes among those steps.
    pub window_refreshes: usize,
}

/// Everything needed to resume `t` exactly.
pub fn checkpoint<B: NnOps>(
    t: &Trainer<B>,
    metrics: &MetricsPosition,
) -> Result<Checkpoint, TrainError> {
    let opt: StateDict = t.optimizer_state()?;
    let meta = json!({
        "kind": "ire-train",
        "version": CHECKPOINT_META_VERSION,
        "step": t.step,
        "metrics": metrics,
        "model": t.cfg.model,
        "param_count": t.param_count(),
        "config": t.cfg,
    });
    let mut tensors = vec![("params".to_string(), t.params_host()?)];
    for (name, v) in t.model_state_host()? {
        tensors.push((format!("state/{name}"), v));
    }
    Ok(Checkpoint {
        meta: meta.to_string(),
        tensors,
        blobs: vec![("optimizer".into(), artifacts::checkpoint::encode(&opt)?)],
    })
}

/// Reads the config and the metadata of a checkpoint file.
pub fn read_checkpoint(
    path: &Path,
) -> Result<(Checkpoint, TrainConfig, serde_json::Value), TrainError> {
    let ck = artifacts::checkpoint::read(path)?;
    let meta: serde_json::Value = serde_json::from_str(&ck.meta).map_err(|e| {
        TrainError::Config(format!("{}: bad checkpoint metadata: {e}", path.display()))
    })?;
    if meta["kind"] != "ire-train" || meta["version"] != CHECKPOINT_META_VERSION {
        return Err(TrainError::Config(format!(
            "{}: not a training checkpoint of version {CHECKPOINT_META_VERSION} (found kind {}, version {})",
            path.display(),
            meta["kind"],
            meta["version"]
        )));
    }
    let cfg: TrainConfig = serde_json::from_value(meta["config"].clone()).map_err(|e| {
        TrainError::Config(format!("{}: bad config in checkpoint: {e}", path.display()))
    })?;
    Ok((ck, cfg, meta))
}

/// Restores `t` from a checkpoint taken of the same configuration (all-or-nothing).
pub fn restore<B: NnOps>(
    t: &mut Trainer<B>,
    ck: &Checkpoint,
    meta: &serde_json::Value,
) -> Result<(), TrainError> {
    let step = meta["step"]
        .as_u64()
        .ok_or_else(|| TrainError::Config("checkpoint without a step".into()))?;
    let params = ck
        .tensor("params")
        .ok_or_else(|| TrainError::Config("checkpoint without parameters".into()))?;
    let opt_blob = ck
        .blob("optimizer")
        .ok_or_else(|| TrainError::Config("checkpoint without optimizer state".into()))?;
    let opt: StateDict = artifacts::checkpoint::decode(opt_blob)?;
    let mut state = Vec::new();
    for (name, _) in t.model_state_host()? {
        let v = ck
            .tensor(&format!("state/{name}"))
            .ok_or_else(|| TrainError::Config(format!("checkpoint lacks model state `{name}`")))?;
        state.push((name, v.to_vec()));
    }
    t.restore_parts(step, params, &state, &opt)?;
    Ok(())
}

/// Settings that may differ between a checkpoint and the resuming run (they do not change
/// the trajectory).
fn same_trajectory(a: &TrainConfig, b: &TrainConfig) -> Result<(), String> {
    let norm = |c: &TrainConfig| TrainConfig {
        eval_every: 0,
        checkpoint_every: 0,
        log_every: 1,
        data: PathBuf::new(),
        ..c.clone()
    };
    let (x, y) = (
        serde_json::to_value(norm(a)).unwrap_or_default(),
        serde_json::to_value(norm(b)).unwrap_or_default(),
    );
    if x == y {
        return Ok(());
    }
    let mut diff = Vec::new();
    if let (Some(xo), Some(yo)) = (x.as_object(), y.as_object()) {
        for (k, v) in xo {
            if yo.get(k) != Some(v) {
                diff.push(format!(
                    "{k}: checkpoint {v}, now {}",
                    yo.get(k).cloned().unwrap_or_default()
                ));
            }
        }
    }
    Err(format!(
        "the checkpoint was taken with another configuration ({})",
        diff.join("; ")
    ))
}

/// Checks that a checkpoint's config can continue under `cfg`.
pub fn check_resumable(ck_cfg: &TrainConfig, cfg: &TrainConfig) -> Result<(), TrainError> {
    same_trajectory(ck_cfg, cfg).map_err(TrainError::Config)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The metrics position stored in a checkpoint's metadata.
pub fn metrics_position(meta: &serde_json::Value) -> MetricsPosition {
    serde_json::from_value(meta["metrics"].clone()).unwrap_or_default()
}

/// Runs `t` to its last step (or until `stop` is set / `opts.stop_after` steps); `resume` is
/// the metrics position of the checkpoint `t` was restored from.
pub fn run<B: NnOps>(
    t: &mut Trainer<B>,
    opts: &RunOptions,
    resume: Option<MetricsPosition>,
    stop: &AtomicBool,
) -> Result<RunSummary, TrainError> {
    let resume = resume.unwrap_or_default();
    let metrics_lines_at_start = resume.lines;
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| {
        TrainError::Config(format!("cannot create {}: {e}", opts.out_dir.display()))
    })?;
    let metrics_path = opts.out_dir.join("metrics.jsonl");
    // On resume keep exactly the lines written up to the checkpoint.
    let mut lines = if metrics_lines_at_start > 0 && metrics_path.exists() {
        artifacts::metrics::read_jsonl(&metrics_path)?
            .into_iter()
            .take(metrics_lines_at_start)
            .collect()
    } else {
        Vec::new()
    };
    {
        let mut w = MetricsWriter::create(&metrics_path, false)?;
        for l in &lines {
            w.write(l)?;
        }
    }
    let mut metrics = MetricsWriter::create(&metrics_path, true)?;
    let mut write =
        |v: serde_json::Value, lines: &mut Vec<serde_json::Value>| -> Result<(), TrainError> {
            metrics.write(&v)?;
            lines.push(v);
            Ok(())
        };
    let total = t.total_steps();
    let spe = t.steps_per_epoch();
    let bar = if opts.progress {
        let pb = indicatif::ProgressBar::new(total);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_position(t.step);
        Some(pb)
    } else {
        None
    };
    let unit = if matches!(t.data(), super::source::Source::Text { .. }) {
        "tokens"
    } else {
        "images"
    };
    let start = Instant::now();
    let start_step = t.step;
    let mut images = 0usize;
    let (mut win_loss, mut win_acc, mut win_refresh) = (
        resume.window_loss,
        resume.window_acc,
        resume.window_refreshes,
    );
    let mut last_loss = f64::NAN;
    let mut finished = true;
    let ck_path = checkpoint_path(&opts.out_dir);
    while t.step < total {
        if stop.load(Ordering::SeqCst) || opts.stop_after.is_some_and(|s| t.step - start_step >= s)
        {
            finished = false;
            break;
        }
        let m = t.train_step()?;
        images += m.n * t.model().rows_per_example();
        win_loss.push(m.loss);
        win_acc.push(m.acc);
        win_refresh += m.refreshed as usize;
        let s = m.step + 1;
        if s % t.cfg.log_every == 0 || s == total {
            let ips = images as f64 / start.elapsed().as_secs_f64().max(1e-9);
            last_loss = mean(&win_loss);
            write(
                json!({"kind": "train", "step": s, "epoch": m.epoch, "lr": m.lr, "loss": last_loss,
                       "acc": mean(&win_acc), "kappa": m.kappa, "refreshes": win_refresh, "images_per_sec": ips}),
                &mut lines,
            )?;
            if let Some(pb) = &bar {
                pb.set_message(format!(
                    "loss {last_loss:.4} acc {:.3} {ips:.0} {unit}/s",
                    mean(&win_acc)
                ));
            }
            win_loss.clear();
            win_acc.clear();
            win_refresh = 0;
        }
        if t.cfg.eval_every > 0 && s % t.cfg.eval_every == 0 && s < total {
            let e = t.evaluate()?;
            write(
                json!({"kind": "eval", "step": s, "epoch": s as f64 / spe as f64, "loss": e.loss, "acc": e.acc}),
                &mut lines,
            )?;
        }
        if t.cfg.checkpoint_every > 0 && s % t.cfg.checkpoint_every == 0 && s < total {
            let pos = MetricsPosition {
                lines: lines.len(),
                window_loss: win_loss.clone(),
                window_acc: win_acc.clone(),
                window_refreshes: win_refresh,
            };
            artifacts::checkpoint::write_atomic(&ck_path, &checkpoint(t, &pos)?)?;
        }
        if let Some(pb) = &bar {
            pb.set_position(t.step);
        }
    }
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    let seconds = start.elapsed().as_secs_f64();
    let images_per_sec = images as f64 / seconds.max(1e-9);
    let per_epoch = (t.data().train_examples() * t.model().rows_per_example()) as f64
        / images_per_sec.max(1e-9);
    let mut files = Vec::new();
    let mut eval = None;
    if finished {
        let e = t.evaluate()?;
        write(
            json!({"kind": "eval", "step": t.step, "epoch": t.step as f64 / spe as f64, "loss": e.loss, "acc": e.acc}),
            &mut lines,
        )?;
        eval = Some(e);
        files.extend(plots(&opts.out_dir, &lines, &t.cfg)?);
        let w = opts.out_dir.join("weights.safetensors");
        export_weights(t, &w)?;
        files.push(w);
    }
    let pos = MetricsPosition {
        lines: lines.len(),
        window_loss: win_loss,
        window_acc: win_acc,
        window_refreshes: win_refresh,
    };
    artifacts::checkpoint::write_atomic(&ck_path, &checkpoint(t, &pos)?)?;
    files.push(ck_path);
    Ok(RunSummary {
        steps: t.step,
        finished,
        train_loss: last_loss,
        eval,
        seconds,
        images_per_sec,
        seconds_per_epoch: per_epoch,
        files,
        unit,
    })
}

/// Writes the parameters (by tensor name and shape) and batch-norm statistics as safetensors.
pub fn export_weights<B: NnOps>(t: &Trainer<B>, path: &Path) -> Result<(), TrainError> {
    let p = t.params_host()?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = t
        .model()
        .layout()
        .slots
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.shape.clone(),
                p[s.off..s.off + s.len()].to_vec(),
            )
        })
        .collect();
    for (name, v) in t.model_state_host()? {
        tensors.push((name, vec![v.len()], v));
    }
    let meta = vec![
        ("model".to_string(), t.cfg.model.clone()),
        ("optimizer".to_string(), t.cfg.optimizer.to_string()),
        ("step".to_string(), t.step.to_string()),
    ];
    artifacts::safetensors::export(path, &tensors, &meta)?;
    Ok(())
}

/// Loss and accuracy curves (PNG and SVG) from the metrics lines.
pub fn plots(
    dir: &Path,
    lines: &[serde_json::Value],
    cfg: &TrainConfig,
) -> Result<Vec<PathBuf>, TrainError> {
    let series = |kind: &str, field: &str, label: &str| Series {
        label: label.into(),
        points: lines
            .iter()
            .filter(|l| l["kind"] == kind)
            .filter_map(|l| Some((l["step"].as_f64()?, l[field].as_f64()?)))
            .collect(),
    };
    let title = format!("{} / {} / {}", cfg.model, cfg.optimizer, cfg.dataset_name());
    let mut out = artifacts::plot::plot_curves(
        dir,
        "loss",
        &title,
        "step",
        "loss",
        &[
            series("train", "loss", "train loss"),
            series("eval", "loss", "test loss"),
        ],
        true,
    )?;
    out.extend(artifacts::plot::plot_curves(
        dir,
        "accuracy",
        &title,
        "step",
        "accuracy",
        &[
            series("train", "acc", "train accuracy"),
            series("eval", "acc", "test accuracy"),
        ],
        false,
    )?);
    Ok(out)
}

/// A trainer restored from a checkpoint file (for evaluation, sharpness, sampling);
/// `data` overrides the dataset location when it moved.
pub fn trainer_from_checkpoint<B: NnOps>(
    b: B,
    path: &Path,
    data: Option<PathBuf>,
) -> Result<Trainer<B>, TrainError> {
    let (ck, mut cfg, meta) = read_checkpoint(path)?;
    if let Some(d) = data {
        cfg.data = d;
    }
    let mut t = Trainer::new(b, cfg)?;
    restore(&mut t, &ck, &meta)?;
    Ok(t)
}

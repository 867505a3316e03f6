//! A whole training run: the step loop with progress, metrics as JSON lines, evaluation,
//! atomic checkpoints (periodic, final, and on Ctrl-C), resumption to the bit-identical result,
//! loss/accuracy plots and the final weights as safetensors.
//!
//! A run holds its folder ([`RunFolder`]) for its whole life; its history is only appended to
//! ([`History`]); a checkpoint is written only from a healthy state (finite parameters, model
//! and optimizer state, a finite loss at those parameters), so a divergence keeps the last good
//! checkpoint; every checkpoint records its data's [`DataFingerprint`], checked when restored.
//!
//! In a data-parallel group ([`Trainer::with_collective`]) rank 0 runs [`run_in`] and alone
//! writes the folder (metrics, plots, checkpoints, weights); the other ranks run
//! [`run_follower`], which takes the same steps and writes nothing. Both decide together when
//! to stop ([`Trainer::any_rank`]), so an interruption seen by one rank stops all at the same
//! step. A checkpoint holds nothing of any rank but rank 0's model and optimizer state, which
//! every rank shares (a sharded optimizer state is gathered whole first), so it resumes on any
//! number of ranks.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ire_core::state::StateDict;
use serde_json::json;

use super::config::TrainConfig;
use super::fingerprint::DataFingerprint;
use super::folder::{CHECKPOINT_FILE, Claim, METRICS_FILE, RunFolder, WEIGHTS_FILE};
use super::history::{self, History, HistoryMark};
use super::run_error::RunError;
use super::train_error::{FieldDifference, TrainError};
use super::trainer::{EvalMetrics, StepMetrics, Trainer};
use crate::artifacts::{self, Checkpoint, Series};
use crate::nn::NnOps;

/// Version of the checkpoint metadata layout written by [`checkpoint`]: 2 adds the history mark
/// and the data fingerprint. Version 1 is still read (its history is cut by line count).
pub const CHECKPOINT_META_VERSION: u32 = 2;

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
    /// A new run may replace a run found in `out_dir` (its files are removed when training
    /// starts).
    pub overwrite: bool,
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
    /// The checkpoint was of a finished run: nothing was done, nothing written; `train_loss`
    /// and `eval` are the history's last ones.
    pub already_finished: bool,
}

impl RunSummary {
    /// Nothing trained yet: `steps` taken before, no loss, no time, no file.
    fn untrained(steps: u64, unit: &'static str) -> Self {
        RunSummary {
            steps,
            finished: false,
            train_loss: f64::NAN,
            eval: None,
            seconds: 0.0,
            images_per_sec: 0.0,
            seconds_per_epoch: 0.0,
            files: Vec::new(),
            unit,
            already_finished: false,
        }
    }
}

/// The checkpoint file of a run folder.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join(CHECKPOINT_FILE)
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
    /// The history the checkpoint belongs to (absent in checkpoints of format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryMark>,
}

/// Everything needed to resume `t` exactly. Refused ([`RunError::NotFinite`]) when a
/// parameter, a model state value or an optimizer state value is not finite: a diverged state
/// is never saved.
pub fn checkpoint<B: NnOps>(
    t: &Trainer<B>,
    metrics: &MetricsPosition,
) -> Result<Checkpoint, TrainError> {
    let opt: StateDict = t.optimizer_state()?;
    finite_state("optimizer", &opt)?;
    let meta = json!({
        "kind": "ire-train",
        "version": CHECKPOINT_META_VERSION,
        "step": t.step,
        "metrics": metrics,
        "model": t.cfg.model,
        "param_count": t.param_count(),
        "config": t.cfg,
        "data": DataFingerprint::of(t.data()),
    });
    let mut tensors = vec![("params".to_string(), t.params_host()?)];
    for (name, v) in t.model_state_host()? {
        tensors.push((format!("state/{name}"), v));
    }
    for (name, v) in &tensors {
        finite(name, v.iter().map(|&x| f64::from(x)))?;
    }
    Ok(Checkpoint {
        meta: meta.to_string(),
        tensors,
        blobs: vec![("optimizer".into(), artifacts::checkpoint::encode(&opt)?)],
    })
}

fn finite(tensor: &str, values: impl Iterator<Item = f64>) -> Result<(), RunError> {
    match values.enumerate().find(|(_, x)| !x.is_finite()) {
        Some((index, value)) => Err(RunError::NotFinite {
            tensor: tensor.to_string(),
            index,
            value,
        }),
        None => Ok(()),
    }
}

/// Every tensor of an optimizer's state, nested ones included, must be finite.
fn finite_state(prefix: &str, s: &StateDict) -> Result<(), RunError> {
    use ire_core::state::StateValue;
    for e in &s.entries {
        let name = format!("{prefix}/{}", e.name);
        match &e.value {
            StateValue::F32(v) => finite(&name, v.iter().map(|&x| f64::from(x)))?,
            StateValue::F64(v) => finite(&name, v.iter().copied())?,
            StateValue::Nested(n) => finite_state(&name, n)?,
            StateValue::U64(_) | StateValue::U64s(_) | StateValue::Bool(_) | StateValue::U8(_) => {}
        }
    }
    Ok(())
}

/// Reads the config and the metadata of a checkpoint file.
pub fn read_checkpoint(
    path: &Path,
) -> Result<(Checkpoint, TrainConfig, serde_json::Value), TrainError> {
    let ck = artifacts::checkpoint::read(path)?;
    let meta: serde_json::Value =
        serde_json::from_str(&ck.meta).map_err(|source| TrainError::CheckpointMeta {
            path: path.to_path_buf(),
            source,
        })?;
    let version = meta["version"].as_u64();
    if meta["kind"] != "ire-train" || !matches!(version, Some(1..=2)) {
        return Err(TrainError::NotTrainingCheckpoint {
            path: path.to_path_buf(),
            kind: meta["kind"].to_string(),
            version,
            supported: CHECKPOINT_META_VERSION,
        });
    }
    let mut stored = meta["config"].clone();
    // Runs from before parameter groups decayed every parameter: their configuration has no
    // `decay_all`, and resumes as what they were.
    if let Some(c) = stored.as_object_mut() {
        c.entry("decay_all")
            .or_insert(serde_json::Value::Bool(true));
    }
    let cfg: TrainConfig =
        serde_json::from_value(stored).map_err(|source| TrainError::CheckpointConfig {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((ck, cfg, meta))
}

/// Restores `t` from a checkpoint taken of the same configuration (all-or-nothing). The data
/// `t` was built on must match the checkpoint's [`DataFingerprint`] (checkpoints of format 1
/// have none).
pub fn restore<B: NnOps>(
    t: &mut Trainer<B>,
    ck: &Checkpoint,
    meta: &serde_json::Value,
) -> Result<(), TrainError> {
    let lacks = |part: &str| TrainError::CheckpointLacks { part: part.into() };
    if let Ok(expected) = serde_json::from_value::<DataFingerprint>(meta["data"].clone()) {
        expected.check(&DataFingerprint::of(t.data()), &t.cfg.data)?;
    }
    let step = meta["step"].as_u64().ok_or_else(|| lacks("step"))?;
    let params = ck.tensor("params").ok_or_else(|| lacks("parameters"))?;
    let opt_blob = ck
        .blob("optimizer")
        .ok_or_else(|| lacks("optimizer state"))?;
    let opt: StateDict = artifacts::checkpoint::decode(opt_blob)?;
    let mut state = Vec::new();
    for (name, _) in t.model_state_host()? {
        let v = ck
            .tensor(&format!("state/{name}"))
            .ok_or_else(|| lacks(&format!("model state `{name}`")))?;
        state.push((name, v.to_vec()));
    }
    t.restore_parts(step, params, &state, &opt)?;
    Ok(())
}

/// Settings that may differ between a checkpoint and the resuming run (they do not change
/// the trajectory).
fn same_trajectory(a: &TrainConfig, b: &TrainConfig) -> Result<(), TrainError> {
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
                diff.push(FieldDifference {
                    field: k.clone(),
                    checkpoint: v.to_string(),
                    now: yo.get(k).cloned().unwrap_or_default().to_string(),
                });
            }
        }
    }
    Err(TrainError::OtherConfiguration { differences: diff })
}

/// Checks that a checkpoint's config can continue under `cfg`.
pub fn check_resumable(ck_cfg: &TrainConfig, cfg: &TrainConfig) -> Result<(), TrainError> {
    same_trajectory(ck_cfg, cfg)
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

/// Where a resumed run comes from: its checkpoint's metrics position and folder (the run's own
/// folder, or another one when the run branches off into a new folder).
#[derive(Clone, Debug)]
pub struct ResumeFrom {
    /// The checkpoint's metrics position ([`metrics_position`]).
    pub position: MetricsPosition,
    /// The folder of the checkpoint (and of the history it belongs to).
    pub folder: PathBuf,
}

/// Runs `t` to its last step (or until `stop` is set / `opts.stop_after` steps) in
/// `opts.out_dir`, which it holds for the whole run ([`RunFolder`]); `resume` is the metrics
/// position of the checkpoint in that folder that `t` was restored from.
pub fn run<B: NnOps>(
    t: &mut Trainer<B>,
    opts: &RunOptions,
    resume: Option<MetricsPosition>,
    stop: &AtomicBool,
) -> Result<RunSummary, TrainError> {
    let claim = match resume {
        Some(_) => Claim::Continue,
        None => Claim::New {
            overwrite: opts.overwrite,
        },
    };
    let folder = RunFolder::open(&opts.out_dir, claim)?;
    let resume = resume.map(|position| ResumeFrom {
        position,
        folder: opts.out_dir.clone(),
    });
    run_in(t, &folder, opts, resume, stop)
}

/// The checkpoint of a divergence: the last good one.
type Kept = Option<(u64, PathBuf)>;

/// `e` as a run's divergence (a non-finite value to be saved counts as one, at `step`).
fn diverged(e: TrainError, kept: &Kept, step: u64) -> TrainError {
    match e {
        TrainError::Diverged { step, what } => RunError::Diverged {
            step,
            what,
            kept: kept.clone(),
        }
        .into(),
        TrainError::Run(RunError::NotFinite {
            tensor,
            index,
            value,
        }) => RunError::Diverged {
            step,
            what: format!("{tensor}[{index}] = {value}"),
            kept: kept.clone(),
        }
        .into(),
        other => other,
    }
}

/// A checkpoint of `t` with the history so far, written only when the state is healthy (see
/// [`checkpoint`]; the next step's loss must be finite too).
fn save<B: NnOps>(
    t: &mut Trainer<B>,
    history: &mut History,
    window: (&[f64], &[f64], usize),
    path: &Path,
    kept: &mut Kept,
) -> Result<(), TrainError> {
    let step = t.step;
    let at = |e: TrainError| diverged(e, kept, step);
    let loss = t.next_loss().map_err(at)?;
    if !loss.is_finite() {
        return Err(at(TrainError::Diverged {
            step,
            what: format!("the training loss at these parameters is {loss}"),
        }));
    }
    let pos = MetricsPosition {
        lines: history.lines().len(),
        window_loss: window.0.to_vec(),
        window_acc: window.1.to_vec(),
        window_refreshes: window.2,
        history: Some(history.mark()?),
    };
    let ck = checkpoint(t, &pos).map_err(at)?;
    artifacts::checkpoint::write_atomic(path, &ck)?;
    *kept = Some((step, path.to_path_buf()));
    Ok(())
}

/// [`run`] in a folder already held (the `ire` command takes it before loading the data).
/// With `resume`, `t` was restored from the checkpoint in `resume.folder`; when that is another
/// folder, the run branches off: the history up to the checkpoint is copied here.
pub fn run_in<B: NnOps>(
    t: &mut Trainer<B>,
    folder: &RunFolder,
    opts: &RunOptions,
    resume: Option<ResumeFrom>,
    stop: &AtomicBool,
) -> Result<RunSummary, TrainError> {
    let total = t.total_steps();
    let spe = t.steps_per_epoch();
    let unit = if matches!(t.data(), super::source::Source::Text { .. }) {
        "tokens"
    } else {
        "images"
    };
    let metrics_path = folder.file(METRICS_FILE);
    let ck_path = folder.file(CHECKPOINT_FILE);
    if let Some(r) = &resume
        && t.step >= total
    {
        return finished_already(t, &r.folder.join(METRICS_FILE), unit);
    }
    if stops_before_training(t, opts, stop)? {
        // Interrupted before training started (while the data loaded): nothing is touched.
        return Ok(RunSummary::untrained(t.step, unit));
    }
    let (mut history, mut kept, window) = match &resume {
        None => {
            folder.clear_previous_run()?;
            (
                History::start(&metrics_path)?,
                None,
                (Vec::new(), Vec::new(), 0),
            )
        }
        Some(r) => {
            let from = r.folder.join(METRICS_FILE);
            let mark = match r.position.history {
                Some(m) => m,
                None => history::mark_of_lines(&from, r.position.lines)?,
            };
            let own = super::folder::same_folder(&r.folder, folder.dir());
            if !own {
                folder.clear_previous_run()?;
            }
            let h = History::resume(&metrics_path, mark, &from)?;
            let p = &r.position;
            (
                h,
                Some((t.step, r.folder.join(CHECKPOINT_FILE))),
                (
                    p.window_loss.clone(),
                    p.window_acc.clone(),
                    p.window_refreshes,
                ),
            )
        }
    };
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
    let start = Instant::now();
    let start_step = t.step;
    let mut images = 0usize;
    let (mut win_loss, mut win_acc, mut win_refresh) = window;
    let mut last_loss = f64::NAN;
    let mut finished = true;
    let world = t.world_size();
    let mut logged_state = false;
    while t.step < total {
        let Some(m) =
            next_step(t, start_step, opts, stop).map_err(|e| diverged(e, &kept, t.step))?
        else {
            finished = false;
            break;
        };
        images += m.n * t.model().rows_per_example();
        win_loss.push(m.loss);
        win_acc.push(m.acc);
        win_refresh += m.refreshed as usize;
        let s = m.step + 1;
        if s % t.cfg.log_every == 0 || s == total {
            let ips = images as f64 / start.elapsed().as_secs_f64().max(1e-9);
            last_loss = mean(&win_loss);
            let mut line = json!({"kind": "train", "step": s, "epoch": m.epoch, "lr": m.lr, "loss": last_loss,
                       "acc": mean(&win_acc), "kappa": m.kappa, "refreshes": win_refresh, "images_per_sec": ips,
                       "world_size": world});
            if !logged_state && !t.optimizer_state_bytes().is_empty() {
                // The first line of this invocation: the optimizer state of each rank.
                line["opt_state_bytes"] = json!(t.optimizer_state_bytes());
                logged_state = true;
            }
            if win_refresh > 0
                && let Some(mask) = t.mask_summary()?
            {
                // The mask after the last refresh of this line's steps.
                line["flat"] = json!(mask.flat);
                line["mask_fnv1a64"] = json!(mask.hash_hex());
            }
            history.append(line)?;
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
            let e = t.evaluate().map_err(|e| diverged(e, &kept, t.step))?;
            history.append(
                json!({"kind": "eval", "step": s, "epoch": s as f64 / spe as f64, "loss": e.loss, "acc": e.acc, "n": e.n,
                       "world_size": world}),
            )?;
        }
        if t.cfg.checkpoint_every > 0 && s % t.cfg.checkpoint_every == 0 && s < total {
            save(
                t,
                &mut history,
                (&win_loss, &win_acc, win_refresh),
                &ck_path,
                &mut kept,
            )?;
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
        let e = t.evaluate().map_err(|e| diverged(e, &kept, t.step))?;
        history.append(
            json!({"kind": "eval", "step": t.step, "epoch": t.step as f64 / spe as f64, "loss": e.loss, "acc": e.acc, "n": e.n,
                   "world_size": world}),
        )?;
        eval = Some(e);
        files.extend(plots(folder.dir(), history.lines(), &t.cfg)?);
        let w = folder.file(WEIGHTS_FILE);
        export_weights(t, &w)?;
        files.push(w);
    }
    if t.step > start_step {
        save(
            t,
            &mut history,
            (&win_loss, &win_acc, win_refresh),
            &ck_path,
            &mut kept,
        )?;
        files.push(ck_path);
    } else if resume.is_none() {
        // Stopped before its first step: a new run leaves nothing behind.
        drop(history);
        let _ = std::fs::remove_file(&metrics_path);
    }
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
        already_finished: false,
    })
}

/// Whether the run stops before its first step (interrupted while the data loaded, or
/// `--stop-after 0`), decided by all ranks together.
fn stops_before_training<B: NnOps>(
    t: &Trainer<B>,
    opts: &RunOptions,
    stop: &AtomicBool,
) -> Result<bool, TrainError> {
    Ok(t.any_rank(stop.load(Ordering::SeqCst) || opts.stop_after == Some(0))?)
}

/// The next step, unless the run stops before it (`stop` set, or `opts.stop_after` steps
/// taken since `start_step`, on any rank).
fn next_step<B: NnOps>(
    t: &mut Trainer<B>,
    start_step: u64,
    opts: &RunOptions,
    stop: &AtomicBool,
) -> Result<Option<StepMetrics>, TrainError> {
    let here =
        stop.load(Ordering::SeqCst) || opts.stop_after.is_some_and(|s| t.step - start_step >= s);
    if t.any_rank(here)? {
        return Ok(None);
    }
    t.train_step().map(Some)
}

/// The part of [`run_in`] that ranks other than 0 of a data-parallel group run: the same
/// steps, the same decisions to stop, no file read or written. The summary has the steps and
/// whether the run finished (no losses, evaluation or files: rank 0 has those). `resume`: the
/// metrics position of the checkpoint `t` was restored from. With a sharded optimizer state
/// the follower also joins rank 0's gathers: the mask at every logged line with a refresh,
/// the optimizer state at every checkpoint.
pub fn run_follower<B: NnOps>(
    t: &mut Trainer<B>,
    opts: &RunOptions,
    resume: Option<&MetricsPosition>,
    stop: &AtomicBool,
) -> Result<RunSummary, TrainError> {
    let resumed = resume.is_some();
    let mut refreshes = resume.map_or(0, |p| p.window_refreshes);
    let total = t.total_steps();
    let unit = if matches!(t.data(), super::source::Source::Text { .. }) {
        "tokens"
    } else {
        "images"
    };
    let mut summary = RunSummary::untrained(t.step, unit);
    // The same sequence of decisions as `run_in`, so that every collective call matches.
    if resumed && t.step >= total {
        summary.finished = true;
        summary.already_finished = true;
        return Ok(summary);
    }
    if stops_before_training(t, opts, stop)? {
        return Ok(summary);
    }
    let start = Instant::now();
    let start_step = t.step;
    summary.finished = true;
    while t.step < total {
        let Some(m) = next_step(t, start_step, opts, stop)? else {
            summary.finished = false;
            break;
        };
        if t.shards_optimizer_state() {
            // The same conditions as `run_in`'s mask line and checkpoints.
            refreshes += m.refreshed as usize;
            let s = m.step + 1;
            if s % t.cfg.log_every == 0 || s == total {
                if refreshes > 0 {
                    t.mask_summary()?;
                }
                refreshes = 0;
            }
            if t.cfg.checkpoint_every > 0 && s % t.cfg.checkpoint_every == 0 && s < total {
                t.optimizer_state()?;
            }
        }
    }
    if t.shards_optimizer_state() && t.step > start_step {
        // `run_in`'s last checkpoint.
        t.optimizer_state()?;
    }
    summary.steps = t.step;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// The summary of a run whose checkpoint is at its last step: its history's last lines.
fn finished_already<B: NnOps>(
    t: &Trainer<B>,
    metrics: &Path,
    unit: &'static str,
) -> Result<RunSummary, TrainError> {
    let lines = artifacts::metrics::read_jsonl(metrics).unwrap_or_default();
    let last = |kind: &str| lines.iter().rev().find(|l| l["kind"] == kind);
    let eval = last("eval").map(|l| EvalMetrics {
        loss: l["loss"].as_f64().unwrap_or(f64::NAN),
        acc: l["acc"].as_f64().unwrap_or(f64::NAN),
        n: l["n"].as_u64().unwrap_or(0) as usize,
    });
    Ok(RunSummary {
        steps: t.step,
        finished: true,
        train_loss: last("train")
            .and_then(|l| l["loss"].as_f64())
            .unwrap_or(f64::NAN),
        eval,
        seconds: 0.0,
        images_per_sec: 0.0,
        seconds_per_epoch: 0.0,
        files: Vec::new(),
        unit,
        already_finished: true,
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

//! The paper's claims at CPU scale: one function per item, each writing JSON lines, a plot and a
//! Markdown fragment under the output folder.
//!
//! The training runs go through `ire-models`' library API ([`Trainer`]) rather than the `ire`
//! command: the items need every step's loss and wall time, parameter snapshots taken when a
//! run first reaches a loss level, and two trainers stepping in turn in one process (the cost
//! item), none of which the command exposes.

pub mod cifar;
pub mod cost;
pub mod lm;
pub mod toy;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ire_backend_cpu::CpuBackend;
use ire_models::artifacts::{self, MetricsWriter, Series};
use ire_models::train::{EvalMetrics, TrainConfig, Trainer};
use serde_json::{Value, json};

/// The error type of the driver.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// The result type of the driver.
pub type Res<T> = Result<T, Error>;

/// The items, in the order of the document.
pub const ITEMS: [&str; 6] = [
    "toy",
    "speedup",
    "llama",
    "generalization",
    "sharpness",
    "cost",
];

/// What every item reads.
#[derive(Clone, Debug)]
pub struct Options {
    /// Output folder (one subfolder per item).
    pub out: PathBuf,
    /// Tiny sizes, seconds in all.
    pub quick: bool,
    /// Where the final figures are copied (none: not copied).
    pub figures: Option<PathBuf>,
    /// The corpus of the 2-layer transformer (items 2 and 5).
    pub lm_corpus: PathBuf,
    /// The corpus of the Llama runs (item 3).
    pub llama_corpus: PathBuf,
    /// Folder of the CIFAR-10 binary files.
    pub cifar_dir: PathBuf,
}

impl Options {
    /// The folder of one item, created.
    pub fn item_dir(&self, item: &str) -> Res<PathBuf> {
        let d = self.out.join(item);
        std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        Ok(d)
    }
}

/// One row of the summary table.
#[derive(Clone, Debug)]
pub struct SummaryRow {
    /// The claim, in a few words.
    pub claim: String,
    /// The paper's number.
    pub paper: String,
    /// Ours.
    pub ours: String,
    /// Reproduced, partly, or not.
    pub verdict: String,
}

/// What an item leaves: its Markdown fragment and its summary rows.
#[derive(Clone, Debug)]
pub struct ItemReport {
    /// Item name (one of [`ITEMS`]).
    pub item: &'static str,
    /// The fragment for `docs/results.md`.
    pub markdown: String,
    /// Rows of the summary table.
    pub summary: Vec<SummaryRow>,
    /// Wall time of the item, seconds.
    pub seconds: f64,
}

impl ItemReport {
    /// Writes `report.md` and `summary.json` into the item's folder.
    pub fn write(&self, opts: &Options) -> Res<()> {
        let dir = opts.item_dir(self.item)?;
        write_text(&dir.join("report.md"), &self.markdown)?;
        let rows: Vec<Value> = self
            .summary
            .iter()
            .map(|r| json!({"claim": r.claim, "paper": r.paper, "ours": r.ours, "verdict": r.verdict}))
            .collect();
        write_text(
            &dir.join("summary.json"),
            &serde_json::to_string_pretty(
                &json!({"item": self.item, "seconds": self.seconds, "rows": rows}),
            )?,
        )
    }
}

/// Writes a text file (creating its folder).
pub fn write_text(path: &Path, text: &str) -> Res<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Res<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}

/// Rebuilds `summary.md` (the table) and `results.md` (every fragment) from the items found
/// under the output folder; returns the summary table.
pub fn collect(opts: &Options) -> Res<String> {
    let mut table = String::from(
        "| claim | paper | ours (CPU scale) | reproduced? |\n| --- | --- | --- | --- |\n",
    );
    let mut all = String::new();
    for item in ITEMS {
        let dir = opts.out.join(item);
        let summary = dir.join("summary.json");
        if !summary.exists() {
            continue;
        }
        let v = read_json(&summary)?;
        for r in v["rows"].as_array().into_iter().flatten() {
            let s = |k: &str| r[k].as_str().unwrap_or("").replace('|', "\\|");
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} |",
                s("claim"),
                s("paper"),
                s("ours"),
                s("verdict")
            );
        }
        if let Ok(md) = std::fs::read_to_string(dir.join("report.md")) {
            all.push_str(&md);
            all.push('\n');
        }
    }
    write_text(&opts.out.join("summary.md"), &table)?;
    write_text(
        &opts.out.join("results.md"),
        &format!("## Summary\n\n{table}\n{all}"),
    )?;
    Ok(table)
}

/// Draws a figure (PNG and SVG) into `dir` and copies the SVG (the smaller file) to the figures
/// folder when there is one; returns the SVG's file name.
#[allow(clippy::too_many_arguments)]
pub fn figure(
    opts: &Options,
    dir: &Path,
    stem: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Res<String> {
    let files = artifacts::plot::plot_curves(dir, stem, title, x_label, y_label, series, log_y)?;
    if let Some(fig) = &opts.figures {
        std::fs::create_dir_all(fig)
            .map_err(|e| format!("cannot create {}: {e}", fig.display()))?;
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "svg"))
        {
            if let Some(name) = f.file_name() {
                std::fs::copy(f, fig.join(name))
                    .map_err(|e| format!("cannot copy {}: {e}", f.display()))?;
            }
        }
    }
    Ok(format!("{stem}.svg"))
}

/// At most `max` evenly spaced points of a curve (the last one kept), so that SVG files stay
/// small.
pub fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let stride = points.len().div_ceil(max);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(stride).copied().collect();
    if let Some(&last) = points.last()
        && out.last() != Some(&last)
    {
        out.push(last);
    }
    out
}

/// A labelled series.
pub fn series(label: &str, points: Vec<(f64, f64)>) -> Series {
    Series {
        label: label.into(),
        points,
    }
}

/// The trailing mean of the last `w` values at each index (NaN before `w` values exist).
pub fn trailing_mean(v: &[f64], w: usize) -> Vec<f64> {
    let w = w.max(1);
    let mut out = Vec::with_capacity(v.len());
    let mut sum = 0.0;
    for i in 0..v.len() {
        sum += v[i];
        if i >= w {
            sum -= v[i - w];
        }
        out.push(if i + 1 >= w { sum / w as f64 } else { f64::NAN });
    }
    out
}

/// The number of steps after which `smoothed` first is at or below `level` (index + 1).
pub fn first_reach(smoothed: &[f64], level: f64) -> Option<usize> {
    smoothed.iter().position(|&x| x <= level).map(|i| i + 1)
}

/// Mean of values.
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Sample standard deviation (denominator `n − 1`; 0 for one value).
pub fn std_dev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Median of values.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// A training run to make.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Name (and folder name).
    pub name: String,
    /// The configuration.
    pub cfg: TrainConfig,
    /// The run's folder.
    pub dir: PathBuf,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Write `checkpoint.irec` at the end.
    pub checkpoint: bool,
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// Name.
    pub name: String,
    /// The training loss of each step (of its batch, before the step).
    pub losses: Vec<f64>,
    /// Wall time of each step, seconds.
    pub step_seconds: Vec<f64>,
    /// Evaluations: (steps taken, metrics); the last one is at the end.
    pub evals: Vec<(u64, EvalMetrics)>,
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
    /// Parameters of the model.
    pub params: usize,
    /// The data, in one line.
    pub data: String,
}

impl RunOutcome {
    /// The last evaluation.
    pub fn final_eval(&self) -> Option<EvalMetrics> {
        self.evals.last().map(|e| e.1)
    }
}

/// Trains `spec` on the CPU backend, writing `metrics.jsonl` (a line per step, one per
/// evaluation), the run's loss and accuracy plots, and optionally a checkpoint; `hook` is
/// called after every step with the trainer and the losses so far.
pub fn train_run(
    spec: &RunSpec,
    mut hook: impl FnMut(&Trainer<CpuBackend>, &[f64]) -> Res<()>,
) -> Res<RunOutcome> {
    std::fs::create_dir_all(&spec.dir)
        .map_err(|e| format!("cannot create {}: {e}", spec.dir.display()))?;
    let mut t = Trainer::new(CpuBackend::new(), spec.cfg.clone())
        .map_err(|e| format!("{}: {e}", spec.name))?;
    let total = t.total_steps();
    let data = t.data().describe();
    eprintln!(
        "[{}] {} parameters, {total} steps, {data}",
        spec.name,
        t.param_count()
    );
    let mut w = MetricsWriter::create(&spec.dir.join("metrics.jsonl"), false)?;
    let mut lines: Vec<Value> = Vec::new();
    let mut out = RunOutcome {
        name: spec.name.clone(),
        losses: Vec::with_capacity(total as usize),
        step_seconds: Vec::with_capacity(total as usize),
        evals: Vec::new(),
        seconds: 0.0,
        params: t.param_count(),
        data,
    };
    let start = Instant::now();
    let report_every = (total / 10).max(1);
    while t.step < total {
        let t0 = Instant::now();
        let m = t.train_step().map_err(|e| format!("{}: {e}", spec.name))?;
        let dt = t0.elapsed().as_secs_f64();
        out.losses.push(m.loss);
        out.step_seconds.push(dt);
        let s = t.step;
        let line = json!({"kind": "train", "step": s, "epoch": m.epoch, "lr": m.lr, "loss": m.loss,
            "acc": m.acc, "kappa": m.kappa, "refreshed": m.refreshed, "seconds": dt});
        w.write(&line)?;
        lines.push(line);
        hook(&t, &out.losses)?;
        if (spec.eval_every > 0 && s % spec.eval_every == 0) || s == total {
            let e = t.evaluate().map_err(|e| format!("{}: {e}", spec.name))?;
            let line = json!({"kind": "eval", "step": s, "loss": e.loss, "acc": e.acc, "n": e.n});
            w.write(&line)?;
            lines.push(line);
            out.evals.push((s, e));
        }
        if s % report_every == 0 {
            let recent = &out.losses[out.losses.len().saturating_sub(report_every as usize)..];
            eprintln!(
                "[{}] step {s}/{total} loss {:.4} ({:.3} s/step)",
                spec.name,
                mean(recent),
                start.elapsed().as_secs_f64() / s as f64
            );
        }
    }
    out.seconds = start.elapsed().as_secs_f64();
    w.write(
        &json!({"kind": "summary", "steps": total, "seconds": out.seconds,
        "params": out.params, "data": out.data, "config": spec.cfg}),
    )?;
    // The run's own curves (per step, thinned for small files).
    let thinned: Vec<Value> = thin_lines(&lines, 400);
    ire_models::train::run::plots(&spec.dir, &thinned, &spec.cfg)?;
    if spec.checkpoint {
        let pos = ire_models::train::run::MetricsPosition {
            lines: lines.len(),
            ..Default::default()
        };
        artifacts::checkpoint::write_atomic(
            &spec.dir.join("checkpoint.irec"),
            &ire_models::train::run::checkpoint(&t, &pos)?,
        )?;
    }
    Ok(out)
}

/// Metrics lines with the per-step training lines averaged into at most `max` windows.
fn thin_lines(lines: &[Value], max: usize) -> Vec<Value> {
    let train: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "train").collect();
    let w = train.len().div_ceil(max).max(1);
    let mut out: Vec<Value> = train
        .chunks(w)
        .filter_map(|c| {
            let last = c.last()?;
            let avg = |k: &str| mean(&c.iter().filter_map(|l| l[k].as_f64()).collect::<Vec<_>>());
            Some(json!({"kind": "train", "step": last["step"], "loss": avg("loss"), "acc": avg("acc")}))
        })
        .collect();
    out.extend(lines.iter().filter(|l| l["kind"] == "eval").cloned());
    out
}

/// A number with `d` decimals.
pub fn f(x: f64, d: usize) -> String {
    format!("{x:.d$}")
}

/// A Markdown table.
pub fn md_table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|", head.join(" | "));
    for _ in head {
        s.push_str(" --- |");
    }
    s.push('\n');
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

/// The command line that reproduces an item.
pub fn command(item: &str, quick: bool) -> String {
    format!(
        "cargo run --release -p ire-bench --bin experiments -- {item}{}",
        if quick { " --quick" } else { "" }
    )
}

/// Runs one item and writes its report.
pub fn run_item(item: &str, opts: &Options) -> Res<ItemReport> {
    let start = Instant::now();
    let mut r = match item {
        "toy" => toy::run(opts)?,
        "speedup" => lm::speedup(opts)?,
        "llama" => lm::llama(opts)?,
        "generalization" => cifar::run(opts)?,
        "sharpness" => lm::sharpness(opts)?,
        "cost" => cost::run(opts)?,
        other => {
            return Err(format!(
                "unknown item `{other}`: expected {} or all",
                ITEMS.join(", ")
            )
            .into());
        }
    };
    r.seconds = start.elapsed().as_secs_f64();
    let _ = writeln!(r.markdown, "\nWall time of `{item}`: {:.0} s.", r.seconds);
    r.write(opts)?;
    Ok(r)
}

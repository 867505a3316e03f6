//! Training steps of the same workloads on several backends in one run, on the same cores:
//! the device backends against the native CPU backend (the OpenCL rows of the performance
//! goals: ResNet-small at batch 128 and `lm-paper` at context 64), and a backend alone for a
//! memory measurement under `/usr/bin/time -v`.
//!
//! Each workload builds one trainer per backend (same seed: same parameters and batches),
//! runs the warm-up steps on each (kernels compile on the first), then `--rounds` rounds, each
//! timing `--iters` steps of every backend one by one, the order of the backends reversed in
//! every other round. A backend's time is the lowest of its per-round medians (other jobs on
//! a shared machine only add time); the ratio is against the first backend listed.
//!
//! ```text
//! cargo run --release -p ire-bench --features opencl --bin train_steps -- \
//!     --backends cpu,opencl --json target/train_steps.json
//! ```

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use ire_bench::workloads::Workload;
use ire_models::device::{BackendKind, NnTask, run_on};
use ire_models::nn::NnOps;
use ire_models::train::Trainer;
use serde_json::{Value, json};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Command-line arguments.
#[derive(Parser, Debug)]
#[command(about = "Times training steps of the same workloads on several backends")]
struct Args {
    /// Backends, the first being the one the others are compared with.
    #[arg(long, value_delimiter = ',', default_values_t = [BackendKind::Cpu, BackendKind::OpenCl])]
    backends: Vec<BackendKind>,
    /// Workloads as `model:batch[:context]` (context for language models).
    #[arg(long, value_delimiter = ',', default_values_t = ["resnet-small:128".to_string(), "lm-paper:32:64".into()])]
    workloads: Vec<String>,
    /// Vocabulary of the language models.
    #[arg(long, default_value_t = 33_278)]
    vocab: usize,
    /// Untimed steps of each backend first (the first compiles the device kernels).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Rounds of timed steps.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Timed steps per backend per round.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Where to write the results (JSON).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_workload(s: &str, vocab: usize) -> AnyResult<Workload> {
    let parts: Vec<&str> = s.split(':').collect();
    let num = |i: usize, what: &str| -> AnyResult<usize> {
        parts
            .get(i)
            .ok_or_else(|| format!("workload `{s}`: no {what}"))?
            .parse::<usize>()
            .map_err(|e| format!("workload `{s}`: {what}: {e}").into())
    };
    let mut w = Workload {
        model: parts[0].to_string(),
        batch: num(1, "batch")?,
        context: 0,
        vocab,
    };
    if w.is_lm() {
        w.context = num(2, "context")?;
    }
    Ok(w)
}

/// A trainer of one workload on one backend, type-erased to its step.
trait Stepper {
    fn step(&mut self) -> AnyResult<()>;
    fn params(&self) -> usize;
}

impl<B: NnOps + 'static> Stepper for Trainer<B> {
    fn step(&mut self) -> AnyResult<()> {
        self.train_step()?;
        Ok(())
    }
    fn params(&self) -> usize {
        self.param_count()
    }
}

/// Opens a backend and builds the workload's trainer on it.
struct Build<'a>(&'a Workload);

impl NnTask for Build<'_> {
    type Output = AnyResult<Box<dyn Stepper>>;
    fn run<B: NnOps + 'static>(self, b: B) -> Self::Output {
        Ok(Box::new(self.0.trainer(b)?))
    }
}

fn median(v: &[f64]) -> f64 {
    let mut t = v.to_vec();
    t.sort_by(f64::total_cmp);
    let n = t.len();
    if n % 2 == 1 {
        t[n / 2]
    } else {
        0.5 * (t[n / 2 - 1] + t[n / 2])
    }
}

fn run_workload(args: &Args, w: &Workload) -> AnyResult<Value> {
    let mut sides = Vec::new();
    for &kind in &args.backends {
        let (name, trainer) = run_on(kind, Build(w))?;
        sides.push((kind, name, trainer?));
    }
    for (_, name, t) in sides.iter_mut() {
        let s = Instant::now();
        for _ in 0..args.warmup {
            t.step()?;
        }
        eprintln!(
            "{} on {name}: {} warm-up steps in {:.1} s",
            w.model,
            args.warmup,
            s.elapsed().as_secs_f64()
        );
    }
    let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    for r in 0..args.rounds {
        let order: Vec<usize> = if r % 2 == 0 {
            (0..sides.len()).collect()
        } else {
            (0..sides.len()).rev().collect()
        };
        for i in order {
            let mut ms = Vec::with_capacity(args.iters);
            for _ in 0..args.iters.max(1) {
                let s = Instant::now();
                sides[i].2.step()?;
                ms.push(s.elapsed().as_secs_f64() * 1e3);
            }
            let m = median(&ms);
            eprintln!(
                "{} round {} {}: median {m:.2} ms",
                w.model,
                r + 1,
                sides[i].1
            );
            rounds[i].push(m);
        }
    }
    let best: Vec<f64> = rounds
        .iter()
        .map(|v| v.iter().copied().fold(f64::INFINITY, f64::min))
        .collect();
    let items = w.items() as f64;
    let mut out = Vec::new();
    for (i, (kind, name, t)) in sides.iter().enumerate() {
        let ratio = best[i] / best[0];
        println!(
            "{:<14} {:<28} {:>10.2} ms/step {:>10.0} {}/s  ×{ratio:.2} of {}",
            w.model,
            name,
            best[i],
            items / (best[i] / 1e3),
            if w.is_lm() { "tokens" } else { "images" },
            sides[0].1
        );
        out.push(json!({
            "backend": kind.name(),
            "device": name,
            "best_median_ms": best[i],
            "round_medians_ms": rounds[i],
            "per_second": items / (best[i] / 1e3),
            "ratio_to_first": ratio,
            "params": t.params(),
        }));
    }
    Ok(json!({
        "model": w.model,
        "detail": w.describe(),
        "batch": w.batch,
        "context": w.context,
        "sides": out,
    }))
}

fn main() -> AnyResult<()> {
    let args = Args::parse();
    let mut results = Vec::new();
    for s in &args.workloads {
        let w = parse_workload(s, args.vocab)?;
        results.push(run_workload(&args, &w)?);
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "warmup": args.warmup,
            "rounds": args.rounds,
            "iters": args.iters,
            "results": results,
        });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

//! The Rust half of the peer benchmark against PyTorch on the CPU (`scripts/peer-bench.sh`).
//!
//! Times, on [`CpuBackend`] and exactly as `scripts/peer/torch_bench.py` times PyTorch
//! (warm-up iterations, then the median of N timed iterations, each timed on its own with
//! [`Instant`]):
//!
//! - optimizer steps on one flat `f32` buffer of each size of [`ire_bench::SIZES`]: AdamW,
//!   SGD with momentum, the fused AdmIRE step (`adamw_ire_step`) and the IRE mask refresh
//!   (`ema_square` with β = 0, the global `kth_largest` with γ = 0.6, `mask_le`);
//! - one training step (forward, backward, optimizer step) of the `mlp` and `resnet20`
//!   presets on CIFAR-shaped inputs (SGD with momentum) and of `lm-paper` (AdamW) through
//!   `ire-models`' [`Trainer`](ire_models::train::Trainer), on synthetic data of the real shapes.
//!
//! The results go to a JSON file:
//! `cargo run --release -p ire-bench --bin peer -- --json OUT.json`.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use ire_backend_cpu::CpuBackend;
use ire_bench::workloads::Workload;
use ire_bench::{SIZES, random_f32};
use ire_core::formulas::SgdScalars;
use ire_core::optim::sharp_count;
use ire_core::{AdamWConfig, Backend};
use serde_json::{Value, json};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Which part of the benchmark to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    /// Optimizer steps and the mask refresh on flat buffers.
    Optim,
    /// One training step of each model.
    Train,
    /// Both.
    All,
}

/// Command-line arguments (the same names as the PyTorch script's).
#[derive(Parser, Debug)]
#[command(about = "Times ire's optimizer steps and training steps on the CPU backend")]
struct Args {
    /// Where to write the results (JSON).
    #[arg(long)]
    json: PathBuf,
    /// Worker threads (rayon's global pool); default: one per core.
    #[arg(long)]
    threads: Option<usize>,
    /// What to run.
    #[arg(long, value_enum, default_value = "all")]
    part: Part,
    /// Parameter counts of the optimizer-step benchmarks.
    #[arg(long, value_delimiter = ',', default_values_t = SIZES)]
    sizes: Vec<usize>,
    /// Warm-up iterations of each optimizer-step benchmark.
    #[arg(long, default_value_t = 5)]
    opt_warmup: usize,
    /// Timed iterations of each optimizer-step benchmark.
    #[arg(long, default_value_t = 50)]
    opt_iters: usize,
    /// IRE flat fraction γ of the mask refresh (k = ⌊(1 − γ) N⌋ sharp coordinates).
    #[arg(long, default_value_t = 0.6)]
    gamma: f64,
    /// Warm-up iterations of each training-step benchmark.
    #[arg(long, default_value_t = 3)]
    train_warmup: usize,
    /// Timed iterations of each training-step benchmark.
    #[arg(long, default_value_t = 10)]
    train_iters: usize,
    /// Models of the training-step benchmark (presets of `ire-models`).
    #[arg(long, value_delimiter = ',', default_values_t = ["mlp".to_string(), "resnet20".into(), "lm-paper".into()])]
    models: Vec<String>,
    /// Images per batch of the image models.
    #[arg(long, default_value_t = 128)]
    image_batch: usize,
    /// Sequences per batch of the language model.
    #[arg(long, default_value_t = 32)]
    lm_batch: usize,
    /// Context length of the language model.
    #[arg(long, default_value_t = 128)]
    lm_context: usize,
    /// Vocabulary of the language model.
    #[arg(long, default_value_t = 33_278)]
    lm_vocab: usize,
}

/// Per-iteration times of one benchmark.
struct Timing {
    median_ms: f64,
    min_ms: f64,
    /// Every timed iteration, in order.
    samples_ms: Vec<f64>,
}

/// Runs `f` `warmup` times untimed, then `iters` times, each timed on its own.
fn time(warmup: usize, iters: usize, mut f: impl FnMut() -> AnyResult<()>) -> AnyResult<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    let mut samples_ms = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let s = Instant::now();
        f()?;
        samples_ms.push(s.elapsed().as_secs_f64() * 1e3);
    }
    let mut t = samples_ms.clone();
    t.sort_by(f64::total_cmp);
    Ok(Timing {
        median_ms: if t.len() % 2 == 1 {
            t[t.len() / 2]
        } else {
            0.5 * (t[t.len() / 2 - 1] + t[t.len() / 2])
        },
        min_ms: t[0],
        samples_ms,
    })
}

fn record(out: &mut Vec<Value>, what: &str, size: usize, detail: &str, t: &Timing) {
    eprintln!(
        "ire  {what:<14} {size:>10}  median {:>10.3} ms  min {:>10.3} ms",
        t.median_ms, t.min_ms
    );
    out.push(json!({
        "what": what,
        "size": size,
        "detail": detail,
        "median_ms": t.median_ms,
        "min_ms": t.min_ms,
        "iters": t.samples_ms.len(),
        "samples_ms": t.samples_ms,
    }));
}

/// AdamW, SGD-momentum, fused AdmIRE and the mask refresh on `n` parameters.
fn optimizer_steps(b: &CpuBackend, n: usize, args: &Args, out: &mut Vec<Value>) -> AnyResult<()> {
    let (w, it) = (args.opt_warmup, args.opt_iters);
    let mut theta = b.alloc_from(&random_f32(n, 1, 1.0))?;
    let grad = b.alloc_from(&random_f32(n, 2, 1e-2))?;
    let est = b.alloc_from(&random_f32(n, 3, 1e-2))?;
    let (mut m, mut v, mut mom, mut h) = (
        b.alloc::<f32>(n)?,
        b.alloc::<f32>(n)?,
        b.alloc::<f32>(n)?,
        b.alloc::<f32>(n)?,
    );
    let mut mask = b.alloc::<u8>(n)?;
    let mask_host: Vec<u8> = random_f32(n, 4, 1.0)
        .iter()
        .map(|&x| u8::from(x < 0.6))
        .collect();
    b.upload(&mut mask, &mask_host)?;
    // PyTorch's AdamW at lr 1e-3, weight decay 0.1, betas (0.9, 0.999), eps 1e-8.
    let s = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    }
    .scalars::<f32>(1e-3, 100);
    let t = time(w, it, || {
        Ok(b.adamw_step(&mut theta, &grad, &mut m, &mut v, &s)?)
    })?;
    record(out, "adamw", n, "adamw_step", &t);

    let sgd = SgdScalars {
        lr: 1e-3f32,
        weight_decay: 5e-4,
        momentum: 0.9,
        dampening_complement: 1.0,
        nesterov: false,
        first_step: false,
    };
    let t = time(w, it, || {
        Ok(b.sgd_momentum_step(&mut theta, &grad, &mut mom, &sgd)?)
    })?;
    record(out, "sgd_momentum", n, "sgd_momentum_step", &t);

    let t = time(w, it, || {
        Ok(b.adamw_ire_step(&mut theta, &grad, &mut m, &mut v, &s, &mask, 2.0)?)
    })?;
    record(out, "admire", n, "fused adamw_ire_step, kappa 2", &t);

    let k = sharp_count(n, args.gamma);
    let t = time(w, it, || {
        b.ema_square(&mut h, &est, 0.0)?;
        let tau = b.kth_largest(&[&h], k)?;
        Ok(b.mask_le(&h, tau, &mut mask)?)
    })?;
    record(
        out,
        "mask_refresh",
        n,
        &format!("ema_square (beta 0) + kth_largest (k {k}) + mask_le"),
        &t,
    );
    Ok(())
}

/// One training step of `model` through `ire-models`' trainer, on the shared workload definition
/// (the paper's recipes on synthetic data of the real shapes).
fn train_step(b: &CpuBackend, model: &str, args: &Args, out: &mut Vec<Value>) -> AnyResult<()> {
    let mut w = Workload {
        model: model.into(),
        batch: args.image_batch,
        context: 0,
        vocab: 0,
    };
    if w.is_lm() {
        w.batch = args.lm_batch;
        w.context = args.lm_context;
        w.vocab = args.lm_vocab.max(2);
    }
    let mut trainer = w.trainer(b.clone())?;
    let params = trainer.param_count();
    let t = time(args.train_warmup, args.train_iters, || {
        trainer.train_step()?;
        Ok(())
    })?;
    record(
        out,
        &format!("train_{model}"),
        w.batch,
        &format!("{}; {params} parameters", w.describe()),
        &t,
    );
    if let Some(last) = out.last_mut() {
        last["params"] = json!(params);
    }
    Ok(())
}

fn main() -> AnyResult<()> {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    let b = CpuBackend::new();
    let mut results = Vec::new();
    if matches!(args.part, Part::Optim | Part::All) {
        for &n in &args.sizes {
            optimizer_steps(&b, n, &args, &mut results)?;
        }
    }
    if matches!(args.part, Part::Train | Part::All) {
        for m in &args.models {
            train_step(&b, m, &args, &mut results)?;
        }
    }
    let doc = json!({
        "impl": "ire",
        "backend": "cpu",
        "threads": b.threads(),
        "wide_simd": b.wide_simd(),
        "results": results,
    });
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&doc)?)?;
    eprintln!("wrote {}", args.json.display());
    Ok(())
}

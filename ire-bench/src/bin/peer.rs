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
//!   presets on CIFAR-shaped inputs (SGD with momentum) and of the language models (AdamW)
//!   through `ire-models`' [`Trainer`](ire_models::train::Trainer), on synthetic data of the
//!   real shapes;
//! - the STREAM triad bandwidth of the machine (the floor the optimizer steps are set against);
//! - the scaling of the AdamW and AdmIRE steps with the parameter count, and of causal
//!   attention (forward and backward) with the context length;
//! - the cost of AdmIRE over AdamW per whole training step (blocks of K = 10 steps in turn).
//!
//! Every JSON file also records the peak resident memory of the process (`VmHWM`), so the
//! script runs each training row in a process of its own. The results go to a JSON file:
//! `cargo run --release -p ire-bench --bin peer -- --json OUT.json`.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use ire_backend_cpu::CpuBackend;
use ire_bench::interleave::interleaved_blocks;
use ire_bench::workloads::Workload;
use ire_bench::{SIZES, bench_mask, random_f32};
use ire_core::formulas::{AdamWScalars, SgdScalars};
use ire_core::optim::sharp_count;
use ire_core::{AdamWConfig, Backend};
use ire_models::nn::{AttnShape, TransformerOps};
use ire_models::train::OptimizerKind;
use serde_json::{Value, json};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Which part of the benchmark to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    /// Optimizer steps and the mask refresh on flat buffers.
    Optim,
    /// One training step of each model.
    Train,
    /// The STREAM triad bandwidth.
    Triad,
    /// The AdamW and AdmIRE steps at every size of `--scaling-sizes`.
    Scaling,
    /// Causal attention, forward and backward, at every context of `--attention-contexts`.
    Attention,
    /// AdmIRE over AdamW per whole training step of the first language model of `--models`.
    Overhead,
    /// Optimizer steps and training steps.
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
    /// Parameter counts of the scaling table.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000_000usize, 3_000_000, 10_000_000, 30_000_000, 100_000_000])]
    scaling_sizes: Vec<usize>,
    /// Context lengths of the attention table.
    #[arg(long, value_delimiter = ',', default_values_t = [128usize, 256, 512, 1024, 2048, 4096])]
    attention_contexts: Vec<usize>,
    /// Heads and width per head of the attention table (the `lm-paper` shape by default).
    #[arg(long, default_value_t = 8)]
    attention_heads: usize,
    /// Width per head of the attention table.
    #[arg(long, default_value_t = 16)]
    attention_head_dim: usize,
    /// Timed blocks of 10 steps per trainer of the overhead part.
    #[arg(long, default_value_t = 6)]
    overhead_blocks: usize,
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
/// The scalars of PyTorch's AdamW at lr 1e-3, weight decay 0.1, betas (0.9, 0.999), eps 1e-8
/// (step 100), as both sides' optimizer-step benchmarks run it.
fn torch_adamw() -> AdamWScalars<f32> {
    AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    }
    .scalars::<f32>(1e-3, 100)
}

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
    let (_, mut mask) = bench_mask(b, n)?;
    let s = torch_adamw();
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
        last["context"] = json!(w.context);
    }
    Ok(())
}

/// The language-model workload of the arguments.
fn lm_workload(model: &str, args: &Args) -> Workload {
    Workload {
        model: model.into(),
        batch: args.lm_batch,
        context: args.lm_context,
        vocab: args.lm_vocab.max(2),
    }
}

/// The STREAM triad on three arrays of 10M `f32` (120 MB, far beyond the caches).
fn triad(out: &mut Vec<Value>) {
    let bw = ire_bench::triad_bandwidth(10_000_000, 10);
    eprintln!("ire  triad bandwidth {:.2} GB/s", bw / 1e9);
    out.push(json!({
        "what": "triad",
        "size": 10_000_000,
        "detail": "STREAM triad a = b + s*c, f32, 12 bytes per element, best of 10 runs",
        "bytes_per_s": bw,
    }));
}

/// The AdamW and fused AdmIRE steps at every size of the scaling table (fewer iterations:
/// a 100M step takes a large fraction of a second).
fn scaling(b: &CpuBackend, args: &Args, out: &mut Vec<Value>) -> AnyResult<()> {
    for &n in &args.scaling_sizes {
        let it = (args.opt_iters * 10_000_000 / n.max(1)).clamp(5, args.opt_iters.max(5));
        let mut theta = b.alloc_from(&random_f32(n, 1, 1.0))?;
        let grad = b.alloc_from(&random_f32(n, 2, 1e-2))?;
        let (mut m, mut v) = (b.alloc::<f32>(n)?, b.alloc::<f32>(n)?);
        let (_, mask) = bench_mask(b, n)?;
        let s = torch_adamw();
        let t = time(2, it, || {
            Ok(b.adamw_step(&mut theta, &grad, &mut m, &mut v, &s)?)
        })?;
        record(out, "scaling_adamw", n, "adamw_step", &t);
        let t = time(2, it, || {
            Ok(b.adamw_ire_step(&mut theta, &grad, &mut m, &mut v, &s, &mask, 2.0)?)
        })?;
        record(
            out,
            "scaling_admire",
            n,
            "fused adamw_ire_step, kappa 2",
            &t,
        );
    }
    Ok(())
}

/// Causal attention of one sequence, forward and backward, at every context of the table.
fn attention(b: &CpuBackend, args: &Args, out: &mut Vec<Value>) -> AnyResult<()> {
    for &t in &args.attention_contexts {
        let s = AttnShape {
            b: 1,
            t,
            h: args.attention_heads,
            dh: args.attention_head_dim,
            causal: true,
        };
        let qkv = b.alloc_from(&random_f32(s.qkv_len(), 5, 1.0))?;
        let dout = b.alloc_from(&random_f32(s.out_len(), 6, 1.0))?;
        let (mut lse, mut o) = (b.alloc::<f32>(s.lse_len())?, b.alloc::<f32>(s.out_len())?);
        let mut dqkv = b.alloc::<f32>(s.qkv_len())?;
        let it = if t >= 2048 { 3 } else { 10 };
        let tm = time(1, it, || {
            b.attention(&qkv, s, &mut lse, &mut o)?;
            Ok(b.attention_backward(&qkv, &o, &lse, &dout, s, &mut dqkv)?)
        })?;
        record(
            out,
            "attention",
            t,
            &format!(
                "causal attention forward + backward, 1 sequence, {} heads x {}",
                s.h, s.dh
            ),
            &tm,
        );
    }
    Ok(())
}

/// AdmIRE (κ 2, γ 0.8, K 10, IRE from the first step, the estimator on the training step's
/// own forward) over AdamW per whole training step of `model`, the two trainers taking blocks
/// of K steps in turn; the mean per-step time of each over the blocks.
fn overhead(b: &CpuBackend, model: &str, args: &Args, out: &mut Vec<Value>) -> AnyResult<()> {
    let w = lm_workload(model, args);
    let base = w.config();
    let mut ire = base.clone();
    ire.optimizer = OptimizerKind::Admire;
    ire.opt.kappa = 2.0;
    ire.opt.gamma = 0.8;
    ire.opt.refresh_every = 10;
    ire.opt.ire_warmup = 0;
    let mut a = w.trainer_with(b.clone(), base)?;
    let mut c = w.trainer_with(b.clone(), ire)?;
    let times = interleaved_blocks(&mut a, &mut c, 10, args.overhead_blocks, |i, x, y| {
        eprintln!(
            "ire  overhead block {i}: AdamW {:.1} ms/step, AdmIRE {:.1} ms/step",
            x * 1e3,
            y * 1e3
        );
        Ok(())
    })?;
    let (adamw_s, admire_s) = times.means();
    out.push(json!({
        "what": format!("overhead_{model}"),
        "size": w.batch,
        "context": w.context,
        "detail": format!(
            "AdmIRE (kappa 2, gamma 0.8, K 10) over AdamW, whole training steps, {} blocks of 10 \
             steps in turn; {}",
            args.overhead_blocks,
            w.describe()
        ),
        "adamw_ms": adamw_s * 1e3,
        "admire_ms": admire_s * 1e3,
        "ratio": times.ratio_of_means(),
        "adamw_blocks_ms": times.a.iter().map(|x| x * 1e3).collect::<Vec<_>>(),
        "admire_blocks_ms": times.b.iter().map(|x| x * 1e3).collect::<Vec<_>>(),
    }));
    Ok(())
}

/// A memory figure of this process from `/proc/self/status` (`VmHWM`: the peak resident
/// memory so far, `VmRSS`: the resident memory now; bytes; Linux), if known.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() -> AnyResult<()> {
    let args = Args::parse();
    // What the process holds before any benchmark (the program itself): the baseline the
    // training rows' memory is measured above.
    let baseline_rss = status_bytes("VmRSS:");
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
    match args.part {
        Part::Triad => triad(&mut results),
        Part::Scaling => scaling(&b, &args, &mut results)?,
        Part::Attention => attention(&b, &args, &mut results)?,
        Part::Overhead => {
            let model = args.models.first().map_or("lm-paper", String::as_str);
            overhead(&b, model, &args, &mut results)?;
        }
        Part::Optim | Part::Train | Part::All => {}
    }
    let doc = json!({
        "impl": "ire",
        "backend": "cpu",
        "threads": b.threads(),
        "wide_simd": b.wide_simd(),
        "results": results,
        "peak_rss_bytes": status_bytes("VmHWM:"),
        "baseline_rss_bytes": baseline_rss,
    });
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&doc)?)?;
    eprintln!("wrote {}", args.json.display());
    Ok(())
}

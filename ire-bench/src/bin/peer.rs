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
//!   `ire-models`' [`Trainer`], on synthetic data of the real shapes.
//!
//! The results go to a JSON file:
//! `cargo run --release -p ire-bench --bin peer -- --json OUT.json`.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use ire_backend_cpu::CpuBackend;
use ire_bench::{SIZES, random_f32};
use ire_core::formulas::SgdScalars;
use ire_core::optim::sharp_count;
use ire_core::{AdamWConfig, Backend};
use ire_models::data::ImageDataset;
use ire_models::rng::Rng;
use ire_models::text::{TextError, TokenBatches, Tokenizer};
use ire_models::train::source::Source;
use ire_models::train::{DatasetKind, OptimizerConfig, OptimizerKind, TrainConfig, Trainer};
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

/// A vocabulary of `n` made-up words (`w0`, `w1`, ...): the language model only needs its size.
struct SyntheticVocab(usize);

impl Tokenizer for SyntheticVocab {
    fn name(&self) -> &str {
        "synthetic"
    }
    fn vocab_size(&self) -> usize {
        self.0
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        text.split_whitespace()
            .map(|w| {
                w.strip_prefix('w')
                    .and_then(|d| d.parse::<u32>().ok())
                    .filter(|&i| (i as usize) < self.0)
                    .ok_or_else(|| TextError::Config(format!("`{w}` is not a synthetic word")))
            })
            .collect()
    }
    fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        let words = ids
            .iter()
            .map(|&i| {
                if (i as usize) < self.0 {
                    Ok(format!("w{i}"))
                } else {
                    Err(TextError::Config(format!(
                        "id {i} is outside the vocabulary"
                    )))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(words.join(" "))
    }
}

/// `count` CIFAR-shaped images of uniform random pixels, uniform random labels of 10 classes.
fn synthetic_images(count: usize, seed: u64) -> ImageDataset {
    let mut rng = Rng::new(seed);
    let per = 3 * 32 * 32;
    ImageDataset {
        pixels: (0..count * per).map(|_| rng.below(256) as u8).collect(),
        labels: (0..count).map(|_| rng.below(10) as u32).collect(),
        channels: 3,
        height: 32,
        width: 32,
        num_classes: 10,
        class_names: Vec::new(),
    }
}

/// One training step of `model` through the [`Trainer`].
fn train_step(b: &CpuBackend, model: &str, args: &Args, out: &mut Vec<Value>) -> AnyResult<()> {
    let lm = model.starts_with("lm-") || model.starts_with("gpt") || model.starts_with("llama");
    let mut cfg = TrainConfig {
        model: model.into(),
        steps: 1_000_000,
        constant_lr: true,
        log_every: 1,
        seed: 0,
        ..TrainConfig::default()
    };
    let (mut trainer, detail, size) = if lm {
        // The paper's WikiText-2 recipe: AdamW (0.9, 0.95), weight decay 5e-4, eps 1e-16.
        cfg.dataset = DatasetKind::Text;
        cfg.optimizer = OptimizerKind::Adamw;
        cfg.lr = 6e-4;
        cfg.opt = OptimizerConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-16,
            weight_decay: 5e-4,
            ..OptimizerConfig::default()
        };
        cfg.batch_size = args.lm_batch;
        cfg.context = args.lm_context;
        let mut rng = Rng::new(7);
        let vocab = args.lm_vocab.max(2);
        let len = 16 * args.lm_batch * args.lm_context + 1;
        let ids: Vec<u32> = (0..len).map(|_| rng.below(vocab as u64) as u32).collect();
        let val: Vec<u32> = ids[..args.lm_context + 1].to_vec();
        let src = Source::Text {
            train: TokenBatches::new(ids, args.lm_context, args.lm_batch, 0)?,
            val: TokenBatches::new(val, args.lm_context, args.lm_batch, 0)?,
            tokenizer: Box::new(SyntheticVocab(vocab)),
        };
        let detail = format!(
            "AdamW; batch {} x context {}, vocabulary {vocab}; synthetic tokens",
            args.lm_batch, args.lm_context
        );
        (
            Trainer::with_source(b.clone(), cfg, src)?,
            detail,
            args.lm_batch,
        )
    } else {
        // The paper's CIFAR recipe: SGD, momentum 0.9, weight decay 5e-4; no augmentation (the
        // PyTorch side has none either), CIFAR-10 normalization.
        cfg.dataset = DatasetKind::Cifar10;
        cfg.optimizer = OptimizerKind::Sgd;
        cfg.lr = 0.1;
        cfg.opt = OptimizerConfig {
            momentum: 0.9,
            weight_decay: 5e-4,
            ..OptimizerConfig::default()
        };
        cfg.batch_size = args.image_batch;
        cfg.crop_padding = Some(0);
        cfg.hflip = Some(false);
        let train = synthetic_images(8 * args.image_batch, 1);
        let test = synthetic_images(args.image_batch, 2);
        let detail = format!(
            "SGD momentum 0.9; batch {} x 3x32x32, 10 classes; synthetic images",
            args.image_batch
        );
        (
            Trainer::with_data(b.clone(), cfg, train, test)?,
            detail,
            args.image_batch,
        )
    };
    let params = trainer.param_count();
    let t = time(args.train_warmup, args.train_iters, || {
        trainer.train_step()?;
        Ok(())
    })?;
    record(
        out,
        &format!("train_{model}"),
        size,
        &format!("{detail}; {params} parameters"),
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

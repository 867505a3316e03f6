//! The `ire` command.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ire_core::Result;
use ire_models::device::{BackendKind, NnTask, compiled_backends, resolve, run_on};
use ire_models::nn::NnOps;
use ire_models::toy::{self, ToyMethod, ToyRun};
use ire_models::train::run::{RunOptions, RunSummary, check_resumable, read_checkpoint, restore};
use ire_models::train::{DatasetKind, EvalMetrics, OptimizerKind, TrainConfig, Trainer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// IRE: Implicit Regularization Enhancement optimizers.
#[derive(Parser)]
#[command(name = "ire", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The toy problem of Figure 1: L(u, v) = (1 + u²) v² / 2 from (1, 0.01).
    Toy(ToyArgs),
    /// Trains a model with one of the six optimizers (SGD, SGD-IRE, SAM, SAM-IRE, AdamW, AdmIRE).
    Train(Box<TrainArgs>),
    /// Evaluates a checkpoint on the test split of its dataset.
    Eval(EvalArgs),
    /// Sharpness of a checkpoint: Tr(∇²L) by Hutchinson (± standard error), λ_max by Lanczos.
    Sharpness(SharpnessArgs),
    /// Generates text from a language-model checkpoint.
    Sample(SampleArgs),
    /// Lists the backends compiled in and the devices they see.
    Devices,
}

#[derive(clap::Args)]
struct SharpnessArgs {
    /// The checkpoint.
    checkpoint: PathBuf,
    /// Training batches the loss is averaged over.
    #[arg(long, default_value_t = 4)]
    batches: usize,
    /// Rademacher probes of the trace estimate.
    #[arg(long, default_value_t = 32)]
    probes: usize,
    /// Lanczos steps for λ_max and the top eigenvalues.
    #[arg(long, default_value_t = 20)]
    lanczos_steps: usize,
    /// Seed of the probes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The dataset location, if it moved since training.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Writes the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// auto, cpu, opencl, cuda or reference.
    #[arg(long, default_value = "auto")]
    backend: BackendKind,
}

#[derive(clap::Args)]
struct SampleArgs {
    /// The checkpoint of a language model.
    checkpoint: PathBuf,
    /// The text to continue.
    #[arg(long, default_value = "\n")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// Softmax temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The corpus location, if it moved since training.
    #[arg(long)]
    data: Option<PathBuf>,
    /// auto, cpu, opencl, cuda or reference.
    #[arg(long, default_value = "auto")]
    backend: BackendKind,
}

/// Flags of `ire train`; each one overrides the config file.
#[derive(clap::Args)]
struct TrainArgs {
    /// A TOML file with any TrainConfig field (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model preset: mlp, mlp-small, resnet-small, resnet20, resnet56, wrn-small, wrn-16-8, wrn-28-10.
    #[arg(long)]
    model: Option<String>,
    /// Dataset format: cifar10, cifar100, idx (MNIST, Fashion-MNIST), folder, digits.
    #[arg(long)]
    dataset: Option<DatasetKind>,
    /// Dataset folder (a file for digits).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Optimizer: sgd, sgd-ire, sam, sam-ire, adamw, admire.
    #[arg(long)]
    optimizer: Option<OptimizerKind>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<u64>,
    /// Total steps (overrides epochs).
    #[arg(long)]
    steps: Option<u64>,
    /// Batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Linear warm-up steps of the learning rate.
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// IRE κ.
    #[arg(long)]
    kappa: Option<f64>,
    /// IRE γ (fraction of flat coordinates).
    #[arg(long)]
    gamma: Option<f64>,
    /// IRE mask refresh interval K.
    #[arg(long)]
    refresh_every: Option<u64>,
    /// Steps before IRE starts.
    #[arg(long)]
    ire_warmup: Option<u64>,
    /// Decay κ with the learning rate.
    #[arg(long)]
    kappa_decay: bool,
    /// SAM ρ.
    #[arg(long)]
    rho: Option<f64>,
    /// ASAM instead of SAM.
    #[arg(long)]
    adaptive: bool,
    /// SGD momentum.
    #[arg(long)]
    momentum: Option<f64>,
    /// Weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Label smoothing.
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Gradient clipping (global norm; 0 = off).
    #[arg(long)]
    clip_grad_norm: Option<f64>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Use at most this many training images.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Use at most this many test images.
    #[arg(long)]
    test_limit: Option<usize>,
    /// Evaluate every N steps.
    #[arg(long)]
    eval_every: Option<u64>,
    /// Checkpoint every N steps.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Log a metrics line every N steps.
    #[arg(long)]
    log_every: Option<u64>,
    /// Text: tokenizer (char, word, gpt2).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Text: context length.
    #[arg(long)]
    context: Option<usize>,
    /// Evaluate on at most this many batches.
    #[arg(long)]
    eval_batches: Option<usize>,
    /// Cosine floor as a fraction of the peak learning rate (the paper's LMs: 0.05).
    #[arg(long)]
    lr_min_ratio: Option<f64>,
    /// AdamW β2.
    #[arg(long)]
    beta2: Option<f64>,
    /// Output folder.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Resume from this checkpoint (e.g. runs/train/checkpoint.irec).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop after this many steps of this invocation (with a checkpoint).
    #[arg(long)]
    stop_after: Option<u64>,
    /// auto, cpu, opencl, cuda or reference.
    #[arg(long, default_value = "auto")]
    backend: BackendKind,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// The checkpoint.
    checkpoint: PathBuf,
    /// The dataset folder, if it moved since training.
    #[arg(long)]
    data: Option<PathBuf>,
    /// auto, cpu, opencl, cuda or reference.
    #[arg(long, default_value = "auto")]
    backend: BackendKind,
}

impl TrainArgs {
    fn config(&self) -> std::result::Result<TrainConfig, String> {
        let mut c = match &self.config {
            Some(p) => TrainConfig::from_toml_file(p)?,
            None => TrainConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { c.$f = v.clone(); } )* };
        }
        macro_rules! set_opt {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { c.opt.$f = v.clone(); } )* };
        }
        set!(
            model,
            dataset,
            data,
            optimizer,
            lr,
            epochs,
            steps,
            batch_size,
            warmup_steps,
            label_smoothing,
            clip_grad_norm,
            seed,
            train_limit,
            test_limit,
            eval_every,
            checkpoint_every,
            log_every,
            tokenizer,
            context,
            eval_batches,
            lr_min_ratio
        );
        set_opt!(
            kappa,
            gamma,
            refresh_every,
            ire_warmup,
            rho,
            momentum,
            weight_decay,
            beta2
        );
        if self.kappa_decay {
            c.opt.kappa_decay = true;
        }
        if self.adaptive {
            c.opt.adaptive = true;
        }
        c.validate()?;
        Ok(c)
    }
}

fn train_command(a: &TrainArgs) -> std::result::Result<ExitCode, String> {
    let cfg = a.config()?;
    let (kind, why) = resolve(a.backend);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    // Ctrl-C: finish the current step, write a checkpoint, exit.
    let _ = ctrlc::set_handler(move || s2.store(true, Ordering::SeqCst));
    let task = TrainRun {
        cfg,
        resume: a.resume.clone(),
        opts: RunOptions {
            out_dir: a.out.clone(),
            progress: !a.quiet,
            stop_after: a.stop_after,
        },
        stop,
    };
    let (name, out) = run_on(kind, task).map_err(|e| e.to_string())?;
    let s = out?;
    eprintln!("backend: {name} ({why})");
    println!(
        "steps {} ({}), {:.1} s, {:.0} {}/s, {:.1} s/epoch",
        s.steps,
        if s.finished {
            "finished"
        } else {
            "interrupted: resume with --resume"
        },
        s.seconds,
        s.images_per_sec,
        s.unit,
        s.seconds_per_epoch
    );
    if let Some(e) = s.eval {
        if s.unit == "tokens" {
            println!(
                "final train loss {:.4}; validation loss {:.4} (perplexity {:.2}), next-token accuracy {:.2}% ({} tokens)",
                s.train_loss,
                e.loss,
                e.loss.exp(),
                100.0 * e.acc,
                e.n
            );
        } else {
            println!(
                "final train loss {:.4}; test loss {:.4}, test accuracy {:.2}% ({} images)",
                s.train_loss,
                e.loss,
                100.0 * e.acc,
                e.n
            );
        }
    }
    for f in &s.files {
        println!("wrote {}", f.display());
    }
    Ok(if s.finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    })
}

fn eval_command(a: &EvalArgs) -> std::result::Result<ExitCode, String> {
    let (name, out) = run_on(
        a.backend,
        EvalRun {
            checkpoint: a.checkpoint.clone(),
            data: a.data.clone(),
        },
    )
    .map_err(|e| e.to_string())?;
    let (step, e) = out?;
    eprintln!("backend: {name}");
    println!(
        "step {step}: test loss {:.4}, test accuracy {:.2}% ({} images)",
        e.loss,
        100.0 * e.acc,
        e.n
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ToyOptimizer {
    /// Plain gradient descent.
    Gd,
    /// IRE on top of gradient descent.
    Ire,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Projector {
    /// The coordinate mask (1, 0): u is the flat direction (the paper's figure).
    Diagonal,
    /// The exact eigen-projection of the local Hessian at every step.
    Exact,
}

#[derive(clap::Args)]
struct ToyArgs {
    /// gd or ire.
    #[arg(long, value_enum, default_value = "gd")]
    optimizer: ToyOptimizer,
    /// Learning rate.
    #[arg(long, default_value_t = 1.0)]
    lr: f64,
    /// IRE boost κ (ignored by gd).
    #[arg(long, default_value_t = 0.0)]
    kappa: f64,
    /// Number of steps.
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// How IRE finds the flat direction.
    #[arg(long, value_enum, default_value = "diagonal")]
    projector: Projector,
    /// Writes the whole trajectory (step,u,v) to this CSV file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// auto, cpu, opencl, cuda or reference.
    #[arg(long, default_value = "auto")]
    backend: BackendKind,
}

struct ToyTask {
    method: ToyMethod,
    lr: f64,
    steps: u64,
}

impl NnTask for ToyTask {
    type Output = Result<ToyRun>;
    fn run<B: ire_models::nn::NnOps + 'static>(self, b: B) -> Result<ToyRun> {
        toy::run(
            &b,
            self.method,
            self.lr,
            self.steps,
            toy::sharp_direction_jacobi,
        )
    }
}

fn toy_command(a: ToyArgs) -> std::result::Result<ExitCode, String> {
    toy::validate(a.lr, a.kappa).map_err(|e| e.to_string())?;
    let method = match (a.optimizer, a.projector) {
        (ToyOptimizer::Gd, _) => ToyMethod::Gd,
        (ToyOptimizer::Ire, Projector::Diagonal) => ToyMethod::IreDiagonal { kappa: a.kappa },
        (ToyOptimizer::Ire, Projector::Exact) => ToyMethod::IreExact { kappa: a.kappa },
    };
    let (kind, why) = resolve(a.backend);
    let (name, run) = run_on(
        kind,
        ToyTask {
            method,
            lr: a.lr,
            steps: a.steps,
        },
    )
    .map_err(|e| e.to_string())?;
    let run = run.map_err(|e| e.to_string())?;
    eprintln!("backend: {name} ({why})");
    if let Some(path) = &a.csv {
        write_csv(path, &run).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let last = run.last();
    match run.diverged_at {
        None => {
            println!("step={} u={} v={}", last.step, num(last.u), num(last.v));
            Ok(ExitCode::SUCCESS)
        }
        Some(s) => {
            println!(
                "diverged at step {s}: |u| or |v| exceeded {:e} or stopped being finite \
                 (last finite point: step={} u={} v={})",
                toy::DIVERGENCE_BOUND,
                last.step,
                num(last.u),
                num(last.v)
            );
            Ok(ExitCode::from(3))
        }
    }
}

/// Shortest round-trip decimal, in scientific notation for tiny magnitudes (like Python's repr).
fn num(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-4 {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// Writes the CSV through a temporary file and a rename, so a reader never sees half a file.
fn write_csv(path: &std::path::Path, run: &ToyRun) -> std::io::Result<()> {
    let tmp = path.with_extension("csv.tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        writeln!(f, "step,u,v")?;
        for p in &run.path {
            writeln!(f, "{},{},{}", p.step, num(p.u), num(p.v))?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn devices_command() -> ExitCode {
    let (auto, why) = resolve(BackendKind::Auto);
    println!(
        "compiled-in backends: {}",
        compiled_backends()
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("auto picks: {auto} ({why})");
    for line in ire_models::device::describe_devices() {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Toy(a) => toy_command(a),
        Command::Train(a) => train_command(&a),
        Command::Eval(a) => eval_command(&a),
        Command::Sharpness(a) => sharpness_command(&a),
        Command::Sample(a) => sample_command(&a),
        Command::Devices => Ok(devices_command()),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

struct TrainRun {
    cfg: TrainConfig,
    resume: Option<PathBuf>,
    opts: RunOptions,
    stop: Arc<AtomicBool>,
}

impl NnTask for TrainRun {
    type Output = std::result::Result<RunSummary, String>;
    fn run<B: NnOps + 'static>(self, b: B) -> Self::Output {
        let mut t = Trainer::new(b, self.cfg.clone()).map_err(|e| e.to_string())?;
        eprintln!(
            "model {} ({} parameters), {}, {} steps of batch {}",
            t.cfg.model,
            t.param_count(),
            t.data().describe(),
            t.total_steps(),
            t.cfg.batch_size
        );
        let mut pos = None;
        if let Some(path) = &self.resume {
            let (ck, ck_cfg, meta) = read_checkpoint(path).map_err(|e| e.to_string())?;
            check_resumable(&ck_cfg, &self.cfg).map_err(|e| e.to_string())?;
            restore(&mut t, &ck, &meta).map_err(|e| e.to_string())?;
            pos = Some(ire_models::train::run::metrics_position(&meta));
            eprintln!("resumed from {} at step {}", path.display(), t.step);
        }
        ire_models::train::run::run(&mut t, &self.opts, pos, &self.stop).map_err(|e| e.to_string())
    }
}

struct EvalRun {
    checkpoint: PathBuf,
    data: Option<PathBuf>,
}

impl NnTask for EvalRun {
    type Output = std::result::Result<(u64, EvalMetrics), String>;
    fn run<B: NnOps + 'static>(self, b: B) -> Self::Output {
        let mut t = ire_models::train::run::trainer_from_checkpoint(b, &self.checkpoint, self.data)
            .map_err(|e| e.to_string())?;
        let e = t.evaluate().map_err(|e| e.to_string())?;
        Ok((t.step, e))
    }
}

struct SharpnessRun {
    a: (PathBuf, Option<PathBuf>, usize, usize, usize, u64),
}

impl NnTask for SharpnessRun {
    type Output = std::result::Result<ire_models::sharpness::SharpnessReport, String>;
    fn run<B: NnOps + 'static>(self, b: B) -> Self::Output {
        let (ck, data, batches, probes, steps, seed) = self.a;
        let mut t = ire_models::train::run::trainer_from_checkpoint(b, &ck, data)
            .map_err(|e| e.to_string())?;
        ire_models::sharpness::measure(&mut t, batches, probes, steps, seed)
            .map_err(|e| e.to_string())
    }
}

fn sharpness_command(a: &SharpnessArgs) -> std::result::Result<ExitCode, String> {
    let task = SharpnessRun {
        a: (
            a.checkpoint.clone(),
            a.data.clone(),
            a.batches,
            a.probes,
            a.lanczos_steps,
            a.seed,
        ),
    };
    let (name, out) = run_on(a.backend, task).map_err(|e| e.to_string())?;
    let report = out?;
    eprintln!("backend: {name}");
    println!("{report}");
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

struct SampleRun {
    a: (PathBuf, Option<PathBuf>, String, usize, f64, u64),
}

impl NnTask for SampleRun {
    type Output = std::result::Result<String, String>;
    fn run<B: NnOps + 'static>(self, b: B) -> Self::Output {
        let (ck, data, prompt, tokens, temperature, seed) = self.a;
        let mut t = ire_models::train::run::trainer_from_checkpoint(b, &ck, data)
            .map_err(|e| e.to_string())?;
        t.sample(&prompt.replace("\\n", "\n"), tokens, temperature, seed)
            .map_err(|e| e.to_string())
    }
}

fn sample_command(a: &SampleArgs) -> std::result::Result<ExitCode, String> {
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        return Err("invalid `temperature`: must be >= 0".into());
    }
    let task = SampleRun {
        a: (
            a.checkpoint.clone(),
            a.data.clone(),
            a.prompt.clone(),
            a.tokens,
            a.temperature,
            a.seed,
        ),
    };
    let (_, out) = run_on(a.backend, task).map_err(|e| e.to_string())?;
    println!("{}", out?);
    Ok(ExitCode::SUCCESS)
}

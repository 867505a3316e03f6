//! The `ire` command.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand, ValueEnum};

mod group;

use group::{Distributed, Group, abort_group, join_group};
use ire_core::Collective;
use ire_models::artifacts::atomic::AtomicFile;
use ire_models::device::{BackendKind, NnTask, compiled_backends, resolve, run_on};
use ire_models::nn::NnOps;
use ire_models::toy::{self, ToyEnd, ToyError, ToyMethod};
use ire_models::train::folder::{self, Claim, RunFolder};
use ire_models::train::run::{
    ResumeFrom, RunOptions, RunSummary, check_resumable, metrics_position, read_checkpoint,
    restore, run_follower, run_in,
};
use ire_models::train::{
    ConfigError, DatasetKind, EvalMetrics, OptimizerKind, OptimizerStateLayout, RunError,
    TrainConfig, TrainError, Trainer,
};

/// IRE: Implicit Regularization Enhancement optimizers.
///
/// Exit status: 0 done; 2 invalid arguments, configuration, data or checkpoint (or a run
/// folder that holds another run, or more memory than allowed); 3 diverged; 4 interrupted
/// (Ctrl-C, SIGTERM or --stop-after: a checkpoint was written, continue with --resume); 5 the
/// run folder is in use by another run; 130 a second Ctrl-C or SIGTERM forced the exit. A
/// data-parallel `ire train` that fails on one rank ends every rank with that rank's status.
#[derive(Parser)]
#[command(name = "ire", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Refuse to take more memory than this (e.g. 8G, 512M; powers of 1024). Default: the
    /// machine's memory.
    #[arg(long, global = true)]
    max_memory: Option<String>,
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
    /// Model preset: mlp, mlp-small, resnet-small, resnet20, resnet56, wrn-small, wrn-16-8,
    /// wrn-28-10, vit-mini, vit-t, vit-s (images); lm-paper, lm-paper-quirk, gpt-nano,
    /// gpt2-block, llama-tiny, llama-60m, llama-119m, llama-229m (language models, with --dataset text).
    #[arg(long)]
    model: Option<String>,
    /// Dataset format: cifar10, cifar100, idx (MNIST, Fashion-MNIST), folder, digits, text (a
    /// plain-text corpus for language models).
    #[arg(long)]
    dataset: Option<DatasetKind>,
    /// Dataset folder (a file for digits and text).
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
    /// Examples per forward/backward pass (the micro-batch with --grad-accum).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Gradient accumulation: each step sums the gradients of N micro-batches of
    /// --batch-size examples (one step sees batch-size × N examples, as with that batch size).
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Cut every step's batch into G fixed gradient shards added in shard order, so that runs
    /// on any number of processes dividing G give the same numbers bit for bit (G ≤
    /// batch-size; not with --grad-accum). Costs an all-gather of G gradients per step.
    #[arg(long)]
    shards: Option<usize>,
    /// Synchronized batch norm in a data-parallel group: batch-norm statistics over the whole
    /// batch of all processes instead of each process's share (costs two all-gathers of 8
    /// bytes per image and channel in each batch-norm forward, one of 16 in its backward).
    /// A no-op in a single process; not with --shards.
    #[arg(long)]
    sync_bn: bool,
    /// ZeRO stage 1 in a data-parallel group: each process holds and steps the optimizer state
    /// (moments, IRE estimate and mask) of its own range of the parameters only, then the
    /// parameters are all-gathered; the same numbers bit for bit (same as --optimizer-state
    /// sharded). Needs a group of processes (an MPI launcher, or --distributed mpi).
    #[arg(long, conflicts_with = "optimizer_state")]
    shard_optimizer_state: bool,
    /// Where a data-parallel group keeps the optimizer state: replicated or sharded. Not kept
    /// in checkpoints: a resumed run is replicated unless told otherwise.
    #[arg(long, value_enum)]
    optimizer_state: Option<StateLayoutChoice>,
    /// Data-parallel training: auto (over MPI when an MPI launcher such as mpirun or srun
    /// started this process), mpi (always, a process started alone is a group of one), none (a
    /// single process, even under a launcher).
    #[arg(long, value_enum, default_value = "auto")]
    distributed: Distributed,
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
    /// How IRE's threshold follows from γ: sharp-top-k (k = ⌊(1−γ)N⌋ largest are sharp; the
    /// default), flat-kth-smallest (m = ⌊γN⌋ smallest are flat), admire (the first when
    /// 1−γ < 0.5, else the second).
    #[arg(long)]
    threshold_rule: Option<ire_models::train::ThresholdKind>,
    /// How γ varies over the refreshes: constant (the default), or rank-increase:H, the
    /// official rank_increase schedule over H ≥ 20 steps after the IRE warm-up.
    #[arg(long)]
    gamma_schedule: Option<ire_models::train::GammaChoice>,
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
    /// Weight decay on every parameter (the official scripts' setting); without it norms,
    /// biases and embeddings take none.
    #[arg(long)]
    decay_all: bool,
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
    /// Output folder. Default: a new folder runs/MODEL-OPTIMIZER-YYYYMMDD-HHMMSS (UTC) for
    /// every run; with --resume, the checkpoint's own folder. A folder holding another run is
    /// refused unless --overwrite.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Let a new run replace the run found in --out (its files are removed when training
    /// starts).
    #[arg(long)]
    overwrite: bool,
    /// Resume from this checkpoint (e.g. runs/NAME/checkpoint.irec); the run continues in the
    /// checkpoint's folder (or branches off into --out), with the checkpoint's settings unless
    /// flags change them.
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
    /// The run's config: `base` (a resumed checkpoint's), else the config file, else the
    /// defaults; then every flag given. A flag that the chosen optimizer or dataset would
    /// ignore is refused.
    fn config(&self, base: Option<TrainConfig>) -> std::result::Result<TrainConfig, TrainError> {
        let mut c = match (&self.config, base) {
            (Some(p), _) => TrainConfig::from_toml_file(p)?,
            (None, Some(b)) => b,
            (None, None) => TrainConfig::default(),
        };
        let mut given: Vec<&'static str> = Vec::new();
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f {
                c.$f = v.clone();
                given.push(stringify!($f));
            } )* };
        }
        macro_rules! set_opt {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f {
                c.opt.$f = v.clone();
                given.push(stringify!($f));
            } )* };
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
            grad_accum,
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
            threshold_rule,
            gamma_schedule,
            rho,
            momentum,
            weight_decay,
            beta2
        );
        if let Some(g) = self.shards {
            c.shards = Some(g);
            given.push("shards");
        }
        match (self.shard_optimizer_state, self.optimizer_state) {
            (true, _) | (_, Some(StateLayoutChoice::Sharded)) => {
                c.optimizer_state = OptimizerStateLayout::Sharded
            }
            (false, Some(StateLayoutChoice::Replicated)) => {
                c.optimizer_state = OptimizerStateLayout::Replicated
            }
            (false, None) => {}
        }
        if self.kappa_decay {
            c.opt.kappa_decay = true;
            given.push("kappa_decay");
        }
        if self.sync_bn {
            c.sync_bn = true;
            given.push("sync_bn");
        }
        if self.decay_all {
            c.decay_all = true;
            given.push("decay_all");
        }
        if self.adaptive {
            c.opt.adaptive = true;
            given.push("adaptive");
        }
        for flag in given {
            ire_models::train::applies::check(&flag.replace('_', "-"), &c)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// The run folder, held from here on: the checkpoint's own (resume), `--out`, or a new one
    /// under `runs/` named after the model, the optimizer and the time.
    fn folder(&self, cfg: &TrainConfig) -> std::result::Result<RunFolder, RunError> {
        let claim = Claim::New {
            overwrite: self.overwrite,
        };
        match (&self.resume, &self.out) {
            (Some(ck), out) => {
                let own = ire_models::artifacts::atomic::folder_of(ck);
                match out {
                    Some(o) if !folder::same_folder(o, &own) => RunFolder::open(o, claim),
                    _ => RunFolder::open(&own, Claim::Continue),
                }
            }
            (None, Some(o)) => RunFolder::open(o, claim),
            (None, None) => RunFolder::create_unique(
                Path::new("runs"),
                &folder::default_name(
                    &cfg.model,
                    &cfg.optimizer.to_string(),
                    std::time::SystemTime::now(),
                ),
            ),
        }
    }
}

/// The choices of `--optimizer-state`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StateLayoutChoice {
    /// Every process holds the whole optimizer state.
    Replicated,
    /// Each process holds the state of its own range of the parameters (ZeRO stage 1).
    Sharded,
}

/// Prints `e` and returns its documented exit status.
fn fail(e: &TrainError) -> ExitCode {
    ExitCode::from(fail_status(e))
}

/// Prints `e` and returns its documented exit status, as a number.
fn fail_status(e: &TrainError) -> u8 {
    eprintln!("error: {e}");
    match e {
        TrainError::Run(r) => r.exit_code(),
        TrainError::Diverged { .. } => 3,
        _ => 2,
    }
}

fn train_command(a: &TrainArgs) -> std::result::Result<ExitCode, String> {
    // Signals first: a Ctrl-C while the data loads must not kill the process mid-write.
    let stop = ire_models::interrupt::install().map_err(|e| e.to_string())?;
    let group = join_group(a.distributed)?;
    let (rank, world) = group
        .as_ref()
        .map_or((0, 1), |g| (g.rank(), g.world_size()));
    if rank == 0 {
        match &group {
            Some(_) => eprintln!("world size: {world} (MPI)"),
            None => eprintln!("world size: 1 (single process)"),
        }
    }
    let mut out = train_ranks(a, stop, group.clone());
    if let Some(g) = &group
        && world > 1
    {
        if let Ok(0 | 4) = out {
            // Every rank waits for rank 0's files: a rank that exits with a non-zero status
            // (4, interrupted) while another still runs makes the launcher end the job.
            if let Err(e) = g.barrier() {
                out = Err(e.to_string());
            }
        }
        // A rank that fails ends every rank now: the others may be waiting for it in a
        // collective, and finalizing MPI would wait for them.
        let code = match &out {
            Ok(0 | 4) => None,
            Ok(c) => Some(*c),
            Err(e) => {
                eprintln!("error: {e}");
                Some(2)
            }
        };
        if let Some(c) = code {
            eprintln!("rank {rank} of {world} failed: ending every rank (exit status {c})");
            abort_group(g, c);
        }
    }
    // The group (and MPI) ends when `group` drops, after every rank has finished.
    out.map(ExitCode::from)
}

/// `ire train` on this rank of `group` (or alone); the exit status.
fn train_ranks(
    a: &TrainArgs,
    stop: &'static AtomicBool,
    group: Option<Group>,
) -> std::result::Result<u8, String> {
    let rank = group.as_ref().map_or(0, |g| g.rank());
    let (kind, why) = resolve(a.backend);
    let ck_path = a.resume.clone();
    // With --resume, the checkpoint's folder is held before its checkpoint is read. Only rank
    // 0 holds a folder; every rank reads the checkpoint.
    let (folder, cfg, resume) = match &ck_path {
        Some(path) => {
            if !path.is_file() {
                // Nothing to hold: say why the checkpoint cannot be read.
                if let Err(e) = read_checkpoint(path) {
                    return Ok(fail_status(&e));
                }
            }
            let folder = if rank == 0 {
                match a.folder(&TrainConfig::default()) {
                    Ok(f) => Some(f),
                    Err(e) => return Ok(fail_status(&e.into())),
                }
            } else {
                None
            };
            let (ck, ck_cfg, meta) = match read_checkpoint(path) {
                Ok(r) => r,
                Err(e) => return Ok(fail_status(&e)),
            };
            let cfg = match a.config(Some(ck_cfg.clone())) {
                Ok(c) => c,
                Err(e) => return Ok(fail_status(&e)),
            };
            if let Err(e) = check_resumable(&ck_cfg, &cfg) {
                return Ok(fail_status(&e));
            }
            let from = ResumeFrom {
                position: metrics_position(&meta),
                folder: ire_models::artifacts::atomic::folder_of(path),
            };
            (folder, cfg, Some((ck, meta, from)))
        }
        None => {
            let cfg = match a.config(None) {
                Ok(c) => c,
                Err(e) => return Ok(fail_status(&e)),
            };
            if rank == 0 {
                match a.folder(&cfg) {
                    Ok(f) => (Some(f), cfg, None),
                    Err(e) => return Ok(fail_status(&e.into())),
                }
            } else {
                (None, cfg, None)
            }
        }
    };
    if cfg.optimizer_state == OptimizerStateLayout::Sharded && group.is_none() {
        return Ok(fail_status(
            &ConfigError::OutOfRange {
                field: "optimizer_state",
                value: "sharded in a single process".into(),
                why: "shards the state over the processes of a data-parallel group: start `ire \
                      train` under an MPI launcher (mpirun -np N) or with --distributed mpi",
            }
            .into(),
        ));
    }
    if let Some(folder) = &folder {
        for note in folder.notes() {
            eprintln!("note: {note}");
        }
        eprintln!("run folder: {}", folder.dir().display());
    }
    // A folder made for this run goes again if the run leaves nothing in it.
    let made = folder
        .as_ref()
        .filter(|_| a.resume.is_none() && a.out.is_none())
        .map(|f| f.dir().to_path_buf());
    let task = TrainRun {
        cfg,
        opts: RunOptions {
            out_dir: folder
                .as_ref()
                .map(|f| f.dir().to_path_buf())
                .unwrap_or_default(),
            progress: !a.quiet && rank == 0,
            stop_after: a.stop_after,
            overwrite: a.overwrite,
        },
        folder,
        resume,
        stop,
        group,
    };
    let out = run_on(kind, task);
    if let Some(dir) = made {
        // Only an empty folder is removed.
        let _ = std::fs::remove_dir(dir);
    }
    let (name, out) = out.map_err(|e| e.to_string())?;
    let s = match out {
        Ok(s) => s,
        Err(e) => return Ok(fail_status(&e)),
    };
    if rank != 0 {
        // Rank 0 reports for the group.
        return Ok(if s.finished { 0 } else { 4 });
    }
    eprintln!("backend: {name} ({why})");
    if s.already_finished {
        println!(
            "the run already finished at step {}: nothing to do (final train loss {:.4})",
            s.steps, s.train_loss
        );
    } else if !s.finished && s.files.is_empty() {
        println!(
            "interrupted at step {} before training started: nothing was written",
            s.steps
        );
    } else {
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
    }
    if let Some(e) = s.eval {
        println!(
            "final train loss {:.4}; {}",
            s.train_loss,
            eval_line(&e, s.unit == "tokens")
        );
    }
    for f in &s.files {
        println!("wrote {}", f.display());
    }
    Ok(if s.finished { 0 } else { 4 })
}

/// The evaluation metrics as printed: validation loss, perplexity and next-token accuracy for
/// text, test loss and accuracy for images.
fn eval_line(e: &EvalMetrics, text: bool) -> String {
    if text {
        format!(
            "validation loss {:.4} (perplexity {:.2}), next-token accuracy {:.2}% ({} tokens)",
            e.loss,
            e.loss.exp(),
            100.0 * e.acc,
            e.n
        )
    } else {
        format!(
            "test loss {:.4}, test accuracy {:.2}% ({} images)",
            e.loss,
            100.0 * e.acc,
            e.n
        )
    }
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
    let (step, e, text) = match out {
        Ok(r) => r,
        Err(e) => return Ok(fail(&e)),
    };
    eprintln!("backend: {name}");
    println!("step {step}: {}", eval_line(&e, text));
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
    /// Writes the whole trajectory (step,u,v) to this CSV file, streamed as it is computed (any
    /// number of steps takes constant memory); the file appears complete or not at all.
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
    csv: Option<AtomicFile>,
    stop: &'static AtomicBool,
}

impl NnTask for ToyTask {
    type Output = std::result::Result<(ToyEnd, Option<AtomicFile>), ToyError>;
    fn run<B: NnOps + 'static>(mut self, b: B) -> Self::Output {
        if let Some(f) = self.csv.as_mut()
            && let Err(e) = writeln!(f.writer(), "step,u,v")
        {
            return Err(ToyError::Output(e));
        }
        let mut csv = self.csv;
        let end = toy::run_with(
            &b,
            self.method,
            self.lr,
            self.steps,
            toy::sharp_direction_jacobi,
            self.stop,
            |p| match csv.as_mut() {
                Some(f) => writeln!(f.writer(), "{},{},{}", p.step, num(p.u), num(p.v)),
                None => Ok(()),
            },
        );
        end.map(|e| (e, csv))
    }
}

fn toy_command(a: ToyArgs) -> std::result::Result<ExitCode, String> {
    toy::validate(a.lr, a.kappa).map_err(|e| e.to_string())?;
    let method = match (a.optimizer, a.projector) {
        (ToyOptimizer::Gd, _) => ToyMethod::Gd,
        (ToyOptimizer::Ire, Projector::Diagonal) => ToyMethod::IreDiagonal { kappa: a.kappa },
        (ToyOptimizer::Ire, Projector::Exact) => ToyMethod::IreExact { kappa: a.kappa },
    };
    let stop = ire_models::interrupt::install().map_err(|e| e.to_string())?;
    // The file is checked (a folder is refused) before any step runs.
    let csv = match &a.csv {
        Some(p) => Some(AtomicFile::create(p).map_err(|e| format!("--csv: {e}"))?),
        None => None,
    };
    let (kind, why) = resolve(a.backend);
    let (name, out) = run_on(
        kind,
        ToyTask {
            method,
            lr: a.lr,
            steps: a.steps,
            csv,
            stop,
        },
    )
    .map_err(|e| e.to_string())?;
    eprintln!("backend: {name} ({why})");
    let (end, csv) = out.map_err(|e| match &a.csv {
        Some(p) => format!("{}: {e}", p.display()),
        None => e.to_string(),
    })?;
    if let Some(f) = csv {
        f.commit().map_err(|e| e.to_string())?;
    }
    let last = end.last;
    if end.interrupted {
        println!(
            "interrupted at step={} u={} v={}",
            last.step,
            num(last.u),
            num(last.v)
        );
        return Ok(ExitCode::from(4));
    }
    match end.diverged_at {
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
    if let Some(m) = &cli.max_memory {
        match ire_models::memory::parse_size(m) {
            Ok(b) => ire_models::memory::set_max_memory(Some(b)),
            Err(e) => {
                eprintln!("error: --max-memory: {e}");
                return ExitCode::from(2);
            }
        }
    }
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
    /// Rank 0's (or a single process's) run folder; `None` on the other ranks.
    folder: Option<RunFolder>,
    resume: Option<(
        ire_models::artifacts::Checkpoint,
        serde_json::Value,
        ResumeFrom,
    )>,
    opts: RunOptions,
    stop: &'static AtomicBool,
    group: Option<Group>,
}

impl NnTask for TrainRun {
    type Output = std::result::Result<RunSummary, TrainError>;
    fn run<B: NnOps + 'static>(self, b: B) -> Self::Output {
        let mut t = Trainer::new(b, self.cfg.clone())?;
        if let Some(g) = self.group {
            t = t.with_collective(Box::new(g))?;
        }
        let lead = t.rank() == 0;
        let state = t.measure_optimizer_state()?;
        if lead {
            let list: Vec<String> = state.iter().map(u64::to_string).collect();
            eprintln!(
                "optimizer state per process: {} bytes ({})",
                list.join(", "),
                if t.shards_optimizer_state() {
                    "sharded"
                } else {
                    "replicated"
                }
            );
            eprintln!(
                "model {} ({} parameters), {}, {} steps of batch {}{}",
                t.cfg.model,
                t.param_count(),
                t.data().describe(),
                t.total_steps(),
                t.cfg.step_batch(),
                match (t.cfg.grad_accum, t.cfg.shards) {
                    (_, Some(g)) => format!(" (in {g} shards)"),
                    (1, None) => String::new(),
                    (n, None) => format!(" ({n} micro-batches of {})", t.cfg.batch_size),
                }
            );
        }
        let mut from = None;
        if let Some((ck, meta, r)) = self.resume {
            restore(&mut t, &ck, &meta)?;
            if lead {
                eprintln!(
                    "resumed from {} at step {}",
                    r.folder.join(folder::CHECKPOINT_FILE).display(),
                    t.step
                );
            }
            from = Some(r);
        }
        match &self.folder {
            Some(f) => run_in(&mut t, f, &self.opts, from, self.stop),
            None => run_follower(
                &mut t,
                &self.opts,
                from.as_ref().map(|r| &r.position),
                self.stop,
            ),
        }
    }
}

struct EvalRun {
    checkpoint: PathBuf,
    data: Option<PathBuf>,
}

impl NnTask for EvalRun {
    /// The step, the metrics, and whether they are per token (a language model).
    type Output = std::result::Result<(u64, EvalMetrics, bool), TrainError>;
    fn run<B: NnOps + 'static>(self, b: B) -> Self::Output {
        let mut t =
            ire_models::train::run::trainer_from_checkpoint(b, &self.checkpoint, self.data)?;
        let e = t.evaluate()?;
        let text = t.data().tokenizer().is_some();
        Ok((t.step, e, text))
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
        ire_models::artifacts::atomic::write_bytes(p, text.as_bytes())
            .map_err(|e| e.to_string())?;
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

//! The `ire` command.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ire_core::{Backend, Result};
use ire_models::device::{BackendKind, BackendTask, compiled_backends, resolve, run_on};
use ire_models::toy::{self, ToyMethod, ToyRun};

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
    /// Lists the backends compiled in and the devices they see.
    Devices,
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

impl BackendTask for ToyTask {
    type Output = ToyRun;
    fn run<B: Backend>(self, b: &B) -> Result<ToyRun> {
        toy::run(
            b,
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

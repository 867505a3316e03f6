//! Cross-backend equivalence: every computing operation of `ire_core::Backend` and 50-step
//! SGD / AdamW / SAM / ASAM trajectories with and without IRE, run with identical inputs on
//! every backend of the build (CPU; OpenCL and CUDA with their features, where a device
//! exists) and compared with the reference backend. Prints one Markdown table and exits
//! non-zero if any row is out of tolerance.
//!
//! ```text
//! cargo run --release -p ire-bench --features opencl --bin equivalence
//! cargo run -p ire-bench --features opencl --bin equivalence -- --quick
//! cargo run -p ire-bench --bin equivalence -- --backends cpu --markdown equivalence.md
//! # and every model's small preset on the device backends against the CPU backend
//! cargo run --release -p ire-bench --features opencl --bin equivalence -- --models 50
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use ire_bench::equivalence::{Options, parse_backends, run};
use ire_bench::model_equivalence;

/// Compares every backend of this build with the reference backend, operation by operation
/// and along optimizer trajectories.
#[derive(Parser, Debug)]
#[command(name = "equivalence")]
struct Cli {
    /// Small sizes and few steps (seconds, even in a debug build).
    #[arg(long)]
    quick: bool,
    /// Comma-separated backends to compare with the reference: cpu, opencl, cuda. Default:
    /// every backend of this build that has a device (absent ones are noted and skipped).
    #[arg(long, value_name = "LIST")]
    backends: Option<String>,
    /// Also write the table (Markdown) to this file.
    #[arg(long, value_name = "PATH")]
    markdown: Option<PathBuf>,
    /// Also train each model's small preset on every device backend against the CPU backend
    /// (loss and gradient at θ₀, one AdmIRE step, a loss curve of this many steps).
    #[arg(long, value_name = "STEPS")]
    models: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut opts = Options::new(cli.quick);
    if let Some(list) = &cli.backends {
        match parse_backends(list) {
            Ok(b) => opts.backends = Some(b),
            Err(e) => {
                eprintln!("equivalence: --backends: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let start = Instant::now();
    let report = match run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("equivalence: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = report.markdown();
    println!("{text}");
    println!(
        "{} rows in {:.1} s",
        report.rows.len(),
        start.elapsed().as_secs_f64()
    );
    if let Some(path) = &cli.markdown
        && let Err(e) = std::fs::write(path, &text)
    {
        eprintln!("equivalence: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let mut models_failed = 0;
    if let Some(steps) = cli.models {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let (rows, notes) = model_equivalence::run_models(&root, steps);
        println!("\n{}", model_equivalence::markdown(&rows));
        println!("{}", model_equivalence::op_tolerances());
        for n in &notes {
            println!("note: {n}");
        }
        models_failed = rows
            .iter()
            .filter(|r| !r.check.violations().is_empty())
            .count()
            + notes.iter().filter(|n| n.contains("FAILED")).count();
    }
    if models_failed > 0 {
        eprintln!("equivalence: {models_failed} model check(s) failed");
        return ExitCode::FAILURE;
    }
    if report.passed() {
        println!("every row within tolerance");
        ExitCode::SUCCESS
    } else {
        eprint!("{}", report.failure_summary());
        eprintln!(
            "equivalence: {} of {} rows out of tolerance",
            report.failures().len(),
            report.rows.len()
        );
        ExitCode::FAILURE
    }
}

//! One training step of small presets on the CPU backend and on every device backend of the
//! build, in one run: the measurement behind "`auto` never picks an OpenCL device that is a
//! CPU (PoCL)". Each preset trains with AdmIRE as `ire_models::crosscheck::check_config` sets
//! it up (digits shipped in `data/` for the image models, the text shipped there for the
//! language model), so a step includes the estimator pass every fifth step.
//!
//! `cargo bench -p ire-bench --features opencl --bench backends -- --warm-up-time 1
//! --measurement-time 5 --noplot` (`-- --test` runs each benchmark once, as a smoke check).
//! After criterion's output a table gives each backend's median step time (of 30 steps timed
//! one by one after criterion's runs) and its ratio to the CPU backend's.

use std::path::Path;
use std::time::Instant;

use criterion::Criterion;
use ire_models::crosscheck::{check_config, default_text};
use ire_models::device::{BackendKind, NnTask, run_if_present};
use ire_models::nn::NnOps;
use ire_models::train::Trainer;

const PRESETS: [&str; 3] = ["mlp-small", "resnet-small", "llama-tiny"];

/// Steps timed one by one for the closing table.
const TABLE_STEPS: usize = 30;

fn trainer<B: NnOps + 'static>(
    b: B,
    model: &str,
) -> Result<Trainer<B>, Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cfg = check_config(model, &root, &default_text(&root));
    // Long enough that no benchmark runs past the schedule.
    cfg.steps = 10_000_000;
    Ok(Trainer::new(b, cfg)?)
}

/// Benchmarks a step of `model` on the backend it is given; returns the median seconds per step.
struct Bench<'a> {
    c: &'a mut Criterion,
    label: &'a str,
    model: &'a str,
    quick: bool,
}

impl NnTask for Bench<'_> {
    type Output = Result<f64, Box<dyn std::error::Error>>;
    fn run<B: NnOps + 'static>(self, b: B) -> Self::Output {
        let (model, name) = (self.model, self.label);
        let mut t = trainer(b, model)?;
        let mut failed = None;
        self.c
            .bench_function(&format!("train_step/{model}/{name}"), |bch| {
                bch.iter(|| {
                    if let Err(e) = t.train_step() {
                        failed.get_or_insert(e);
                    }
                })
            });
        if let Some(e) = failed {
            return Err(format!("{model} on {name}: {e}").into());
        }
        let steps = if self.quick { 1 } else { TABLE_STEPS };
        let mut times = Vec::with_capacity(steps);
        for _ in 0..steps {
            let t0 = Instant::now();
            t.train_step()?;
            times.push(t0.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut c = Criterion::default().configure_from_args();
    let quick = std::env::args().any(|a| a == "--test");
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    for kind in [BackendKind::Cpu, BackendKind::OpenCl, BackendKind::Cuda] {
        let mut medians = Vec::new();
        let mut device = String::new();
        for model in PRESETS {
            let label = kind.name();
            let task = Bench {
                c: &mut c,
                label,
                model,
                quick,
            };
            match run_if_present(kind, task)? {
                Some((name, median)) => {
                    device = name;
                    medians.push(median?);
                }
                None => break,
            }
        }
        if medians.is_empty() {
            println!("{kind}: not compiled in or no device; its benchmarks are skipped");
        } else {
            rows.push((format!("{} ({device})", kind.name()), medians));
        }
    }
    if quick {
        println!("\n(--test runs each benchmark once: the times below are not measurements)");
    }
    println!(
        "\nMedian time of one training step (ms; AdmIRE, batch 16), ratio to the CPU backend:\n"
    );
    println!("| backend | {} |", PRESETS.join(" | "));
    println!("| --- |{}", " --- |".repeat(PRESETS.len()));
    let cpu = rows[0].1.clone();
    for (name, med) in &rows {
        let cells: Vec<String> = med
            .iter()
            .zip(&cpu)
            .map(|(m, c)| format!("{:.2} ({:.2}×)", m * 1e3, m / c))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    c.final_summary();
    Ok(())
}

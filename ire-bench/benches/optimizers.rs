//! Optimizer-step benchmarks on every compiled-in backend, at 1M and 10M f32 parameters.
//!
//! Besides criterion's own output, each benchmark prints its ratio to the memory-traffic floor
//! (bytes it must move / STREAM triad bandwidth measured here), and AdmIRE's and the mask
//! refresh's ratio to AdamW; a Markdown table of everything closes the run.
//!
//! `cargo bench -p ire-bench -- --warm-up-time 0.5 --measurement-time 2 --noplot`
//! (`-- --test` runs each benchmark once, as a smoke check).

use criterion::Criterion;
use ire_bench::{Report, SIZES, bench_backend, triad_bandwidth};
use ire_models::device::{BackendKind, NnTask, run_if_present};
use ire_models::nn::NnOps;

/// The benchmarks of one backend (opened by the backend selection).
struct Bench<'a> {
    c: &'a mut Criterion,
    report: &'a mut Report,
}

impl NnTask for Bench<'_> {
    type Output = ire_core::Result<()>;
    fn run<B: NnOps + 'static>(self, b: B) -> ire_core::Result<()> {
        let name = b.name().to_string();
        for n in SIZES {
            bench_backend(self.c, self.report, &name, &b, n, &|| b.synchronize())?;
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut c = Criterion::default().configure_from_args();
    // 3 arrays of 16M f32 (192 MiB): far beyond the last-level cache.
    let bandwidth = triad_bandwidth(1 << 24, 10);
    println!("triad bandwidth: {:.1} GB/s", bandwidth / 1e9);
    let mut report = Report::new(bandwidth);

    for kind in [BackendKind::Cpu, BackendKind::OpenCl, BackendKind::Cuda] {
        let task = Bench {
            c: &mut c,
            report: &mut report,
        };
        match run_if_present(kind, task)? {
            Some((name, done)) => {
                println!("{kind}: {name}");
                done?;
            }
            None => println!("{kind}: not compiled in or no device; its benchmarks are skipped"),
        }
    }

    // Measured again at the end: the table uses the better of the two (the machine may have
    // been busier at the start).
    let again = triad_bandwidth(1 << 24, 10);
    println!("triad bandwidth at the end: {:.1} GB/s", again / 1e9);
    report.bandwidth = report.bandwidth.max(again);
    if std::env::args().any(|a| a == "--test") {
        println!("\n(--test runs each benchmark once: the times below are not measurements)");
    }
    println!("\n{}", report.table());
    c.final_summary();
    Ok(())
}

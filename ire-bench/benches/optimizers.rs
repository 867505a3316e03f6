//! Optimizer-step benchmarks on every compiled-in backend, at 1M and 10M f32 parameters.
//!
//! Besides criterion's own output, each benchmark prints its ratio to the memory-traffic floor
//! (bytes it must move / STREAM triad bandwidth measured here), and AdmIRE's and the mask
//! refresh's ratio to AdamW; a Markdown table of everything closes the run.
//!
//! `cargo bench -p ire-bench -- --warm-up-time 0.5 --measurement-time 2 --noplot`
//! (`-- --test` runs each benchmark once, as a smoke check).

use criterion::Criterion;
use ire_backend_cpu::CpuBackend;
use ire_bench::{Report, SIZES, bench_backend, triad_bandwidth};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut c = Criterion::default().configure_from_args();
    // 3 arrays of 16M f32 (192 MiB): far beyond the last-level cache.
    let bandwidth = triad_bandwidth(1 << 24, 10);
    println!("triad bandwidth: {:.1} GB/s", bandwidth / 1e9);
    let mut report = Report::new(bandwidth);

    let cpu = CpuBackend::new();
    for n in SIZES {
        bench_backend(&mut c, &mut report, "cpu", &cpu, n, &|| Ok(()))?;
    }
    #[cfg(feature = "opencl")]
    match ire_backend_opencl::optional()? {
        Some(ocl) => {
            println!("opencl device: {}", ocl.runtime().info());
            for n in SIZES {
                bench_backend(&mut c, &mut report, "opencl", &ocl, n, &|| {
                    ocl.synchronize()
                })?;
            }
        }
        None => println!("opencl: no device, OpenCL benchmarks skipped"),
    }
    #[cfg(feature = "cuda")]
    match ire_backend_cuda::from_env() {
        Ok(cuda) => {
            for n in SIZES {
                bench_backend(&mut c, &mut report, "cuda", &cuda, n, &|| {
                    cuda.synchronize()
                })?;
            }
        }
        Err(e) => println!("cuda: {e}; CUDA benchmarks skipped"),
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

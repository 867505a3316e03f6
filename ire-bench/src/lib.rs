//! # ire-bench
//!
//! Benchmarks of the IRE optimizer steps on any [`Backend`], with each time set against the
//! memory-traffic floor: the bytes the operation must move divided by a STREAM-style triad
//! bandwidth measured in the same process ([`triad_bandwidth`]).
//!
//! [`bench_backend`] registers every benchmark of one backend at one size, so adding a backend
//! to the benches is one call; [`Report`] collects the times and prints the ratios (to the
//! floor, and of AdmIRE and the mask refresh to AdamW).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use ire_core::formulas::AdamWScalars;
use ire_core::optim::{
    AdamW, AdamWConfig, EstimateInput, Estimator, Ire, IreConfig, IreStep, Sam, SamConfig, Sgd,
    SgdConfig, sharp_count,
};
use ire_core::{Backend, Error, Result};
use rayon::prelude::*;

pub mod equivalence;
pub mod interleave;
pub mod model_equivalence;
pub mod workloads;

/// Parameter counts of the benches: 1M and 10M.
pub const SIZES: [usize; 2] = [1_000_000, 10_000_000];

/// Bytes per parameter each benchmarked operation must move (f32 values, packed mask).
///
/// Counted like STREAM: every array read once and every array written once, 4 bytes per `f32`
/// and 1/8 per mask bit (`ire_core::mask`), with no write-allocate traffic (the triad is counted the same way, so
/// the ratio compares like with like).
pub mod traffic {
    /// AdamW: reads θ, g, m, v; writes θ, m, v.
    pub const ADAMW: f64 = 28.0;
    /// SGD with momentum: reads θ, g, b; writes θ, b.
    pub const SGD_MOMENTUM: f64 = 20.0;
    /// Fused AdmIRE step: AdamW plus the packed mask (one bit per parameter, 1/8 byte).
    pub const ADMIRE: f64 = 28.125;
    /// Mask refresh: `ema_square` (reads h, ĝ; writes h: 12), the selection (reads h: 4),
    /// `mask_le` (reads h, writes the packed mask: 4.125).
    pub const MASK_REFRESH: f64 = 20.125;
    /// One AdmIRE step through `Ire<AdamW>` with a refresh every 10 steps, amortised: the
    /// fused step (28.125) plus a tenth of the refresh, which `Ire` precedes by a non-finite
    /// check of ĝ (4 + 20.125 = 24.125).
    pub const ADMIRE_K10_PER_STEP: f64 = 28.125 + 24.125 / 10.0;
    /// SAM-IRE step (gradient at the perturbed point excluded): ‖g‖² (4), θ backup (8),
    /// perturbation (12), restore (8), fused SGD-momentum-IRE step (reads θ, g, b and the
    /// packed mask; writes θ, b: 20.125).
    pub const SAM_IRE: f64 = 52.125;
}

/// STREAM triad `a ← b + s·c` on three `f32` arrays of `len` elements, in parallel on rayon's
/// current pool: the best bandwidth (bytes/s, 12 bytes per element) of `runs` runs.
pub fn triad_bandwidth(len: usize, runs: usize) -> f64 {
    const CHUNK: usize = 1 << 16;
    let b: Vec<f32> = (0..len).into_par_iter().map(|i| (i % 7) as f32).collect();
    let c: Vec<f32> = (0..len).into_par_iter().map(|i| (i % 5) as f32).collect();
    let mut a = vec![0.0f32; len];
    let s = 3.0f32;
    let mut triad = || {
        let t = Instant::now();
        a.par_chunks_mut(CHUNK)
            .zip(b.par_chunks(CHUNK))
            .zip(c.par_chunks(CHUNK))
            .for_each(|((a, b), c)| {
                for ((a, &b), &c) in a.iter_mut().zip(b).zip(c) {
                    *a = b + s * c;
                }
            });
        std::hint::black_box(&a);
        t.elapsed().as_secs_f64()
    };
    // The first run faults the pages of `a` in; it does not count. The best of the others is
    // the bandwidth the machine gives when nothing else competes for it.
    triad();
    let best = (0..runs.max(1))
        .map(|_| triad())
        .fold(f64::INFINITY, f64::min);
    12.0 * len as f64 / best
}

/// One measured benchmark.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Backend name.
    pub backend: String,
    /// Parameters.
    pub n: usize,
    /// Benchmark name (`adamw`, `admire`, ...).
    pub op: &'static str,
    /// Median time per operation (s) over criterion's samples.
    pub median_s: f64,
    /// Best time per operation (s) over criterion's samples.
    pub best_s: f64,
    /// Bytes per parameter the operation must move.
    pub bytes_per_param: f64,
}

impl Entry {
    /// Time the memory traffic alone would take at `bandwidth` bytes/s.
    pub fn floor_s(&self, bandwidth: f64) -> f64 {
        self.bytes_per_param * self.n as f64 / bandwidth
    }
}

/// The times of every benchmark of a run, and the triad bandwidth they are set against.
#[derive(Clone, Debug)]
pub struct Report {
    /// Triad bandwidth in bytes/s.
    pub bandwidth: f64,
    /// The benchmarks measured so far.
    pub entries: Vec<Entry>,
}

fn ms(s: f64) -> String {
    format!("{:.3} ms", s * 1e3)
}

fn label(n: usize) -> String {
    if n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n.is_multiple_of(1_000) {
        format!("{}K", n / 1_000)
    } else {
        n.to_string()
    }
}

/// Name of the derived row: the fused AdmIRE step plus a tenth of the mask refresh.
pub const ADMIRE_K10_OPS: &str = "admire_k10_ops";

impl Report {
    /// An empty report against a measured bandwidth (bytes/s).
    pub fn new(bandwidth: f64) -> Self {
        Report {
            bandwidth,
            entries: Vec::new(),
        }
    }

    fn find(&self, backend: &str, n: usize, op: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.backend == backend && e.n == n && e.op == op)
    }

    /// Ratios (median, best) of `e`'s time to AdamW's on the same backend and size.
    pub fn ratio_to_adamw(&self, e: &Entry) -> Option<(f64, f64)> {
        self.find(&e.backend, e.n, "adamw")
            .map(|a| (e.median_s / a.median_s, e.best_s / a.best_s))
    }

    /// Records a benchmark and prints its line; after `mask_refresh`, also the derived
    /// amortised AdmIRE step (`admire` + `mask_refresh`/10, the refresh by backend calls).
    pub fn push(&mut self, e: Entry) {
        let floor = e.floor_s(self.bandwidth);
        let mut line = format!(
            "  {}/{}/{}: median {}, best {} | floor {} ({} B/param at {:.1} GB/s) | {:.2}x floor (best {:.2}x)",
            e.backend,
            label(e.n),
            e.op,
            ms(e.median_s),
            ms(e.best_s),
            ms(floor),
            e.bytes_per_param,
            self.bandwidth / 1e9,
            e.median_s / floor,
            e.best_s / floor,
        );
        if e.op != "adamw"
            && let Some((m, b)) = self.ratio_to_adamw(&e)
        {
            let _ = write!(line, " | {m:.2}x adamw (best {b:.2}x)");
        }
        println!("{line}");
        let derived = if e.op == "mask_refresh" {
            self.find(&e.backend, e.n, "admire").map(|a| Entry {
                backend: e.backend.clone(),
                n: e.n,
                op: ADMIRE_K10_OPS,
                median_s: a.median_s + e.median_s / 10.0,
                best_s: a.best_s + e.best_s / 10.0,
                bytes_per_param: traffic::ADMIRE + traffic::MASK_REFRESH / 10.0,
            })
        } else {
            None
        };
        self.entries.push(e);
        if let Some(d) = derived {
            self.push(d);
        }
    }

    /// The results as a Markdown table (ratios of medians, and of best times in brackets).
    pub fn table(&self) -> String {
        let mut s = format!(
            "triad bandwidth: {:.1} GB/s\n\n\
             | backend | params | bench | median | best | floor | x floor | x AdamW |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- |\n",
            self.bandwidth / 1e9
        );
        for e in &self.entries {
            let floor = e.floor_s(self.bandwidth);
            let vs = self
                .ratio_to_adamw(e)
                .map_or_else(|| "-".into(), |(m, b)| format!("{m:.2} ({b:.2})"));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.2} ({:.2}) | {} |",
                e.backend,
                label(e.n),
                e.op,
                ms(e.median_s),
                ms(e.best_s),
                ms(floor),
                e.median_s / floor,
                e.best_s / floor,
                vs
            );
        }
        s
    }
}

/// Per-iteration times of one benchmark, gathered from criterion's own samples.
#[derive(Default)]
struct Samples {
    per_iter: Vec<f64>,
    error: Option<Error>,
}

impl Samples {
    /// Times `iters` runs of `op` (stopping at the first error, kept for the caller).
    fn time(&mut self, iters: u64, mut op: impl FnMut() -> Result<()>) -> Duration {
        let t = Instant::now();
        for _ in 0..iters {
            if self.error.is_some() {
                break;
            }
            if let Err(e) = op() {
                self.error = Some(e);
            }
        }
        let d = t.elapsed();
        self.per_iter.push(d.as_secs_f64() / iters.max(1) as f64);
        d
    }

    /// (median, best) per operation, with `ops_per_iter` operations in one iteration.
    fn stats(mut self, ops_per_iter: f64) -> Result<Option<(f64, f64)>> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.per_iter.is_empty() {
            return Ok(None);
        }
        self.per_iter.sort_by(f64::total_cmp);
        let median = self.per_iter[self.per_iter.len() / 2];
        Ok(Some((
            median / ops_per_iter,
            self.per_iter[0] / ops_per_iter,
        )))
    }
}

/// The mask of the benches' IRE steps: `n` coordinates, about 80 % flat (deterministic), as
/// its host bytes and packed on `b` ([`ire_core::mask`]).
pub fn bench_mask<B: Backend>(b: &B, n: usize) -> ire_core::Result<(Vec<u8>, B::Buffer<u32>)> {
    let bytes: Vec<u8> = random_f32(n, 4, 1.0)
        .iter()
        .map(|&x| u8::from(x < 0.6))
        .collect();
    let packed = b.alloc_from(&ire_core::mask::pack(&bytes))?;
    Ok((bytes, packed))
}

/// Deterministic pseudo-random `f32` values in `[-scale, scale)` (generated in parallel).
pub fn random_f32(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            let mut z = (i as u64 ^ seed.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z ^= z >> 32;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// AdamW scalars of a typical step (lr 1e-3, wd 0.1, betas (0.9, 0.999), step 100).
fn adamw_scalars() -> AdamWScalars<f32> {
    AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    }
    .scalars::<f32>(1e-3, 100)
}

/// Registers and runs every benchmark of `backend` (named `name`) at `n` f32 parameters,
/// recording the times in `report`: AdamW, SGD-momentum, the fused AdmIRE step, AdmIRE through
/// `Ire<AdamW>` with a mask refresh every 10 steps (amortised), the mask refresh alone
/// (`ema_square` + global `kth_largest` + `mask_le`) and a SAM-IRE step (perturb, restore,
/// boosted SGD-momentum step; the gradient at the perturbed point is not computed).
pub fn bench_backend<B: Backend>(
    c: &mut Criterion,
    report: &mut Report,
    name: &str,
    backend: &B,
    n: usize,
    sync: &dyn Fn() -> Result<()>,
) -> Result<()> {
    let b = backend;
    let mut group = c.benchmark_group(format!("{name}/{}", label(n)));
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    let mut ctx = Ctx {
        group: &mut group,
        report,
        name,
        n,
        sync,
    };

    let mut theta = b.alloc_from(&random_f32(n, 1, 1.0))?;
    let grad = b.alloc_from(&random_f32(n, 2, 1e-2))?;
    let est = b.alloc_from(&random_f32(n, 3, 1e-2))?;
    let mut m = b.alloc::<f32>(n)?;
    let mut v = b.alloc::<f32>(n)?;
    let mut h = b.alloc::<f32>(n)?;
    let (mask_host, mut mask) = bench_mask(b, n)?;
    let s = adamw_scalars();
    let k = sharp_count(n, 0.6);

    ctx.record("adamw", traffic::ADAMW, 1.0, &mut || {
        b.adamw_step(&mut theta, &grad, &mut m, &mut v, &s)
    })?;

    let sgd = ire_core::formulas::SgdScalars {
        lr: 1e-3f32,
        weight_decay: 5e-4,
        momentum: 0.9,
        dampening_complement: 1.0,
        nesterov: false,
        first_step: false,
    };
    let mut mom = b.alloc::<f32>(n)?;
    ctx.record("sgd_momentum", traffic::SGD_MOMENTUM, 1.0, &mut || {
        b.sgd_momentum_step(&mut theta, &grad, &mut mom, &sgd)
    })?;

    ctx.record("admire", traffic::ADMIRE, 1.0, &mut || {
        b.adamw_ire_step(&mut theta, &grad, &mut m, &mut v, &s, &mask, 2.0)
    })?;

    ctx.record("mask_refresh", traffic::MASK_REFRESH, 1.0, &mut || {
        b.ema_square(&mut h, &est, 0.0)?;
        let tau = b.kth_largest(&[&h], k)?;
        b.mask_le(&h, tau, &mut mask)
    })?;
    drop((m, v, h, mom));

    // AdmIRE as a user runs it: Ire<AdamW>, refresh every 10 steps; one iteration = 10 steps,
    // so every iteration holds exactly one refresh.
    {
        let cfg = IreConfig {
            kappa: 2.0,
            gamma: 0.6,
            refresh_every: 10,
            ..IreConfig::default()
        };
        let adamw = AdamW::<B, f32>::new(AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        })?;
        let mut ire = Ire::new(adamw, cfg)?;
        let mut params = vec![theta];
        let grads = vec![grad];
        let ests = vec![est];
        ctx.record(
            "admire_k10",
            traffic::ADMIRE_K10_PER_STEP,
            10.0,
            &mut || {
                for _ in 0..10 {
                    let ctx = IreStep {
                        lr: 1e-3,
                        estimate: Some(EstimateInput::Gradient(&ests)),
                    };
                    ire.step(b, &mut params, &grads, ctx)?;
                }
                Ok(())
            },
        )?;
        drop(ire);

        // SAM-IRE (Ire<Sam<Sgd>>), the mask set once (no refresh in the loop).
        let sgd = Sgd::<B, f32>::new(SgdConfig {
            momentum: 0.9,
            weight_decay: 5e-4,
            ..SgdConfig::default()
        })?;
        let sam = Sam::new(sgd, SamConfig::default())?;
        let cfg = IreConfig {
            estimator: Estimator::Manual,
            ..cfg
        };
        let mut sam_ire = Ire::new(sam, cfg)?;
        sam_ire.set_mask(b, &params, &[&mask_host])?;
        let mut grads = grads;
        ctx.record("sam_ire", traffic::SAM_IRE, 1.0, &mut || {
            sam_ire
                .sam_step_with(b, &mut params, &mut grads, IreStep::lr(0.05), |_, _| Ok(()))
                .map(|_| ())
        })?;
    }
    group.finish();
    Ok(())
}

/// Where one backend's benchmarks at one size go.
struct Ctx<'a, 'g> {
    group: &'a mut BenchmarkGroup<'g, WallTime>,
    report: &'a mut Report,
    name: &'a str,
    n: usize,
    /// Waits for the device's queue (device backends launch asynchronously); a no-op on the CPU.
    sync: &'a dyn Fn() -> Result<()>,
}

impl Ctx<'_, '_> {
    /// Runs `f` as the criterion benchmark `op` (`ops_per_iter` operations per call) and
    /// records its median and best time per operation.
    fn record(
        &mut self,
        op: &'static str,
        bytes_per_param: f64,
        ops_per_iter: f64,
        f: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let mut samples = Samples::default();
        let bytes = bytes_per_param * self.n as f64 * ops_per_iter;
        self.group.throughput(Throughput::Bytes(bytes as u64));
        let sync = self.sync;
        let mut timed = || -> Result<()> {
            f()?;
            sync()
        };
        self.group.bench_function(op, |bencher| {
            bencher.iter_custom(|iters| samples.time(iters, &mut timed))
        });
        if let Some((median_s, best_s)) = samples.stats(ops_per_iter)? {
            self.report.push(Entry {
                backend: self.name.into(),
                n: self.n,
                op,
                median_s,
                best_s,
                bytes_per_param,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(op: &'static str, median_s: f64, best_s: f64, bytes: f64) -> Entry {
        Entry {
            backend: "cpu".into(),
            n: 1_000_000,
            op,
            median_s,
            best_s,
            bytes_per_param: bytes,
        }
    }

    #[test]
    fn report_derives_the_amortised_step_and_the_ratios() {
        // 1 GB/s: 1M parameters at 28 bytes each take 28 ms.
        let mut r = Report::new(1e9);
        r.push(entry("adamw", 0.010, 0.008, traffic::ADAMW));
        r.push(entry("admire", 0.011, 0.009, traffic::ADMIRE));
        r.push(entry("mask_refresh", 0.020, 0.010, traffic::MASK_REFRESH));
        assert_eq!(r.entries.len(), 4);
        let d = &r.entries[3];
        assert_eq!(d.op, ADMIRE_K10_OPS);
        assert_eq!(d.median_s, 0.011 + 0.002);
        assert_eq!(d.best_s, 0.009 + 0.001);
        assert_eq!(d.bytes_per_param, 28.125 + 2.0125);
        assert_eq!(r.entries[0].floor_s(r.bandwidth), 0.028);
        let (m, b) = r.ratio_to_adamw(&r.entries[2]).unwrap();
        assert_eq!((m, b), (2.0, 1.25));
        let t = r.table();
        assert!(t.contains("| cpu | 1M | mask_refresh | 20.000 ms | 10.000 ms | 20.125 ms |"));
        assert!(t.contains("| 2.00 (1.25) |"));
    }

    #[test]
    fn labels_and_data_are_deterministic() {
        assert_eq!(label(10_000_000), "10M");
        assert_eq!(label(4_000), "4K");
        assert_eq!(label(1_234), "1234");
        let a = random_f32(1000, 7, 2.0);
        assert_eq!(a, random_f32(1000, 7, 2.0));
        assert!(a.iter().all(|x| (-2.0..2.0).contains(x)));
        assert_ne!(a, random_f32(1000, 8, 2.0));
    }
}

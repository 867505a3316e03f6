//! `ire-mpi-check`: checks an MPI installation and this crate on the current job, e.g.
//! `mpirun -np 3 ire-mpi-check all`. Every rank prints one line per check it passed; a
//! failed check prints what differed and ends the job with a non-zero status.
//!
//! Checks: `collectives` (every operation of `Collective`, exact sums and gathers),
//! `threshold` (the distributed IRE threshold against the single-process selection on seeded
//! data with ties and uneven, empty shards), `nan` (a NaN on one rank is refused on every
//! rank), `all` (the three), `detect` (prints what the environment says, starts nothing), and
//! `panic` (the last rank panics while the others wait in a collective: the job must end
//! with a non-zero status instead of hanging).

use std::process::ExitCode;

use ire_conformance::Rng;
use ire_conformance::collective::{deal, single_process_refresh, threshold_values};
use ire_core::collective::{Buf, Collective, select};
use ire_core::optim::ThresholdRule;
use ire_core::{Error, Scalar, host};
use ire_mpi::{MpiCollective, detected_launcher, launched_by_mpi};

/// A failed check: what differed.
struct Failed(String);

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed(format!("error: {e}"))
    }
}

fn expect<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), Failed> {
    if got == want {
        Ok(())
    } else {
        Err(Failed(format!("{what}: got {got:?}, want {want:?}")))
    }
}

fn check_collectives(c: &dyn Collective) -> Result<(), Failed> {
    let (r, w) = (c.rank(), c.world_size());
    // Rank r contributes (r + 1)·1000 + i to element i: exact in every type.
    let val = |r: usize, i: usize| ((r + 1) * 1000 + i) as u64;
    let total = |i: usize| (0..w).map(|q| val(q, i)).sum::<u64>();
    let n = 7;
    let mut a32: Vec<f32> = (0..n).map(|i| val(r, i) as f32).collect();
    let mut a64: Vec<f64> = (0..n).map(|i| val(r, i) as f64 + 0.5).collect();
    let mut u32s: Vec<u32> = (0..n).map(|i| val(r, i) as u32).collect();
    let mut u64s: Vec<u64> = (0..n).map(|i| val(r, i) + (1 << 40)).collect();
    c.all_reduce_sum((&mut a32[..]).into())?;
    c.all_reduce_sum((&mut a64[..]).into())?;
    c.all_reduce_sum((&mut u32s[..]).into())?;
    c.all_reduce_sum((&mut u64s[..]).into())?;
    for i in 0..n {
        expect("all-reduce f32", a32[i], total(i) as f32)?;
        expect("all-reduce f64", a64[i], total(i) as f64 + 0.5 * w as f64)?;
        expect("all-reduce u32", u32s[i] as u64, total(i))?;
        expect("all-reduce u64", u64s[i], total(i) + (w as u64) * (1 << 40))?;
    }
    let send: Vec<u64> = (0..3 * w).map(|i| val(r, i)).collect();
    let mut rs = [0u64; 3];
    c.reduce_scatter_sum(Buf::U64(&send), (&mut rs[..]).into())?;
    expect(
        "reduce-scatter u64",
        rs,
        [total(3 * r), total(3 * r + 1), total(3 * r + 2)],
    )?;
    let send: Vec<f64> = (0..2 * w).map(|i| val(r, i) as f64).collect();
    let mut rs = [0f64; 2];
    c.reduce_scatter_sum(Buf::F64(&send), (&mut rs[..]).into())?;
    expect(
        "reduce-scatter f64",
        rs,
        [total(2 * r) as f64, total(2 * r + 1) as f64],
    )?;
    let mut ag = vec![0f32; 2 * w];
    c.all_gather(
        Buf::F32(&[r as f32, -(r as f32) - 0.5]),
        (&mut ag[..]).into(),
    )?;
    let want: Vec<f32> = (0..w).flat_map(|q| [q as f32, -(q as f32) - 0.5]).collect();
    expect("all-gather f32", ag, want)?;
    let mut ag = vec![0u32; w];
    c.all_gather(Buf::U32(&[7 * r as u32]), (&mut ag[..]).into())?;
    expect(
        "all-gather u32",
        ag,
        (0..w).map(|q| 7 * q as u32).collect::<Vec<_>>(),
    )?;
    for root in 0..w {
        let mut b: Vec<f64> = vec![r as f64 + 0.25; 4];
        c.broadcast((&mut b[..]).into(), root)?;
        expect("broadcast f64", b, vec![root as f64 + 0.25; 4])?;
    }
    let mut b = [r as u64 * 3];
    c.broadcast((&mut b[..]).into(), w - 1)?;
    expect("broadcast u64", b, [(w as u64 - 1) * 3])?;
    // Refusals are errors, not panics or hangs (every rank refuses the same call).
    let mut b = [0f32; 1];
    expect(
        "broadcast from a root outside the group",
        c.broadcast((&mut b[..]).into(), w).is_err(),
        true,
    )?;
    let mut rs = [0u64; 2];
    expect(
        "reduce-scatter of mismatched lengths",
        c.reduce_scatter_sum(Buf::U64(&[1]), (&mut rs[..]).into())
            .is_err(),
        true,
    )?;
    c.barrier()?;
    println!("rank {r}/{w} collectives ok");
    Ok(())
}

fn check_threshold_of<T: Scalar>(c: &dyn Collective, cases: &mut usize) -> Result<(), Failed> {
    let (r, w) = (c.rank(), c.world_size());
    let rules = [
        ThresholdRule::SharpTopK,
        ThresholdRule::FlatKthSmallest,
        ThresholdRule::AdmIre,
    ];
    let sizes = [
        (0usize, true),
        (1, true),
        (13, true),
        (5000, true),
        (100_003, true),
        (20_000, false),
    ];
    for (case, &(n, tied)) in sizes.iter().enumerate() {
        let seed = 1000 + case as u64 + 97 * core::mem::size_of::<T>() as u64;
        // The same seeded data on every rank, dealt out the same way.
        let all = threshold_values::<T>(&mut Rng::new(seed), n, tied);
        let ranks = deal(&all, w, &mut Rng::new(seed + 1), case % w);
        // The global order is the order of the parts as dealt; its concatenation per rank
        // order is a permutation of `all`, which no selection can tell apart.
        let local: Vec<&[T]> = ranks[r].iter().map(|p| &p[..]).collect();
        for rule in rules {
            for gamma in [0.0, 0.1, 0.5, 0.9, 1.0] {
                let rank = 1.0 - gamma;
                let what = format!("{rule:?} γ {gamma} N {n} {}", T::DTYPE.name());
                let (sel, tau, flat) = single_process_refresh(&all, rule, rank)?;
                let t = select::threshold(&local, rule, rank, c)?;
                let f = select::flat_count(&local, &t, c)?;
                expect(&format!("{what}: N"), t.n, n as u64)?;
                expect(&format!("{what}: selection"), t.selection, sel)?;
                expect(
                    &format!("{what}: τ bits"),
                    t.tau.map(|x| x.order_key_u64()),
                    tau.map(|x| x.order_key_u64()),
                )?;
                expect(&format!("{what}: flat count"), f, flat)?;
                *cases += 1;
            }
        }
        for k in [1, n / 3, n / 2, n] {
            if k == 0 || k > n {
                continue;
            }
            let want = host::kth_largest(&mut all.clone(), k)?;
            let got = select::kth_largest(&local, k, c)?;
            expect(
                "k-th largest bits",
                got.order_key_u64(),
                want.order_key_u64(),
            )?;
            let got = select::kth_smallest(&local, n + 1 - k, c)?;
            expect(
                "m-th smallest bits",
                got.order_key_u64(),
                want.order_key_u64(),
            )?;
            *cases += 2;
        }
    }
    Ok(())
}

fn check_threshold(c: &dyn Collective) -> Result<(), Failed> {
    let mut cases = 0;
    check_threshold_of::<f32>(c, &mut cases)?;
    check_threshold_of::<f64>(c, &mut cases)?;
    println!(
        "rank {}/{} threshold ok: {cases} cases equal to the single-process selection",
        c.rank(),
        c.world_size()
    );
    Ok(())
}

fn check_nan(c: &dyn Collective) -> Result<(), Failed> {
    let (r, w) = (c.rank(), c.world_size());
    // Rank w − 1 holds one NaN among its values; rank 0 holds nothing when w > 2.
    let mut local = vec![r as f32 + 0.5; if r == 0 && w > 2 { 0 } else { 3 }];
    if r == w - 1 {
        local.push(f32::NAN);
    }
    for gamma in [0.0, 0.5, 1.0] {
        match select::threshold(&[&local[..]], ThresholdRule::AdmIre, 1.0 - gamma, c) {
            Err(e @ Error::NonFinite { .. }) => {
                println!("rank {r}/{w} refused (γ {gamma}): {e}");
            }
            other => {
                return Err(Failed(format!(
                    "γ {gamma}: a NaN on rank {} gave {other:?}",
                    w - 1
                )));
            }
        }
    }
    Ok(())
}

fn run(mode: &str) -> Result<(), Failed> {
    if mode == "detect" {
        println!(
            "launcher: {:?}; launched_by_mpi: {}",
            detected_launcher(),
            launched_by_mpi()
        );
        match MpiCollective::init() {
            Ok(c) => println!("init: rank {} of {}", c.rank(), c.world_size()),
            Err(e) => println!("init refused: {e}"),
        }
        return Ok(());
    }
    let c = MpiCollective::init()?;
    let outcome = match mode {
        "collectives" => check_collectives(&c),
        "threshold" => check_threshold(&c),
        "nan" => check_nan(&c),
        "all" => check_collectives(&c)
            .and_then(|()| check_threshold(&c))
            .and_then(|()| check_nan(&c)),
        "panic" => {
            c.barrier()?;
            if c.rank() + 1 == c.world_size() {
                #[allow(clippy::panic)]
                {
                    panic!("rank {} panics on purpose", c.rank());
                }
            }
            // The others wait for a rank that will never come.
            let mut x = [1u64];
            c.all_reduce_sum((&mut x[..]).into())?;
            Err(Failed(
                "the all-reduce returned without the panicked rank".into(),
            ))
        }
        other => Err(Failed(format!(
            "unknown check `{other}`: collectives, threshold, nan, all, detect or panic"
        ))),
    };
    if let Err(Failed(what)) = &outcome {
        eprintln!("rank {}/{} FAILED: {what}", c.rank(), c.world_size());
        c.abort(1);
    }
    outcome
}

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    match run(&mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(what)) => {
            eprintln!("ire-mpi-check: {what}");
            ExitCode::FAILURE
        }
    }
}

//! Runs the `ire-mpi-check` binary under `mpirun` on this machine (oversubscribed) with 1, 2
//! and 3 ranks, and checks its exit status and what every rank printed.
//!
//! Without `mpirun` on `PATH` these tests print a `skipped` line and pass, unless `IRE_REQUIRE`
//! names `mpi`: then they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_ire-mpi-check");
/// Seconds a job may take before `timeout` ends it (a hang is a failure, not a wait).
const LIMIT_S: u32 = 120;

/// Whether `mpirun` runs here; `false` (after printing why) when the test may skip.
fn mpirun_available(test: &str) -> bool {
    let ok = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    let required = std::env::var("IRE_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim() == "mpi");
    if required {
        panic!("{test}: `mpirun` is not available and IRE_REQUIRE names mpi (install openmpi-bin)");
    }
    println!("{test}: skipped: `mpirun` is not available (install openmpi-bin)");
    false
}

/// `timeout mpirun -np <np> ire-mpi-check <mode>` with a fast start (ob1, no CMA).
fn mpirun(np: usize, mode: &str) -> Output {
    Command::new("timeout")
        .args(["-k", "5", &LIMIT_S.to_string(), "mpirun"])
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            &np.to_string(),
        ])
        .args([EXE, mode])
        .env("OMPI_MCA_pml", "ob1")
        .env("OMPI_MCA_btl", "self,vader")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("OMPI_MCA_orte_base_help_aggregate", "0")
        .output()
        .expect("run timeout/mpirun")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `mode` on `np` ranks, requires success and, from every rank, a line starting with
/// `rank r/np <what>`.
fn every_rank_passes(np: usize, mode: &str, what: &str) -> String {
    let o = mpirun(np, mode);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "{mode} on {np} ranks: {:?}\nstdout:\n{out}\nstderr:\n{err}",
        o.status
    );
    for r in 0..np {
        let line = format!("rank {r}/{np} {what}");
        assert!(
            out.lines().any(|l| l.starts_with(&line)),
            "{mode} on {np} ranks: no `{line}`\nstdout:\n{out}\nstderr:\n{err}"
        );
    }
    out
}

#[test]
fn every_collective_is_exact_on_one_two_and_three_ranks() {
    if !mpirun_available("collectives") {
        return;
    }
    for np in [1, 2, 3] {
        every_rank_passes(np, "collectives", "collectives ok");
    }
}

#[test]
fn the_distributed_threshold_equals_the_single_process_one_on_two_and_three_ranks() {
    if !mpirun_available("threshold") {
        return;
    }
    // 252 = 2 dtypes × (6 data sets × 3 rules × 5 values of γ + 36 k-th largest / m-th
    // smallest checks): a check that stopped running would change the count.
    for np in [2, 3] {
        every_rank_passes(
            np,
            "threshold",
            "threshold ok: 252 cases equal to the single-process selection",
        );
    }
}

#[test]
fn a_nan_on_one_rank_is_refused_on_every_rank_with_the_same_error() {
    if !mpirun_available("nan") {
        return;
    }
    for np in [2, 3] {
        let out = every_rank_passes(np, "nan", "refused (γ 0)");
        // Rank 0 holds no value when there are more than 2 ranks, the others 3, the last one
        // a NaN more.
        let n = 3 * np - if np > 2 { 3 } else { 0 } + 1;
        let want = format!(
            "non-finite value (NaN or infinity) in values of the distributed k-th-largest \
             selection (1 NaN among {n} values over all ranks)"
        );
        for r in 0..np {
            for gamma in ["0", "0.5", "1"] {
                let line = format!("rank {r}/{np} refused (γ {gamma}): {want}");
                assert!(out.lines().any(|l| l == line), "no `{line}` in:\n{out}");
            }
        }
    }
}

#[test]
fn a_panicking_rank_ends_the_job_instead_of_hanging() {
    if !mpirun_available("panic") {
        return;
    }
    let o = mpirun(3, "panic");
    let (out, err) = text(&o);
    let code = o.status.code();
    // 124 (or 137 after the kill): `timeout` had to end a hung job.
    assert!(
        !o.status.success() && code != Some(124) && code != Some(137),
        "status {:?}\nstdout:\n{out}\nstderr:\n{err}",
        o.status
    );
    assert!(err.contains("rank 2 panics on purpose"), "stderr:\n{err}");
    assert!(
        err.contains("ire-mpi: a rank panicked; aborting every rank of the job"),
        "stderr:\n{err}"
    );
}

#[test]
fn a_process_started_without_a_launcher_is_refused_with_an_error() {
    let mut cmd = Command::new(EXE);
    cmd.arg("detect");
    for (name, _) in std::env::vars() {
        if name.starts_with("OMPI_") || name.starts_with("PMI") || name.starts_with("SLURM_") {
            cmd.env_remove(name);
        }
    }
    let o = cmd.output().expect("run ire-mpi-check");
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("launcher: None; launched_by_mpi: false"),
        "stdout:\n{out}"
    );
    assert!(
        out.contains(
            "init refused: collective init: unavailable: this process was not started by an \
             MPI launcher"
        ),
        "stdout:\n{out}"
    );
}

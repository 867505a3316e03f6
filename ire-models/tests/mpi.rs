//! Data-parallel `ire train` under `mpirun` on this machine (oversubscribed): the same run, bit
//! for bit, on 1, 2 and 3 processes with `--shards 6`; within a stated tolerance without it; a
//! failing or killed rank ends the job with an error, never a hang, and the last checkpoint
//! survives; a checkpoint of 2 ranks resumes on 3; a sharded optimizer state (ZeRO stage 1)
//! gives the numbers of a replicated one, bit for bit, in half the memory on 2 ranks.
//!
//! Every job runs under `timeout`, so a hang fails the test (status 124) instead of stalling it.
//! Without `mpirun` on `PATH` the tests print a `skipped` line and pass, unless `IRE_REQUIRE`
//! names `mpi`: then they fail.
#![cfg(feature = "mpi")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ire_models::train::run::{checkpoint_path, read_checkpoint};
use serde_json::Value;

const IRE: &str = env!("CARGO_BIN_EXE_ire");
/// Seconds a job may take before `timeout` ends it.
const LIMIT_S: &str = "300";
/// `timeout`'s status when it had to end the job.
const TIMED_OUT: i32 = 124;

/// Whether `mpirun` runs here; `false` (after printing why) when the test may skip.
fn have_mpirun(test: &str) -> bool {
    let found = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !common::required("mpi"),
            "{test}: `mpirun` is not available and IRE_REQUIRE names mpi (install openmpi-bin)"
        );
        println!("{test}: skipped: `mpirun` is not available (install openmpi-bin)");
    }
    found
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ire-mpi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

/// `args` with `flag` set to `value` (replaced when present, else added).
fn with(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.to_string(),
        None => args.extend([flag.to_string(), value.to_string()]),
    }
    args
}

/// AdmIRE on the MLP and the digits: 12 steps of 24 examples, a mask refresh every 3 steps.
fn mlp_args() -> Vec<String> {
    let data = common::root().join("data/digits.csv.gz");
    let mut a = strings(&[
        "train",
        "--model",
        "mlp-small",
        "--dataset",
        "digits",
        "--optimizer",
        "admire",
        "--lr",
        "0.01",
        "--batch-size",
        "24",
        "--refresh-every",
        "3",
        "--log-every",
        "1",
        "--seed",
        "5",
        "--steps",
        "12",
        "--quiet",
        "--backend",
        "cpu",
    ]);
    a.extend(["--data".into(), s(&data)]);
    a
}

/// AdmIRE on llama-tiny and the opening of Moby-Dick (characters, context 16): 6 steps of 12
/// windows, a mask refresh every 2 steps.
fn llama_args() -> Vec<String> {
    let data = common::root().join("data/moby-dick-opening.txt");
    let mut a = strings(&[
        "train",
        "--model",
        "llama-tiny",
        "--dataset",
        "text",
        "--tokenizer",
        "char",
        "--context",
        "16",
        "--optimizer",
        "admire",
        "--lr",
        "0.003",
        "--batch-size",
        "12",
        "--refresh-every",
        "2",
        "--log-every",
        "1",
        "--eval-batches",
        "2",
        "--seed",
        "3",
        "--steps",
        "6",
        "--quiet",
        "--backend",
        "cpu",
    ]);
    a.extend(["--data".into(), s(&data)]);
    a
}

/// `timeout mpirun` of one program per `(ranks, args)` group (one group: `-np N ire ARGS`;
/// several: Open MPI's `A : B` form, ranks numbered in order), in `dir`.
fn mpirun_command(groups: &[(usize, Vec<String>)], dir: &Path) -> Command {
    let mut c = Command::new("timeout");
    c.args([
        "-k",
        "5",
        LIMIT_S,
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
    ]);
    for (i, (np, args)) in groups.iter().enumerate() {
        if i > 0 {
            c.arg(":");
        }
        c.args(["-np", &np.to_string(), IRE]).args(args);
    }
    c.current_dir(dir)
        .env("OMPI_MCA_pml", "ob1")
        .env("OMPI_MCA_btl", "self,vader")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("OMPI_MCA_orte_base_help_aggregate", "0");
    c
}

fn mpirun(np: usize, args: &[String], dir: &Path) -> Output {
    mpirun_command(&[(np, args.to_vec())], dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn expect_status(o: &Output, code: i32, what: &str) {
    assert_eq!(o.status.code(), Some(code), "{what}:\n{}", text(o));
}

fn train_lines(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["kind"] == "train")
        .collect()
}

/// One step of a run as its metrics line has it: step, loss and accuracy (as bits), and at a
/// refresh the flat count and the mask hash.
type Point = (u64, u64, u64, Option<u64>, Option<String>);

/// What must agree bit for bit between runs, step by step.
fn trajectory(lines: &[Value]) -> Vec<Point> {
    lines
        .iter()
        .map(|l| {
            (
                l["step"].as_u64().unwrap(),
                l["loss"].as_f64().unwrap().to_bits(),
                l["acc"].as_f64().unwrap().to_bits(),
                l["flat"].as_u64(),
                l["mask_fnv1a64"].as_str().map(String::from),
            )
        })
        .collect()
}

fn weights(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("weights.safetensors")).unwrap()
}

/// The files in `dir` (names), sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A finished run of `args` in a single process started without a launcher, into `run` of a
/// new folder `name`: the folder and the output.
fn alone_run(name: &str, args: &[String]) -> (PathBuf, Output) {
    let dir = tmp(name);
    let o = Command::new(IRE)
        .args(with(args.to_vec(), "--out", "run"))
        .current_dir(&dir)
        .output()
        .unwrap();
    expect_status(&o, 0, "single process");
    (dir, o)
}

/// The MLP's arguments with `--shards 6`, and its uninterrupted run on 3 ranks into `whole` of
/// a new folder `name`.
fn whole_on_three(name: &str) -> (Vec<String>, PathBuf) {
    let args = with(mlp_args(), "--shards", "6");
    let dir = tmp(name);
    let whole = mpirun(3, &with(args.clone(), "--out", "whole"), &dir);
    expect_status(&whole, 0, "3 ranks, uninterrupted");
    (args, dir)
}

/// A finished run of `args` with `--shards 6` in a single process (no launcher) and under
/// `mpirun` on 1, 2 and 3 processes: the same trajectory and the same weights file, byte for
/// byte; only rank 0 writes, and nothing else.
fn same_on_every_world_size(name: &str, args: Vec<String>, refreshes: usize) {
    let args = with(args, "--shards", "6");
    let (alone, o) = alone_run(&format!("{name}-alone"), &args);
    assert!(
        text(&o).contains("world size: 1 (single process)"),
        "{}",
        text(&o)
    );
    let reference = trajectory(&train_lines(&alone.join("run")));
    let with_mask = reference.iter().filter(|t| t.4.is_some()).count();
    assert_eq!(with_mask, refreshes, "refresh lines: {reference:?}");
    assert!(reference.iter().all(|t| t.4.is_some() == t.3.is_some()));
    let reference_weights = weights(&alone.join("run"));
    for np in [1, 2, 3] {
        let dir = tmp(&format!("{name}-{np}"));
        let o = mpirun(np, &with(args.clone(), "--out", "run"), &dir);
        expect_status(&o, 0, &format!("{name} on {np} ranks"));
        assert!(
            text(&o).contains(&format!("world size: {np} (MPI)")),
            "{}",
            text(&o)
        );
        let run = dir.join("run");
        let lines = train_lines(&run);
        assert!(lines.iter().all(|l| l["world_size"] == np), "{lines:?}");
        assert_eq!(trajectory(&lines), reference, "{name} on {np} ranks");
        assert!(
            weights(&run) == reference_weights,
            "{name}: the weights of {np} ranks differ from a single process's"
        );
        // Rank 0 alone wrote, and only its run folder.
        assert_eq!(listing(&dir), ["run"]);
        assert_eq!(listing(&run), listing(&alone.join("run")));
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&alone);
}

#[test]
fn with_shards_one_two_and_three_ranks_train_the_mlp_bit_for_bit_alike() {
    if !have_mpirun("shards mlp") {
        return;
    }
    // Refreshes at steps 0, 3, 6, 9 (every 3 from the start): 4 lines with a mask.
    same_on_every_world_size("mlp", mlp_args(), 4);
}

#[test]
fn with_shards_one_two_and_three_ranks_train_llama_bit_for_bit_alike() {
    if !have_mpirun("shards llama") {
        return;
    }
    // Refreshes at steps 0, 2, 4.
    same_on_every_world_size("llama", llama_args(), 3);
}

/// Without `--shards` each rank's gradient is summed by MPI, in an order that depends on the
/// number of ranks: 2 ranks follow 1 within 1e-5 in the loss and 2e-5 in every weight after 20
/// steps (measured: at most 7.1e-8 in the loss, 1.8e-7 in a weight, seeds 5 to 7, 2 and 3
/// ranks), with the same number of flat coordinates at every refresh.
#[test]
fn without_shards_two_ranks_follow_one_within_the_stated_tolerance() {
    if !have_mpirun("no shards") {
        return;
    }
    let args = with(mlp_args(), "--steps", "20");
    let dir = tmp("plain");
    let one = mpirun(1, &with(args.clone(), "--out", "one"), &dir);
    expect_status(&one, 0, "1 rank");
    let two = mpirun(2, &with(args, "--out", "two"), &dir);
    expect_status(&two, 0, "2 ranks");
    let (a, b) = (train_lines(&dir.join("one")), train_lines(&dir.join("two")));
    assert_eq!(a.len(), 20);
    assert_eq!(b.len(), 20);
    for (x, y) in a.iter().zip(&b) {
        let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((lx - ly).abs() <= 1e-5, "step {}: {lx} vs {ly}", x["step"]);
        assert_eq!(x["flat"], y["flat"], "step {}", x["step"]);
        assert_eq!(y["world_size"], 2);
    }
    let read = |d: &str| {
        ire_models::artifacts::safetensors::import(&dir.join(d).join("weights.safetensors"))
            .unwrap()
    };
    let (wa, wb) = (read("one"), read("two"));
    assert_eq!(wa.len(), wb.len());
    for ((na, _, va), (nb, _, vb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        for (p, q) in va.iter().zip(vb) {
            assert!((p - q).abs() <= 2e-5, "{na}: {p} vs {q}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shards_that_the_ranks_do_not_divide_are_refused() {
    if !have_mpirun("shards refused") {
        return;
    }
    let dir = tmp("refused");
    let o = mpirun(
        3,
        &with(with(mlp_args(), "--shards", "4"), "--out", "run"),
        &dir,
    );
    expect_status(&o, 2, "4 shards on 3 ranks");
    assert!(
        text(&o).contains(
            "invalid config `shards`: must be a multiple of the number of processes \
             (got 4 on 3 processes)"
        ),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run interrupted by `--stop-after` on 2 ranks: its checkpoint, read back.
fn two_rank_checkpoint(dir: &Path, args: &[String], after: &str) -> (PathBuf, Vec<u8>, u64) {
    let o = mpirun(
        2,
        &with(with(args.to_vec(), "--stop-after", after), "--out", "run"),
        dir,
    );
    expect_status(&o, 4, "2 ranks stopped");
    let ck = checkpoint_path(&dir.join("run"));
    let (_, _, meta) = read_checkpoint(&ck).unwrap();
    (
        ck.clone(),
        std::fs::read(&ck).unwrap(),
        meta["step"].as_u64().unwrap(),
    )
}

#[test]
fn a_checkpoint_of_two_ranks_resumes_on_three_to_the_same_run() {
    if !have_mpirun("resume 2 to 3") {
        return;
    }
    let (args, dir) = whole_on_three("resume");
    let (ck, _, step) = two_rank_checkpoint(&dir, &args, "5");
    assert_eq!(step, 5);
    let o = mpirun(3, &with(args, "--resume", &s(&ck)), &dir);
    expect_status(&o, 0, "resumed on 3 ranks");
    let (a, b) = (
        train_lines(&dir.join("whole")),
        train_lines(&dir.join("run")),
    );
    assert_eq!(trajectory(&b), trajectory(&a));
    let sizes: Vec<u64> = b
        .iter()
        .map(|l| l["world_size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3]);
    assert!(weights(&dir.join("run")) == weights(&dir.join("whole")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rank_that_fails_ends_the_job_and_the_checkpoint_survives() {
    if !have_mpirun("failing rank") {
        return;
    }
    let args = with(with(mlp_args(), "--shards", "6"), "--checkpoint-every", "2");
    let dir = tmp("fail");
    let (ck, before, step) = two_rank_checkpoint(&dir, &args, "5");
    assert_eq!(step, 5);
    // Rank 0 resumes and waits for rank 1 in the first step; rank 1 cannot read its data.
    let resume = with(args, "--resume", &s(&ck));
    let bad = with(resume.clone(), "--data", &s(&dir.join("missing.csv")));
    let o = mpirun_command(&[(1, resume), (1, bad)], &dir)
        .output()
        .unwrap();
    assert_ne!(
        o.status.code(),
        Some(TIMED_OUT),
        "the job hung:\n{}",
        text(&o)
    );
    expect_status(&o, 2, "rank 1 fails");
    let t = text(&o);
    assert!(t.contains("missing.csv"), "{t}");
    assert!(
        t.contains("rank 1 of 2 failed: ending every rank (exit status 2)"),
        "{t}"
    );
    assert!(
        std::fs::read(&ck).unwrap() == before,
        "the checkpoint changed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Parent of every process (from `/proc/PID/stat`).
fn parents() -> HashMap<u32, u32> {
    let mut m = HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: the command may hold spaces and parentheses.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..])
            && let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok())
        {
            m.insert(pid, ppid);
        }
    }
    m
}

/// The process below `root` that MPI started as rank `rank`.
fn rank_process(root: u32, rank: usize) -> Option<u32> {
    let parents = parents();
    let below = |mut p: u32| {
        while let Some(&q) = parents.get(&p) {
            if q == root {
                return true;
            }
            if q <= 1 {
                return false;
            }
            p = q;
        }
        false
    };
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    parents.keys().copied().find(|&p| {
        below(p)
            && std::fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == want.as_bytes()))
            && std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "ire")
    })
}

/// A spawned job, killed if a failing assertion drops it still running.
struct Job(Option<Child>);

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_killed_rank_ends_the_job_and_the_checkpoint_survives() {
    if !have_mpirun("killed rank") {
        return;
    }
    let dir = tmp("kill");
    // Far more steps than the test waits for: the job ends only by the kill.
    let args = with(
        with(
            with(mlp_args(), "--steps", "1000000"),
            "--checkpoint-every",
            "20",
        ),
        "--out",
        "run",
    );
    let mut job = Job(Some(
        mpirun_command(&[(2, args)], &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let root = job.0.as_ref().unwrap().id();
    let ck = checkpoint_path(&dir.join("run"));
    let mut victim = None;
    for _ in 0..3000 {
        if ck.exists() {
            victim = rank_process(root, 1);
            if victim.is_some() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = victim.expect("a checkpoint and rank 1's process within 60 s");
    // SAFETY: kill(2) on a process id of this test's own job; no memory is involved.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    let o = job.0.take().unwrap().wait_with_output().unwrap();
    assert_ne!(
        o.status.code(),
        Some(TIMED_OUT),
        "the job hung:\n{}",
        text(&o)
    );
    assert!(!o.status.success(), "{}", text(&o));
    // The last checkpoint is whole: a multiple of 20 steps, and it resumes.
    let (_, _, meta) = read_checkpoint(&ck).unwrap();
    let step = meta["step"].as_u64().unwrap();
    assert!(step >= 20 && step % 20 == 0, "checkpoint at step {step}");
    let o = Command::new(IRE)
        .args(["eval", &s(&ck), "--backend", "cpu"])
        .output()
        .unwrap();
    expect_status(&o, 0, "eval of the surviving checkpoint");
    assert!(text(&o).contains(&format!("step {step}:")), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The optimizer state per process that rank 0 prints at the start (bytes, in rank order).
fn printed_state_bytes(o: &Output) -> Vec<u64> {
    let t = text(o);
    let line = t
        .lines()
        .find_map(|l| l.strip_prefix("optimizer state per process: "))
        .unwrap_or_else(|| panic!("no optimizer state line:\n{t}"));
    let list = line.split(" bytes").next().unwrap();
    list.split(", ").map(|x| x.parse().unwrap()).collect()
}

/// The parameters and the encoded optimizer state of a checkpoint.
fn checkpoint_state(ck: &Path) -> (Vec<f32>, Vec<u8>) {
    let (c, _, _) = read_checkpoint(ck).unwrap();
    (
        c.tensor("params").unwrap().to_vec(),
        c.blob("optimizer").unwrap().to_vec(),
    )
}

/// A finished run of `args` with `--shards 6` in a single process (replicated state) against
/// the same run under `mpirun` on 1, 2 and 3 processes with `--shard-optimizer-state`: the
/// same trajectory (losses, flat counts, mask hashes), weights file and checkpoint state (the
/// whole optimizer state, gathered), byte for byte. Returns the state bytes printed per rank
/// on 1, 2 and 3 processes.
fn sharded_equals_replicated(name: &str, args: Vec<String>, refreshes: usize) -> Vec<Vec<u64>> {
    let args = with(args, "--shards", "6");
    let (alone, _) = alone_run(&format!("{name}-replicated"), &args);
    let reference = trajectory(&train_lines(&alone.join("run")));
    assert_eq!(
        reference.iter().filter(|t| t.4.is_some()).count(),
        refreshes
    );
    let reference_weights = weights(&alone.join("run"));
    let reference_state = checkpoint_state(&checkpoint_path(&alone.join("run")));
    let sharded: Vec<String> = args
        .into_iter()
        .chain(["--shard-optimizer-state".into()])
        .collect();
    let mut printed = Vec::new();
    for np in [1, 2, 3] {
        let dir = tmp(&format!("{name}-sharded-{np}"));
        let o = mpirun(np, &with(sharded.clone(), "--out", "run"), &dir);
        expect_status(&o, 0, &format!("{name}, sharded state on {np} ranks"));
        let run = dir.join("run");
        let lines = train_lines(&run);
        assert_eq!(
            trajectory(&lines),
            reference,
            "{name}, sharded on {np} ranks"
        );
        assert!(
            weights(&run) == reference_weights,
            "{name}: the weights of a sharded state on {np} ranks differ"
        );
        assert!(
            checkpoint_state(&checkpoint_path(&run)) == reference_state,
            "{name}: the checkpoint state of a sharded run on {np} ranks differs"
        );
        let bytes = printed_state_bytes(&o);
        assert!(text(&o).contains("bytes (sharded)"), "{}", text(&o));
        assert_eq!(lines[0]["opt_state_bytes"], serde_json::json!(bytes));
        printed.push(bytes);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&alone);
    printed
}

#[test]
fn a_sharded_optimizer_state_trains_the_mlp_as_a_replicated_one_in_a_share_of_the_memory() {
    if !have_mpirun("sharded mlp") {
        return;
    }
    let bytes = sharded_equals_replicated("mlp", mlp_args(), 4);
    // mlp-small on the digits has P = 9,610 parameters; AdmIRE holds 13 bytes per parameter
    // (Adam's m and v and IRE's estimate h in f32, the mask in u8). Ranges are multiples of 64:
    // on 2 ranks ⌈9610/2⌉ = 4805 → 4864 and 4746 parameters; on 3, ⌈9610/3⌉ = 3204 → 3264,
    // 3264 and 3082.
    assert_eq!(bytes[0], [9610 * 13]);
    assert_eq!(bytes[1], [4864 * 13, 4746 * 13]);
    assert_eq!(bytes[2], [3264 * 13, 3264 * 13, 3082 * 13]);
    // About half on 2 ranks: at most 64 parameters' worth above it.
    assert!(bytes[1][0] * 2 - bytes[0][0] <= 2 * 64 * 13);
}

#[test]
fn a_sharded_optimizer_state_trains_llama_as_a_replicated_one() {
    if !have_mpirun("sharded llama") {
        return;
    }
    let bytes = sharded_equals_replicated("llama", llama_args(), 3);
    // Every rank's share is its range (a multiple of 64 but the last) times 13 bytes, and the
    // shares add up to the whole state.
    for b in &bytes {
        assert_eq!(b.iter().sum::<u64>(), bytes[0][0], "{bytes:?}");
        assert!(
            b[..b.len() - 1]
                .iter()
                .all(|x| (x / 13) % 64 == 0 && x % 13 == 0)
        );
    }
}

#[test]
fn a_sharded_checkpoint_of_two_ranks_resumes_replicated_on_three_to_the_same_run() {
    if !have_mpirun("sharded resume") {
        return;
    }
    let (args, dir) = whole_on_three("sharded-resume");
    // The state a replicated pair of ranks checkpoints at step 5 …
    let o = mpirun(
        2,
        &with(
            with(args.clone(), "--stop-after", "5"),
            "--out",
            "replicated",
        ),
        &dir,
    );
    expect_status(&o, 4, "2 ranks stopped");
    let replicated = checkpoint_state(&checkpoint_path(&dir.join("replicated")));
    // … is what a sharded pair writes.
    let sharded: Vec<String> = args
        .iter()
        .cloned()
        .chain(["--shard-optimizer-state".into()])
        .collect();
    let (ck, _, step) = two_rank_checkpoint(&dir, &sharded, "5");
    assert_eq!(step, 5);
    assert!(
        checkpoint_state(&ck) == replicated,
        "the sharded checkpoint differs"
    );
    let o = mpirun(3, &with(args, "--resume", &s(&ck)), &dir);
    expect_status(&o, 0, "resumed replicated on 3 ranks");
    assert!(text(&o).contains("bytes (replicated)"), "{}", text(&o));
    let (a, b) = (
        train_lines(&dir.join("whole")),
        train_lines(&dir.join("run")),
    );
    assert_eq!(trajectory(&b), trajectory(&a));
    assert!(weights(&dir.join("run")) == weights(&dir.join("whole")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `args` without `flag` and its value.
fn without(mut args: Vec<String>, flag: &str) -> Vec<String> {
    if let Some(i) = args.iter().position(|a| a == flag) {
        args.drain(i..i + 2);
    }
    args
}

/// SAM's perturbation needs the norm of the whole gradient: every rank takes it from the
/// gradient it holds whole, over the tensors of the replicated run, and perturbs its own range
/// (SAM-IRE refreshing its mask first from the global threshold); the ranges are then
/// gathered for the second pass. SAM-IRE and ASAM-IRE (the parameter groups' parts, whose
/// norms add in their order) and SAM decaying everything (one tensor): the replicated run's losses, masks, weights
/// and checkpointed state on 1, 2 and 3 ranks, bit for bit.
#[test]
fn a_sharded_optimizer_state_trains_sam_and_sam_ire_as_a_replicated_one() {
    if !have_mpirun("sharded sam") {
        return;
    }
    let sam_ire = with(mlp_args(), "--optimizer", "sam-ire");
    let asam = with(
        with(sam_ire.clone(), "--weight-decay", "0.0005"),
        "--rho",
        "0.5",
    )
    .into_iter()
    .chain(["--adaptive".into()])
    .collect();
    // Plain SAM decaying every parameter: one tensor, the whole arena.
    let sam = with(without(mlp_args(), "--refresh-every"), "--optimizer", "sam")
        .into_iter()
        .chain(["--decay-all".into()])
        .collect();
    // SGD-IRE under SAM holds SGD's momentum (4 bytes), IRE's estimate (4) and mask (1) per
    // parameter; SAM alone the momentum.
    for (name, args, refreshes, per) in [
        ("sam-ire", sam_ire, 4, 9),
        ("asam-ire", asam, 4, 9),
        ("sam", sam, 0, 4),
    ] {
        let bytes = sharded_equals_replicated(name, args, refreshes);
        assert_eq!(bytes[0], [9610 * per], "{name}");
        assert_eq!(bytes[1], [4864 * per, 4746 * per], "{name}");
    }
}

/// Without `--shards`, `--shard-optimizer-state` reduce-scatters the gradient and the
/// estimator gradient (each rank receives its range's sums only) where a replicated run
/// all-reduces them: the additions run in another order, so on 2 and 3 ranks the sharded run
/// follows the replicated run of the same ranks within the tolerance of the plain
/// data-parallel test (1e-5 in every step's loss, 2e-5 in every weight, the same flat count at
/// every refresh), the gaps printed. No gradient norm is logged; the metrics lines differ
/// only in those rounded losses (and at refreshes possibly in the mask hash, not compared).
fn scattered_follows_replicated(name: &str, args: &[String]) {
    for np in [2, 3] {
        let dir = tmp(&format!("{name}-scattered-{np}"));
        let o = mpirun(np, &with(args.to_vec(), "--out", "replicated"), &dir);
        expect_status(&o, 0, &format!("{name}, replicated on {np} ranks"));
        let sharded: Vec<String> = args
            .iter()
            .cloned()
            .chain(["--shard-optimizer-state".into()])
            .collect();
        let o = mpirun(np, &with(sharded, "--out", "sharded"), &dir);
        expect_status(&o, 0, &format!("{name}, sharded state on {np} ranks"));
        assert!(text(&o).contains("bytes (sharded)"), "{}", text(&o));
        let (a, b) = (
            train_lines(&dir.join("replicated")),
            train_lines(&dir.join("sharded")),
        );
        assert_eq!(b.len(), 12);
        assert!(b.iter().all(|l| l["world_size"] == np), "{b:?}");
        within_tolerance(
            &format!("{name} on {np} ranks"),
            (&dir.join("replicated"), &a),
            (&dir.join("sharded"), &b),
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// AdmIRE on the MLP with gradient clipping at 0.5 (a norm the gradients exceed, so every
/// rank scales its range by the norm of the whole gradient, taken from every rank's partial
/// sum of squares): the replicated run within the tolerance, and clipping does change the run
/// (by more than 1e-3 in a loss), so a norm taken from one rank's range alone would show.
#[test]
fn without_shards_a_sharded_state_reduce_scatters_and_clips_as_a_replicated_run() {
    if !have_mpirun("scattered clip") {
        return;
    }
    let clipped = with(mlp_args(), "--clip-grad-norm", "0.5");
    scattered_follows_replicated("clip", &clipped);
    let dir = tmp("clip-matters");
    let plain = mpirun(2, &with(mlp_args(), "--out", "plain"), &dir);
    expect_status(&plain, 0, "unclipped");
    let clip = mpirun(2, &with(clipped, "--out", "clip"), &dir);
    expect_status(&clip, 0, "clipped");
    let (a, b) = (
        train_lines(&dir.join("plain")),
        train_lines(&dir.join("clip")),
    );
    let gap = loss_gap(&a, &b);
    assert!(gap > 1e-3, "clipping changed the losses by {gap} only");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SAM-IRE on the MLP: SAM's perturbation divides by the norm of the whole gradient, which a
/// rank holding its range's sums only takes from every rank's partial sum of squares, and its
/// mask refreshes from the reduce-scattered estimator gradient: the replicated run within the
/// tolerance on 2 and 3 ranks.
#[test]
fn without_shards_a_sharded_state_reduce_scatters_sam_ire_as_a_replicated_run() {
    if !have_mpirun("scattered sam") {
        return;
    }
    scattered_follows_replicated("sam-ire", &with(mlp_args(), "--optimizer", "sam-ire"));
}

#[test]
fn a_sharded_optimizer_state_where_it_cannot_apply_is_refused_with_the_reason() {
    if !have_mpirun("sharded refused") {
        return;
    }
    let dir = tmp("sharded-refused");
    // One process started without a launcher: nothing to shard over.
    let o = Command::new(IRE)
        .args(with(mlp_args(), "--out", "run"))
        .arg("--shard-optimizer-state")
        .current_dir(&dir)
        .output()
        .unwrap();
    expect_status(&o, 2, "sharded state in a single process");
    assert!(
        text(&o).contains(
            "invalid config `optimizer_state`: shards the state over the processes of a \
             data-parallel group"
        ),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// SGD-IRE on `resnet-small` (batch norm after every convolution) and the digits: 10 steps of
/// 16 examples, a mask refresh every 2 steps (the estimator's passes synced too).
fn resnet_args() -> Vec<String> {
    [
        ("--model", "resnet-small"),
        ("--optimizer", "sgd-ire"),
        ("--lr", "0.05"),
        ("--batch-size", "16"),
        ("--refresh-every", "2"),
        ("--steps", "10"),
    ]
    .into_iter()
    .fold(mlp_args(), |a, (flag, value)| with(a, flag, value))
}

fn sync_bn(args: Vec<String>) -> Vec<String> {
    args.into_iter().chain(["--sync-bn".into()]).collect()
}

/// The largest difference of a step's loss between two runs (the same steps, the same number
/// of flat coordinates at every refresh).
fn largest_loss_gap(a: &[Value], b: &[Value]) -> f64 {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["step"], y["step"]);
        assert_eq!(x["flat"], y["flat"], "step {}", x["step"]);
    }
    loss_gap(a, b)
}

/// The largest difference of a step's loss between two runs, step by step.
fn loss_gap(a: &[Value], b: &[Value]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x["loss"].as_f64().unwrap() - y["loss"].as_f64().unwrap()).abs())
        .fold(0f64, f64::max)
}

/// The largest loss and weight gaps between two runs (each its run folder and train lines),
/// asserted within the tolerance of the gradient's all-reduce: 1e-5 in every step's loss,
/// 2e-5 in every weight (and the same flat count at every refresh).
fn within_tolerance(what: &str, a: (&Path, &[Value]), b: (&Path, &[Value])) -> (f64, f32) {
    let loss = largest_loss_gap(a.1, b.1);
    let weight = largest_weight_gap(a.0, b.0);
    eprintln!("{what}: loss {loss:e}, weight {weight:e}");
    assert!(loss <= 1e-5, "{what}: loss {loss}");
    assert!(weight <= 2e-5, "{what}: weight {weight}");
    (loss, weight)
}

/// The largest difference of a weight (batch-norm running statistics included) between two
/// weights files.
fn largest_weight_gap(a: &Path, b: &Path) -> f32 {
    let read = |d: &Path| {
        ire_models::artifacts::safetensors::import(&d.join("weights.safetensors")).unwrap()
    };
    let (wa, wb) = (read(a), read(b));
    assert_eq!(wa.len(), wb.len());
    let mut gap = 0f32;
    for ((na, _, va), (nb, _, vb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        for (p, q) in va.iter().zip(vb) {
            gap = gap.max((p - q).abs());
        }
    }
    gap
}

/// `--sync-bn` takes every batch-norm layer's statistics over the whole batch, so 2 and 3
/// ranks follow 1 process of the same batch within the tolerance of the gradient's all-reduce
/// alone: 1e-5 in the loss and 2e-5 in every weight over 10 steps, as without batch norm
/// (measured: at most 1.0e-7 in the loss, 3.6e-7 in a weight). The statistics themselves are those of the whole
/// batch bit for bit (the library's test); only the all-reduced gradient rounds otherwise.
/// Without the flag each rank normalizes over its own 8 (or 5–6) examples: the runs part by
/// more than 1e-3 in the loss (measured 0.016 at the first step, 0.18 at most), so the
/// tolerance does tell the two apart. In a group of one, `--sync-bn` changes no bit.
#[test]
fn with_sync_bn_two_and_three_ranks_follow_one_process_and_without_it_they_do_not() {
    if !have_mpirun("sync-bn") {
        return;
    }
    let args = resnet_args();
    let dir = tmp("sync-bn");
    let run = |np: usize, args: &[String], out: &str| {
        let o = mpirun(np, &with(args.to_vec(), "--out", out), &dir);
        expect_status(&o, 0, &format!("{out} on {np} ranks"));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
        train_lines(&dir.join(out))
    };
    let one = run(1, &sync_bn(args.clone()), "one");
    assert_eq!(one.len(), 10);
    assert!(one.iter().filter(|l| l["flat"].is_u64()).count() == 5);
    // A group of one: the flag changes nothing, bit for bit.
    let plain_one = run(1, &args, "plain-one");
    assert_eq!(trajectory(&plain_one), trajectory(&one));
    assert!(weights(&dir.join("plain-one")) == weights(&dir.join("one")));
    for np in [2, 3] {
        let out = format!("sync-{np}");
        let lines = run(np, &sync_bn(args.clone()), &out);
        assert!(lines.iter().all(|l| l["world_size"] == np));
        within_tolerance(
            &format!("sync-bn on {np} ranks vs 1"),
            (&dir.join("one"), &one),
            (&dir.join(&out), &lines),
        );
    }
    // Per-rank statistics (the default) move the run by far more than the tolerance.
    let plain_two = run(2, &args, "plain-two");
    let loss = largest_loss_gap(&one, &plain_two);
    eprintln!("per-rank statistics on 2 ranks vs 1: loss {loss:e}");
    assert!(loss > 1e-3, "per-rank statistics: loss {loss}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--sync-bn` in one process started without a launcher: that process holds the whole batch,
/// so the flag is a no-op (the same run, bit for bit).
#[test]
fn sync_bn_in_a_single_process_is_the_same_run() {
    if !have_mpirun("sync-bn alone") {
        return;
    }
    let (plain, _) = alone_run("sync-bn-alone-plain", &resnet_args());
    let (synced, o) = alone_run("sync-bn-alone", &sync_bn(resnet_args()));
    assert!(
        text(&o).contains("world size: 1 (single process)"),
        "{}",
        text(&o)
    );
    let (a, b) = (plain.join("run"), synced.join("run"));
    assert_eq!(trajectory(&train_lines(&b)), trajectory(&train_lines(&a)));
    assert!(weights(&a) == weights(&b));
    let _ = std::fs::remove_dir_all(&plain);
    let _ = std::fs::remove_dir_all(&synced);
}

/// Where `--sync-bn` cannot apply it is refused with the reason (exit 2), on every rank alike,
/// never a hang or a panic: with `--shards`, on a model without batch norm, and with a batch
/// that leaves a rank without examples.
#[test]
fn sync_bn_where_it_cannot_apply_is_refused_with_the_reason() {
    if !have_mpirun("sync-bn refused") {
        return;
    }
    let dir = tmp("sync-bn-refused");
    let cases = [
        (
            with(sync_bn(resnet_args()), "--shards", "4"),
            2,
            "invalid config `sync_bn`: does not combine with shards",
        ),
        (
            sync_bn(mlp_args()),
            2,
            "invalid config `sync_bn`: synchronizes batch-norm statistics, and this model has no \
             batch norm (got true with --model mlp-small)",
        ),
        (
            with(sync_bn(resnet_args()), "--batch-size", "2"),
            3,
            "invalid config `sync_bn`: needs an example of every micro-batch on every process \
             (a batch of at least processes × grad_accum examples) (got a batch of 2 examples \
             in 1 micro-batches on 3 processes)",
        ),
    ];
    for (args, np, why) in cases {
        let o = mpirun(np, &with(args, "--out", "run"), &dir);
        expect_status(&o, 2, why);
        assert!(text(&o).contains(why), "{}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
    }
    // Nor does a single process take it on a model without batch norm.
    let o = Command::new(IRE)
        .args(with(sync_bn(mlp_args()), "--out", "alone"))
        .current_dir(&dir)
        .output()
        .unwrap();
    expect_status(&o, 2, "sync-bn on the MLP, alone");
    assert!(
        text(&o).contains("this model has no batch norm"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

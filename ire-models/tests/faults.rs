//! Fault injection through the `ire` command: no run is ever lost or mixed up.
//!
//! Every case checks the same invariants: the previous complete checkpoint and the history it
//! belongs to survive intact, no temporary file (or lock) outlives the run, the error names the
//! problem, and the exit status is the documented one (README: 0 done, 2 refused, 3 diverged,
//! 4 interrupted, 5 folder in use, 130 forced exit). Runs use `mlp-small` on the digits shipped
//! in `data/`, so the whole suite takes seconds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ire_models::train::run::{checkpoint_path, metrics_position, read_checkpoint};

fn ire() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ire"))
}

fn digits() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ire-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small digits run: `steps` steps of SGD-IRE, a metrics line every step.
fn train_args(steps: u64) -> Vec<String> {
    let d = digits();
    [
        "train",
        "--model",
        "mlp-small",
        "--dataset",
        "digits",
        "--data",
        s(&d),
        "--optimizer",
        "sgd-ire",
        "--lr",
        "0.05",
        "--batch-size",
        "16",
        "--refresh-every",
        "3",
        "--log-every",
        "1",
        "--eval-every",
        "40",
        "--seed",
        "11",
        "--quiet",
        "--backend",
        "cpu",
        "--steps",
        &steps.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `args` with `flag` set to `value` (replaced when present, else added).
fn with(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.to_string(),
        None => args.extend([flag.to_string(), value.to_string()]),
    }
    args
}

fn run(args: &[String], extra: &[&str]) -> Output {
    ire().args(args).args(extra).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

/// Polls `cond` every 20 ms for at most 60 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// A spawned `ire`, killed if a failing assertion drops it still running.
struct Running(Option<Child>);

impl Running {
    fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
    fn kill(&mut self) {
        let _ = self.0.as_mut().unwrap().kill();
    }
    /// Whether the process has exited (it is reaped later by `wait_with_output`).
    fn finished(&mut self) -> bool {
        self.0.as_mut().unwrap().try_wait().unwrap().is_some()
    }
    fn wait_with_output(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(child: &Running, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn spawn(args: &[String], extra: &[&str]) -> Running {
    Running(Some(
        ire()
            .args(args)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ))
}

fn metrics_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// The metrics records without their timings.
fn records(dir: &Path) -> Vec<serde_json::Value> {
    ire_models::artifacts::metrics::read_jsonl(&dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|mut v| {
            // Measurements of the process that wrote the line, not of the run: the speed, and
            // the optimizer-state bytes that every start (a resume too) records once.
            let o = v.as_object_mut().unwrap();
            o.remove("images_per_sec");
            o.remove("opt_state_bytes");
            v
        })
        .collect()
}

/// Every file of `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// No temporary file and no lock left in `dir`.
fn assert_clean(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".tmp") && name != "run.lock",
            "{name} outlived the run in {}",
            dir.display()
        );
    }
}

/// The checkpoint in `dir` is complete (its checksums hold) and the history it records is the
/// beginning of `metrics.jsonl`, byte for byte; returns its step.
fn checkpoint_and_history_intact(dir: &Path) -> u64 {
    let (_, _, meta) = read_checkpoint(&checkpoint_path(dir)).unwrap();
    let mark = metrics_position(&meta).history.unwrap();
    let bytes = std::fs::read(dir.join("metrics.jsonl")).unwrap();
    assert!(
        bytes.len() as u64 >= mark.bytes,
        "history shorter than its checkpoint"
    );
    assert_eq!(
        Some(crc32fast::hash(&bytes[..mark.bytes as usize])),
        mark.crc32,
        "the history of the checkpoint changed"
    );
    meta["step"].as_u64().unwrap()
}

fn weights(dir: &Path) -> Vec<u32> {
    ire_models::artifacts::safetensors::import(&dir.join("weights.safetensors"))
        .unwrap()
        .into_iter()
        .flat_map(|(_, _, v)| v.into_iter().map(f32::to_bits))
        .collect()
}

/// splitmix64: the seeded moments of the kills.
struct Moments(u64);

impl Moments {
    fn next_below(&mut self, max: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % max
    }
}

#[test]
fn kill_9_at_random_moments_of_checkpoint_writes_and_resumes_loses_nothing() {
    let root = tmp("kill9");
    let steps = 600;
    let args = train_args(steps);
    let reference = root.join("reference");
    let o = run(&args, &["--out", s(&reference)]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let chain = root.join("chain");
    let mut rng = Moments(2024);
    let mut last_step = 0;
    let mut kills = 0;
    for _ in 0..20 {
        let ck = checkpoint_path(&chain);
        let extra: Vec<&str> = if ck.exists() {
            vec!["--resume", s(&ck), "--checkpoint-every", "5"]
        } else {
            // Killed before its first checkpoint: the folder holds a history and nothing to
            // resume, so the new start must say --overwrite.
            vec!["--out", s(&chain), "--overwrite", "--checkpoint-every", "5"]
        };
        let mut child = spawn(&args, &extra);
        // The moment of the kill is seeded in training progress, not in time (a fixed delay
        // outlasts a whole run on a fast machine): up to 40 history lines past the last
        // checkpoint's step, then up to 5 ms more, so kills land inside steps, checkpoint
        // writes and a resume's history cut alike.
        let target = last_step as usize + 1 + rng.next_below(40) as usize;
        for _ in 0..60_000 {
            if child.finished() || metrics_lines(&chain) >= target {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.next_below(5000)));
        child.kill();
        let out = child.wait_with_output();
        match out.status.code() {
            None => kills += 1,
            Some(0) => {}
            Some(c) => panic!("exit {c}: {}", text(&out)),
        }
        if checkpoint_path(&chain).exists() {
            let step = checkpoint_and_history_intact(&chain);
            assert!(
                step >= last_step,
                "the checkpoint went back from step {last_step} to {step}"
            );
            last_step = step;
        }
    }
    println!("{kills} of 20 runs were killed");
    assert!(kills >= 8, "only {kills} of 20 runs were killed");
    let ck = checkpoint_path(&chain);
    let o = run(&args, &["--resume", s(&ck), "--checkpoint-every", "5"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert_eq!(checkpoint_and_history_intact(&chain), steps);
    assert_eq!(weights(&chain), weights(&reference), "weights differ");
    assert_eq!(records(&chain), records(&reference), "histories differ");
    assert_clean(&chain);
    assert_clean(&reference);
}

#[test]
fn kill_9_while_a_resume_cuts_a_long_history_loses_nothing() {
    let root = tmp("kill9-history");
    let dir = root.join("run");
    // 5,000 lines of history before the checkpoint (about 0.7 MB), as a long run leaves.
    let args = with(train_args(5_020), "--batch-size", "2");
    let o = run(&args, &["--out", s(&dir), "--stop-after", "5000"]);
    assert_eq!(code(&o), Some(4), "{}", text(&o));
    assert_eq!(checkpoint_and_history_intact(&dir), 5_000);
    let ck = checkpoint_path(&dir);
    let m = dir.join("metrics.jsonl");
    let junk = b"{\"kind\":\"train\",\"step\":-1}\n";
    // How long a resume that cuts the history and takes one step lives: the kills fall in it.
    let t0 = std::time::Instant::now();
    let probe = |extra: &[&str]| spawn(&args, &[&["--resume", s(&ck)], extra].concat());
    let mut f = std::fs::OpenOptions::new().append(true).open(&m).unwrap();
    std::io::Write::write_all(&mut f, junk).unwrap();
    let out = probe(&["--stop-after", "1"]).wait_with_output();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let life = t0.elapsed().as_millis() as u64;
    let mut rng = Moments(7);
    let mut cut_killed = 0;
    for _ in 0..10 {
        // Lines after the checkpoint, as a kill between checkpoints leaves them: every resume
        // has to cut them off.
        let mut f = std::fs::OpenOptions::new().append(true).open(&m).unwrap();
        std::io::Write::write_all(&mut f, junk).unwrap();
        let mut child = probe(&["--stop-after", "1"]);
        std::thread::sleep(Duration::from_millis(rng.next_below(life.max(1))));
        child.kill();
        let out = child.wait_with_output();
        assert!(
            matches!(out.status.code(), None | Some(4)),
            "{}",
            text(&out)
        );
        cut_killed += std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                let n = n.to_string_lossy();
                n.starts_with(".metrics.jsonl.") && n.ends_with(".tmp")
            })
            .count();
        checkpoint_and_history_intact(&dir);
    }
    println!("{cut_killed} of 10 kills fell in the middle of a history cut");
    let o = run(&args, &["--resume", s(&ck)]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert_eq!(checkpoint_and_history_intact(&dir), 5_020);
    let steps: Vec<i64> = records(&dir)
        .iter()
        .filter(|r| r["kind"] == "train")
        .map(|r| r["step"].as_i64().unwrap())
        .collect();
    assert_eq!(
        steps,
        (1..=5_020).collect::<Vec<_>>(),
        "no junk, no gap, no repeat"
    );
    assert_clean(&dir);
}

#[test]
fn two_runs_into_one_folder_are_refused_and_a_killed_holder_is_taken_over() {
    let root = tmp("concurrent");
    let dir = root.join("run");
    let args = with(train_args(100_000_000), "--batch-size", "8");
    let a = spawn(&args, &["--out", s(&dir)]);
    wait_for("the first run to train", || metrics_lines(&dir) >= 3);
    let o = run(&train_args(10), &["--out", s(&dir)]);
    assert_eq!(code(&o), Some(5), "{}", text(&o));
    let msg = text(&o);
    assert!(
        msg.contains(&format!("in use by another run (process {})", a.id())),
        "{msg}"
    );
    // Even --overwrite and --resume wait their turn.
    let o = run(&train_args(10), &["--out", s(&dir), "--overwrite"]);
    assert_eq!(code(&o), Some(5), "{}", text(&o));
    signal(&a, "-INT");
    let out = a.wait_with_output();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    // One run's history only: steps 1, 2, 3, ... once each.
    let steps: Vec<u64> = records(&dir)
        .iter()
        .filter(|r| r["kind"] == "train")
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());
    assert_clean(&dir);
    // A holder killed with -9 cannot release its lock: the next run takes it over and says so.
    let ck = checkpoint_path(&dir);
    let mut c = spawn(&args, &["--resume", s(&ck)]);
    let pid = c.id();
    wait_for("the lock", || {
        std::fs::read_to_string(dir.join("run.lock")).is_ok_and(|t| t.trim() == pid.to_string())
    });
    c.kill();
    c.wait_with_output();
    assert_eq!(
        std::fs::read_to_string(dir.join("run.lock"))
            .unwrap()
            .trim(),
        pid.to_string()
    );
    let o = run(&args, &["--resume", s(&ck), "--stop-after", "2"]);
    assert_eq!(code(&o), Some(4), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("took over the lock of process {pid}")),
        "{}",
        text(&o)
    );
    checkpoint_and_history_intact(&dir);
    assert_clean(&dir);
}

#[test]
fn every_run_gets_its_own_default_folder() {
    let cwd = tmp("default-out");
    let names: Vec<String> = (0..2)
        .map(|_| {
            let o = ire()
                .current_dir(&cwd)
                .args(train_args(3))
                .output()
                .unwrap();
            assert_eq!(code(&o), Some(0), "{}", text(&o));
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .find_map(|l| l.strip_prefix("run folder: ").map(str::to_string))
                .unwrap()
        })
        .collect();
    assert_ne!(names[0], names[1]);
    // A run that fails before it writes anything leaves no folder of its own.
    let o = ire()
        .current_dir(&cwd)
        .args(with(train_args(3), "--data", "missing.csv"))
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert_eq!(std::fs::read_dir(cwd.join("runs")).unwrap().count(), 2);
    for n in &names {
        let dir = cwd.join(n);
        assert!(
            n.starts_with("runs/mlp-small-sgd-ire-"),
            "{n}: named after model and optimizer"
        );
        assert_eq!(checkpoint_and_history_intact(&dir), 3);
        assert_clean(&dir);
    }
}

#[test]
fn a_resume_continues_in_its_own_folder_and_never_touches_another_run() {
    let root = tmp("resume-other");
    let args = train_args(60);
    let (a, b) = (root.join("a"), root.join("b"));
    let o = run(&args, &["--out", s(&a)]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let o = run(&args, &["--out", s(&b), "--stop-after", "25"]);
    assert_eq!(code(&o), Some(4), "{}", text(&o));
    let before = snapshot(&a);
    let ck_b = checkpoint_path(&b);
    // Into another run's folder: refused, that run untouched.
    let o = run(&args, &["--resume", s(&ck_b), "--out", s(&a)]);
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(text(&o).contains("holds another run"), "{}", text(&o));
    assert_eq!(snapshot(&a), before);
    // Without --out: in b, not in any default folder (cwd has no runs/ after it).
    let o = ire()
        .current_dir(&root)
        .args(&args)
        .args(["--resume", s(&ck_b)])
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert!(!root.join("runs").exists(), "a default folder was used");
    assert_eq!(snapshot(&a), before, "another run's folder was touched");
    assert_eq!(weights(&b), weights(&a));
    assert_eq!(records(&b), records(&a));
    // Branching off into a new folder copies the history up to the checkpoint.
    let c = root.join("c");
    let o = run(&args, &["--out", s(&c), "--stop-after", "30"]);
    assert_eq!(code(&o), Some(4), "{}", text(&o));
    let d = root.join("d");
    let o = run(
        &args,
        &["--resume", s(&checkpoint_path(&c)), "--out", s(&d)],
    );
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert_eq!(records(&d), records(&a));
    assert_eq!(weights(&d), weights(&a));
    assert_eq!(
        checkpoint_and_history_intact(&c),
        30,
        "the source stays as it was"
    );
    for dir in [&a, &b, &c, &d] {
        assert_clean(dir);
    }
}

#[test]
fn a_new_run_never_replaces_another_run_unless_told_to() {
    let root = tmp("overwrite");
    let a = root.join("a");
    let o = run(&train_args(20), &["--out", s(&a)]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let before = snapshot(&a);
    let o = run(&train_args(20), &["--out", s(&a)]);
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    let msg = text(&o);
    assert!(
        msg.contains("holds another run") && msg.contains("--overwrite"),
        "{msg}"
    );
    assert_eq!(snapshot(&a), before);
    // Allowed to overwrite, but failing to load its data or interrupted before its first step:
    // the old run is still whole.
    let mut bad = train_args(20);
    let i = bad.iter().position(|x| x == "--data").unwrap();
    bad[i + 1] = s(&root.join("missing.csv")).into();
    let o = run(&bad, &["--out", s(&a), "--overwrite"]);
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(text(&o).contains("missing.csv"), "{}", text(&o));
    assert_eq!(snapshot(&a), before);
    let o = run(
        &train_args(20),
        &["--out", s(&a), "--overwrite", "--stop-after", "0"],
    );
    assert_eq!(code(&o), Some(4), "{}", text(&o));
    assert!(text(&o).contains("nothing was written"), "{}", text(&o));
    assert_eq!(snapshot(&a), before);
    // Overwriting for real replaces the run.
    let o = run(&train_args(7), &["--out", s(&a), "--overwrite"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert_eq!(checkpoint_and_history_intact(&a), 7);
    assert_eq!(
        records(&a).iter().filter(|r| r["kind"] == "train").count(),
        7
    );
    assert_clean(&a);
}

#[test]
fn a_history_that_is_not_the_checkpoints_is_refused() {
    let root = tmp("history");
    let a = root.join("a");
    let args = train_args(40);
    let o = run(&args, &["--out", s(&a), "--stop-after", "20"]);
    assert_eq!(code(&o), Some(4), "{}", text(&o));
    let ck = checkpoint_path(&a);
    let m = a.join("metrics.jsonl");
    let full = std::fs::read(&m).unwrap();
    // Lines written after the checkpoint (a kill before the next one) are cut on resume.
    let mut longer = full.clone();
    longer.extend_from_slice(b"{\"kind\":\"train\",\"step\":21,\"loss\":9}\n{\"kind\":\"tr");
    std::fs::write(&m, &longer).unwrap();
    let o = run(&args, &["--resume", s(&ck), "--stop-after", "1"]);
    assert_eq!(code(&o), Some(4), "{}", text(&o));
    let now = std::fs::read(&m).unwrap();
    assert_eq!(&now[..full.len()], &full[..]);
    assert_eq!(checkpoint_and_history_intact(&a), 21);
    assert!(!String::from_utf8_lossy(&now).contains("\"loss\":9"));
    // A history cut short or replaced is refused, naming the file; nothing changes.
    let good = std::fs::read(&m).unwrap();
    for (broken, why) in [
        (good[..good.len() / 2].to_vec(), "bytes"),
        (
            good.iter()
                .map(|&b| if b == b'5' { b'6' } else { b })
                .collect(),
            "CRC-32",
        ),
    ] {
        std::fs::write(&m, &broken).unwrap();
        let ck_before = std::fs::read(&ck).unwrap();
        let o = run(&args, &["--resume", s(&ck)]);
        assert_eq!(code(&o), Some(2), "{}", text(&o));
        let msg = text(&o);
        assert!(msg.contains("metrics.jsonl") && msg.contains(why), "{msg}");
        assert_eq!(std::fs::read(&m).unwrap(), broken);
        assert_eq!(std::fs::read(&ck).unwrap(), ck_before);
    }
    assert_clean(&a);
}

#[test]
fn divergence_is_never_checkpointed() {
    let root = tmp("diverge");
    for (opt, lr) in [("adamw", "1e38"), ("sgd", "1e6")] {
        let dir = root.join(opt);
        let mut args = with(with(train_args(40), "--optimizer", opt), "--lr", lr);
        let j = args.iter().position(|x| x == "--refresh-every").unwrap();
        args.drain(j..j + 2);
        let o = run(&args, &["--out", s(&dir), "--checkpoint-every", "1"]);
        assert_eq!(code(&o), Some(3), "{opt}: {}", text(&o));
        let msg = text(&o);
        assert!(msg.contains("training diverged at step"), "{msg}");
        let ck = checkpoint_path(&dir);
        if ck.exists() {
            // The last good checkpoint: finite, and named with its step.
            let step = checkpoint_and_history_intact(&dir);
            assert!(
                msg.contains(&format!("the last good checkpoint (step {step}) is kept")),
                "{msg}"
            );
            let (c, _, _) = read_checkpoint(&ck).unwrap();
            for (name, v) in &c.tensors {
                assert!(v.iter().all(|x| x.is_finite()), "{name}");
            }
            let mut t = ire_models::train::run::trainer_from_checkpoint(
                ire_backend_cpu::CpuBackend::new(),
                &ck,
                None,
            )
            .unwrap();
            assert!(t.next_loss().unwrap().is_finite(), "{opt}");
        } else {
            assert!(msg.contains("no checkpoint was written"), "{msg}");
        }
        assert_clean(&dir);
    }
}

/// IDX files of `n` images of `h × w` in `dir` with the given split prefix.
fn write_idx(dir: &Path, prefix: &str, n: u32, h: u32, w: u32) {
    let idx = |dims: &[u32], data: Vec<u8>| {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    };
    let pixels: Vec<u8> = (0..n * h * w).map(|i| (i * 7 % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    std::fs::write(
        dir.join(format!("{prefix}-images-idx3-ubyte")),
        idx(&[n, h, w], pixels),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{prefix}-labels-idx1-ubyte")),
        idx(&[n], labels),
    )
    .unwrap();
}

/// An image folder `root/split/class/k.png` of `size × size` images.
fn write_folder(root: &Path, split: &str, classes: &[&str], size: u32) {
    for (c, class) in classes.iter().enumerate() {
        let d = root.join(split).join(class);
        std::fs::create_dir_all(&d).unwrap();
        for k in 0..3u8 {
            image::RgbImage::from_fn(size, size, |x, y| {
                image::Rgb([c as u8 * 80, k * 40 + x as u8, y as u8])
            })
            .save(d.join(format!("{k}.png")))
            .unwrap();
        }
    }
}

fn image_args(dataset: &str, data: &Path, out: &Path) -> Vec<String> {
    [
        "train",
        "--model",
        "mlp-small",
        "--dataset",
        dataset,
        "--data",
        s(data),
        "--optimizer",
        "sgd",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--quiet",
        "--backend",
        "cpu",
        "--out",
        s(out),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn mismatched_splits_are_refused_before_training() {
    let root = tmp("splits");
    for (train, test) in [(28, 8), (8, 28)] {
        let data = root.join(format!("idx-{train}-{test}"));
        std::fs::create_dir_all(&data).unwrap();
        write_idx(&data, "train", 40, train, train);
        write_idx(&data, "t10k", 20, test, test);
        let out = root.join(format!("out-{train}-{test}"));
        let o = run(&image_args("idx", &data, &out), &[]);
        assert_eq!(code(&o), Some(2), "{}", text(&o));
        let msg = text(&o);
        assert!(
            msg.contains("training and test splits")
                && msg.contains(&format!("1×{train}×{train} (training)"))
                && msg.contains(&format!("1×{test}×{test} (test)"))
                && msg.contains(s(&data)),
            "{msg}"
        );
        assert_eq!(metrics_lines(&out), 0, "nothing trained");
        assert!(!checkpoint_path(&out).exists());
        assert_clean(&out);
    }
    // An image folder whose test split has a class the training split lacks.
    let data = root.join("folder-extra");
    write_folder(&data, "train", &["ant", "bee"], 6);
    write_folder(&data, "test", &["ant", "bee", "cat"], 6);
    let out = root.join("out-extra");
    let o = run(&image_args("folder", &data, &out), &[]);
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("class `cat` has no folder in the training split"),
        "{}",
        text(&o)
    );
    // One that lacks a class keeps the training split's numbering.
    let data = root.join("folder-fewer");
    write_folder(&data, "train", &["ant", "bee", "cat"], 6);
    write_folder(&data, "test", &["cat"], 6);
    let cfg = ire_models::train::TrainConfig {
        dataset: ire_models::train::DatasetKind::Folder,
        data: data.clone(),
        ..Default::default()
    };
    let (tr, te) = cfg.load_data().unwrap();
    assert_eq!(tr.class_names, ["ant", "bee", "cat"]);
    assert_eq!(te.labels, [2, 2, 2], "cat is class 2 in both splits");
    // A checkpoint evaluated on data of another shape names the shape, not a parameter count.
    let out = root.join("out-fewer");
    let o = run(&image_args("folder", &data, &out), &[]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let other = root.join("folder-other");
    write_folder(&other, "train", &["ant", "bee", "cat"], 5);
    write_folder(&other, "test", &["cat"], 5);
    let o = ire()
        .args([
            "eval",
            s(&checkpoint_path(&out)),
            "--data",
            s(&other),
            "--backend",
            "cpu",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    let msg = text(&o);
    assert!(
        msg.contains("does not match the checkpoint: its image shape is 3×5×5")
            && msg.contains("3×6×6"),
        "{msg}"
    );
}

/// A corpus over `alphabet` (and spaces and newlines), `words` pseudo-random words long.
fn corpus(path: &Path, alphabet: &[u8], words: usize) {
    let mut x = 12345u64;
    let mut t = Vec::new();
    for i in 0..words {
        for _ in 0..1 + i % 5 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t.push(alphabet[(x >> 33) as usize % alphabet.len()]);
        }
        t.push(if i % 9 == 8 { b'\n' } else { b' ' });
    }
    std::fs::write(path, t).unwrap();
}

fn lm_args(data: &Path, out: &Path, batch: &str) -> Vec<String> {
    [
        "train",
        "--model",
        "llama-tiny",
        "--dataset",
        "text",
        "--data",
        s(data),
        "--tokenizer",
        "char",
        "--context",
        "16",
        "--batch-size",
        batch,
        "--optimizer",
        "adamw",
        "--lr",
        "0.003",
        "--steps",
        "3",
        "--eval-batches",
        "2",
        "--quiet",
        "--backend",
        "cpu",
        "--out",
        s(out),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn a_language_model_is_evaluated_in_tokens_and_only_on_its_own_vocabulary() {
    let root = tmp("lm");
    let (mine, other) = (root.join("mine.txt"), root.join("other.txt"));
    corpus(&mine, b"abcdefghij", 3000);
    corpus(&other, b"klmnopqrst", 3000);
    let out = root.join("run");
    let o = run(&lm_args(&mine, &out, "4"), &[]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let ck = checkpoint_path(&out);
    let o = ire()
        .args(["eval", s(&ck), "--backend", "cpu"])
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let line = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        line.starts_with("step 3: validation loss") && line.contains("perplexity"),
        "{line}"
    );
    assert!(
        line.trim_end().ends_with("tokens)") && !line.contains("images"),
        "{line}"
    );
    // Same vocabulary size, other symbols: refused, for eval and for sampling.
    for cmd in ["eval", "sample"] {
        let o = ire()
            .args([cmd, s(&ck), "--data", s(&other), "--backend", "cpu"])
            .output()
            .unwrap();
        assert_eq!(code(&o), Some(2), "{cmd}: {}", text(&o));
        let msg = text(&o);
        assert!(
            msg.contains("vocabulary (same size, other symbols)") && msg.contains("other.txt"),
            "{cmd}: {msg}"
        );
    }
}

#[test]
fn huge_sizes_are_refused_before_they_are_taken() {
    let root = tmp("huge");
    // A text batch of 10^8 windows.
    let data = root.join("c.txt");
    corpus(&data, b"abcdefghij", 3000);
    let o = run(&lm_args(&data, &root.join("lm"), "100000000"), &[]);
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    let msg = text(&o);
    assert!(
        msg.contains("the logits and their gradient (100000000 × 16 rows"),
        "{msg}"
    );
    assert!(
        msg.contains("more than the memory of this machine"),
        "{msg}"
    );
    // Images resized to 60000² (and to 4·10⁹², whose size overflows 64 bits).
    let folder = root.join("images");
    write_folder(&folder, "train", &["a", "b"], 4);
    write_folder(&folder, "test", &["a", "b"], 4);
    for size in ["60000", "4000000000"] {
        let cfg = root.join(format!("c{size}.toml"));
        std::fs::write(&cfg, format!("image_size = {size}\n")).unwrap();
        let out = root.join(format!("out{size}"));
        let o = run(&image_args("folder", &folder, &out), &["--config", s(&cfg)]);
        assert_eq!(code(&o), Some(2), "{size}: {}", text(&o));
        assert!(
            text(&o).contains(&format!("6 images resized to {size}×{size}")),
            "{}",
            text(&o)
        );
    }
    // --max-memory caps an ordinary run.
    let o = run(
        &train_args(5),
        &["--out", s(&root.join("capped")), "--max-memory", "100K"],
    );
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("more than --max-memory (100.0 KiB)"),
        "{}",
        text(&o)
    );
    let o = run(&train_args(5), &["--max-memory", "lots"]);
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("invalid memory size `lots`"),
        "{}",
        text(&o)
    );
    // Sharpness with more Lanczos steps than parameters.
    let out = root.join("small");
    let o = run(&train_args(3), &["--out", s(&out)]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let o = ire()
        .args([
            "sharpness",
            s(&checkpoint_path(&out)),
            "--lanczos-steps",
            "9611",
            "--backend",
            "cpu",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("lanczos_steps = 9611 is more than the 9610 parameters"),
        "{}",
        text(&o)
    );
    // The library's collecting toy run checks its trajectory's memory.
    let e = ire_models::toy::run(
        &ire_core::Reference,
        ire_models::toy::ToyMethod::Gd,
        1.0,
        10_000_000_000,
        ire_models::toy::sharp_direction_jacobi,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("a trajectory of 10000000000 steps"),
        "{e}"
    );
}

#[cfg(target_os = "linux")]
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn toy_streams_a_trajectory_of_any_length() {
    let root = tmp("toy");
    let csv = root.join("path.csv");
    let toy: Vec<String> = [
        "toy",
        "--steps",
        "10000000000",
        "--csv",
        s(&csv),
        "--backend",
        "cpu",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let child = spawn(&toy, &[]);
    let temp = || {
        std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".tmp"))
    };
    // About a million rows streamed to the temporary file.
    wait_for("the trajectory to stream", || {
        temp().is_some_and(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 30 << 20))
    });
    #[cfg(target_os = "linux")]
    {
        let kib = rss_kib(child.id());
        assert!(kib < 20 << 10, "{kib} KiB resident after a million points");
    }
    signal(&child, "-INT");
    let out = child.wait_with_output();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let step: u64 = stdout
        .strip_prefix("interrupted at step=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    let body = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(
        body.lines().count() as u64,
        step + 2,
        "header and steps 0..=step"
    );
    assert!(
        body.lines()
            .last()
            .unwrap()
            .starts_with(&format!("{step},"))
    );
    assert!(temp().is_none());
    // A folder as --csv is refused before anything is written, leaving nothing behind.
    let o = ire()
        .args(["toy", "--csv", s(&root), "--backend", "cpu"])
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(text(&o).contains("it is a folder"), "{}", text(&o));
    let parent = root.parent().unwrap();
    let stray = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.contains(root.file_name().unwrap().to_str().unwrap()) && n.ends_with(".tmp"));
    assert_eq!(stray, None);
}

#[test]
fn resuming_a_finished_run_changes_nothing() {
    let root = tmp("finished");
    let a = root.join("a");
    let args = train_args(12);
    let o = run(&args, &["--out", s(&a)]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let before = snapshot(&a);
    let o = run(&args, &["--resume", s(&checkpoint_path(&a))]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("already finished at step 12: nothing to do"),
        "{out}"
    );
    assert!(!out.contains("NaN") && !out.contains("s/epoch"), "{out}");
    assert!(out.contains("test accuracy"), "{out}");
    assert_eq!(snapshot(&a), before);
}

#[test]
fn temporary_files_of_killed_writers_are_removed() {
    let root = tmp("strays");
    let a = root.join("a");
    let args = train_args(20);
    let o = run(&args, &["--out", s(&a), "--stop-after", "5"]);
    assert_eq!(code(&o), Some(4), "{}", text(&o));
    let mut dead = Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    let stray = a.join(format!(".checkpoint.irec.{pid}.0.tmp"));
    std::fs::write(&stray, vec![7u8; 4096]).unwrap();
    let o = run(&args, &["--resume", s(&checkpoint_path(&a))]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "removed {}, left by process {pid}",
            stray.display()
        )),
        "{}",
        text(&o)
    );
    assert_clean(&a);
}

#[test]
fn sigterm_checkpoints_like_ctrl_c_and_a_second_signal_forces_the_exit() {
    let root = tmp("signals");
    let args = with(train_args(100_000_000), "--batch-size", "8");
    let a = root.join("term");
    let child = spawn(&args, &["--out", s(&a)]);
    wait_for("training", || metrics_lines(&a) >= 3);
    signal(&child, "-TERM");
    let out = child.wait_with_output();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(checkpoint_and_history_intact(&a) >= 3);
    assert_clean(&a);
    // Slow steps (a ResNet on big batches): the first signal waits for the step to end, the
    // second one does not.
    let b = root.join("twice");
    let slow = with(
        with(train_args(1000), "--model", "resnet-small"),
        "--batch-size",
        "512",
    );
    let child = spawn(&slow, &["--out", s(&b), "--checkpoint-every", "1"]);
    wait_for("a first checkpoint", || checkpoint_path(&b).exists());
    let step = checkpoint_and_history_intact(&b);
    // Both signals from one shell, 20 ms apart: two `kill` processes spawned from here can
    // take longer than a step on a loaded machine (the first would end the run alone), and
    // with no gap the kernel may merge the two into one pending signal.
    let pid = child.id();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -INT {pid}; sleep 0.02; kill -INT {pid}"))
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(text(&out).contains("second interrupt"), "{}", text(&out));
    assert!(checkpoint_and_history_intact(&b) >= step);
    assert_clean(&b);
}

#[test]
fn flags_that_do_not_apply_are_refused_and_help_names_everything() {
    let root = tmp("flags");
    let d = digits();
    let base = |opt: &str| -> Vec<String> {
        [
            "train",
            "--model",
            "mlp-small",
            "--dataset",
            "digits",
            "--data",
            s(&d),
            "--optimizer",
            opt,
            "--steps",
            "2",
            "--quiet",
            "--backend",
            "cpu",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([s(&root.join("never")).to_string()])
        .collect()
    };
    for (opt, flag, value, scope) in [
        ("sgd", "--gamma", "0.5", "IRE optimizers"),
        ("sgd", "--kappa", "3", "IRE optimizers"),
        ("adamw", "--threshold-rule", "admire", "IRE optimizers"),
        (
            "sgd",
            "--gamma-schedule",
            "rank-increase:100",
            "IRE optimizers",
        ),
        ("adamw", "--rho", "0.1", "SAM"),
        ("adamw", "--momentum", "0.5", "built on SGD"),
        ("sgd", "--beta2", "0.9", "built on AdamW"),
        ("sgd-ire", "--tokenizer", "char", "text dataset"),
    ] {
        let o = run(&base(opt), &[flag, value]);
        assert_eq!(code(&o), Some(2), "{flag}: {}", text(&o));
        let msg = text(&o);
        assert!(
            msg.contains(&format!("{flag} does not apply to")) && msg.contains(scope),
            "{msg}"
        );
    }
    assert!(!root.join("never").exists());
    // A threshold rule by an unknown name is refused with the names it could be; a known one
    // trains and is kept in the checkpoint's configuration.
    let o = run(&base("admire"), &["--threshold-rule", "kth-largest"]);
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    for name in ["sharp-top-k", "flat-kth-smallest", "admire"] {
        assert!(text(&o).contains(name), "{}", text(&o));
    }
    let ran = root.join("flat-rule");
    let mut args = base("admire");
    *args.last_mut().unwrap() = s(&ran).to_string();
    let o = run(
        &args,
        &[
            "--threshold-rule",
            "flat-kth-smallest",
            "--gamma-schedule",
            "rank-increase:40",
        ],
    );
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let (_, cfg, _) = read_checkpoint(&checkpoint_path(&ran)).unwrap();
    assert_eq!(
        cfg.opt.threshold_rule,
        ire_models::train::ThresholdKind::FlatKthSmallest
    );
    assert_eq!(cfg.opt.gamma_schedule.to_string(), "rank-increase:40");
    let o = run(&base("admire"), &["--gamma-schedule", "rank-increase:5"]);
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(text(&o).contains("rank-increase:H"), "{}", text(&o));
    // The adaptive flag is a switch.
    let o = run(&base("sgd"), &["--adaptive"]);
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    let o = ire().args(["train", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout).into_owned();
    for word in [
        "text",
        "vit-mini",
        "vit-t",
        "vit-s",
        "lm-paper",
        "gpt-nano",
        "llama-tiny",
        "llama-60m",
        "llama-229m",
        "--overwrite",
        "--max-memory",
    ] {
        assert!(help.contains(word), "help lacks {word}");
    }
    let o = ire()
        .args(["train", "--dataset", "frames"])
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2));
    assert!(text(&o).contains("digits or text"), "{}", text(&o));
    let o = run(&with(base("sgd"), "--model", "gpt-5"), &[]);
    assert_eq!(code(&o), Some(2));
    assert!(
        text(&o).contains("unknown preset `gpt-5`") && text(&o).contains("vit-s, lm-paper"),
        "{}",
        text(&o)
    );
    // An unknown estimator is named as such.
    let cfg = root.join("est.toml");
    std::fs::write(&cfg, "[opt]\nestimator = \"hessian-diagonal\"\n").unwrap();
    let o = run(&base("sgd-ire"), &["--config", s(&cfg)]);
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    let msg = text(&o);
    assert!(
        msg.contains("estimator")
            && msg.contains("hessian-diagonal")
            && !msg.contains("out of order"),
        "{msg}"
    );
}

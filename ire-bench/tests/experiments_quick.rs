//! The experiments driver in quick mode: the toy item, the speed-up item on a small corpus the
//! test writes itself, and the sharpness item on the speed-up item's checkpoints; every output
//! must exist and parse.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A few thousand words of deterministic text over a small alphabet (so that the held-out part
/// uses no character the training part lacks).
fn corpus() -> String {
    const WORDS: [&str; 16] = [
        "the", "flat", "sharp", "minimum", "valley", "step", "drift", "along", "boost", "mask",
        "loss", "of", "and", "a", "to", "slowly",
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut s = String::new();
    for i in 0..6000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(WORDS[(x % 16) as usize]);
        s.push(if i % 12 == 11 { '\n' } else { ' ' });
    }
    s
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
}

#[test]
fn quick_items_write_outputs_that_parse() {
    let root: PathBuf =
        std::env::temp_dir().join(format!("ire-experiments-quick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let text = root.join("corpus.txt");
    std::fs::write(&text, corpus()).unwrap();
    let out = root.join("out");
    // A results document with a hand-written block that the driver must keep verbatim, and
    // generated text around it that it must replace.
    let doc = root.join("results.md");
    let notes = "<!-- Hand-written notes: the experiments binary keeps this block verbatim. -->\n\
                 \nA note | with *Markdown* and numbers 1.23 that no generator writes.\n\n\
                 <!-- End of the hand-written notes. -->";
    std::fs::write(
        &doc,
        format!("# stale\n\nold generated text\n\n## Notes\n\n{notes}\n"),
    )
    .unwrap();

    let status = Command::new(env!("CARGO_BIN_EXE_experiments"))
        .args(["toy", "speedup", "sharpness", "--quick", "--out"])
        .arg(&out)
        .arg("--doc")
        .arg(&doc)
        .arg("--lm-corpus")
        .arg(&text)
        .env("IRE_CACHE_DIR", root.join("cache"))
        .status()
        .expect("the driver starts");
    assert!(status.success(), "the driver failed: {status}");

    // Item 1: every step of every run, the paper's numbers, three plots.
    let gd = jsonl(&out.join("toy/gd.jsonl"));
    assert_eq!(gd.len(), 101, "start + 100 steps");
    let last = &gd[100];
    assert!((last["u"].as_f64().unwrap() - 0.9936741).abs() < 1e-7);
    for run in ["ire-k90", "ire-k900", "ire-k9000", "gd-lr2"] {
        assert!(!jsonl(&out.join(format!("toy/{run}.jsonl"))).is_empty());
    }
    for fig in ["toy-u", "toy-v", "toy-path"] {
        assert_png(&out.join(format!("toy/{fig}.png")));
        assert!(out.join(format!("toy/{fig}.svg")).exists());
    }

    // Item 2: a metrics line per step for every run, the levels, the figure.
    let runs = [
        "adamw",
        "admire-k2-g0.8",
        "admire-k2-g0.9",
        "admire-k2-g0.99",
        "admire-k5-g0.8",
        "admire-k5-g0.9",
        "admire-k5-g0.99",
    ];
    for run in runs {
        let lines = jsonl(&out.join(format!("speedup/{run}/metrics.jsonl")));
        let train: Vec<_> = lines.iter().filter(|l| l["kind"] == "train").collect();
        assert_eq!(train.len(), 30, "{run}");
        assert!(
            train
                .iter()
                .all(|l| l["loss"].as_f64().unwrap().is_finite())
        );
        assert!(lines.iter().any(|l| l["kind"] == "eval"), "{run}");
        assert!(out.join(format!("speedup/{run}/checkpoint.irec")).exists());
    }
    // Levels and level checkpoints for every seed of the item (0 and the quick extra seed 1).
    let levels = json(&out.join("speedup/levels.json"));
    let seeds = levels["seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), 2);
    for sd in seeds {
        assert_eq!(sd["levels"].as_array().unwrap().len(), 2);
        assert!(!sd["reached"].as_array().unwrap().is_empty());
        for r in sd["reached"].as_array().unwrap() {
            assert!(Path::new(r["path"].as_str().unwrap()).exists(), "{r}");
        }
    }
    assert_png(&out.join("speedup/speedup-loss.png"));

    // Item 5: one measurement per run and level reached, finite.
    let sharp = jsonl(&out.join("sharpness/sharpness.jsonl"));
    assert!(!sharp.is_empty());
    assert!(
        sharp.iter().any(|m| m["seed"] == 1),
        "the second seed is measured too"
    );
    for m in &sharp {
        assert!(m["trace"].as_f64().unwrap().is_finite());
        assert!(m["trace_std_error"].as_f64().unwrap().is_finite());
    }
    assert_png(&out.join("sharpness/sharpness-trace.png"));

    // Reports and the summary table.
    for item in ["toy", "speedup", "sharpness"] {
        let s = json(&out.join(format!("{item}/summary.json")));
        assert_eq!(s["item"], item);
        assert!(!s["rows"].as_array().unwrap().is_empty());
        assert!(out.join(format!("{item}/report.md")).exists());
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.starts_with("| # | claim |"));
    assert_eq!(summary.lines().count(), 2 + 3);
    // The document: generated around the hand-written block, which is kept verbatim; the one
    // under --out is the same text.
    let written = std::fs::read_to_string(&doc).unwrap();
    assert!(
        written.starts_with("# The paper's claims at CPU scale"),
        "{written}"
    );
    assert!(!written.contains("old generated text"));
    assert!(written.contains("## Summary\n\n| # | claim |"));
    assert!(written.contains(notes), "the notes block was not kept");
    assert_eq!(written.matches("Hand-written notes:").count(), 1);
    assert_eq!(
        std::fs::read_to_string(out.join("results.md")).unwrap(),
        written
    );
    let _ = std::fs::remove_dir_all(&root);
}

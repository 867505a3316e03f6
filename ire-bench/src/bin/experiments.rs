//! The paper's claims at CPU scale, one command per item:
//!
//! ```text
//! cargo run --release -p ire-bench --bin experiments -- <item|all> [--out runs/experiments] [--quick]
//!     [--figures DIR | --no-figures] [--doc FILE | --no-doc] [--lm-corpus FILE]
//!     [--llama-corpus FILE] [--cifar DIR]
//! ```
//!
//! Items: `toy` (Figure 1), `speedup` (the 5.4× claim), `llama` (the 2× claim),
//! `generalization` (CIFAR-10 accuracy), `sharpness` (needs `speedup` first), `cost`. Each
//! writes JSON lines, plots and a Markdown fragment under `--out/<item>/`; after each item
//! `--out/summary.md` and `--out/results.md` are rebuilt from every item found there. Full runs
//! copy their figures to `docs/figures/` (unless `--no-figures`) and write the same document to
//! `docs/results.md` (unless `--no-doc`), keeping the hand-written notes block found there;
//! `--quick` runs take seconds and copy nothing. Run from the repository root: the data paths default to
//! `../shared/data/...`, relative to it.

#[path = "../experiments/mod.rs"]
mod experiments;

use std::path::PathBuf;
use std::process::ExitCode;

use experiments::{ITEMS, Options, Res};

const USAGE: &str = "usage: experiments <toy|speedup|llama|generalization|sharpness|cost|all> \
[--out DIR] [--quick] [--figures DIR | --no-figures] [--doc FILE | --no-doc] [--lm-corpus FILE] \
[--llama-corpus FILE] [--cifar DIR]";

fn parse(args: &[String]) -> Res<(Vec<String>, Options)> {
    let mut items = Vec::new();
    let mut out = PathBuf::from("runs/experiments");
    let mut quick = false;
    let mut figures: Option<Option<PathBuf>> = None;
    let mut doc: Option<Option<PathBuf>> = None;
    let mut lm_corpus = PathBuf::from("../shared/data/text/tinyshakespeare.txt");
    let mut llama_corpus = PathBuf::from("../shared/data/text/moby-dick.txt");
    let mut cifar_dir = PathBuf::from("../shared/data/cifar10");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Res<PathBuf> {
            it.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}").into())
        };
        match a.as_str() {
            "--out" => out = value("--out")?,
            "--quick" => quick = true,
            "--figures" => figures = Some(Some(value("--figures")?)),
            "--no-figures" => figures = Some(None),
            "--doc" => doc = Some(Some(value("--doc")?)),
            "--no-doc" => doc = Some(None),
            "--lm-corpus" => lm_corpus = value("--lm-corpus")?,
            "--llama-corpus" => llama_corpus = value("--llama-corpus")?,
            "--cifar" => cifar_dir = value("--cifar")?,
            "-h" | "--help" => return Err(USAGE.into()),
            "all" => items.extend(ITEMS.iter().map(|s| s.to_string())),
            other if other.starts_with('-') => {
                return Err(format!("unknown option `{other}`\n{USAGE}").into());
            }
            other => {
                // Items by name or by their number in the document.
                let name = match other.parse::<usize>() {
                    Ok(n) if (1..=ITEMS.len()).contains(&n) => [
                        "toy",
                        "speedup",
                        "llama",
                        "generalization",
                        "sharpness",
                        "cost",
                    ][n - 1],
                    _ => other,
                };
                if !ITEMS.contains(&name) {
                    return Err(format!("unknown item `{other}`\n{USAGE}").into());
                }
                items.push(name.to_string());
            }
        }
    }
    if items.is_empty() {
        return Err(USAGE.into());
    }
    // `all` runs `speedup` before `sharpness`, which reads its checkpoints.
    let figures = figures.unwrap_or(if quick {
        None
    } else {
        Some(PathBuf::from("docs/figures"))
    });
    let doc = doc.unwrap_or(if quick {
        None
    } else {
        Some(PathBuf::from("docs/results.md"))
    });
    Ok((
        items,
        Options {
            out,
            quick,
            figures,
            doc,
            lm_corpus,
            llama_corpus,
            cifar_dir,
        },
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (items, opts) = match parse(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    for item in &items {
        eprintln!("==> {item}{}", if opts.quick { " (quick)" } else { "" });
        match experiments::run_item(item, &opts) {
            Ok(r) => {
                eprintln!("==> {item} done in {:.1} s", r.seconds);
                for row in &r.summary {
                    println!(
                        "{item}: {} | paper: {} | ours: {} | {}",
                        row.claim, row.paper, row.ours, row.verdict
                    );
                }
            }
            Err(e) => {
                eprintln!("{item} failed: {e}");
                return ExitCode::FAILURE;
            }
        }
        if let Err(e) = experiments::collect(&opts) {
            eprintln!("cannot write the summary: {e}");
            return ExitCode::FAILURE;
        }
    }
    match std::fs::read_to_string(opts.out.join("summary.md")) {
        Ok(t) => println!("\n{t}"),
        Err(e) => eprintln!("no summary: {e}"),
    }
    ExitCode::SUCCESS
}

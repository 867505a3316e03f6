//! Items 2, 3 and 5: the language-model claims.
//!
//! - `speedup` (item 2): the paper's 2-layer transformer (`lm-paper`), AdamW against AdmIRE over
//!   κ ∈ {2, 5} × γ ∈ {0.8, 0.9, 0.99}, same warm-up + cosine schedule, K 10, κ decayed with the
//!   learning rate; the speed-up in steps to AdamW's final (smoothed) training loss; the best
//!   configuration again on further seeds. It also writes checkpoints where each run first
//!   reaches its seed's two loss levels, for item 5.
//! - `llama` (item 3): `llama-tiny`, AdmIRE on a schedule of length T against AdamW on 2T, in
//!   steps to AdamW-2T's final validation loss.
//! - `sharpness` (item 5): Hutchinson's `Tr(∇²L)` at those checkpoints, AdmIRE over AdamW per
//!   seed, mean ± standard deviation over the seeds.

use std::path::{Path, PathBuf};

use ire_backend_cpu::CpuBackend;
use ire_models::artifacts::{self, MetricsWriter};
use ire_models::sharpness;
use ire_models::train::run::{self as trun, MetricsPosition};
use ire_models::train::{OptimizerKind, TrainConfig, Trainer};
use serde_json::json;

use super::{
    ItemReport, Options, Res, RunOutcome, RunSpec, SummaryRow, command, f, figure, first_reach,
    md_table, mean, read_json, series, std_dev, thin, trailing_mean, train_run, write_text,
};

/// Sizes of the language-model items.
pub struct Sizes {
    /// Context length in tokens (characters).
    pub context: usize,
    /// Batch size in windows.
    pub batch: usize,
    /// Steps of every item-2 run.
    pub steps: u64,
    /// Trailing window of the smoothed training loss.
    pub smooth: usize,
    /// Item-2 checks for a loss level (and AdamW parameter snapshots) every this many steps.
    pub snap_every: u64,
    /// Seeds beyond 0 on which AdamW and the best AdmIRE are run again (item 2).
    pub extra_seeds: Vec<u64>,
    /// T of item 3 (AdamW also runs 2T).
    pub llama_t: u64,
    /// Seeds of item 3.
    pub llama_seeds: Vec<u64>,
    /// Validation batches of an evaluation.
    pub eval_batches: usize,
    /// Item 5: training batches of the measured loss.
    pub sharp_batches: usize,
    /// Hutchinson probes.
    pub probes: usize,
    /// Lanczos steps.
    pub lanczos: usize,
}

/// The sizes of a full or quick run.
pub fn sizes(quick: bool) -> Sizes {
    if quick {
        Sizes {
            context: 16,
            batch: 4,
            steps: 30,
            smooth: 5,
            snap_every: 5,
            extra_seeds: vec![1],
            llama_t: 20,
            llama_seeds: vec![0],
            eval_batches: 2,
            sharp_batches: 1,
            probes: 3,
            lanczos: 3,
        }
    } else {
        Sizes {
            context: 64,
            batch: 8,
            steps: 1200,
            smooth: 50,
            snap_every: 10,
            extra_seeds: vec![1, 2],
            llama_t: 800,
            llama_seeds: vec![0, 1],
            eval_batches: 32,
            sharp_batches: 4,
            probes: 32,
            lanczos: 20,
        }
    }
}

const KAPPAS: [f64; 2] = [2.0, 5.0];
const GAMMAS: [f64; 3] = [0.8, 0.9, 0.99];

/// The official recipes of the paper's language-model runs (`configs/` at the repository
/// root, also `ire train --config` files): the runs here start from them.
const LM_PAPER_RECIPE: (&str, &str) = (
    "configs/lm-paper-official.toml",
    include_str!("../../../configs/lm-paper-official.toml"),
);
const LLAMA_RECIPE: (&str, &str) = (
    "configs/llama-official.toml",
    include_str!("../../../configs/llama-official.toml"),
);

/// A recipe file's configuration.
pub fn recipe((name, text): (&str, &str)) -> Res<TrainConfig> {
    let c: TrainConfig = toml::from_str(text).map_err(|e| format!("{name}: {e}"))?;
    c.validate().map_err(|e| format!("{name}: {e}"))?;
    Ok(c)
}

/// The 2-layer transformer's configuration: the official recipe
/// (`configs/lm-paper-official.toml`: AdamW lr 6e-4, betas (0.9, 0.95), wd 5e-4 on every
/// parameter, eps 1e-16, cosine to lr/20; the notebook's IRE, the flat-k-th-smallest threshold
/// on ĝ² with β 0, refreshes from the end of the warm-up on, κ decayed with the learning
/// rate) at CPU scale: character-level, the schedule (3 % warm-up), context and batch of
/// `s`, the given κ and γ.
pub fn paper_cfg(
    s: &Sizes,
    corpus: &Path,
    kind: OptimizerKind,
    kappa: f64,
    gamma: f64,
    seed: u64,
) -> Res<TrainConfig> {
    let mut c = recipe(LM_PAPER_RECIPE)?;
    c.data = corpus.to_path_buf();
    c.optimizer = kind;
    c.opt.kappa = kappa;
    c.opt.gamma = gamma;
    c.tokenizer = "char".into();
    c.context = s.context;
    c.batch_size = s.batch;
    c.steps = s.steps;
    c.warmup_steps = warmup(s.steps);
    c.opt.ire_warmup = warmup(s.steps);
    c.val_fraction = 0.1;
    c.eval_batches = s.eval_batches;
    c.seed = seed;
    Ok(c)
}

/// The linear warm-up of a schedule of `steps`: its first 3 %.
fn warmup(steps: u64) -> u64 {
    (steps * 3 / 100).max(1)
}

/// Micro-batches per step of the Llama runs: the official script accumulates gradients
/// (`grad_micro_steps`); here the step batch is cut in two.
const LLAMA_ACCUM: usize = 2;

/// The Llama configuration: the official recipe (`configs/llama-official.toml`: AdamW lr 6e-4,
/// betas (0.9, 0.95), wd 0.1 on every parameter, eps 1e-16, clip 1.0, cosine to lr/20; the
/// script's IRE, the flat-k-th-smallest threshold on |ĝ| without EMA, refreshes from the end of
/// the warm-up on, gradients and estimator gradients accumulated over micro-batches, κ decayed
/// with the learning rate; its bfloat16 autocast is not reproduced) at CPU scale:
/// `llama-tiny`, character-level, the schedule (3 % warm-up) of `steps`, context of `s`, a step
/// batch of `s.batch` in [`LLAMA_ACCUM`] micro-batches, κ 3 (the paper's range is 3–4).
fn llama_cfg(
    s: &Sizes,
    corpus: &Path,
    kind: OptimizerKind,
    steps: u64,
    seed: u64,
) -> Res<TrainConfig> {
    let mut c = recipe(LLAMA_RECIPE)?;
    c.model = "llama-tiny".into();
    c.data = corpus.to_path_buf();
    c.optimizer = kind;
    c.opt.kappa = 3.0;
    c.tokenizer = "char".into();
    c.context = s.context;
    c.batch_size = s.batch / LLAMA_ACCUM;
    c.grad_accum = LLAMA_ACCUM;
    c.steps = steps;
    c.warmup_steps = warmup(steps);
    c.opt.ire_warmup = warmup(steps);
    c.val_fraction = 0.1;
    // Evaluation batches are micro-batches: as many windows as before.
    c.eval_batches = s.eval_batches * LLAMA_ACCUM;
    c.seed = seed;
    Ok(c)
}

/// The file name of a corpus, for titles and text.
fn corpus_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn admire_name(kappa: f64, gamma: f64) -> String {
    format!("admire-k{kappa}-g{gamma}")
}

fn label(name: &str) -> String {
    match name.strip_prefix("admire-k") {
        Some(rest) => {
            let mut it = rest.splitn(2, "-g");
            let k = it.next().unwrap_or("?");
            let g = it.next().unwrap_or("?");
            format!("AdmIRE κ {k} γ {g}")
        }
        None => "AdamW".into(),
    }
}

/// A checkpoint of `cfg`'s model with the parameters `params` after `step` steps (optimizer
/// state empty: for measurements, not for resuming).
fn params_checkpoint(cfg: &TrainConfig, step: u64, params: &[f32], path: &Path) -> Res<()> {
    let mut t = Trainer::new(CpuBackend::new(), cfg.clone())?;
    let opt = t.optimizer_state()?;
    t.restore_parts(step, params, &[], &opt)?;
    artifacts::checkpoint::write_atomic(path, &trun::checkpoint(&t, &MetricsPosition::default())?)?;
    Ok(())
}

/// A loss level and where a run first reached it.
#[derive(Clone, Debug)]
struct Reached {
    seed: u64,
    run: String,
    level: String,
    step: u64,
    path: PathBuf,
}

/// The two loss levels of a seed: AdamW's smoothed training loss at half of its schedule and
/// at its end.
type Levels = [(&'static str, f64); 2];

/// AdamW on `seed` as run `name`, with parameter snapshots every `snap_every` steps: returns the
/// run, the seed's two loss levels, and AdamW's own checkpoints at them (parameters only, at the
/// first snapshot whose smoothed loss is at or below each level).
fn adamw_with_levels(
    s: &Sizes,
    corpus: &Path,
    dir: &Path,
    name: &str,
    seed: u64,
) -> Res<(RunOutcome, Levels, Vec<Reached>)> {
    let cfg = paper_cfg(s, corpus, OptimizerKind::Adamw, 0.0, 0.0, seed)?;
    let mut snaps: Vec<(u64, Vec<f32>)> = Vec::new();
    let run = train_run(
        &RunSpec {
            name: name.into(),
            cfg: cfg.clone(),
            dir: dir.join(name),
            eval_every: 0,
            checkpoint: seed == 0,
        },
        |t, _| {
            if t.step % s.snap_every == 0 {
                snaps.push((t.step, t.params_host()?));
            }
            Ok(())
        },
    )?;
    let sm = trailing_mean(&run.losses, s.smooth);
    let t_total = s.steps as usize;
    let levels = [("half", sm[t_total / 2 - 1]), ("final", sm[t_total - 1])];
    let mut reached = Vec::new();
    for (lname, lv) in levels {
        if let Some((step, p)) = snaps.iter().find(|(st, _)| sm[*st as usize - 1] <= lv) {
            let path = dir.join(name).join(format!("level-{lname}.irec"));
            params_checkpoint(&cfg, *step, p, &path)?;
            reached.push(Reached {
                seed,
                run: name.into(),
                level: lname.into(),
                step: *step,
                path,
            });
        }
    }
    Ok((run, levels, reached))
}

/// AdmIRE (κ, γ) on `seed` as run `name`, writing a checkpoint where its smoothed training loss
/// first reaches each of `levels` (checked every `snap_every` steps).
#[allow(clippy::too_many_arguments)]
fn admire_with_levels(
    s: &Sizes,
    corpus: &Path,
    dir: &Path,
    name: &str,
    (kappa, gamma): (f64, f64),
    seed: u64,
    levels: &Levels,
    checkpoint: bool,
) -> Res<(RunOutcome, Vec<Reached>)> {
    let w = s.smooth;
    let rdir = dir.join(name);
    let mut saved = [false; 2];
    let mut reached = Vec::new();
    let run = train_run(
        &RunSpec {
            name: name.into(),
            cfg: paper_cfg(s, corpus, OptimizerKind::Admire, kappa, gamma, seed)?,
            dir: rdir.clone(),
            eval_every: 0,
            checkpoint,
        },
        |t, losses| {
            if t.step % s.snap_every != 0 || losses.len() < w {
                return Ok(());
            }
            let smoothed = mean(&losses[losses.len() - w..]);
            for (i, (lname, lv)) in levels.iter().enumerate() {
                if !saved[i] && smoothed <= *lv {
                    saved[i] = true;
                    let path = rdir.join(format!("level-{lname}.irec"));
                    artifacts::checkpoint::write_atomic(
                        &path,
                        &trun::checkpoint(t, &MetricsPosition::default())?,
                    )?;
                    reached.push(Reached {
                        seed,
                        run: name.into(),
                        level: (*lname).into(),
                        step: t.step,
                        path,
                    });
                }
            }
            Ok(())
        },
    )?;
    Ok((run, reached))
}

fn reached_json(r: &[Reached]) -> Vec<serde_json::Value> {
    r.iter()
        .map(|r| json!({"seed": r.seed, "run": r.run, "level": r.level, "step": r.step, "path": r.path}))
        .collect()
}

fn levels_json(levels: &Levels) -> Vec<serde_json::Value> {
    levels
        .iter()
        .map(|(n, l)| json!({"name": n, "loss": l}))
        .collect()
}

/// Item 2.
pub fn speedup(opts: &Options) -> Res<ItemReport> {
    let s = sizes(opts.quick);
    let dir = opts.item_dir("speedup")?;
    let corpus = &opts.lm_corpus;
    let w = s.smooth;
    // 1. AdamW, seed 0, with parameter snapshots for the loss levels.
    let (adamw, levels, mut reached) = adamw_with_levels(&s, corpus, &dir, "adamw", 0)?;
    let sm_adamw = trailing_mean(&adamw.losses, w);
    let t_total = s.steps as usize;
    let l_final = levels[1].1;
    // 2. The AdmIRE grid, seed 0, with checkpoints where each first reaches a level.
    let mut grid: Vec<(f64, f64, RunOutcome)> = Vec::new();
    for kappa in KAPPAS {
        for gamma in GAMMAS {
            let name = admire_name(kappa, gamma);
            let (o, r) =
                admire_with_levels(&s, corpus, &dir, &name, (kappa, gamma), 0, &levels, true)?;
            reached.extend(r);
            grid.push((kappa, gamma, o));
        }
    }
    // 3. Steps to AdamW's final smoothed loss.
    let adamw_reach = first_reach(&sm_adamw, l_final).unwrap_or(t_total);
    let mut rows = Vec::new();
    let mut best: Option<(usize, usize)> = None; // (reach, index)
    for (i, (kappa, gamma, o)) in grid.iter().enumerate() {
        let sm = trailing_mean(&o.losses, w);
        let reach = first_reach(&sm, l_final);
        if let Some(r) = reach
            && best.is_none_or(|(b, _)| r < b)
        {
            best = Some((r, i));
        }
        rows.push(vec![
            format!("AdmIRE κ {kappa} γ {gamma}"),
            f(sm[t_total - 1], 4),
            reach.map_or("not reached".into(), |r| r.to_string()),
            reach.map_or("—".into(), |r| {
                format!("{:.2}×", adamw_reach as f64 / r as f64)
            }),
            reach.map_or("—".into(), |r| {
                format!("{:.2}×", t_total as f64 / r as f64)
            }),
            f(o.seconds / t_total as f64 * 1e3, 1),
        ]);
    }
    rows.insert(
        0,
        vec![
            "AdamW".into(),
            f(l_final, 4),
            adamw_reach.to_string(),
            "1×".into(),
            format!("{:.2}×", t_total as f64 / adamw_reach as f64),
            f(adamw.seconds / t_total as f64 * 1e3, 1),
        ],
    );
    // 4. The best configuration (on seed 0's training loss) again on fresh seeds, each with
    //    its own AdamW run, loss levels and level checkpoints (item 5 measures them all).
    let mut seed_rows = Vec::new();
    let mut seed_speedups = Vec::new();
    let best_name = best.map(|(_, i)| admire_name(grid[i].0, grid[i].1));
    let mut seeds_json = vec![json!({"seed": 0, "adamw": "adamw", "admire": best_name,
        "levels": levels_json(&levels), "reached": reached_json(&reached)})];
    let mut finals = vec![(
        sm_adamw.clone(),
        best.map(|(_, i)| trailing_mean(&grid[i].2.losses, w)),
    )];
    if let Some((r0, bi)) = best {
        let (kappa, gamma, _) = &grid[bi];
        seed_speedups.push(adamw_reach as f64 / r0 as f64);
        seed_rows.push(vec![
            "0".into(),
            f(l_final, 4),
            adamw_reach.to_string(),
            r0.to_string(),
            format!("{:.2}×", adamw_reach as f64 / r0 as f64),
        ]);
        for &seed in &s.extra_seeds {
            let an = format!("adamw-seed{seed}");
            let (a, lv, mut rs) = adamw_with_levels(&s, corpus, &dir, &an, seed)?;
            let bn = format!("{}-seed{seed}", admire_name(*kappa, *gamma));
            let (b, rb) =
                admire_with_levels(&s, corpus, &dir, &bn, (*kappa, *gamma), seed, &lv, false)?;
            rs.extend(rb);
            seeds_json.push(json!({"seed": seed, "adamw": an, "admire": bn,
                "levels": levels_json(&lv), "reached": reached_json(&rs)}));
            let sa = trailing_mean(&a.losses, w);
            let lf = lv[1].1;
            let ra = first_reach(&sa, lf).unwrap_or(t_total);
            let sb = trailing_mean(&b.losses, w);
            let rb = first_reach(&sb, lf);
            if let Some(rb) = rb {
                seed_speedups.push(ra as f64 / rb as f64);
            }
            seed_rows.push(vec![
                seed.to_string(),
                f(lf, 4),
                ra.to_string(),
                rb.map_or("not reached".into(), |r| r.to_string()),
                rb.map_or("—".into(), |r| format!("{:.2}×", ra as f64 / r as f64)),
            ]);
            finals.push((sa, Some(sb)));
        }
    }
    // 5. Levels and checkpoints for item 5.
    write_text(
        &dir.join("levels.json"),
        &serde_json::to_string_pretty(&json!({
            "smooth_window": w,
            "best": best_name,
            "seeds": seeds_json,
        }))?,
    )?;
    // 6. The figure: smoothed training losses (the first 10 % of the steps left out).
    let skip = t_total / 10;
    let curve = |o: &RunOutcome| {
        let sm = trailing_mean(&o.losses, w);
        thin(
            &sm.iter()
                .enumerate()
                .skip(skip.max(w - 1))
                .map(|(i, &v)| ((i + 1) as f64, v))
                .collect::<Vec<_>>(),
            300,
        )
    };
    let mut ser = vec![series("AdamW", curve(&adamw))];
    for (_, _, o) in &grid {
        ser.push(series(&label(&o.name), curve(o)));
    }
    ser.push(series(
        "AdamW's final loss",
        vec![(skip as f64, l_final), (t_total as f64, l_final)],
    ));
    let fig = figure(
        opts,
        &dir,
        "speedup-loss",
        &format!(
            "lm-paper, char-level {}, context {}: training loss (trailing mean of {w} steps)",
            corpus_name(corpus),
            s.context
        ),
        "step",
        "training loss",
        &ser,
        false,
    )?;
    let table = md_table(
        &[
            "run (seed 0)",
            "final smoothed training loss",
            "steps to AdamW's final loss",
            "speed-up (AdamW's steps to it / these)",
            "T / these",
            "ms/step",
        ],
        &rows,
    );
    let seed_table = md_table(
        &[
            "seed",
            "AdamW final smoothed loss",
            "AdamW steps to it",
            "best AdmIRE steps to it",
            "speed-up",
        ],
        &seed_rows,
    );
    let best_label = best_name
        .as_deref()
        .map(label)
        .unwrap_or_else(|| "none".into());
    let seeds_txt = std::iter::once(0)
        .chain(s.extra_seeds.iter().copied())
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(" / ");
    let speed_txt = if seed_speedups.is_empty() {
        "no AdmIRE configuration reached AdamW's final loss".to_string()
    } else {
        format!(
            "{} on seeds {seeds_txt} for the best configuration ({best_label}, picked on seed 0)",
            seed_speedups
                .iter()
                .map(|x| format!("{x:.2}×"))
                .collect::<Vec<_>>()
                .join(" / "),
        )
    };
    // Seed 0's grid: how many configurations reach AdamW's final loss, and how much sooner.
    let grid_speedups: Vec<(f64, f64)> = grid
        .iter()
        .filter_map(|(k, _, o)| {
            first_reach(&trailing_mean(&o.losses, w), l_final)
                .map(|r| (*k, adamw_reach as f64 / r as f64))
        })
        .collect();
    let lo = grid_speedups.iter().map(|x| x.1).fold(f64::NAN, f64::min);
    let hi = grid_speedups.iter().map(|x| x.1).fold(f64::NAN, f64::max);
    let by_kappa = |k: f64| {
        mean(
            &grid_speedups
                .iter()
                .filter(|x| x.0 == k)
                .map(|x| x.1)
                .collect::<Vec<_>>(),
        )
    };
    let grid_txt = if grid_speedups.is_empty() {
        format!("none of the {} configurations reaches it", grid.len())
    } else {
        format!(
            "{} of the {} configurations reach it, {lo:.2}× to {hi:.2}× sooner (mean over γ: \
             κ 2 {:.2}×, κ 5 {:.2}×)",
            grid_speedups.len(),
            grid.len(),
            by_kappa(2.0),
            by_kappa(5.0)
        )
    };
    // Smoothed losses at a third, two thirds and the end of the schedule, per seed.
    let marks = [t_total / 3, 2 * t_total / 3, t_total];
    let at = |sm: &[f64]| {
        marks
            .iter()
            .map(|&m| f(sm[m - 1], 2))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let gaps: Vec<f64> = finals
        .iter()
        .filter_map(|(a, b)| b.as_ref().map(|b| a[t_total - 1] - b[t_total - 1]))
        .collect();
    let loss_txt = match &finals[0] {
        (a, Some(b)) => format!(
            "Smoothed training losses at steps {} (seed 0): AdamW {}, {best_label} {}; at the \
             last step the best configuration is {} below AdamW (per seed: {}).",
            marks
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(" / "),
            at(a),
            at(b),
            f(mean(&gaps), 3),
            gaps.iter().map(|g| f(*g, 3)).collect::<Vec<_>>().join(", ")
        ),
        _ => String::new(),
    };
    let min_speed = seed_speedups.iter().cloned().fold(f64::NAN, f64::min);
    let verdict = match min_speed {
        x if x >= 5.0 => "yes".to_string(),
        x if x > 1.2 => format!(
            "partly: faster on every seed ({} of {}), by less than 5.4×",
            seed_speedups.len(),
            1 + s.extra_seeds.len()
        ),
        _ => "no".to_string(),
    };
    let reading = format!(
        "**Reading.** On seed 0, {grid_txt}. Only the best configuration ran on the other \
         seeds: {speed_txt}. {loss_txt} The paper's 5.4× is {}at this scale ({steps} steps \
         instead of 100k, {ctx} characters of context instead of 1000 words).",
        if min_speed >= 5.0 { "" } else { "not reached " },
        steps = s.steps,
        ctx = s.context,
    );
    let markdown = format!(
        "## 2. The 5.4× speed-up of AdmIRE on the 2-layer transformer\n\n\
**Claim.** On WikiText-2, the paper's 2-layer decoder (d 128, 8 heads, FFN 512, ReLU, post-LN) \
trained by AdmIRE (κ 5) reaches AdamW's final training loss (≈ 3.22 after 100k steps) at \
≈ 18.5k steps: 5.4× fewer steps, with the same learning-rate schedule (IRE-SPEC §4; the paper's \
transformer figure).\n\n\
**Setting here.** `lm-paper` (the same network) with a context of {ctx} instead of 1000, batch \
{batch} instead of 32, character-level on `{file}` (WikiText-2 is not available \
here), {steps} steps for every run. The paper's optimizer settings: AdamW lr 6e-4, betas (0.9, \
0.95), wd 5e-4 on every parameter, eps 1e-16, linear warm-up over the first 3 % of the steps, \
cosine to lr/20 at the last step; AdmIRE over κ ∈ {{2, 5}} × γ ∈ {{0.8, 0.9, 0.99}}, K 10, κ \
decayed with the learning rate, with the IRE of the official notebook (`NLP/small-scale`): the \
flat-k-th-smallest threshold (m = ⌊γN⌋ smallest estimates flat) on ĝ² without EMA, the mask \
refreshed from the end of the warm-up on. Every run of a seed sees the same batches.\n\n\
**Measure.** The training loss of a step is the loss of its batch before the step; the smoothed \
loss at step s is the mean of the losses of steps s−{wm1}…s (a trailing window of {w} steps). \
AdamW's final loss is its smoothed loss at step {steps}; \"steps to it\" is the first step whose \
smoothed loss is at or below it, for AdamW itself too (the speed-up is AdamW's steps over \
AdmIRE's; `T / these` divides the full schedule instead, the paper's \
100k/18.5k form). The best configuration was picked on seed 0's training loss and run again, \
with AdamW, on seed{plural} {extra}; the other five configurations ran on seed 0 only.\n\n\
**Command.** `{cmd}` (JSON lines per run: `runs/experiments/speedup/<run>/metrics.jsonl`).\n\n\
{table}\n{seed_table}\n{reading}\n\n\
![smoothed training loss](figures/{fig})\n",
        ctx = s.context,
        file = corpus_name(corpus),
        batch = s.batch,
        steps = s.steps,
        wm1 = w - 1,
        plural = if s.extra_seeds.len() > 1 { "s" } else { "" },
        extra = s
            .extra_seeds
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        cmd = command("speedup", false),
    );
    Ok(ItemReport {
        item: "speedup",
        markdown,
        summary: vec![SummaryRow {
            claim:
                "AdmIRE reaches AdamW's final training loss in fewer steps (2-layer transformer)"
                    .into(),
            paper: "5.4× (WikiText-2, 100k steps)".into(),
            ours: format!(
                "{speed_txt}; on seed 0 {grid_txt}; `lm-paper`, char-level {}, {} steps",
                corpus_name(corpus),
                s.steps
            ),
            verdict,
        }],
        seconds: 0.0,
    })
}

/// Item 3.
pub fn llama(opts: &Options) -> Res<ItemReport> {
    let s = sizes(opts.quick);
    let dir = opts.item_dir("llama")?;
    let corpus = &opts.llama_corpus;
    let t = s.llama_t;
    let eval_every = (t / 20).max(1);
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    let mut figs = Vec::new();
    let mut summary_losses = Vec::new();
    let mut adamw_t = Vec::new();
    for &seed in &s.llama_seeds {
        let mk = |name: &str, kind, steps| -> Res<RunSpec> {
            Ok(RunSpec {
                name: format!("{name}-seed{seed}"),
                cfg: llama_cfg(&s, corpus, kind, steps, seed)?,
                dir: dir.join(format!("{name}-seed{seed}")),
                eval_every,
                checkpoint: true,
            })
        };
        let a1 = train_run(&mk("adamw-T", OptimizerKind::Adamw, t)?, |_, _| Ok(()))?;
        let a2 = train_run(&mk("adamw-2T", OptimizerKind::Adamw, 2 * t)?, |_, _| Ok(()))?;
        let b1 = train_run(&mk("admire-T", OptimizerKind::Admire, t)?, |_, _| Ok(()))?;
        let target = a2.final_eval().map_or(f64::NAN, |e| e.loss);
        let at_t = a1.final_eval().map_or(f64::NAN, |e| e.loss);
        let ours = b1.final_eval().map_or(f64::NAN, |e| e.loss);
        let reach = b1
            .evals
            .iter()
            .find(|(_, e)| e.loss <= target)
            .map(|(st, _)| *st);
        if let Some(r) = reach {
            ratios.push(2.0 * t as f64 / r as f64);
        }
        // The other way round: where AdamW-2T reaches AdmIRE-T's final loss.
        let back = a2
            .evals
            .iter()
            .find(|(_, e)| e.loss <= ours)
            .map(|(st, _)| *st);
        summary_losses.push((ours, target, back));
        adamw_t.push(at_t);
        rows.push(vec![
            seed.to_string(),
            f(at_t, 4),
            f(target, 4),
            f(ours, 4),
            reach.map_or("not reached".into(), |r| r.to_string()),
            reach.map_or("—".into(), |r| {
                format!("{:.2}×", 2.0 * t as f64 / r as f64)
            }),
            back.map_or("not reached".into(), |b| {
                format!("{b} ({:.2} T)", b as f64 / t as f64)
            }),
        ]);
        if figs.is_empty() {
            let ev = |o: &RunOutcome| -> Vec<(f64, f64)> {
                o.evals.iter().map(|(st, e)| (*st as f64, e.loss)).collect()
            };
            let ser = vec![
                series(&format!("AdamW, T = {t}"), ev(&a1)),
                series(&format!("AdamW, 2T = {}", 2 * t), ev(&a2)),
                series(&format!("AdmIRE κ 3 γ 0.6, T = {t}"), ev(&b1)),
                series(
                    "AdamW-2T's final loss",
                    vec![(eval_every as f64, target), (2.0 * t as f64, target)],
                ),
            ];
            figs.push(figure(
                opts,
                &dir,
                "llama-val",
                &format!(
                    "llama-tiny, char-level {}, context {}: validation loss (seed {seed})",
                    corpus_name(corpus),
                    s.context
                ),
                "step",
                "validation loss",
                &ser,
                false,
            )?);
        }
    }
    let table = md_table(
        &[
            "seed",
            "AdamW-T final val. loss",
            "AdamW-2T final val. loss",
            "AdmIRE-T final val. loss",
            "AdmIRE-T steps to AdamW-2T's loss",
            "2T / those steps",
            "AdamW-2T steps to AdmIRE-T's final loss",
        ],
        &rows,
    );
    let (ours, verdict) = if ratios.len() == s.llama_seeds.len() && !ratios.is_empty() {
        let m = mean(&ratios);
        (
            format!(
                "{} (steps to AdamW-2T's final validation loss)",
                ratios
                    .iter()
                    .map(|x| format!("{x:.2}×"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            if m >= 2.0 {
                "yes".to_string()
            } else {
                "partly: reached, by less than 2×".to_string()
            },
        )
    } else {
        let join = |v: Vec<String>| v.join(" / ");
        let worth: Vec<Option<f64>> = summary_losses
            .iter()
            .map(|x| x.2.map(|b| b as f64 / t as f64))
            .collect();
        let worth_mean = mean(&worth.iter().flatten().copied().collect::<Vec<_>>());
        (
            format!(
                "not reached: AdmIRE-T {} against AdamW-2T {} (AdamW-T {}); AdamW-2T needs {} to \
                 reach AdmIRE-T's loss",
                join(summary_losses.iter().map(|x| f(x.0, 3)).collect()),
                join(summary_losses.iter().map(|x| f(x.1, 3)).collect()),
                join(adamw_t.iter().map(|x| f(*x, 3)).collect()),
                join(
                    worth
                        .iter()
                        .map(|w| w.map_or("more than 2 T".into(), |w| format!("{w:.2} T")))
                        .collect()
                ),
            ),
            if worth_mean.is_finite() {
                format!("no: ≈ {worth_mean:.1}× instead of 2×")
            } else {
                "no".to_string()
            },
        )
    };
    // AdmIRE-T against AdamW-T and AdamW-2T, and what its T steps are worth, over seeds.
    let (ours_l, a2, a1): (Vec<f64>, Vec<f64>, &[f64]) = (
        summary_losses.iter().map(|x| x.0).collect(),
        summary_losses.iter().map(|x| x.1).collect(),
        &adamw_t,
    );
    let worth: Vec<f64> = summary_losses
        .iter()
        .filter_map(|x| x.2.map(|b| b as f64 / t as f64))
        .collect();
    let reading = format!(
        "**Reading.** Over {n} seed{pl}: AdmIRE-T ends {below:.3} below AdamW-T and {vs2} \
         AdamW-2T (mean differences of the final validation losses). {worth_txt}",
        n = s.llama_seeds.len(),
        pl = if s.llama_seeds.len() == 1 { "" } else { "s" },
        below = mean(a1) - mean(&ours_l),
        vs2 = {
            let d = mean(&ours_l) - mean(&a2);
            if d > 0.0 {
                format!("{d:.3} above")
            } else {
                format!("{:.3} below", -d)
            }
        },
        worth_txt = if worth.len() == summary_losses.len() && !worth.is_empty() {
            format!(
                "AdamW on the 2T schedule reaches AdmIRE-T's final loss after {} T: AdmIRE's T \
                 steps are worth about {:.2}× as many AdamW steps, where the paper reports \
                 2.1× to 2.3×.",
                worth
                    .iter()
                    .map(|x| f(*x, 2))
                    .collect::<Vec<_>>()
                    .join(" / "),
                mean(&worth)
            )
        } else {
            "AdamW on the 2T schedule does not reach AdmIRE-T's final loss on every seed."
                .to_string()
        },
    );
    let markdown = format!(
        "## 3. The 2× claim on Llama\n\n\
**Claim.** AdmIRE on a schedule of length T reaches the validation loss of AdamW trained for \
2T: 2.1× / 2.3× / 2.1× for Llama 60M / 119M / 229M on WikiText-103 / MiniPile / OpenWebText \
(IRE-SPEC §4; the paper's Llama figure and table).\n\n\
**Setting here.** `llama-tiny` (d 64, 4 heads, 2 layers, SwiGLU 172, RMSNorm, RoPE), \
character-level on `{file}` (the last 10 % held out), context {ctx}, batch \
{batch} ({accum} micro-batches of {micro}), T = {t} steps. The paper's Llama optimizer \
settings: AdamW lr 6e-4, betas (0.9, 0.95), wd 0.1 on every parameter, eps 1e-16, gradient \
clipping at 1.0, cosine to lr/20; a linear warm-up over the first 3 % of each schedule; AdmIRE \
κ 3, γ 0.6, K 10, κ decayed with the learning rate, with the IRE of the official script \
(`train_admire_web_Llama.py`, `ire_new.py`): the flat-k-th-smallest threshold on |ĝ| without \
EMA, the mask refreshed from the end of the warm-up on, gradients and estimator gradients \
accumulated over micro-batches. The official bfloat16 autocast is not reproduced: the runs \
are in f32. AdamW-T, AdamW-2T and \
AdmIRE-T each follow their own schedule (warm-up + cosine over their own length). Validation \
loss on the same {eb} windows of the held-out part every {eval_every} steps.\n\n\
**Measure.** The ratio is 2T over the first evaluation step at which AdmIRE-T's validation \
loss is at or below AdamW-2T's final validation loss (resolution {eval_every} steps). The last \
column is the converse: the first evaluation step at which AdamW-2T's validation loss is at or \
below AdmIRE-T's final one, in units of T (how many AdamW steps, on the 2T schedule, AdmIRE's T \
steps are worth).\n\n\
**Command.** `{cmd}`.\n\n{table}\n{reading}\n\n![validation loss](figures/{fig})\n",
        ctx = s.context,
        file = corpus_name(corpus),
        batch = s.batch,
        accum = LLAMA_ACCUM,
        micro = s.batch / LLAMA_ACCUM,
        eb = s.eval_batches * s.batch,
        cmd = command("llama", false),
        fig = figs.first().cloned().unwrap_or_default(),
    );
    Ok(ItemReport {
        item: "llama",
        markdown,
        summary: vec![SummaryRow {
            claim: "AdmIRE on T steps matches AdamW on 2T (Llama)".into(),
            paper: "2.1× / 2.3× / 2.1× (60M / 119M / 229M)".into(),
            ours: format!(
                "{ours}; `llama-tiny`, T = {t}, {}, {} seed{}",
                corpus_name(corpus),
                s.llama_seeds.len(),
                if s.llama_seeds.len() == 1 { "" } else { "s" }
            ),
            verdict,
        }],
        seconds: 0.0,
    })
}

/// One sharpness measurement of item 5.
struct Measured {
    seed: u64,
    level: String,
    adamw: bool,
    trace: f64,
}

/// Item 5: on every seed of item 2 and at each of its two loss levels, `Tr(∇²L)` of AdamW and
/// of the best AdmIRE where each first reaches the level; compared over seeds (the run-to-run
/// spread), not by the Hutchinson error of one run.
pub fn sharpness(opts: &Options) -> Res<ItemReport> {
    let s = sizes(opts.quick);
    let dir = opts.item_dir("sharpness")?;
    let levels_path = opts.out.join("speedup").join("levels.json");
    if !levels_path.exists() {
        return Err(format!(
            "{} is missing: run the `speedup` item first (it writes the checkpoints)",
            levels_path.display()
        )
        .into());
    }
    let lv = read_json(&levels_path)?;
    let mut w = MetricsWriter::create(&dir.join("sharpness.jsonl"), false)?;
    let mut rows = Vec::new();
    let mut by_run: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut measured: Vec<Measured> = Vec::new();
    let seeds = lv["seeds"].as_array().cloned().unwrap_or_default();
    if seeds.is_empty() {
        return Err(format!(
            "{}: no seeds (written by an older `speedup`: run it again)",
            levels_path.display()
        )
        .into());
    }
    for sd in &seeds {
        let seed = sd["seed"].as_u64().unwrap_or(0);
        let adamw = sd["adamw"].as_str().unwrap_or("adamw").to_string();
        let Some(admire) = sd["admire"].as_str().map(str::to_string) else {
            continue;
        };
        for level in sd["levels"].as_array().into_iter().flatten() {
            let lname = level["name"].as_str().unwrap_or("");
            let lloss = level["loss"].as_f64().unwrap_or(f64::NAN);
            for r in sd["reached"].as_array().into_iter().flatten() {
                let run = r["run"].as_str().unwrap_or("");
                if r["level"] != lname || !(run == adamw || run == admire) {
                    continue;
                }
                let path = PathBuf::from(r["path"].as_str().unwrap_or(""));
                let step = r["step"].as_u64().unwrap_or(0);
                let mut t = trun::trainer_from_checkpoint(CpuBackend::new(), &path, None)?;
                let rep = sharpness::measure(&mut t, s.sharp_batches, s.probes, s.lanczos, 0)?;
                w.write(
                    &json!({"seed": seed, "run": run, "level": lname, "level_loss": lloss,
                    "step": step, "checkpoint": path, "loss": rep.loss,
                    "trace": rep.trace.mean, "trace_std_error": rep.trace.std_error,
                    "probes": rep.trace.probes, "lambda_max": rep.lambda_max, "top": rep.top,
                    "params": rep.params}),
                )?;
                let is_adamw = run == adamw;
                let who = if is_adamw {
                    "AdamW".to_string()
                } else {
                    label(admire.split("-seed").next().unwrap_or(&admire))
                };
                rows.push(vec![
                    seed.to_string(),
                    format!("{lname} ({})", f(lloss, 4)),
                    who.clone(),
                    step.to_string(),
                    f(rep.loss, 4),
                    format!("{} ± {}", f(rep.trace.mean, 1), f(rep.trace.std_error, 1)),
                    f(rep.lambda_max, 2),
                ]);
                let key = format!("{who}, seed {seed}");
                match by_run.iter_mut().find(|(n, _)| *n == key) {
                    Some((_, pts)) => pts.push((step as f64, rep.trace.mean)),
                    None => by_run.push((key, vec![(step as f64, rep.trace.mean)])),
                }
                measured.push(Measured {
                    seed,
                    level: lname.to_string(),
                    adamw: is_adamw,
                    trace: rep.trace.mean,
                });
            }
        }
    }
    let ser: Vec<_> = by_run.iter().map(|(n, p)| series(n, p.clone())).collect();
    let fig = figure(
        opts,
        &dir,
        "sharpness-trace",
        "Tr(∇²L) where each run first reaches its seed's loss levels",
        "step at which the level is reached",
        "Tr(Hessian) (Hutchinson)",
        &ser,
        false,
    )?;
    let table = md_table(
        &[
            "seed",
            "loss level (that seed's AdamW smoothed loss)",
            "run",
            "step",
            "measured loss",
            "Tr(∇²L) ± s.e. (one run)",
            "λ_max",
        ],
        &rows,
    );
    // Over seeds: each seed gives one AdamW and one AdmIRE trace per level; the spread of the
    // seeds is the error that matters for the claim.
    let mut level_rows = Vec::new();
    let mut ours = Vec::new();
    let mut all_lower = true;
    let mut any_lower = false;
    let mut n_seeds = 0;
    for lname in ["half", "final"] {
        let mut pairs: Vec<(f64, f64)> = Vec::new();
        for sd in &seeds {
            let seed = sd["seed"].as_u64().unwrap_or(0);
            let find = |a: bool| {
                measured
                    .iter()
                    .find(|m| m.seed == seed && m.level == lname && m.adamw == a)
                    .map(|m| m.trace)
            };
            if let (Some(a), Some(b)) = (find(true), find(false)) {
                pairs.push((a, b));
            }
        }
        if pairs.is_empty() {
            all_lower = false;
            continue;
        }
        n_seeds = n_seeds.max(pairs.len());
        let a: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        let b: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        let ratio: Vec<f64> = pairs.iter().map(|p| p.1 / p.0).collect();
        let lower = pairs.iter().filter(|p| p.1 < p.0).count();
        all_lower &= lower == pairs.len() && pairs.len() == seeds.len();
        any_lower |= lower > 0;
        level_rows.push(vec![
            lname.to_string(),
            pairs.len().to_string(),
            format!("{} ± {}", f(mean(&a), 1), f(std_dev(&a), 1)),
            format!("{} ± {}", f(mean(&b), 1), f(std_dev(&b), 1)),
            ratio
                .iter()
                .map(|r| f(*r, 2))
                .collect::<Vec<_>>()
                .join(", "),
            format!("**{} ± {}**", f(mean(&ratio), 2), f(std_dev(&ratio), 2)),
            format!("{lower} of {}", pairs.len()),
        ]);
        ours.push(format!(
            "{lname}: {:.2} ± {:.2} ({lower} of {} seeds lower)",
            mean(&ratio),
            std_dev(&ratio),
            pairs.len()
        ));
    }
    let level_table = md_table(
        &[
            "level",
            "seeds",
            "AdamW Tr(∇²L), mean ± std over seeds",
            "AdmIRE Tr(∇²L), mean ± std over seeds",
            "AdmIRE / AdamW per seed",
            "ratio, mean ± std over seeds",
            "AdmIRE lower on",
        ],
        &level_rows,
    );
    let markdown = format!(
        "## 5. Sharpness at equal loss\n\n\
**Claim.** At equal training loss, AdmIRE's `Tr(∇²L)` is markedly lower than AdamW's (the \
paper's sharpness figure for the transformer; IRE-SPEC §4).\n\n\
**Setting here.** The checkpoints of item 2, on each of its seeds ({nseeds}): the seed's two \
loss levels are its AdamW run's smoothed training loss at half of its schedule (`half`) and at \
its end (`final`); for that AdamW run and the best AdmIRE configuration of item 2 on the same \
seed, the checkpoint is taken at the first multiple of 10 steps where the run's smoothed \
training loss (the same trailing window) is at or below the level. `Tr(∇²L)` by Hutchinson \
with {probes} Rademacher probes (Hessian-vector products by central differences of \
gradients), and `λ_max` by {lanczos} Lanczos steps, on the mean loss of the first {nb} training \
batches of {batch} windows (fixed order; the \"measured loss\" column is that loss). Each \
measurement equals `ire sharpness <checkpoint> --batches {nb} --probes {probes} \
--lanczos-steps {lanczos}` on the checkpoint named in \
`runs/experiments/sharpness/sharpness.jsonl` (AdamW's level checkpoints hold its parameters \
only, without optimizer state).\n\n\
**Measure.** Per seed and level, the ratio of AdmIRE's trace to AdamW's; its mean ± standard \
deviation over the seeds is the result, so the error is the run-to-run spread (different \
initializations, batches and sampled labels), not the Hutchinson standard error of one run \
(which the per-run table still lists).\n\n\
**Command.** `{cmd}` (after `speedup`).\n\n{level_table}\n{table}\n![trace](figures/{fig})\n",
        nseeds = seeds
            .iter()
            .map(|s| s["seed"].to_string())
            .collect::<Vec<_>>()
            .join(", "),
        probes = s.probes,
        lanczos = s.lanczos,
        nb = s.sharp_batches,
        batch = s.batch,
        cmd = command("sharpness", false),
    );
    Ok(ItemReport {
        item: "sharpness",
        markdown,
        summary: vec![SummaryRow {
            claim: "At equal training loss AdmIRE's Tr(∇²L) is lower than AdamW's".into(),
            paper: "markedly lower (transformer)".into(),
            ours: if ours.is_empty() {
                "no common level reached".into()
            } else {
                format!(
                    "AdmIRE / AdamW trace ratio, mean ± std over {n_seeds} seeds: {}",
                    ours.join("; ")
                )
            },
            verdict: if all_lower {
                "yes, on every seed at both levels".into()
            } else if any_lower {
                "partly".into()
            } else {
                "no".into()
            },
        }],
        seconds: 0.0,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ire_models::train::{EstimatorKind, ThresholdKind};

    #[test]
    fn the_recipes_are_the_official_scripts() {
        // The 2-layer transformer: AdmWIRE of the official notebook.
        let p = recipe(LM_PAPER_RECIPE).unwrap();
        assert_eq!(p.model, "lm-paper");
        assert_eq!(p.opt.threshold_rule, ThresholdKind::FlatKthSmallest);
        assert_eq!(p.opt.estimator, EstimatorKind::SquaredGradient);
        assert_eq!(
            (p.opt.ire_beta, p.opt.eps, p.opt.weight_decay),
            (0.0, 1e-16, 5e-4)
        );
        assert_eq!((p.opt.kappa, p.opt.gamma), (5.0, 0.99));
        assert_eq!(p.opt.ire_warmup, p.warmup_steps);
        assert_eq!((p.context, p.batch_size, p.steps), (1000, 32, 100_000));
        // Llama: IRE_PARAMS of ire_new.py with the training script's settings.
        let l = recipe(LLAMA_RECIPE).unwrap();
        assert_eq!(l.opt.threshold_rule, ThresholdKind::FlatKthSmallest);
        assert_eq!(l.opt.estimator, EstimatorKind::AbsGradient);
        assert_eq!(
            (l.opt.ire_beta, l.opt.eps, l.opt.weight_decay),
            (0.0, 1e-16, 0.1)
        );
        assert_eq!(l.opt.ire_warmup, l.warmup_steps);
        assert_eq!(l.step_batch(), 480);
        assert_eq!((l.clip_grad_norm, l.opt.gamma), (1.0, 0.6));
    }

    #[test]
    fn the_runs_here_scale_the_recipes_and_keep_their_ire() {
        let s = sizes(true);
        let c = paper_cfg(&s, Path::new("x.txt"), OptimizerKind::Admire, 2.0, 0.9, 3).unwrap();
        assert_eq!(
            (c.context, c.batch_size, c.steps),
            (s.context, s.batch, s.steps)
        );
        assert_eq!(c.opt.ire_warmup, c.warmup_steps);
        assert_eq!(c.opt.threshold_rule, ThresholdKind::FlatKthSmallest);
        let l = llama_cfg(&s, Path::new("x.txt"), OptimizerKind::Admire, 40, 0).unwrap();
        assert_eq!((l.model.as_str(), l.step_batch()), ("llama-tiny", s.batch));
        assert_eq!(l.opt.estimator, EstimatorKind::AbsGradient);
    }
}

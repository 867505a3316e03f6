//! Whole-model equivalence: each small preset trained on a device backend against the CPU
//! backend, with the bounds of `ire_models::crosscheck` (loss and gradient at θ₀, parameters
//! after one AdmIRE step, a 50-step loss curve).

use std::fmt::Write as _;
use std::path::Path;

use ire_models::crosscheck::{
    BOUNDS, ModelCheck, SMALL_PRESETS, check_config, check_model, default_text,
};
use ire_models::device::{BackendKind, NnTask, run_if_present};
use ire_models::nn::NnOps;
use ire_models::train::{TrainConfig, TrainError};

/// One preset on one device backend.
#[derive(Debug)]
pub struct ModelRow {
    /// The device backend compared with the CPU backend.
    pub backend: &'static str,
    /// What was measured.
    pub check: ModelCheck,
}

/// Runs every small preset (the language models on the text shipped in `data/` under `root`)
/// on each device backend of the build that has a device, `steps` steps each. Returns the
/// rows and a note per skipped case.
pub fn run_models(root: &Path, steps: usize) -> (Vec<ModelRow>, Vec<String>) {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let text = default_text(root);
    for kind in [BackendKind::OpenCl, BackendKind::Cuda] {
        for model in SMALL_PRESETS {
            let cfg = check_config(model, root, &text);
            match run_if_present(kind, Check { cfg: &cfg, steps }) {
                Ok(None) => {
                    notes.push(format!("{kind}: not compiled in or no device"));
                    break;
                }
                Ok(Some((_, Ok(check)))) => rows.push(ModelRow {
                    backend: kind.name(),
                    check,
                }),
                Ok(Some((_, Err(e)))) => notes.push(format!("{kind} {model}: FAILED to run: {e}")),
                Err(e) => {
                    notes.push(format!("{kind}: {e}"));
                    break;
                }
            }
        }
    }
    (rows, notes)
}

/// One preset on the backend the selection opened, against the CPU backend.
struct Check<'a> {
    cfg: &'a TrainConfig,
    steps: usize,
}

impl NnTask for Check<'_> {
    type Output = Result<ModelCheck, TrainError>;
    fn run<B: NnOps + 'static>(self, dev: B) -> Result<ModelCheck, TrainError> {
        check_model(
            ire_backend_cpu::CpuBackend::new(),
            dev,
            self.cfg,
            self.steps,
        )
    }
}

/// The per-op tolerances of the device neural-network kernels against the CPU backend, as
/// one Markdown table (empty without a device backend in the build).
#[cfg_attr(not(any(feature = "opencl", feature = "cuda")), allow(unused_mut))]
pub fn op_tolerances() -> String {
    let mut s = String::new();
    #[cfg(any(feature = "opencl", feature = "cuda"))]
    {
        use ire_models::nn::device::{CNN_TOLERANCES, LOSS_TOLERANCES, TF_TOLERANCES};
        let _ = writeln!(s, "| op | f32 | f64 | why |");
        let _ = writeln!(s, "| --- | ---: | ---: | --- |");
        for (op, t32, t64, why) in CNN_TOLERANCES
            .iter()
            .chain(TF_TOLERANCES)
            .chain(LOSS_TOLERANCES)
        {
            let fmt = |t: f64| {
                if t == 0.0 {
                    "0 (bitwise)".to_string()
                } else {
                    format!("{t:.0e}")
                }
            };
            let _ = writeln!(
                s,
                "| {op} | {} | {} | {} |",
                fmt(*t32),
                fmt(*t64),
                why.replace('|', "\\|")
            );
        }
    }
    s
}

/// The rows as one Markdown table, with the bounds under it.
pub fn markdown(rows: &[ModelRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| model | backends | params | loss at θ₀ (rel) | gradient (rel L2) | 1 AdmIRE step: share moved > 1e-5 | last-10 mean loss of the curve (rel) | verdict |"
    );
    let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for r in rows {
        let c = &r.check;
        let _ = writeln!(
            s,
            "| {} | {} vs cpu | {} | {:.1e} | {:.1e} | {:.1e} (max abs {:.1e}) | {:.1e} ({} steps; bound {:.0e}) | {} |",
            c.model,
            r.backend,
            c.params,
            c.loss_rel(),
            c.grad_rel,
            c.step_fraction,
            c.step_max_abs,
            c.curve_rel(),
            c.curves.0.len(),
            c.curve_limit(),
            if c.violations().is_empty() {
                "pass"
            } else {
                "FAIL"
            }
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "| bound | limit | why |");
    let _ = writeln!(s, "| --- | ---: | --- |");
    for b in BOUNDS {
        let cell = |t: &str| t.replace('|', "\\|");
        let _ = writeln!(
            s,
            "| {} | {:.0e} | {} |",
            cell(b.what),
            b.limit,
            cell(b.why)
        );
    }
    s
}

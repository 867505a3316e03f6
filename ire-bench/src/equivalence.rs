//! The cross-backend equivalence runner: every computing operation of [`Backend`] and
//! multi-step optimizer trajectories, run with identical inputs on every backend of the build
//! and compared with the reference backend, the oracle.
//!
//! - **Operations**: `fill`, `copy`, `axpy`, the SAM/ASAM perturbations, the IRE boost, the
//!   three EMAs, `mask_le`, SGD (plain; with momentum at its first step, a later step and
//!   Nesterov), AdamW (steps 1, 2 and 1000), the fused IRE steps, the sums of squares, the
//!   counts and the global k-th largest over several buffers, on every size of the [`Plan`].
//! - **Trajectories**: SGD with momentum, AdamW, SAM and ASAM over SGD, and `Ire` over each,
//!   for [`Plan::steps`] steps on a fixed quadratic `½ Σ a_i (θ_i − c_i)²` whose gradient is
//!   taken on the host from the backend's own `θ` (plus seeded noise), with a mask refresh every
//!   [`Plan::refresh_every`] steps after the warm-up.
//!
//! Inputs come from the seeded [`Rng`] of the conformance suite, so every backend sees the same
//! bits. Element-wise results must be bit-identical to the reference ("0 ulp"); counts and masks
//! exact; reductions and the SAM trajectories within the relative bounds of
//! [`ire_conformance::TOLERANCES`] (looked up by [`table_bound`], never restated here),
//! except SAM trajectories longer than the suite's, bounded by [`LONG_SAM_TRAJECTORY`].
//! One [`Row`] per operation or trajectory, dtype and backend aggregates every size.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;

use ire_backend_cpu::CpuBackend;
use ire_conformance::inputs::{OpInputs, adamw_scalars, sgd_scalars};
use ire_conformance::{Rng, TOLERANCES, Tolerance, ulp_distance};
use ire_core::optim::{
    AdamW, AdamWConfig, EstimateInput, Estimator, Ire, IreConfig, IreStep, KappaSchedule,
    Optimizer, Sam, SamConfig, Sgd, SgdConfig,
};
use ire_core::{Backend, DType, Reference, Scalar, mask};
use ire_models::device::{BackendKind, NnTask, run_if_present, run_on};
use ire_models::nn::NnOps;

// ------------------------------------------------------------------ errors and options

/// Why the runner could not run at all. A result out of tolerance is not an error: it is a
/// failed [`Row`] of the [`Report`].
#[derive(Debug)]
pub enum EquivError {
    /// Bad input: an unknown backend name, or a backend asked for that this build lacks or
    /// that has no device.
    Usage(String),
    /// A backend that exists failed to open (a device error, a kernel compile error).
    Backend(ire_core::Error),
    /// A tolerance entry the runner needs is missing from the conformance table.
    Table(String),
}

impl fmt::Display for EquivError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EquivError::Usage(s) => write!(f, "{s}"),
            EquivError::Backend(e) => write!(f, "backend failed to open: {e}"),
            EquivError::Table(s) => write!(f, "tolerance table: {s}"),
        }
    }
}

impl std::error::Error for EquivError {}

impl From<ire_core::Error> for EquivError {
    fn from(e: ire_core::Error) -> Self {
        EquivError::Backend(e)
    }
}

/// The backends the runner compares with the reference, in the order rows list them.
pub const COMPARED: [BackendKind; 3] = [BackendKind::Cpu, BackendKind::OpenCl, BackendKind::Cuda];

/// Parses a comma-separated backend list (`cpu,opencl`); spaces around names are ignored,
/// duplicates collapse. An empty list, an empty entry or an unknown name is an error.
pub fn parse_backends(list: &str) -> Result<Vec<BackendKind>, EquivError> {
    let mut out = Vec::new();
    for raw in list.split(',') {
        let name = raw.trim();
        let kind = match name.to_ascii_lowercase().as_str() {
            "reference" => {
                return Err(EquivError::Usage(
                    "`reference` is the oracle every backend is compared with; list the \
                     backends to compare with it: cpu, opencl, cuda"
                        .into(),
                ));
            }
            "" => {
                return Err(EquivError::Usage(format!(
                    "empty entry in the backend list `{list}` (expected e.g. `cpu,opencl`)"
                )));
            }
            other => match other.parse::<BackendKind>() {
                Ok(k) if COMPARED.contains(&k) => k,
                _ => {
                    return Err(EquivError::Usage(format!(
                        "unknown backend `{name}` (known: cpu, opencl, cuda)"
                    )));
                }
            },
        };
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

/// Sizes and lengths of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Buffer sizes every operation runs on (the k-th largest also adds buffers of 1, 0 and
    /// 257 elements).
    pub sizes: Vec<usize>,
    /// Tensor sizes of the trajectories (one model of several tensors: the IRE threshold is
    /// global over them).
    pub tensors: Vec<usize>,
    /// Steps of every trajectory.
    pub steps: u64,
    /// IRE mask refresh interval K in the trajectories.
    pub refresh_every: u64,
    /// IRE warm-up steps in the trajectories.
    pub warmup_steps: u64,
}

impl Plan {
    /// The full run: sizes up to 2^20, 50-step trajectories over 66,545 parameters.
    pub fn full() -> Self {
        Plan {
            sizes: vec![0, 1, 7, 1000, 65_537, 1 << 20],
            tensors: vec![1, 7, 1000, 65_537],
            steps: 50,
            refresh_every: 4,
            warmup_steps: 3,
        }
    }

    /// The quick run (seconds, even in a debug build): sizes up to 65,537, 12-step
    /// trajectories over 1,008 parameters (refreshes at steps 3, 7 and 11).
    pub fn quick() -> Self {
        Plan {
            sizes: vec![0, 1, 7, 1000, 65_537],
            tensors: vec![1, 7, 1000],
            steps: 12,
            refresh_every: 4,
            warmup_steps: 3,
        }
    }

    /// One line describing the plan.
    pub fn describe(&self) -> String {
        let list = |v: &[usize]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "operations on sizes {}; trajectories of {} steps over tensors of {} elements \
             (IRE: mask refresh every {} steps after {} warm-up steps)",
            list(&self.sizes),
            self.steps,
            list(&self.tensors),
            self.refresh_every,
            self.warmup_steps
        )
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Sizes and steps.
    pub plan: Plan,
    /// The backends to compare with the reference; `None`: every backend of the build that
    /// has a device (absent ones are noted and skipped). A backend named here that the build
    /// lacks or that has no device is an error.
    pub backends: Option<Vec<BackendKind>>,
}

impl Options {
    /// Every available backend, full or quick plan.
    pub fn new(quick: bool) -> Self {
        Options {
            plan: if quick { Plan::quick() } else { Plan::full() },
            backends: None,
        }
    }
}

// ------------------------------------------------------------------ bounds and comparison

/// How far a backend's result may be from the reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// Bit-identical floating-point values (`-0.0` and `+0.0` differ; NaN equals NaN).
    Bitwise,
    /// Equal integers (counts, mask bytes).
    Exact,
    /// `|got − want| ≤ rel · max(|want|, 1e-30)` element by element, `rel` from the entry
    /// `entry` of the conformance tolerance table.
    Relative {
        /// The relative bound for this dtype.
        rel: f64,
        /// The table entry it comes from.
        entry: &'static str,
    },
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Bitwise => write!(f, "0 ulp"),
            Bound::Exact => write!(f, "exact"),
            Bound::Relative { rel, entry } => write!(f, "rel {rel:e} ({entry})"),
        }
    }
}

/// The floor of `|want|` in a relative bound (as the conformance suite's `assert_close`), so a
/// zero reference demands a zero result.
const TINY: f64 = 1e-30;

/// The number of steps the conformance suite's `sam_trajectory` entry is stated for (its
/// trajectories run 20 steps).
pub const CONFORMANCE_SAM_STEPS: u64 = 20;

/// The one tolerance of this runner that the conformance table lacks: SAM and ASAM
/// trajectories (with or without IRE) longer than [`CONFORMANCE_SAM_STEPS`] steps, e.g. the
/// full plan's 50.
///
/// Why not `sam_trajectory`: that entry bounds 20 steps. Each step's scale `ρ/‖g‖` may differ by
/// an ulp (a reduction), the next gradient is taken at the slightly different `θ`, and the
/// momentum carries the difference on; the absolute difference stays at a few ulps of the
/// parameters' scale (measured: at most 6e-6 in `f32` over 50 steps), but the bound is relative
/// element by element, and a coordinate that passes near zero late in a long run turns that
/// into a larger relative one (measured worst over 50 steps of the full plan: 1.3e-4 in `f32`,
/// ASAM-IRE; 2.9e-14 in `f64`, ASAM; CPU and OpenCL on PoCL). The bounds are about 8 and 10
/// times that.
pub const LONG_SAM_TRAJECTORY: Tolerance = Tolerance {
    op: "sam_trajectory_long",
    rel_f32: 1e-3,
    rel_f64: 3e-13,
    reason: "as sam_trajectory, over more than 20 steps: the absolute difference stays at a few \
             ulps of the parameters' scale, relative to a coordinate passing near zero it grows; \
             measured over 50 steps at most 1.3e-4 (f32) and 2.9e-14 (f64)",
};

/// The tolerance entry `entry` of [`ire_conformance::TOLERANCES`], or
/// [`LONG_SAM_TRAJECTORY`].
pub fn tolerance_entry(entry: &str) -> Option<&'static Tolerance> {
    TOLERANCES
        .iter()
        .chain([&LONG_SAM_TRAJECTORY])
        .find(|t| t.op == entry)
}

/// The relative bound of `entry` for `dtype` (see [`tolerance_entry`]).
pub fn table_bound(entry: &'static str, dtype: DType) -> Result<Bound, EquivError> {
    let t =
        tolerance_entry(entry).ok_or_else(|| EquivError::Table(format!("no entry `{entry}`")))?;
    let rel = match dtype {
        DType::F32 => t.rel_f32,
        DType::F64 => t.rel_f64,
        DType::U8 | DType::U32 => {
            return Err(EquivError::Table(format!(
                "`{entry}` has no bound for {} (integers compare exactly)",
                dtype.name()
            )));
        }
    };
    Ok(Bound::Relative { rel, entry })
}

/// The distance between a backend's results and the reference's, over every value compared.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diff {
    /// Values compared.
    pub values: usize,
    /// Largest `|got − want|` (infinite where exactly one side is NaN).
    pub max_abs: f64,
    /// Largest distance in units in the last place (integers: the difference).
    pub max_ulp: u64,
    /// Largest `|got − want| / max(|want|, 1e-30)`.
    pub max_rel: f64,
    /// Values outside the bound (a length mismatch counts as one).
    pub violations: usize,
    /// The first value outside the bound, described.
    pub first_violation: Option<String>,
}

impl Diff {
    /// Folds `other` into `self` (maxima, sums, the first violation kept).
    pub fn merge(&mut self, other: Diff) {
        self.values += other.values;
        self.max_abs = self.max_abs.max(other.max_abs);
        self.max_ulp = self.max_ulp.max(other.max_ulp);
        self.max_rel = self.max_rel.max(other.max_rel);
        self.violations += other.violations;
        if self.first_violation.is_none() {
            self.first_violation = other.first_violation;
        }
    }

    fn violate(&mut self, what: String) {
        self.violations += 1;
        if self.first_violation.is_none() {
            self.first_violation = Some(what);
        }
    }

    fn check_len(&mut self, what: &str, got: usize, want: usize) -> bool {
        if got == want {
            return true;
        }
        self.violate(format!("{what}: {got} values, the reference has {want}"));
        false
    }
}

/// Compares floating-point results with the reference's under `bound` (`Exact` acts as
/// `Bitwise`). `what` names the case in the first violation's description.
pub fn compare_floats<T: Scalar>(what: &str, got: &[T], want: &[T], bound: Bound) -> Diff {
    let mut d = Diff::default();
    if !d.check_len(what, got.len(), want.len()) {
        return d;
    }
    d.values = got.len();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g.is_nan() && w.is_nan() {
            continue;
        }
        let (gf, wf) = (g.as_f64(), w.as_f64());
        if gf.to_bits() == wf.to_bits() {
            continue;
        }
        let (abs, ulp) = if g.is_nan() || w.is_nan() {
            (f64::INFINITY, u64::MAX)
        } else {
            ((gf - wf).abs(), ulp_distance(g, w))
        };
        let rel = abs / wf.abs().max(TINY);
        d.max_abs = d.max_abs.max(abs);
        d.max_ulp = d.max_ulp.max(ulp);
        d.max_rel = d.max_rel.max(rel);
        let outside = match bound {
            Bound::Bitwise | Bound::Exact => true,
            Bound::Relative { rel: r, .. } => abs.is_nan() || abs > r * wf.abs().max(TINY),
        };
        if outside {
            d.violate(format!(
                "{what}: element {i}: got {g:?}, reference {w:?} ({} ulp, |Δ| {abs:.3e}, \
                 bound {bound})",
                if ulp == u64::MAX {
                    "∞".to_string()
                } else {
                    ulp.to_string()
                }
            ));
        }
    }
    d
}

/// Compares integer results (counts, mask bytes) with the reference's: they must be equal.
pub fn compare_exact(what: &str, got: &[u64], want: &[u64]) -> Diff {
    let mut d = Diff::default();
    if !d.check_len(what, got.len(), want.len()) {
        return d;
    }
    d.values = got.len();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g != w {
            let diff = g.abs_diff(w);
            d.max_abs = d.max_abs.max(diff as f64);
            d.max_ulp = d.max_ulp.max(diff);
            d.max_rel = d.max_rel.max(diff as f64 / (w as f64).max(1.0));
            d.violate(format!("{what}: element {i}: got {g}, reference {w}"));
        }
    }
    d
}

// ------------------------------------------------------------------ report

/// One line of the table: an operation or trajectory, a dtype, a backend against the oracle.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The operation (`axpy`, `sgd_momentum_step (nesterov)`) or trajectory
    /// (`trajectory: sam-ire`).
    pub op: String,
    /// The element type of the floating-point data.
    pub dtype: DType,
    /// The backend compared.
    pub backend: String,
    /// The backend it is compared with (always `reference`).
    pub oracle: String,
    /// The bound of the floating-point results (integers are always exact).
    pub bound: Bound,
    /// The measured distance over every size / case.
    pub diff: Diff,
    /// A backend call that failed (then the row fails).
    pub error: Option<String>,
}

impl Row {
    /// `cpu vs reference`.
    pub fn compared(&self) -> String {
        format!("{} vs {}", self.backend, self.oracle)
    }

    /// Within the bound everywhere, and no call failed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.diff.violations == 0
    }

    /// `pass` or `FAIL`.
    pub fn verdict(&self) -> &'static str {
        if self.passed() { "pass" } else { "FAIL" }
    }
}

/// Everything a run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// What was run.
    pub plan: Option<Plan>,
    /// The backends compared, described (device names, threads).
    pub devices: Vec<String>,
    /// Backends and dtypes skipped, and why.
    pub notes: Vec<String>,
    /// One row per operation or trajectory, dtype and backend.
    pub rows: Vec<Row>,
}

fn num(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.is_infinite() {
        "∞".into()
    } else {
        format!("{x:.2e}")
    }
}

impl Report {
    /// The rows that failed.
    pub fn failures(&self) -> Vec<&Row> {
        self.rows.iter().filter(|r| !r.passed()).collect()
    }

    /// No row failed.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(Row::passed)
    }

    /// Whether a row for `op`, `dtype` and `backend` exists.
    pub fn has_row(&self, op: &str, dtype: DType, backend: &str) -> bool {
        self.rows
            .iter()
            .any(|r| r.op == op && r.dtype == dtype && r.backend == backend)
    }

    /// The table alone, in Markdown.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| op or trajectory | dtype | backends compared | max \\|Δ\\| | max ULP | max rel | \
             tolerance | verdict |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for r in &self.rows {
            let (abs, ulp, rel) = if r.error.is_some() {
                ("-".into(), "-".into(), "-".into())
            } else {
                let ulp = if r.diff.max_ulp == u64::MAX {
                    "∞".into()
                } else {
                    r.diff.max_ulp.to_string()
                };
                (num(r.diff.max_abs), ulp, num(r.diff.max_rel))
            };
            let verdict = if r.error.is_some() {
                "FAIL (error)"
            } else {
                r.verdict()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {abs} | {ulp} | {rel} | {} | {verdict} |",
                r.op,
                r.dtype.name(),
                r.compared(),
                r.bound
            );
        }
        s
    }

    /// The backends, the plan, the table and the notes, in Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Oracle: reference backend.");
        for d in &self.devices {
            let _ = writeln!(s, "Compared: {d}.");
        }
        if let Some(p) = &self.plan {
            let _ = writeln!(s, "Plan: {}.", p.describe());
        }
        let _ = writeln!(s);
        s.push_str(&self.table());
        let mut entries: Vec<&'static str> = Vec::new();
        for r in &self.rows {
            if let Bound::Relative { entry, .. } = r.bound
                && !entries.contains(&entry)
            {
                entries.push(entry);
            }
        }
        if !entries.is_empty() || !self.notes.is_empty() {
            let _ = writeln!(s);
        }
        for t in entries.into_iter().filter_map(tolerance_entry) {
            let _ = writeln!(
                s,
                "- `{}`: rel {:e} (f32), {:e} (f64): {}.",
                t.op, t.rel_f32, t.rel_f64, t.reason
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        s
    }

    /// The failed rows with their first violation or error, one per line (empty if none).
    pub fn failure_summary(&self) -> String {
        let mut s = String::new();
        for r in self.failures() {
            let why = r
                .error
                .clone()
                .or_else(|| r.diff.first_violation.clone())
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "FAILED: {} [{}] {}: {} value(s) outside {}; {why}",
                r.op,
                r.dtype.name(),
                r.compared(),
                r.diff.violations,
                r.bound
            );
        }
        s
    }
}

// ------------------------------------------------------------------ the operations

/// Every computing operation the runner checks (one row each per dtype and backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `fill` of a float buffer and of a mask.
    Fill,
    /// Device-to-device `copy`.
    Copy,
    /// `axpy`.
    Axpy,
    /// `sam_perturb`.
    SamPerturb,
    /// `asam_perturb`.
    AsamPerturb,
    /// `ire_boost`.
    IreBoost,
    /// `ema_square` (β 0 and 0.9).
    EmaSquare,
    /// `ema_abs` (β 0 and 0.9).
    EmaAbs,
    /// `ema_product` (β 0 and 0.9).
    EmaProduct,
    /// `mask_le` at a threshold equal to one of the values.
    MaskLe,
    /// `sgd_step`.
    SgdStep,
    /// `sgd_momentum_step` at the first step (`b = d`).
    SgdMomentumFirst,
    /// `sgd_momentum_step` at a later step, dampening 0.1.
    SgdMomentum,
    /// `sgd_momentum_step`, Nesterov.
    SgdNesterov,
    /// `adamw_step` at steps 1, 2 and 1000.
    AdamW,
    /// `sgd_ire_step`.
    SgdIre,
    /// `sgd_momentum_ire_step` at the first step.
    SgdMomentumIreFirst,
    /// `sgd_momentum_ire_step` at a later step, dampening 0.1.
    SgdMomentumIre,
    /// `sgd_momentum_ire_step`, Nesterov.
    SgdNesterovIre,
    /// `adamw_ire_step` at steps 1, 2 and 1000.
    AdamWIre,
    /// `sum_squares`.
    SumSquares,
    /// `sum_squares_product`.
    SumSquaresProduct,
    /// `count_non_finite` (NaNs and infinities planted).
    CountNonFinite,
    /// `count_flat` of a packed mask.
    CountFlat,
    /// `kth_largest` over four buffers (one empty), several `k`.
    KthLargest,
}

impl Op {
    /// Every operation, in table order.
    pub const ALL: [Op; 25] = [
        Op::Fill,
        Op::Copy,
        Op::Axpy,
        Op::SamPerturb,
        Op::AsamPerturb,
        Op::IreBoost,
        Op::EmaSquare,
        Op::EmaAbs,
        Op::EmaProduct,
        Op::MaskLe,
        Op::SgdStep,
        Op::SgdMomentumFirst,
        Op::SgdMomentum,
        Op::SgdNesterov,
        Op::AdamW,
        Op::SgdIre,
        Op::SgdMomentumIreFirst,
        Op::SgdMomentumIre,
        Op::SgdNesterovIre,
        Op::AdamWIre,
        Op::SumSquares,
        Op::SumSquaresProduct,
        Op::CountNonFinite,
        Op::CountFlat,
        Op::KthLargest,
    ];

    /// The row name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Fill => "fill",
            Op::Copy => "copy",
            Op::Axpy => "axpy",
            Op::SamPerturb => "sam_perturb",
            Op::AsamPerturb => "asam_perturb",
            Op::IreBoost => "ire_boost",
            Op::EmaSquare => "ema_square",
            Op::EmaAbs => "ema_abs",
            Op::EmaProduct => "ema_product",
            Op::MaskLe => "mask_le",
            Op::SgdStep => "sgd_step",
            Op::SgdMomentumFirst => "sgd_momentum_step (first step)",
            Op::SgdMomentum => "sgd_momentum_step",
            Op::SgdNesterov => "sgd_momentum_step (nesterov)",
            Op::AdamW => "adamw_step",
            Op::SgdIre => "sgd_ire_step",
            Op::SgdMomentumIreFirst => "sgd_momentum_ire_step (first step)",
            Op::SgdMomentumIre => "sgd_momentum_ire_step",
            Op::SgdNesterovIre => "sgd_momentum_ire_step (nesterov)",
            Op::AdamWIre => "adamw_ire_step",
            Op::SumSquares => "sum_squares",
            Op::SumSquaresProduct => "sum_squares_product",
            Op::CountNonFinite => "count_non_finite",
            Op::CountFlat => "count_flat",
            Op::KthLargest => "kth_largest",
        }
    }

    /// The bound of the operation's floating-point results for `dtype`.
    pub fn bound(self, dtype: DType) -> Result<Bound, EquivError> {
        match self {
            Op::SumSquares => table_bound("sum_squares", dtype),
            Op::SumSquaresProduct => table_bound("sum_squares_product", dtype),
            Op::CountNonFinite | Op::CountFlat => Ok(Bound::Exact),
            _ => Ok(Bound::Bitwise),
        }
    }
}

/// Results of one case, downloaded: floats compare under the row's bound, bytes and counts
/// exactly.
#[derive(Clone, Debug, Default)]
struct Out<T> {
    floats: Vec<T>,
    bytes: Vec<u8>,
    counts: Vec<u64>,
}

impl<T: Scalar> Out<T> {
    fn compare(&self, want: &Out<T>, bound: Bound, what: &str) -> Diff {
        let mut d = compare_floats(what, &self.floats, &want.floats, bound);
        let widen = |v: &[u8]| v.iter().map(|&x| u64::from(x)).collect::<Vec<_>>();
        d.merge(compare_exact(
            &format!("{what} (mask)"),
            &widen(&self.bytes),
            &widen(&want.bytes),
        ));
        d.merge(compare_exact(
            &format!("{what} (count)"),
            &self.counts,
            &want.counts,
        ));
        d
    }
}

// Scalars of the operations: values not exactly representable in binary, so both dtypes round
// them.
const FILL_VALUE: f64 = 0.1;
const AXPY_A: f64 = -0.37;
const PERTURB_SCALE: f64 = 0.013;
const KAPPA: f64 = 1.7;
const EMA_BETAS: [f64; 2] = [0.0, 0.9];
const ADAMW_STEPS: [u64; 3] = [1, 2, 1000];

/// Runs `op` on `b` with inputs `x` and downloads its results.
fn run_op<B: Backend, T: Scalar>(b: &B, op: Op, x: &OpInputs<T>) -> ire_core::Result<Out<T>> {
    let mut out = Out::default();
    let n = x.n;
    let kappa = T::of(KAPPA);
    match op {
        Op::Fill => {
            let mut y = b.alloc::<T>(n)?;
            b.fill(&mut y, T::of(FILL_VALUE))?;
            out.floats = b.to_vec(&y)?;
            let mut m = b.alloc::<u8>(n)?;
            b.fill(&mut m, 1u8)?;
            out.bytes = b.to_vec(&m)?;
        }
        Op::Copy => {
            let src = b.alloc_from(&x.v1)?;
            let mut dst = b.alloc::<T>(n)?;
            b.copy(&src, &mut dst)?;
            out.floats = b.to_vec(&dst)?;
        }
        Op::Axpy => {
            let mut y = b.alloc_from(&x.v1)?;
            b.axpy(&mut y, T::of(AXPY_A), &b.alloc_from(&x.v2)?)?;
            out.floats = b.to_vec(&y)?;
        }
        Op::SamPerturb | Op::AsamPerturb => {
            let mut p = b.alloc_from(&x.v1)?;
            let g = b.alloc_from(&x.v2)?;
            if op == Op::SamPerturb {
                b.sam_perturb(&mut p, &g, T::of(PERTURB_SCALE))?;
            } else {
                b.asam_perturb(&mut p, &g, T::of(PERTURB_SCALE))?;
            }
            out.floats = b.to_vec(&p)?;
        }
        Op::IreBoost => {
            let mut p = b.alloc_from(&x.v1)?;
            b.ire_boost(
                &mut p,
                &b.alloc_from(&x.v2)?,
                &b.alloc_from(&mask::pack(&x.mask))?,
                kappa,
            )?;
            out.floats = b.to_vec(&p)?;
        }
        Op::EmaSquare | Op::EmaAbs | Op::EmaProduct => {
            let g = b.alloc_from(&x.v2)?;
            let other = b.alloc_from(&x.v1)?;
            for beta in EMA_BETAS {
                let mut h = b.alloc_from(&x.v3)?;
                match op {
                    Op::EmaSquare => b.ema_square(&mut h, &g, T::of(beta))?,
                    Op::EmaAbs => b.ema_abs(&mut h, &g, T::of(beta))?,
                    _ => b.ema_product(&mut h, &g, &other, T::of(beta))?,
                }
                out.floats.extend(b.to_vec(&h)?);
            }
        }
        Op::MaskLe => {
            // A threshold equal to one of the values: ties must be flat everywhere.
            let tau = x.v1.get(n / 2).copied().unwrap_or_else(T::zero);
            let mut m = b.alloc::<u32>(mask::words(n))?;
            b.mask_le(&b.alloc_from(&x.v1)?, tau, &mut m)?;
            // The packed words themselves (their unused bits included) must match.
            let words = b.to_vec(&m)?;
            out.bytes = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        }
        Op::SgdStep | Op::SgdIre => {
            let mut p = b.alloc_from(&x.v1)?;
            let g = b.alloc_from(&x.v2)?;
            let s = sgd_scalars::<T>(&mut Rng::new(17), false, false);
            if op == Op::SgdStep {
                b.sgd_step(&mut p, &g, &s)?;
            } else {
                b.sgd_ire_step(&mut p, &g, &s, &b.alloc_from(&mask::pack(&x.mask))?, kappa)?;
            }
            out.floats = b.to_vec(&p)?;
        }
        Op::SgdMomentumFirst
        | Op::SgdMomentum
        | Op::SgdNesterov
        | Op::SgdMomentumIreFirst
        | Op::SgdMomentumIre
        | Op::SgdNesterovIre => {
            let first = matches!(op, Op::SgdMomentumFirst | Op::SgdMomentumIreFirst);
            let nesterov = matches!(op, Op::SgdNesterov | Op::SgdNesterovIre);
            let fused = matches!(
                op,
                Op::SgdMomentumIreFirst | Op::SgdMomentumIre | Op::SgdNesterovIre
            );
            let s = sgd_scalars::<T>(&mut Rng::new(17), first, nesterov);
            let mut p = b.alloc_from(&x.v1)?;
            let g = b.alloc_from(&x.v2)?;
            let mut buf = b.alloc_from(&x.v3)?;
            if fused {
                let mask = b.alloc_from(&mask::pack(&x.mask))?;
                b.sgd_momentum_ire_step(&mut p, &g, &mut buf, &s, &mask, kappa)?;
            } else {
                b.sgd_momentum_step(&mut p, &g, &mut buf, &s)?;
            }
            out.floats = b.to_vec(&p)?;
            out.floats.extend(b.to_vec(&buf)?);
        }
        Op::AdamW | Op::AdamWIre => {
            let g = b.alloc_from(&x.v2)?;
            let mask = b.alloc_from(&mask::pack(&x.mask))?;
            for t in ADAMW_STEPS {
                let s = adamw_scalars::<T>(t);
                let mut p = b.alloc_from(&x.v1)?;
                let mut m = b.alloc_from(&x.v4)?;
                let mut v = b.alloc_from(&x.v3)?;
                if op == Op::AdamW {
                    b.adamw_step(&mut p, &g, &mut m, &mut v, &s)?;
                } else {
                    b.adamw_ire_step(&mut p, &g, &mut m, &mut v, &s, &mask, kappa)?;
                }
                out.floats.extend(b.to_vec(&p)?);
                out.floats.extend(b.to_vec(&m)?);
                out.floats.extend(b.to_vec(&v)?);
            }
        }
        Op::SumSquares => out.floats = vec![b.sum_squares(&b.alloc_from(&x.v1)?)?],
        Op::SumSquaresProduct => {
            let (p, q) = (b.alloc_from(&x.v1)?, b.alloc_from(&x.v2)?);
            out.floats = vec![b.sum_squares_product(&p, &q)?];
        }
        Op::CountNonFinite => {
            let c = b.count_non_finite(&b.alloc_from(&x.non_finite)?)?;
            out.counts = vec![c as u64];
        }
        Op::CountFlat => {
            let c = b.count_flat(&b.alloc_from(&mask::pack(&x.mask))?)?;
            out.counts = vec![c as u64];
        }
        Op::KthLargest => {
            let bufs = x
                .parts
                .iter()
                .map(|p| b.alloc_from(p))
                .collect::<ire_core::Result<Vec<_>>>()?;
            let refs: Vec<&B::Buffer<T>> = bufs.iter().collect();
            for &k in &x.ks {
                out.floats.push(b.kth_largest(&refs, k)?);
            }
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------ the trajectories

/// Every optimizer trajectory the runner checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trajectory {
    /// `Sgd`, momentum 0.9, weight decay 5e-4.
    Sgd,
    /// `Ire<Sgd>` (fused boosted steps), `ĝ²` estimator, constant κ.
    SgdIre,
    /// `AdamW`.
    AdamW,
    /// `Ire<AdamW>` (AdmIRE), `ĝ²` estimator, κ proportional to the learning rate.
    AdamWIre,
    /// `Sam<Sgd>`, ρ 0.05.
    Sam,
    /// `Ire<Sam<Sgd>>` through `sam_step_with`.
    SamIre,
    /// `Sam<Sgd>` adaptive (ASAM), ρ 0.5.
    Asam,
    /// `Ire<Sam<Sgd>>` adaptive, `|ĝ|` estimator.
    AsamIre,
}

impl Trajectory {
    /// Every trajectory, in table order.
    pub const ALL: [Trajectory; 8] = [
        Trajectory::Sgd,
        Trajectory::SgdIre,
        Trajectory::AdamW,
        Trajectory::AdamWIre,
        Trajectory::Sam,
        Trajectory::SamIre,
        Trajectory::Asam,
        Trajectory::AsamIre,
    ];

    /// The row name.
    pub fn name(self) -> &'static str {
        match self {
            Trajectory::Sgd => "trajectory: sgd (momentum)",
            Trajectory::SgdIre => "trajectory: sgd-ire",
            Trajectory::AdamW => "trajectory: adamw",
            Trajectory::AdamWIre => "trajectory: adamw-ire",
            Trajectory::Sam => "trajectory: sam (sgd)",
            Trajectory::SamIre => "trajectory: sam-ire",
            Trajectory::Asam => "trajectory: asam (sgd)",
            Trajectory::AsamIre => "trajectory: asam-ire",
        }
    }

    /// The bound of the final parameters after `steps` steps for `dtype`: bitwise where every
    /// step is element-wise (the mask refresh's threshold is exact); where the SAM scale
    /// `ρ/‖g‖` comes from a reduction, the conformance table's `sam_trajectory` entry up to
    /// [`CONFORMANCE_SAM_STEPS`] steps and [`LONG_SAM_TRAJECTORY`] beyond.
    pub fn bound(self, dtype: DType, steps: u64) -> Result<Bound, EquivError> {
        match self {
            Trajectory::Sam | Trajectory::SamIre | Trajectory::Asam | Trajectory::AsamIre => {
                if steps <= CONFORMANCE_SAM_STEPS {
                    table_bound("sam_trajectory", dtype)
                } else {
                    table_bound(LONG_SAM_TRAJECTORY.op, dtype)
                }
            }
            _ => Ok(Bound::Bitwise),
        }
    }

    fn lr0(self) -> f64 {
        match self {
            Trajectory::AdamW | Trajectory::AdamWIre => 0.01,
            _ => 0.05,
        }
    }
}

/// The synthetic training problem of the trajectories: the quadratic
/// `½ Σ a_i (θ_i − c_i)²` over several tensors, curvatures `a` spread over four decades.
/// The training gradient of step `t` is `a ⊙ (θ − c) + ξ_t`, taken on the host from the
/// backend's current `θ` (and at the perturbed point for SAM), with seeded noise `ξ_t`. The
/// estimator gradient is `√a ⊙ z_t`, `z_t` seeded: like a sampled-label gradient, its square
/// ranks coordinates by curvature on average, and it does not depend on `θ`, so the IRE mask
/// is a function of the inputs alone on every backend.
struct Problem<T> {
    curvature: Vec<Vec<T>>,
    center: Vec<Vec<T>>,
    init: Vec<Vec<T>>,
    /// `[step][tensor]`.
    noise: Vec<Vec<Vec<T>>>,
    /// `[step][tensor]`.
    probe: Vec<Vec<Vec<T>>>,
}

impl<T: Scalar> Problem<T> {
    fn new(plan: &Plan) -> Self {
        let mut rng = Rng::new(0xC0FFEE);
        let sizes = &plan.tensors;
        let curvature_f64: Vec<Vec<f64>> = sizes
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| 10f64.powf(rng.uniform() * 4.0 - 3.0))
                    .collect()
            })
            .collect();
        let curvature = curvature_f64
            .iter()
            .map(|v| v.iter().map(|&a| T::of(a)).collect())
            .collect();
        let center = sizes
            .iter()
            .map(|&n| (0..n).map(|_| T::of(rng.uniform() * 2.0 - 1.0)).collect())
            .collect();
        let init = sizes.iter().map(|&n| rng.values::<T>(n)).collect();
        let mut noise = Vec::new();
        let mut probe = Vec::new();
        for t in 0..plan.steps {
            let mut r = Rng::new(0xA11CE + t);
            noise.push(
                sizes
                    .iter()
                    .map(|&n| {
                        r.values::<f64>(n)
                            .into_iter()
                            .map(|x| T::of(0.01 * x))
                            .collect()
                    })
                    .collect(),
            );
            probe.push(
                curvature_f64
                    .iter()
                    .map(|a| {
                        a.iter()
                            .map(|&a| T::of(a.sqrt() * (r.uniform() * 2.0 - 1.0) * 3f64.sqrt()))
                            .collect()
                    })
                    .collect(),
            );
        }
        Problem {
            curvature,
            center,
            init,
            noise,
            probe,
        }
    }

    fn step_data(data: &[Vec<Vec<T>>], t: u64) -> ire_core::Result<&[Vec<T>]> {
        usize::try_from(t)
            .ok()
            .and_then(|t| data.get(t))
            .map(Vec::as_slice)
            .ok_or_else(|| ire_core::Error::Protocol(format!("no synthetic data for step {t}")))
    }

    /// Writes the training gradient of step `t` at `params` into `grads`.
    fn load_grads<B: Backend>(
        &self,
        b: &B,
        t: u64,
        params: &[B::Buffer<T>],
        grads: &mut [B::Buffer<T>],
    ) -> ire_core::Result<()> {
        let noise = Self::step_data(&self.noise, t)?;
        for (i, (p, g)) in params.iter().zip(grads.iter_mut()).enumerate() {
            let theta = b.to_vec(p)?;
            let (a, c, xi) = (&self.curvature[i], &self.center[i], &noise[i]);
            let grad: Vec<T> = theta
                .iter()
                .zip(a)
                .zip(c)
                .zip(xi)
                .map(|(((&th, &a), &c), &xi)| a * (th - c) + xi)
                .collect();
            b.upload(g, &grad)?;
        }
        Ok(())
    }

    /// Writes the estimator gradient of step `t` into `est`.
    fn load_probe<B: Backend>(
        &self,
        b: &B,
        t: u64,
        est: &mut [B::Buffer<T>],
    ) -> ire_core::Result<()> {
        for (e, v) in est.iter_mut().zip(Self::step_data(&self.probe, t)?) {
            b.upload(e, v)?;
        }
        Ok(())
    }
}

fn lr_at(lr0: f64, t: u64, steps: u64) -> f64 {
    // Linear decay to half the peak: κ proportional to the learning rate moves too.
    lr0 * (1.0 - t as f64 / (2.0 * steps.max(1) as f64))
}

const TRAJ_SGD: SgdConfig = SgdConfig {
    momentum: 0.9,
    dampening: 0.0,
    nesterov: false,
    weight_decay: 5e-4,
};

const TRAJ_ADAMW: AdamWConfig = AdamWConfig {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.1,
};

fn ire_config(plan: &Plan, estimator: Estimator, kappa_schedule: KappaSchedule) -> IreConfig {
    IreConfig {
        kappa: 2.0,
        gamma: 0.6,
        refresh_every: plan.refresh_every,
        warmup_steps: plan.warmup_steps,
        beta: 0.5,
        kappa_schedule,
        estimator,
        ..IreConfig::default()
    }
}

/// One trajectory's run state on a backend.
struct Run<'a, B: Backend, T: Scalar> {
    b: &'a B,
    p: &'a Problem<T>,
    steps: u64,
    lr0: f64,
    params: Vec<B::Buffer<T>>,
    grads: Vec<B::Buffer<T>>,
    est: Vec<B::Buffer<T>>,
}

impl<'a, B: Backend, T: Scalar> Run<'a, B, T> {
    fn new(b: &'a B, p: &'a Problem<T>, steps: u64, lr0: f64) -> ire_core::Result<Self> {
        let params = p
            .init
            .iter()
            .map(|v| b.alloc_from(v))
            .collect::<ire_core::Result<Vec<_>>>()?;
        let grads = p
            .init
            .iter()
            .map(|v| b.alloc(v.len()))
            .collect::<ire_core::Result<Vec<_>>>()?;
        let est = p
            .init
            .iter()
            .map(|v| b.alloc(v.len()))
            .collect::<ire_core::Result<Vec<_>>>()?;
        Ok(Run {
            b,
            p,
            steps,
            lr0,
            params,
            grads,
            est,
        })
    }

    fn plain<O: Optimizer<B, T>>(&mut self, mut opt: O) -> ire_core::Result<()> {
        for t in 0..self.steps {
            self.p
                .load_grads(self.b, t, &self.params, &mut self.grads)?;
            opt.step(
                self.b,
                &mut self.params,
                &self.grads,
                lr_at(self.lr0, t, self.steps),
            )?;
        }
        Ok(())
    }

    fn boosted<O: Optimizer<B, T>>(&mut self, mut ire: Ire<B, T, O>) -> ire_core::Result<Vec<u8>> {
        for t in 0..self.steps {
            self.p
                .load_grads(self.b, t, &self.params, &mut self.grads)?;
            let due = ire.refresh_due();
            if due {
                self.p.load_probe(self.b, t, &mut self.est)?;
            }
            let ctx = IreStep {
                lr: lr_at(self.lr0, t, self.steps),
                estimate: due.then_some(EstimateInput::Gradient(&self.est)),
            };
            ire.step(self.b, &mut self.params, &self.grads, ctx)?;
        }
        Ok(ire.mask(self.b)?.concat())
    }

    fn sam<O: Optimizer<B, T>>(&mut self, mut sam: Sam<B, T, O>) -> ire_core::Result<()> {
        let (b, p) = (self.b, self.p);
        for t in 0..self.steps {
            p.load_grads(b, t, &self.params, &mut self.grads)?;
            let lr = lr_at(self.lr0, t, self.steps);
            sam.step_with(b, &mut self.params, &mut self.grads, lr, |at, g| {
                p.load_grads(b, t, at, g)
            })?;
        }
        Ok(())
    }

    fn sam_boosted<O: Optimizer<B, T>>(
        &mut self,
        mut ire: Ire<B, T, Sam<B, T, O>>,
    ) -> ire_core::Result<Vec<u8>> {
        let (b, p) = (self.b, self.p);
        for t in 0..self.steps {
            p.load_grads(b, t, &self.params, &mut self.grads)?;
            let due = ire.refresh_due();
            if due {
                p.load_probe(b, t, &mut self.est)?;
            }
            let ctx = IreStep {
                lr: lr_at(self.lr0, t, self.steps),
                estimate: due.then_some(EstimateInput::Gradient(&self.est)),
            };
            ire.sam_step_with(b, &mut self.params, &mut self.grads, ctx, |at, g| {
                p.load_grads(b, t, at, g)
            })?;
        }
        Ok(ire.mask(self.b)?.concat())
    }

    fn finish(self, bytes: Vec<u8>) -> ire_core::Result<Out<T>> {
        let mut floats = Vec::new();
        for p in &self.params {
            floats.extend(self.b.to_vec(p)?);
        }
        Ok(Out {
            floats,
            bytes,
            counts: Vec::new(),
        })
    }
}

/// Runs trajectory `traj` on `b` and downloads the final parameters (and the final IRE mask).
fn run_trajectory<B: Backend, T: Scalar>(
    b: &B,
    traj: Trajectory,
    p: &Problem<T>,
    plan: &Plan,
) -> ire_core::Result<Out<T>> {
    let mut run = Run::new(b, p, plan.steps, traj.lr0())?;
    let sgd = || Sgd::<B, T>::new(TRAJ_SGD);
    let sam_cfg = SamConfig {
        rho: 0.05,
        adaptive: false,
    };
    let asam_cfg = SamConfig {
        rho: 0.5,
        adaptive: true,
    };
    let constant = KappaSchedule::Constant;
    let bytes = match traj {
        Trajectory::Sgd => run.plain(sgd()?).map(|()| Vec::new())?,
        Trajectory::SgdIre => {
            let cfg = ire_config(plan, Estimator::SquaredGradient, constant);
            run.boosted(Ire::new(sgd()?, cfg)?)?
        }
        Trajectory::AdamW => run
            .plain(AdamW::<B, T>::new(TRAJ_ADAMW)?)
            .map(|()| Vec::new())?,
        Trajectory::AdamWIre => {
            let schedule = KappaSchedule::ProportionalToLr { lr_max: traj.lr0() };
            let cfg = ire_config(plan, Estimator::SquaredGradient, schedule);
            run.boosted(Ire::new(AdamW::<B, T>::new(TRAJ_ADAMW)?, cfg)?)?
        }
        Trajectory::Sam => run.sam(Sam::new(sgd()?, sam_cfg)?).map(|()| Vec::new())?,
        Trajectory::SamIre => {
            let cfg = ire_config(plan, Estimator::SquaredGradient, constant);
            run.sam_boosted(Ire::new(Sam::new(sgd()?, sam_cfg)?, cfg)?)?
        }
        Trajectory::Asam => run.sam(Sam::new(sgd()?, asam_cfg)?).map(|()| Vec::new())?,
        Trajectory::AsamIre => {
            let cfg = ire_config(plan, Estimator::AbsGradient, constant);
            run.sam_boosted(Ire::new(Sam::new(sgd()?, asam_cfg)?, cfg)?)?
        }
    };
    run.finish(bytes)
}

// ------------------------------------------------------------------ backends and the run

/// The reference backend's results for one dtype over the whole plan, computed once and
/// compared with every backend (the backends are opened one after another).
struct Oracle<T> {
    /// Per size of the plan: the inputs, and each operation's result in [`Op::ALL`] order.
    /// Held for the whole run (about 1 GB at the full plan's sizes, against 0.4 GB when the
    /// reference was run again for each backend, which took a quarter longer).
    ops: Vec<(OpInputs<T>, Results<T>)>,
    /// The trajectories' problem.
    problem: Problem<T>,
    /// Each trajectory's result, in [`Trajectory::ALL`] order.
    trajectories: Results<T>,
}

/// The reference's results of a list of operations or trajectories.
type Results<T> = Vec<ire_core::Result<Out<T>>>;

impl<T: Scalar> Oracle<T> {
    fn new(plan: &Plan) -> Self {
        let ops = plan
            .sizes
            .iter()
            .map(|&n| {
                let x = OpInputs::<T>::new(n);
                let want = Op::ALL
                    .iter()
                    .map(|&op| run_op(&Reference, op, &x))
                    .collect();
                (x, want)
            })
            .collect();
        let problem = Problem::<T>::new(plan);
        let trajectories = Trajectory::ALL
            .iter()
            .map(|&traj| run_trajectory(&Reference, traj, &problem, plan))
            .collect();
        Oracle {
            ops,
            problem,
            trajectories,
        }
    }
}

/// The oracles of both floating-point dtypes.
struct Oracles {
    f32: Oracle<f32>,
    f64: Oracle<f64>,
}

/// A dtype the runner compares: picks its oracle.
trait Compared: Scalar {
    fn oracle(o: &Oracles) -> &Oracle<Self>;
}

impl Compared for f32 {
    fn oracle(o: &Oracles) -> &Oracle<f32> {
        &o.f32
    }
}

impl Compared for f64 {
    fn oracle(o: &Oracles) -> &Oracle<f64> {
        &o.f64
    }
}

/// Compares one backend with the reference over the whole plan (the [`NnTask`] the backend
/// selection runs on whichever backend it opens).
struct Compare<'a> {
    plan: &'a Plan,
    oracles: &'a Oracles,
    /// The backend's position in [`COMPARED`] (the rows' order).
    index: usize,
}

/// What one backend's comparison produced.
struct Comparison {
    name: String,
    description: String,
    notes: Vec<String>,
    table: Table,
}

impl NnTask for Compare<'_> {
    type Output = Result<Comparison, EquivError>;

    fn run<B: NnOps + 'static>(self, b: B) -> Result<Comparison, EquivError> {
        let mut out = Comparison {
            name: b.name().to_string(),
            description: describe(&b),
            notes: Vec::new(),
            table: Table::default(),
        };
        for dtype in [DType::F32, DType::F64] {
            if !b.supports_dtype(dtype) {
                out.notes.push(format!(
                    "{}: {} not supported by the device, its {} rows are skipped",
                    out.name,
                    dtype.name(),
                    dtype.name()
                ));
            }
        }
        run_dtype::<B, f32>(&b, self.index, self.plan, self.oracles, &mut out.table)?;
        run_dtype::<B, f64>(&b, self.index, self.plan, self.oracles, &mut out.table)?;
        Ok(out)
    }
}

/// One line about the device behind `b`.
fn describe<B: Backend + 'static>(b: &B) -> String {
    use std::any::Any;
    let any = b as &dyn Any;
    if let Some(c) = any.downcast_ref::<CpuBackend>() {
        return format!(
            "cpu ({} threads, {})",
            c.threads(),
            if c.wide_simd() { "AVX2" } else { "no AVX2" }
        );
    }
    #[cfg(feature = "opencl")]
    if let Some(c) = any.downcast_ref::<ire_backend_opencl::OpenClBackend>() {
        return format!("opencl ({})", c.runtime().info());
    }
    #[cfg(feature = "cuda")]
    if let Some(c) = any.downcast_ref::<ire_backend_cuda::CudaBackend>() {
        return format!(
            "cuda ({}, kernels for {})",
            c.runtime().info(),
            c.runtime().target()
        );
    }
    b.name().to_string()
}

/// Accumulates the rows, ordered by (operation or trajectory, dtype, backend).
#[derive(Default)]
struct Table {
    cells: BTreeMap<(usize, usize, usize), Row>,
}

impl Table {
    fn cell(
        &mut self,
        key: (usize, usize, usize),
        op: &str,
        dtype: DType,
        backend: &str,
        bound: Bound,
    ) -> &mut Row {
        self.cells.entry(key).or_insert_with(|| Row {
            op: op.to_string(),
            dtype,
            backend: backend.to_string(),
            oracle: "reference".to_string(),
            bound,
            diff: Diff::default(),
            error: None,
        })
    }

    /// Folds one case into the row: the backend's result against the reference's.
    fn record<T: Scalar>(
        row: &mut Row,
        want: &ire_core::Result<Out<T>>,
        got: impl FnOnce() -> ire_core::Result<Out<T>>,
        case: &str,
    ) {
        if row.error.is_some() {
            return; // one error per row is enough
        }
        match want {
            Err(e) => row.error = Some(format!("{case}: the reference failed: {e}")),
            Ok(want) => match got() {
                Ok(got) => row.diff.merge(got.compare(want, row.bound, case)),
                Err(e) => row.error = Some(format!("{case}: {e}")),
            },
        }
    }
}

fn dtype_index(d: DType) -> usize {
    match d {
        DType::F32 => 0,
        DType::F64 => 1,
        DType::U8 | DType::U32 => 2,
    }
}

fn run_dtype<B: Backend, T: Compared>(
    b: &B,
    bi: usize,
    plan: &Plan,
    oracles: &Oracles,
    table: &mut Table,
) -> Result<(), EquivError> {
    if !b.supports_dtype(T::DTYPE) {
        return Ok(());
    }
    let oracle = T::oracle(oracles);
    let name = b.name().to_string();
    let di = dtype_index(T::DTYPE);
    for (x, wants) in &oracle.ops {
        let case = format!("n = {}", x.n);
        for (oi, (&op, want)) in Op::ALL.iter().zip(wants).enumerate() {
            let bound = op.bound(T::DTYPE)?;
            let row = table.cell((oi, di, bi), op.name(), T::DTYPE, &name, bound);
            Table::record(row, want, || run_op(b, op, x), &case);
        }
    }
    let p = &oracle.problem;
    for (ti, (&traj, want)) in Trajectory::ALL.iter().zip(&oracle.trajectories).enumerate() {
        let bound = traj.bound(T::DTYPE, plan.steps)?;
        let case = format!("after {} steps", plan.steps);
        let key = (Op::ALL.len() + ti, di, bi);
        let row = table.cell(key, traj.name(), T::DTYPE, &name, bound);
        Table::record(row, want, || run_trajectory(b, traj, p, plan), &case);
    }
    Ok(())
}

/// Runs every operation and trajectory of `opts.plan` on the reference backend and on every
/// backend chosen, and returns the comparison.
///
/// `Err` only when the run cannot start (a backend asked for is missing, a device fails to
/// open); results out of tolerance, and backend calls that fail mid-run, are failed rows.
pub fn run(opts: &Options) -> Result<Report, EquivError> {
    let plan = &opts.plan;
    if plan.steps == 0 || plan.refresh_every == 0 {
        return Err(EquivError::Usage(
            "a plan needs at least one step and a refresh interval of at least 1".into(),
        ));
    }
    let mut report = Report {
        plan: Some(plan.clone()),
        ..Report::default()
    };
    let mut table = Table::default();
    let oracles = Oracles {
        f32: Oracle::new(plan),
        f64: Oracle::new(plan),
    };
    for (index, kind) in COMPARED.into_iter().enumerate() {
        let asked = match &opts.backends {
            None => false,
            Some(list) if list.contains(&kind) => true,
            Some(_) => continue,
        };
        let task = Compare {
            plan,
            oracles: &oracles,
            index,
        };
        let done = if asked {
            Some(run_on(kind, task).map_err(|e| {
                EquivError::Usage(format!("backend `{kind}` was asked for, but: {e}"))
            })?)
        } else {
            run_if_present(kind, task)?
        };
        match done {
            None => report.notes.push(format!(
                "{kind}: skipped, its device is absent or not compiled in"
            )),
            Some((_, compared)) => {
                let c = compared?;
                report.devices.push(c.description);
                report.notes.extend(c.notes);
                table.cells.extend(c.table.cells);
            }
        }
    }
    report.rows = table.cells.into_values().collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_lists_parse_and_bad_ones_are_errors() {
        assert!(matches!(
            parse_backends("cpu, OpenCL,cpu").as_deref(),
            Ok([BackendKind::Cpu, BackendKind::OpenCl])
        ));
        for bad in ["", "cpu,", "gpu", "reference", "cpu,,cuda"] {
            assert!(parse_backends(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_bound_comes_from_the_table() {
        for dtype in [DType::F32, DType::F64] {
            for op in Op::ALL {
                assert!(op.bound(dtype).is_ok());
            }
            for t in Trajectory::ALL {
                assert!(t.bound(dtype, 12).is_ok());
                assert!(t.bound(dtype, 50).is_ok());
            }
        }
        assert!(table_bound("no_such_op", DType::F32).is_err());
        let entry = |t: Trajectory, steps| match t.bound(DType::F32, steps) {
            Ok(Bound::Relative { entry, .. }) => entry,
            _ => "",
        };
        assert_eq!(
            entry(Trajectory::AsamIre, CONFORMANCE_SAM_STEPS),
            "sam_trajectory"
        );
        assert_eq!(entry(Trajectory::Sam, 50), LONG_SAM_TRAJECTORY.op);
        assert_eq!(
            Trajectory::AdamWIre.bound(DType::F64, 50).ok(),
            Some(Bound::Bitwise)
        );
        assert_eq!(
            Op::SumSquares.bound(DType::F64).ok(),
            Some(Bound::Relative {
                rel: 5e-15,
                entry: "sum_squares"
            })
        );
    }

    #[test]
    fn inputs_are_deterministic_and_cover_the_edge_cases() {
        let a = OpInputs::<f32>::new(1000);
        let b = OpInputs::<f32>::new(1000);
        assert_eq!(a.v1, b.v1);
        assert_eq!(a.ks, b.ks);
        assert!(a.non_finite.iter().any(|x| x.is_nan()));
        assert!(a.non_finite.iter().any(|x| x.is_infinite()));
        let empty = OpInputs::<f64>::new(0);
        assert_eq!(empty.ks.first(), Some(&1));
        assert_eq!(empty.ks.last(), Some(&258));
    }
}

//! The toy problem of the paper's Figure 1: `L(u, v) = (1 + u²) v² / 2`.
//!
//! Its minima are the line `v = 0`; the curvature there is `1 + u²`, so the flattest minimum is
//! `u = 0`. Gradient descent drifts slowly toward it along `u`; IRE boosts the step along the
//! flat direction `u` (mask `(1, 0)`) and drifts `(1 + κ)` times faster. The optimizers run on
//! any [`Backend`] through `ire-core`'s [`Sgd`] and [`Ire`], in `f64`.
//!
//! [`run_with`] hands every point to a visitor as it is computed and keeps only the last one,
//! so a run of any length takes constant memory; [`run`] collects the points (its memory is
//! checked first).

use std::sync::atomic::{AtomicBool, Ordering};

use ire_backend_cpu::projector::{ExactProjector, symmetric_eigen};
use ire_core::optim::{Estimator, Optimizer};
use ire_core::{Backend, Error, Ire, IreConfig, IreStep, Result, Sgd, SgdConfig};

/// Start of every run, as in the paper.
pub const START: (f64, f64) = (1.0, 0.01);

/// A coordinate beyond this magnitude (or a non-finite one) means the run diverged: the
/// problem lives in `|u|, |v| ≤ 1`, so `1e6` leaves no doubt.
pub const DIVERGENCE_BOUND: f64 = 1e6;

/// Which method runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ToyMethod {
    /// Plain gradient descent.
    Gd,
    /// Practical IRE: the base GD step boosted by `(1 + κ)` along the coordinate mask `(1, 0)`.
    IreDiagonal {
        /// κ.
        kappa: f64,
    },
    /// Theoretical IRE: `θ ← θ − η (g + κ P g)`, `P` the projector onto the eigenvector of the
    /// smaller eigenvalue of the local Hessian, recomputed at every step.
    IreExact {
        /// κ.
        kappa: f64,
    },
}

/// One point of a trajectory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ToyPoint {
    /// Steps taken (0 = the start).
    pub step: u64,
    /// `u`.
    pub u: f64,
    /// `v`.
    pub v: f64,
}

/// What can stop a toy run.
#[derive(Debug, thiserror::Error)]
pub enum ToyError {
    /// An optimizer or backend problem.
    #[error(transparent)]
    Core(#[from] Error),
    /// The trajectory would not fit in memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// The visitor could not take a point (e.g. writing it to a file failed).
    #[error("writing the trajectory failed: {0}")]
    Output(#[source] std::io::Error),
}

/// How a streamed run ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ToyEnd {
    /// The last finite point reached.
    pub last: ToyPoint,
    /// `Some(step)` when the run diverged at that step.
    pub diverged_at: Option<u64>,
    /// Whether the stop flag ended the run before its last step.
    pub interrupted: bool,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct ToyRun {
    /// Every point, from the start to the last finite one.
    pub path: Vec<ToyPoint>,
    /// `Some(step)` when the run diverged at that step (then `path` stops before it).
    pub diverged_at: Option<u64>,
}

impl ToyRun {
    /// The last point reached.
    pub fn last(&self) -> ToyPoint {
        self.path.last().copied().unwrap_or(ToyPoint {
            step: 0,
            u: START.0,
            v: START.1,
        })
    }
}

/// `∇L(u, v) = (u v², (1 + u²) v)`.
pub fn gradient(u: f64, v: f64) -> [f64; 2] {
    [u * v * v, (1.0 + u * u) * v]
}

/// `∇²L(u, v) = [[v², 2uv], [2uv, 1 + u²]]`, row-major.
pub fn hessian(u: f64, v: f64) -> [f64; 4] {
    [v * v, 2.0 * u * v, 2.0 * u * v, 1.0 + u * u]
}

/// The sharp direction of the local Hessian (the eigenvector of its larger eigenvalue).
pub type SharpDirection = fn(&[f64; 4]) -> Result<[f64; 2]>;

/// The sharp direction by the crate's own Jacobi eigen-solver.
pub fn sharp_direction_jacobi(h: &[f64; 4]) -> Result<[f64; 2]> {
    let (_, rows) = symmetric_eigen(h, 2)?;
    Ok([rows[2], rows[3]])
}

/// Runs `steps` steps of `method` at learning rate `lr` on backend `b`, collecting every point.
///
/// `sharp` picks the eigen-solver of the exact projector (ignored by the other methods). The
/// points' memory is checked against [`crate::memory::limit`] first: a long run is for
/// [`run_with`].
pub fn run<B: Backend>(
    b: &B,
    method: ToyMethod,
    lr: f64,
    steps: u64,
    sharp: SharpDirection,
) -> Result<ToyRun, ToyError> {
    let n = usize::try_from(steps.saturating_add(1)).unwrap_or(usize::MAX);
    let mut path = crate::memory::try_vec(n, || {
        format!("a trajectory of {steps} steps (use a streaming run for long ones)")
    })?;
    let end = run_with(b, method, lr, steps, sharp, &AtomicBool::new(false), |p| {
        path.push(p);
        Ok(())
    })?;
    Ok(ToyRun {
        path,
        diverged_at: end.diverged_at,
    })
}

/// Runs like [`run`], handing each point (the start included) to `visit` as it is computed
/// instead of keeping it; stops early, with `interrupted`, once `stop` is set.
pub fn run_with<B: Backend>(
    b: &B,
    method: ToyMethod,
    lr: f64,
    steps: u64,
    sharp: SharpDirection,
    stop: &AtomicBool,
    mut visit: impl FnMut(ToyPoint) -> std::io::Result<()>,
) -> Result<ToyEnd, ToyError> {
    let mut last = ToyPoint {
        step: 0,
        u: START.0,
        v: START.1,
    };
    visit(last).map_err(ToyError::Output)?;
    let mut theta = vec![b.alloc_from(&[START.0, START.1])?];
    let mut grad = vec![b.alloc::<f64>(2)?];
    let mut sgd = Sgd::<B, f64>::new(SgdConfig::default())?;
    let mut ire = match method {
        ToyMethod::IreDiagonal { kappa } => {
            let cfg = IreConfig {
                kappa,
                estimator: Estimator::Manual,
                ..IreConfig::default()
            };
            let mut ire = Ire::new(Sgd::<B, f64>::new(SgdConfig::default())?, cfg)?;
            ire.set_mask(b, &theta, &[&[1, 0]])?;
            Some(ire)
        }
        _ => None,
    };
    let mut host = [START.0, START.1];
    for step in 1..=steps {
        if stop.load(Ordering::Relaxed) {
            return Ok(ToyEnd {
                last,
                diverged_at: None,
                interrupted: true,
            });
        }
        let [u, v] = host;
        let g = gradient(u, v);
        match method {
            ToyMethod::Gd => {
                b.upload(&mut grad[0], &g)?;
                sgd.step(b, &mut theta, &grad, lr)?;
                b.download(&theta[0], &mut host)?;
            }
            ToyMethod::IreDiagonal { .. } => {
                b.upload(&mut grad[0], &g)?;
                if let Some(ire) = ire.as_mut() {
                    ire.step(b, &mut theta, &grad, IreStep::lr(lr))?;
                }
                b.download(&theta[0], &mut host)?;
            }
            ToyMethod::IreExact { kappa } => {
                let s = sharp(&hessian(u, v))?;
                let p = ExactProjector::from_sharp_basis(2, s.to_vec())?;
                p.ire_step(&mut host, &g, lr, kappa)?;
            }
        }
        let [u, v] = host;
        if !(u.is_finite() && v.is_finite())
            || u.abs() > DIVERGENCE_BOUND
            || v.abs() > DIVERGENCE_BOUND
        {
            return Ok(ToyEnd {
                last,
                diverged_at: Some(step),
                interrupted: false,
            });
        }
        last = ToyPoint { step, u, v };
        visit(last).map_err(ToyError::Output)?;
    }
    Ok(ToyEnd {
        last,
        diverged_at: None,
        interrupted: false,
    })
}

/// Checks the command-line numbers of a toy run.
pub fn validate(lr: f64, kappa: f64) -> Result<()> {
    if !(lr.is_finite() && lr > 0.0) {
        return Err(Error::InvalidHyperParameter {
            field: "lr",
            value: lr,
            allowed: "> 0, finite",
        });
    }
    if !(kappa.is_finite() && kappa >= 0.0) {
        return Err(Error::InvalidHyperParameter {
            field: "kappa",
            value: kappa,
            allowed: ">= 0, finite",
        });
    }
    Ok(())
}

//! The sharpness meter (IRE-SPEC §5): the trace of the Hessian by Hutchinson's estimator and
//! its top eigenvalues by power iteration or Lanczos, all from Hessian-vector products taken
//! by a central finite difference of gradients,
//!
//! ```text
//! H v ≈ (∇L(θ + ε v) − ∇L(θ − ε v)) / 2ε.
//! ```
//!
//! Everything here works on host vectors in f64 and asks only for a gradient: a
//! [`GradientOracle`]. Three come ready: [`TrainerOracle`] (a [`Trainer`]'s mean training loss
//! over a fixed set of batches, f32 underneath), [`FnOracle`] (any closure) and, through the
//! blanket implementation, `&mut` of either. The eigen-solvers are written against the smaller
//! [`SymmetricOperator`] interface, of which [`FdHessian`] is the finite-difference instance, so
//! they also run on an exact operator.
//!
//! # The finite-difference step
//!
//! The central difference has a truncation error `O(ε² ‖v‖³ ‖∇³L‖)` and a rounding error
//! `O(u ‖∇L‖ / ε)`, where `u` is the unit roundoff of the arithmetic the gradient is computed in
//! ([`GradientOracle::unit_roundoff`]); the two balance at `ε‖v‖ ∝ u^{1/3}`. Measuring the
//! step against the size of the parameters, as Jacobian-free Newton–Krylov methods do, the
//! default is
//!
//! ```text
//! ε = u^{1/3} (1 + ‖θ‖) / ‖v‖,
//! ```
//!
//! so the perturbation `ε v` has length `u^{1/3} (1 + ‖θ‖)`: about `5·10⁻⁶ (1 + ‖θ‖)` in f64 and
//! `4·10⁻³ (1 + ‖θ‖)` in f32. For a Rademacher probe (`‖v‖ = √n`) every coordinate then moves
//! by `u^{1/3}` times the root-mean-square parameter (plus `u^{1/3}/√n`), far above the f32
//! spacing of the parameters themselves, so rounding `θ ± ε v` to f32 perturbs the product only
//! in the fifth significant digit. See [`default_eps`].
//!
//! # Cost
//!
//! One Hessian-vector product is two gradients. Hutchinson with `p` probes costs `2p`
//! gradients; Lanczos with `m` steps `2m` gradients and `m` stored vectors of the parameter
//! count (full reorthogonalization); power iteration `2` gradients per iteration.

use std::fmt;

use serde::Serialize;

use crate::nn::NnOps;
use crate::rng::Rng;
use crate::train::{TrainError, Trainer};

/// Why a sharpness measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum SharpnessError {
    /// The trainer could not evaluate the loss or its gradient.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// A backend or linear-algebra problem.
    #[error(transparent)]
    Core(#[from] ire_core::Error),
    /// A vector of the wrong length.
    #[error("{what}: expected {expected} values, got {got}")]
    DimensionMismatch {
        /// Which vector.
        what: &'static str,
        /// The oracle's dimension.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A non-finite value (NaN or infinity) in an input or in a gradient.
    #[error("{what} is not finite")]
    NonFinite {
        /// What, and where.
        what: String,
    },
    /// Hutchinson's estimator was asked for zero probes.
    #[error("the Hutchinson trace needs at least one probe")]
    ZeroProbes,
    /// More Lanczos steps than the Krylov space has dimensions: the run could never use them.
    #[error(
        "lanczos_steps = {steps} is more than the {params} parameters of the model (Lanczos \
         spans at most one dimension per step); give at most {params}"
    )]
    TooManyLanczosSteps {
        /// The steps asked for.
        steps: usize,
        /// The parameter count.
        params: usize,
    },
    /// The Lanczos vectors would not fit in memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// Another argument out of its range.
    #[error("{name} = {value}: expected {expected}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// Its value.
        value: String,
        /// The accepted range.
        expected: &'static str,
    },
}

/// Result of the sharpness meter.
pub type Result<T> = std::result::Result<T, SharpnessError>;

/// Unit roundoff of f64 arithmetic, `2⁻⁵³`.
pub const F64_UNIT_ROUNDOFF: f64 = f64::EPSILON / 2.0;
/// Unit roundoff of f32 arithmetic, `2⁻²⁴`.
pub const F32_UNIT_ROUNDOFF: f64 = f32::EPSILON as f64 / 2.0;
/// How many of the largest Ritz values [`measure`] reports.
pub const TOP_K: usize = 5;

// Stream identifiers of the derived random generators (one per use of the seed).
const HUTCHINSON_STREAM: u64 = 0x4855_5443;
const POWER_STREAM: u64 = 0x504F_5752;
const LANCZOS_STREAM: u64 = 0x4C41_4E43;

/// A source of gradients of a scalar loss `L: ℝⁿ → ℝ`.
///
/// `grad` must be a deterministic function of `theta` (no dropout, no data shuffling, no
/// batch-statistics updates): finite differences of a noisy gradient measure the noise.
pub trait GradientOracle {
    /// The number of parameters `n`.
    fn dim(&self) -> usize;

    /// `∇L(theta)`, `n` values.
    fn grad(&mut self, theta: &[f64]) -> Result<Vec<f64>>;

    /// The unit roundoff of the arithmetic the gradient is computed in, which sets the default
    /// finite-difference step ([`default_eps`]); f64 unless overridden.
    fn unit_roundoff(&self) -> f64 {
        F64_UNIT_ROUNDOFF
    }
}

impl<O: GradientOracle + ?Sized> GradientOracle for &mut O {
    fn dim(&self) -> usize {
        (**self).dim()
    }

    fn grad(&mut self, theta: &[f64]) -> Result<Vec<f64>> {
        (**self).grad(theta)
    }

    fn unit_roundoff(&self) -> f64 {
        (**self).unit_roundoff()
    }
}

/// A [`GradientOracle`] from a closure `theta ↦ Result<∇L(theta)>`.
pub struct FnOracle<F> {
    dim: usize,
    f: F,
    roundoff: f64,
}

impl<F: FnMut(&[f64]) -> Result<Vec<f64>>> FnOracle<F> {
    /// An oracle of dimension `dim` whose gradients come from `f` (computed in f64).
    pub fn new(dim: usize, f: F) -> Self {
        FnOracle {
            dim,
            f,
            roundoff: F64_UNIT_ROUNDOFF,
        }
    }

    /// Declares the unit roundoff of `f`'s arithmetic (e.g. [`F32_UNIT_ROUNDOFF`] when it
    /// computes in f32), which sets the default finite-difference step.
    pub fn with_unit_roundoff(mut self, roundoff: f64) -> Self {
        self.roundoff = roundoff;
        self
    }
}

/// A [`GradientOracle`] from an infallible closure `theta ↦ ∇L(theta)` computed in f64.
pub fn from_fn(
    dim: usize,
    mut f: impl FnMut(&[f64]) -> Vec<f64>,
) -> FnOracle<impl FnMut(&[f64]) -> Result<Vec<f64>>> {
    FnOracle::new(dim, move |theta: &[f64]| Ok(f(theta)))
}

impl<F: FnMut(&[f64]) -> Result<Vec<f64>>> GradientOracle for FnOracle<F> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn grad(&mut self, theta: &[f64]) -> Result<Vec<f64>> {
        (self.f)(theta)
    }

    fn unit_roundoff(&self) -> f64 {
        self.roundoff
    }
}

/// The gradient of a [`Trainer`]'s mean training loss over its first `batches` training
/// batches (fixed order, no augmentation, batch norm on batch statistics without updating the
/// running ones: [`Trainer::loss_grad_at`]).
///
/// The trainer computes in f32: `theta` is rounded to f32 and the gradient carries f32
/// rounding, so Hessian-vector products by finite differences have a relative error of order
/// `u^{2/3} ≈ 10⁻⁵` at the default step, with `u = 2⁻²⁴` ([`F32_UNIT_ROUNDOFF`], reported by
/// [`GradientOracle::unit_roundoff`]). The trainer's own parameters are left unchanged.
pub struct TrainerOracle<'t, B: NnOps + 'static> {
    trainer: &'t mut Trainer<B>,
    batches: usize,
    evaluations: usize,
}

impl<'t, B: NnOps + 'static> TrainerOracle<'t, B> {
    /// The oracle of `trainer`'s loss over its first `batches` batches (at least one; at most
    /// one epoch's worth are used).
    pub fn new(trainer: &'t mut Trainer<B>, batches: usize) -> Result<Self> {
        if batches == 0 {
            return Err(SharpnessError::InvalidArgument {
                name: "batches",
                value: "0".into(),
                expected: ">= 1",
            });
        }
        Ok(TrainerOracle {
            trainer,
            batches,
            evaluations: 0,
        })
    }

    /// The mean loss and its gradient at `theta`.
    pub fn loss_and_grad(&mut self, theta: &[f64]) -> Result<(f64, Vec<f64>)> {
        check_vec("parameters", theta, self.dim())?;
        let t32: Vec<f32> = theta.iter().map(|&x| x as f32).collect();
        let (loss, g) = self.trainer.loss_grad_at(&t32, self.batches)?;
        self.evaluations += 1;
        if !loss.is_finite() {
            return Err(SharpnessError::NonFinite {
                what: format!("training loss ({loss})"),
            });
        }
        Ok((loss, g.into_iter().map(f64::from).collect()))
    }

    /// Gradient evaluations so far.
    pub fn evaluations(&self) -> usize {
        self.evaluations
    }
}

impl<B: NnOps + 'static> GradientOracle for TrainerOracle<'_, B> {
    fn dim(&self) -> usize {
        self.trainer.param_count()
    }

    fn grad(&mut self, theta: &[f64]) -> Result<Vec<f64>> {
        Ok(self.loss_and_grad(theta)?.1)
    }

    fn unit_roundoff(&self) -> f64 {
        F32_UNIT_ROUNDOFF
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// `y ← y + a x`.
fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Checks length and finiteness of an input vector.
fn check_vec(what: &'static str, v: &[f64], dim: usize) -> Result<()> {
    if v.len() != dim {
        return Err(SharpnessError::DimensionMismatch {
            what,
            expected: dim,
            got: v.len(),
        });
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(SharpnessError::NonFinite {
            what: format!("{what}[{i}] ({})", v[i]),
        });
    }
    Ok(())
}

/// The oracle's gradient, checked for length and finiteness.
fn checked_grad<O: GradientOracle + ?Sized>(oracle: &mut O, theta: &[f64]) -> Result<Vec<f64>> {
    let g = oracle.grad(theta)?;
    check_vec("gradient", &g, oracle.dim())?;
    Ok(g)
}

fn check_eps(eps: f64) -> Result<()> {
    if eps > 0.0 && eps.is_finite() {
        Ok(())
    } else {
        Err(SharpnessError::InvalidArgument {
            name: "eps",
            value: eps.to_string(),
            expected: "> 0, finite",
        })
    }
}

/// The default finite-difference step of [`hvp_central`]: `u^{1/3} (1 + ‖θ‖) / ‖v‖`, where
/// `u` is the gradient's unit roundoff (see the module documentation); `0` when `v = 0`.
pub fn default_eps(theta: &[f64], v: &[f64], unit_roundoff: f64) -> f64 {
    let vn = norm(v);
    if vn == 0.0 {
        return 0.0;
    }
    unit_roundoff.cbrt() * (1.0 + norm(theta)) / vn
}

/// The Hessian-vector product `H(θ) v ≈ (∇L(θ + ε v) − ∇L(θ − ε v)) / 2ε` (IRE-SPEC §5); exact
/// up to rounding for a quadratic loss. `eps = None` takes [`default_eps`] for the oracle's
/// unit roundoff. `v = 0` gives `0` without calling the oracle.
pub fn hvp_central<O: GradientOracle + ?Sized>(
    oracle: &mut O,
    theta: &[f64],
    v: &[f64],
    eps: Option<f64>,
) -> Result<Vec<f64>> {
    let n = oracle.dim();
    check_vec("parameters", theta, n)?;
    check_vec("direction", v, n)?;
    hvp_unchecked(oracle, theta, v, eps)
}

/// [`hvp_central`] once `theta` and `v` are known to be of the right length and finite.
fn hvp_unchecked<O: GradientOracle + ?Sized>(
    oracle: &mut O,
    theta: &[f64],
    v: &[f64],
    eps: Option<f64>,
) -> Result<Vec<f64>> {
    if v.iter().all(|&x| x == 0.0) {
        return Ok(vec![0.0; v.len()]);
    }
    let eps = match eps {
        Some(e) => e,
        None => default_eps(theta, v, oracle.unit_roundoff()),
    };
    check_eps(eps)?;
    let shifted = |s: f64| -> Vec<f64> { theta.iter().zip(v).map(|(t, d)| t + s * d).collect() };
    let gp = checked_grad(oracle, &shifted(eps))?;
    let gm = checked_grad(oracle, &shifted(-eps))?;
    let inv = 0.5 / eps;
    Ok(gp.iter().zip(&gm).map(|(p, m)| (p - m) * inv).collect())
}

/// A symmetric linear operator on `ℝⁿ`, applied to host vectors: what the eigen-solvers and
/// the trace estimator need of a Hessian.
pub trait SymmetricOperator {
    /// `n`.
    fn dim(&self) -> usize;
    /// `A v`.
    fn apply(&mut self, v: &[f64]) -> Result<Vec<f64>>;
}

/// The Hessian of an oracle's loss at fixed parameters, applied by [`hvp_central`].
pub struct FdHessian<'a, O: GradientOracle + ?Sized> {
    oracle: &'a mut O,
    theta: &'a [f64],
    eps: Option<f64>,
    products: usize,
}

impl<'a, O: GradientOracle + ?Sized> FdHessian<'a, O> {
    /// The Hessian at `theta` with step `eps` (`None`: [`default_eps`] for each vector).
    pub fn new(oracle: &'a mut O, theta: &'a [f64], eps: Option<f64>) -> Result<Self> {
        check_vec("parameters", theta, oracle.dim())?;
        if let Some(e) = eps {
            check_eps(e)?;
        }
        Ok(FdHessian {
            oracle,
            theta,
            eps,
            products: 0,
        })
    }

    /// Hessian-vector products taken so far (two gradients each, except for `v = 0`).
    pub fn products(&self) -> usize {
        self.products
    }
}

impl<O: GradientOracle + ?Sized> SymmetricOperator for FdHessian<'_, O> {
    fn dim(&self) -> usize {
        self.oracle.dim()
    }

    fn apply(&mut self, v: &[f64]) -> Result<Vec<f64>> {
        check_vec("direction", v, self.oracle.dim())?;
        self.products += 1;
        hvp_unchecked(self.oracle, self.theta, v, self.eps)
    }
}

/// `A v`, checked for length and finiteness.
fn checked_apply<S: SymmetricOperator + ?Sized>(op: &mut S, v: &[f64]) -> Result<Vec<f64>> {
    let w = op.apply(v)?;
    check_vec("operator product", &w, op.dim())?;
    Ok(w)
}

fn nonempty<S: SymmetricOperator + ?Sized>(op: &S) -> Result<usize> {
    match op.dim() {
        0 => Err(SharpnessError::InvalidArgument {
            name: "dimension",
            value: "0".into(),
            expected: ">= 1",
        }),
        n => Ok(n),
    }
}

/// Hutchinson's estimate of a trace, with its sampling uncertainty.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceEstimate {
    /// The estimate: the mean of the samples.
    pub mean: f64,
    /// Its standard error: the sample standard deviation (denominator `probes − 1`) over
    /// `√probes`; NaN for a single probe.
    pub std_error: f64,
    /// The number of probes.
    pub probes: usize,
    /// `zᵀ H z` for each probe `z`, in order.
    pub samples: Vec<f64>,
}

impl TraceEstimate {
    /// The estimate from per-probe samples (at least one, all finite).
    pub fn from_samples(samples: Vec<f64>) -> Result<Self> {
        let p = samples.len();
        if p == 0 {
            return Err(SharpnessError::ZeroProbes);
        }
        if let Some(i) = samples.iter().position(|x| !x.is_finite()) {
            return Err(SharpnessError::NonFinite {
                what: format!("Hutchinson sample {i} ({})", samples[i]),
            });
        }
        let mean = samples.iter().sum::<f64>() / p as f64;
        let std_error = if p > 1 {
            let var = samples.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (p - 1) as f64;
            (var / p as f64).sqrt()
        } else {
            f64::NAN
        };
        Ok(TraceEstimate {
            mean,
            std_error,
            probes: p,
            samples,
        })
    }
}

/// The Rademacher vector (entries ±1 with equal probability) of probe `index` for `seed`.
/// Each probe has its own derived generator, so the first `p` probes are the same whatever
/// the total.
pub fn rademacher(n: usize, seed: u64, index: u64) -> Vec<f64> {
    let mut rng = Rng::derive(seed, HUTCHINSON_STREAM, index);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let bits = rng.next_u64();
        let take = (n - out.len()).min(64);
        out.extend((0..take).map(|k| if (bits >> k) & 1 == 1 { 1.0 } else { -1.0 }));
    }
    out
}

/// Hutchinson's trace estimate `Tr(A) ≈ mean_z zᵀ A z` over `probes` Rademacher vectors drawn
/// from `seed` ([`rademacher`]). For Rademacher probes `Var(zᵀAz) = 2 Σ_{i≠j} A_ij²`.
pub fn hutchinson_trace_op<S: SymmetricOperator + ?Sized>(
    op: &mut S,
    probes: usize,
    seed: u64,
) -> Result<TraceEstimate> {
    if probes == 0 {
        return Err(SharpnessError::ZeroProbes);
    }
    let n = nonempty(op)?;
    let samples = (0..probes)
        .map(|i| {
            let z = rademacher(n, seed, i as u64);
            let hz = checked_apply(op, &z)?;
            Ok(dot(&z, &hz))
        })
        .collect::<Result<Vec<f64>>>()?;
    TraceEstimate::from_samples(samples)
}

/// Hutchinson's estimate of `Tr(∇²L(θ))` with `probes` Rademacher vectors from `seed`, each
/// `zᵀ H z` from one [`hvp_central`] with step `eps` (`None`: [`default_eps`]). Costs
/// `2 · probes` gradients.
pub fn hutchinson_trace<O: GradientOracle + ?Sized>(
    oracle: &mut O,
    theta: &[f64],
    probes: usize,
    seed: u64,
    eps: Option<f64>,
) -> Result<TraceEstimate> {
    if probes == 0 {
        return Err(SharpnessError::ZeroProbes);
    }
    hutchinson_trace_op(&mut FdHessian::new(oracle, theta, eps)?, probes, seed)
}

/// An eigenvalue estimate and its unit eigenvector.
#[derive(Clone, Debug, PartialEq)]
pub struct Eigen {
    /// The eigenvalue: the Rayleigh quotient `vᵀ A v` of `vector`.
    pub value: f64,
    /// The unit eigenvector estimate.
    pub vector: Vec<f64>,
    /// Operator applications made.
    pub iterations: usize,
    /// Whether the stopping rule was met before the iteration limit.
    pub converged: bool,
}

fn random_unit(n: usize, seed: u64, stream: u64) -> Vec<f64> {
    let mut rng = Rng::derive(seed, stream, 0);
    loop {
        let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let vn = norm(&v);
        if vn > 0.0 {
            return v.into_iter().map(|x| x / vn).collect();
        }
    }
}

fn check_count(name: &'static str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(SharpnessError::InvalidArgument {
            name,
            value: "0".into(),
            expected: ">= 1",
        });
    }
    Ok(())
}

/// Power iteration `v ← A v / ‖A v‖` from a random unit vector drawn from `seed`, for at most
/// `iters` products; stops when the Rayleigh quotient changes by at most `tol` relative
/// (`tol = 0`: run all `iters`).
///
/// It finds the eigenvalue of largest MAGNITUDE (with its sign): `λ_max` of a Hessian whose
/// positive curvature dominates, as near a minimum. Convergence is geometric with ratio
/// `(λ₂/λ₁)²` for the value; a nearly repeated top eigenvalue converges slowly (Lanczos,
/// [`lanczos_op`], needs far fewer products for the same accuracy). If `A v = 0` the
/// iteration stops with the value `0`.
pub fn power_iteration_op<S: SymmetricOperator + ?Sized>(
    op: &mut S,
    iters: usize,
    tol: f64,
    seed: u64,
) -> Result<Eigen> {
    check_count("iters", iters)?;
    if !(tol >= 0.0 && tol.is_finite()) {
        return Err(SharpnessError::InvalidArgument {
            name: "tol",
            value: tol.to_string(),
            expected: ">= 0, finite",
        });
    }
    let n = nonempty(op)?;
    let mut v = random_unit(n, seed, POWER_STREAM);
    let mut prev = f64::NAN;
    let mut k = 0;
    loop {
        k += 1;
        let w = checked_apply(op, &v)?;
        let value = dot(&v, &w);
        let wn = norm(&w);
        let converged = wn == 0.0 || (value - prev).abs() <= tol * value.abs();
        if converged || k >= iters {
            return Ok(Eigen {
                value,
                vector: v,
                iterations: k,
                converged,
            });
        }
        prev = value;
        v = w.into_iter().map(|x| x / wn).collect();
    }
}

/// `λ_max` of `∇²L(θ)` by power iteration ([`power_iteration_op`]) on finite-difference
/// Hessian-vector products at the default step; `2` gradients per iteration.
pub fn power_iteration<O: GradientOracle + ?Sized>(
    oracle: &mut O,
    theta: &[f64],
    iters: usize,
    tol: f64,
    seed: u64,
) -> Result<Eigen> {
    power_iteration_op(&mut FdHessian::new(oracle, theta, None)?, iters, tol, seed)
}

/// What a Lanczos run found.
#[derive(Clone, Debug, PartialEq)]
pub struct LanczosResult {
    /// Every Ritz value (eigenvalue of the tridiagonal matrix), largest first.
    pub ritz: Vec<f64>,
    /// The diagonal `α` of the tridiagonal matrix.
    pub alpha: Vec<f64>,
    /// Its off-diagonal `β` (one shorter than `alpha`).
    pub beta: Vec<f64>,
    /// Whether the Krylov space is invariant (it became so before the requested steps, or the
    /// run spanned all `n` dimensions): the Ritz values are then eigenvalues, up to the
    /// operator's own error.
    pub invariant: bool,
}

impl LanczosResult {
    /// Steps taken (the size of the tridiagonal matrix).
    pub fn steps(&self) -> usize {
        self.alpha.len()
    }
}

/// Relative size of `β` below which the Krylov space counts as invariant.
const BREAKDOWN: f64 = 1e-12;

/// Lanczos with full reorthogonalization: `min(steps, n)` steps from a random unit vector
/// drawn from `seed`, building the tridiagonal `T = Qᵀ A Q` whose eigenvalues (Ritz values) are
/// computed by cyclic Jacobi ([`ire_backend_cpu::projector::symmetric_eigen`]; `T` is small).
///
/// Each new vector is orthogonalized against ALL previous ones, twice (classical Gram–Schmidt
/// repeated, which restores orthogonality to working precision), so no spurious copies of
/// converged eigenvalues appear; the price is `steps` stored vectors of length `n`. The
/// extreme Ritz values converge first: `ritz[0] ≤ λ_max`, approaching it from below (exactly so
/// for an exact symmetric operator; a finite-difference one adds its own small error).
pub fn lanczos_op<S: SymmetricOperator + ?Sized>(
    op: &mut S,
    steps: usize,
    seed: u64,
) -> Result<LanczosResult> {
    check_count("steps", steps)?;
    let n = nonempty(op)?;
    let m = steps.min(n);
    let mut qs: Vec<Vec<f64>> = vec![random_unit(n, seed, LANCZOS_STREAM)];
    let (mut alpha, mut beta): (Vec<f64>, Vec<f64>) =
        (Vec::with_capacity(m), Vec::with_capacity(m));
    let mut scale = 0.0f64;
    let mut invariant = false;
    for j in 0..m {
        let mut w = checked_apply(op, &qs[j])?;
        let a = dot(&qs[j], &w);
        alpha.push(a);
        if j + 1 == m {
            break;
        }
        axpy(&mut w, -a, &qs[j]);
        if j > 0 {
            axpy(&mut w, -beta[j - 1], &qs[j - 1]);
        }
        for _ in 0..2 {
            for q in &qs {
                let c = dot(q, &w);
                axpy(&mut w, -c, q);
            }
        }
        let b = norm(&w);
        scale = scale.max(a.abs()).max(b);
        if b <= BREAKDOWN * scale {
            invariant = true;
            break;
        }
        beta.push(b);
        qs.push(w.into_iter().map(|x| x / b).collect());
    }
    let k = alpha.len();
    let mut t = vec![0.0; k * k];
    for i in 0..k {
        t[i * k + i] = alpha[i];
        if i + 1 < k {
            t[i * k + i + 1] = beta[i];
            t[(i + 1) * k + i] = beta[i];
        }
    }
    let (mut ritz, _) = ire_backend_cpu::projector::symmetric_eigen(&t, k)?;
    ritz.reverse();
    Ok(LanczosResult {
        ritz,
        alpha,
        beta,
        invariant: invariant || k == n,
    })
}

/// The `k` largest eigenvalues of `∇²L(θ)` (at most `k`: fewer when the Lanczos run is
/// shorter), largest first, by [`lanczos_op`] with `steps` steps on finite-difference
/// Hessian-vector products at the default step; `2 · steps` gradients. The top Ritz values
/// are accurate once `steps` is a few times `k` and the top of the spectrum is separated.
pub fn lanczos_top<O: GradientOracle + ?Sized>(
    oracle: &mut O,
    theta: &[f64],
    k: usize,
    steps: usize,
    seed: u64,
) -> Result<Vec<f64>> {
    check_count("k", k)?;
    let mut ritz = lanczos_op(&mut FdHessian::new(oracle, theta, None)?, steps, seed)?.ritz;
    ritz.truncate(k);
    Ok(ritz)
}

/// The sharpness of a trainer's loss at its current parameters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SharpnessReport {
    /// The mean training loss over the batches measured.
    pub loss: f64,
    /// Hutchinson's estimate of `Tr(∇²L)`.
    pub trace: TraceEstimate,
    /// The largest eigenvalue: the top Lanczos Ritz value.
    pub lambda_max: f64,
    /// The largest Ritz values (at most [`TOP_K`]), largest first.
    pub top: Vec<f64>,
    /// The number of parameters.
    pub params: usize,
}

/// Measures `trainer`'s loss at its current parameters over its first `batches` training
/// batches (see [`TrainerOracle`]): the loss, Hutchinson's trace with `probes` probes and its
/// standard error, and the top [`TOP_K`] eigenvalues by Lanczos with `lanczos_steps` steps
/// (`λ_max` is the first), all with the default finite-difference step. The trace probes and
/// the Lanczos start vector are derived from `seed`. Costs `1 + 2 (probes + lanczos_steps)`
/// gradient evaluations; the trainer's parameters and state are unchanged.
pub fn measure<B: NnOps + 'static>(
    trainer: &mut Trainer<B>,
    batches: usize,
    probes: usize,
    lanczos_steps: usize,
    seed: u64,
) -> Result<SharpnessReport> {
    if probes == 0 {
        return Err(SharpnessError::ZeroProbes);
    }
    check_count("lanczos_steps", lanczos_steps)?;
    let theta: Vec<f64> = trainer.params_host()?.into_iter().map(f64::from).collect();
    let mut oracle = TrainerOracle::new(trainer, batches)?;
    let params = oracle.dim();
    if lanczos_steps > params {
        return Err(SharpnessError::TooManyLanczosSteps {
            steps: lanczos_steps,
            params,
        });
    }
    // Lanczos keeps one f64 vector per step (full reorthogonalization).
    crate::memory::check(
        || format!("{lanczos_steps} Lanczos vectors of {params} values"),
        (lanczos_steps as u128 + 4) * params as u128 * 8,
    )?;
    let (loss, _) = oracle.loss_and_grad(&theta)?;
    let trace = hutchinson_trace(&mut oracle, &theta, probes, seed, None)?;
    let mut top = lanczos_op(
        &mut FdHessian::new(&mut oracle, &theta, None)?,
        lanczos_steps,
        seed,
    )?
    .ritz;
    top.truncate(TOP_K);
    let lambda_max = top.first().copied().unwrap_or(f64::NAN);
    Ok(SharpnessReport {
        loss,
        trace,
        lambda_max,
        top,
        params,
    })
}

/// A number with six significant digits, fixed-point when that reads well.
fn sig(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let mag = x.abs().log10().floor();
    if (-3.0..6.0).contains(&mag) {
        let decimals = (5.0 - mag).max(0.0) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.5e}")
    }
}

impl fmt::Display for SharpnessReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "sharpness over {} parameters", self.params)?;
        writeln!(f, "  loss             {}", sig(self.loss))?;
        writeln!(
            f,
            "  Tr(H)            {} ± {} (standard error, {} Rademacher probes)",
            sig(self.trace.mean),
            sig(self.trace.std_error),
            self.trace.probes
        )?;
        writeln!(f, "  λ_max            {}", sig(self.lambda_max))?;
        let top: Vec<String> = self.top.iter().map(|&x| sig(x)).collect();
        write!(f, "  top eigenvalues  {}", top.join(", "))
    }
}

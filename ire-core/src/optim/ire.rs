//! IRE (Implicit Regularization Enhancement), practical form: a 0/1 diagonal mask of flat
//! coordinates from a diagonal-Hessian estimate, and a `(1 + κ)` longer base step along them.
//!
//! Official semantics (IRE-SPEC §2): at step `t ≥ T_w` with `(t − T_w) mod K = 0`, the estimate
//! `h ← β h + (1 − β) ĝ²` is refreshed and the mask rebuilt with ONE threshold over all tensors:
//! `k = ⌊(1 − γ) N⌋`, `τ` = the k-th largest `h`, flat iff `h ≤ τ` (ties at `τ` are flat).
//! Then every step `t ≥ T_w` runs the base step and `θ ← θ_base + (κ_t n) ⊙ (θ_base − θ_old)`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{Boost, Optimizer, check_params, check_state_sizes, sizes, zeros_like};
use crate::backend::Backend;
use crate::error::{Error, Result, check, check_len};
use crate::scalar::Scalar;
use crate::state::{StateDict, StateValue, indexed_names};

/// How `κ` varies over training.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum KappaSchedule {
    /// `κ_t = κ`.
    Constant,
    /// `κ_t = κ · lr_t / lr_max` (the official `prog_decay`).
    ProportionalToLr {
        /// The peak learning rate of the schedule.
        lr_max: f64,
    },
}

/// Which diagonal-curvature estimate ranks the coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Estimator {
    /// `ĝ²`, `ĝ` the gradient with labels sampled from the model (official; Fisher /
    /// Gauss-Newton diagonal). Needs [`EstimateInput::Gradient`].
    SquaredGradient,
    /// `|ĝ|` (same ranking as `ĝ²` when β = 0; the official `ire_new.py`). Needs
    /// [`EstimateInput::Gradient`].
    AbsGradient,
    /// Hutchinson `z ⊙ Hz`, `z` Rademacher. Needs [`EstimateInput::HessianProbe`].
    Hutchinson,
    /// The squared training gradient of the step (free: no extra pass, no input needed).
    SquaredTrainingGradient,
    /// No estimate: the caller sets the mask with [`Ire::set_mask`] (e.g. known flat
    /// directions); no refresh is ever due.
    Manual,
}

/// The estimator's input for a refresh, one buffer per parameter tensor.
pub enum EstimateInput<'a, B: Backend, T: Scalar> {
    /// An estimator gradient `ĝ`.
    Gradient(&'a [B::Buffer<T>]),
    /// A Rademacher probe `z` and the Hessian-vector product `Hz`.
    HessianProbe {
        /// The probe.
        z: &'a [B::Buffer<T>],
        /// `H z`.
        hz: &'a [B::Buffer<T>],
    },
}

/// What one [`Ire::step`] needs besides parameters and gradients.
pub struct IreStep<'a, B: Backend, T: Scalar> {
    /// Learning rate of this step.
    pub lr: f64,
    /// The estimator input; required when [`Ire::refresh_due`] is true (except for
    /// [`Estimator::SquaredTrainingGradient`]), ignored otherwise.
    pub estimate: Option<EstimateInput<'a, B, T>>,
}

impl<'a, B: Backend, T: Scalar> IreStep<'a, B, T> {
    /// A step with no estimate (for steps where no refresh is due).
    pub fn lr(lr: f64) -> Self {
        IreStep { lr, estimate: None }
    }
}

/// What a step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IreReport {
    /// The step number `t` (0-based) just taken.
    pub step: u64,
    /// Whether the mask was refreshed at this step.
    pub refreshed: bool,
    /// The threshold τ of the refresh (`None` if no refresh, or for γ ∈ {0, 1}).
    pub threshold: Option<f64>,
    /// `κ_t` applied (0 during warm-up).
    pub kappa: f64,
}

/// Hyper-parameters of [`Ire`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct IreConfig {
    /// Boost κ ≥ 0.
    pub kappa: f64,
    /// Fraction of coordinates treated as flat, γ ∈ [0, 1] (the official `rank` is `1 − γ`).
    pub gamma: f64,
    /// Mask refresh interval K ≥ 1.
    pub refresh_every: u64,
    /// Warm-up steps T_w with IRE off.
    pub warmup_steps: u64,
    /// EMA factor β ∈ [0, 1) of the estimate.
    pub beta: f64,
    /// κ schedule.
    pub kappa_schedule: KappaSchedule,
    /// The curvature estimate.
    pub estimator: Estimator,
}

impl Default for IreConfig {
    /// κ 2, γ 0.8 (the paper's ViT-S ImageNet setting), K 10 and β 0 (every official script),
    /// no warm-up, constant κ, the official squared sampled-label gradient.
    fn default() -> Self {
        IreConfig {
            kappa: 2.0,
            gamma: 0.8,
            refresh_every: 10,
            warmup_steps: 0,
            beta: 0.0,
            kappa_schedule: KappaSchedule::Constant,
            estimator: Estimator::SquaredGradient,
        }
    }
}

impl IreConfig {
    /// Checks every field; the error names the first bad one and its range.
    pub fn validate(&self) -> Result<()> {
        check(
            "kappa",
            self.kappa,
            self.kappa >= 0.0 && self.kappa.is_finite(),
            ">= 0, finite",
        )?;
        check(
            "gamma",
            self.gamma,
            (0.0..=1.0).contains(&self.gamma),
            "[0, 1]",
        )?;
        check(
            "refresh_every",
            self.refresh_every as f64,
            self.refresh_every >= 1,
            ">= 1",
        )?;
        check("beta", self.beta, (0.0..1.0).contains(&self.beta), "[0, 1)")?;
        if let KappaSchedule::ProportionalToLr { lr_max } = self.kappa_schedule {
            check(
                "lr_max",
                lr_max,
                lr_max > 0.0 && lr_max.is_finite(),
                "> 0, finite",
            )?;
        }
        Ok(())
    }

    /// `κ_t` at learning rate `lr`.
    pub fn kappa_at(&self, lr: f64) -> f64 {
        match self.kappa_schedule {
            KappaSchedule::Constant => self.kappa,
            KappaSchedule::ProportionalToLr { lr_max } => self.kappa * lr / lr_max,
        }
    }
}

/// The number of SHARP coordinates `k = ⌊(1 − γ) N⌋`.
///
/// `(1 − γ)·N` is computed in `f64`; a product within `1e−9` (relative) of an integer counts as
/// that integer, so γ = 0.9 on N = 10 gives k = 1 as a reader expects, not 0 from
/// `1 − 0.9 = 0.0999…`. (The official code takes `1 − γ` as its input and never meets this.)
pub fn sharp_count(n: usize, gamma: f64) -> usize {
    let x = (1.0 - gamma) * n as f64;
    let r = libm_round(x);
    let k = if (x - r).abs() <= 1e-9 * x.max(1.0) {
        r
    } else {
        libm_floor(x)
    };
    (k.max(0.0) as usize).min(n)
}

fn libm_round(x: f64) -> f64 {
    num_traits::Float::round(x)
}
fn libm_floor(x: f64) -> f64 {
    num_traits::Float::floor(x)
}

/// IRE around any base optimizer `O` (SGD, AdamW, SAM, or one of yours).
pub struct Ire<B: Backend, T: Scalar, O> {
    base: O,
    cfg: IreConfig,
    h: Vec<B::Buffer<T>>,
    mask: Vec<B::Buffer<u8>>,
    scratch: Vec<B::Buffer<T>>,
    sizes: Option<Vec<usize>>,
    t: u64,
    skip_refresh_at: Option<u64>,
}

impl<B: Backend, T: Scalar, O: Optimizer<B, T>> Ire<B, T, O> {
    /// Wraps `base`; fails if a hyper-parameter is out of range.
    pub fn new(base: O, cfg: IreConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Ire {
            base,
            cfg,
            h: Vec::new(),
            mask: Vec::new(),
            scratch: Vec::new(),
            sizes: None,
            t: 0,
            skip_refresh_at: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &IreConfig {
        &self.cfg
    }

    /// The base optimizer (e.g. to call [`super::Sam::perturb`]).
    pub fn base(&self) -> &O {
        &self.base
    }

    /// The base optimizer, mutably.
    pub fn base_mut(&mut self) -> &mut O {
        &mut self.base
    }

    /// The number of steps taken; the next step is step `t`.
    pub fn step_count(&self) -> u64 {
        self.t
    }

    /// The masks (one per tensor; empty before the first step).
    pub fn mask(&self) -> &[B::Buffer<u8>] {
        &self.mask
    }

    /// The estimates `h` (one per tensor).
    pub fn estimate(&self) -> &[B::Buffer<T>] {
        &self.h
    }

    /// Whether the next step refreshes the mask (so needs an estimate).
    pub fn refresh_due(&self) -> bool {
        let t = self.t;
        self.cfg.estimator != Estimator::Manual
            && t >= self.cfg.warmup_steps
            && (t - self.cfg.warmup_steps) % self.cfg.refresh_every == 0
            && self.skip_refresh_at != Some(t)
    }

    /// Skips the refresh due at the next step and keeps the current mask (e.g. after a
    /// refresh was refused for a non-finite estimate).
    pub fn keep_mask_this_step(&mut self) {
        self.skip_refresh_at = Some(self.t);
    }

    /// Number of flat coordinates in the current mask.
    pub fn flat_count(&self, b: &B) -> Result<usize> {
        let mut n = 0;
        for m in &self.mask {
            n += b.count_nonzero(m)?;
        }
        Ok(n)
    }

    /// Sets the mask from host slices (one per tensor, 0 = sharp, anything else = flat).
    /// Allocates the state if needed; sizes must match the parameters.
    pub fn set_mask(&mut self, b: &B, params: &[B::Buffer<T>], mask: &[&[u8]]) -> Result<()> {
        self.ensure_state(b, params)?;
        check_len("number of mask tensors", self.mask.len(), mask.len())?;
        for (i, (m, src)) in self.mask.iter().zip(mask).enumerate() {
            check_len(&format!("mask tensor {i}"), b.len(m), src.len())?;
        }
        for (m, src) in self.mask.iter_mut().zip(mask) {
            let v: Vec<u8> = src.iter().map(|&x| (x != 0) as u8).collect();
            b.upload(m, &v)?;
        }
        Ok(())
    }

    fn ensure_state(&mut self, b: &B, params: &[B::Buffer<T>]) -> Result<()> {
        match &self.sizes {
            Some(s) => check_state_sizes(b, params, s),
            None => {
                let h = zeros_like(b, params)?;
                let mask = zeros_like::<B, u8, T>(b, params)?;
                let scratch = if self.base.fuses_boost() {
                    Vec::new()
                } else {
                    zeros_like(b, params)?
                };
                self.h = h;
                self.mask = mask;
                self.scratch = scratch;
                self.sizes = Some(sizes(b, params));
                Ok(())
            }
        }
    }

    /// Refreshes `h` and the mask from an estimate (normally called by [`Ire::step`]).
    /// A non-finite input is refused with an error; `h` and the mask are then unchanged.
    /// Returns the threshold τ (`None` when γ ∈ {0, 1} make it unnecessary).
    pub fn refresh(
        &mut self,
        b: &B,
        params: &[B::Buffer<T>],
        grads: &[B::Buffer<T>],
        input: Option<&EstimateInput<'_, B, T>>,
    ) -> Result<Option<f64>> {
        self.ensure_state(b, params)?;
        let n_tensors = params.len();
        let beta = T::of(self.cfg.beta);
        let check_all = |bufs: &[B::Buffer<T>], what: &str| -> Result<()> {
            check_len(&format!("number of {what} tensors"), n_tensors, bufs.len())?;
            for (i, (x, p)) in bufs.iter().zip(params).enumerate() {
                check_len(&format!("{what} tensor {i}"), b.len(p), b.len(x))?;
                if b.count_non_finite(x)? > 0 {
                    return Err(Error::NonFinite {
                        what: format!("{what} tensor {i} (IRE refresh refused, mask kept)"),
                    });
                }
            }
            Ok(())
        };
        match (self.cfg.estimator, input) {
            (
                Estimator::SquaredGradient | Estimator::AbsGradient,
                Some(EstimateInput::Gradient(g)),
            ) => {
                check_all(g, "estimator gradient")?;
                for (h, g) in self.h.iter_mut().zip(g.iter()) {
                    if self.cfg.estimator == Estimator::SquaredGradient {
                        b.ema_square(h, g, beta)?;
                    } else {
                        b.ema_abs(h, g, beta)?;
                    }
                }
            }
            (Estimator::Hutchinson, Some(EstimateInput::HessianProbe { z, hz })) => {
                check_all(z, "Hutchinson probe")?;
                check_all(hz, "Hessian-vector product")?;
                for ((h, z), hz) in self.h.iter_mut().zip(z.iter()).zip(hz.iter()) {
                    b.ema_product(h, z, hz, beta)?;
                }
            }
            (Estimator::SquaredTrainingGradient, _) => {
                check_all(grads, "training gradient")?;
                for (h, g) in self.h.iter_mut().zip(grads) {
                    b.ema_square(h, g, beta)?;
                }
            }
            (Estimator::Manual, _) => {
                return Err(Error::Protocol(
                    "IRE: refresh called with the Manual estimator (use set_mask)".into(),
                ));
            }
            (e, None) => {
                return Err(Error::Protocol(format!(
                    "IRE: a mask refresh is due at step {} and the {e:?} estimator needs an \
                     estimate (IreStep::estimate), or call keep_mask_this_step()",
                    self.t
                )));
            }
            (e, Some(_)) => {
                return Err(Error::Protocol(format!(
                    "IRE: the {e:?} estimator got the wrong kind of estimate input"
                )));
            }
        }
        self.rebuild_mask(b)
    }

    fn rebuild_mask(&mut self, b: &B) -> Result<Option<f64>> {
        let n: usize = self.h.iter().map(|h| b.len(h)).sum();
        let k = sharp_count(n, self.cfg.gamma);
        if k == 0 {
            for m in self.mask.iter_mut() {
                b.fill(m, 1u8)?;
            }
            return Ok(None);
        }
        if k >= n {
            for m in self.mask.iter_mut() {
                b.fill(m, 0u8)?;
            }
            return Ok(None);
        }
        let refs: Vec<&B::Buffer<T>> = self.h.iter().collect();
        let tau = b.kth_largest(&refs, k)?;
        for (h, m) in self.h.iter().zip(self.mask.iter_mut()) {
            b.mask_le(h, tau, m)?;
        }
        Ok(Some(tau.as_f64()))
    }

    /// One IRE step: refresh when due, then the base step boosted along flat coordinates
    /// (after warm-up). On an error nothing is changed and the step counter does not advance.
    pub fn step(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &[B::Buffer<T>],
        ctx: IreStep<'_, B, T>,
    ) -> Result<IreReport> {
        check_params(b, params, grads)?;
        super::check_lr(ctx.lr)?;
        self.ensure_state(b, params)?;
        let t = self.t;
        let mut report = IreReport {
            step: t,
            refreshed: false,
            threshold: None,
            kappa: 0.0,
        };
        if self.refresh_due() {
            report.threshold = self.refresh(b, params, grads, ctx.estimate.as_ref())?;
            report.refreshed = true;
        }
        if t >= self.cfg.warmup_steps {
            let kappa = self.cfg.kappa_at(ctx.lr);
            report.kappa = kappa;
            let scratch = if self.base.fuses_boost() {
                None
            } else {
                Some(&mut self.scratch[..])
            };
            let boost = Boost {
                mask: &self.mask,
                kappa: T::of(kappa),
                scratch,
            };
            self.base.step_boosted(b, params, grads, ctx.lr, boost)?;
        } else {
            self.base.step(b, params, grads, ctx.lr)?;
        }
        self.t += 1;
        Ok(report)
    }
}

impl<B: Backend, T: Scalar, O: Optimizer<B, T>> Ire<B, T, super::Sam<B, T, O>> {
    /// SAM-IRE in one call: refresh (from `ctx`, at the unperturbed `θ`) when due, perturb
    /// with `grads`, let `grad_at` overwrite `grads` with the gradient at the perturbed point,
    /// then restore and take the boosted base step.
    pub fn sam_step_with<F>(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &mut [B::Buffer<T>],
        ctx: IreStep<'_, B, T>,
        grad_at: F,
    ) -> Result<IreReport>
    where
        F: FnOnce(&[B::Buffer<T>], &mut [B::Buffer<T>]) -> Result<()>,
    {
        check_params(b, params, grads)?;
        super::check_lr(ctx.lr)?;
        self.ensure_state(b, params)?;
        let mut threshold = None;
        let refreshed = self.refresh_due();
        if refreshed {
            threshold = self.refresh(b, params, grads, ctx.estimate.as_ref())?;
            self.keep_mask_this_step();
        }
        self.base.perturb(b, params, grads)?;
        if let Err(e) = grad_at(params, grads) {
            self.base.restore(b, params)?;
            return Err(e);
        }
        let mut report = self.step(b, params, grads, IreStep::lr(ctx.lr))?;
        report.refreshed = refreshed;
        report.threshold = threshold;
        Ok(report)
    }
}

impl<B: Backend, T: Scalar, O: Optimizer<B, T>> Optimizer<B, T> for Ire<B, T, O> {
    fn name(&self) -> &str {
        "ire"
    }

    /// A step with no estimate: valid when no refresh is due or the estimator is
    /// [`Estimator::SquaredTrainingGradient`] or [`Estimator::Manual`].
    fn step(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &[B::Buffer<T>],
        lr: f64,
    ) -> Result<()> {
        Ire::step(self, b, params, grads, IreStep::lr(lr)).map(|_| ())
    }

    fn save(&self, b: &B) -> Result<StateDict> {
        let mut d = StateDict::new("ire");
        d.put("t", StateValue::U64(self.t));
        d.put(
            "skip_refresh_at",
            StateValue::U64(self.skip_refresh_at.map_or(u64::MAX, |x| x)),
        );
        d.put_tensors(b, "h", &self.h)?;
        d.put_tensors(b, "mask", &self.mask)?;
        d.put("base", StateValue::Nested(self.base.save(b)?));
        Ok(d)
    }

    fn load(&mut self, b: &B, state: &StateDict) -> Result<()> {
        let saved = state.tensor_sizes("h");
        let mut expected: Vec<String> =
            alloc::vec!["t".into(), "skip_refresh_at".into(), "base".into()];
        expected.extend(indexed_names("h", saved.len()));
        expected.extend(indexed_names("mask", saved.len()));
        state.expect("ire", &expected)?;
        if let Some(cur) = &self.sizes {
            check_len("number of IRE tensors", cur.len(), saved.len())?;
            for (i, (a, c)) in saved.iter().zip(cur).enumerate() {
                check_len(&format!("IRE tensor {i}"), *c, *a)?;
            }
        }
        let t = state.get_u64("t")?;
        let skip = state.get_u64("skip_refresh_at")?;
        let h = state.load_tensors::<B, T>(b, "h", &saved)?;
        let mask = state.load_tensors::<B, u8>(b, "mask", &saved)?;
        let scratch = if self.base.fuses_boost() {
            Vec::new()
        } else {
            saved
                .iter()
                .map(|&n| b.alloc::<T>(n))
                .collect::<Result<Vec<_>>>()?
        };
        // The base validates and commits itself atomically; ours cannot fail after it.
        self.base.load(b, state.get_nested("base")?)?;
        self.t = t;
        self.skip_refresh_at = if skip == u64::MAX { None } else { Some(skip) };
        self.sizes = if saved.is_empty() && t == 0 {
            None
        } else {
            Some(saved)
        };
        self.h = h;
        self.mask = mask;
        self.scratch = scratch;
        Ok(())
    }
}

//! IRE (Implicit Regularization Enhancement), practical form: a 0/1 diagonal mask of flat
//! coordinates from a diagonal-Hessian estimate, and a `(1 + κ)` longer base step along them.
//!
//! Official semantics (IRE-SPEC §2): at step `t ≥ T_w` with `(t − T_w) mod K = 0`, the estimate
//! `h ← β h + (1 − β) ĝ²` is refreshed and the mask rebuilt with ONE threshold over every
//! participating tensor ([`super::threshold`]: by default `k = ⌊(1 − γ) N⌋`, `τ` = the k-th
//! largest `h`, flat iff `h ≤ τ`, ties flat). Then every step `t ≥ T_w` runs the base step and
//! `θ ← θ_base + (κ_t n) ⊙ (θ_base − θ_old)`.
//!
//! A step can be taken in one call ([`Ire::step`]), tensor by tensor ([`Ire::begin_step`],
//! [`Ire::step_tensor`], [`Ire::end_step`]), around a base step taken by someone else
//! ([`Ire::begin_external`], [`Ire::finish_external`]), or as SAM-IRE ([`Ire::sam_perturb`] then
//! [`Ire::step`], or [`Ire::sam_step_with`]).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::groups::{ParamGroups, TensorStep};
use super::optimizer::{
    Optimizer, TensorBoost, check_lr, check_params, check_sizes, check_tensor, sizes, zeros,
};
use super::sam::Sam;
use super::threshold::{GammaSchedule, Selection, ThresholdRule};
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

impl Estimator {
    /// Whether a refresh needs an estimator gradient `ĝ` from the caller.
    pub fn needs_gradient(self) -> bool {
        matches!(self, Estimator::SquaredGradient | Estimator::AbsGradient)
    }
}

/// The estimator's input for a refresh, one buffer per parameter tensor.
pub enum EstimateInput<'a, B: Backend, T: Scalar> {
    /// An estimator gradient `ĝ` (or, for [`Estimator::SquaredTrainingGradient`], the training
    /// gradient).
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
    /// Whether the mask was refreshed for this step.
    pub refreshed: bool,
    /// The threshold τ of the refresh (`None` if no refresh, or when no selection was needed).
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
    /// How the threshold is chosen from γ.
    pub threshold: ThresholdRule,
    /// How γ varies over the refreshes.
    pub gamma_schedule: GammaSchedule,
}

impl Default for IreConfig {
    /// κ 2, γ 0.8 (the paper's ViT-S ImageNet setting), K 10 and β 0 (every official script),
    /// no warm-up, constant κ and γ, the official squared sampled-label gradient and the sharp
    /// top-k threshold of the CIFAR and ImageNet scripts.
    fn default() -> Self {
        IreConfig {
            kappa: 2.0,
            gamma: 0.8,
            refresh_every: 10,
            warmup_steps: 0,
            beta: 0.0,
            kappa_schedule: KappaSchedule::Constant,
            estimator: Estimator::SquaredGradient,
            threshold: ThresholdRule::SharpTopK,
            gamma_schedule: GammaSchedule::Constant,
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
        self.gamma_schedule.validate()
    }

    /// `κ_t` at learning rate `lr`.
    pub fn kappa_at(&self, lr: f64) -> f64 {
        match self.kappa_schedule {
            KappaSchedule::Constant => self.kappa,
            KappaSchedule::ProportionalToLr { lr_max } => self.kappa * lr / lr_max,
        }
    }
}

/// Word counts of the packed masks of tensors of `sizes` coordinates.
fn packed_sizes(sizes: &[usize]) -> Vec<usize> {
    sizes.iter().map(|&n| crate::mask::words(n)).collect()
}

/// A base optimizer that runs outside this crate (e.g. a framework's own optimizer): the
/// marker for [`Ire::begin_external`] / [`Ire::finish_external`]. It cannot step by itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct External;

impl<B: Backend, T: Scalar> Optimizer<B, T> for External {
    fn name(&self) -> &str {
        "external"
    }

    fn step_tensor(
        &mut self,
        _: &B,
        _: usize,
        _: &mut B::Buffer<T>,
        _: &B::Buffer<T>,
        _: TensorStep,
    ) -> Result<()> {
        Err(Error::Protocol(
            "IRE around an external base optimizer steps through begin_external / \
             finish_external"
                .into(),
        ))
    }

    fn save(&self, _: &B) -> Result<StateDict> {
        Ok(StateDict::new("external"))
    }

    fn load(&mut self, _: &B, state: &StateDict) -> Result<()> {
        state.expect("external", &[])
    }
}

/// The refresh and boost of the step in progress.
#[derive(Clone, Copy, Debug)]
struct OpenStep {
    report: IreReport,
    boosting: bool,
    /// `κ_t` from each tensor's own learning rate (a step begun through the [`Optimizer`]
    /// trait, which gives no step-wide learning rate) instead of `report.kappa`.
    kappa_per_tensor: bool,
    /// Begun by [`Ire::begin_external`] (so [`Ire::cancel_external`] may abandon it).
    external: bool,
}

/// IRE around any base optimizer `O` (SGD, AdamW, SAM, [`External`], or one of yours).
pub struct Ire<B: Backend, T: Scalar, O> {
    base: O,
    cfg: IreConfig,
    groups: Option<ParamGroups>,
    /// Estimate and packed mask ([`crate::mask`]) per tensor (zero-length for tensors that do
    /// not take part).
    h: Vec<B::Buffer<T>>,
    mask: Vec<B::Buffer<u32>>,
    /// `θ_old` per tensor, for a base that does not fuse the boost and for external bases.
    scratch: Vec<B::Buffer<T>>,
    sizes: Option<Vec<usize>>,
    t: u64,
    /// The refresh due at this step has been done (SAM-IRE) or skipped on purpose.
    refresh_settled_at: Option<u64>,
    /// A refresh done ahead of the step (SAM-IRE's, at the unperturbed θ), for the step's report.
    early_refresh: Option<(u64, Option<f64>)>,
    open: Option<OpenStep>,
}

/// A copy of the optimizer and its state (a step in progress included).
impl<B: Backend, T: Scalar, O: Clone> Clone for Ire<B, T, O>
where
    B::Buffer<T>: Clone,
    B::Buffer<u32>: Clone,
{
    fn clone(&self) -> Self {
        Ire {
            base: self.base.clone(),
            cfg: self.cfg,
            groups: self.groups.clone(),
            h: self.h.clone(),
            mask: self.mask.clone(),
            scratch: self.scratch.clone(),
            sizes: self.sizes.clone(),
            t: self.t,
            refresh_settled_at: self.refresh_settled_at,
            early_refresh: self.early_refresh,
            open: self.open,
        }
    }
}

impl<B: Backend, T: Scalar, O: Optimizer<B, T>> Ire<B, T, O> {
    /// Wraps `base`; fails if a hyper-parameter is out of range.
    pub fn new(base: O, cfg: IreConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Ire {
            base,
            cfg,
            groups: None,
            h: Vec::new(),
            mask: Vec::new(),
            scratch: Vec::new(),
            sizes: None,
            t: 0,
            refresh_settled_at: None,
            early_refresh: None,
            open: None,
        })
    }

    /// The same optimizer with parameter groups: per-group learning-rate scale and weight
    /// decay in [`Ire::step`], and only the groups with `ire` ranked and boosted. Must be set
    /// before the first step.
    pub fn with_groups(mut self, groups: ParamGroups) -> Result<Self> {
        if self.sizes.is_some() {
            return Err(Error::Protocol(
                "IRE: parameter groups must be set before the first step".into(),
            ));
        }
        self.groups = Some(groups);
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &IreConfig {
        &self.cfg
    }

    /// The parameter groups, if set.
    pub fn groups(&self) -> Option<&ParamGroups> {
        self.groups.as_ref()
    }

    /// The base optimizer.
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

    /// The masks as 0/1 bytes (1 = flat), unpacked on the host: one per tensor, empty before
    /// the first step, zero-length for tensors that do not take part.
    pub fn mask(&self, b: &B) -> Result<Vec<Vec<u8>>> {
        self.mask
            .iter()
            .zip(&self.h)
            .map(|(m, h)| crate::mask::unpack(&b.to_vec(m)?, b.len(h)))
            .collect()
    }

    /// The masks as stored: packed, one bit per coordinate ([`crate::mask`]), one buffer per
    /// tensor as [`Ire::mask`].
    pub fn packed_mask(&self) -> &[B::Buffer<u32>] {
        &self.mask
    }

    /// Unpacks tensor `i`'s mask into `out` (0/1 bytes, on the backend; the tensor's length, or
    /// zero-length for a tensor that takes no part).
    pub fn mask_into(&self, b: &B, i: usize, out: &mut B::Buffer<u8>) -> Result<()> {
        let m = self.mask.get(i).ok_or_else(|| Error::SizeMismatch {
            what: "mask tensor index (vs the number of tensors)".into(),
            expected: self.mask.len(),
            found: i + 1,
        })?;
        check_len(&format!("mask tensor {i}"), b.len(&self.h[i]), b.len(out))?;
        b.mask_unpack(m, out)
    }

    /// The estimates `h` (one per tensor, as [`Ire::mask`]).
    pub fn estimate(&self) -> &[B::Buffer<T>] {
        &self.h
    }

    /// Whether tensor `i` takes part in IRE.
    pub fn takes_part(&self, i: usize) -> bool {
        self.groups.as_ref().is_none_or(|g| g.takes_part(i))
    }

    /// Whether the next step refreshes the mask (so needs an estimate).
    pub fn refresh_due(&self) -> bool {
        let t = self.t;
        self.cfg.estimator != Estimator::Manual
            && t >= self.cfg.warmup_steps
            && (t - self.cfg.warmup_steps).is_multiple_of(self.cfg.refresh_every)
            && self.refresh_settled_at != Some(t)
    }

    /// Skips the refresh due at the next step and keeps the current mask (e.g. after a
    /// refresh was refused for a non-finite estimate).
    pub fn keep_mask_this_step(&mut self) {
        self.refresh_settled_at = Some(self.t);
    }

    /// Replaces the hyper-parameters between steps (a caller's own κ or γ schedule, IRE switched
    /// on at a step it counts itself); the estimate, mask, base state and step count are kept.
    /// Fails, changing nothing, if a field is out of range or a step is open.
    pub fn set_config(&mut self, cfg: IreConfig) -> Result<()> {
        cfg.validate()?;
        if self.open.is_some() {
            return Err(Error::Protocol(
                "IRE: set_config in the middle of a step".into(),
            ));
        }
        self.cfg = cfg;
        Ok(())
    }

    /// Refreshes the estimate and the mask now, between steps, for the step about to run: for
    /// a caller that computes the estimator input outside the step (a framework's sampled-label
    /// backward). `gamma` overrides the schedule's `γ_t` for this refresh (any finite value:
    /// counts are clamped to `[0, N]`, as for [`GammaSchedule::RankIncrease`]); `None` takes the
    /// schedule's at the current step. A refresh due at the next step is settled by this one;
    /// one that is not due is an extra refresh. Either way the next step reports it. A
    /// non-finite input is refused with an error and nothing changes.
    pub fn refresh_now(
        &mut self,
        b: &B,
        sizes: &[usize],
        input: &EstimateInput<'_, B, T>,
        gamma: Option<f64>,
    ) -> Result<Option<f64>> {
        if self.open.is_some() {
            return Err(Error::Protocol(
                "IRE: refresh_now in the middle of a step".into(),
            ));
        }
        if let Some(g) = gamma {
            check("gamma", g, g.is_finite(), "finite")?;
        }
        self.ensure_state(b, sizes)?;
        let tau = self.refresh_from(b, input, gamma)?;
        if self.refresh_due() {
            self.refresh_settled_at = Some(self.t);
        }
        self.early_refresh = Some((self.t, tau));
        Ok(tau)
    }

    /// Number of flat coordinates in the current mask.
    pub fn flat_count(&self, b: &B) -> Result<usize> {
        let mut n = 0;
        for m in &self.mask {
            n += b.count_flat(m)?;
        }
        Ok(n)
    }

    /// Number of coordinates IRE ranks (those of the participating tensors).
    pub fn ranked_count(&self, b: &B) -> usize {
        self.h.iter().map(|h| b.len(h)).sum()
    }

    /// Sets the mask from host slices (one per tensor, 0 = sharp, anything else = flat).
    /// Allocates the state if needed; sizes must match the parameters.
    pub fn set_mask(&mut self, b: &B, params: &[B::Buffer<T>], mask: &[&[u8]]) -> Result<()> {
        self.ensure_state(b, &sizes(b, params))?;
        check_len("number of mask tensors", self.mask.len(), mask.len())?;
        for (i, (h, src)) in self.h.iter().zip(mask).enumerate() {
            check_len(&format!("mask tensor {i}"), b.len(h), src.len())?;
        }
        for (m, src) in self.mask.iter_mut().zip(mask) {
            b.upload(m, &crate::mask::pack(src))?;
        }
        Ok(())
    }

    /// Sizes of the estimate of each tensor: its size if it takes part, else 0.
    fn ranked_sizes(&self, sizes: &[usize]) -> Vec<usize> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| if self.takes_part(i) { n } else { 0 })
            .collect()
    }

    fn needs_scratch(&self) -> bool {
        !self.base.fuses_boost()
    }

    fn ensure_state(&mut self, b: &B, sizes: &[usize]) -> Result<()> {
        if let Some(g) = &self.groups {
            g.check_tensors(sizes.len())?;
        }
        match &self.sizes {
            Some(s) => check_sizes(s, sizes),
            None => {
                let ranked = self.ranked_sizes(sizes);
                let h = zeros(b, &ranked)?;
                let mask = zeros::<B, u32>(b, &packed_sizes(&ranked))?;
                let scratch = if self.needs_scratch() {
                    zeros(b, &ranked)?
                } else {
                    Vec::new()
                };
                self.h = h;
                self.mask = mask;
                self.scratch = scratch;
                self.sizes = Some(sizes.to_vec());
                Ok(())
            }
        }
    }

    /// Refreshes `h` and the mask from an estimate (normally called by the step). A
    /// non-finite input is refused with an error; `h` and the mask are then unchanged.
    /// `grads` are the training gradients ([`Estimator::SquaredTrainingGradient`] reads them
    /// when `input` is `None`). Returns the threshold τ (`None` when no selection is needed).
    pub fn refresh(
        &mut self,
        b: &B,
        params: &[B::Buffer<T>],
        grads: &[B::Buffer<T>],
        input: Option<&EstimateInput<'_, B, T>>,
    ) -> Result<Option<f64>> {
        self.ensure_state(b, &sizes(b, params))?;
        match (self.cfg.estimator, input) {
            (Estimator::SquaredTrainingGradient, None) => {
                self.refresh_from(b, &EstimateInput::Gradient(grads), None)
            }
            (_, Some(input)) => self.refresh_from(b, input, None),
            (e, None) => Err(self.missing_estimate(e)),
        }
    }

    fn missing_estimate(&self, e: Estimator) -> Error {
        if e == Estimator::Manual {
            return Error::Protocol(
                "IRE: refresh called with the Manual estimator (use set_mask)".into(),
            );
        }
        Error::Protocol(format!(
            "IRE: a mask refresh is due at step {} and the {e:?} estimator needs an estimate \
             (IreStep::estimate), or call keep_mask_this_step()",
            self.t
        ))
    }

    /// The refresh proper, on allocated state; `gamma` overrides the schedule's `γ_t`.
    fn refresh_from(
        &mut self,
        b: &B,
        input: &EstimateInput<'_, B, T>,
        gamma: Option<f64>,
    ) -> Result<Option<f64>> {
        let n_tensors = self.h.len();
        let ranked: Vec<usize> = self.h.iter().map(|h| b.len(h)).collect();
        let full = self.sizes.clone().unwrap_or_default();
        // Only participating tensors are read; each must be finite.
        let check_all = |bufs: &[B::Buffer<T>], what: &str| -> Result<()> {
            check_len(&format!("number of {what} tensors"), n_tensors, bufs.len())?;
            for (i, x) in bufs.iter().enumerate() {
                check_len(&format!("{what} tensor {i}"), full[i], b.len(x))?;
                if ranked[i] > 0 && b.count_non_finite(x)? > 0 {
                    return Err(Error::NonFinite {
                        what: format!("{what} tensor {i} (IRE refresh refused, mask kept)"),
                    });
                }
            }
            Ok(())
        };
        let beta = T::of(self.cfg.beta);
        let take = |i: usize| ranked[i] > 0;
        match (self.cfg.estimator, input) {
            (
                Estimator::SquaredGradient
                | Estimator::AbsGradient
                | Estimator::SquaredTrainingGradient,
                EstimateInput::Gradient(g),
            ) => {
                check_all(g, "estimator gradient")?;
                for (i, (h, g)) in self.h.iter_mut().zip(g.iter()).enumerate() {
                    if !take(i) {
                        continue;
                    }
                    if self.cfg.estimator == Estimator::AbsGradient {
                        b.ema_abs(h, g, beta)?;
                    } else {
                        b.ema_square(h, g, beta)?;
                    }
                }
            }
            (Estimator::Hutchinson, EstimateInput::HessianProbe { z, hz }) => {
                check_all(z, "Hutchinson probe")?;
                check_all(hz, "Hessian-vector product")?;
                for (i, ((h, z), hz)) in self.h.iter_mut().zip(z.iter()).zip(hz.iter()).enumerate()
                {
                    if take(i) {
                        b.ema_product(h, z, hz, beta)?;
                    }
                }
            }
            (Estimator::Manual, _) => return Err(self.missing_estimate(Estimator::Manual)),
            (e, _) => {
                return Err(Error::Protocol(format!(
                    "IRE: the {e:?} estimator got the wrong kind of estimate input"
                )));
            }
        }
        self.rebuild_mask(b, gamma)
    }

    fn rebuild_mask(&mut self, b: &B, gamma: Option<f64>) -> Result<Option<f64>> {
        let n = self.ranked_count(b);
        let since = self.t.saturating_sub(self.cfg.warmup_steps);
        let rank = match gamma {
            Some(g) => 1.0 - g,
            None => self.cfg.gamma_schedule.rank_at(self.cfg.gamma, since),
        };
        match self.cfg.threshold.selection(n, rank) {
            every @ (Selection::AllFlat | Selection::NoneFlat) => {
                let flat = matches!(every, Selection::AllFlat);
                for (h, m) in self.h.iter().zip(self.mask.iter_mut()) {
                    b.upload(m, &crate::mask::filled(b.len(h), flat))?;
                }
                Ok(None)
            }
            Selection::KthLargest(k) => {
                let refs: Vec<&B::Buffer<T>> = self.h.iter().collect();
                let tau = b.kth_largest(&refs, k)?;
                for (h, m) in self.h.iter().zip(self.mask.iter_mut()) {
                    b.mask_le(h, tau, m)?;
                }
                Ok(Some(tau.as_f64()))
            }
        }
    }

    /// Starts a step over tensors of `sizes`, to be taken with [`Ire::step_tensor`] for each
    /// tensor and closed by [`Ire::end_step`]: refreshes the mask when due (from
    /// `ctx.estimate`), fixes `κ_t` and starts the base optimizer's step.
    pub fn begin_step(
        &mut self,
        b: &B,
        sizes: &[usize],
        ctx: IreStep<'_, B, T>,
    ) -> Result<IreReport> {
        let report = self.open_step(b, sizes, ctx.lr, ctx.estimate.as_ref())?;
        self.base.begin_step(b, sizes)?;
        self.open = Some(OpenStep {
            report,
            boosting: self.t >= self.cfg.warmup_steps,
            kappa_per_tensor: false,
            external: false,
        });
        Ok(report)
    }

    /// Refresh when due and the report of the step about to run (shared by every kind of step).
    fn open_step(
        &mut self,
        b: &B,
        sizes: &[usize],
        lr: f64,
        estimate: Option<&EstimateInput<'_, B, T>>,
    ) -> Result<IreReport> {
        check_lr(lr)?;
        if self.open.is_some() {
            return Err(Error::Protocol(
                "IRE: a step was begun before the previous one ended".into(),
            ));
        }
        self.ensure_state(b, sizes)?;
        let t = self.t;
        let mut report = IreReport {
            step: t,
            refreshed: false,
            threshold: None,
            kappa: if t >= self.cfg.warmup_steps {
                self.cfg.kappa_at(lr)
            } else {
                0.0
            },
        };
        if self.refresh_due() {
            let input = estimate.ok_or_else(|| self.missing_estimate(self.cfg.estimator))?;
            report.threshold = self.refresh_from(b, input, None)?;
            report.refreshed = true;
        } else if let Some((at, tau)) = self.early_refresh
            && at == t
        {
            report.refreshed = true;
            report.threshold = tau;
        }
        Ok(report)
    }

    /// Tensor `i` of the step begun by [`Ire::begin_step`]: the base step, boosted along the
    /// flat coordinates when IRE is past its warm-up and the tensor takes part.
    pub fn step_tensor(
        &mut self,
        b: &B,
        i: usize,
        param: &mut B::Buffer<T>,
        grad: &B::Buffer<T>,
        hp: TensorStep,
    ) -> Result<()> {
        let open = self
            .open
            .ok_or_else(|| Error::Protocol("IRE: step_tensor before begin_step".into()))?;
        let sizes = self.sizes.as_deref().unwrap_or_default();
        check_tensor(b, sizes, i, param, grad)?;
        if !(open.boosting && self.takes_part(i)) {
            return self.base.step_tensor(b, i, param, grad, hp);
        }
        let scratch = if self.needs_scratch() {
            Some(&mut self.scratch[i])
        } else {
            None
        };
        let kappa = if open.kappa_per_tensor {
            self.cfg.kappa_at(hp.lr)
        } else {
            open.report.kappa
        };
        let boost = TensorBoost {
            mask: &self.mask[i],
            kappa: T::of(kappa),
            scratch,
        };
        self.base.step_tensor_boosted(b, i, param, grad, hp, boost)
    }

    /// Ends the step begun by [`Ire::begin_step`].
    pub fn end_step(&mut self) -> Result<IreReport> {
        let open = self
            .open
            .take()
            .ok_or_else(|| Error::Protocol("IRE: end_step before begin_step".into()))?;
        self.base.end_step();
        self.advance();
        Ok(open.report)
    }

    fn advance(&mut self) {
        self.t += 1;
        self.early_refresh = None;
    }

    /// One IRE step: refresh when due, then the base step boosted along flat coordinates
    /// (after warm-up), each tensor at its group's learning rate and weight decay. On an error
    /// before any tensor moved nothing is changed and the step counter does not advance.
    pub fn step(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &[B::Buffer<T>],
        ctx: IreStep<'_, B, T>,
    ) -> Result<IreReport> {
        check_params(b, params, grads)?;
        let lr = ctx.lr;
        let estimate = match ctx.estimate {
            None if self.cfg.estimator == Estimator::SquaredTrainingGradient => {
                Some(EstimateInput::Gradient(grads))
            }
            e => e,
        };
        self.begin_step(b, &sizes(b, params), IreStep { lr, estimate })?;
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let hp = self
                .groups
                .as_ref()
                .map_or(TensorStep::lr(lr), |gr| gr.tensor_step(i, lr));
            if let Err(e) = self.step_tensor(b, i, p, g, hp) {
                self.open = None;
                return Err(e);
            }
        }
        self.end_step()
    }

    /// IRE around a base step taken outside this optimizer (a framework's own): refreshes the
    /// mask when due and copies `θ` as `θ_old`. Take the base step, then call
    /// [`Ire::finish_external`].
    pub fn begin_external(
        &mut self,
        b: &B,
        params: &[B::Buffer<T>],
        ctx: IreStep<'_, B, T>,
    ) -> Result<IreReport> {
        let sizes = sizes(b, params);
        let report = self.open_step(b, &sizes, ctx.lr, ctx.estimate.as_ref())?;
        let ranked = self.ranked_sizes(&sizes);
        if self.scratch.len() != ranked.len()
            || self
                .scratch
                .iter()
                .zip(&ranked)
                .any(|(s, &n)| b.len(s) != n)
        {
            self.scratch = zeros(b, &ranked)?;
        }
        for (i, (p, s)) in params.iter().zip(self.scratch.iter_mut()).enumerate() {
            if ranked[i] > 0 {
                b.copy(p, s)?;
            }
        }
        self.open = Some(OpenStep {
            report,
            boosting: self.t >= self.cfg.warmup_steps,
            kappa_per_tensor: false,
            external: true,
        });
        Ok(report)
    }

    /// Abandons the step begun by [`Ire::begin_external`] (the external base step failed): no
    /// boost, and the step counter does not advance. A refresh that step did is kept, and the
    /// retried step uses its mask without refreshing again.
    pub fn cancel_external(&mut self) -> Result<()> {
        match self.open {
            Some(open) if open.external => {
                self.open = None;
                if open.report.refreshed {
                    self.refresh_settled_at = Some(self.t);
                    self.early_refresh = Some((self.t, open.report.threshold));
                }
                Ok(())
            }
            _ => Err(Error::Protocol(
                "IRE: cancel_external without a step begun by begin_external".into(),
            )),
        }
    }

    /// Boosts the displacement of the external base step: `θ ← θ + (κ_t n) ⊙ (θ − θ_old)`.
    pub fn finish_external(&mut self, b: &B, params: &mut [B::Buffer<T>]) -> Result<IreReport> {
        let open = self
            .open
            .take()
            .ok_or_else(|| Error::Protocol("IRE: finish_external before begin_external".into()))?;
        let sizes = self.sizes.clone().unwrap_or_default();
        check_sizes(&sizes, &super::optimizer::sizes(b, params))?;
        if open.boosting {
            let kappa = T::of(open.report.kappa);
            for (i, p) in params.iter_mut().enumerate() {
                if self.takes_part(i) {
                    b.ire_boost(p, &self.scratch[i], &self.mask[i], kappa)?;
                }
            }
        }
        self.advance();
        Ok(open.report)
    }
}

impl<B: Backend, T: Scalar, O: Optimizer<B, T>> Ire<B, T, Sam<B, T, O>> {
    /// SAM-IRE's first phase: refreshes the mask when due (from `estimate`, at the unperturbed
    /// `θ`, as the official code), then SAM's perturbation with `grads` (the gradient at `θ`).
    /// Compute the gradient at the perturbed point, then call [`Ire::step`]: it restores `θ`,
    /// takes the base step and boosts it, and reports this refresh.
    pub fn sam_perturb(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &[B::Buffer<T>],
        estimate: Option<EstimateInput<'_, B, T>>,
    ) -> Result<()> {
        check_params(b, params, grads)?;
        if self.refresh_due() {
            self.ensure_state(b, &sizes(b, params))?;
            let estimate = match estimate {
                None if self.cfg.estimator == Estimator::SquaredTrainingGradient => {
                    Some(EstimateInput::Gradient(grads))
                }
                e => e,
            };
            let input = estimate
                .as_ref()
                .ok_or_else(|| self.missing_estimate(self.cfg.estimator))?;
            let tau = self.refresh_from(b, input, None)?;
            self.refresh_settled_at = Some(self.t);
            self.early_refresh = Some((self.t, tau));
        }
        self.base.perturb(b, params, grads)
    }

    /// SAM-IRE in one call: [`Ire::sam_perturb`], then `grad_at` overwrites `grads` with the
    /// gradient at the perturbed point, then [`Ire::step`]. If `grad_at` fails, `θ` is restored.
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
        check_lr(ctx.lr)?;
        self.sam_perturb(b, params, grads, ctx.estimate)?;
        if let Err(e) = grad_at(params, grads) {
            self.base.restore(b, params)?;
            return Err(e);
        }
        self.step(b, params, grads, IreStep::lr(ctx.lr))
    }
}

impl<B: Backend, T: Scalar, O: Optimizer<B, T>> Optimizer<B, T> for Ire<B, T, O> {
    fn name(&self) -> &str {
        "ire"
    }

    /// Starts a step with no estimate: valid when no refresh is due or the estimator is
    /// [`Estimator::Manual`]. The trait gives no step-wide learning rate, so `κ_t` follows
    /// each tensor's own.
    fn begin_step(&mut self, b: &B, sizes: &[usize]) -> Result<()> {
        Ire::begin_step(self, b, sizes, IreStep::lr(0.0))?;
        if let Some(open) = self.open.as_mut() {
            open.kappa_per_tensor = true;
        }
        Ok(())
    }

    fn step_tensor(
        &mut self,
        b: &B,
        i: usize,
        param: &mut B::Buffer<T>,
        grad: &B::Buffer<T>,
        hp: TensorStep,
    ) -> Result<()> {
        Ire::step_tensor(self, b, i, param, grad, hp)
    }

    fn end_step(&mut self) {
        let _ = Ire::end_step(self);
    }

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
        if self.open.is_some() {
            return Err(Error::Protocol(
                "IRE: cannot save state in the middle of a step".into(),
            ));
        }
        let mut d = StateDict::new("ire");
        d.put("t", StateValue::U64(self.t));
        d.put(
            "skip_refresh_at",
            StateValue::U64(self.refresh_settled_at.map_or(u64::MAX, |x| x)),
        );
        let sizes = self.sizes.clone().unwrap_or_default();
        d.put(
            "sizes",
            StateValue::U64s(sizes.iter().map(|&n| n as u64).collect()),
        );
        d.put_tensors(b, "h", &self.h)?;
        // Checkpoints keep one byte per coordinate (unpacked here, packed on load): the
        // format of every earlier checkpoint, a quarter of the estimate saved beside it.
        for (i, m) in self.mask(b)?.into_iter().enumerate() {
            d.put(format!("mask.{i}"), StateValue::U8(m));
        }
        d.put("base", StateValue::Nested(self.base.save(b)?));
        Ok(d)
    }

    fn load(&mut self, b: &B, state: &StateDict) -> Result<()> {
        if self.open.is_some() {
            return Err(Error::Protocol(
                "IRE: cannot load state in the middle of a step".into(),
            ));
        }
        let saved_sizes: Vec<usize> = state
            .get_u64s("sizes")?
            .iter()
            .map(|&n| n as usize)
            .collect();
        let mut expected: Vec<String> = vec![
            "t".into(),
            "skip_refresh_at".into(),
            "sizes".into(),
            "base".into(),
        ];
        expected.extend(indexed_names("h", saved_sizes.len()));
        expected.extend(indexed_names("mask", saved_sizes.len()));
        state.expect("ire", &expected)?;
        if let Some(cur) = &self.sizes {
            check_sizes(cur, &saved_sizes)?;
        }
        if let Some(g) = &self.groups
            && !saved_sizes.is_empty()
        {
            g.check_tensors(saved_sizes.len())?;
        }
        let ranked = self.ranked_sizes(&saved_sizes);
        let t = state.get_u64("t")?;
        let skip = state.get_u64("skip_refresh_at")?;
        let h = state.load_tensors::<B, T>(b, "h", &ranked)?;
        let mask = ranked
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let bytes = state.get_tensor::<u8>(&format!("mask.{i}"), n)?;
                b.alloc_from(&crate::mask::pack(bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        let scratch = if self.needs_scratch() {
            zeros(b, &ranked)?
        } else {
            Vec::new()
        };
        // The base validates and commits itself atomically; ours cannot fail after it.
        self.base.load(b, state.get_nested("base")?)?;
        self.t = t;
        self.refresh_settled_at = if skip == u64::MAX { None } else { Some(skip) };
        self.early_refresh = None;
        self.sizes = if saved_sizes.is_empty() && t == 0 {
            None
        } else {
            Some(saved_sizes)
        };
        self.h = h;
        self.mask = mask;
        self.scratch = scratch;
        Ok(())
    }
}

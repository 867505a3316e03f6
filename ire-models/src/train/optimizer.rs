//! The six optimizers of the paper behind one type, with the paper's defaults.

use std::fmt;
use std::str::FromStr;

use ire_core::collective::select;
use ire_core::optim::{
    EstimateInput, Estimator, KappaSchedule, Optimizer, ParamGroups, TensorStep,
};
use ire_core::state::StateDict;
use ire_core::{
    AdamW, AdamWConfig, Collective, Ire, IreConfig, IreStep, Result, Sam, SamConfig, Sgd, SgdConfig,
};
use serde::{Deserialize, Serialize};

use super::choices::{EstimatorKind, GammaChoice, ThresholdKind};
use crate::nn::NnOps;

/// Which optimizer trains the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// SGD with momentum.
    Sgd,
    /// IRE around SGD.
    SgdIre,
    /// SAM around SGD.
    Sam,
    /// IRE around SAM (boosting SAM's step).
    SamIre,
    /// AdamW.
    Adamw,
    /// IRE around AdamW (AdmIRE).
    Admire,
}

impl OptimizerKind {
    /// Every name accepted on the command line.
    pub const NAMES: &'static [&'static str] =
        &["sgd", "sgd-ire", "sam", "sam-ire", "adamw", "admire"];

    /// Whether IRE wraps the base optimizer.
    pub fn is_ire(self) -> bool {
        matches!(
            self,
            OptimizerKind::SgdIre | OptimizerKind::SamIre | OptimizerKind::Admire
        )
    }

    /// Whether the step is a SAM step (two gradients).
    pub fn is_sam(self) -> bool {
        matches!(self, OptimizerKind::Sam | OptimizerKind::SamIre)
    }
}

impl FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "sgd" => OptimizerKind::Sgd,
            "sgd-ire" => OptimizerKind::SgdIre,
            "sam" => OptimizerKind::Sam,
            "sam-ire" => OptimizerKind::SamIre,
            "adamw" => OptimizerKind::Adamw,
            "admire" => OptimizerKind::Admire,
            o => {
                return Err(format!(
                    "unknown optimizer `{o}`: expected one of {}",
                    Self::NAMES.join(", ")
                ));
            }
        })
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = [
            Self::Sgd,
            Self::SgdIre,
            Self::Sam,
            Self::SamIre,
            Self::Adamw,
            Self::Admire,
        ]
        .iter()
        .position(|k| k == self)
        .unwrap_or(0);
        f.write_str(Self::NAMES[i])
    }
}

/// Every optimizer hyper-parameter; each optimizer reads the ones it uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// SGD momentum (0.9 in the paper's CIFAR runs).
    pub momentum: f64,
    /// SGD Nesterov momentum.
    pub nesterov: bool,
    /// Weight decay: coupled for SGD/SAM (5e-4), decoupled for AdamW (0.05 for images).
    pub weight_decay: f64,
    /// AdamW β1.
    pub beta1: f64,
    /// AdamW β2.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// SAM radius ρ (0.05).
    pub rho: f64,
    /// ASAM instead of SAM.
    pub adaptive: bool,
    /// IRE boost κ.
    pub kappa: f64,
    /// IRE flat fraction γ.
    pub gamma: f64,
    /// IRE mask refresh interval K (10).
    pub refresh_every: u64,
    /// IRE warm-up steps (IRE off before).
    pub ire_warmup: u64,
    /// IRE estimate EMA β (0).
    pub ire_beta: f64,
    /// κ decayed with the learning rate (`κ·lr_t/lr_max`).
    pub kappa_decay: bool,
    /// The estimator: `squared-gradient` (official), `abs-gradient`, `squared-training-gradient`.
    pub estimator: EstimatorKind,
    /// How the threshold follows from γ: `sharp-top-k` (default), `flat-kth-smallest`,
    /// `admire`.
    pub threshold_rule: ThresholdKind,
    /// How γ varies over the refreshes: `constant` (default) or `rank-increase:H`.
    pub gamma_schedule: GammaChoice,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            rho: 0.05,
            adaptive: false,
            kappa: 2.0,
            gamma: 0.8,
            refresh_every: 10,
            ire_warmup: 0,
            ire_beta: 0.0,
            kappa_decay: false,
            estimator: EstimatorKind::SquaredGradient,
            threshold_rule: ThresholdKind::SharpTopK,
            gamma_schedule: GammaChoice::default(),
        }
    }
}

impl OptimizerConfig {
    fn ire(&self, lr_max: f64) -> Result<IreConfig> {
        Ok(IreConfig {
            kappa: self.kappa,
            gamma: self.gamma,
            refresh_every: self.refresh_every,
            warmup_steps: self.ire_warmup,
            beta: self.ire_beta,
            kappa_schedule: if self.kappa_decay {
                KappaSchedule::ProportionalToLr { lr_max }
            } else {
                KappaSchedule::Constant
            },
            estimator: self.estimator.estimator(),
            threshold: self.threshold_rule.rule(),
            gamma_schedule: self.gamma_schedule.0,
        })
    }
}

type S<B> = Sgd<B, f32>;

/// One of the six optimizers, on backend `B`, in `f32`.
pub enum AnyOptimizer<B: NnOps> {
    /// SGD.
    Sgd(S<B>),
    /// SGD-IRE.
    SgdIre(Ire<B, f32, S<B>>),
    /// SAM.
    Sam(Sam<B, f32, S<B>>),
    /// SAM-IRE.
    SamIre(Ire<B, f32, Sam<B, f32, S<B>>>),
    /// AdamW.
    Adamw(AdamW<B, f32>),
    /// AdmIRE.
    Admire(Ire<B, f32, AdamW<B, f32>>),
}

impl<B: NnOps> AnyOptimizer<B> {
    /// Builds `kind` from `cfg`; every hyper-parameter is validated (errors name the field).
    /// `groups`: parameter groups of the tensors the steps will get (IRE keeps them; the base
    /// optimizers take them with every step, [`AnyOptimizer::step`]).
    pub fn new(
        kind: OptimizerKind,
        cfg: &OptimizerConfig,
        lr_max: f64,
        groups: Option<&ParamGroups>,
    ) -> Result<Self> {
        let sgd = || {
            Sgd::new(SgdConfig {
                momentum: cfg.momentum,
                dampening: 0.0,
                nesterov: cfg.nesterov,
                weight_decay: cfg.weight_decay,
            })
        };
        let adamw = || {
            AdamW::new(AdamWConfig {
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.eps,
                weight_decay: cfg.weight_decay,
            })
        };
        let sam = |base| {
            Sam::new(
                base,
                SamConfig {
                    rho: cfg.rho,
                    adaptive: cfg.adaptive,
                },
            )
        };
        /// IRE around `base`, with the groups when there are some.
        fn ire<B: NnOps, O: Optimizer<B, f32>>(
            base: O,
            cfg: IreConfig,
            groups: Option<&ParamGroups>,
        ) -> Result<Ire<B, f32, O>> {
            let o = Ire::new(base, cfg)?;
            match groups {
                Some(g) => o.with_groups(g.clone()),
                None => Ok(o),
            }
        }
        let ire_cfg = || cfg.ire(lr_max);
        Ok(match kind {
            OptimizerKind::Sgd => AnyOptimizer::Sgd(sgd()?),
            OptimizerKind::SgdIre => AnyOptimizer::SgdIre(ire(sgd()?, ire_cfg()?, groups)?),
            OptimizerKind::Sam => AnyOptimizer::Sam(sam(sgd()?)?),
            OptimizerKind::SamIre => AnyOptimizer::SamIre(ire(sam(sgd()?)?, ire_cfg()?, groups)?),
            OptimizerKind::Adamw => AnyOptimizer::Adamw(adamw()?),
            OptimizerKind::Admire => AnyOptimizer::Admire(ire(adamw()?, ire_cfg()?, groups)?),
        })
    }

    /// Whether the next step refreshes the IRE mask with an estimator gradient.
    pub fn wants_estimate(&self) -> bool {
        let due_with_input = |due: bool, est: Estimator| due && est.needs_gradient();
        match self {
            AnyOptimizer::SgdIre(o) => due_with_input(o.refresh_due(), o.config().estimator),
            AnyOptimizer::SamIre(o) => due_with_input(o.refresh_due(), o.config().estimator),
            AnyOptimizer::Admire(o) => due_with_input(o.refresh_due(), o.config().estimator),
            _ => false,
        }
    }

    /// SAM's first phase (no-op for the others): moves θ to θ + ε with the gradient at θ.
    /// SAM-IRE refreshes a due mask here, at the unperturbed θ ([`Ire::sam_perturb`]).
    pub fn perturb(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<f32>],
        grads: &[B::Buffer<f32>],
        estimate: Option<&[B::Buffer<f32>]>,
    ) -> Result<()> {
        match self {
            AnyOptimizer::Sam(o) => o.perturb(b, params, grads),
            AnyOptimizer::SamIre(o) => {
                o.sam_perturb(b, params, grads, estimate.map(EstimateInput::Gradient))
            }
            _ => Ok(()),
        }
    }

    /// SAM's squared gradient norm over `params` and `grads` as [`AnyOptimizer::perturb`]
    /// takes it (`None` for the optimizers without SAM).
    pub fn sam_squared_norm(
        &self,
        b: &B,
        params: &[B::Buffer<f32>],
        grads: &[B::Buffer<f32>],
    ) -> Result<Option<f64>> {
        match self {
            AnyOptimizer::Sam(o) => o.squared_norm(b, params, grads).map(Some),
            AnyOptimizer::SamIre(o) => o.base().squared_norm(b, params, grads).map(Some),
            _ => Ok(None),
        }
    }

    /// [`AnyOptimizer::perturb`] of one rank's pieces of a sharded optimizer state: `sq` is
    /// the squared norm of the WHOLE gradient ([`AnyOptimizer::sam_squared_norm`] over the
    /// replicated parameters), and a SAM-IRE refresh due here takes its mask from ONE
    /// threshold over the estimates of every rank of `comm`, so both equal the replicated
    /// run's bit for bit. The caller gathers the perturbed pieces.
    pub fn perturb_sharded(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<f32>],
        grads: &[B::Buffer<f32>],
        estimate: Option<&[B::Buffer<f32>]>,
        sq: f64,
        comm: &dyn Collective,
    ) -> Result<()> {
        match self {
            AnyOptimizer::Sam(o) => o.perturb_with_norm(b, params, grads, sq),
            AnyOptimizer::SamIre(o) => {
                if o.refresh_due() {
                    let sizes: Vec<usize> = params.iter().map(|p| b.len(p)).collect();
                    let input = estimate_of(o, grads, estimate).ok_or_else(|| {
                        ire_core::Error::Protocol("SAM-IRE refresh without an estimate".into())
                    })?;
                    let t = o.step_count();
                    o.refresh_now(b, &sizes, &input, None)?;
                    global_mask(o, b, params, t, comm)?;
                }
                o.base_mut().perturb_with_norm(b, params, grads, sq)
            }
            _ => Ok(()),
        }
    }

    /// The step (SAM: with the gradient at the perturbed point). Returns `(κ_t, refreshed)`.
    /// `groups`: the base optimizers' parameter groups (the IRE ones keep those given to
    /// [`AnyOptimizer::new`]).
    ///
    /// `sharded`: `params` are one rank's pieces of a parameter arena whose optimizer state is
    /// sharded over the ranks of this group (every rank steps at every step): the IRE mask of
    /// a refresh then comes from ONE threshold over the estimates of every rank
    /// ([`select::threshold`], the radix selection whose histograms are all-reduced), so it
    /// equals the unsharded mask bit for bit. SAM and SAM-IRE step their pieces as the
    /// replicated run does, after [`AnyOptimizer::perturb_sharded`].
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<f32>],
        grads: &[B::Buffer<f32>],
        lr: f64,
        estimate: Option<&[B::Buffer<f32>]>,
        groups: Option<&ParamGroups>,
        sharded: Option<&dyn Collective>,
    ) -> Result<(f64, bool)> {
        match (self, sharded) {
            (AnyOptimizer::SgdIre(o), Some(c)) => {
                ire_step_global(o, b, params, grads, lr, estimate, c)
            }
            (AnyOptimizer::Admire(o), Some(c)) => {
                ire_step_global(o, b, params, grads, lr, estimate, c)
            }
            // SAM's perturbation (with the whole gradient's norm) refreshed SAM-IRE's mask
            // from the global threshold already ([`AnyOptimizer::perturb_sharded`]): the step
            // itself is the replicated one on this rank's pieces.
            (AnyOptimizer::Sgd(o), _) => o
                .step_grouped(b, params, grads, lr, groups)
                .map(|_| (0.0, false)),
            (AnyOptimizer::Sam(o), _) => o
                .step_grouped(b, params, grads, lr, groups)
                .map(|_| (0.0, false)),
            (AnyOptimizer::Adamw(o), _) => o
                .step_grouped(b, params, grads, lr, groups)
                .map(|_| (0.0, false)),
            (AnyOptimizer::SgdIre(o), None) => o
                .step(b, params, grads, ire_ctx::<B>(lr, estimate))
                .map(|r| (r.kappa, r.refreshed)),
            (AnyOptimizer::SamIre(o), _) => o
                .step(b, params, grads, ire_ctx::<B>(lr, None))
                .map(|r| (r.kappa, r.refreshed)),
            (AnyOptimizer::Admire(o), None) => o
                .step(b, params, grads, ire_ctx::<B>(lr, estimate))
                .map(|r| (r.kappa, r.refreshed)),
        }
    }

    /// Fraction of coordinates currently flat (IRE only).
    pub fn flat_fraction(&self, b: &B, n: usize) -> Result<Option<f64>> {
        let f = |c: usize| Some(c as f64 / n.max(1) as f64);
        Ok(match self {
            AnyOptimizer::SgdIre(o) => f(o.flat_count(b)?),
            AnyOptimizer::SamIre(o) => f(o.flat_count(b)?),
            AnyOptimizer::Admire(o) => f(o.flat_count(b)?),
            _ => None,
        })
    }

    /// The IRE mask's flat count and hash ([`MaskSummary`]; `None` for the base optimizers).
    pub fn mask_summary(&self, b: &B) -> Result<Option<MaskSummary>> {
        Ok(self.mask_bytes(b)?.map(|m| {
            let mut s = MaskSummary::EMPTY;
            s.add(&m);
            s
        }))
    }

    /// The IRE masks' bytes, the tensors' concatenated in order (`None` for the base
    /// optimizers).
    pub fn mask_bytes(&self, b: &B) -> Result<Option<Vec<u8>>> {
        let masks = match self {
            AnyOptimizer::SgdIre(o) => o.mask(b)?,
            AnyOptimizer::SamIre(o) => o.mask(b)?,
            AnyOptimizer::Admire(o) => o.mask(b)?,
            _ => return Ok(None),
        };
        Ok(Some(masks.concat()))
    }

    /// The optimizer's state.
    pub fn save(&self, b: &B) -> Result<StateDict> {
        match self {
            AnyOptimizer::Sgd(o) => o.save(b),
            AnyOptimizer::SgdIre(o) => o.save(b),
            AnyOptimizer::Sam(o) => o.save(b),
            AnyOptimizer::SamIre(o) => o.save(b),
            AnyOptimizer::Adamw(o) => o.save(b),
            AnyOptimizer::Admire(o) => o.save(b),
        }
    }

    /// Restores saved state (all-or-nothing).
    pub fn load(&mut self, b: &B, s: &StateDict) -> Result<()> {
        match self {
            AnyOptimizer::Sgd(o) => o.load(b, s),
            AnyOptimizer::SgdIre(o) => o.load(b, s),
            AnyOptimizer::Sam(o) => o.load(b, s),
            AnyOptimizer::SamIre(o) => o.load(b, s),
            AnyOptimizer::Adamw(o) => o.load(b, s),
            AnyOptimizer::Admire(o) => o.load(b, s),
        }
    }
}

/// What a run records of the IRE mask: the number of flat coordinates and the 64-bit FNV-1a
/// hash of the mask bytes (one byte per coordinate, 0 = sharp, 1 = flat, the tensors'
/// masks concatenated in order), so two runs can be compared mask for mask from their metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskSummary {
    /// Flat coordinates (non-zero mask bytes).
    pub flat: usize,
    /// FNV-1a 64 of the mask bytes.
    pub fnv1a64: u64,
}

impl MaskSummary {
    /// The summary of no byte (FNV-1a's offset basis).
    pub const EMPTY: MaskSummary = MaskSummary {
        flat: 0,
        fnv1a64: 0xcbf2_9ce4_8422_2325,
    };

    /// Appends `bytes` to the summarized mask.
    pub fn add(&mut self, bytes: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        for &x in bytes {
            self.fnv1a64 = (self.fnv1a64 ^ u64::from(x)).wrapping_mul(PRIME);
            self.flat += usize::from(x != 0);
        }
    }

    /// The hash as 16 lowercase hex digits.
    pub fn hash_hex(&self) -> String {
        format!("{:016x}", self.fnv1a64)
    }
}

/// One IRE step whose mask, at a refresh, is rebuilt from the global threshold over the
/// estimates of every rank of `comm` (see [`AnyOptimizer::step`]). The optimizer's own
/// refresh first updates the estimate `h` of this rank's pieces (and a local mask, replaced
/// here before any tensor moves).
fn ire_step_global<B: NnOps, O: Optimizer<B, f32>>(
    o: &mut Ire<B, f32, O>,
    b: &B,
    params: &mut [B::Buffer<f32>],
    grads: &[B::Buffer<f32>],
    lr: f64,
    est: Option<&[B::Buffer<f32>]>,
    comm: &dyn Collective,
) -> Result<(f64, bool)> {
    let sizes: Vec<usize> = params.iter().map(|p| b.len(p)).collect();
    let estimate = estimate_of(o, grads, est);
    let t = o.step_count();
    let report = o.begin_step(b, &sizes, IreStep { lr, estimate })?;
    if report.refreshed {
        global_mask(o, b, params, t, comm)?;
    }
    for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
        let hp = o
            .groups()
            .map_or(TensorStep::lr(lr), |gr| gr.tensor_step(i, lr));
        o.step_tensor(b, i, p, g, hp)?;
    }
    let r = o.end_step()?;
    Ok((r.kappa, r.refreshed))
}

/// The estimator input of an IRE refresh: the estimator gradient, or the training gradient
/// for the estimator that squares it.
fn estimate_of<'a, B: NnOps, O: Optimizer<B, f32>>(
    o: &Ire<B, f32, O>,
    grads: &'a [B::Buffer<f32>],
    est: Option<&'a [B::Buffer<f32>]>,
) -> Option<EstimateInput<'a, B, f32>> {
    match est {
        Some(e) => Some(EstimateInput::Gradient(e)),
        None if o.config().estimator == Estimator::SquaredTrainingGradient => {
            Some(EstimateInput::Gradient(grads))
        }
        None => None,
    }
}

/// Replaces the mask of a refresh at step `t` (made from this rank's estimate `h`) with the
/// mask of ONE threshold over the estimates of every rank of `comm` ([`select::threshold`]).
fn global_mask<B: NnOps, O: Optimizer<B, f32>>(
    o: &mut Ire<B, f32, O>,
    b: &B,
    params: &[B::Buffer<f32>],
    t: u64,
    comm: &dyn Collective,
) -> Result<()> {
    let cfg = *o.config();
    let h = o
        .estimate()
        .iter()
        .map(|x| b.to_vec(x))
        .collect::<Result<Vec<_>>>()?;
    let parts: Vec<&[f32]> = h.iter().map(Vec::as_slice).collect();
    let rank = cfg
        .gamma_schedule
        .rank_at(cfg.gamma, t.saturating_sub(cfg.warmup_steps));
    let th = select::threshold(&parts, cfg.threshold, rank, comm)?;
    let masks: Vec<Vec<u8>> = h
        .iter()
        .map(|v| v.iter().map(|&x| th.mask(x)).collect())
        .collect();
    let refs: Vec<&[u8]> = masks.iter().map(Vec::as_slice).collect();
    o.set_mask(b, params, &refs)
}

fn ire_ctx<B: NnOps>(lr: f64, est: Option<&[B::Buffer<f32>]>) -> IreStep<'_, B, f32> {
    IreStep {
        lr,
        estimate: est.map(EstimateInput::Gradient),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ire_core::optim::{GammaSchedule, ThresholdRule};

    #[test]
    fn the_mask_hash_is_fnv1a_64() {
        // Reference values of FNV-1a 64: "" → cbf29ce484222325, "a" → af63dc4c8601ec8c.
        assert_eq!(MaskSummary::EMPTY.hash_hex(), "cbf29ce484222325");
        let mut s = MaskSummary::EMPTY;
        s.add(b"a");
        assert_eq!(s.hash_hex(), "af63dc4c8601ec8c");
        let (mut whole, mut parts) = (MaskSummary::EMPTY, MaskSummary::EMPTY);
        whole.add(&[0, 1, 1, 0, 1]);
        parts.add(&[0, 1]);
        parts.add(&[1, 0, 1]);
        assert_eq!(whole, parts);
        assert_eq!(whole.flat, 3);
    }

    #[test]
    fn the_threshold_rule_and_gamma_schedule_reach_the_optimizer() {
        let mut c = OptimizerConfig::default();
        assert_eq!(c.ire(0.1).unwrap().threshold, ThresholdRule::SharpTopK);
        for (kind, rule) in [
            (
                ThresholdKind::FlatKthSmallest,
                ThresholdRule::FlatKthSmallest,
            ),
            (ThresholdKind::Admire, ThresholdRule::AdmIre),
        ] {
            c.threshold_rule = kind;
            assert_eq!(c.ire(0.1).unwrap().threshold, rule);
        }
        c.gamma_schedule = "rank-increase:400".parse().unwrap();
        assert_eq!(
            c.ire(0.1).unwrap().gamma_schedule,
            GammaSchedule::RankIncrease { horizon: 400 }
        );
    }
}

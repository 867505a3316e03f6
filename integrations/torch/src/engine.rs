//! The optimizer behind every Python class: ire-core's [`Ire`] over a base (fused SGD, fused
//! AdamW, or a base step torch takes), optionally inside SAM, stepping tensors' own memory on
//! the backend of their device ([`TensorBackend`]: the CPU, or CUDA).
//!
//! The engine owns the optimizer state (moments, estimate, mask, SAM's copy of `θ`, the
//! external base's `θ_old`) in its backend's memory, allocated at the first step and reused;
//! the parameters, gradients and estimator gradients are borrowed from torch's tensors for one
//! call at a time ([`crate::device`], [`crate::backends`]). Every check (counts, sizes, dtypes, overlaps, finiteness when asked)
//! runs before anything is written, so a refused call leaves parameters and state as they were.
//!
//! # Safety of the `unsafe` methods
//! Every span passed in was read by [`device::span_of`] from a tensor the caller holds for the
//! whole call, and the call runs while holding the Python interpreter: no Python code can free,
//! resize or write those tensors until it returns. The methods themselves check the spans
//! against each other ([`device::check_disjoint`]) before any buffer is made.

use ire_core::optim::{
    EstimateInput, Estimator, External, IreReport, IreStep, Optimizer, ParamGroup, ParamGroups,
    TensorStep,
};
use ire_core::state::StateDict;
use ire_core::{AdamW, DType, Element, Ire, IreConfig, Sam, SamConfig, Sgd};

use crate::backends::TensorBackend;
use crate::config::{BaseSpec, Cadence};
use crate::device::{self, Span, TorchScalar};
use crate::error::{Result, Role, RoleKind, TorchError};
use crate::place::Place;

/// Parameter buffers (written) and gradient buffers (read; `None` where torch has no `.grad`).
type Borrowed<B, T> = (
    Vec<<B as ire_core::Backend>::Buffer<T>>,
    Vec<Option<<B as ire_core::Backend>::Buffer<T>>>,
);

/// The optimizer, by base.
enum Base<B: TensorBackend, T: TorchScalar> {
    Sgd(Ire<B, T, Sgd<B, T>>),
    AdamW(Ire<B, T, AdamW<B, T>>),
    External(Ire<B, T, External>),
    SamSgd(Ire<B, T, Sam<B, T, Sgd<B, T>>>),
    SamAdamW(Ire<B, T, Sam<B, T, AdamW<B, T>>>),
    SamExternal(Ire<B, T, Sam<B, T, External>>),
}

/// Runs `$body` with `$ire` bound to the [`Ire`] of whichever base.
macro_rules! each {
    ($base:expr, $ire:ident => $body:expr) => {
        match $base {
            Base::Sgd($ire) => $body,
            Base::AdamW($ire) => $body,
            Base::External($ire) => $body,
            Base::SamSgd($ire) => $body,
            Base::SamAdamW($ire) => $body,
            Base::SamExternal($ire) => $body,
        }
    };
}

/// What the engine is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineSpec {
    /// Element count of each parameter tensor.
    pub sizes: Vec<usize>,
    /// Number of torch parameter groups (empty ones included).
    pub groups: usize,
    /// The torch parameter group of each tensor (0-based, in the optimizer's group order).
    pub group_of: Vec<usize>,
    /// Whether each tensor takes part in IRE (ranked and boosted): its group's `ire` option
    /// and its own `requires_grad`.
    pub takes_part: Vec<bool>,
    /// The base step.
    pub base: BaseSpec,
    /// SAM around the base, if any.
    pub sam: Option<SamConfig>,
    /// IRE's hyper-parameters.
    pub ire: IreConfig,
    /// When refreshes happen.
    pub cadence: Cadence,
}

/// The optimizer of one dtype over a fixed list of tensors on the device of backend `B`.
pub struct Engine<B: TensorBackend, T: TorchScalar> {
    b: B,
    base: Base<B, T>,
    sizes: Vec<usize>,
    takes_part: Vec<bool>,
    /// The torch group of each tensor (its learning rate and weight decay at each step).
    group_of: Vec<usize>,
    /// Number of torch groups.
    torch_groups: usize,
    cadence: Cadence,
}

/// A step's per-tensor learning rate and weight decay, checked before any tensor moves.
fn check_hp(hp: &TensorStep) -> Result<()> {
    let bad = |field, value| {
        Err(TorchError::Core(ire_core::Error::InvalidHyperParameter {
            field,
            value,
            allowed: ">= 0, finite",
        }))
    };
    if !(hp.lr >= 0.0 && hp.lr.is_finite()) {
        return bad("lr", hp.lr);
    }
    match hp.weight_decay {
        Some(wd) if !(wd >= 0.0 && wd.is_finite()) => bad("weight_decay", wd),
        _ => Ok(()),
    }
}

fn role(kind: RoleKind, index: usize) -> Role {
    Role { kind, index }
}

impl<B: TensorBackend, T: TorchScalar> Engine<B, T> {
    /// A new engine on backend `b`; fails on a bad hyper-parameter or a spec whose lists
    /// disagree.
    pub fn new(b: B, spec: &EngineSpec) -> Result<Self> {
        let groups = ire_groups(spec)?;
        let cfg = spec.ire;
        let base = match (spec.base, spec.sam) {
            (BaseSpec::Sgd(c), None) => {
                Base::Sgd(Ire::new(Sgd::new(c)?, cfg)?.with_groups(groups)?)
            }
            (BaseSpec::AdamW(c), None) => {
                Base::AdamW(Ire::new(AdamW::new(c)?, cfg)?.with_groups(groups)?)
            }
            (BaseSpec::External, None) => {
                Base::External(Ire::new(External, cfg)?.with_groups(groups)?)
            }
            (BaseSpec::Sgd(c), Some(s)) => {
                Base::SamSgd(Ire::new(Sam::new(Sgd::new(c)?, s)?, cfg)?.with_groups(groups)?)
            }
            (BaseSpec::AdamW(c), Some(s)) => {
                Base::SamAdamW(Ire::new(Sam::new(AdamW::new(c)?, s)?, cfg)?.with_groups(groups)?)
            }
            (BaseSpec::External, Some(s)) => {
                Base::SamExternal(Ire::new(Sam::new(External, s)?, cfg)?.with_groups(groups)?)
            }
        };
        Ok(Engine {
            b,
            base,
            sizes: spec.sizes.clone(),
            takes_part: spec.takes_part.clone(),
            group_of: spec.group_of.clone(),
            torch_groups: spec.groups,
            cadence: spec.cadence,
        })
    }

    /// The kind's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self.base {
            Base::Sgd(_) => "fused SGD",
            Base::AdamW(_) => "fused AdamW",
            Base::External(_) => "external-base",
            Base::SamSgd(_) => "SAM + fused SGD",
            Base::SamAdamW(_) => "SAM + fused AdamW",
            Base::SamExternal(_) => "SAM + external-base",
        }
    }

    /// Replaces the backend (its device unchanged; on CUDA, to follow torch to another
    /// stream): the old one's queued work completes first, and the state carries over.
    pub fn replace_backend(&mut self, b: B) -> Result<()> {
        if b.place() != self.b.place() {
            return Err(TorchError::Core(ire_core::Error::InvalidInput {
                what: format!(
                    "a backend on {} for an engine on {}",
                    b.place(),
                    self.b.place()
                ),
            }));
        }
        self.b.synchronize()?;
        self.b = b;
        Ok(())
    }

    /// The device of the engine's tensors.
    pub fn place(&self) -> Place {
        self.b.place()
    }

    /// Element count of each tensor.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The IRE hyper-parameters.
    pub fn config(&self) -> IreConfig {
        each!(&self.base, ire => *ire.config())
    }

    /// Replaces the IRE hyper-parameters (state kept).
    pub fn set_config(&mut self, cfg: IreConfig) -> Result<()> {
        each!(&mut self.base, ire => ire.set_config(cfg))?;
        Ok(())
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        each!(&self.base, ire => ire.step_count())
    }

    /// Whether the next step needs a refresh first (never under [`Cadence::OnCall`], nor for
    /// the training-gradient estimator, whose refresh the step does itself).
    pub fn refresh_due(&self) -> bool {
        self.cadence == Cadence::Scheduled
            && self.config().estimator != Estimator::SquaredTrainingGradient
            && each!(&self.base, ire => ire.refresh_due())
    }

    /// Under [`Cadence::OnCall`], settles a refresh the schedule would have due, so that no
    /// step waits for one.
    fn settle_cadence(&mut self) {
        if self.cadence == Cadence::OnCall {
            each!(&mut self.base, ire => if ire.refresh_due() { ire.keep_mask_this_step() });
        }
    }

    /// Checks a list of spans against the tensor sizes and the dtype.
    fn check_spans<'s>(
        &self,
        spans: impl ExactSizeIterator<Item = (usize, &'s Span)>,
        what: &'static str,
        count: usize,
    ) -> Result<()> {
        if count != self.sizes.len() {
            return Err(TorchError::Count {
                what,
                expected: self.sizes.len(),
                found: count,
            });
        }
        let place = self.b.place();
        for (i, s) in spans {
            if s.place != place {
                return Err(TorchError::OtherDevice {
                    role: s.role,
                    found: s.place,
                    expected: place,
                });
            }
            if s.dtype != T::DTYPE {
                return Err(TorchError::MixedDType {
                    role: s.role,
                    found: s.dtype,
                    expected: T::DTYPE,
                });
            }
            if s.len != self.sizes[i] {
                return Err(TorchError::Core(ire_core::Error::SizeMismatch {
                    what: format!("{} (vs the optimizer's tensor {i})", s.role),
                    expected: self.sizes[i],
                    found: s.len,
                }));
            }
        }
        Ok(())
    }

    fn check_params(&self, params: &[Span]) -> Result<()> {
        self.check_spans(params.iter().enumerate(), "parameter tensors", params.len())
    }

    fn check_grads(&self, grads: &[Option<Span>]) -> Result<()> {
        self.check_spans(
            grads
                .iter()
                .enumerate()
                .filter_map(|(i, g)| g.as_ref().map(|g| (i, g)))
                .collect::<Vec<_>>()
                .into_iter(),
            "gradient tensors",
            grads.len(),
        )
    }

    /// Refuses the call if any present gradient holds a NaN or an infinity.
    fn check_finite(&self, grads: &[Option<B::Buffer<T>>]) -> Result<()> {
        for (i, g) in grads.iter().enumerate() {
            if let Some(g) = g
                && self.b.count_non_finite(g)? > 0
            {
                return Err(TorchError::Core(ire_core::Error::NonFinite {
                    what: format!(
                        "{} (the step was refused; parameters and state are unchanged)",
                        role(RoleKind::Gradient, i)
                    ),
                }));
            }
        }
        Ok(())
    }

    /// Borrowed buffers over the parameters (written) and the gradients present (read).
    ///
    /// # Safety
    /// The module's contract (see its documentation).
    unsafe fn borrow(&self, params: &[Span], grads: &[Option<Span>]) -> Result<Borrowed<B, T>> {
        self.check_params(params)?;
        self.check_grads(grads)?;
        let read: Vec<Span> = grads.iter().flatten().copied().collect();
        device::check_disjoint(params, &read)?;
        // SAFETY: the caller's contract, and the parameters overlap nothing else.
        let p = params
            .iter()
            .map(|s| unsafe { self.b.wrap_mut::<T>(s) })
            .collect::<Result<Vec<_>>>()?;
        // SAFETY: as above; gradients are only read.
        let g = grads
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|s| unsafe { self.b.wrap::<T>(s) })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((p, g))
    }

    /// Whether the coming step refreshes from its own training gradients.
    fn trains_estimate(&self) -> bool {
        self.cadence == Cadence::Scheduled
            && self.config().estimator == Estimator::SquaredTrainingGradient
            && each!(&self.base, ire => ire.refresh_due())
    }

    /// Read-only views of the training gradients as the estimate of a refresh; a tensor that
    /// takes no part and has no gradient gets a view of its parameter, which is never read
    /// (its estimate is empty).
    ///
    /// # Safety
    /// The module's contract, and `borrow`'s checks passed for these spans; the views are used
    /// only while the step does not write the parameters (its refresh).
    unsafe fn estimate_views(
        &self,
        params: &[Span],
        grads: &[Option<Span>],
    ) -> Result<Vec<B::Buffer<T>>> {
        grads
            .iter()
            .zip(params)
            .enumerate()
            .map(|(i, (g, p))| {
                let span = match g {
                    Some(g) => g,
                    None if !self.takes_part[i] => p,
                    None => {
                        return Err(TorchError::Missing {
                            role: role(RoleKind::Gradient, i),
                        });
                    }
                };
                // SAFETY: the caller's contract; only read.
                unsafe { self.b.wrap::<T>(span) }
            })
            .collect()
    }

    /// One fused step (SGD, AdamW, or either inside SAM after [`Engine::sam_perturb`]):
    /// tensors whose gradient is `None` are skipped, as torch's optimizers skip them (SAM
    /// needs every gradient). `hps` carries each torch group's learning rate and weight decay
    /// (a tensor steps with its group's); `kappa_lr` is the learning rate κ's schedule reads.
    ///
    /// # Safety
    /// The module's contract (see its documentation).
    pub unsafe fn step(
        &mut self,
        params: &[Span],
        grads: &[Option<Span>],
        hps: &[TensorStep],
        kappa_lr: f64,
        check_finite: bool,
    ) -> Result<IreReport> {
        if hps.len() != self.torch_groups {
            return Err(TorchError::Count {
                what: "per-group learning rates",
                expected: self.torch_groups,
                found: hps.len(),
            });
        }
        hps.iter().try_for_each(check_hp)?;
        let sam = matches!(self.base, Base::SamSgd(_) | Base::SamAdamW(_));
        if sam && let Some(i) = grads.iter().position(Option::is_none) {
            return Err(TorchError::Missing {
                role: role(RoleKind::Gradient, i),
            });
        }
        // SAFETY: forwarded.
        let (mut p, g) = unsafe { self.borrow(params, grads)? };
        if check_finite {
            self.check_finite(&g)?;
        }
        self.settle_cadence();
        let est = if self.trains_estimate() {
            // SAFETY: forwarded; the refresh runs in `begin_step`, before any tensor moves.
            Some(unsafe { self.estimate_views(params, grads)? })
        } else {
            None
        };
        let b = &self.b;
        let sizes = &self.sizes;
        let hps = Hps {
            of_group: hps,
            group_of: &self.group_of,
        };
        let ctx = IreStep {
            lr: kappa_lr,
            estimate: est.as_deref().map(EstimateInput::Gradient),
        };
        match &mut self.base {
            Base::Sgd(ire) => fused_step(ire, b, sizes, &mut p, &g, hps, ctx),
            Base::AdamW(ire) => fused_step(ire, b, sizes, &mut p, &g, hps, ctx),
            Base::SamSgd(ire) => fused_step(ire, b, sizes, &mut p, &g, hps, ctx),
            Base::SamAdamW(ire) => fused_step(ire, b, sizes, &mut p, &g, hps, ctx),
            Base::External(_) | Base::SamExternal(_) => Err(TorchError::WrongKind {
                op: "a fused step",
                kind: "external-base",
            }),
        }
    }

    /// Refreshes the estimate and the mask now, from estimator gradients (one per tensor;
    /// `None` allowed only for tensors that take no part). `gamma` overrides γ for this refresh.
    ///
    /// # Safety
    /// The module's contract (see its documentation) (`params` are only read here).
    pub unsafe fn refresh(
        &mut self,
        params: &[Span],
        estimates: &[Option<Span>],
        gamma: Option<f64>,
    ) -> Result<Option<f64>> {
        self.check_params(params)?;
        self.check_spans(
            estimates
                .iter()
                .enumerate()
                .filter_map(|(i, g)| g.as_ref().map(|g| (i, g)))
                .collect::<Vec<_>>()
                .into_iter(),
            "estimator gradient tensors",
            estimates.len(),
        )?;
        let mut bufs = Vec::with_capacity(estimates.len());
        for (i, e) in estimates.iter().enumerate() {
            let span = match e {
                Some(s) => s,
                None if !self.takes_part[i] => &params[i],
                None => {
                    return Err(TorchError::Missing {
                        role: role(RoleKind::Estimate, i),
                    });
                }
            };
            // SAFETY: the caller's contract; nothing is written during a refresh except the
            // engine's own state.
            bufs.push(unsafe { self.b.wrap::<T>(span)? });
        }
        let input = EstimateInput::Gradient(&bufs);
        let (b, sizes) = (&self.b, &self.sizes);
        let tau = each!(&mut self.base, ire => ire.refresh_now(b, sizes, &input, gamma))?;
        Ok(tau)
    }

    /// Starts a step whose base step torch takes: checks, refreshes when due (the
    /// training-gradient estimator reads `grads`) and copies `θ` as `θ_old`.
    ///
    /// # Safety
    /// The module's contract (see its documentation).
    pub unsafe fn begin_external(
        &mut self,
        params: &[Span],
        grads: &[Option<Span>],
        kappa_lr: f64,
        check_finite: bool,
    ) -> Result<IreReport> {
        // SAFETY: forwarded.
        let (p, g) = unsafe { self.borrow(params, grads)? };
        if check_finite {
            self.check_finite(&g)?;
        }
        self.settle_cadence();
        let est = if self.trains_estimate() {
            // SAFETY: forwarded; `begin_external` writes only the engine's own state.
            Some(unsafe { self.estimate_views(params, grads)? })
        } else {
            None
        };
        let ctx = IreStep {
            lr: kappa_lr,
            estimate: est.as_deref().map(EstimateInput::Gradient),
        };
        let b = &self.b;
        match &mut self.base {
            Base::External(ire) => Ok(ire.begin_external(b, &p, ctx)?),
            Base::SamExternal(ire) => Ok(ire.begin_external(b, &p, ctx)?),
            _ => Err(TorchError::WrongKind {
                op: "begin_external",
                kind: self.kind(),
            }),
        }
    }

    /// Boosts the displacement of torch's base step.
    ///
    /// # Safety
    /// The module's contract (see its documentation).
    pub unsafe fn finish_external(&mut self, params: &[Span]) -> Result<IreReport> {
        // SAFETY: forwarded.
        let (mut p, _) = unsafe { self.borrow(params, &vec![None; params.len()])? };
        let b = &self.b;
        match &mut self.base {
            Base::External(ire) => Ok(ire.finish_external(b, &mut p)?),
            Base::SamExternal(ire) => Ok(ire.finish_external(b, &mut p)?),
            _ => Err(TorchError::WrongKind {
                op: "finish_external",
                kind: self.kind(),
            }),
        }
    }

    /// Abandons an external step whose base step failed.
    pub fn cancel_external(&mut self) -> Result<()> {
        each!(&mut self.base, ire => ire.cancel_external())?;
        Ok(())
    }

    /// SAM's first phase: saves `θ` and moves it to `θ + ε` (every gradient required).
    ///
    /// # Safety
    /// The module's contract (see its documentation).
    pub unsafe fn sam_perturb(
        &mut self,
        params: &[Span],
        grads: &[Option<Span>],
        check_finite: bool,
    ) -> Result<()> {
        if let Some(i) = grads.iter().position(Option::is_none) {
            return Err(TorchError::Missing {
                role: role(RoleKind::Gradient, i),
            });
        }
        // SAFETY: forwarded.
        let (mut p, g) = unsafe { self.borrow(params, grads)? };
        if check_finite {
            self.check_finite(&g)?;
        }
        let g: Vec<B::Buffer<T>> = g.into_iter().flatten().collect();
        self.settle_cadence();
        let b = &self.b;
        match &mut self.base {
            Base::SamSgd(ire) => ire.sam_perturb(b, &mut p, &g, None)?,
            Base::SamAdamW(ire) => ire.sam_perturb(b, &mut p, &g, None)?,
            Base::SamExternal(ire) => ire.sam_perturb(b, &mut p, &g, None)?,
            _ => {
                return Err(TorchError::WrongKind {
                    op: "SAM's perturbation",
                    kind: self.kind(),
                });
            }
        }
        Ok(())
    }

    /// Puts `θ` back to its value before [`Engine::sam_perturb`] (for an external base, whose
    /// step torch takes; the fused SAM steps restore `θ` themselves).
    ///
    /// # Safety
    /// The module's contract (see its documentation).
    pub unsafe fn sam_restore(&mut self, params: &[Span]) -> Result<()> {
        // SAFETY: forwarded.
        let (mut p, _) = unsafe { self.borrow(params, &vec![None; params.len()])? };
        let b = &self.b;
        match &mut self.base {
            Base::SamExternal(ire) => Ok(ire.base_mut().restore(b, &mut p)?),
            Base::SamSgd(ire) => Ok(ire.base_mut().restore(b, &mut p)?),
            Base::SamAdamW(ire) => Ok(ire.base_mut().restore(b, &mut p)?),
            _ => Err(TorchError::WrongKind {
                op: "SAM's restore",
                kind: self.kind(),
            }),
        }
    }

    /// Copies tensor `i`'s mask (1 = flat) into `out` (a `torch.uint8` tensor of the tensor's
    /// size on the engine's device); zeros before the first step and for a tensor that takes
    /// no part.
    ///
    /// # Safety
    /// The module's contract for `out`, which nothing else of the call reads or writes.
    pub unsafe fn mask_into(&self, i: usize, out: &Span) -> Result<()> {
        self.check_index(i, out)?;
        check_out_dtype(out, DType::U8)?;
        let mask = each!(&self.base, ire => ire.packed_mask().get(i).filter(|m| self.b.len(m) > 0));
        // SAFETY: the caller's contract.
        let mut dst = unsafe { self.b.wrap_mut::<u8>(out)? };
        // The mask is stored packed (one bit per coordinate): unpacked here, on the backend.
        match mask {
            Some(m) => self.b.mask_unpack(m, &mut dst)?,
            None => self.b.fill(&mut dst, 0u8)?,
        }
        Ok(())
    }

    /// Copies tensor `i`'s estimate `h` into `out` (as [`Engine::mask_into`], of the dtype).
    ///
    /// # Safety
    /// As for [`Engine::mask_into`].
    pub unsafe fn estimate_into(&self, i: usize, out: &Span) -> Result<()> {
        self.check_index(i, out)?;
        check_out_dtype(out, T::DTYPE)?;
        let h = each!(&self.base, ire => ire.estimate().get(i).filter(|h| self.b.len(h) > 0));
        // SAFETY: the caller's contract.
        unsafe { self.copy_or_zero(h, out) }
    }

    /// Copies `src` into `out`, or zeros it when there is no `src`, on the backend.
    ///
    /// # Safety
    /// The module's contract for `out`, of `src`'s length and element type.
    unsafe fn copy_or_zero<E: Element>(
        &self,
        src: Option<&B::Buffer<E>>,
        out: &Span,
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        let mut dst = unsafe { self.b.wrap_mut::<E>(out)? };
        match src {
            Some(s) => self.b.copy(s, &mut dst)?,
            None => self.b.fill(&mut dst, E::default())?,
        }
        Ok(())
    }

    /// Number of flat coordinates of tensor `i` (0 for a tensor that takes no part).
    pub fn flat_count(&self, i: usize) -> Result<usize> {
        let mask = each!(&self.base, ire => ire.packed_mask().get(i).filter(|m| self.b.len(m) > 0));
        Ok(match mask {
            Some(m) => self.b.count_flat(m)?,
            None => 0,
        })
    }

    fn check_index(&self, i: usize, out: &Span) -> Result<()> {
        let n = *self.sizes.get(i).ok_or(TorchError::Count {
            what: "tensors (index out of range)",
            expected: self.sizes.len(),
            found: i + 1,
        })?;
        if out.len != n {
            return Err(TorchError::Core(ire_core::Error::SizeMismatch {
                what: format!("{} (vs the optimizer's tensor {i})", out.role),
                expected: n,
                found: out.len,
            }));
        }
        Ok(())
    }

    /// The whole state (ire-core's format: IRE's estimate, mask and counters, the base's).
    pub fn save(&self) -> Result<StateDict> {
        Ok(each!(&self.base, ire => Optimizer::save(ire, &self.b))?)
    }

    /// Restores a state saved by [`Engine::save`] (all or nothing).
    pub fn load(&mut self, state: &StateDict) -> Result<()> {
        let b = &self.b;
        each!(&mut self.base, ire => Optimizer::load(ire, b, state))?;
        Ok(())
    }
}

fn check_out_dtype(out: &Span, dtype: DType) -> Result<()> {
    if out.dtype != dtype {
        return Err(TorchError::DType {
            role: out.role,
            found: crate::error::torch_name(out.dtype).to_string(),
            expected: crate::error::torch_name(dtype),
        });
    }
    Ok(())
}

/// The fused step of one base: begin, each tensor with a gradient, end.
fn fused_step<B: TensorBackend, T: TorchScalar, O: Optimizer<B, T>>(
    ire: &mut Ire<B, T, O>,
    b: &B,
    sizes: &[usize],
    params: &mut [B::Buffer<T>],
    grads: &[Option<B::Buffer<T>>],
    hps: Hps<'_>,
    ctx: IreStep<'_, B, T>,
) -> Result<IreReport> {
    ire.begin_step(b, sizes, ctx)?;
    for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
        if let Some(g) = g
            && let Err(e) = ire.step_tensor(b, i, p, g, hps.of_tensor(i))
        {
            // Sizes, dtypes and hyper-parameters were checked before the step began, so
            // this is a backend failure; close the step so the optimizer stays usable.
            let _ = ire.end_step();
            return Err(e.into());
        }
    }
    Ok(ire.end_step()?)
}

/// Each torch group's learning rate and weight decay, and the group of each tensor.
#[derive(Clone, Copy)]
struct Hps<'a> {
    of_group: &'a [TensorStep],
    group_of: &'a [usize],
}

impl Hps<'_> {
    /// Tensor `i`'s step (the lists were checked against each other when the engine was made
    /// and when the step began).
    fn of_tensor(&self, i: usize) -> TensorStep {
        self.of_group[self.group_of[i]]
    }
}

/// ire-core's parameter groups for the torch groups: one per torch group and participation
/// (a tensor without `requires_grad` takes no part even in a group IRE boosts), so that each
/// ire-core group is exactly a set of tensors IRE treats alike. Learning rates and weight
/// decays stay the torch groups' own, read at every step (a scheduler changes them), so the
/// ire-core groups keep scale 1 and the base's weight decay.
fn ire_groups(spec: &EngineSpec) -> Result<ParamGroups> {
    let n = spec.sizes.len();
    for (what, found) in [
        (
            "participation flags (one per parameter)",
            spec.takes_part.len(),
        ),
        ("group indices (one per parameter)", spec.group_of.len()),
    ] {
        if found != n {
            return Err(TorchError::Count {
                what,
                expected: n,
                found,
            });
        }
    }
    if let Some(&g) = spec.group_of.iter().find(|&&g| g >= spec.groups) {
        return Err(TorchError::Count {
            what: "parameter groups (a parameter names a group past the last)",
            expected: spec.groups,
            found: g + 1,
        });
    }
    let mut kinds: Vec<(usize, bool)> = Vec::new();
    let mut of_tensor = Vec::with_capacity(n);
    for (&g, &part) in spec.group_of.iter().zip(&spec.takes_part) {
        let k = match kinds.iter().position(|&k| k == (g, part)) {
            Some(k) => k,
            None => {
                kinds.push((g, part));
                kinds.len() - 1
            }
        };
        of_tensor.push(k);
    }
    let groups = kinds
        .iter()
        .map(|&(_, ire)| ParamGroup {
            ire,
            ..ParamGroup::default()
        })
        .collect();
    Ok(ParamGroups::new(groups, of_tensor)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ire_backend_cpu::CpuBackend;

    fn spec(groups: usize, group_of: Vec<usize>, takes_part: Vec<bool>) -> EngineSpec {
        EngineSpec {
            sizes: vec![3; takes_part.len()],
            groups,
            group_of,
            takes_part,
            base: BaseSpec::External,
            sam: None,
            ire: IreConfig::default(),
            cadence: Cadence::Scheduled,
        }
    }

    #[test]
    fn one_ire_group_per_torch_group_and_participation() {
        // Torch groups 0 (IRE on; its second tensor frozen), 1 (IRE off), 2 (empty), 3 (on).
        let s = spec(4, vec![0, 0, 1, 0, 3], vec![true, false, false, true, true]);
        let g = ire_groups(&s).unwrap();
        assert_eq!(g.groups().len(), 4);
        assert_eq!(g.tensors(), 5);
        let part: Vec<bool> = (0..5).map(|i| g.takes_part(i)).collect();
        assert_eq!(part, s.takes_part);
        // Tensors 0 and 3 share (group 0, on); every ire-core group keeps scale 1 and the
        // base's weight decay (the torch groups' own values arrive with each step).
        assert_eq!(g.group_of(0), g.group_of(3));
        assert!(
            g.groups()
                .iter()
                .all(|p| p.lr_scale == 1.0 && p.weight_decay.is_none())
        );
        let hp = [
            TensorStep::lr(0.1),
            TensorStep::lr(0.2),
            TensorStep::lr(0.3),
            {
                TensorStep {
                    lr: 0.4,
                    weight_decay: Some(0.5),
                }
            },
        ];
        let hps = Hps {
            of_group: &hp,
            group_of: &s.group_of,
        };
        assert_eq!(hps.of_tensor(2), TensorStep::lr(0.2));
        assert_eq!(hps.of_tensor(4), hp[3]);
        assert!(Engine::<CpuBackend, f32>::new(CpuBackend::new(), &s).is_ok());
    }

    #[test]
    fn group_lists_that_disagree_are_refused_by_name() {
        let short = spec(1, vec![0], vec![true, true]);
        assert!(matches!(
            ire_groups(&short),
            Err(TorchError::Count { what, expected: 2, found: 1 }) if what.starts_with("group")
        ));
        let past = spec(2, vec![0, 2], vec![true, true]);
        assert!(matches!(
            Engine::<CpuBackend, f64>::new(CpuBackend::new(), &past),
            Err(TorchError::Count {
                expected: 2,
                found: 3,
                ..
            })
        ));
    }
}

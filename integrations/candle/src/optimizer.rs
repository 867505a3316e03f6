//! [`IreOptimizer`]: IRE over any `ire-core` base optimizer as a [`candle_nn::Optimizer`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use ire_backend_cpu::CpuBackend;
use ire_core::optim::{
    EstimateInput, Estimator, IreReport, IreStep, Optimizer as CoreOptimizer, ParamGroups,
    TensorStep,
};
use ire_core::state::StateDict;
use ire_core::{AdamW, AdamWConfig, Ire, IreConfig, Sam, SamConfig, Sgd, SgdConfig};

use crate::borrow::{step_in_place, with_read, with_vars_mut};
use crate::element::CandleElement;
use crate::error::{Error, Result};
use crate::state_file::{read_state, write_state};

/// A base optimizer the adapter can build from a configuration: AdamW, SGD, SAM over either,
/// or one of yours (implement `ire_core::Optimizer` and this; or build the [`Ire`] yourself and
/// use [`IreOptimizer::from_ire`]).
pub trait BaseOptimizer<T: CandleElement>: CoreOptimizer<CpuBackend, T> + Sized {
    /// Its hyper-parameters.
    type Config: Clone + std::fmt::Debug;

    /// Builds it; fails if a hyper-parameter is out of range.
    fn build(config: &Self::Config) -> ire_core::Result<Self>;
}

impl<T: CandleElement> BaseOptimizer<T> for AdamW<CpuBackend, T> {
    type Config = AdamWConfig;
    fn build(config: &AdamWConfig) -> ire_core::Result<Self> {
        AdamW::new(*config)
    }
}

impl<T: CandleElement> BaseOptimizer<T> for Sgd<CpuBackend, T> {
    type Config = SgdConfig;
    fn build(config: &SgdConfig) -> ire_core::Result<Self> {
        Sgd::new(*config)
    }
}

/// The configuration of SAM over a base optimizer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamParams<C> {
    /// SAM's radius and variant.
    pub sam: SamConfig,
    /// The base optimizer's.
    pub base: C,
}

impl<T: CandleElement, O: BaseOptimizer<T>> BaseOptimizer<T> for Sam<CpuBackend, T, O> {
    type Config = SamParams<O::Config>;
    fn build(config: &Self::Config) -> ire_core::Result<Self> {
        Sam::new(O::build(&config.base)?, config.sam)
    }
}

/// What [`candle_nn::Optimizer::new`] takes: the learning rate, the base optimizer's
/// configuration, IRE's, and optional parameter groups (indexed like the float variables).
#[derive(Clone, Debug, PartialEq)]
pub struct Params<C> {
    /// Learning rate (changed later with `set_learning_rate`).
    pub lr: f64,
    /// The base optimizer's hyper-parameters.
    pub base: C,
    /// IRE's hyper-parameters (κ = 0 gives the base optimizer alone).
    pub ire: IreConfig,
    /// Per-group learning-rate scale, weight decay and IRE participation; `None`: one group.
    pub groups: Option<ParamGroups>,
}

impl<C> Params<C> {
    /// One group of every variable.
    pub fn new(lr: f64, base: C, ire: IreConfig) -> Self {
        Params {
            lr,
            base,
            ire,
            groups: None,
        }
    }
}

/// IRE over the base optimizer `O`, stepping candle variables of element type `T` in place.
///
/// The variables are the float variables given to `new`, in order (integer variables are
/// skipped, as candle's own optimizers do); parameter groups and the mask index them so.
pub struct IreOptimizer<T: CandleElement, O> {
    vars: Vec<Var>,
    sizes: Vec<usize>,
    ire: Ire<CpuBackend, T, O>,
    backend: CpuBackend,
    lr: f64,
    last: Option<IreReport>,
    /// A refresh [`IreOptimizer::refresh`] did for the step about to run: (step, τ).
    refreshed: Option<(u64, Option<f64>)>,
}

/// AdmIRE: IRE over AdamW.
pub type AdmIre<T = f32> = IreOptimizer<T, AdamW<CpuBackend, T>>;
/// SGD-IRE.
pub type SgdIre<T = f32> = IreOptimizer<T, Sgd<CpuBackend, T>>;
/// SAM-IRE (over SGD by default).
pub type SamIre<T = f32, O = Sgd<CpuBackend, T>> = IreOptimizer<T, Sam<CpuBackend, T, O>>;

/// Metadata key of the learning rate in a state file (its `f64` bits, in hex).
const LR_KEY: &str = "lr_bits";

impl<T: CandleElement, O: BaseOptimizer<T>> IreOptimizer<T, O> {
    /// The optimizer over `vars` from its parts, with typed errors (what `new` does).
    pub fn build(vars: Vec<Var>, params: Params<O::Config>) -> Result<Self> {
        let mut ire = Ire::new(O::build(&params.base)?, params.ire)?;
        if let Some(g) = params.groups {
            ire = ire.with_groups(g)?;
        }
        Self::from_ire(vars, ire, params.lr)
    }
}

impl<T: CandleElement, O: CoreOptimizer<CpuBackend, T>> IreOptimizer<T, O> {
    /// The optimizer over `vars` with an [`Ire`] built by the caller (any base optimizer) at
    /// learning rate `lr`. Fails if a float variable is not on the CPU, not of type `T`, not
    /// contiguous, or given twice, or if the IRE parameter groups do not cover the variables.
    pub fn from_ire(vars: Vec<Var>, ire: Ire<CpuBackend, T, O>, lr: f64) -> Result<Self> {
        let mut kept: Vec<Var> = Vec::with_capacity(vars.len());
        for v in vars {
            if !v.dtype().is_float() {
                continue;
            }
            let var = kept.len();
            if !v.device().is_cpu() {
                return Err(Error::NotOnCpu {
                    var,
                    what: "the value",
                    device: v.device().location(),
                });
            }
            if v.dtype() != T::CANDLE_DTYPE {
                return Err(Error::DType {
                    var,
                    what: "the value",
                    expected: T::CANDLE_DTYPE,
                    found: v.dtype(),
                });
            }
            if !v.is_contiguous() {
                return Err(Error::NotContiguous { var });
            }
            if let Some(first) = kept.iter().position(|k| k.id() == v.id()) {
                return Err(Error::DuplicateVar { var, first });
            }
            kept.push(v);
        }
        if let Some(g) = ire.groups() {
            g.check_tensors(kept.len())?;
        }
        let sizes = kept.iter().map(|v| v.elem_count()).collect();
        Ok(IreOptimizer {
            vars: kept,
            sizes,
            ire,
            backend: CpuBackend::new(),
            lr,
            last: None,
            refreshed: None,
        })
    }

    /// The same optimizer on `backend` (e.g. a CPU backend with its own thread count).
    pub fn with_backend(mut self, backend: CpuBackend) -> Self {
        self.backend = backend;
        self
    }

    /// The float variables it steps, in order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The `ire-core` optimizer (its configuration, base optimizer, estimate and step count).
    pub fn ire(&self) -> &Ire<CpuBackend, T, O> {
        &self.ire
    }

    /// Whether the next step refreshes the mask: call [`IreOptimizer::refresh`] with the
    /// estimator gradient first (except with [`Estimator::SquaredTrainingGradient`], which the
    /// step refreshes from its own gradient).
    pub fn refresh_due(&self) -> bool {
        self.ire.refresh_due()
    }

    /// Refreshes the estimate and the mask from `estimate` (the gradient at labels sampled
    /// from the model, [`crate::estimator::estimator_gradient`]) with ONE threshold over every
    /// variable; a variable without a gradient there counts as a zero gradient (an estimate
    /// without any is refused: [`Error::EmptyEstimate`]). When a refresh
    /// is due, this is that refresh and the next step keeps its mask. Returns the threshold τ
    /// (`None` when γ needs no selection). A non-finite estimate is refused; the mask is kept.
    pub fn refresh(&mut self, estimate: &GradStore) -> Result<Option<f64>> {
        let grads = self.gradients(estimate, false)?;
        if !grads.is_empty() && grads.iter().all(Option::is_none) {
            return Err(Error::EmptyEstimate);
        }
        let zeros: Vec<Option<Tensor>> = grads
            .iter()
            .zip(&self.vars)
            .map(|(g, v)| match g {
                Some(_) => Ok(None),
                None => Tensor::zeros(v.shape(), T::CANDLE_DTYPE, &Device::Cpu).map(Some),
            })
            .collect::<candle_core::Result<_>>()?;
        let mut all: Vec<&Tensor> = self.vars.iter().map(|v| v.as_tensor()).collect();
        for (g, z) in grads.iter().zip(&zeros) {
            match (g, z) {
                (Some(g), _) => all.push(g),
                (None, Some(z)) => all.push(z),
                (None, None) => unreachable!("a zero tensor stands in for every missing gradient"),
            }
        }
        let due = self.ire.refresh_due();
        let t = self.ire.step_count();
        let n = self.vars.len();
        let (ire, b) = (&mut self.ire, &self.backend);
        let tau = with_read::<T, _>(b, &all, |bufs| {
            let (params, est) = bufs.split_at(n);
            ire.refresh(b, params, est, Some(&EstimateInput::Gradient(est)))
        })??;
        if due {
            self.ire.keep_mask_this_step();
            self.refreshed = Some((t, tau));
        }
        Ok(tau)
    }

    /// One step with typed errors (what `step` does): the base step of every variable that has
    /// a gradient in `grads`, boosted along the flat coordinates, in place. Fails before any
    /// variable moves if a refresh is due and was not done, or a gradient does not fit.
    pub fn try_step(&mut self, grads: &GradStore) -> Result<IreReport> {
        // SAM's step restores `θ` tensor by tensor: a variable without a gradient would stay
        // at the perturbed point, so SAM (under any wrapper that keeps its name) needs all.
        let every = self.ire.base().name() == "sam";
        let gs = self.gradients(grads, every)?;
        if self.ire.refresh_due()
            && self.ire.config().estimator == Estimator::SquaredTrainingGradient
        {
            self.refresh(grads)?;
        }
        let lr = self.lr;
        self.ire
            .begin_step(&self.backend, &self.sizes, IreStep::lr(lr))?;
        let (ire, b) = (&mut self.ire, &self.backend);
        for (i, (var, g)) in self.vars.iter().zip(&gs).enumerate() {
            let Some(g) = g else { continue };
            let hp = ire
                .groups()
                .map_or(TensorStep::lr(lr), |gr| gr.tensor_step(i, lr));
            let r = step_in_place::<T>(var, g, |p, g| {
                b.with_borrowed(&mut [p], &[g], |p, g| {
                    ire.step_tensor(b, i, &mut p[0], &g[0], hp)
                })
            });
            if let Err(e) = r {
                // Checked above, so this is not the caller's input: close the step so the
                // optimizer stays usable, and report.
                let _ = ire.end_step();
                return Err(e);
            }
        }
        let mut report = self.ire.end_step()?;
        if let Some((t, tau)) = self.refreshed.take()
            && t == report.step
        {
            report.refreshed = true;
            report.threshold = tau;
        }
        self.last = Some(report);
        Ok(report)
    }

    /// What the last step did (step number, refresh, threshold, `κ_t`).
    pub fn last_report(&self) -> Option<IreReport> {
        self.last
    }

    /// Number of flat (boosted) coordinates in the current mask.
    pub fn flat_count(&self) -> Result<usize> {
        Ok(self.ire.flat_count(&self.backend)?)
    }

    /// Number of coordinates IRE ranks (those of the participating variables).
    pub fn ranked_count(&self) -> usize {
        self.ire.ranked_count(&self.backend)
    }

    /// Fraction of the ranked coordinates that are flat (0 before the first refresh).
    pub fn flat_fraction(&self) -> Result<f64> {
        let n = self.ranked_count();
        Ok(if n == 0 {
            0.0
        } else {
            self.flat_count()? as f64 / n as f64
        })
    }

    /// The mask of each variable as a `u8` tensor of its shape (1 = flat); `None` for a
    /// variable that does not take part, and for all before the first step or refresh.
    pub fn mask(&self) -> Result<Vec<Option<Tensor>>> {
        let masks = self.ire.mask(&self.backend)?;
        let mut out = Vec::with_capacity(self.vars.len());
        for (i, v) in self.vars.iter().enumerate() {
            out.push(match masks.get(i) {
                Some(m) if self.ire.takes_part(i) => {
                    Some(Tensor::from_slice(m.as_slice(), v.shape(), &Device::Cpu)?)
                }
                _ => None,
            });
        }
        Ok(out)
    }

    /// The optimizer's state (IRE's estimate, mask and step count, the base optimizer's).
    pub fn state_dict(&self) -> Result<StateDict> {
        Ok(self.ire.save(&self.backend)?)
    }

    /// Restores state from [`IreOptimizer::state_dict`]; all or nothing: on an error nothing
    /// changes.
    pub fn load_state_dict(&mut self, state: &StateDict) -> Result<()> {
        let saved: Vec<usize> = state
            .get_u64s("sizes")
            .map_err(Error::Core)?
            .iter()
            .map(|&n| n as usize)
            .collect();
        if !saved.is_empty() && saved != self.sizes {
            return Err(Error::StateVars {
                saved: saved.len(),
                saved_sizes: saved,
                sizes: self.sizes.clone(),
            });
        }
        self.ire.load(&self.backend, state)?;
        self.refreshed = None;
        self.last = None;
        Ok(())
    }

    /// Writes the state and the learning rate to `path` as a `.safetensors` file, atomically
    /// (a crash leaves the previous file or the new one).
    pub fn save(&self, path: &Path) -> Result<()> {
        let state = self.state_dict()?;
        let lr = format!("{:016x}", self.lr.to_bits());
        write_state(path, &state, &[(LR_KEY, lr.as_str())])
    }

    /// Reads a file written by [`IreOptimizer::save`] and restores the state and learning
    /// rate; all or nothing.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let (state, extra) = read_state(path)?;
        let lr = lr_from(path, &extra)?;
        self.load_state_dict(&state)?;
        self.lr = lr;
        Ok(())
    }

    /// The gradient of every variable in `grads`, checked, made contiguous where it is not;
    /// `None` for a missing one (an error when `all`).
    fn gradients<'g>(
        &self,
        grads: &'g GradStore,
        all: bool,
    ) -> Result<Vec<Option<Cow<'g, Tensor>>>> {
        let mut out = Vec::with_capacity(self.vars.len());
        for (var, v) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(v) else {
                if all {
                    return Err(Error::MissingGradient { var });
                }
                out.push(None);
                continue;
            };
            if !g.device().is_cpu() {
                return Err(Error::NotOnCpu {
                    var,
                    what: "the gradient",
                    device: g.device().location(),
                });
            }
            if g.dtype() != T::CANDLE_DTYPE {
                return Err(Error::DType {
                    var,
                    what: "the gradient",
                    expected: T::CANDLE_DTYPE,
                    found: g.dtype(),
                });
            }
            if g.dims() != v.dims() {
                return Err(Error::Shape {
                    var,
                    expected: v.dims().to_vec(),
                    found: g.dims().to_vec(),
                });
            }
            out.push(Some(if g.is_contiguous() {
                Cow::Borrowed(g)
            } else {
                Cow::Owned(g.contiguous()?)
            }));
        }
        Ok(out)
    }
}

fn lr_from(path: &Path, extra: &HashMap<String, String>) -> Result<f64> {
    let bad = |problem| Error::StateFile {
        path: path.into(),
        problem,
    };
    let v = extra.get(LR_KEY).ok_or_else(|| {
        bad(crate::error::StateFileProblem::MissingMetadata { key: LR_KEY.into() })
    })?;
    u64::from_str_radix(v, 16).map(f64::from_bits).map_err(|_| {
        bad(crate::error::StateFileProblem::BadMetadata {
            key: LR_KEY.into(),
            value: v.clone(),
            expected: "the hex bits of an f64",
        })
    })
}

impl<T: CandleElement, O: BaseOptimizer<T>> IreOptimizer<T, Sam<CpuBackend, T, O>> {
    /// SAM-IRE's first phase: moves every variable to `θ + ε` along `grads` (the gradient at
    /// `θ`), keeping `θ`. Do a due refresh first ([`IreOptimizer::refresh`], at the unperturbed
    /// `θ`, as the official code). Then compute the gradient at the perturbed point and call
    /// `step`: it restores `θ`, takes the base step with that gradient and boosts it.
    pub fn sam_perturb(&mut self, grads: &GradStore) -> Result<()> {
        let gs = self.gradients(grads, true)?;
        let refs: Vec<&Tensor> = gs.iter().flatten().map(|g| g.as_ref()).collect();
        self.check_no_overlap(&refs)?;
        let (ire, b, vars) = (&mut self.ire, &self.backend, &self.vars);
        with_read::<T, _>(b, &refs, |g| {
            with_vars_mut::<T>(vars, |p| ire.sam_perturb(b, p, g, None))
        })?
    }

    /// Puts every variable back to `θ` (bit for bit) without stepping, after
    /// [`IreOptimizer::sam_perturb`] (e.g. when the second gradient could not be computed).
    pub fn sam_restore(&mut self) -> Result<()> {
        let (ire, b, vars) = (&mut self.ire, &self.backend, &self.vars);
        with_vars_mut::<T>(vars, |p| ire.base_mut().restore(b, p))
    }

    /// Whether the variables are at the perturbed point.
    pub fn is_perturbed(&self) -> bool {
        self.ire.base().is_perturbed()
    }

    /// Refuses gradients that share memory with a variable (they would be read while the
    /// variables are written, and holding both locks would deadlock).
    fn check_no_overlap(&self, grads: &[&Tensor]) -> Result<()> {
        let span = |t: &Tensor| -> (usize, usize) {
            let (s, l) = t.storage_and_layout();
            match &*s {
                candle_core::Storage::Cpu(c) => match T::slice(c) {
                    Some(all) => {
                        let start = all.as_ptr() as usize + l.start_offset() * size_of::<T>();
                        (start, start + t.elem_count() * size_of::<T>())
                    }
                    None => (0, 0),
                },
                _ => (0, 0),
            }
        };
        let vars: Vec<(usize, usize)> = self.vars.iter().map(|v| span(v.as_tensor())).collect();
        for (grad_of, g) in grads.iter().enumerate() {
            let (a, b) = span(g);
            if let Some(var) = vars.iter().position(|&(c, d)| a < d && c < b) {
                return Err(Error::Aliased { grad_of, var });
            }
        }
        Ok(())
    }
}

impl<T: CandleElement, O: BaseOptimizer<T>> candle_nn::Optimizer for IreOptimizer<T, O> {
    type Config = Params<O::Config>;

    fn new(vars: Vec<Var>, config: Self::Config) -> candle_core::Result<Self> {
        Ok(Self::build(vars, config)?)
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.try_step(grads)?;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    /// Sets the learning rate of the next steps (a negative or non-finite one is refused by
    /// the next step, which then changes nothing).
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
}

//! [`IreOptimizer`]: IRE over SGD or AdamW (or any `ire-core` base) as a burn [`Optimizer`],
//! with ONE threshold over all of the module's trainable parameters.
//!
//! burn's per-tensor `SimpleOptimizer` sees one tensor at a time and cannot rank coordinates
//! across tensors; this optimizer walks the module twice instead: a [`ModuleVisitor`] pass
//! collects every trainable parameter's gradient (and, for a refresh, the estimate, ranked
//! under one global threshold), then a [`ModuleMapper`] pass steps each parameter.

use std::borrow::Cow;
use std::collections::HashMap;
use std::marker::PhantomData;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, MultiGradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorPrimitive};
use ire_backend_cpu::CpuBackend;
use ire_core::optim::{
    EstimateInput, Estimator, IreReport, IreStep, Optimizer as CoreOptimizer, TensorStep,
};
use ire_core::{AdamW, AdamWConfig, Ire, IreConfig, Sgd, SgdConfig};

use crate::element::BurnElement;
use crate::error::{Error, Result};
use crate::host::{AccessCounts, HostTensor, MemoryAccess, step_tensor};
use crate::record::IreRecord;

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

/// The trainable parameters the optimizer steps, in the module's visiting order.
#[derive(Clone, Debug, PartialEq)]
struct Registry {
    ids: Vec<ParamId>,
    sizes: Vec<usize>,
    index: HashMap<ParamId, usize>,
}

impl Registry {
    fn new(ids: Vec<ParamId>, sizes: Vec<usize>) -> Self {
        let index = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        Registry { ids, sizes, index }
    }
}

/// IRE over the base optimizer `O` for modules on the autodiff backend `B` with float
/// element `T`.
///
/// The parameters are the module's float parameters that require a gradient, in visiting
/// order (parameter groups index them so); a parameter without a gradient in a step is left
/// as it is. Memory: see [`MemoryAccess`] (in place on the ndarray backend).
///
/// burn's [`Optimizer::step`] cannot return an error: when it fails, the module comes back
/// unchanged and the error waits in [`IreOptimizer::take_error`]. [`IreOptimizer::try_step`]
/// returns it directly.
#[derive(Clone)]
pub struct IreOptimizer<B, T: BurnElement, O> {
    ire: Ire<CpuBackend, T, O>,
    backend: CpuBackend,
    registry: Option<Registry>,
    access: MemoryAccess,
    counts: AccessCounts,
    last: Option<IreReport>,
    refreshed: Option<(u64, Option<f64>)>,
    error: Option<Error>,
    _backend: PhantomData<fn() -> B>,
}

/// AdmIRE: IRE over AdamW.
pub type AdmIre<B, T = f32> = IreOptimizer<B, T, AdamW<CpuBackend, T>>;
/// SGD-IRE.
pub type SgdIre<B, T = f32> = IreOptimizer<B, T, Sgd<CpuBackend, T>>;

impl<B: AutodiffBackend, T: BurnElement> IreOptimizer<B, T, AdamW<CpuBackend, T>> {
    /// AdmIRE; fails if a hyper-parameter is out of range.
    pub fn adamw(base: AdamWConfig, ire: IreConfig) -> Result<Self> {
        Ok(Self::from_ire(Ire::new(AdamW::new(base)?, ire)?))
    }
}

impl<B: AutodiffBackend, T: BurnElement> IreOptimizer<B, T, Sgd<CpuBackend, T>> {
    /// SGD-IRE; fails if a hyper-parameter is out of range.
    pub fn sgd(base: SgdConfig, ire: IreConfig) -> Result<Self> {
        Ok(Self::from_ire(Ire::new(Sgd::new(base)?, ire)?))
    }
}

impl<B: AutodiffBackend, T: BurnElement, O: CoreOptimizer<CpuBackend, T>> IreOptimizer<B, T, O> {
    /// The optimizer around an [`Ire`] built by the caller (any base optimizer that steps
    /// tensor by tensor; parameter groups set with [`Ire::with_groups`] index the trainable
    /// parameters in visiting order).
    pub fn from_ire(ire: Ire<CpuBackend, T, O>) -> Self {
        IreOptimizer {
            ire,
            backend: CpuBackend::new(),
            registry: None,
            access: MemoryAccess::Auto,
            counts: AccessCounts::default(),
            last: None,
            refreshed: None,
            error: None,
            _backend: PhantomData,
        }
    }

    /// The same optimizer on `backend` (e.g. a CPU backend with its own thread count).
    pub fn with_backend(mut self, backend: CpuBackend) -> Self {
        self.backend = backend;
        self
    }

    /// The same optimizer with another memory path ([`MemoryAccess::HostCopy`] forces the
    /// round trip a backend without host memory takes).
    pub fn with_memory_access(mut self, access: MemoryAccess) -> Self {
        self.access = access;
        self
    }

    /// The `ire-core` optimizer (configuration, base optimizer, estimate, step count).
    pub fn ire(&self) -> &Ire<CpuBackend, T, O> {
        &self.ire
    }

    /// How the parameters of the steps so far were reached (in place, copied on write,
    /// host round trip).
    pub fn access_counts(&self) -> AccessCounts {
        self.counts
    }

    /// Whether the next step refreshes the mask: call [`IreOptimizer::refresh`] with the
    /// estimator gradient first (except with [`Estimator::SquaredTrainingGradient`], which the
    /// step refreshes from its own gradient).
    pub fn refresh_due(&self) -> bool {
        self.ire.refresh_due()
    }

    /// The error of the last [`Optimizer::step`] or [`Optimizer::load_record`], which burn's
    /// trait cannot return (the module or state was left unchanged).
    pub fn take_error(&mut self) -> Option<Error> {
        self.error.take()
    }

    /// What the last step did (step number, refresh, threshold, `κ_t`).
    pub fn last_report(&self) -> Option<IreReport> {
        self.last
    }

    /// Number of flat (boosted) coordinates in the current mask.
    pub fn flat_count(&self) -> Result<usize> {
        Ok(self.ire.flat_count(&self.backend)?)
    }

    /// Number of coordinates IRE ranks.
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

    /// The mask of each trainable parameter (1 = flat), flattened in row-major order; empty
    /// for a parameter that does not take part, and for all before the first step or refresh.
    /// (Stored packed, one bit per coordinate: unpacked here.)
    pub fn mask(&self) -> Result<Vec<Vec<u8>>> {
        Ok(self.ire.mask(&self.backend)?)
    }

    /// Refreshes the estimate and the mask from `estimate` (the gradient at labels sampled
    /// from the model, [`crate::estimator::estimator_gradient`]) with ONE threshold over all
    /// trainable parameters; a parameter without a gradient there counts as a zero gradient,
    /// and an estimate without any is refused ([`Error::EmptyEstimate`]).
    /// When a refresh is due, this is that refresh and the next step keeps its mask. Returns
    /// τ (`None` when γ needs no selection). A non-finite estimate is refused; the mask is kept.
    pub fn refresh<M: AutodiffModule<B>>(
        &mut self,
        module: &M,
        mut estimate: GradientsParams,
    ) -> Result<Option<f64>> {
        let mut c = Collect::<B, T>::new(Some(&mut estimate), false, true);
        module.visit(&mut c);
        if let Some(e) = c.error {
            return Err(e);
        }
        if !c.ids.is_empty() && c.grads_read.iter().all(Option::is_none) {
            return Err(Error::EmptyEstimate);
        }
        let new = self.register(&c.ids, &c.sizes)?;
        let tau = self.refresh_collected(&c)?;
        if new.is_some() {
            self.registry = new;
        }
        Ok(tau)
    }

    fn refresh_from(
        &mut self,
        params: &[Cow<'_, [T]>],
        est: &[Cow<'_, [T]>],
    ) -> Result<Option<f64>> {
        let due = self.ire.refresh_due();
        let t = self.ire.step_count();
        let n = params.len();
        let all: Vec<&[T]> = params.iter().chain(est).map(|c| &**c).collect();
        let (ire, b) = (&mut self.ire, &self.backend);
        let tau = b.with_borrowed::<T, _>(&mut [], &all, |_, bufs| {
            let (p, e) = bufs.split_at(n);
            ire.refresh(b, p, e, Some(&EstimateInput::Gradient(e)))
        })?;
        self.refreshed = due.then_some((t, tau));
        if due {
            self.ire.keep_mask_this_step();
        }
        Ok(tau)
    }

    /// One step with the error returned (what [`Optimizer::step`] does): the base step of every
    /// trainable parameter that has a gradient, boosted along the flat coordinates. The module
    /// always comes back; on an error before any parameter moved (a refresh due and not done,
    /// a gradient that does not fit, other parameters than before) it is unchanged.
    pub fn try_step<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
    ) -> (M, Result<IreReport>) {
        // The step's own gradient is the estimate of this estimator: read it for the refresh.
        let refresh_here = self.ire.refresh_due()
            && self.ire.config().estimator == Estimator::SquaredTrainingGradient;
        let mut c = Collect::<B, T>::new(Some(&mut grads), true, refresh_here);
        module.visit(&mut c);
        if let Some(e) = c.error.take() {
            return (module, Err(e));
        }
        match self.register(&c.ids, &c.sizes) {
            Ok(Some(new)) => self.registry = Some(new),
            Ok(None) => {}
            Err(e) => return (module, Err(e)),
        }
        if refresh_here && let Err(e) = self.refresh_collected(&c) {
            return (module, Err(e));
        }
        let Some(registry) = self.registry.as_ref() else {
            unreachable!("registered above");
        };
        if let Err(e) = self
            .ire
            .begin_step(&self.backend, &registry.sizes, IreStep::lr(lr))
        {
            return (module, Err(e.into()));
        }
        let mut mapper = StepMapper::<B, T, O> {
            ire: &mut self.ire,
            backend: &self.backend,
            index: &registry.index,
            grads: c.grads_kept,
            lr,
            access: self.access,
            counts: &mut self.counts,
            error: None,
            _backend: PhantomData,
        };
        let module = module.map(&mut mapper);
        let failed = mapper.error.take();
        let ended = self.ire.end_step();
        if let Some(e) = failed {
            // Checked before the first parameter moved, so not the caller's input.
            return (module, Err(e));
        }
        let mut report = match ended {
            Ok(r) => r,
            Err(e) => return (module, Err(e.into())),
        };
        if let Some((t, tau)) = self.refreshed.take()
            && t == report.step
        {
            report.refreshed = true;
            report.threshold = tau;
        }
        self.last = Some(report);
        (module, Ok(report))
    }

    /// A refresh from what a visiting pass read (a missing gradient counts as zero).
    fn refresh_collected(&mut self, c: &Collect<'_, B, T>) -> Result<Option<f64>> {
        let params: Vec<Cow<'_, [T]>> = c.params_read.iter().map(|h| h.elements()).collect();
        let est: Vec<Cow<'_, [T]>> = c
            .grads_read
            .iter()
            .zip(&c.sizes)
            .map(|(h, &n)| match h {
                Some(h) => h.elements(),
                None => Cow::Owned(vec![T::zero(); n]),
            })
            .collect();
        self.refresh_from(&params, &est)
    }

    /// Checks these parameters against the known ones (`None`: they match), or the registry
    /// of the first use (not stored here: the caller stores it).
    fn register(&self, ids: &[ParamId], sizes: &[usize]) -> Result<Option<Registry>> {
        match &self.registry {
            Some(r) if r.ids == ids && r.sizes == sizes => Ok(None),
            Some(r) => Err(Error::ModuleChanged {
                expected: r.ids.len(),
                expected_sizes: r.sizes.clone(),
                found: ids.len(),
                found_sizes: sizes.to_vec(),
            }),
            None => Ok(Some(Registry::new(ids.to_vec(), sizes.to_vec()))),
        }
    }

    /// Restores state from a record of [`Optimizer::to_record`]; all or nothing.
    pub fn try_load_record(&mut self, record: IreRecord) -> Result<()> {
        let state = record.state.ok_or(Error::EmptyRecord)?;
        let ids: Vec<ParamId> = record.param_ids.iter().map(|&i| ParamId::from(i)).collect();
        if let Some(r) = &self.registry
            && r.ids != ids
        {
            return Err(Error::RecordParams {
                saved: record.param_ids,
                found: r.ids.iter().map(|i| i.val()).collect(),
            });
        }
        let sizes: Vec<usize> = state
            .get_u64s("sizes")
            .map_err(Error::Core)?
            .iter()
            .map(|&n| n as usize)
            .collect();
        if !sizes.is_empty() && sizes.len() != ids.len() {
            return Err(Error::InconsistentRecord {
                ids: ids.len(),
                tensors: sizes.len(),
            });
        }
        self.ire.load(&self.backend, &state)?;
        self.registry = (!sizes.is_empty()).then(|| Registry::new(ids, sizes));
        self.refreshed = None;
        self.last = None;
        Ok(())
    }

    /// The optimizer's state as a record (what [`Optimizer::to_record`] returns).
    pub fn record(&self) -> IreRecord {
        IreRecord {
            param_ids: self
                .registry
                .as_ref()
                .map(|r| r.ids.iter().map(|i| i.val()).collect())
                .unwrap_or_default(),
            state: self.ire.save(&self.backend).ok(),
        }
    }
}

impl<M, B, T, O> Optimizer<M, B> for IreOptimizer<B, T, O>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
    T: BurnElement,
    O: CoreOptimizer<CpuBackend, T> + Clone + Send,
{
    type Record = IreRecord;

    /// See [`IreOptimizer::try_step`]; an error is kept for [`IreOptimizer::take_error`].
    fn step(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        let (module, r) = self.try_step(lr, module, grads);
        if let Err(e) = r {
            self.error = Some(e);
        }
        module
    }

    /// Gradients from several devices, summed per parameter, then [`Optimizer::step`].
    fn step_multi(&mut self, lr: f64, module: M, mut grads: MultiGradientsParams) -> M {
        let mut merge = Merge::<B> {
            multi: &mut grads,
            out: GradientsParams::new(),
            _backend: PhantomData,
        };
        module.visit(&mut merge);
        let out = merge.out;
        Optimizer::<M, B>::step(self, lr, module, out)
    }

    fn to_record(&self) -> IreRecord {
        self.record()
    }

    /// See [`IreOptimizer::try_load_record`]; an error is kept for
    /// [`IreOptimizer::take_error`] and the state is left as it was.
    fn load_record(mut self, record: IreRecord) -> Self {
        if let Err(e) = self.try_load_record(record) {
            self.error = Some(e);
        }
        self
    }
}

/// The visiting pass: every trainable float parameter, its size, and its gradient.
struct Collect<'g, B: AutodiffBackend, T> {
    grads: Option<&'g mut GradientsParams>,
    /// Keep each gradient's primitive (for the stepping pass).
    keep: bool,
    /// Read the parameters and gradients to host slices (for a refresh).
    read: bool,
    ids: Vec<ParamId>,
    sizes: Vec<usize>,
    grads_kept: Vec<Option<TensorPrimitive<Inner<B>>>>,
    grads_read: Vec<Option<HostTensor<Inner<B>, T>>>,
    params_read: Vec<HostTensor<Inner<B>, T>>,
    error: Option<Error>,
}

impl<'g, B: AutodiffBackend, T: BurnElement> Collect<'g, B, T> {
    fn new(grads: Option<&'g mut GradientsParams>, keep: bool, read: bool) -> Self {
        Collect {
            grads,
            keep,
            read,
            ids: Vec::new(),
            sizes: Vec::new(),
            grads_kept: Vec::new(),
            grads_read: Vec::new(),
            params_read: Vec::new(),
            error: None,
        }
    }

    fn fail(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

fn dtype_name<T: BurnElement>() -> &'static str {
    if T::dtype() == burn::tensor::DType::F64 {
        "f64"
    } else {
        "f32"
    }
}

impl<B: AutodiffBackend, T: BurnElement> ModuleVisitor<B> for Collect<'_, B, T> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        if !value.is_require_grad() {
            return;
        }
        let i = self.ids.len();
        let dims = value.shape().dims.clone();
        self.ids.push(param.id);
        self.sizes.push(dims.iter().product());
        if value.dtype() != T::dtype() {
            self.fail(Error::DType {
                param: i,
                what: "the value",
                expected: dtype_name::<T>(),
                found: format!("{:?}", value.dtype()),
            });
        }
        if self.read {
            match HostTensor::of(value.inner(), i) {
                Ok(h) => self.params_read.push(h),
                Err(e) => self.fail(e),
            }
        }
        let Some(grads) = self.grads.as_deref_mut() else {
            return;
        };
        let grad = grads.remove::<Inner<B>, D>(param.id);
        if let Some(g) = &grad {
            if g.shape().dims != dims {
                self.fail(Error::Shape {
                    param: i,
                    expected: dims.clone(),
                    found: g.shape().dims.clone(),
                });
            }
            if g.dtype() != T::dtype() {
                self.fail(Error::DType {
                    param: i,
                    what: "the gradient",
                    expected: dtype_name::<T>(),
                    found: format!("{:?}", g.dtype()),
                });
            }
        }
        if self.read {
            match grad.clone().map(|g| HostTensor::of(g, i)).transpose() {
                Ok(h) => self.grads_read.push(h),
                Err(e) => {
                    self.fail(e);
                    self.grads_read.push(None);
                }
            }
        }
        if self.keep {
            self.grads_kept.push(grad.map(|g| g.into_primitive()));
        }
    }
}

/// The stepping pass.
struct StepMapper<'a, B: AutodiffBackend, T: BurnElement, O> {
    ire: &'a mut Ire<CpuBackend, T, O>,
    backend: &'a CpuBackend,
    index: &'a HashMap<ParamId, usize>,
    grads: Vec<Option<TensorPrimitive<Inner<B>>>>,
    lr: f64,
    access: MemoryAccess,
    counts: &'a mut AccessCounts,
    error: Option<Error>,
    _backend: PhantomData<fn() -> B>,
}

impl<B: AutodiffBackend, T: BurnElement, O: CoreOptimizer<CpuBackend, T>> ModuleMapper<B>
    for StepMapper<'_, B, T, O>
{
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.error.is_some() {
            return param;
        }
        let Some(&i) = self.index.get(&param.id) else {
            return param;
        };
        let Some(g) = self.grads.get_mut(i).and_then(Option::take) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let grad = Tensor::<Inner<B>, D>::from_primitive(g);
        let lr = self.lr;
        let (ire, b) = (&mut *self.ire, self.backend);
        let hp = ire
            .groups()
            .map_or(TensorStep::lr(lr), |gr| gr.tensor_step(i, lr));
        let (inner, r) = step_tensor::<Inner<B>, T, D>(
            tensor.inner(),
            grad,
            self.access,
            i,
            self.counts,
            |p, g| {
                b.with_borrowed(&mut [p], &[g], |p, g| {
                    ire.step_tensor(b, i, &mut p[0], &g[0], hp)
                })
            },
        );
        if let Err(e) = r {
            self.error = Some(e);
        }
        let mut t = Tensor::<B, D>::from_inner(inner);
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Sums the gradients of several devices into one set (for `step_multi`).
struct Merge<'a, B: AutodiffBackend> {
    multi: &'a mut MultiGradientsParams,
    out: GradientsParams,
    _backend: PhantomData<fn() -> B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Merge<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some((g, _)) = self.multi.remove::<Inner<B>, D>(param.id) {
            self.out.register::<Inner<B>, D>(param.id, g);
        }
    }
}

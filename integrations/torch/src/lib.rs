//! # ire-torch
//!
//! The native half of the Python package `ire_torch`: ire-core's IRE optimizers stepping
//! PyTorch tensors in place, with no copy. The Python half (`python/ire_torch`) builds the
//! `torch.optim.Optimizer` classes on [`Engine`](PyEngine): the modern `ire_torch.IRE` and the
//! drop-in replacements of the official classes in `ire_torch.compat`.
//!
//! - [`device`]: from a tensor to the place, address and dtype of its memory, with the checks
//!   that make using it in place sound;
//! - [`backends`]: the backends an engine runs on (the CPU; CUDA with the feature `cuda`, on
//!   torch's current stream) and how each wraps a tensor's memory;
//! - [`engine`]: the optimizer (fused SGD / AdamW, or around torch's own base step, optionally
//!   inside SAM) over borrowed tensors;
//! - [`place`]: where a tensor's memory is (`cpu`, `cuda:N`);
//! - [`config`], [`state`]: options and saved state between Python and ire-core's types;
//! - [`alloc_count`]: the counting allocator behind the zero-copy test.

use ire_core::optim::{GammaSchedule, IreReport, TensorStep};
use pyo3::prelude::*;
use pyo3::types::PyDict;

pub mod alloc_count;
pub mod backends;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod place;
pub mod state;

use config::{BaseKind, Cadence, Choice, FloatDType};
use device::{Accept, Span};
use engine::{Engine, EngineSpec};
use error::{Result, Role, RoleKind, TorchError};
use place::Place;

use ire_backend_cpu::CpuBackend;
#[cfg(feature = "cuda")]
use ire_backend_cuda::CudaBackend;

/// An engine of either dtype on either device (a CUDA engine with the handle of the torch
/// stream its backend runs on).
enum AnyEngine {
    F32(Engine<CpuBackend, f32>),
    F64(Engine<CpuBackend, f64>),
    #[cfg(feature = "cuda")]
    CudaF32(Engine<CudaBackend, f32>, usize),
    #[cfg(feature = "cuda")]
    CudaF64(Engine<CudaBackend, f64>, usize),
}

macro_rules! with_engine {
    ($any:expr, $e:ident => $body:expr) => {
        match $any {
            AnyEngine::F32($e) => $body,
            AnyEngine::F64($e) => $body,
            #[cfg(feature = "cuda")]
            AnyEngine::CudaF32($e, _) => $body,
            #[cfg(feature = "cuda")]
            AnyEngine::CudaF64($e, _) => $body,
        }
    };
}

/// Moves a CUDA engine's backend to torch's current stream if that changed since its last
/// call (after the old stream's queued work completes), so its work stays ordered with torch's.
#[cfg(feature = "cuda")]
fn follow_stream<T: device::TorchScalar>(
    py: Python<'_>,
    e: &mut Engine<CudaBackend, T>,
    stream: &mut usize,
) -> Result<()> {
    let Place::Cuda(ordinal) = e.place() else {
        return Ok(());
    };
    let now = backends::cuda::current_stream(py, ordinal)?;
    if now != *stream {
        e.replace_backend(backends::cuda::backend_on(ordinal, now)?)?;
        *stream = now;
    }
    Ok(())
}

/// What one step did (the step number, whether it refreshed the mask, the threshold, κ_t).
#[pyclass(name = "Report", module = "ire_torch._native", frozen, get_all)]
#[derive(Clone, Copy, Debug)]
pub struct PyReport {
    /// The 0-based number of the step just taken.
    pub step: u64,
    /// Whether the mask was refreshed for it.
    pub refreshed: bool,
    /// The refresh's threshold τ, if one was selected.
    pub threshold: Option<f64>,
    /// κ_t applied (0 during warm-up).
    pub kappa: f64,
}

#[pymethods]
impl PyReport {
    fn __repr__(&self) -> String {
        let py_bool = |b: bool| if b { "True" } else { "False" };
        let threshold = self
            .threshold
            .map_or("None".to_string(), |t| format!("{t:?}"));
        format!(
            "Report(step={}, refreshed={}, threshold={threshold}, kappa={:?})",
            self.step,
            py_bool(self.refreshed),
            self.kappa
        )
    }
}

impl From<IreReport> for PyReport {
    fn from(r: IreReport) -> Self {
        PyReport {
            step: r.step,
            refreshed: r.refreshed,
            threshold: r.threshold,
            kappa: r.kappa,
        }
    }
}

/// The optimizer over a fixed list of parameter tensors (the Python classes' engine).
#[pyclass(name = "Engine", module = "ire_torch._native")]
pub struct PyEngine {
    inner: AnyEngine,
}

/// Spans of a list of tensors.
fn spans(list: &Bound<'_, PyAny>, kind: RoleKind) -> Result<Vec<Span>> {
    list.try_iter()?
        .enumerate()
        .map(|(index, t)| device::span_of(&t?, Role { kind, index }, Accept::Float))
        .collect()
}

/// Spans of a list of tensors or `None`s.
fn optional_spans(list: &Bound<'_, PyAny>, kind: RoleKind) -> Result<Vec<Option<Span>>> {
    list.try_iter()?
        .enumerate()
        .map(|(index, t)| {
            let t = t?;
            if t.is_none() {
                Ok(None)
            } else {
                device::span_of(&t, Role { kind, index }, Accept::Float).map(Some)
            }
        })
        .collect()
}

#[pymethods]
impl PyEngine {
    /// A new engine over tensors of `sizes`, tensor `i` in parameter group `group_of[i]` of
    /// `groups`, taking part in IRE where `takes_part[i]`. `base` is `"sgd"`, `"adamw"` or `"external"` (torch takes the base step),
    /// with `base_options`; `ire` holds IRE's options; `sam` (a dict with `rho`, `adaptive`)
    /// puts SAM around the base; `cadence` is `"scheduled"` (refresh every `refresh_every`
    /// steps) or `"on_call"` (only when `refresh` is called).
    #[new]
    #[pyo3(signature = (*, dtype, sizes, groups, group_of, takes_part, base, base_options, ire, sam=None, cadence="scheduled", device="cpu"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        dtype: &str,
        sizes: Vec<usize>,
        groups: usize,
        group_of: Vec<usize>,
        takes_part: Vec<bool>,
        base: &str,
        base_options: &Bound<'_, PyDict>,
        ire: &Bound<'_, PyDict>,
        sam: Option<&Bound<'_, PyDict>>,
        cadence: &str,
        device: &str,
    ) -> PyResult<Self> {
        let spec = EngineSpec {
            sizes,
            groups,
            group_of,
            takes_part,
            base: config::base_spec(BaseKind::parse(base)?, base_options)?,
            sam: sam.map(config::sam_config).transpose()?,
            ire: config::ire_config(ire)?,
            cadence: Cadence::parse(cadence)?,
        };
        let dtype = FloatDType::parse(dtype)?.0;
        let place = Place::parse(device).ok_or_else(|| TorchError::Device {
            role: Role {
                kind: RoleKind::Parameter,
                index: 0,
            },
            device: device.to_string(),
        })?;
        let inner = match (place, dtype) {
            (Place::Cpu, ire_core::DType::F64) => {
                AnyEngine::F64(Engine::new(CpuBackend::new(), &spec)?)
            }
            (Place::Cpu, _) => AnyEngine::F32(Engine::new(CpuBackend::new(), &spec)?),
            #[cfg(feature = "cuda")]
            (Place::Cuda(n), dtype) => {
                let (b, stream) = backends::cuda::backend_on_current_stream(py, n)?;
                match dtype {
                    ire_core::DType::F64 => AnyEngine::CudaF64(Engine::new(b, &spec)?, stream),
                    _ => AnyEngine::CudaF32(Engine::new(b, &spec)?, stream),
                }
            }
            #[cfg(not(feature = "cuda"))]
            (Place::Cuda(_), _) => {
                let _ = py;
                return Err(TorchError::Device {
                    role: Role {
                        kind: RoleKind::Parameter,
                        index: 0,
                    },
                    device: device.to_string(),
                }
                .into());
            }
        };
        Ok(PyEngine { inner })
    }

    /// Under CUDA, moves the engine to torch's current stream if it changed ([`follow_stream`]).
    fn follow(&mut self, py: Python<'_>) -> Result<()> {
        match &mut self.inner {
            #[cfg(feature = "cuda")]
            AnyEngine::CudaF32(e, stream) => follow_stream(py, e, stream),
            #[cfg(feature = "cuda")]
            AnyEngine::CudaF64(e, stream) => follow_stream(py, e, stream),
            _ => {
                let _ = py;
                Ok(())
            }
        }
    }

    /// The engine's kind (`"fused AdamW"`, `"SAM + fused SGD"`, ...).
    #[getter]
    fn kind(&self) -> &'static str {
        with_engine!(&self.inner, e => e.kind())
    }

    /// `"float32"` or `"float64"`.
    #[getter]
    fn dtype(&self) -> &'static str {
        match self.inner {
            AnyEngine::F32(_) => "float32",
            AnyEngine::F64(_) => "float64",
            #[cfg(feature = "cuda")]
            AnyEngine::CudaF32(..) => "float32",
            #[cfg(feature = "cuda")]
            AnyEngine::CudaF64(..) => "float64",
        }
    }

    /// The parameters' device, as torch names it (`"cpu"`, `"cuda:0"`).
    #[getter]
    fn device(&self) -> String {
        with_engine!(&self.inner, e => e.place().to_string())
    }

    /// Element count of each tensor.
    #[getter]
    fn sizes(&self) -> Vec<usize> {
        with_engine!(&self.inner, e => e.sizes().to_vec())
    }

    /// Steps taken.
    #[getter]
    fn step_count(&self) -> u64 {
        with_engine!(&self.inner, e => e.step_count())
    }

    /// Whether the next step needs `refresh` first.
    fn refresh_due(&self) -> bool {
        with_engine!(&self.inner, e => e.refresh_due())
    }

    /// Replaces IRE's options (all of them, as in the constructor); the state is kept.
    fn configure(&mut self, ire: &Bound<'_, PyDict>) -> PyResult<()> {
        let cfg = config::ire_config(ire)?;
        with_engine!(&mut self.inner, e => e.set_config(cfg))?;
        Ok(())
    }

    /// One fused step: `grads` may hold `None` (that tensor is skipped); `lrs` and
    /// `weight_decays` are per parameter group (`None`: the base's own weight decay);
    /// `kappa_lr` is the learning rate κ's schedule reads.
    #[pyo3(signature = (params, grads, lrs, weight_decays, kappa_lr, check_finite=true))]
    fn step(
        &mut self,
        params: &Bound<'_, PyAny>,
        grads: &Bound<'_, PyAny>,
        lrs: Vec<f64>,
        weight_decays: Vec<Option<f64>>,
        kappa_lr: f64,
        check_finite: bool,
    ) -> PyResult<PyReport> {
        self.follow(params.py())?;
        let p = spans(params, RoleKind::Parameter)?;
        let g = optional_spans(grads, RoleKind::Gradient)?;
        if weight_decays.len() != lrs.len() {
            return Err(TorchError::Count {
                what: "per-group weight decays",
                expected: lrs.len(),
                found: weight_decays.len(),
            }
            .into());
        }
        let hps: Vec<TensorStep> = lrs
            .iter()
            .zip(&weight_decays)
            .map(|(&lr, &weight_decay)| TensorStep { lr, weight_decay })
            .collect();
        // SAFETY: the spans come from tensors held by this call's arguments, and the call holds
        // the interpreter throughout (`device` explains why that suffices).
        let r = with_engine!(&mut self.inner, e => unsafe {
            e.step(&p, &g, &hps, kappa_lr, check_finite)
        })?;
        Ok(r.into())
    }

    /// Refreshes the estimate and mask now from estimator gradients (`None` allowed only for
    /// tensors that take no part); `gamma` overrides γ for this refresh. Returns τ.
    #[pyo3(signature = (params, estimates, gamma=None))]
    fn refresh(
        &mut self,
        py: Python<'_>,
        params: &Bound<'_, PyAny>,
        estimates: &Bound<'_, PyAny>,
        gamma: Option<f64>,
    ) -> PyResult<Option<f64>> {
        self.follow(py)?;
        let p = spans(params, RoleKind::Parameter)?;
        let est = optional_spans(estimates, RoleKind::Estimate)?;
        // SAFETY: as in `step`.
        Ok(with_engine!(&mut self.inner, e => unsafe { e.refresh(&p, &est, gamma) })?)
    }

    /// Starts a step whose base step torch takes (checks, refresh when due, `θ_old`).
    #[pyo3(signature = (params, grads, kappa_lr, check_finite=true))]
    fn begin_external(
        &mut self,
        py: Python<'_>,
        params: &Bound<'_, PyAny>,
        grads: &Bound<'_, PyAny>,
        kappa_lr: f64,
        check_finite: bool,
    ) -> PyResult<PyReport> {
        self.follow(py)?;
        let p = spans(params, RoleKind::Parameter)?;
        let g = optional_spans(grads, RoleKind::Gradient)?;
        // SAFETY: as in `step`.
        let r = with_engine!(&mut self.inner, e => unsafe {
            e.begin_external(&p, &g, kappa_lr, check_finite)
        })?;
        Ok(r.into())
    }

    /// Boosts the displacement of torch's base step.
    fn finish_external(&mut self, py: Python<'_>, params: &Bound<'_, PyAny>) -> PyResult<PyReport> {
        self.follow(py)?;
        let p = spans(params, RoleKind::Parameter)?;
        // SAFETY: as in `step`.
        let r = with_engine!(&mut self.inner, e => unsafe { e.finish_external(&p) })?;
        Ok(r.into())
    }

    /// Abandons an external step whose base step failed.
    fn cancel_external(&mut self) -> PyResult<()> {
        with_engine!(&mut self.inner, e => e.cancel_external())?;
        Ok(())
    }

    /// SAM's perturbation `θ ← θ + ε` (every gradient required).
    #[pyo3(signature = (params, grads, check_finite=true))]
    fn sam_perturb(
        &mut self,
        py: Python<'_>,
        params: &Bound<'_, PyAny>,
        grads: &Bound<'_, PyAny>,
        check_finite: bool,
    ) -> PyResult<()> {
        self.follow(py)?;
        let p = spans(params, RoleKind::Parameter)?;
        let g = optional_spans(grads, RoleKind::Gradient)?;
        // SAFETY: as in `step`.
        with_engine!(&mut self.inner, e => unsafe { e.sam_perturb(&p, &g, check_finite) })?;
        Ok(())
    }

    /// Restores `θ` saved by `sam_perturb` (external base).
    fn sam_restore(&mut self, py: Python<'_>, params: &Bound<'_, PyAny>) -> PyResult<()> {
        self.follow(py)?;
        let p = spans(params, RoleKind::Parameter)?;
        // SAFETY: as in `step`.
        with_engine!(&mut self.inner, e => unsafe { e.sam_restore(&p) })?;
        Ok(())
    }

    /// Copies tensor `i`'s mask (1 = flat) into `out`, a flat `torch.uint8` tensor.
    fn mask_into(&mut self, py: Python<'_>, i: usize, out: &Bound<'_, PyAny>) -> PyResult<()> {
        self.follow(py)?;
        let role = Role {
            kind: RoleKind::Output,
            index: i,
        };
        let s = device::span_of(out, role, Accept::Exactly(ire_core::DType::U8))?;
        // SAFETY: `out` is held by this call's arguments; the engine never hands its own
        // memory to Python, so `out` overlaps nothing it reads.
        with_engine!(&self.inner, e => unsafe { e.mask_into(i, &s) })?;
        Ok(())
    }

    /// Copies tensor `i`'s estimate `h` into `out`, a flat tensor of the engine's dtype.
    fn estimate_into(&mut self, py: Python<'_>, i: usize, out: &Bound<'_, PyAny>) -> PyResult<()> {
        self.follow(py)?;
        let role = Role {
            kind: RoleKind::Output,
            index: i,
        };
        let s = device::span_of(out, role, Accept::Float)?;
        // SAFETY: as in `mask_into`.
        with_engine!(&self.inner, e => unsafe { e.estimate_into(i, &s) })?;
        Ok(())
    }

    /// Number of flat coordinates of tensor `i`.
    fn flat_count(&mut self, py: Python<'_>, i: usize) -> PyResult<usize> {
        self.follow(py)?;
        Ok(with_engine!(&self.inner, e => e.flat_count(i))?)
    }

    /// The whole state as Python data (see the `state` module).
    fn save<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.follow(py)?;
        let d = with_engine!(&self.inner, e => e.save())?;
        Ok(state::to_python(py, &d)?)
    }

    /// Restores a state made by `save` (all or nothing).
    fn load(&mut self, py: Python<'_>, state: &Bound<'_, PyAny>) -> PyResult<()> {
        self.follow(py)?;
        let d = state::from_python(state)?;
        with_engine!(&mut self.inner, e => e.load(&d))?;
        Ok(())
    }
}

/// The official `rank_increase` schedule: `rank_t` at `iteration` of `horizon` steps after
/// the IRE warm-up, for the configured `rank` (= 1 − γ). ire-core's formula.
#[pyfunction]
fn rank_increase(rank: f64, iteration: u64, horizon: u64) -> f64 {
    GammaSchedule::RankIncrease { horizon }.rank_at(1.0 - rank, iteration)
}

/// Checks a list of parameters as every step will (one device this build reaches, dense,
/// contiguous, float32 or float64, one dtype, no two sharing memory) and returns their dtype (`"float32"` or
/// `"float64"`; `"float32"` for an empty list).
#[pyfunction]
fn check_parameters(params: &Bound<'_, PyAny>) -> PyResult<&'static str> {
    let p = spans(params, RoleKind::Parameter)?;
    let dtype = p.first().map_or(ire_core::DType::F32, |s| s.dtype);
    if let Some(first) = p.first()
        && let Some(s) = p.iter().find(|s| s.place != first.place)
    {
        return Err(TorchError::OtherDevice {
            role: s.role,
            found: s.place,
            expected: first.place,
        }
        .into());
    }
    if let Some(s) = p.iter().find(|s| s.dtype != dtype) {
        return Err(TorchError::MixedDType {
            role: s.role,
            found: s.dtype,
            expected: dtype,
        }
        .into());
    }
    device::check_disjoint(&p, &[])?;
    Ok(match dtype {
        ire_core::DType::F64 => "float64",
        _ => "float32",
    })
}

/// Starts counting the extension's allocations of at least `threshold` bytes (resets the count).
#[pyfunction]
fn count_allocations_from(threshold: usize) {
    alloc_count::start(threshold);
}

/// `(count, bytes)` of the extension's allocations counted since `count_allocations_from`.
#[pyfunction]
fn counted_allocations() -> (usize, usize) {
    alloc_count::counted()
}

/// The Python module `ire_torch._native`.
#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The importing thread (normally the one that trains) joins the backend's thread pool
    // (rayon's global one) as worker 0, so a step it calls runs a share of the work itself
    // instead of handing all of it to the pool and sleeping until woken: a wake-up per step
    // costs milliseconds on a busy machine. Only with two threads or more: worker 0 runs no
    // work-stealing loop of its own, so a pool of it alone would never run a step called from
    // another thread. Fails harmlessly if the pool already exists.
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads >= 2 {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .use_current_thread()
            .build_global();
    }
    m.add_class::<PyEngine>()?;
    m.add_class::<PyReport>()?;
    m.add_function(wrap_pyfunction!(rank_increase, m)?)?;
    m.add_function(wrap_pyfunction!(check_parameters, m)?)?;
    m.add_function(wrap_pyfunction!(count_allocations_from, m)?)?;
    m.add_function(wrap_pyfunction!(counted_allocations, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Whether this build reaches CUDA tensors (the cargo feature `cuda`).
    m.add("CUDA", cfg!(feature = "cuda"))?;
    Ok(())
}

//! candle's CPU memory lent to the optimizer without a copy.
//!
//! - [`step_in_place`]: one variable and its gradient, through candle's in-place custom op
//!   ([`InplaceOp2`]): candle holds the variable's write lock and the gradient's read lock
//!   while the closure runs on their memory.
//! - [`with_read`]: several tensors read at once (the estimator gradients of a refresh).
//! - [`with_vars_mut`]: every variable written at once (SAM's perturbation and restore, which
//!   need the global gradient norm and the whole `θ`). Each variable's in-place op calls the
//!   next one's from inside, so all write locks are held together when the closure runs.

use std::cell::{Cell, RefCell};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Storage, Tensor, Var};
use ire_backend_cpu::{CpuBackend, CpuBuffer};

use crate::element::CandleElement;
use crate::error::Result;

/// The contiguous elements a layout selects in a CPU storage.
fn elements<'s, T: CandleElement>(s: &'s CpuStorage, l: &Layout) -> candle_core::Result<&'s [T]> {
    let all = T::slice(s).ok_or_else(|| dtype_error::<T>(s))?;
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::RequiresContiguous { op: "ire-step" })?;
    Ok(&all[a..b])
}

/// The contiguous elements a layout selects in a CPU storage, mutably.
fn elements_mut<'s, T: CandleElement>(
    s: &'s mut CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'s mut [T]> {
    let found = s.dtype();
    let all = T::slice_mut(s).ok_or(candle_core::Error::UnexpectedDType {
        msg: "ire-step",
        expected: T::CANDLE_DTYPE,
        got: found,
    })?;
    let (a, b) = l
        .contiguous_offsets()
        .ok_or(candle_core::Error::RequiresContiguous { op: "ire-step" })?;
    Ok(&mut all[a..b])
}

fn dtype_error<T: CandleElement>(s: &CpuStorage) -> candle_core::Error {
    candle_core::Error::UnexpectedDType {
        msg: "ire-step",
        expected: T::CANDLE_DTYPE,
        got: s.dtype(),
    }
}

/// What a closure run inside a candle op returns: an optimizer error is kept typed here and
/// candle is given a marker error to unwind with.
struct Failure(Cell<Option<ire_core::Error>>);

impl Failure {
    fn new() -> Self {
        Failure(Cell::new(None))
    }

    fn record(&self, r: ire_core::Result<()>) -> candle_core::Result<()> {
        r.map_err(|e| {
            let msg = e.to_string();
            self.0.set(Some(e));
            candle_core::Error::Msg(msg)
        })
    }

    /// The typed error if the closure failed, else candle's own.
    fn into_error(self, e: candle_core::Error) -> crate::Error {
        match self.0.into_inner() {
            Some(core) => crate::Error::Core(core),
            None => crate::Error::Candle(e),
        }
    }
}

type StepFn<'a, T> = dyn FnMut(&mut [T], &[T]) -> ire_core::Result<()> + 'a;

struct StepOp<'a, 'f, T> {
    f: RefCell<&'f mut StepFn<'a, T>>,
    failure: &'f Failure,
}

impl<T: CandleElement> InplaceOp2 for StepOp<'_, '_, T> {
    fn name(&self) -> &'static str {
        "ire-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let p = elements_mut::<T>(s1, l1)?;
        let g = elements::<T>(s2, l2)?;
        if p.len() != g.len() {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: l1.shape().clone(),
                rhs: l2.shape().clone(),
                op: "ire-step",
            });
        }
        let mut f = self.f.borrow_mut();
        self.failure.record((*f)(p, g))
    }
}

/// Runs `f` on `var`'s memory (written in place) and `grad`'s (read), under candle's locks.
pub(crate) fn step_in_place<T: CandleElement>(
    var: &Var,
    grad: &Tensor,
    mut f: impl FnMut(&mut [T], &[T]) -> ire_core::Result<()>,
) -> Result<()> {
    let failure = Failure::new();
    let op = StepOp {
        f: RefCell::new(&mut f),
        failure: &failure,
    };
    match var.as_tensor().inplace_op2(grad, &op) {
        Ok(()) => Ok(()),
        Err(e) => Err(failure.into_error(e)),
    }
}

/// Runs `f` with read-only buffers over `tensors` (contiguous CPU tensors of type `T`).
pub(crate) fn with_read<T: CandleElement, R>(
    b: &CpuBackend,
    tensors: &[&Tensor],
    f: impl FnOnce(&[CpuBuffer<T>]) -> R,
) -> Result<R> {
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: Vec<&[T]> = Vec::with_capacity(guards.len());
    for (s, l) in &guards {
        match &**s {
            Storage::Cpu(c) => slices.push(elements::<T>(c, l)?),
            other => {
                return Err(crate::Error::Candle(
                    candle_core::Error::DeviceMismatchBinaryOp {
                        lhs: candle_core::DeviceLocation::Cpu,
                        rhs: other.device().location(),
                        op: "ire-read",
                    },
                ));
            }
        }
    }
    Ok(b.with_borrowed::<T, R>(&mut [], &slices, |_, g| f(g)))
}

type Bottom<'a, T> = dyn FnMut(&mut [CpuBuffer<T>]) -> ire_core::Result<()> + 'a;

/// One level of the nest: holds one variable's write lock while the next level runs.
struct Nest<'n, 'a, T> {
    rest: &'n [Var],
    spans: &'n RefCell<Vec<(*mut T, usize)>>,
    bottom: &'n RefCell<&'n mut Bottom<'a, T>>,
    failure: &'n Failure,
}

impl<T: CandleElement> InplaceOp1 for Nest<'_, '_, T> {
    fn name(&self) -> &'static str {
        "ire-borrow-all"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let p = elements_mut::<T>(s, l)?;
        self.spans.borrow_mut().push((p.as_mut_ptr(), p.len()));
        let r = descend(self.rest, self.spans, self.bottom, self.failure);
        self.spans.borrow_mut().pop();
        r
    }
}

fn descend<'n, 'a, T: CandleElement>(
    vars: &'n [Var],
    spans: &'n RefCell<Vec<(*mut T, usize)>>,
    bottom: &'n RefCell<&'n mut Bottom<'a, T>>,
    failure: &'n Failure,
) -> candle_core::Result<()> {
    match vars.split_first() {
        Some((v, rest)) => v.as_tensor().inplace_op1(&Nest {
            rest,
            spans,
            bottom,
            failure,
        }),
        None => {
            // SAFETY: every span is the storage of one variable (the caller checked that no
            // two are the same variable, so no two overlap) whose write lock an enclosing
            // `Nest::cpu_fwd` holds until this call returns; the `&mut` it came from is not
            // used again before then. The buffers are dropped before this function returns.
            let mut bufs: Vec<CpuBuffer<T>> = spans
                .borrow()
                .iter()
                .map(|&(p, n)| unsafe { CpuBuffer::from_raw_parts_mut(p, n) })
                .collect();
            let mut f = bottom.borrow_mut();
            failure.record((*f)(&mut bufs))
        }
    }
}

/// Runs `f` with every variable's memory as one mutable buffer each, all at once, in place.
/// The variables must be distinct, contiguous, on the CPU and of type `T`.
pub(crate) fn with_vars_mut<T: CandleElement>(
    vars: &[Var],
    mut f: impl FnMut(&mut [CpuBuffer<T>]) -> ire_core::Result<()>,
) -> Result<()> {
    let spans = RefCell::new(Vec::with_capacity(vars.len()));
    let bottom: RefCell<&mut Bottom<'_, T>> = RefCell::new(&mut f);
    let failure = Failure::new();
    let r = descend(vars, &spans, &bottom, &failure);
    r.map_err(|e| failure.into_error(e))
}

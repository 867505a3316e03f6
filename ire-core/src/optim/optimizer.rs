//! The base-optimizer contract: a step taken tensor by tensor, with an optional fused IRE boost,
//! and the checks every optimizer shares.
//!
//! A step is `begin_step` (state allocated on the first step, checked after), `step_tensor` for
//! each tensor, `end_step`. Taking the step tensor by tensor lets a framework that hands out one
//! tensor at a time (burn's module mapper, candle's in-place ops) drive any optimizer, and lets
//! each tensor carry its own group's learning rate and weight decay.

use alloc::format;
use alloc::vec::Vec;

use super::groups::{ParamGroups, TensorStep};
use crate::backend::Backend;
use crate::error::{Error, Result, check, check_len};
use crate::scalar::{Element, Scalar};
use crate::state::StateDict;

/// The IRE boost of one tensor's step: `θ ← θ_base + (κ·n) ⊙ (θ_base − θ_old)`.
pub struct TensorBoost<'a, B: Backend, T: Scalar> {
    /// The tensor's packed mask ([`crate::mask`]; a set bit = flat: boosted).
    pub mask: &'a B::Buffer<u32>,
    /// `κ_t` for this step.
    pub kappa: T,
    /// Space for `θ_old`: given when [`Optimizer::fuses_boost`] is false, `None` otherwise.
    pub scratch: Option<&'a mut B::Buffer<T>>,
}

/// A base optimizer: updates parameter buffers in place from their gradients.
///
/// Implement `step_tensor`, `save` and `load` (and `begin_step` / `end_step` if the optimizer
/// keeps state or counts steps) and [`super::Ire`] wraps it as it wraps the built-in ones.
pub trait Optimizer<B: Backend, T: Scalar> {
    /// Name written into saved state (`sgd`, `adamw`, ...).
    fn name(&self) -> &str;

    /// Starts a step over tensors of `sizes`: allocates state on the first step and checks it
    /// against `sizes` on later ones. The default does nothing.
    fn begin_step(&mut self, b: &B, sizes: &[usize]) -> Result<()> {
        let _ = (b, sizes);
        Ok(())
    }

    /// Steps tensor `i` of the step begun by [`Optimizer::begin_step`].
    fn step_tensor(
        &mut self,
        b: &B,
        i: usize,
        param: &mut B::Buffer<T>,
        grad: &B::Buffer<T>,
        hp: TensorStep,
    ) -> Result<()>;

    /// True when [`Optimizer::step_tensor_boosted`] computes the boost in one fused pass (then
    /// no scratch is needed). The default is false.
    fn fuses_boost(&self) -> bool {
        false
    }

    /// Tensor `i`'s step followed by the IRE boost. The default copies `θ` into the scratch,
    /// steps, then boosts.
    fn step_tensor_boosted(
        &mut self,
        b: &B,
        i: usize,
        param: &mut B::Buffer<T>,
        grad: &B::Buffer<T>,
        hp: TensorStep,
        boost: TensorBoost<'_, B, T>,
    ) -> Result<()> {
        let scratch = boost.scratch.ok_or_else(|| {
            Error::Protocol(format!(
                "{}: a boosted step without scratch space (fuses_boost() is false)",
                self.name()
            ))
        })?;
        b.copy(param, scratch)?;
        self.step_tensor(b, i, param, grad, hp)?;
        b.ire_boost(param, scratch, boost.mask, boost.kappa)
    }

    /// Ends the step begun by [`Optimizer::begin_step`]. The default does nothing.
    fn end_step(&mut self) {}

    /// The optimizer's state (buffers downloaded to the host).
    fn save(&self, b: &B) -> Result<StateDict>;

    /// Restores state saved by `save`; on any mismatch returns an error and changes nothing.
    fn load(&mut self, b: &B, state: &StateDict) -> Result<()>;

    /// One step over every tensor at learning rate `lr`.
    fn step(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &[B::Buffer<T>],
        lr: f64,
    ) -> Result<()> {
        self.step_grouped(b, params, grads, lr, None)
    }

    /// One step over every tensor, each at its group's learning rate and weight decay.
    fn step_grouped(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &[B::Buffer<T>],
        lr: f64,
        groups: Option<&ParamGroups>,
    ) -> Result<()> {
        check_lr(lr)?;
        check_params(b, params, grads)?;
        if let Some(g) = groups {
            g.check_tensors(params.len())?;
        }
        self.begin_step(b, &sizes(b, params))?;
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let hp = groups.map_or(TensorStep::lr(lr), |gr| gr.tensor_step(i, lr));
            self.step_tensor(b, i, p, g, hp)?;
        }
        self.end_step();
        Ok(())
    }
}

/// Sizes of a set of buffers.
pub fn sizes<B: Backend, E: Element>(b: &B, bufs: &[B::Buffer<E>]) -> Vec<usize> {
    bufs.iter().map(|x| b.len(x)).collect()
}

/// Checks that `grads` match `params` tensor by tensor.
pub(crate) fn check_params<B: Backend, T: Scalar>(
    b: &B,
    params: &[B::Buffer<T>],
    grads: &[B::Buffer<T>],
) -> Result<()> {
    check_len("number of gradient tensors", params.len(), grads.len())?;
    for (i, (p, g)) in params.iter().zip(grads).enumerate() {
        check_len(&format!("gradient tensor {i}"), b.len(p), b.len(g))?;
    }
    Ok(())
}

/// Checks one tensor of a step against the sizes the state was allocated for.
pub(crate) fn check_tensor<B: Backend, T: Scalar>(
    b: &B,
    state_sizes: &[usize],
    i: usize,
    param: &B::Buffer<T>,
    grad: &B::Buffer<T>,
) -> Result<()> {
    let n = *state_sizes.get(i).ok_or_else(|| Error::SizeMismatch {
        what: format!("tensor index {i} (vs optimizer state)"),
        expected: state_sizes.len(),
        found: i + 1,
    })?;
    check_len(
        &format!("parameter tensor {i} (vs optimizer state)"),
        n,
        b.len(param),
    )?;
    check_len(&format!("gradient tensor {i}"), n, b.len(grad))
}

/// Checks a step's tensor sizes against the sizes the state was allocated for.
pub(crate) fn check_sizes(state_sizes: &[usize], sizes: &[usize]) -> Result<()> {
    check_len(
        "number of parameter tensors (vs optimizer state)",
        state_sizes.len(),
        sizes.len(),
    )?;
    for (i, (&n, &m)) in state_sizes.iter().zip(sizes).enumerate() {
        check_len(&format!("parameter tensor {i} (vs optimizer state)"), n, m)?;
    }
    Ok(())
}

/// One zeroed buffer per size.
pub(crate) fn zeros<B: Backend, E: Element>(b: &B, sizes: &[usize]) -> Result<Vec<B::Buffer<E>>> {
    sizes.iter().map(|&n| b.alloc::<E>(n)).collect()
}

/// Validates a learning rate passed to a step.
pub(crate) fn check_lr(lr: f64) -> Result<()> {
    check("lr", lr, lr >= 0.0 && lr.is_finite(), "finite and >= 0")
}

/// Validates a weight decay passed with a tensor's step.
pub(crate) fn weight_decay(hp: TensorStep, configured: f64) -> Result<f64> {
    match hp.weight_decay {
        None => Ok(configured),
        Some(wd) => {
            check(
                "weight_decay",
                wd,
                wd >= 0.0 && wd.is_finite(),
                ">= 0, finite",
            )?;
            Ok(wd)
        }
    }
}

//! Optimizers as small, composable transforms with explicit state, in place on device buffers.
//!
//! A model's parameters may live in several buffers (tensors): every optimizer takes a slice of
//! parameter buffers and the matching slice of gradient buffers. State is allocated on the
//! first step and checked against the parameter sizes on every later one.

mod adamw;
mod ire;
mod sam;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use ire::{
    EstimateInput, Estimator, Ire, IreConfig, IreReport, IreStep, KappaSchedule, sharp_count,
};
pub use sam::{Sam, SamConfig};
pub use sgd::{Sgd, SgdConfig};

use alloc::format;
use alloc::vec::Vec;

use crate::backend::Backend;
use crate::error::{Error, Result, check, check_len};
use crate::scalar::Scalar;
use crate::state::StateDict;

/// The IRE boost a base optimizer applies to its own displacement.
pub struct Boost<'a, B: Backend, T: Scalar> {
    /// One 0/1 mask per parameter tensor (1 = flat: boosted).
    pub mask: &'a [B::Buffer<u8>],
    /// `κ_t` for this step.
    pub kappa: T,
    /// Space for `θ_old`, one buffer per tensor: provided by [`Ire`] when the optimizer's
    /// [`Optimizer::fuses_boost`] is false, `None` otherwise.
    pub scratch: Option<&'a mut [B::Buffer<T>]>,
}

/// A base optimizer: updates parameter buffers in place from their gradients.
///
/// Implement `step`, `save` and `load` for your own optimizer and [`Ire`] wraps it as it wraps
/// the built-in ones (the provided `step_boosted` copies `θ`, steps, then boosts).
pub trait Optimizer<B: Backend, T: Scalar> {
    /// Name written into saved state (`sgd`, `adamw`, ...).
    fn name(&self) -> &str;

    /// One step at learning rate `lr`.
    fn step(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &[B::Buffer<T>],
        lr: f64,
    ) -> Result<()>;

    /// True when `step_boosted` computes the boost in one fused pass (then no scratch is
    /// needed). The default is false.
    fn fuses_boost(&self) -> bool {
        false
    }

    /// One step followed by the IRE boost `θ ← θ_base + (κ·n) ⊙ (θ_base − θ_old)`.
    fn step_boosted(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &[B::Buffer<T>],
        lr: f64,
        boost: Boost<'_, B, T>,
    ) -> Result<()> {
        let scratch = boost.scratch.ok_or_else(|| {
            Error::Protocol(format!(
                "{}: step_boosted without scratch buffers (fuses_boost() is false)",
                self.name()
            ))
        })?;
        check_len("boost scratch tensors", params.len(), scratch.len())?;
        check_len("boost mask tensors", params.len(), boost.mask.len())?;
        for (p, s) in params.iter().zip(scratch.iter_mut()) {
            b.copy(p, s)?;
        }
        self.step(b, params, grads, lr)?;
        for ((p, s), m) in params.iter_mut().zip(scratch.iter()).zip(boost.mask) {
            b.ire_boost(p, s, m, boost.kappa)?;
        }
        Ok(())
    }

    /// The optimizer's state (buffers downloaded to the host).
    fn save(&self, b: &B) -> Result<StateDict>;

    /// Restores state saved by `save`; on any mismatch returns an error and changes nothing.
    fn load(&mut self, b: &B, state: &StateDict) -> Result<()>;
}

/// Sizes of a set of buffers.
pub fn sizes<B: Backend, T: Scalar>(b: &B, bufs: &[B::Buffer<T>]) -> Vec<usize> {
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

/// Checks that an optimizer's state, allocated for `state_sizes`, fits `params`.
pub(crate) fn check_state_sizes<B: Backend, T: Scalar>(
    b: &B,
    params: &[B::Buffer<T>],
    state_sizes: &[usize],
) -> Result<()> {
    check_len(
        "number of parameter tensors (vs optimizer state)",
        state_sizes.len(),
        params.len(),
    )?;
    for (i, (p, &n)) in params.iter().zip(state_sizes).enumerate() {
        check_len(
            &format!("parameter tensor {i} (vs optimizer state)"),
            n,
            b.len(p),
        )?;
    }
    Ok(())
}

/// Allocates one zeroed buffer per parameter tensor.
pub(crate) fn zeros_like<B: Backend, E: crate::scalar::Element, T: Scalar>(
    b: &B,
    params: &[B::Buffer<T>],
) -> Result<Vec<B::Buffer<E>>> {
    params.iter().map(|p| b.alloc::<E>(b.len(p))).collect()
}

/// Validates a learning rate passed to `step`.
pub(crate) fn check_lr(lr: f64) -> Result<()> {
    check("lr", lr, lr >= 0.0 && lr.is_finite(), "finite and >= 0")
}

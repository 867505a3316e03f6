//! SAM and ASAM (sharpness-aware minimization) wrapping any base optimizer.

use alloc::format;
use alloc::vec::Vec;

#[cfg_attr(feature = "std", allow(unused_imports))] // no_std: sqrt, powf, cos come from libm
use num_traits::Float;

use super::groups::TensorStep;
use super::optimizer::{Optimizer, TensorBoost, check_params, check_sizes, sizes, zeros};
use crate::backend::Backend;
use crate::error::{Error, Result, check, check_len};
use crate::scalar::Scalar;
use crate::state::{StateDict, StateValue};

/// Hyper-parameters of [`Sam`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SamConfig {
    /// Radius ρ ≥ 0 (0.05 for SAM, 2.0 is common for ASAM).
    pub rho: f64,
    /// ASAM: scale the perturbation by `θ²` and the norm by `|θ|`.
    pub adaptive: bool,
}

impl Default for SamConfig {
    /// SAM with ρ = 0.05.
    fn default() -> Self {
        SamConfig {
            rho: 0.05,
            adaptive: false,
        }
    }
}

impl SamConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        check(
            "rho",
            self.rho,
            self.rho >= 0.0 && self.rho.is_finite(),
            ">= 0, finite",
        )
    }
}

/// Added to the gradient norm before dividing (as in the reference SAM implementation).
const NORM_EPS: f64 = 1e-12;

/// SAM (Foret et al.) or ASAM around a base optimizer `O`.
///
/// Two-phase use: [`Sam::perturb`] with the gradient at `θ` (moves `θ` to `θ + ε`), compute the
/// gradient there, then [`Optimizer::step`] restores `θ` exactly and runs the base step with
/// that gradient. Or in one call: [`Sam::step_with`].
pub struct Sam<B: Backend, T: Scalar, O> {
    base: O,
    cfg: SamConfig,
    backup: Vec<B::Buffer<T>>,
    perturbed: bool,
}

/// A copy of the optimizer and its state (the saved `θ` included while perturbed).
impl<B: Backend, T: Scalar, O: Clone> Clone for Sam<B, T, O>
where
    B::Buffer<T>: Clone,
{
    fn clone(&self) -> Self {
        Sam {
            base: self.base.clone(),
            cfg: self.cfg,
            backup: self.backup.clone(),
            perturbed: self.perturbed,
        }
    }
}

impl<B: Backend, T: Scalar, O: Optimizer<B, T>> Sam<B, T, O> {
    /// Wraps `base`; fails if ρ is out of range.
    pub fn new(base: O, cfg: SamConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Sam {
            base,
            cfg,
            backup: Vec::new(),
            perturbed: false,
        })
    }

    /// The base optimizer.
    pub fn base(&self) -> &O {
        &self.base
    }

    /// The base optimizer, mutably.
    pub fn base_mut(&mut self) -> &mut O {
        &mut self.base
    }

    /// The configuration.
    pub fn config(&self) -> &SamConfig {
        &self.cfg
    }

    /// Whether `θ` is currently perturbed (between `perturb` and `step`).
    pub fn is_perturbed(&self) -> bool {
        self.perturbed
    }

    /// First phase: saves `θ` and moves it to `θ + ε`, `ε = ρ g / (‖g‖ + 1e−12)`
    /// (ASAM: `ε = ρ θ² ⊙ g / (‖|θ| ⊙ g‖ + 1e−12)`). The norm is global over all tensors.
    /// A non-finite norm is an error and `θ` is left unchanged.
    pub fn perturb(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &[B::Buffer<T>],
    ) -> Result<()> {
        let sq = self.squared_norm(b, params, grads)?;
        self.perturb_with_norm(b, params, grads, sq)
    }

    /// The squared norm [`Sam::perturb`] divides by: `Σ ‖g‖²` (ASAM: `Σ ‖|θ| ⊙ g‖²`), each
    /// tensor's sum of squares in `T`, added over the tensors in order in `f64`.
    pub fn squared_norm(
        &self,
        b: &B,
        params: &[B::Buffer<T>],
        grads: &[B::Buffer<T>],
    ) -> Result<f64> {
        check_params(b, params, grads)?;
        let mut sq = 0.0f64;
        for (p, g) in params.iter().zip(grads) {
            let s = if self.cfg.adaptive {
                b.sum_squares_product(p, g)?
            } else {
                b.sum_squares(g)?
            };
            sq += s.as_f64();
        }
        Ok(sq)
    }

    /// [`Sam::perturb`] with the squared norm `sq` given ([`Sam::squared_norm`] of the whole
    /// parameters): for a caller whose `params` are a share of parameters held elsewhere too,
    /// such as one rank's range of a sharded optimizer state, which computes the norm of the
    /// whole gradient itself.
    pub fn perturb_with_norm(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &[B::Buffer<T>],
        sq: f64,
    ) -> Result<()> {
        if self.perturbed {
            return Err(Error::Protocol(
                "SAM: perturb called twice without a step".into(),
            ));
        }
        check_params(b, params, grads)?;
        let norm = sq.sqrt();
        if !norm.is_finite() {
            return Err(Error::NonFinite {
                what: format!("SAM gradient norm ({norm})"),
            });
        }
        let scale = T::of(self.cfg.rho / (norm + NORM_EPS));
        if self.backup.len() != params.len()
            || self
                .backup
                .iter()
                .zip(params.iter())
                .any(|(a, p)| b.len(a) != b.len(p))
        {
            self.backup = zeros(b, &sizes(b, params))?;
        }
        for (p, bk) in params.iter().zip(self.backup.iter_mut()) {
            b.copy(p, bk)?;
        }
        for (p, g) in params.iter_mut().zip(grads) {
            if self.cfg.adaptive {
                b.asam_perturb(p, g, scale)?;
            } else {
                b.sam_perturb(p, g, scale)?;
            }
        }
        self.perturbed = true;
        Ok(())
    }

    /// Puts `θ` back to its value before `perturb` (bit for bit) without stepping.
    pub fn restore(&mut self, b: &B, params: &mut [B::Buffer<T>]) -> Result<()> {
        if !self.perturbed {
            return Err(Error::Protocol(
                "SAM: step or restore called before perturb".into(),
            ));
        }
        check_len(
            "number of parameter tensors (vs SAM backup)",
            self.backup.len(),
            params.len(),
        )?;
        for (p, bk) in params.iter_mut().zip(self.backup.iter()) {
            b.copy(bk, p)?;
        }
        self.perturbed = false;
        Ok(())
    }

    /// Copies tensor `i` of the saved `θ` back (bit for bit).
    fn restore_tensor(&self, b: &B, i: usize, param: &mut B::Buffer<T>) -> Result<()> {
        if !self.perturbed {
            return Err(Error::Protocol(
                "SAM: step or restore called before perturb".into(),
            ));
        }
        let saved = self.backup.get(i).ok_or_else(|| Error::SizeMismatch {
            what: format!("tensor index {i} (vs SAM backup)"),
            expected: self.backup.len(),
            found: i + 1,
        })?;
        b.copy(saved, param)
    }

    /// SAM in one call: perturbs with `grads` (the gradient at `θ`), calls
    /// `grad_at(params, grads)` to overwrite `grads` with the gradient at the perturbed point,
    /// then restores `θ` and runs the base step. If `grad_at` fails, `θ` is restored.
    pub fn step_with<F>(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &mut [B::Buffer<T>],
        lr: f64,
        grad_at: F,
    ) -> Result<()>
    where
        F: FnOnce(&[B::Buffer<T>], &mut [B::Buffer<T>]) -> Result<()>,
    {
        self.perturb(b, params, grads)?;
        if let Err(e) = grad_at(params, grads) {
            self.restore(b, params)?;
            return Err(e);
        }
        self.step(b, params, grads, lr)
    }
}

impl<B: Backend, T: Scalar, O: Optimizer<B, T>> Optimizer<B, T> for Sam<B, T, O> {
    fn name(&self) -> &str {
        "sam"
    }

    /// Second phase: the step must follow [`Sam::perturb`]; each tensor is restored before
    /// its base step, which takes the gradient computed at `θ + ε`.
    fn begin_step(&mut self, b: &B, sizes: &[usize]) -> Result<()> {
        if !self.perturbed {
            return Err(Error::Protocol(
                "SAM: step or restore called before perturb".into(),
            ));
        }
        check_sizes(&super::optimizer::sizes(b, &self.backup), sizes)?;
        self.base.begin_step(b, sizes)
    }

    fn step_tensor(
        &mut self,
        b: &B,
        i: usize,
        param: &mut B::Buffer<T>,
        grad: &B::Buffer<T>,
        hp: TensorStep,
    ) -> Result<()> {
        self.restore_tensor(b, i, param)?;
        self.base.step_tensor(b, i, param, grad, hp)
    }

    fn fuses_boost(&self) -> bool {
        self.base.fuses_boost()
    }

    /// SAM-IRE: restores `θ`, then the base step boosted; so the boost applies to the
    /// displacement from the unperturbed `θ`.
    fn step_tensor_boosted(
        &mut self,
        b: &B,
        i: usize,
        param: &mut B::Buffer<T>,
        grad: &B::Buffer<T>,
        hp: TensorStep,
        boost: TensorBoost<'_, B, T>,
    ) -> Result<()> {
        self.restore_tensor(b, i, param)?;
        self.base.step_tensor_boosted(b, i, param, grad, hp, boost)
    }

    fn end_step(&mut self) {
        self.perturbed = false;
        self.base.end_step();
    }

    fn save(&self, b: &B) -> Result<StateDict> {
        if self.perturbed {
            return Err(Error::Protocol(
                "SAM: cannot save state while θ is perturbed".into(),
            ));
        }
        let mut d = StateDict::new("sam");
        d.put("base", StateValue::Nested(self.base.save(b)?));
        Ok(d)
    }

    fn load(&mut self, b: &B, state: &StateDict) -> Result<()> {
        if self.perturbed {
            return Err(Error::Protocol(
                "SAM: cannot load state while θ is perturbed".into(),
            ));
        }
        state.expect("sam", &[alloc::string::String::from("base")])?;
        self.base.load(b, state.get_nested("base")?)
    }
}

/// Tensor sizes of SAM's backup (for diagnostics).
impl<B: Backend, T: Scalar, O> Sam<B, T, O> {
    /// Sizes of the saved `θ` copy (empty before the first perturbation).
    pub fn backup_sizes(&self, b: &B) -> Vec<usize> {
        sizes(b, &self.backup)
    }
}

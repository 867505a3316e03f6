//! SGD with momentum, dampening, Nesterov and (coupled) weight decay, as PyTorch defines it.

use alloc::string::String;
use alloc::vec::Vec;

use super::{Boost, Optimizer, check_lr, check_params, check_state_sizes, sizes, zeros_like};
use crate::backend::Backend;
use crate::error::{Result, check};
use crate::formulas::SgdScalars;
use crate::scalar::Scalar;
use crate::state::{StateDict, StateValue, indexed_names};

/// Hyper-parameters of [`Sgd`] (the learning rate comes with each step).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SgdConfig {
    /// Momentum μ ≥ 0 (0: plain SGD, no buffer).
    pub momentum: f64,
    /// Dampening in [0, 1].
    pub dampening: f64,
    /// Nesterov momentum (needs μ > 0 and dampening 0, as in PyTorch).
    pub nesterov: bool,
    /// Weight decay ≥ 0, added to the gradient.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    /// PyTorch's defaults: no momentum, no dampening, no weight decay.
    fn default() -> Self {
        SgdConfig {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

impl SgdConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        check(
            "momentum",
            self.momentum,
            self.momentum >= 0.0 && self.momentum.is_finite(),
            ">= 0, finite",
        )?;
        check(
            "dampening",
            self.dampening,
            (0.0..=1.0).contains(&self.dampening),
            "[0, 1]",
        )?;
        check(
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
            ">= 0, finite",
        )?;
        if self.nesterov {
            check(
                "momentum",
                self.momentum,
                self.momentum > 0.0,
                "> 0 with nesterov",
            )?;
            check(
                "dampening",
                self.dampening,
                self.dampening == 0.0,
                "0 with nesterov",
            )?;
        }
        Ok(())
    }
}

/// SGD (PyTorch semantics): `d = g + wd·θ`; `b = μ·b + (1−dampening)·d` (first step `b = d`);
/// `θ ← θ − lr·(Nesterov ? d + μ·b : b)`.
pub struct Sgd<B: Backend, T: Scalar> {
    cfg: SgdConfig,
    momentum: Vec<B::Buffer<T>>,
    sizes: Option<Vec<usize>>,
    steps: u64,
}

impl<B: Backend, T: Scalar> Sgd<B, T> {
    /// A new optimizer; fails if a hyper-parameter is out of range.
    pub fn new(cfg: SgdConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Sgd {
            cfg,
            momentum: Vec::new(),
            sizes: None,
            steps: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    fn prepare(
        &mut self,
        b: &B,
        params: &[B::Buffer<T>],
        grads: &[B::Buffer<T>],
        lr: f64,
    ) -> Result<SgdScalars<T>> {
        check_lr(lr)?;
        check_params(b, params, grads)?;
        match &self.sizes {
            Some(s) => check_state_sizes(b, params, s)?,
            None => {
                if self.cfg.momentum != 0.0 {
                    self.momentum = zeros_like(b, params)?;
                }
                self.sizes = Some(sizes(b, params));
            }
        }
        Ok(SgdScalars {
            lr: T::of(lr),
            weight_decay: T::of(self.cfg.weight_decay),
            momentum: T::of(self.cfg.momentum),
            dampening_complement: T::of(1.0 - self.cfg.dampening),
            nesterov: self.cfg.nesterov,
            first_step: self.steps == 0,
        })
    }
}

impl<B: Backend, T: Scalar> Optimizer<B, T> for Sgd<B, T> {
    fn name(&self) -> &str {
        "sgd"
    }

    fn step(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &[B::Buffer<T>],
        lr: f64,
    ) -> Result<()> {
        let s = self.prepare(b, params, grads, lr)?;
        if self.cfg.momentum != 0.0 {
            for ((p, g), m) in params.iter_mut().zip(grads).zip(self.momentum.iter_mut()) {
                b.sgd_momentum_step(p, g, m, &s)?;
            }
        } else {
            for (p, g) in params.iter_mut().zip(grads) {
                b.sgd_step(p, g, &s)?;
            }
        }
        self.steps += 1;
        Ok(())
    }

    fn fuses_boost(&self) -> bool {
        true
    }

    fn step_boosted(
        &mut self,
        b: &B,
        params: &mut [B::Buffer<T>],
        grads: &[B::Buffer<T>],
        lr: f64,
        boost: Boost<'_, B, T>,
    ) -> Result<()> {
        let s = self.prepare(b, params, grads, lr)?;
        crate::error::check_len("boost mask tensors", params.len(), boost.mask.len())?;
        if self.cfg.momentum != 0.0 {
            for (((p, g), m), n) in params
                .iter_mut()
                .zip(grads)
                .zip(self.momentum.iter_mut())
                .zip(boost.mask)
            {
                b.sgd_momentum_ire_step(p, g, m, &s, n, boost.kappa)?;
            }
        } else {
            for ((p, g), n) in params.iter_mut().zip(grads).zip(boost.mask) {
                b.sgd_ire_step(p, g, &s, n, boost.kappa)?;
            }
        }
        self.steps += 1;
        Ok(())
    }

    fn save(&self, b: &B) -> Result<StateDict> {
        let mut d = StateDict::new("sgd");
        d.put("steps", StateValue::U64(self.steps));
        d.put("initialized", StateValue::Bool(self.sizes.is_some()));
        d.put_tensors(b, "momentum", &self.momentum)?;
        Ok(d)
    }

    fn load(&mut self, b: &B, state: &StateDict) -> Result<()> {
        let initialized = state.get_bool("initialized")?;
        let saved = state.tensor_sizes("momentum");
        let n_tensors = if self.cfg.momentum != 0.0 {
            saved.len()
        } else {
            0
        };
        let mut expected: Vec<String> = alloc::vec!["steps".into(), "initialized".into()];
        expected.extend(indexed_names("momentum", n_tensors));
        state.expect("sgd", &expected)?;
        if let (Some(cur), true) = (&self.sizes, self.cfg.momentum != 0.0 && initialized) {
            crate::error::check_len("number of momentum tensors", cur.len(), saved.len())?;
            for (i, (a, c)) in saved.iter().zip(cur).enumerate() {
                crate::error::check_len(&alloc::format!("momentum tensor {i}"), *c, *a)?;
            }
        }
        let steps = state.get_u64("steps")?;
        let momentum = state.load_tensors::<B, T>(b, "momentum", &saved[..n_tensors])?;
        // Commit: nothing below can fail.
        self.steps = steps;
        self.momentum = momentum;
        self.sizes = if initialized {
            if self.cfg.momentum != 0.0 {
                Some(saved)
            } else {
                self.sizes.take()
            }
        } else {
            None
        };
        Ok(())
    }
}

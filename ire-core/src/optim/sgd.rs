//! SGD with momentum, dampening, Nesterov and (coupled) weight decay, as PyTorch defines it.

use alloc::string::String;
use alloc::vec::Vec;

use super::groups::TensorStep;
use super::optimizer::{
    Optimizer, TensorBoost, check_lr, check_sizes, check_tensor, weight_decay, zeros,
};
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
///
/// The first-step rule is per tensor (as PyTorch's per-parameter `momentum_buffer`), so a tensor
/// a framework skips in some steps starts its momentum on its own first step.
pub struct Sgd<B: Backend, T: Scalar> {
    cfg: SgdConfig,
    momentum: Vec<B::Buffer<T>>,
    sizes: Option<Vec<usize>>,
    /// Steps taken by each tensor.
    tensor_steps: Vec<u64>,
    steps: u64,
}

/// A copy of the optimizer and its state.
impl<B: Backend, T: Scalar> Clone for Sgd<B, T>
where
    B::Buffer<T>: Clone,
{
    fn clone(&self) -> Self {
        Sgd {
            cfg: self.cfg,
            momentum: self.momentum.clone(),
            sizes: self.sizes.clone(),
            tensor_steps: self.tensor_steps.clone(),
            steps: self.steps,
        }
    }
}

impl<B: Backend, T: Scalar> Sgd<B, T> {
    /// A new optimizer; fails if a hyper-parameter is out of range.
    pub fn new(cfg: SgdConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Sgd {
            cfg,
            momentum: Vec::new(),
            sizes: None,
            tensor_steps: Vec::new(),
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

    fn scalars(&self, i: usize, hp: TensorStep) -> Result<SgdScalars<T>> {
        check_lr(hp.lr)?;
        Ok(SgdScalars {
            lr: T::of(hp.lr),
            weight_decay: T::of(weight_decay(hp, self.cfg.weight_decay)?),
            momentum: T::of(self.cfg.momentum),
            dampening_complement: T::of(1.0 - self.cfg.dampening),
            nesterov: self.cfg.nesterov,
            first_step: self.tensor_steps.get(i).is_none_or(|&s| s == 0),
        })
    }

    fn check(&self, b: &B, i: usize, param: &B::Buffer<T>, grad: &B::Buffer<T>) -> Result<()> {
        let sizes = self.sizes.as_deref().ok_or_else(|| {
            crate::error::Error::Protocol("sgd: step_tensor before begin_step".into())
        })?;
        check_tensor(b, sizes, i, param, grad)
    }
}

impl<B: Backend, T: Scalar> Optimizer<B, T> for Sgd<B, T> {
    fn name(&self) -> &str {
        "sgd"
    }

    fn begin_step(&mut self, b: &B, sizes: &[usize]) -> Result<()> {
        match &self.sizes {
            Some(s) => check_sizes(s, sizes),
            None => {
                if self.cfg.momentum != 0.0 {
                    self.momentum = zeros(b, sizes)?;
                }
                self.tensor_steps = alloc::vec![0; sizes.len()];
                self.sizes = Some(sizes.to_vec());
                Ok(())
            }
        }
    }

    fn step_tensor(
        &mut self,
        b: &B,
        i: usize,
        param: &mut B::Buffer<T>,
        grad: &B::Buffer<T>,
        hp: TensorStep,
    ) -> Result<()> {
        self.check(b, i, param, grad)?;
        let s = self.scalars(i, hp)?;
        match self.momentum.get_mut(i) {
            Some(m) => b.sgd_momentum_step(param, grad, m, &s)?,
            None => b.sgd_step(param, grad, &s)?,
        }
        self.tensor_steps[i] += 1;
        Ok(())
    }

    fn fuses_boost(&self) -> bool {
        true
    }

    fn step_tensor_boosted(
        &mut self,
        b: &B,
        i: usize,
        param: &mut B::Buffer<T>,
        grad: &B::Buffer<T>,
        hp: TensorStep,
        boost: TensorBoost<'_, B, T>,
    ) -> Result<()> {
        self.check(b, i, param, grad)?;
        let s = self.scalars(i, hp)?;
        match self.momentum.get_mut(i) {
            Some(m) => b.sgd_momentum_ire_step(param, grad, m, &s, boost.mask, boost.kappa)?,
            None => b.sgd_ire_step(param, grad, &s, boost.mask, boost.kappa)?,
        }
        self.tensor_steps[i] += 1;
        Ok(())
    }

    fn end_step(&mut self) {
        self.steps += 1;
    }

    fn save(&self, b: &B) -> Result<StateDict> {
        let mut d = StateDict::new("sgd");
        d.put("steps", StateValue::U64(self.steps));
        d.put("initialized", StateValue::Bool(self.sizes.is_some()));
        d.put("tensor_steps", StateValue::U64s(self.tensor_steps.clone()));
        d.put_tensors(b, "momentum", &self.momentum)?;
        Ok(d)
    }

    fn load(&mut self, b: &B, state: &StateDict) -> Result<()> {
        let initialized = state.get_bool("initialized")?;
        let tensor_steps = state.get_u64s("tensor_steps")?.to_vec();
        let saved = state.tensor_sizes("momentum");
        let n_tensors = if self.cfg.momentum != 0.0 {
            saved.len()
        } else {
            0
        };
        let mut expected: Vec<String> =
            alloc::vec!["steps".into(), "initialized".into(), "tensor_steps".into()];
        expected.extend(indexed_names("momentum", n_tensors));
        state.expect("sgd", &expected)?;
        if self.cfg.momentum != 0.0 && initialized {
            crate::error::check_len(
                "number of momentum tensors (vs per-tensor step counts)",
                tensor_steps.len(),
                saved.len(),
            )?;
            if let Some(cur) = &self.sizes {
                check_sizes(cur, &saved)?;
            }
        }
        if let Some(cur) = &self.sizes {
            crate::error::check_len("number of SGD tensors", cur.len(), tensor_steps.len())?;
        }
        let steps = state.get_u64("steps")?;
        let momentum = state.load_tensors::<B, T>(b, "momentum", &saved[..n_tensors])?;
        // Commit: nothing below can fail. Without momentum the sizes are not saved: keep ours
        // or learn them at the next step (the step counts already say how many tensors).
        self.steps = steps;
        self.momentum = momentum;
        self.sizes = match (initialized, self.cfg.momentum != 0.0) {
            (false, _) => None,
            (true, true) => Some(saved),
            (true, false) => self.sizes.take(),
        };
        self.tensor_steps = if initialized {
            tensor_steps
        } else {
            Vec::new()
        };
        Ok(())
    }
}

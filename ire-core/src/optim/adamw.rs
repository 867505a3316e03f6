//! AdamW (decoupled weight decay) as PyTorch defines it.

use alloc::string::String;
use alloc::vec::Vec;

#[cfg_attr(feature = "std", allow(unused_imports))] // no_std: sqrt, powf, cos come from libm
use num_traits::Float;

use super::groups::TensorStep;
use super::optimizer::{
    Optimizer, TensorBoost, check_lr, check_sizes, check_tensor, weight_decay, zeros,
};
use crate::backend::Backend;
use crate::error::{Error, Result, check};
use crate::formulas::AdamWScalars;
use crate::scalar::Scalar;
use crate::state::{StateDict, StateValue, indexed_names};

/// Hyper-parameters of [`AdamW`] (the learning rate comes with each step).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AdamWConfig {
    /// β1 in [0, 1).
    pub beta1: f64,
    /// β2 in [0, 1).
    pub beta2: f64,
    /// ε ≥ 0.
    pub eps: f64,
    /// Decoupled weight decay ≥ 0 (`θ ← θ·(1 − lr·wd)`).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        check(
            "beta1",
            self.beta1,
            (0.0..1.0).contains(&self.beta1),
            "[0, 1)",
        )?;
        check(
            "beta2",
            self.beta2,
            (0.0..1.0).contains(&self.beta2),
            "[0, 1)",
        )?;
        check(
            "eps",
            self.eps,
            self.eps >= 0.0 && self.eps.is_finite(),
            ">= 0, finite",
        )?;
        check(
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
            ">= 0, finite",
        )
    }

    /// The host scalars of step `t` (1-based) at learning rate `lr` with the configured weight
    /// decay: everything that depends only on `t` is computed here once, in `f64`, so no kernel
    /// needs `pow`.
    pub fn scalars<T: Scalar>(&self, lr: f64, t: u64) -> AdamWScalars<T> {
        self.scalars_with_decay(lr, self.weight_decay, t)
    }

    /// [`AdamWConfig::scalars`] with weight decay `wd` (a parameter group's).
    pub fn scalars_with_decay<T: Scalar>(&self, lr: f64, wd: f64, t: u64) -> AdamWScalars<T> {
        let tf = t as f64;
        let bc1 = 1.0 - self.beta1.powf(tf);
        let bc2 = 1.0 - self.beta2.powf(tf);
        AdamWScalars {
            decay: T::of(1.0 - lr * wd),
            beta1: T::of(self.beta1),
            one_minus_beta1: T::of(1.0 - self.beta1),
            beta2: T::of(self.beta2),
            one_minus_beta2: T::of(1.0 - self.beta2),
            step_size: T::of(lr / bc1),
            bias_correction2_sqrt: T::of(bc2.sqrt()),
            eps: T::of(self.eps),
        }
    }
}

/// AdamW: `θ ← θ(1 − lr·wd)`; `m ← β1 m + (1−β1) g`; `v ← β2 v + (1−β2) g²`;
/// `θ ← θ − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + ε)`.
///
/// `t` counts the steps of each tensor (PyTorch's per-parameter `step`), so a tensor a framework
/// skips in some steps keeps its own bias correction.
pub struct AdamW<B: Backend, T: Scalar> {
    cfg: AdamWConfig,
    m: Vec<B::Buffer<T>>,
    v: Vec<B::Buffer<T>>,
    sizes: Option<Vec<usize>>,
    tensor_steps: Vec<u64>,
    steps: u64,
}

/// A copy of the optimizer and its state (a framework whose optimizers are `Clone` needs it).
impl<B: Backend, T: Scalar> Clone for AdamW<B, T>
where
    B::Buffer<T>: Clone,
{
    fn clone(&self) -> Self {
        AdamW {
            cfg: self.cfg,
            m: self.m.clone(),
            v: self.v.clone(),
            sizes: self.sizes.clone(),
            tensor_steps: self.tensor_steps.clone(),
            steps: self.steps,
        }
    }
}

impl<B: Backend, T: Scalar> AdamW<B, T> {
    /// A new optimizer; fails if a hyper-parameter is out of range.
    pub fn new(cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(AdamW {
            cfg,
            m: Vec::new(),
            v: Vec::new(),
            sizes: None,
            tensor_steps: Vec::new(),
            steps: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The first moments (one per tensor; empty before the first step).
    pub fn first_moments(&self) -> &[B::Buffer<T>] {
        &self.m
    }

    /// The second moments (one per tensor; empty before the first step).
    pub fn second_moments(&self) -> &[B::Buffer<T>] {
        &self.v
    }

    fn prepare(
        &self,
        b: &B,
        i: usize,
        param: &B::Buffer<T>,
        grad: &B::Buffer<T>,
        hp: TensorStep,
    ) -> Result<AdamWScalars<T>> {
        check_lr(hp.lr)?;
        let sizes = self
            .sizes
            .as_deref()
            .ok_or_else(|| Error::Protocol("adamw: step_tensor before begin_step".into()))?;
        check_tensor(b, sizes, i, param, grad)?;
        let wd = weight_decay(hp, self.cfg.weight_decay)?;
        Ok(self
            .cfg
            .scalars_with_decay(hp.lr, wd, self.tensor_steps[i] + 1))
    }
}

impl<B: Backend, T: Scalar> Optimizer<B, T> for AdamW<B, T> {
    fn name(&self) -> &str {
        "adamw"
    }

    fn begin_step(&mut self, b: &B, sizes: &[usize]) -> Result<()> {
        match &self.sizes {
            Some(s) => check_sizes(s, sizes),
            None => {
                let m = zeros(b, sizes)?;
                let v = zeros(b, sizes)?;
                self.m = m;
                self.v = v;
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
        let s = self.prepare(b, i, param, grad, hp)?;
        b.adamw_step(param, grad, &mut self.m[i], &mut self.v[i], &s)?;
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
        let s = self.prepare(b, i, param, grad, hp)?;
        b.adamw_ire_step(
            param,
            grad,
            &mut self.m[i],
            &mut self.v[i],
            &s,
            boost.mask,
            boost.kappa,
        )?;
        self.tensor_steps[i] += 1;
        Ok(())
    }

    fn end_step(&mut self) {
        self.steps += 1;
    }

    fn save(&self, b: &B) -> Result<StateDict> {
        let mut d = StateDict::new("adamw");
        d.put("steps", StateValue::U64(self.steps));
        d.put("tensor_steps", StateValue::U64s(self.tensor_steps.clone()));
        d.put_tensors(b, "m", &self.m)?;
        d.put_tensors(b, "v", &self.v)?;
        Ok(d)
    }

    fn load(&mut self, b: &B, state: &StateDict) -> Result<()> {
        let saved = state.tensor_sizes("m");
        let mut expected: Vec<String> = alloc::vec!["steps".into(), "tensor_steps".into()];
        expected.extend(indexed_names("m", saved.len()));
        expected.extend(indexed_names("v", saved.len()));
        state.expect("adamw", &expected)?;
        if let Some(cur) = &self.sizes {
            check_sizes(cur, &saved)?;
        }
        let tensor_steps = state.get_u64s("tensor_steps")?.to_vec();
        crate::error::check_len(
            "AdamW per-tensor step counts",
            saved.len(),
            tensor_steps.len(),
        )?;
        let steps = state.get_u64("steps")?;
        let m = state.load_tensors::<B, T>(b, "m", &saved)?;
        let v = state.load_tensors::<B, T>(b, "v", &saved)?;
        self.steps = steps;
        self.sizes = if saved.is_empty() && steps == 0 {
            None
        } else {
            Some(saved)
        };
        self.m = m;
        self.v = v;
        self.tensor_steps = tensor_steps;
        Ok(())
    }
}

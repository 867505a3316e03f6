//! Parameter groups: per-group learning-rate multiplier, weight decay, and IRE participation.
//!
//! As in PyTorch's `param_groups`, every tensor belongs to one group. A group scales the step's
//! learning rate, may override the optimizer's weight decay (e.g. no decay on norms, biases and
//! embeddings), and says whether IRE boosts it; the IRE threshold stays ONE global selection over
//! the tensors of every participating group.

use alloc::vec;
use alloc::vec::Vec;

use crate::error::{Error, Result, check};

/// One group's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ParamGroup {
    /// The group's learning rate is the step's times this (≥ 0).
    pub lr_scale: f64,
    /// Weight decay for this group; `None` keeps the optimizer's own.
    pub weight_decay: Option<f64>,
    /// Whether IRE ranks and boosts this group's coordinates.
    pub ire: bool,
}

impl Default for ParamGroup {
    /// Scale 1, the optimizer's weight decay, IRE on.
    fn default() -> Self {
        ParamGroup {
            lr_scale: 1.0,
            weight_decay: None,
            ire: true,
        }
    }
}

impl ParamGroup {
    /// A group without weight decay (IRE on, scale 1).
    pub fn no_decay() -> Self {
        ParamGroup {
            weight_decay: Some(0.0),
            ..Self::default()
        }
    }

    /// Checks the fields; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        check(
            "lr_scale",
            self.lr_scale,
            self.lr_scale >= 0.0 && self.lr_scale.is_finite(),
            ">= 0, finite",
        )?;
        if let Some(wd) = self.weight_decay {
            check(
                "weight_decay",
                wd,
                wd >= 0.0 && wd.is_finite(),
                ">= 0, finite",
            )?;
        }
        Ok(())
    }
}

/// What one tensor's step uses besides its buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorStep {
    /// This tensor's learning rate.
    pub lr: f64,
    /// Weight decay override; `None` keeps the optimizer's configured value.
    pub weight_decay: Option<f64>,
}

impl TensorStep {
    /// Learning rate `lr`, the optimizer's own weight decay.
    pub fn lr(lr: f64) -> Self {
        TensorStep {
            lr,
            weight_decay: None,
        }
    }
}

/// Groups and the group of every tensor.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ParamGroups {
    groups: Vec<ParamGroup>,
    of_tensor: Vec<usize>,
}

impl ParamGroups {
    /// `tensors` tensors in one default group.
    pub fn single(tensors: usize) -> Self {
        ParamGroups {
            groups: vec![ParamGroup::default()],
            of_tensor: vec![0; tensors],
        }
    }

    /// Groups `groups`; tensor `i` is in group `of_tensor[i]`. Every group is validated and
    /// every index must name a group.
    pub fn new(groups: Vec<ParamGroup>, of_tensor: Vec<usize>) -> Result<Self> {
        for g in &groups {
            g.validate()?;
        }
        if let Some((i, &g)) = of_tensor
            .iter()
            .enumerate()
            .find(|(_, g)| **g >= groups.len())
        {
            return Err(Error::InvalidInput {
                what: alloc::format!(
                    "tensor {i} is in group {g}, but there are {} groups",
                    groups.len()
                ),
            });
        }
        Ok(ParamGroups { groups, of_tensor })
    }

    /// The groups.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Number of tensors covered.
    pub fn tensors(&self) -> usize {
        self.of_tensor.len()
    }

    /// The group of tensor `i`.
    pub fn group_of(&self, i: usize) -> Option<&ParamGroup> {
        self.of_tensor.get(i).and_then(|&g| self.groups.get(g))
    }

    /// Tensor `i`'s step at the step's learning rate `lr`.
    pub fn tensor_step(&self, i: usize, lr: f64) -> TensorStep {
        match self.group_of(i) {
            Some(g) => TensorStep {
                lr: lr * g.lr_scale,
                weight_decay: g.weight_decay,
            },
            None => TensorStep::lr(lr),
        }
    }

    /// Whether IRE boosts tensor `i`.
    pub fn takes_part(&self, i: usize) -> bool {
        self.group_of(i).is_none_or(|g| g.ire)
    }

    /// Fails unless the groups cover exactly `tensors` tensors.
    pub fn check_tensors(&self, tensors: usize) -> Result<()> {
        crate::error::check_len(
            "tensors covered by the parameter groups",
            self.tensors(),
            tensors,
        )
    }
}

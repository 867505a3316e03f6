//! Learning-rate schedules the paper uses: constant, and linear warm-up then cosine to a floor.

#[cfg_attr(feature = "std", allow(unused_imports))] // no_std: sqrt, powf, cos come from libm
use num_traits::Float;

use crate::error::{Result, check};

/// A learning rate as a function of the (0-based) step.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum LrSchedule {
    /// The same rate at every step.
    Constant {
        /// The rate.
        lr: f64,
    },
    /// Linear warm-up to `lr_max` over `warmup_steps`, then cosine decay to `lr_min` at
    /// `total_steps`, constant `lr_min` after. With `warmup_steps = 0` and `lr_min = 0` this
    /// is PyTorch's `CosineAnnealingLR(T_max = total_steps)` (the official CIFAR recipe, per
    /// epoch); the paper's language models use `lr_min = lr_max / 20`.
    WarmupCosine {
        /// Peak rate.
        lr_max: f64,
        /// Floor reached at `total_steps`.
        lr_min: f64,
        /// Warm-up length (step `w − 1` is the first at `lr_max`).
        warmup_steps: u64,
        /// Step at which the cosine reaches `lr_min`.
        total_steps: u64,
    },
}

impl LrSchedule {
    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        match *self {
            LrSchedule::Constant { lr } => {
                check("lr", lr, lr >= 0.0 && lr.is_finite(), ">= 0, finite")
            }
            LrSchedule::WarmupCosine {
                lr_max,
                lr_min,
                warmup_steps,
                total_steps,
            } => {
                check(
                    "lr_max",
                    lr_max,
                    lr_max >= 0.0 && lr_max.is_finite(),
                    ">= 0, finite",
                )?;
                check(
                    "lr_min",
                    lr_min,
                    (0.0..=lr_max).contains(&lr_min),
                    "[0, lr_max]",
                )?;
                check(
                    "total_steps",
                    total_steps as f64,
                    total_steps >= warmup_steps,
                    ">= warmup_steps",
                )
            }
        }
    }

    /// The rate at step `t` (0-based).
    pub fn lr_at(&self, t: u64) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::WarmupCosine {
                lr_max,
                lr_min,
                warmup_steps,
                total_steps,
            } => {
                if t < warmup_steps {
                    return lr_max * (t + 1) as f64 / warmup_steps as f64;
                }
                let span = total_steps - warmup_steps;
                if span == 0 || t >= total_steps {
                    return lr_min;
                }
                let p = (t - warmup_steps) as f64 / span as f64;
                lr_min + (lr_max - lr_min) * 0.5 * (1.0 + (core::f64::consts::PI * p).cos())
            }
        }
    }

    /// The largest rate of the schedule (the `lr_max` of κ decay).
    pub fn peak(&self) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::WarmupCosine { lr_max, .. } => lr_max,
        }
    }
}

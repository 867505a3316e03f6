//! Optimizers as small, composable transforms with explicit state, in place on device buffers.
//!
//! A model's parameters may live in several buffers (tensors): every optimizer takes a slice of
//! parameter buffers and the matching slice of gradient buffers, or steps them one by one
//! ([`Optimizer::begin_step`], [`Optimizer::step_tensor`], [`Optimizer::end_step`]). State is
//! allocated on the first step and checked against the parameter sizes on every later one.

mod adamw;
mod groups;
mod ire;
mod optimizer;
mod sam;
mod sgd;
mod threshold;

pub use adamw::{AdamW, AdamWConfig};
pub use groups::{ParamGroup, ParamGroups, TensorStep};
pub use ire::{
    EstimateInput, Estimator, External, Ire, IreConfig, IreReport, IreStep, KappaSchedule,
};
pub use optimizer::{Optimizer, TensorBoost, sizes};
pub use sam::{Sam, SamConfig};
pub use sgd::{Sgd, SgdConfig};
pub use threshold::{GammaSchedule, Selection, ThresholdRule, sharp_count, truncated_count};

//! # ire-core
//!
//! The numerical core of IRE (Implicit Regularization Enhancement, NeurIPS 2024): an optimizer
//! framework that boosts a base optimizer's step along flat directions only.
//!
//! - [`Backend`]: a small trait of fused operations over opaque device buffers, with a
//!   reference implementation on host memory ([`reference::Reference`]), the oracle for every
//!   other backend.
//! - [`optim`]: SGD, AdamW, SAM/ASAM and [`optim::Ire`], which wraps any base optimizer.
//! - [`schedule`]: the learning-rate schedules of the paper.
//! - [`sampling`]: labels drawn from a model's softmax for IRE's estimator gradient.
//! - [`kernels`]: the portable OpenCL/CUDA kernel source, one formula per op.
//! - [`device`]: the device layer: a [`Runtime`] trait per device API and one
//!   [`DeviceBackend`] implementing every operation on top of it.
//! - [`state`]: optimizer state save/load (named entries, versioned, all-or-nothing).
//! - [`collective`]: collective operations over the ranks of a data-parallel group, and the
//!   exact distributed IRE threshold built on them.
//!
//! `no_std` (with `alloc`) when built with `--no-default-features --features libm`.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(not(any(feature = "std", feature = "libm")))]
compile_error!("ire-core needs either the `std` or the `libm` feature for its math");

extern crate alloc;

pub mod backend;
pub mod collective;
pub mod device;
mod error;
pub mod formulas;
pub mod host;
pub mod kernels;
pub mod mask;
pub mod optim;
pub mod reference;
pub mod sampling;
pub mod scalar;
pub mod schedule;
pub mod state;

pub use backend::Backend;
pub use collective::{Collective, SingleProcess};
pub use device::{DeviceBackend, DeviceBuffer, GemmShape, KernelArg, Runtime};
pub use error::{Error, Result, check, check_len};
pub use optim::{
    AdamW, AdamWConfig, Ire, IreConfig, IreStep, Optimizer, Sam, SamConfig, Sgd, SgdConfig,
};
pub use reference::Reference;
pub use scalar::{DType, Element, Scalar};
pub use schedule::LrSchedule;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

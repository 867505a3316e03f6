//! # ire-burn
//!
//! IRE (Implicit Regularization Enhancement) over SGD or AdamW as a burn
//! [`Optimizer`](burn::optim::Optimizer), with ONE threshold over all of the module's
//! trainable parameters (burn's per-tensor `SimpleOptimizer` cannot rank coordinates across
//! tensors; this optimizer visits the whole module, then maps it).
//!
//! - [`IreOptimizer`] implements `Optimizer<M, B>` (`step`, `step_multi`, `to_record`,
//!   `load_record`) and adds [`IreOptimizer::refresh_due`] / [`IreOptimizer::refresh`] (from
//!   an estimator `GradientsParams`), [`IreOptimizer::try_step`] (errors returned, the module
//!   unchanged), the mask and the flat fraction for logging.
//! - [`estimator`]: the sampled-label estimator gradient of IRE-SPEC §2.
//!
//! **Memory** ([`MemoryAccess`]): on the ndarray backend a parameter whose array is uniquely
//! owned is stepped where it is, with no copy, and its gradient read where backward left it;
//! a shared array (a clone of the module still alive) is copied once by ndarray on write. On
//! any other backend the parameter and gradient are read to the host and the parameter
//! written back (a round trip; its cost is in the crate's bench). [`IreOptimizer::access_counts`]
//! says which path each step took.
//!
//! ```
//! use burn::backend::{Autodiff, NdArray};
//! use burn::module::{Module, Param};
//! use burn::optim::{GradientsParams, Optimizer};
//! use burn::tensor::Tensor;
//! use ire_burn::AdmIre;
//! use ire_core::{AdamWConfig, IreConfig};
//!
//! type B = Autodiff<NdArray>;
//!
//! #[derive(Module, Debug)]
//! struct Quadratic<B: burn::tensor::backend::Backend> {
//!     w: Param<Tensor<B, 1>>,
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Default::default();
//! let mut model = Quadratic::<B> {
//!     w: Param::from_data([0.5f32, -1.0, 2.0, 0.01], &device),
//! };
//! let scale = Tensor::<B, 1>::from_data([8.0f32, 4.0, 1.0, 0.1], &device);
//! let ire = IreConfig { kappa: 2.0, gamma: 0.5, ..IreConfig::default() };
//! let mut opt = AdmIre::<B>::adamw(AdamWConfig::default(), ire)?;
//! for _ in 0..20 {
//!     let loss = (model.w.val().powi_scalar(2) * scale.clone()).sum();
//!     let grads = GradientsParams::from_grads(loss.backward(), &model);
//!     if opt.refresh_due() {
//!         // The estimator gradient (here the training gradient stands in for it).
//!         let loss = (model.w.val().powi_scalar(2) * scale.clone()).sum();
//!         opt.refresh(&model, GradientsParams::from_grads(loss.backward(), &model))?;
//!     }
//!     let (next, report) = opt.try_step(1e-2, model, grads);
//!     model = next;
//!     report?;
//! }
//! assert!(opt.flat_fraction()? > 0.0);
//! assert_eq!(opt.access_counts().host_copy, 0); // stepped in place
//! # Ok(()) }
//! ```

mod element;
mod error;
pub mod estimator;
mod host;
mod optimizer;
mod record;

pub use element::BurnElement;
pub use error::{Error, Result};
pub use host::{AccessCounts, MemoryAccess};
pub use optimizer::{AdmIre, IreOptimizer, SgdIre};
pub use record::IreRecord;

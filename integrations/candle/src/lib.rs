//! # ire-candle
//!
//! IRE (Implicit Regularization Enhancement) as a [`candle_nn::Optimizer`]: any `ire-core` base
//! optimizer (AdamW, SGD, SAM, or your own), boosted along the flat coordinates under ONE
//! threshold over every variable, stepping candle's own CPU memory in place.
//!
//! - [`IreOptimizer`] implements `candle_nn::Optimizer` (`new`, `step`, `learning_rate`,
//!   `set_learning_rate`) and adds what IRE needs beyond it: [`IreOptimizer::refresh_due`] and
//!   [`IreOptimizer::refresh`] (from an estimator [`candle_core::backprop::GradStore`]),
//!   SAM-IRE's [`IreOptimizer::sam_perturb`] / [`IreOptimizer::sam_restore`], the mask and the
//!   flat fraction for logging, and [`IreOptimizer::save`] / [`IreOptimizer::load`] of its
//!   state as a `.safetensors` file.
//! - [`estimator`]: the sampled-label estimator gradient of IRE-SPEC §2 for a classifier or a
//!   language model written in candle.
//!
//! **In place.** A step hands each variable and its gradient to the optimizer through candle's
//! in-place custom op ([`candle_core::InplaceOp2`]): the variable's storage is written where it
//! is, under candle's own lock, and the gradient is read where backward left it. Nothing of
//! parameter size is copied or allocated per step (the optimizer's own state is allocated at
//! the first step). A gradient that is not contiguous in memory is the exception: it is made
//! contiguous first (one copy of that gradient).
//!
//! Variables must live on the CPU (a device tensor is refused with
//! [`Error::NotOnCpu`]) and be `f32` or `f64`, as the optimizer's element type.
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use candle_nn::Optimizer;
//! use ire_candle::{AdmIre, Params};
//! use ire_core::{AdamWConfig, IreConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let w = Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.01], 4, &Device::Cpu)?;
//! let ire = IreConfig { kappa: 2.0, gamma: 0.5, ..IreConfig::default() };
//! let mut opt = AdmIre::<f32>::new(vec![w.clone()], Params::new(1e-2, AdamWConfig::default(), ire))?;
//! let scale = Tensor::new(&[8.0f32, 4.0, 1.0, 0.1], &Device::Cpu)?;
//! for _ in 0..20 {
//!     let loss = (w.as_tensor().sqr()? * &scale)?.sum_all()?;
//!     let grads = loss.backward()?;
//!     if opt.refresh_due() {
//!         // The estimator gradient (here the training gradient stands in for it).
//!         opt.refresh(&grads)?;
//!     }
//!     opt.step(&grads)?;
//! }
//! assert!(opt.flat_fraction()? > 0.0);
//! # Ok(()) }
//! ```

mod borrow;
mod element;
mod error;
pub mod estimator;
mod optimizer;
mod state_file;

pub use element::CandleElement;
pub use error::{Error, StateFileProblem};
pub use optimizer::{AdmIre, BaseOptimizer, IreOptimizer, Params, SamIre, SamParams, SgdIre};
pub use state_file::{read_state, write_state};

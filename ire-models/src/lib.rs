//! # ire-models
//!
//! What runs on top of `ire-core` and its backends: the paper's problems and networks, the
//! run-time choice of a compiled-in backend ([`device`]), and the `ire` command.
//!
//! Backends are chosen at compile time by cargo features (`opencl`, `cuda`; the CPU backend is
//! always there) and at run time by `--backend auto|cpu|opencl|cuda|reference`.

pub mod artifacts;
pub mod crosscheck;
pub mod data;
pub mod device;
pub mod interrupt;
pub mod memory;
pub mod models;
pub mod nn;
pub mod process;
pub mod rng;
pub mod sharpness;
pub mod text;
pub mod toy;
pub mod train;

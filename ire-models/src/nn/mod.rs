//! Neural-network building blocks: the ops trait over backend buffers, its host
//! implementation, and layers with hand-written backward passes over a flat parameter arena.

#[cfg(any(feature = "opencl", feature = "cuda"))]
pub mod device;
mod gemm_fast;
pub mod host;
pub mod host_tf;
pub mod layers;
pub mod ops;
mod xent;

pub use host::{BnShape, ConvGeom, Gemm};
pub use host_tf::{AttnShape, NormKind};
pub use ops::{BnMode, BnState, HostMemory, NnOps};

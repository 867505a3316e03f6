//! Neural-network building blocks: the ops trait over backend buffers, its host
//! implementation, and layers with hand-written backward passes over a flat parameter arena.

pub mod attention;
pub mod batch_norm;
pub mod conv;
#[cfg(any(feature = "opencl", feature = "cuda"))]
pub mod device;
mod gemm_fast;
pub mod host;
mod host_ops;
pub mod host_tf;
pub mod layers;
pub mod ops;
pub mod tolerances;
mod xent;

pub use batch_norm::{BnMode, BnShape, BnState};
pub use conv::ConvGeom;
pub use host_ops::HostMemory;
pub use host_tf::{AttnShape, NormKind};
pub use ops::{ConvNetOps, LossOps, NnOps, TransformerOps};

//! The device layer: one implementation of every IRE operation (and of any kernel written in
//! the portable dialect) on top of a small [`Runtime`] trait that each device API implements.
//!
//! - [`Runtime`]: what a device API does — allocate, move and zero bytes, compile a program
//!   from the portable kernel source, launch a named kernel with typed [`KernelArg`]s,
//!   synchronize, and optionally hand matrix products to a vendor library.
//! - [`DeviceBackend`]: a [`crate::Backend`] for any runtime: compiled-program cache, launch
//!   geometry, every launch checked against the kernel's parameter list in the source
//!   ([`signature`]), sums and counts ([`reduce`]), the exact radix selection with one NaN /
//!   infinity / overflow policy ([`select`]), and reusable scratch memory ([`Scratch`]).
//! - [`DeviceBuffer`]: device memory of one element type, allocated by the backend or lent by
//!   a caller (a framework's tensor) through a runtime's borrowing constructor.
//!
//! # Adding a runtime (Metal, Vulkan, ...)
//! 1. Give the dialect a prelude (`kernels/prelude_*.h`: `KERNEL`, `GLOBAL`, `GLOBAL_ID`,
//!    `LOCAL_ARRAY`, `BARRIER`, `ATOMIC_ADD_U32`, the math macros) and a
//!    [`crate::kernels::Dialect`] variant, so `extension_source` can prepend it.
//! 2. Implement [`Runtime`] in a new crate: the memory handle (`Mem`, which may wrap memory a
//!    caller lends), `alloc` / `write` / `read` / `copy` / `zero`, `build` (compile the text
//!    with contraction off and correctly rounded `/` and `sqrt`, so element-wise results stay
//!    bit-identical), `launch` (work-groups of [`crate::kernels::REDUCE_WG`] items; `Real` and
//!    `Key` arguments take the program's width), `synchronize`, and `NAME`, `class`, `supports`,
//!    `bytes`. Nothing else: every operation then exists through `DeviceBackend<YourRuntime>`,
//!    and the neural-network ops of `ire-models` too.
//! 3. Stamp the conformance suite into the crate's tests:
//!    `ire_conformance::conformance_tests!(open().ok().map(DeviceBackend::new));` — every operation,
//!    the selection policy, the threshold rules and optimizer trajectories against the
//!    reference backend.

mod args;
mod backend;
mod buffer;
mod lock;
mod ops;
pub mod reduce;
mod runtime;
mod scratch;
pub mod select;
pub mod signature;

pub use args::KernelArg;
pub use backend::{DeviceBackend, IRE_OPS, SelectionPath, groups_for};
pub use buffer::DeviceBuffer;
pub use runtime::{DeviceClass, GemmOperand, GemmShape, Launch, ProgramSource, Runtime};
pub use scratch::Scratch;

//! Test support shared by the framework adapters (`ire-candle`, `ire-burn`): the digits data set
//! shipped in the repository, deterministic initial values, a counting global allocator and the
//! comparisons the adapters' tests make.
//!
//! The adapters depend on `ire-core` and the backends only, never on `ire-models`, so this crate
//! reads the digits itself (the same file and format as `ire-models`' reader).

mod alloc_count;
mod compare;
mod digits;
mod init;

pub use alloc_count::{AllocRecord, CountingAlloc};
pub use compare::{bits_equal, max_relative_diff};
pub use digits::{Digits, DigitsError, load_digits, load_digits_from};
pub use init::{SplitMix64, uniform_init};

//! The typed failures of collective operations (kept apart from the operations so that the
//! crate's error type can name them without importing the operations).

use core::fmt;

/// The element type of a collective buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireType {
    /// IEEE-754 binary32.
    F32,
    /// IEEE-754 binary64.
    F64,
    /// Unsigned 32-bit integer (sums wrap modulo 2³²).
    U32,
    /// Unsigned 64-bit integer (sums wrap modulo 2⁶⁴; counts).
    U64,
}

impl WireType {
    /// Short lower-case name (`f32`, `f64`, `u32`, `u64`).
    pub const fn name(self) -> &'static str {
        match self {
            WireType::F32 => "f32",
            WireType::F64 => "f64",
            WireType::U32 => "u32",
            WireType::U64 => "u64",
        }
    }

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            WireType::F32 | WireType::U32 => 4,
            WireType::F64 | WireType::U64 => 8,
        }
    }
}

/// A collective operation, as named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CollectiveOp {
    /// Starting the transport (joining the group).
    Init,
    /// [`super::Collective::all_reduce_sum`].
    AllReduceSum,
    /// [`super::Collective::reduce_scatter_sum`].
    ReduceScatterSum,
    /// [`super::Collective::all_gather`].
    AllGather,
    /// [`super::Collective::broadcast`].
    Broadcast,
    /// [`super::Collective::barrier`].
    Barrier,
    /// The distributed k-th-largest selection of [`super::select`].
    Selection,
}

impl CollectiveOp {
    /// Short name (`all-reduce`, `reduce-scatter`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            CollectiveOp::Init => "init",
            CollectiveOp::AllReduceSum => "all-reduce (sum)",
            CollectiveOp::ReduceScatterSum => "reduce-scatter (sum)",
            CollectiveOp::AllGather => "all-gather",
            CollectiveOp::Broadcast => "broadcast",
            CollectiveOp::Barrier => "barrier",
            CollectiveOp::Selection => "distributed k-th-largest selection",
        }
    }
}

/// Why a collective operation was refused or failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CollectiveFailure {
    /// The send and receive buffers hold different element types.
    TypeMismatch {
        /// Type of the send buffer.
        send: WireType,
        /// Type of the receive buffer.
        recv: WireType,
    },
    /// A buffer has the wrong length for the operation and the group size.
    Length {
        /// The length required.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// The root of a broadcast is not a rank of the group.
    RootOutOfRange {
        /// The root asked for.
        root: usize,
        /// The size of the group.
        world_size: usize,
    },
    /// The ranks called the operation with different types, lengths, roots or inputs (or one
    /// of them refused its own arguments), so none of them can complete it.
    RanksDisagree,
    /// A buffer longer than the transport can move in one call.
    TooLarge {
        /// The length given.
        len: usize,
        /// The largest length the transport takes.
        max: usize,
    },
    /// The transport is absent or could not start.
    Unavailable {
        /// Why.
        reason: alloc::string::String,
    },
    /// The transport reported an error.
    Transport {
        /// The transport's own message.
        message: alloc::string::String,
    },
}

impl fmt::Display for CollectiveFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollectiveFailure::TypeMismatch { send, recv } => write!(
                f,
                "send buffer of {} but receive buffer of {}",
                send.name(),
                recv.name()
            ),
            CollectiveFailure::Length { expected, found } => {
                write!(f, "buffer of length {found}, expected {expected}")
            }
            CollectiveFailure::RootOutOfRange { root, world_size } => {
                write!(f, "root {root} is not a rank of a group of {world_size}")
            }
            CollectiveFailure::RanksDisagree => write!(
                f,
                "the ranks called it with different types, lengths, roots or inputs"
            ),
            CollectiveFailure::TooLarge { len, max } => {
                write!(
                    f,
                    "buffer of {len} elements, more than the {max} one call moves"
                )
            }
            CollectiveFailure::Unavailable { reason } => write!(f, "unavailable: {reason}"),
            CollectiveFailure::Transport { message } => write!(f, "transport error: {message}"),
        }
    }
}

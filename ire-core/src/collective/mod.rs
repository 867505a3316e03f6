//! Collective operations over the ranks of a group of processes (data-parallel training).
//!
//! [`Collective`] is the small contract a transport implements: the rank of this process, the
//! size of the group, and the collective operations data-parallel training needs, in place on
//! caller-owned slices of `f32`, `f64`, `u32` or `u64` ([`Buf`], [`BufMut`]):
//! all-reduce (sum), reduce-scatter (sum), all-gather, broadcast and barrier. Every rank of the
//! group must call the same operations in the same order with buffers of the same type and
//! length (the usual rule of MPI and NCCL).
//!
//! Implementations: [`SingleProcess`] (a group of one, no cost) here; `threads::ThreadGroup`
//! (threads of one process as ranks, with the `std` feature) for tests and simulations; MPI in the `ire-mpi`
//! crate. [`Metered`] wraps any of them and counts the bytes each rank hands to the transport.
//!
//! [`select`] builds the exact global IRE threshold on top: the k-th largest value over the
//! values of every rank, without gathering them.

use core::cell::Cell;
use core::fmt;

use crate::error::{Error, Result};

pub(crate) mod failure;
pub mod launch;
pub mod select;
#[cfg(feature = "std")]
pub mod threads;

pub use failure::{CollectiveFailure, CollectiveOp, WireType};

/// Shorthand for an [`Error::Collective`].
pub fn failure(op: CollectiveOp, failure: CollectiveFailure) -> Error {
    Error::Collective { op, failure }
}

/// A read-only collective buffer: a slice of one of the [`WireType`]s.
#[derive(Clone, Copy, Debug)]
pub enum Buf<'a> {
    /// `f32` values.
    F32(&'a [f32]),
    /// `f64` values.
    F64(&'a [f64]),
    /// `u32` values.
    U32(&'a [u32]),
    /// `u64` values.
    U64(&'a [u64]),
}

/// A writable collective buffer: a mutable slice of one of the [`WireType`]s.
#[derive(Debug)]
pub enum BufMut<'a> {
    /// `f32` values.
    F32(&'a mut [f32]),
    /// `f64` values.
    F64(&'a mut [f64]),
    /// `u32` values.
    U32(&'a mut [u32]),
    /// `u64` values.
    U64(&'a mut [u64]),
}

impl Buf<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Buf::F32(s) => s.len(),
            Buf::F64(s) => s.len(),
            Buf::U32(s) => s.len(),
            Buf::U64(s) => s.len(),
        }
    }

    /// Whether the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn wire_type(&self) -> WireType {
        match self {
            Buf::F32(_) => WireType::F32,
            Buf::F64(_) => WireType::F64,
            Buf::U32(_) => WireType::U32,
            Buf::U64(_) => WireType::U64,
        }
    }

    /// Size in bytes.
    pub fn byte_len(&self) -> usize {
        self.len() * self.wire_type().size()
    }
}

impl BufMut<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_buf().len()
    }

    /// Whether the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn wire_type(&self) -> WireType {
        self.as_buf().wire_type()
    }

    /// Size in bytes.
    pub fn byte_len(&self) -> usize {
        self.as_buf().byte_len()
    }

    /// A read-only view of the same elements.
    pub fn as_buf(&self) -> Buf<'_> {
        match self {
            BufMut::F32(s) => Buf::F32(s),
            BufMut::F64(s) => Buf::F64(s),
            BufMut::U32(s) => Buf::U32(s),
            BufMut::U64(s) => Buf::U64(s),
        }
    }

    /// A shorter-lived mutable view of the same elements.
    pub fn reborrow(&mut self) -> BufMut<'_> {
        match self {
            BufMut::F32(s) => BufMut::F32(s),
            BufMut::F64(s) => BufMut::F64(s),
            BufMut::U32(s) => BufMut::U32(s),
            BufMut::U64(s) => BufMut::U64(s),
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// An element type a collective moves (sealed: `f32`, `f64`, `u32`, `u64`), for code generic
/// over it.
pub trait Wire:
    sealed::Sealed + Copy + Default + fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// The tag of this type.
    const TYPE: WireType;
    /// The sum of a collective reduction: IEEE addition for floats, wrapping addition for
    /// integers.
    fn add(self, other: Self) -> Self;
    /// The slice as a [`Buf`].
    fn buf(s: &[Self]) -> Buf<'_>;
    /// The slice as a [`BufMut`].
    fn buf_mut(s: &mut [Self]) -> BufMut<'_>;
    /// The slice of a [`Buf`] of this type (`None` for another type).
    fn of_buf(b: Buf<'_>) -> Option<&[Self]>;
}

macro_rules! wire {
    ($t:ty, $v:ident, $add:expr) => {
        impl Wire for $t {
            const TYPE: WireType = WireType::$v;
            #[inline(always)]
            fn add(self, other: Self) -> Self {
                $add(self, other)
            }
            fn buf(s: &[Self]) -> Buf<'_> {
                Buf::$v(s)
            }
            fn buf_mut(s: &mut [Self]) -> BufMut<'_> {
                BufMut::$v(s)
            }
            fn of_buf(b: Buf<'_>) -> Option<&[Self]> {
                match b {
                    Buf::$v(s) => Some(s),
                    _ => None,
                }
            }
        }
        impl<'a> From<&'a [$t]> for Buf<'a> {
            fn from(s: &'a [$t]) -> Self {
                Buf::$v(s)
            }
        }
        impl<'a> From<&'a mut [$t]> for Buf<'a> {
            fn from(s: &'a mut [$t]) -> Self {
                Buf::$v(s)
            }
        }
        impl<'a> From<&'a mut [$t]> for BufMut<'a> {
            fn from(s: &'a mut [$t]) -> Self {
                BufMut::$v(s)
            }
        }
    };
}

wire!(f32, F32, |a: f32, b: f32| a + b);
wire!(f64, F64, |a: f64, b: f64| a + b);
wire!(u32, U32, u32::wrapping_add);
wire!(u64, U64, u64::wrapping_add);

/// The collective operations of a group of ranks (see the module documentation).
///
/// Every rank must call the same operations in the same order, with buffers of the same type
/// and length (and the same root). Sums of floating-point values are the same on every rank;
/// their rounding depends on the transport's order of addition.
pub trait Collective {
    /// This process's rank, in `0..world_size()`.
    fn rank(&self) -> usize;

    /// Number of ranks in the group (at least 1).
    fn world_size(&self) -> usize;

    /// Replaces `buf` on every rank with the element-wise sum of every rank's `buf`.
    fn all_reduce_sum(&self, buf: BufMut<'_>) -> Result<()>;

    /// Sums `send` element-wise over the ranks and leaves block `rank()` of the sum in `recv`:
    /// `send` holds `world_size()` blocks of `recv.len()` elements.
    fn reduce_scatter_sum(&self, send: Buf<'_>, recv: BufMut<'_>) -> Result<()>;

    /// Concatenates every rank's `send`, in rank order, into `recv` on every rank: `recv` holds
    /// `world_size()` blocks of `send.len()` elements.
    fn all_gather(&self, send: Buf<'_>, recv: BufMut<'_>) -> Result<()>;

    /// Copies rank `root`'s `buf` into `buf` on every other rank.
    fn broadcast(&self, buf: BufMut<'_>, root: usize) -> Result<()>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
}

/// Forwards [`Collective`] through a reference or an owning pointer, so a group can be shared
/// (`Rc`, `Arc`) or boxed as a trait object.
macro_rules! forward_collective {
    ($($ptr:ty),*) => { $(
        impl<C: Collective + ?Sized> Collective for $ptr {
            fn rank(&self) -> usize {
                (**self).rank()
            }
            fn world_size(&self) -> usize {
                (**self).world_size()
            }
            fn all_reduce_sum(&self, buf: BufMut<'_>) -> Result<()> {
                (**self).all_reduce_sum(buf)
            }
            fn reduce_scatter_sum(&self, send: Buf<'_>, recv: BufMut<'_>) -> Result<()> {
                (**self).reduce_scatter_sum(send, recv)
            }
            fn all_gather(&self, send: Buf<'_>, recv: BufMut<'_>) -> Result<()> {
                (**self).all_gather(send, recv)
            }
            fn broadcast(&self, buf: BufMut<'_>, root: usize) -> Result<()> {
                (**self).broadcast(buf, root)
            }
            fn barrier(&self) -> Result<()> {
                (**self).barrier()
            }
        }
    )* };
}

forward_collective!(
    &C,
    alloc::boxed::Box<C>,
    alloc::rc::Rc<C>,
    alloc::sync::Arc<C>
);

/// Checks the buffers of a reduce-scatter over `world_size` ranks (same type; `send` holds
/// `world_size` blocks of `recv.len()`), for implementations of [`Collective`].
pub fn check_reduce_scatter(send: &Buf<'_>, recv: &BufMut<'_>, world_size: usize) -> Result<()> {
    check_blocks(
        CollectiveOp::ReduceScatterSum,
        send.wire_type(),
        recv.wire_type(),
        recv.len(),
        send.len(),
        world_size,
    )
}

/// Checks the buffers of an all-gather over `world_size` ranks (same type; `recv` holds
/// `world_size` blocks of `send.len()`), for implementations of [`Collective`].
pub fn check_all_gather(send: &Buf<'_>, recv: &BufMut<'_>, world_size: usize) -> Result<()> {
    check_blocks(
        CollectiveOp::AllGather,
        send.wire_type(),
        recv.wire_type(),
        send.len(),
        recv.len(),
        world_size,
    )
}

fn check_blocks(
    op: CollectiveOp,
    send: WireType,
    recv: WireType,
    block: usize,
    whole: usize,
    world_size: usize,
) -> Result<()> {
    if send != recv {
        return Err(failure(op, CollectiveFailure::TypeMismatch { send, recv }));
    }
    let expected = block.checked_mul(world_size).ok_or(failure(
        op,
        CollectiveFailure::TooLarge {
            len: block,
            max: usize::MAX / world_size.max(1),
        },
    ))?;
    if expected != whole {
        return Err(failure(
            op,
            CollectiveFailure::Length {
                expected,
                found: whole,
            },
        ));
    }
    Ok(())
}

/// Checks that `root` is a rank of a group of `world_size`, for implementations of
/// [`Collective`].
pub fn check_root(root: usize, world_size: usize) -> Result<()> {
    if root < world_size {
        Ok(())
    } else {
        Err(failure(
            CollectiveOp::Broadcast,
            CollectiveFailure::RootOutOfRange { root, world_size },
        ))
    }
}

/// Copies `src` into `dst` (same type and length, checked by the caller: a mismatch copies
/// nothing and reports [`CollectiveFailure::TypeMismatch`] or [`CollectiveFailure::Length`]).
pub fn copy_buf(op: CollectiveOp, src: &Buf<'_>, dst: &mut BufMut<'_>) -> Result<()> {
    if src.len() != dst.len() {
        return Err(failure(
            op,
            CollectiveFailure::Length {
                expected: src.len(),
                found: dst.len(),
            },
        ));
    }
    match (src, dst) {
        (Buf::F32(s), BufMut::F32(d)) => d.copy_from_slice(s),
        (Buf::F64(s), BufMut::F64(d)) => d.copy_from_slice(s),
        (Buf::U32(s), BufMut::U32(d)) => d.copy_from_slice(s),
        (Buf::U64(s), BufMut::U64(d)) => d.copy_from_slice(s),
        (s, d) => {
            return Err(failure(
                op,
                CollectiveFailure::TypeMismatch {
                    send: s.wire_type(),
                    recv: d.wire_type(),
                },
            ));
        }
    }
    Ok(())
}

/// The group of one process: rank 0 of 1. Every operation is a copy or nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: BufMut<'_>) -> Result<()> {
        Ok(())
    }
    fn reduce_scatter_sum(&self, send: Buf<'_>, mut recv: BufMut<'_>) -> Result<()> {
        check_reduce_scatter(&send, &recv, 1)?;
        copy_buf(CollectiveOp::ReduceScatterSum, &send, &mut recv)
    }
    fn all_gather(&self, send: Buf<'_>, mut recv: BufMut<'_>) -> Result<()> {
        check_all_gather(&send, &recv, 1)?;
        copy_buf(CollectiveOp::AllGather, &send, &mut recv)
    }
    fn broadcast(&self, _buf: BufMut<'_>, root: usize) -> Result<()> {
        check_root(root, 1)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// A [`Collective`] that counts what this rank hands to the transport it wraps: the bytes of
/// every all-reduce buffer, reduce-scatter and all-gather send buffer, and broadcast buffer at
/// the root, and the number of calls. These are payload bytes; how many bytes cross the wire
/// depends on the transport's algorithm (a ring all-reduce sends about `2(W − 1)/W` times its
/// buffer from each rank).
#[derive(Debug, Default)]
pub struct Metered<C> {
    inner: C,
    bytes: Cell<u64>,
    calls: Cell<u64>,
}

impl<C: Collective> Metered<C> {
    /// Wraps `inner`, with zero counts.
    pub fn new(inner: C) -> Self {
        Metered {
            inner,
            bytes: Cell::new(0),
            calls: Cell::new(0),
        }
    }

    /// Payload bytes handed to the transport since the last [`Metered::reset`].
    pub fn bytes_sent(&self) -> u64 {
        self.bytes.get()
    }

    /// Collective calls (barriers included) since the last [`Metered::reset`].
    pub fn calls(&self) -> u64 {
        self.calls.get()
    }

    /// Sets both counts back to zero.
    pub fn reset(&self) {
        self.bytes.set(0);
        self.calls.set(0);
    }

    /// The wrapped collective.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    fn count(&self, bytes: usize) {
        self.bytes.set(self.bytes.get() + bytes as u64);
        self.calls.set(self.calls.get() + 1);
    }
}

impl<C: Collective> Collective for Metered<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce_sum(&self, buf: BufMut<'_>) -> Result<()> {
        self.count(buf.byte_len());
        self.inner.all_reduce_sum(buf)
    }
    fn reduce_scatter_sum(&self, send: Buf<'_>, recv: BufMut<'_>) -> Result<()> {
        self.count(send.byte_len());
        self.inner.reduce_scatter_sum(send, recv)
    }
    fn all_gather(&self, send: Buf<'_>, recv: BufMut<'_>) -> Result<()> {
        self.count(send.byte_len());
        self.inner.all_gather(send, recv)
    }
    fn broadcast(&self, buf: BufMut<'_>, root: usize) -> Result<()> {
        self.count(if self.rank() == root {
            buf.byte_len()
        } else {
            0
        });
        self.inner.broadcast(buf, root)
    }
    fn barrier(&self) -> Result<()> {
        self.count(0);
        self.inner.barrier()
    }
}

#[cfg(all(test, feature = "std"))]
mod tests;

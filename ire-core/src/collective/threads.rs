//! A group of threads of one process as the ranks of a [`Collective`]: for tests, and to
//! simulate several ranks on one machine.
//!
//! Each operation is an exchange through shared slots between two barriers: every rank
//! deposits a copy of its buffer, waits for the others, reads every deposit in rank order
//! (sums are added in rank order, so every rank gets the same bits), and waits again before the
//! next operation may overwrite the slots. A rank that refuses its own arguments still takes
//! part (it deposits a refusal), so the others return [`CollectiveFailure::RanksDisagree`]
//! instead of waiting forever. A rank that stops calling (a panic, an early return) leaves the
//! others waiting: run the ranks under [`ThreadGroup::run`], which is meant for tests.

use std::sync::{Arc, Barrier, PoisonError, RwLock};
use std::vec::Vec;

use super::{
    Buf, BufMut, Collective, CollectiveFailure, CollectiveOp, Wire, check_all_gather,
    check_reduce_scatter, check_root, copy_buf, failure,
};
use crate::error::{Error, Result};

/// An owned copy of a deposited buffer.
#[derive(Debug)]
enum Owned {
    F32(Vec<f32>),
    F64(Vec<f64>),
    U32(Vec<u32>),
    U64(Vec<u64>),
}

impl Owned {
    fn of(b: &Buf<'_>) -> Owned {
        match b {
            Buf::F32(s) => Owned::F32(s.to_vec()),
            Buf::F64(s) => Owned::F64(s.to_vec()),
            Buf::U32(s) => Owned::U32(s.to_vec()),
            Buf::U64(s) => Owned::U64(s.to_vec()),
        }
    }

    fn as_buf(&self) -> Buf<'_> {
        match self {
            Owned::F32(v) => Buf::F32(v),
            Owned::F64(v) => Buf::F64(v),
            Owned::U32(v) => Buf::U32(v),
            Owned::U64(v) => Buf::U64(v),
        }
    }
}

/// What a rank deposited for the current operation.
#[derive(Debug)]
enum Slot {
    Empty,
    /// The rank refused its own arguments.
    Refused,
    /// The operation, a number every rank must agree on (the root of a broadcast), the buffer.
    Data(CollectiveOp, usize, Owned),
}

#[derive(Debug)]
struct Shared {
    world: usize,
    barrier: Barrier,
    slots: RwLock<Vec<Slot>>,
}

/// Builds groups of [`ThreadCollective`] ranks.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadGroup;

impl ThreadGroup {
    /// The `world_size` ranks of a new group, rank `r` at index `r`; each is to be used by its
    /// own thread. `world_size` must be at least 1.
    pub fn ranks(world_size: usize) -> Result<Vec<ThreadCollective>> {
        if world_size == 0 {
            return Err(Error::InvalidHyperParameter {
                field: "world_size",
                value: 0.0,
                allowed: ">= 1",
            });
        }
        let shared = Arc::new(Shared {
            world: world_size,
            barrier: Barrier::new(world_size),
            slots: RwLock::new((0..world_size).map(|_| Slot::Empty).collect()),
        });
        Ok((0..world_size)
            .map(|rank| ThreadCollective {
                rank,
                shared: Arc::clone(&shared),
            })
            .collect())
    }

    /// Runs `f` on `world_size` scoped threads, one per rank of a new group, and returns the
    /// results in rank order. A panicking rank is re-raised here once every thread has ended
    /// (the others must not wait on it in a collective).
    pub fn run<R: Send>(
        world_size: usize,
        f: impl Fn(&ThreadCollective) -> R + Sync,
    ) -> Result<Vec<R>> {
        let ranks = Self::ranks(world_size)?;
        let f = &f;
        Ok(std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .iter()
                .map(|c| s.spawn(move || f(c)))
                .collect::<Vec<_>>();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        }))
    }
}

/// One rank of a [`ThreadGroup`].
#[derive(Debug)]
pub struct ThreadCollective {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadCollective {
    /// One exchange: deposit `mine` (or a refusal), wait for every rank, read every deposit
    /// with `finish` once all agree on the operation, type, length and tag, wait again.
    fn exchange<R>(
        &self,
        op: CollectiveOp,
        mine: Result<(usize, Owned)>,
        finish: impl FnOnce(&[Slot]) -> Result<R>,
    ) -> Result<R> {
        let (slot, refusal) = match mine {
            Ok((tag, b)) => (Slot::Data(op, tag, b), None),
            Err(e) => (Slot::Refused, Some(e)),
        };
        {
            let mut slots = self
                .shared
                .slots
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            slots[self.rank] = slot;
        }
        self.shared.barrier.wait();
        let out = {
            let slots = self
                .shared
                .slots
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            match refusal {
                Some(e) => Err(e),
                None => {
                    if agree(&slots) {
                        finish(&slots)
                    } else {
                        Err(failure(op, CollectiveFailure::RanksDisagree))
                    }
                }
            }
        };
        self.shared.barrier.wait();
        out
    }
}

/// Whether every slot holds data of the same operation, type, length and tag.
fn agree(slots: &[Slot]) -> bool {
    let key = |s: &Slot| match s {
        Slot::Data(op, tag, b) => Some((*op, *tag, b.as_buf().wire_type(), b.as_buf().len())),
        _ => None,
    };
    let first = slots.first().and_then(key);
    first.is_some() && slots.iter().all(|s| key(s) == first)
}

fn data(s: &Slot) -> Buf<'_> {
    match s {
        Slot::Data(_, _, b) => b.as_buf(),
        // `agree` has checked every slot holds data.
        _ => Buf::U64(&[]),
    }
}

/// `out[i] = Σ_r slot_r[offset + i]`, ranks in order.
fn sum_into<T: Wire>(slots: &[Slot], offset: usize, out: &mut [T]) {
    for (r, s) in slots.iter().enumerate() {
        let Some(v) = T::of_buf(data(s)) else {
            continue;
        };
        let v = &v[offset..offset + out.len()];
        if r == 0 {
            out.copy_from_slice(v);
        } else {
            for (o, x) in out.iter_mut().zip(v) {
                *o = o.add(*x);
            }
        }
    }
}

fn sum_dispatch(slots: &[Slot], offset: usize, out: BufMut<'_>) {
    match out {
        BufMut::F32(o) => sum_into(slots, offset, o),
        BufMut::F64(o) => sum_into(slots, offset, o),
        BufMut::U32(o) => sum_into(slots, offset, o),
        BufMut::U64(o) => sum_into(slots, offset, o),
    }
}

impl Collective for ThreadCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, mut buf: BufMut<'_>) -> Result<()> {
        let mine = Ok((0, Owned::of(&buf.as_buf())));
        self.exchange(CollectiveOp::AllReduceSum, mine, |slots| {
            sum_dispatch(slots, 0, buf.reborrow());
            Ok(())
        })
    }

    fn reduce_scatter_sum(&self, send: Buf<'_>, mut recv: BufMut<'_>) -> Result<()> {
        let world = self.shared.world;
        let mine = check_reduce_scatter(&send, &recv, world).map(|()| (0, Owned::of(&send)));
        let offset = self.rank * recv.len();
        self.exchange(CollectiveOp::ReduceScatterSum, mine, |slots| {
            sum_dispatch(slots, offset, recv.reborrow());
            Ok(())
        })
    }

    fn all_gather(&self, send: Buf<'_>, mut recv: BufMut<'_>) -> Result<()> {
        let world = self.shared.world;
        let mine = check_all_gather(&send, &recv, world).map(|()| (0, Owned::of(&send)));
        let block = send.len();
        self.exchange(CollectiveOp::AllGather, mine, |slots| {
            for (r, s) in slots.iter().enumerate() {
                let src = data(s);
                let mut dst = sub_mut(&mut recv, r * block, block);
                copy_buf(CollectiveOp::AllGather, &src, &mut dst)?;
            }
            Ok(())
        })
    }

    fn broadcast(&self, mut buf: BufMut<'_>, root: usize) -> Result<()> {
        let world = self.shared.world;
        let mine = check_root(root, world).map(|()| (root, Owned::of(&buf.as_buf())));
        self.exchange(CollectiveOp::Broadcast, mine, |slots| {
            copy_buf(CollectiveOp::Broadcast, &data(&slots[root]), &mut buf)
        })
    }

    fn barrier(&self) -> Result<()> {
        self.exchange(
            CollectiveOp::Barrier,
            Ok((0, Owned::U64(Vec::new()))),
            |_| Ok(()),
        )
    }
}

/// Elements `from..from + len` of `b` (in range: checked by the caller).
fn sub_mut<'a>(b: &'a mut BufMut<'_>, from: usize, len: usize) -> BufMut<'a> {
    match b {
        BufMut::F32(s) => BufMut::F32(&mut s[from..from + len]),
        BufMut::F64(s) => BufMut::F64(&mut s[from..from + len]),
        BufMut::U32(s) => BufMut::U32(&mut s[from..from + len]),
        BufMut::U64(s) => BufMut::U64(&mut s[from..from + len]),
    }
}

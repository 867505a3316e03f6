//! Scratch memory: device buffers reused from operation to operation, never allocated inside
//! a training step after the first.
//!
//! Work on one runtime runs in submission order, so memory returned to the pool after an
//! operation has submitted its kernels can be handed to the next operation at once: its
//! kernels run after the previous ones are done with it.

use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};

use super::buffer::DeviceBuffer;
use super::lock::SpinLock;
use super::runtime::Runtime;
use crate::error::Result;
use crate::scalar::Element;

/// Allocations kept for reuse, at most [`ScratchPool::KEEP`] of them.
pub(crate) struct ScratchPool<M> {
    free: SpinLock<Vec<M>>,
}

impl<M> ScratchPool<M> {
    /// Buffers kept for reuse; beyond that the smallest are released.
    const KEEP: usize = 16;
    /// Smallest allocation, in bytes (scratch sizes vary a little from call to call).
    const MIN_BYTES: usize = 4096;

    pub(crate) const fn new() -> Self {
        ScratchPool {
            free: SpinLock::new(Vec::new()),
        }
    }
}

/// A scratch buffer of `len` elements (contents unspecified), returned to its pool on drop.
pub struct Scratch<'a, R: Runtime, E: Element> {
    buf: DeviceBuffer<R, E>,
    home: &'a ScratchPool<R::Mem>,
}

/// The smallest free allocation of at least `bytes`, or a new one of the next power of two.
pub(crate) fn take<'a, R: Runtime, E: Element>(
    rt: &R,
    pool: &'a ScratchPool<R::Mem>,
    len: usize,
) -> Result<Scratch<'a, R, E>> {
    let bytes = len * E::DTYPE.size();
    if bytes == 0 {
        return Ok(Scratch {
            buf: DeviceBuffer::new(None, 0),
            home: pool,
        });
    }
    let found = {
        let mut free = pool.free.lock();
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, m)| R::bytes(m) >= bytes)
            .min_by_key(|(_, m)| R::bytes(m))
            .map(|(i, _)| i);
        best.map(|i| free.swap_remove(i))
    };
    let mem = match found {
        Some(m) => m,
        None => rt.alloc(
            bytes
                .max(ScratchPool::<R::Mem>::MIN_BYTES)
                .checked_next_power_of_two()
                .unwrap_or(bytes),
        )?,
    };
    Ok(Scratch {
        buf: DeviceBuffer::new(Some(mem), len),
        home: pool,
    })
}

impl<R: Runtime, E: Element> Deref for Scratch<'_, R, E> {
    type Target = DeviceBuffer<R, E>;
    fn deref(&self) -> &DeviceBuffer<R, E> {
        &self.buf
    }
}

impl<R: Runtime, E: Element> DerefMut for Scratch<'_, R, E> {
    fn deref_mut(&mut self) -> &mut DeviceBuffer<R, E> {
        &mut self.buf
    }
}

impl<R: Runtime, E: Element> Drop for Scratch<'_, R, E> {
    fn drop(&mut self) {
        if let Some(mem) = self.buf.mem.take() {
            let evicted = {
                let mut free = self.home.free.lock();
                free.push(mem);
                if free.len() > ScratchPool::<R::Mem>::KEEP {
                    let smallest = free
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, m)| R::bytes(m))
                        .map(|(i, _)| i);
                    smallest.map(|i| free.swap_remove(i))
                } else {
                    None
                }
            };
            // Released outside the lock: freeing device memory may wait for the device.
            drop(evicted);
        }
    }
}

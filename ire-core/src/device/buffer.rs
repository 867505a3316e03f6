//! [`DeviceBuffer`]: device memory of one element type, owned or lent by the caller.

use core::fmt;
use core::marker::PhantomData;

use super::args::KernelArg;
use super::runtime::Runtime;
use crate::error::{Error, Result};
use crate::scalar::Element;

/// A buffer of `len` elements of `E` in the memory of runtime `R`.
///
/// An empty buffer holds no memory (OpenCL has no zero-sized buffers); every operation on it is
/// a no-op and reductions over it are 0. The memory may be the runtime's own allocation or a
/// caller's, wrapped by a runtime's borrowing constructor: the backend computes on both alike,
/// and never frees what it did not allocate.
pub struct DeviceBuffer<R: Runtime, E> {
    pub(crate) mem: Option<R::Mem>,
    len: usize,
    _element: PhantomData<E>,
}

impl<R: Runtime, E: Element> DeviceBuffer<R, E> {
    pub(crate) fn new(mem: Option<R::Mem>, len: usize) -> Self {
        DeviceBuffer {
            mem,
            len,
            _element: PhantomData,
        }
    }

    /// A buffer of `len` elements over `mem` (from the runtime's allocation, or a caller's
    /// memory wrapped by the runtime): an error when `mem` holds fewer bytes.
    pub fn from_mem(backend: &str, mem: R::Mem, len: usize) -> Result<Self> {
        let need = len
            .checked_mul(E::DTYPE.size())
            .ok_or_else(|| Error::Unsupported {
                backend: backend.into(),
                what: alloc::format!("a buffer of {len} elements"),
            })?;
        let have = R::bytes(&mem);
        if have < need {
            return Err(Error::SizeMismatch {
                what: alloc::format!("device memory for {len} {} values", E::DTYPE.name()),
                expected: need,
                found: have,
            });
        }
        Ok(Self::new((len > 0).then_some(mem), len))
    }

    /// The memory (`None` for an empty buffer), e.g. to hand back to the framework that lent it.
    pub fn into_mem(self) -> Option<R::Mem> {
        self.mem
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory (`None` for an empty buffer), for callers that use it with the runtime.
    pub fn mem(&self) -> Option<&R::Mem> {
        self.mem.as_ref()
    }

    /// This buffer as an argument the kernel only reads.
    pub fn input(&self) -> KernelArg<'_, R::Mem> {
        KernelArg::In(self.mem.as_ref(), E::DTYPE)
    }

    /// This buffer as an argument the kernel writes (borrowed exclusively for the launch).
    pub fn output(&mut self) -> KernelArg<'_, R::Mem> {
        KernelArg::Out(self.mem.as_ref(), E::DTYPE)
    }
}

impl<R: Runtime, E: Element> fmt::Debug for DeviceBuffer<R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("runtime", &core::any::type_name::<R>())
            .field("dtype", &E::DTYPE)
            .field("len", &self.len)
            .finish()
    }
}

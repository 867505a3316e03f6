//! Device buffers and the byte views used to move host slices in and out of them.

use std::any::TypeId;
use std::fmt;
use std::marker::PhantomData;

use ire_core::{Element, Error};
use ocl::core::Mem;

use crate::device::BACKEND;

/// A buffer of `len` elements of `E` in device memory.
///
/// OpenCL has no zero-sized buffers: an empty `ClBuffer` holds no device object, and every
/// operation on it is a no-op (reductions over it are 0).
pub struct ClBuffer<E> {
    pub(crate) mem: Option<Mem>,
    pub(crate) len: usize,
    _element: PhantomData<E>,
}

impl<E> ClBuffer<E> {
    pub(crate) fn new(mem: Option<Mem>, len: usize) -> Self {
        ClBuffer {
            mem,
            len,
            _element: PhantomData,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no element (and no device object).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The OpenCL memory object (`None` for an empty buffer), for callers that launch their
    /// own kernels on the same context.
    pub fn mem(&self) -> Option<&Mem> {
        self.mem.as_ref()
    }

    pub(crate) fn mem_ref(&self) -> Result<&Mem, Error> {
        self.mem.as_ref().ok_or_else(|| Error::Device {
            backend: BACKEND.into(),
            message: "a non-empty buffer has no device memory".into(),
        })
    }
}

impl<E> fmt::Debug for ClBuffer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClBuffer")
            .field("dtype", &std::any::type_name::<E>())
            .field("len", &self.len)
            .finish()
    }
}

/// Whether `E` is one of the plain types a device buffer may hold (`f32`, `f64`, `u8`).
fn is_plain<E: Element>() -> bool {
    let id = TypeId::of::<E>();
    id == TypeId::of::<f32>() || id == TypeId::of::<f64>() || id == TypeId::of::<u8>()
}

fn not_plain<E: Element>() -> Error {
    Error::Unsupported {
        backend: BACKEND.into(),
        what: format!("buffers of {}", std::any::type_name::<E>()),
    }
}

/// The bytes of a host slice of `f32`, `f64` or `u8`.
pub(crate) fn as_bytes<E: Element>(s: &[E]) -> Result<&[u8], Error> {
    if !is_plain::<E>() {
        return Err(not_plain::<E>());
    }
    // SAFETY: `E` is f32, f64 or u8 (checked above): no padding, every byte initialised,
    // and u8 has alignment 1.
    Ok(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) })
}

/// The bytes of a mutable host slice of `f32`, `f64` or `u8`.
pub(crate) fn as_bytes_mut<E: Element>(s: &mut [E]) -> Result<&mut [u8], Error> {
    if !is_plain::<E>() {
        return Err(not_plain::<E>());
    }
    // SAFETY: as `as_bytes`; in addition every byte pattern is a valid f32, f64 or u8.
    Ok(unsafe {
        std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(s))
    })
}

//! [`CpuBuffer`]: host memory the backend owns, or memory a caller lends it without a copy.
//!
//! Embedding is the first use of the backend: a framework keeps its parameters and gradients in
//! its own tensors, and the optimizer runs on that memory in place. A borrowed buffer is made
//! either safely, for the length of a closure ([`crate::CpuBackend::with_borrowed`]), or from a
//! raw pointer under the contract of [`CpuBuffer::from_raw_parts_mut`] (a framework's tensor
//! whose lifetime Rust cannot see, such as a PyTorch tensor's `data_ptr()`).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Where a buffer's elements live.
pub(crate) enum Storage<E> {
    /// A vector the buffer owns.
    Owned(Vec<E>),
    /// Memory the buffer does not own: never freed or resized by it.
    Borrowed { ptr: NonNull<E>, len: usize },
}

// SAFETY: an owned vector is Send/Sync when `E` is; borrowed memory is used under the contract
// of `CpuBuffer::from_raw_parts_mut` (or the scope of `CpuBackend::with_borrowed`), which
// makes the buffer the only path to the memory while it is used, as a `&mut [E]` would be.
unsafe impl<E: Send> Send for Storage<E> {}
// SAFETY: as above; shared access only reads.
unsafe impl<E: Sync> Sync for Storage<E> {}

impl<E> Deref for Storage<E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        match self {
            Storage::Owned(v) => v,
            // SAFETY: the constructor's contract: `ptr` is valid for `len` reads and aligned.
            Storage::Borrowed { ptr, len } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), *len)
            },
        }
    }
}

impl<E> DerefMut for Storage<E> {
    fn deref_mut(&mut self) -> &mut [E] {
        match self {
            Storage::Owned(v) => v,
            // SAFETY: the constructor's contract: `ptr` is valid for `len` writes, aligned, and
            // not accessed through any other path while this buffer is in use.
            Storage::Borrowed { ptr, len } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), *len)
            },
        }
    }
}

/// A buffer of the CPU backend: a host vector it owns, or host memory it borrows.
///
/// Every operation of the backend works the same on both. Cloning a borrowed buffer gives an
/// owned copy; dropping one leaves the memory to its owner.
pub struct CpuBuffer<E>(pub(crate) Storage<E>);

impl<E> CpuBuffer<E> {
    /// Wraps a host vector (no copy).
    pub fn from_vec(v: Vec<E>) -> Self {
        CpuBuffer(Storage::Owned(v))
    }

    /// A buffer over `len` elements at `ptr` that the caller owns: no copy, never freed here.
    ///
    /// # Safety
    /// For as long as the returned buffer (or anything it is moved into) exists:
    /// - `ptr` is non-null, aligned for `E`, and valid for reads and writes of `len`
    ///   initialized elements (any `ptr` is fine when `len == 0`);
    /// - the memory is not freed, moved or resized, and is not read or written through any
    ///   other path while the backend runs an operation on the buffer (operations run to
    ///   completion before they return, so the caller's own accesses between operations are
    ///   fine).
    pub unsafe fn from_raw_parts_mut(ptr: *mut E, len: usize) -> Self {
        let ptr = if len == 0 {
            NonNull::dangling()
        } else {
            // A null `ptr` breaks the contract; dangling-but-empty is the safe reading of it.
            match NonNull::new(ptr) {
                Some(p) => p,
                None => return CpuBuffer(Storage::Owned(Vec::new())),
            }
        };
        CpuBuffer(Storage::Borrowed { ptr, len })
    }

    /// A buffer over `len` elements at `ptr` that the backend only reads (a gradient).
    ///
    /// # Safety
    /// As [`CpuBuffer::from_raw_parts_mut`], except that the memory need only be valid for
    /// reads, and the buffer must only be passed where the backend takes `&CpuBuffer` (and
    /// never through [`CpuBuffer::as_mut_slice`] or any `&mut CpuBuffer`).
    pub unsafe fn from_raw_parts(ptr: *const E, len: usize) -> Self {
        // SAFETY: forwarded: the caller promises no write ever goes through this buffer.
        unsafe { Self::from_raw_parts_mut(ptr.cast_mut(), len) }
    }

    /// Whether the memory is borrowed from the caller.
    pub fn is_borrowed(&self) -> bool {
        matches!(self.0, Storage::Borrowed { .. })
    }

    /// Address of the first element (the caller's own address for a borrowed buffer).
    pub fn as_ptr(&self) -> *const E {
        self.0.as_ptr()
    }

    /// The elements as a host vector (a copy when the memory is borrowed).
    pub fn into_vec(self) -> Vec<E>
    where
        E: Clone,
    {
        match self.0 {
            Storage::Owned(v) => v,
            Storage::Borrowed { .. } => self.0.to_vec(),
        }
    }

    /// The elements.
    pub fn as_slice(&self) -> &[E] {
        &self.0
    }

    /// The elements, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [E] {
        &mut self.0
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the buffer has no element.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A one-dimensional ndarray view of the elements.
    pub fn view(&self) -> ndarray::ArrayView1<'_, E> {
        ndarray::ArrayView1::from(&self.0[..])
    }

    /// A mutable one-dimensional ndarray view of the elements.
    pub fn view_mut(&mut self) -> ndarray::ArrayViewMut1<'_, E> {
        ndarray::ArrayViewMut1::from(&mut self.0[..])
    }

    /// The borrowed address and length, to recognise this buffer after a scope.
    pub(crate) fn borrowed_span(&self) -> Option<(usize, usize)> {
        match &self.0 {
            Storage::Borrowed { ptr, len } => Some((ptr.as_ptr() as usize, *len)),
            Storage::Owned(_) => None,
        }
    }
}

impl<E: Clone> Clone for CpuBuffer<E> {
    /// An owned copy (also of a borrowed buffer).
    fn clone(&self) -> Self {
        CpuBuffer(Storage::Owned(self.0.to_vec()))
    }
}

impl<E> Default for CpuBuffer<E> {
    fn default() -> Self {
        CpuBuffer(Storage::Owned(Vec::new()))
    }
}

impl<E: PartialEq> PartialEq for CpuBuffer<E> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<E: fmt::Debug> fmt::Debug for CpuBuffer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuBuffer")
            .field("borrowed", &self.is_borrowed())
            .field("elements", &self.as_slice())
            .finish()
    }
}

//! The backends an engine runs on, and how each wraps a tensor's memory: the CPU backend over
//! host memory, and (feature `cuda`) the CUDA backend over a CUDA tensor's device pointer on
//! torch's current stream.
//!
//! [`TensorBackend::wrap_mut`] and [`TensorBackend::wrap`] make a buffer of the backend over a
//! [`Span`] read by [`crate::device::span_of`], for the length of one call (the safety
//! contract is [`crate::device`]'s). On CUDA the backend runs on the stream torch's current
//! stream was when it was made ([`cuda::backend_on_current_stream`]), so its kernels queue
//! behind the work torch queued on that stream, with no synchronization added; an engine
//! follows torch when the current stream changes ([`crate::engine::Engine::replace_backend`]).

use ire_backend_cpu::{CpuBackend, CpuBuffer};
use ire_core::{Backend, Element};

use crate::device::Span;
use crate::error::{Result, TorchError};
use crate::place::Place;

/// A backend that can run on tensors' own memory.
pub trait TensorBackend: Backend {
    /// Where the tensors it reaches live.
    fn place(&self) -> Place;

    /// A buffer over a tensor's memory, written in place.
    ///
    /// # Safety
    /// `s` comes from [`crate::device::span_of`] on a tensor that stays alive, unresized and
    /// otherwise untouched while the buffer exists (on CUDA: no work outside the backend's
    /// stream touches it before the work queued through the buffer completes), and
    /// [`crate::device::check_disjoint`] cleared it against every other tensor the buffer is
    /// used with.
    unsafe fn wrap_mut<E: Element>(&self, s: &Span) -> Result<Self::Buffer<E>>;

    /// A buffer over a tensor's memory, only read.
    ///
    /// # Safety
    /// As [`TensorBackend::wrap_mut`]; the buffer is passed only where the backend takes
    /// `&Self::Buffer`.
    unsafe fn wrap<E: Element>(&self, s: &Span) -> Result<Self::Buffer<E>>;
}

/// Fails unless `s` holds elements of `E` on `place`.
fn check(s: &Span, place: Place, dtype: ire_core::DType) -> Result<()> {
    if s.place != place {
        return Err(TorchError::OtherDevice {
            role: s.role,
            found: s.place,
            expected: place,
        });
    }
    if s.dtype != dtype {
        return Err(TorchError::MixedDType {
            role: s.role,
            found: s.dtype,
            expected: dtype,
        });
    }
    Ok(())
}

impl TensorBackend for CpuBackend {
    fn place(&self) -> Place {
        Place::Cpu
    }

    unsafe fn wrap_mut<E: Element>(&self, s: &Span) -> Result<CpuBuffer<E>> {
        check(s, Place::Cpu, E::DTYPE)?;
        // SAFETY: the caller's contract; `span_of` checked alignment, non-null data when
        // len > 0 and that the `len` elements are one contiguous block of the tensor's storage.
        Ok(unsafe { CpuBuffer::from_raw_parts_mut(s.ptr as *mut E, s.len) })
    }

    unsafe fn wrap<E: Element>(&self, s: &Span) -> Result<CpuBuffer<E>> {
        check(s, Place::Cpu, E::DTYPE)?;
        // SAFETY: as in `wrap_mut`; the caller never writes through this buffer.
        Ok(unsafe { CpuBuffer::from_raw_parts(s.ptr as *const E, s.len) })
    }
}

/// The CUDA backend on torch's memory and streams.
#[cfg(feature = "cuda")]
pub mod cuda {
    use ire_backend_cuda::cudarc::driver::sys::CUstream;
    use ire_backend_cuda::{Cuda, CudaBackend, CudaBuffer, CudaMem};
    use ire_core::{DeviceBackend, DeviceBuffer, Element};
    use pyo3::prelude::*;

    use super::{TensorBackend, check};
    use crate::device::Span;
    use crate::error::Result;
    use crate::place::Place;

    /// torch's current stream on CUDA device `ordinal`, as the driver's handle (an address;
    /// 0 is the legacy default stream).
    pub fn current_stream(py: Python<'_>, ordinal: usize) -> Result<usize> {
        let stream = py
            .import("torch")?
            .getattr("cuda")?
            .call_method1("current_stream", (ordinal,))?;
        Ok(stream.getattr("cuda_stream")?.extract()?)
    }

    /// A backend on device `ordinal` running on the stream `stream` (a handle from
    /// [`current_stream`]).
    pub fn backend_on(ordinal: usize, stream: usize) -> Result<CudaBackend> {
        // SAFETY: `stream` is a stream of torch's, which torch creates in the device's primary
        // context (the one `Cuda` opens) and keeps for the life of the process (its pool
        // streams and the default stream are never destroyed); a stream a user creates must
        // outlive the optimizer's use of it, as for torch's own kernels queued on it.
        let rt = unsafe { Cuda::on_stream(ordinal, stream as CUstream) }?;
        Ok(DeviceBackend::new(rt))
    }

    /// A backend on torch's current stream of device `ordinal`, and that stream's handle.
    pub fn backend_on_current_stream(
        py: Python<'_>,
        ordinal: usize,
    ) -> Result<(CudaBackend, usize)> {
        let stream = current_stream(py, ordinal)?;
        Ok((backend_on(ordinal, stream)?, stream))
    }

    impl TensorBackend for CudaBackend {
        fn place(&self) -> Place {
            Place::Cuda(self.runtime().info().ordinal)
        }

        unsafe fn wrap_mut<E: Element>(&self, s: &Span) -> Result<CudaBuffer<E>> {
            check(s, self.place(), E::DTYPE)?;
            // SAFETY: the caller's contract: `s.ptr` is the device address of `s.len`
            // contiguous elements of `E` of a live tensor on this device, used on the stream
            // torch queues its own work on.
            let mem = unsafe { CudaMem::borrow(s.ptr as u64, s.len * E::DTYPE.size()) };
            Ok(DeviceBuffer::from_mem("cuda", mem, s.len)?)
        }

        unsafe fn wrap<E: Element>(&self, s: &Span) -> Result<CudaBuffer<E>> {
            // SAFETY: forwarded; the caller never writes through this buffer.
            unsafe { self.wrap_mut(s) }
        }
    }
}

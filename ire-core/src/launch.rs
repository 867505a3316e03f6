//! Launching kernels of an [`Extension`] (a program beyond the IRE ops) on a device backend.
//!
//! Crates above the backends (the neural-network ops of `ire-models`, a user's own layers)
//! write kernels in the same portable dialect as `kernels/ire_ops.cl` and launch them through
//! [`DeviceKernels`], without knowing whether OpenCL or CUDA runs them.

use crate::kernels::Extension;
use crate::{Backend, Result, Scalar};

/// One argument of a kernel launch, in the order of the kernel's parameters.
///
/// Buffers are passed whole: OpenCL cannot point into the middle of a buffer, so a kernel
/// that reads at an element offset takes the offset as an extra `INDEX` parameter.
pub enum KernelArg<'a, B: Backend + ?Sized, T: Scalar> {
    /// A buffer the kernel only reads (`GLOBAL const T*`).
    In(&'a B::Buffer<T>),
    /// A buffer the kernel writes (`GLOBAL T*`).
    Out(&'a mut B::Buffer<T>),
    /// A scalar of the program's float type (`T`): `f32` or `f64`.
    Real(f64),
    /// An element count or offset (`INDEX`, 64 bits).
    Index(usize),
    /// A 32-bit unsigned value (`U32`).
    U32(u32),
}

/// A backend that runs kernels of [`Extension`] programs.
///
/// Launch contract: `groups` work-groups (CUDA blocks) of exactly
/// [`crate::kernels::REDUCE_WG`] work-items, one dimension; `groups == 0` launches nothing.
/// Launches are ordered with every other operation of the backend.
pub trait DeviceKernels: Backend {
    /// Launches `kernel` of `ext` (compiled for `T`'s dtype on first use).
    fn launch<T: Scalar>(
        &self,
        ext: &'static Extension,
        kernel: &'static str,
        groups: usize,
        args: &[KernelArg<'_, Self, T>],
    ) -> Result<()>;

    /// `C = α·op(A)·op(B) + β·C` on row-major matrices at element offsets by a vendor library
    /// (cuBLAS); `Ok(false)` where the backend has none, and the caller runs its own kernel.
    #[allow(clippy::too_many_arguments)]
    fn vendor_gemm<T: Scalar>(
        &self,
        _shape: GemmShape,
        _alpha: T,
        _a: &Self::Buffer<T>,
        _a_off: usize,
        _b: &Self::Buffer<T>,
        _b_off: usize,
        _beta: T,
        _c: &mut Self::Buffer<T>,
        _c_off: usize,
    ) -> Result<bool> {
        Ok(false)
    }
}

/// The shape of a row-major matrix product `C (m × n) = op(A) (m × k) · op(B) (k × n)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    /// `op(A) = Aᵀ` (A stored `k × m`).
    pub trans_a: bool,
    /// `op(B) = Bᵀ` (B stored `n × k`).
    pub trans_b: bool,
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The shared dimension.
    pub k: usize,
}

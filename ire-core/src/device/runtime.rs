//! What a device API does: the one trait a new device runtime implements.

use super::args::KernelArg;
use crate::error::Result;
use crate::kernels::Dialect;
use crate::scalar::DType;

/// The kind of device behind a runtime, for choices that depend on it (where the global
/// k-th-largest selection runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceClass {
    /// A CPU (e.g. PoCL): its memory is host memory.
    Cpu,
    /// A GPU.
    Gpu,
    /// Another accelerator.
    Accelerator,
    /// A host emulation of the kernels (tests).
    Emulated,
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

impl GemmShape {
    /// Elements of `A`, `B` and `C`.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.m * self.k, self.k * self.n, self.m * self.n)
    }

    /// Row and column strides of `A` and `B` as stored (row-major).
    pub fn strides(&self) -> ((usize, usize), (usize, usize)) {
        let a = if self.trans_a {
            (1, self.m)
        } else {
            (self.k, 1)
        };
        let b = if self.trans_b {
            (1, self.k)
        } else {
            (self.n, 1)
        };
        (a, b)
    }
}

/// A program for [`Runtime::build`].
#[derive(Clone, Copy, Debug)]
pub struct ProgramSource<'a> {
    /// The program's name, for errors and caches.
    pub name: &'static str,
    /// The floating-point type `T` it is compiled for (`F32` or `F64`).
    pub dtype: DType,
    /// The full source: dtype header, prelude, kernels.
    pub text: &'a str,
    /// Its entry points.
    pub kernels: &'a [&'static str],
}

/// One kernel launch for [`Runtime::launch`].
pub struct Launch<'a, 'b, M> {
    /// The kernel's name (for errors).
    pub kernel: &'static str,
    /// Its position in the `kernels` the program was built with.
    pub index: usize,
    /// The program's floating-point type.
    pub dtype: DType,
    /// Work-groups to launch.
    pub groups: usize,
    /// The arguments, in the kernel's parameter order.
    pub args: &'b [KernelArg<'a, M>],
}

/// One operand of [`Runtime::gemm`]: memory and an element offset into it.
pub type GemmOperand<'a, M> = (&'a M, usize);

/// A device API (OpenCL, CUDA, a host emulator): memory, programs, launches.
///
/// [`super::DeviceBackend`] implements every [`crate::Backend`] operation once on top of this
/// trait; a runtime only moves bytes, builds programs from the portable kernel dialect and
/// launches kernels. Work submitted through one runtime runs in submission order (one in-order
/// queue or stream); [`Runtime::read`] returns only when the bytes are on the host.
pub trait Runtime: Send + Sync + 'static {
    /// Device memory: an allocation the runtime owns, or memory a caller lends it.
    type Mem: Send + Sync;
    /// A program of kernels compiled for one dtype.
    type Program: Send + Sync;

    /// Short name (`opencl`, `cuda`, `emulator`): the backend's name in errors and listings.
    const NAME: &'static str;
    /// The kind of device.
    fn class(&self) -> DeviceClass;
    /// The dialect programs are compiled in (the prelude prepended to the portable source).
    fn dialect(&self) -> Dialect;
    /// Whether buffers of `dtype` can be allocated and computed on.
    fn supports(&self, dtype: DType) -> bool;
    /// Size of `mem` in bytes.
    fn bytes(mem: &Self::Mem) -> usize;

    /// `bytes > 0` bytes of device memory, contents unspecified.
    fn alloc(&self, bytes: usize) -> Result<Self::Mem>;
    /// Copies `src` into `dst` at byte `offset`; `src` may be reused when this returns.
    fn write(&self, dst: &mut Self::Mem, offset: usize, src: &[u8]) -> Result<()>;
    /// Copies `dst.len()` bytes from byte `offset` of `src` once all submitted work is done.
    fn read(&self, src: &Self::Mem, offset: usize, dst: &mut [u8]) -> Result<()>;
    /// Copies the first `bytes` bytes of `src` into `dst`.
    fn copy(&self, src: &Self::Mem, dst: &mut Self::Mem, bytes: usize) -> Result<()>;
    /// Sets the first `bytes` bytes of `dst` to zero.
    fn zero(&self, dst: &mut Self::Mem, bytes: usize) -> Result<()>;

    /// Compiles a program (the portable dialect with this runtime's prelude) and prepares its
    /// entry points.
    fn build(&self, program: &ProgramSource<'_>) -> Result<Self::Program>;
    /// Launches one kernel of `program` over `l.groups` work-groups of
    /// [`crate::kernels::REDUCE_WG`] work-items. The arguments have been checked against the
    /// kernel's parameter list; `Real` and `Key` take the width of `l.dtype`.
    fn launch(&self, program: &Self::Program, l: &Launch<'_, '_, Self::Mem>) -> Result<()>;
    /// Waits for all submitted work and reports any asynchronous error.
    fn synchronize(&self) -> Result<()>;

    /// `C = α·op(A)·op(B) + β·C` on row-major matrices by a vendor library (cuBLAS), with
    /// every operand's extent already checked; `Ok(false)` where there is none, and the caller
    /// runs the portable kernel.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        dtype: DType,
        shape: GemmShape,
        alpha: f64,
        a: GemmOperand<'_, Self::Mem>,
        b: GemmOperand<'_, Self::Mem>,
        beta: f64,
        c: (&mut Self::Mem, usize),
    ) -> Result<bool> {
        let _ = (dtype, shape, alpha, a, b, beta, c);
        Ok(false)
    }
}

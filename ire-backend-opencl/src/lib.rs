//! # ire-backend-opencl
//!
//! The OpenCL runtime of `ire-core`'s device layer: [`OpenCl`] implements
//! [`ire_core::device::Runtime`] (context, one in-order queue, memory objects, programs built
//! from the portable kernel source), and [`OpenClBackend`] = `DeviceBackend<OpenCl>` is the
//! [`ire_core::Backend`] — every operation is implemented once in `ire_core::device`. Programs
//! are compiled at run time on first use per dtype: the dtype header and the OpenCL prelude
//! (`#pragma OPENCL FP_CONTRACT OFF`) are prepended, and the program is built with
//! `ire_core::kernels::OPENCL_BUILD_OPTIONS` (`-cl-fp32-correctly-rounded-divide-sqrt`). `f64`
//! works only where the device reports `cl_khr_fp64` — elsewhere `supports_dtype(F64)` is false
//! and `f64` allocations return `Error::UnsupportedDType`. It runs for real on PoCL (OpenCL on
//! the CPU) in CI.
//!
//! ```no_run
//! use ire_core::Backend;
//!
//! let cl = ire_backend_opencl::open()?;
//! println!("{}", cl.runtime().info());
//! let x = cl.alloc_from(&[1.0f32, 2.0, 3.0])?;
//! assert_eq!(cl.sum_squares(&x)?, 14.0);
//! # Ok::<(), ire_core::Error>(())
//! ```
//!
//! ## Choosing the device
//! [`probe`] lists every platform's devices (name, vendor, version, fp64, memory, compute
//! units); `Display` of a [`DeviceInfo`] is one line starting with its `P:D` selector.
//! [`open`] opens the device named by `IRE_OPENCL_DEVICE` ([`open_selector`] takes the selector):
//! - unset, empty or `auto`: the first GPU, else the first accelerator, else the first device;
//! - `P:D`: device `D` of platform `P` (e.g. `0:0`);
//! - `N`: the `N`-th entry of [`probe`]'s list;
//! - anything else: the first device whose name, vendor or platform name contains it
//!   (case-insensitive), e.g. `pthread` for PoCL or `nvidia`.
//!
//! Discovery never panics and never sleeps: `ocl`'s own platform helpers panic or retry for
//! ten seconds when no platform is installed, so the backend first counts platforms with one
//! raw `clGetPlatformIDs` call (cached, see [`platform_count`]) and queries devices with raw
//! `clGetDeviceIDs` / `clGetDeviceInfo`. No platform, no device, or a selector that names
//! nothing is `Error::Unavailable` with the reason (and the device list).
//!
//! ## Environment
//! - `IRE_OPENCL_DEVICE`: the device, as above.
//! - `POCL_CACHE_DIR`: PoCL's kernel cache. Set it to a writable folder: where PoCL cannot
//!   write its cache (an unwritable `HOME`) it hides its device. A warm cache makes opening the
//!   backend take a fraction of a second instead of a few seconds of LLVM compilation.
//! - `IRE_REQUIRE`: comma-separated backends a run requires (`opencl,nvrtc`). With `opencl`
//!   in it, [`optional`] turns an absent device into an error instead of
//!   `Ok(None)`, and the test suite fails instead of printing skip lines.
//! - `OCL_ICD_VENDORS`: read by the ICD loader; pointing it at an empty folder simulates a
//!   machine without OpenCL (the tests do this in a child process).
//!
//! Linking needs `libOpenCL` (Debian: `ocl-icd-opencl-dev`); running needs a driver (an ICD,
//! e.g. `pocl-opencl-icd`).
//!
//! ## Memory a caller owns
//! [`ClMem::borrow`] wraps a caller's `cl_mem` (retained while held, never freed by the
//! backend) and `ire_core::DeviceBuffer::from_mem` makes it a buffer every operation runs on
//! in place; [`OpenCl::on_queue`] runs the backend on the caller's own in-order queue, so its
//! kernels follow the caller's commands with no synchronization added.
//!
//! ## Equivalence, reductions and the selection
//! Element-wise operations are bit-identical to `ire_core::Reference` (the kernels spell the
//! canonical formulas with contraction off and correctly rounded `/` and `sqrt`); sums and
//! counts, the exact k-th-largest selection and its two paths are those of
//! `ire_core::device` (the host path is the default on a CPU device such as PoCL, where it
//! measured faster; see `examples/selection_timing.rs`).

mod discovery;
mod runtime;

pub use discovery::{
    DEVICE_ENV, DeviceInfo, DeviceKind, REQUIRE_ENV, platform_count, probe, required_by_env,
    select_device,
};
pub use runtime::{ClMem, ClProgram, OpenCl, OpenClBackend};

/// An OpenCL buffer.
pub type ClBuffer<E> = ire_core::DeviceBuffer<OpenCl, E>;

/// The backend on the device named by `IRE_OPENCL_DEVICE` (default: the first GPU, else the
/// first accelerator, else the first device).
pub fn open() -> ire_core::Result<OpenClBackend> {
    OpenCl::from_env().map(ire_core::DeviceBackend::new)
}

/// The backend on the device `selector` names (see [`OpenCl::open`]).
pub fn open_selector(selector: &str) -> ire_core::Result<OpenClBackend> {
    OpenCl::open(selector).map(ire_core::DeviceBackend::new)
}

/// [`open`], except that an absent device is `Ok(None)` unless `IRE_REQUIRE` names `opencl`.
/// Any other failure (a device that exists but fails to open) is always an error.
pub fn optional() -> ire_core::Result<Option<OpenClBackend>> {
    match open() {
        Ok(b) => Ok(Some(b)),
        Err(ire_core::Error::Unavailable { .. }) if !required_by_env() => Ok(None),
        Err(e) => Err(e),
    }
}

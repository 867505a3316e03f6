//! # ire-backend-opencl
//!
//! The OpenCL backend of `ire-core`: [`OpenClBackend`] implements [`ire_core::Backend`] by
//! compiling the portable kernel source of `ire-core` (`ire_core::kernels`) at run time, once
//! per dtype: the dtype header and the OpenCL prelude (`#pragma OPENCL FP_CONTRACT OFF`)
//! are prepended, and the program is built with `ire_core::kernels::OPENCL_BUILD_OPTIONS`
//! (`-cl-fp32-correctly-rounded-divide-sqrt`). Every kernel is created once and reused. The
//! `f32` program is built when the backend opens (it also holds the byte kernels, so masks work
//! without `f64`); the `f64` program is built on first use, and only where the device reports
//! `cl_khr_fp64` — elsewhere `supports_dtype(F64)` is false and `f64` allocations return
//! `Error::UnsupportedDType`. It runs for real on PoCL (OpenCL on the CPU) in CI.
//!
//! ```no_run
//! use ire_backend_opencl::OpenClBackend;
//! use ire_core::Backend;
//!
//! let cl = OpenClBackend::new()?;
//! println!("{}", cl.device());
//! let x = cl.alloc_from(&[1.0f32, 2.0, 3.0])?;
//! assert_eq!(cl.sum_squares(&x)?, 14.0);
//! # Ok::<(), ire_core::Error>(())
//! ```
//!
//! ## Choosing the device
//! [`probe`] lists every platform's devices (name, vendor, version, fp64, memory, compute
//! units); `Display` of a [`DeviceInfo`] is one line starting with its `P:D` selector.
//! [`OpenClBackend::new`] opens the device named by `IRE_OPENCL_DEVICE`:
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
//!   in it, [`OpenClBackend::optional`] turns an absent device into an error instead of
//!   `Ok(None)`, and the test suite fails instead of printing skip lines.
//! - `OCL_ICD_VENDORS`: read by the ICD loader; pointing it at an empty folder simulates a
//!   machine without OpenCL (the tests do this in a child process).
//!
//! Linking needs `libOpenCL` (Debian: `ocl-icd-opencl-dev`); running needs a driver (an ICD,
//! e.g. `pocl-opencl-icd`).
//!
//! ## Equivalence with the reference backend
//! Element-wise operations (fill, axpy, SAM/ASAM perturbations, SGD, SGD with momentum,
//! AdamW, the IRE boost and the fused IRE steps, the EMAs, the mask rule) are bit-identical to
//! `ire_core::Reference` for `f32` and `f64`: the kernels spell the canonical formulas with
//! contraction off and correctly rounded `/` and `sqrt`, and the scalars that depend only on
//! the step (`1 − β`, bias corrections) are computed on the host.
//!
//! Sums of squares are two-level device reductions: each work-item adds 8 elements, a
//! 256-item work-group adds those as a tree, and `sum_partial` passes repeat this over the
//! per-group partials until one value is left. They add in a different order than the
//! reference's pairwise sum, so they are checked against the tolerance table of
//! `ire_core::conformance::TOLERANCES` (relative `1e-5` for `f32`, `1e-13` for `f64`).
//! Measured on PoCL (`examples/equivalence.rs`, sizes 1 to 4.2 M): at most 2 ulp
//! (relative 2.0e-7) for `f32` and 1 ulp (relative 2.1e-16) for `f64`. Counts are exact.
//!
//! ## The global threshold (k-th largest)
//! Two exact paths, both equal to `ire_core::host::kth_largest` bit for bit:
//! - [`SelectionPath::Device`]: MSB-first radix selection over order keys with the
//!   `select_histogram` kernel, 4 passes for `f32` (8 for `f64`), each reading back 256
//!   counters. If the first histogram shows a key with the top byte of a NaN (shared only by
//!   infinities and huge magnitudes), it hands over to the host path, which rejects NaN.
//! - [`SelectionPath::Host`]: download every buffer, then introselect on the host.
//!
//! Measured on PoCL 3.1 (2 shared cores of an AMD EPYC, `f32`, `k = 0.4·N`, best of 5,
//! `cargo run --release -p ire-backend-opencl --example selection_timing`):
//!
//! | N | device path | host path |
//! | --- | --- | --- |
//! | 1 M | 6–9 ms | 2–4 ms |
//! | 10 M | 56–90 ms | 40–53 ms |
//!
//! On a CPU device the buffers already sit in host memory, so the host path wins and is the
//! default there; on GPUs and accelerators the default is the device path (the download alone
//! would move the whole estimate over the bus). [`OpenClBackend::with_selection_path`]
//! overrides the choice.
//!
//! ## Buffers and threads
//! [`ClBuffer`] holds a byte-sized OpenCL buffer and its element count. OpenCL has no
//! zero-sized buffers, so an empty `ClBuffer` holds no device object: operations on it are
//! no-ops and reductions return 0. Commands go to one in-order queue; uploads, downloads and
//! reductions block, element-wise kernels are only enqueued. Clones of a backend share the
//! device and its queue and may be used from several threads.

mod backend;
mod buffer;
mod device;
mod discovery;
mod launch;

pub use backend::{OpenClBackend, SelectionPath};
pub use buffer::ClBuffer;
pub use discovery::{
    DEVICE_ENV, DeviceInfo, DeviceKind, REQUIRE_ENV, platform_count, probe, required_by_env,
    select_device,
};

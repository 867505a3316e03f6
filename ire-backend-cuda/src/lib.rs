//! # ire-backend-cuda
//!
//! The CUDA backend of [`ire_core`]: the portable kernel source of `ire-core` (the same text
//! the OpenCL backend runs) compiled at run time by NVRTC, loaded with the CUDA driver API
//! through `cudarc`, and exposed as [`CudaBackend`], an [`ire_core::Backend`].
//!
//! - Element-wise operations equal the reference backend bit for bit: NVRTC compiles with
//!   [`ire_core::kernels::NVRTC_OPTIONS`] (`--fmad=false`, IEEE division and square root).
//! - Sums of squares and counts are device reductions (a grid-stride loop, a tree per block,
//!   then a second pass over the per-block partials). The global k-th-largest selection is an
//!   exact most-significant-byte-first radix selection on the device (`select_histogram`):
//!   4 passes for `f32`, 8 for `f64`, each reading back 256 counters.
//! - `f32` and `f64`; masks are `u8`. Zero-length buffers hold no device memory.
//!
//! ## Requirements at run time
//! - **Driver**: an NVIDIA driver (`libcuda.so`). It is loaded dynamically: without it, or
//!   without a GPU, [`CudaBackend::new`] and [`probe`] return [`ire_core::Error::Unavailable`]
//!   with the reason, never panic. The library and every entry point used are looked up before
//!   the first call.
//! - **NVRTC**: `libnvrtc.so` (CUDA 11.2 or newer), from a CUDA toolkit or from the PyPI wheel
//!   `nvidia-cuda-nvrtc-cu12`, on the loader's path (`LD_LIBRARY_PATH`, e.g.
//!   `<site-packages>/nvidia/cuda_nvrtc/lib` for the wheel). Compiling needs NVRTC only, no
//!   GPU: [`compile_ptx`] works on any machine.
//! - **Compile target**: the device's own architecture (`sm_XY`, device code, no JIT) when the
//!   NVRTC found knows it; otherwise PTX for the newest older architecture it knows, which the
//!   driver compiles (PTX from NVRTC 12.x needs a driver for that CUDA version or newer).
//!
//! ## Choosing the device
//! [`probe`] lists the devices ([`DeviceInfo`]: ordinal, name, compute capability, memory).
//! [`CudaBackend::new`] opens one by ordinal; [`CudaBackend::from_env`] opens the one named by
//! `IRE_CUDA_DEVICE` (default 0).
//!
//! ## Environment variables
//! - `IRE_CUDA_DEVICE`: the ordinal [`CudaBackend::from_env`] opens.
//! - `IRE_CUDA_ARCH`: compile for this architecture instead (`sm_90`, or `compute_90` to
//!   force PTX and the driver's compiler).
//! - `LD_LIBRARY_PATH`: where `libnvrtc.so` (and, unusually placed, `libcuda.so`) are found.
//! - `IRE_REQUIRE` (tests only): a comma-separated list; with `cuda` the conformance tests
//!   fail instead of skipping when no GPU is usable, with `nvrtc` the NVRTC compile test fails
//!   instead of skipping when NVRTC cannot be loaded.
//!
//! ## Example
//! ```no_run
//! use ire_backend_cuda::CudaBackend;
//! use ire_core::Backend;
//!
//! let cuda = CudaBackend::new(0)?;
//! println!("{} (kernels for {})", cuda.device(), cuda.target());
//! let mut theta = cuda.alloc_from(&[1.0f32, 2.0, 3.0])?;
//! let grad = cuda.alloc_from(&[0.5f32, 0.5, 0.5])?;
//! cuda.axpy(&mut theta, -2.0, &grad)?; // θ ← θ − 2·g
//! assert_eq!(cuda.to_vec(&theta)?, vec![0.0, 1.0, 2.0]);
//! # Ok::<(), ire_core::Error>(())
//! ```

mod backend;
mod driver;
#[cfg(test)]
mod emulator;
mod launch;
mod nvrtc;
mod signature;

pub use backend::{CudaBackend, CudaBuffer, ENV_ARCH, ENV_DEVICE};
pub use driver::{DeviceInfo, driver_version, probe};
pub use launch::check_extension_source;
pub use nvrtc::{
    Compiled, compile_program, compile_ptx, compile_source, nvrtc_available, nvrtc_version,
    supported_archs,
};

/// Re-export of the `cudarc` version this crate is built on (for code that launches its own
/// kernels on [`CudaBackend::stream`]).
pub use cudarc;

/// The backend's name in errors and listings.
pub(crate) const BACKEND: &str = "cuda";

/// Whether `IRE_REQUIRE` (comma-separated) names `what`: then a missing dependency fails a
/// test instead of skipping it.
#[cfg(test)]
pub(crate) fn required(what: &str) -> bool {
    std::env::var("IRE_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim().eq_ignore_ascii_case(what))
}

//! # ire-backend-cuda
//!
//! The CUDA runtime of `ire-core`'s device layer: [`Cuda`] implements
//! [`ire_core::device::Runtime`] with the CUDA driver API through `cudarc` (memory, one stream,
//! programs compiled at run time by NVRTC from the same portable source the OpenCL runtime
//! builds, cuBLAS for matrix products), and [`CudaBackend`] = `DeviceBackend<Cuda>` is the
//! [`ire_core::Backend`]: every operation is implemented once in `ire_core::device`.
//!
//! - Element-wise operations equal the reference backend bit for bit: NVRTC compiles with
//!   [`ire_core::kernels::NVRTC_OPTIONS`] (`--fmad=false`, IEEE division and square root).
//! - Sums, counts and the exact k-th-largest selection are those of `ire_core::device`
//!   (device partials added on the host; a radix selection on the device).
//! - `f32` and `f64`; masks are packed `u32` words (`ire_core::mask`). Zero-length buffers hold
//!   no device memory.
//! - Memory a caller owns: [`CudaMem::borrow`] wraps a framework's device pointer, and
//!   [`Cuda::on_stream`] runs the backend on the framework's stream, so its kernels queue
//!   behind the framework's work with no synchronization added.
//! - Feature `nccl`: [`Nccl`], `ire-core`'s `Collective` across GPUs (one rank per process),
//!   with an in-place all-reduce of device buffers on the backend's stream.
//!
//! ## Requirements at run time
//! - **Driver**: an NVIDIA driver (`libcuda.so`). It is loaded dynamically: without it, or
//!   without a GPU, [`open`] and [`probe`] return [`ire_core::Error::Unavailable`]
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
//! [`open`] opens one by ordinal; [`from_env`] opens the one named by `IRE_CUDA_DEVICE`
//! (default 0).
//!
//! ## Environment variables
//! - `IRE_CUDA_DEVICE`: the ordinal [`from_env`] opens.
//! - `IRE_CUDA_ARCH`: compile for this architecture instead (`sm_90`, or `compute_90` to
//!   force PTX and the driver's compiler).
//! - `LD_LIBRARY_PATH`: where `libnvrtc.so` (and, unusually placed, `libcuda.so`) are found.
//! - `IRE_REQUIRE` (tests only): a comma-separated list; with `cuda` the conformance tests
//!   fail instead of skipping when no GPU is usable, with `nvrtc` the NVRTC compile test fails
//!   instead of skipping when NVRTC cannot be loaded.
//!
//! ## Example
//! ```no_run
//! use ire_core::Backend;
//!
//! let cuda = ire_backend_cuda::open(0)?;
//! println!("{} (kernels for {})", cuda.runtime().info(), cuda.runtime().target());
//! let mut theta = cuda.alloc_from(&[1.0f32, 2.0, 3.0])?;
//! let grad = cuda.alloc_from(&[0.5f32, 0.5, 0.5])?;
//! cuda.axpy(&mut theta, -2.0, &grad)?; // θ ← θ − 2·g
//! assert_eq!(cuda.to_vec(&theta)?, vec![0.0, 1.0, 2.0]);
//! # Ok::<(), ire_core::Error>(())
//! ```

mod driver;
#[cfg(feature = "nccl")]
mod nccl;
mod nvrtc;
mod runtime;

pub use driver::{DeviceInfo, driver_version, probe};
#[cfg(feature = "nccl")]
pub use nccl::Nccl;
pub use nvrtc::{
    Compiled, compile_program, compile_ptx, compile_source, nvrtc_available, nvrtc_version,
    supported_archs,
};
pub use runtime::{
    Cuda, CudaBackend, CudaBuffer, CudaMem, CudaProgram, ENV_ARCH, ENV_DEVICE, ptx_param_type,
};

/// Re-export of the `cudarc` version this crate is built on (for code that launches its own
/// kernels on [`Cuda::stream`]).
pub use cudarc;

/// The backend on device `ordinal`, on a stream of its own.
pub fn open(ordinal: usize) -> ire_core::Result<CudaBackend> {
    Cuda::open(ordinal).map(ire_core::DeviceBackend::new)
}

/// The backend on the device named by `IRE_CUDA_DEVICE` (default 0).
pub fn from_env() -> ire_core::Result<CudaBackend> {
    Cuda::from_env().map(ire_core::DeviceBackend::new)
}

/// Whether `IRE_REQUIRE` (comma-separated) names `what`: then a missing dependency is an error
/// instead of a skip.
pub fn required_by_env(what: &str) -> bool {
    std::env::var("IRE_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim().eq_ignore_ascii_case(what))
}

/// [`from_env`], except that an absent GPU is `Ok(None)` unless `IRE_REQUIRE` names `cuda`.
pub fn optional() -> ire_core::Result<Option<CudaBackend>> {
    match from_env() {
        Ok(b) => Ok(Some(b)),
        Err(ire_core::Error::Unavailable { .. }) if !required_by_env("cuda") => Ok(None),
        Err(e) => Err(e),
    }
}

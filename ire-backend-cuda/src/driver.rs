//! The CUDA driver: availability checks that never panic, and the device list.

use std::ffi::c_int;

use cudarc::driver::result::{self as dr, DriverError};
use cudarc::driver::sys;
use ire_core::Error;

/// The backend's name in errors and listings.
pub(crate) const BACKEND: &str = "cuda";

/// Driver entry points this crate (through cudarc) calls. cudarc panics on a missing symbol,
/// so their presence is checked once, before the first call.
const DRIVER_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuGetErrorName",
    "cuGetErrorString",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceGetAttribute",
    "cuDeviceTotalMem_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuStreamCreate",
    "cuStreamSynchronize",
    "cuStreamDestroy_v2",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemAllocAsync",
    "cuMemFreeAsync",
    "cuMemsetD8Async",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyDtoDAsync_v2",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuModuleUnload",
    "cuLaunchKernel",
];

pub(crate) fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable {
        backend: BACKEND.into(),
        reason: reason.into(),
    }
}

/// A driver error as the crate's error type (`what` says which call failed).
pub(crate) fn driver_error(what: &str, e: DriverError) -> Error {
    Error::Device {
        backend: BACKEND.into(),
        message: format!("{what}: {e:?}"),
    }
}

/// Loads the driver library and initialises it: the checks every driver call must follow.
///
/// Order: the library (`is_culib_present`, no call into it), the symbols, then `cuInit`.
pub(crate) fn init_driver() -> Result<(), Error> {
    // SAFETY: probing only tries to dlopen candidate names.
    if !unsafe { sys::is_culib_present() } {
        return Err(unavailable(
            "the CUDA driver library (libcuda.so) was not found: no NVIDIA driver is installed \
             on this machine",
        ));
    }
    // SAFETY: the library is present, so `culib` loads it without panicking; symbols are only
    // looked up, not called.
    let lib = unsafe { sys::culib() };
    for name in DRIVER_SYMBOLS {
        // SAFETY: as above.
        if unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err() {
            return Err(unavailable(format!(
                "the CUDA driver found lacks `{name}`: the driver is too old"
            )));
        }
    }
    dr::init().map_err(|e| match e.0 {
        sys::cudaError_enum::CUDA_ERROR_NO_DEVICE => {
            unavailable("the CUDA driver is installed but reports no GPU")
        }
        _ => unavailable(format!("cuInit failed: {e:?}")),
    })
}

/// The CUDA version the driver supports, as `(major, minor)` (e.g. `(12, 4)`).
pub fn driver_version() -> Result<(u32, u32), Error> {
    init_driver()?;
    let mut v: c_int = 0;
    // SAFETY: the driver is initialised and `v` is valid for writes.
    unsafe { sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| driver_error("cuDriverGetVersion", e))?;
    let v = u32::try_from(v).unwrap_or(0);
    Ok((v / 1000, (v % 1000) / 10))
}

/// One CUDA device as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Ordinal to pass to [`crate::CudaBackend::new`].
    pub ordinal: usize,
    /// Marketing name (`NVIDIA H100 80GB HBM3`, ...).
    pub name: String,
    /// Compute capability `(major, minor)`: `(9, 0)` for Hopper.
    pub compute_capability: (u32, u32),
    /// Total device memory in bytes.
    pub total_memory: usize,
}

impl DeviceInfo {
    /// The real architecture name of the device (`sm_90`).
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cuda:{} {} (compute capability {}.{}, {:.1} GiB)",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.total_memory as f64 / (1u64 << 30) as f64
        )
    }
}

/// Number of devices the driver sees (after the availability checks).
pub(crate) fn device_count() -> Result<usize, Error> {
    init_driver()?;
    let n = dr::device::get_count().map_err(|e| driver_error("cuDeviceGetCount", e))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The description of device `ordinal` (the driver must be initialised).
pub(crate) fn device_info(ordinal: usize) -> Result<DeviceInfo, Error> {
    let index = c_int::try_from(ordinal)
        .map_err(|_| unavailable(format!("device ordinal {ordinal} is out of range")))?;
    let dev = dr::device::get(index).map_err(|e| driver_error("cuDeviceGet", e))?;
    let name = dr::device::get_name(dev).map_err(|e| driver_error("cuDeviceGetName", e))?;
    let attr = |a: sys::CUdevice_attribute| -> Result<u32, Error> {
        // SAFETY: `dev` is a valid device handle from `cuDeviceGet`.
        let v = unsafe { dr::device::get_attribute(dev, a) }
            .map_err(|e| driver_error("cuDeviceGetAttribute", e))?;
        Ok(u32::try_from(v).unwrap_or(0))
    };
    let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    // SAFETY: as above.
    let total_memory =
        unsafe { dr::device::total_mem(dev) }.map_err(|e| driver_error("cuDeviceTotalMem", e))?;
    Ok(DeviceInfo {
        ordinal,
        name: name.trim_end_matches('\0').to_owned(),
        compute_capability: (major, minor),
        total_memory,
    })
}

/// Lists the CUDA devices, or says why there are none ([`Error::Unavailable`]: no driver
/// library, a driver too old, no GPU).
pub fn probe() -> Result<Vec<DeviceInfo>, Error> {
    let n = device_count()?;
    if n == 0 {
        return Err(unavailable("the CUDA driver reports no GPU"));
    }
    (0..n).map(device_info).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn probe_lists_devices_or_says_why_not() {
        // SAFETY: probing only tries to dlopen candidate names.
        let driver_present = unsafe { sys::is_culib_present() };
        match probe() {
            Ok(devices) => {
                assert!(!devices.is_empty());
                for (i, d) in devices.iter().enumerate() {
                    assert_eq!(d.ordinal, i);
                    assert!(!d.name.is_empty());
                    assert!(d.compute_capability.0 >= 3, "{d}");
                    assert!(d.total_memory > 0, "{d}");
                    assert!(d.arch().starts_with("sm_"));
                }
            }
            Err(Error::Unavailable { backend, reason }) => {
                assert_eq!(backend, "cuda");
                assert!(!reason.is_empty());
                if !driver_present {
                    assert!(reason.contains("libcuda"), "{reason}");
                }
                assert!(driver_version().is_err() || driver_present);
            }
            Err(other) => panic!("probe must fail only with Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn device_info_prints_its_arch() {
        let d = DeviceInfo {
            ordinal: 1,
            name: "Test GPU".into(),
            compute_capability: (9, 0),
            total_memory: 80 << 30,
        };
        assert_eq!(d.arch(), "sm_90");
        assert_eq!(
            d.to_string(),
            "cuda:1 Test GPU (compute capability 9.0, 80.0 GiB)"
        );
    }
}

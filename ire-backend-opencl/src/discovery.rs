//! Device discovery that never panics and never sleeps.
//!
//! `ocl`'s platform helpers panic (`Platform::list`) or retry for ten seconds
//! (`core::get_platform_ids`) when no OpenCL platform is installed. Discovery therefore talks to
//! the ICD loader through the raw `clGetPlatformIDs` / `clGetDeviceIDs` / `clGet*Info` calls,
//! which answer at once, and only hands ids to `ocl` once a device is known to exist.

use std::ffi::c_void;
use std::fmt;
use std::ptr::null_mut;
use std::sync::OnceLock;

use ire_core::Error;
use ocl::core::ffi;

/// Environment variable that chooses the device: `P:D` (platform and device index), a single
/// index into the list [`probe`] returns, or a case-insensitive substring of the platform name,
/// device name or vendor. Unset, empty or `auto`: the first GPU, else the first accelerator,
/// else the first device.
pub const DEVICE_ENV: &str = "IRE_OPENCL_DEVICE";

/// Environment variable naming the backends a run requires (comma-separated, e.g.
/// `opencl,nvrtc`); when it names `opencl`, an absent device is an error instead of a skip.
pub const REQUIRE_ENV: &str = "IRE_REQUIRE";

/// The backend's name in errors and listings.
pub(crate) const BACKEND: &str = "opencl";

/// Kind of an OpenCL device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A CPU device (PoCL's `pthread`, Intel's CPU runtime).
    Cpu,
    /// A GPU.
    Gpu,
    /// An accelerator (FPGA, DSP, ...).
    Accelerator,
    /// Anything else (custom or default-only devices).
    Other,
}

impl DeviceKind {
    fn from_bits(bits: u64) -> Self {
        if bits & ffi::CL_DEVICE_TYPE_GPU != 0 {
            DeviceKind::Gpu
        } else if bits & ffi::CL_DEVICE_TYPE_ACCELERATOR != 0 {
            DeviceKind::Accelerator
        } else if bits & ffi::CL_DEVICE_TYPE_CPU != 0 {
            DeviceKind::Cpu
        } else {
            DeviceKind::Other
        }
    }

    /// Lower-case name (`cpu`, `gpu`, `accelerator`, `other`).
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Gpu => "gpu",
            DeviceKind::Accelerator => "accelerator",
            DeviceKind::Other => "other",
        }
    }
}

/// One OpenCL device as the ICD loader reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    /// Index of the platform in the loader's list.
    pub platform_index: usize,
    /// Index of the device within its platform.
    pub device_index: usize,
    /// Platform name (`Portable Computing Language`, `NVIDIA CUDA`, ...).
    pub platform: String,
    /// Device name.
    pub name: String,
    /// Device vendor.
    pub vendor: String,
    /// Device version string (`OpenCL 3.0 PoCL ...`).
    pub version: String,
    /// CPU, GPU, accelerator.
    pub kind: DeviceKind,
    /// Whether the device reports `cl_khr_fp64` (double precision).
    pub fp64: bool,
    /// Global memory in bytes.
    pub global_mem_bytes: u64,
    /// Largest single allocation in bytes.
    pub max_alloc_bytes: u64,
    /// Number of compute units.
    pub compute_units: u32,
    /// Largest work-group size.
    pub max_work_group_size: usize,
}

impl DeviceInfo {
    /// `P:D`, the selector that names exactly this device.
    pub fn selector(&self) -> String {
        format!("{}:{}", self.platform_index, self.device_index)
    }

    /// Whether this is a GPU.
    pub fn is_gpu(&self) -> bool {
        self.kind == DeviceKind::Gpu
    }
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({}, {}) [{}]: {}, fp64 {}, {:.1} GiB, {} compute units",
            self.selector(),
            self.name.trim(),
            self.platform.trim(),
            self.vendor.trim(),
            self.kind.name(),
            self.version.trim(),
            if self.fp64 { "yes" } else { "no" },
            self.global_mem_bytes as f64 / (1u64 << 30) as f64,
            self.compute_units
        )
    }
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable {
        backend: BACKEND.into(),
        reason: reason.into(),
    }
}

/// Number of OpenCL platforms, from one raw `clGetPlatformIDs` call, cached for the process.
///
/// `Ok(0)` when the loader finds no platform (`CL_PLATFORM_NOT_FOUND_KHR`); `Err` carries any
/// other OpenCL status code. Never panics, never sleeps.
pub fn platform_count() -> Result<u32, i32> {
    static COUNT: OnceLock<Result<u32, i32>> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let mut n: ffi::cl_uint = 0;
        // SAFETY: a count query: no output array, `n` outlives the call.
        let status = unsafe { ffi::clGetPlatformIDs(0, null_mut(), &mut n) };
        match status {
            0 => Ok(n),
            -1001 => Ok(0), // CL_PLATFORM_NOT_FOUND_KHR: the loader found no ICD.
            s => Err(s),
        }
    })
}

/// Raw platform ids (only called once `platform_count` is positive).
fn platform_ids(count: u32) -> Result<Vec<ffi::cl_platform_id>, Error> {
    let mut ids: Vec<ffi::cl_platform_id> = vec![null_mut(); count as usize];
    let mut got: ffi::cl_uint = 0;
    // SAFETY: `ids` has room for `count` ids; `got` outlives the call.
    let status = unsafe { ffi::clGetPlatformIDs(count, ids.as_mut_ptr(), &mut got) };
    if status != 0 {
        return Err(unavailable(format!(
            "clGetPlatformIDs failed with status {status}"
        )));
    }
    ids.truncate(got.min(count) as usize);
    Ok(ids)
}

/// Raw device ids of one platform (empty when it has none).
fn device_ids(platform: ffi::cl_platform_id) -> Vec<ffi::cl_device_id> {
    let mut n: ffi::cl_uint = 0;
    // SAFETY: a count query on a platform id the loader gave us.
    let status =
        unsafe { ffi::clGetDeviceIDs(platform, ffi::CL_DEVICE_TYPE_ALL, 0, null_mut(), &mut n) };
    if status != 0 || n == 0 {
        return Vec::new();
    }
    let mut ids: Vec<ffi::cl_device_id> = vec![null_mut(); n as usize];
    let mut got: ffi::cl_uint = 0;
    // SAFETY: `ids` has room for `n` ids.
    let status = unsafe {
        ffi::clGetDeviceIDs(
            platform,
            ffi::CL_DEVICE_TYPE_ALL,
            n,
            ids.as_mut_ptr(),
            &mut got,
        )
    };
    if status != 0 {
        return Vec::new();
    }
    ids.truncate(got.min(n) as usize);
    ids
}

/// One `clGetPlatformInfo` / `clGetDeviceInfo` answer as bytes (empty on failure).
fn info_bytes(query: impl Fn(usize, *mut c_void, *mut usize) -> i32) -> Vec<u8> {
    let mut size = 0usize;
    if query(0, null_mut(), &mut size) != 0 || size == 0 {
        return Vec::new();
    }
    let mut buf = vec![0u8; size];
    if query(size, buf.as_mut_ptr().cast(), null_mut()) != 0 {
        return Vec::new();
    }
    buf
}

fn platform_info(p: ffi::cl_platform_id, param: ffi::cl_uint) -> Vec<u8> {
    // SAFETY: the closure passes a buffer of the size it announces.
    info_bytes(|size, ptr, ret| unsafe { ffi::clGetPlatformInfo(p, param, size, ptr, ret) })
}

fn device_info(d: ffi::cl_device_id, param: ffi::cl_uint) -> Vec<u8> {
    // SAFETY: the closure passes a buffer of the size it announces.
    info_bytes(|size, ptr, ret| unsafe { ffi::clGetDeviceInfo(d, param, size, ptr, ret) })
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

fn uint(bytes: &[u8]) -> u64 {
    match bytes.len() {
        4 => bytes
            .try_into()
            .map(|b: [u8; 4]| u32::from_ne_bytes(b) as u64)
            .unwrap_or(0),
        8 => bytes.try_into().map(u64::from_ne_bytes).unwrap_or(0),
        _ => 0,
    }
}

/// A device the loader reported, with its raw ids for opening it.
#[derive(Clone, Debug)]
pub(crate) struct Found {
    pub info: DeviceInfo,
    pub platform: ffi::cl_platform_id,
    pub device: ffi::cl_device_id,
}

fn discover() -> Result<Vec<Found>, Error> {
    // PoCL's lazy device initialisation is not thread-safe (a concurrent second query can
    // report no device): one discovery at a time.
    static DISCOVERING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = DISCOVERING.lock().unwrap_or_else(|e| e.into_inner());
    let count = platform_count()
        .map_err(|s| unavailable(format!("clGetPlatformIDs failed with status {s}")))?;
    if count == 0 {
        return Err(unavailable(
            "no OpenCL platform: the ICD loader found no driver (install one, e.g. \
             pocl-opencl-icd, and check OCL_ICD_VENDORS)",
        ));
    }
    let mut out = Vec::new();
    for (pi, &p) in platform_ids(count)?.iter().enumerate() {
        let platform = text(platform_info(p, ffi::CL_PLATFORM_NAME));
        for (di, &d) in device_ids(p).iter().enumerate() {
            let extensions = text(device_info(d, ffi::CL_DEVICE_EXTENSIONS));
            let info = DeviceInfo {
                platform_index: pi,
                device_index: di,
                platform: platform.clone(),
                name: text(device_info(d, ffi::CL_DEVICE_NAME)),
                vendor: text(device_info(d, ffi::CL_DEVICE_VENDOR)),
                version: text(device_info(d, ffi::CL_DEVICE_VERSION)),
                kind: DeviceKind::from_bits(uint(&device_info(d, ffi::CL_DEVICE_TYPE))),
                fp64: extensions.split_whitespace().any(|e| e == "cl_khr_fp64"),
                global_mem_bytes: uint(&device_info(d, ffi::CL_DEVICE_GLOBAL_MEM_SIZE)),
                max_alloc_bytes: uint(&device_info(d, ffi::CL_DEVICE_MAX_MEM_ALLOC_SIZE)),
                compute_units: uint(&device_info(d, ffi::CL_DEVICE_MAX_COMPUTE_UNITS)) as u32,
                max_work_group_size: uint(&device_info(d, ffi::CL_DEVICE_MAX_WORK_GROUP_SIZE))
                    as usize,
            };
            out.push(Found {
                info,
                platform: p,
                device: d,
            });
        }
    }
    Ok(out)
}

/// Every OpenCL device of every platform, in loader order.
///
/// `Err(Error::Unavailable)` when no platform is installed; `Ok` with an empty list when
/// platforms exist but expose no device (PoCL hides its device when it cannot write its
/// kernel cache: set `POCL_CACHE_DIR` to a writable folder). Never panics, never sleeps.
pub fn probe() -> Result<Vec<DeviceInfo>, Error> {
    Ok(discover()?.into_iter().map(|f| f.info).collect())
}

/// Index into `devices` of the device `selector` names (see [`DEVICE_ENV`]).
pub fn select_device(devices: &[DeviceInfo], selector: &str) -> Result<usize, Error> {
    let listing = || {
        devices
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    if devices.is_empty() {
        return Err(unavailable(
            "OpenCL platforms exist but report no device (for PoCL, set POCL_CACHE_DIR to a \
             writable folder)",
        ));
    }
    let sel = selector.trim();
    if sel.is_empty() || sel.eq_ignore_ascii_case("auto") {
        let pick = |k: DeviceKind| devices.iter().position(|d| d.kind == k);
        return Ok(pick(DeviceKind::Gpu)
            .or_else(|| pick(DeviceKind::Accelerator))
            .unwrap_or(0));
    }
    if let Some((p, d)) = sel.split_once(':')
        && let (Ok(p), Ok(d)) = (p.trim().parse::<usize>(), d.trim().parse::<usize>())
    {
        return devices
            .iter()
            .position(|x| x.platform_index == p && x.device_index == d)
            .ok_or_else(|| {
                unavailable(format!(
                    "{DEVICE_ENV}={sel}: no device {p}:{d}; devices: {}",
                    listing()
                ))
            });
    }
    if let Ok(i) = sel.parse::<usize>() {
        return if i < devices.len() {
            Ok(i)
        } else {
            Err(unavailable(format!(
                "{DEVICE_ENV}={sel}: only {} device(s): {}",
                devices.len(),
                listing()
            )))
        };
    }
    let needle = sel.to_lowercase();
    devices
        .iter()
        .position(|d| {
            [&d.platform, &d.name, &d.vendor]
                .iter()
                .any(|s| s.to_lowercase().contains(&needle))
        })
        .ok_or_else(|| {
            unavailable(format!(
                "{DEVICE_ENV}={sel}: no device name, vendor or platform contains it; devices: {}",
                listing()
            ))
        })
}

/// The device `selector` names, with its raw ids.
pub(crate) fn find(selector: &str) -> Result<Found, Error> {
    let found = discover()?;
    let infos: Vec<DeviceInfo> = found.iter().map(|f| f.info.clone()).collect();
    let i = select_device(&infos, selector)?;
    found
        .into_iter()
        .nth(i)
        .ok_or_else(|| unavailable("device list changed during discovery"))
}

/// Whether [`REQUIRE_ENV`] names `opencl` (then an absent device must fail, not skip).
pub fn required_by_env() -> bool {
    std::env::var(REQUIRE_ENV)
        .map(|v| {
            v.split(',')
                .any(|s| s.trim().eq_ignore_ascii_case("opencl"))
        })
        .unwrap_or(false)
}

//! Run-time compilation of the portable kernel source with NVRTC (no GPU needed).

use std::ffi::{CString, c_char, c_int};

use cudarc::nvrtc::{result, sys};
use ire_core::kernels::{Dialect, NVRTC_OPTIONS, program_source};
use ire_core::{DType, Error};

use crate::driver::{BACKEND, unavailable};

/// NVRTC entry points this crate calls. cudarc panics on a missing symbol, so their presence
/// is checked first and an old library is reported as unavailable instead.
const NVRTC_SYMBOLS: &[&str] = &[
    "nvrtcVersion",
    "nvrtcCreateProgram",
    "nvrtcCompileProgram",
    "nvrtcDestroyProgram",
    "nvrtcGetProgramLogSize",
    "nvrtcGetProgramLog",
    "nvrtcGetPTXSize",
    "nvrtcGetPTX",
    "nvrtcGetCUBINSize",
    "nvrtcGetCUBIN",
    "nvrtcGetNumSupportedArchs",
    "nvrtcGetSupportedArchs",
];

fn device_error(message: impl Into<String>) -> Error {
    Error::Device {
        backend: BACKEND.into(),
        message: message.into(),
    }
}

/// Checks that NVRTC can be loaded and returns its version `(major, minor)`.
///
/// Never panics: a missing library (or one too old to have every entry point used here) is
/// [`Error::Unavailable`] with the reason and the fix.
pub fn nvrtc_version() -> Result<(i32, i32), Error> {
    // SAFETY: probing for the library only tries to dlopen candidate names.
    if !unsafe { sys::is_culib_present() } {
        return Err(unavailable(
            "NVRTC (libnvrtc.so) was not found: install the CUDA toolkit's NVRTC or the PyPI \
             wheel nvidia-cuda-nvrtc-cu12, and put its library folder on LD_LIBRARY_PATH",
        ));
    }
    // SAFETY: the library is present (checked above), so `culib` loads it without panicking;
    // looking a symbol up does not call it.
    let lib = unsafe { sys::culib() };
    for name in NVRTC_SYMBOLS {
        // SAFETY: as above; the symbol is only looked up.
        if unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err() {
            return Err(unavailable(format!(
                "the NVRTC library found lacks `{name}` (CUDA 11.2 or newer is needed)"
            )));
        }
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: both pointers are valid for writes.
    let status = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    status
        .result()
        .map_err(|e| unavailable(format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

/// Whether NVRTC can be loaded.
pub fn nvrtc_available() -> bool {
    nvrtc_version().is_ok()
}

/// The real architectures (`sm_XY` as the number `XY`) this NVRTC can compile for.
pub fn supported_archs() -> Result<Vec<u32>, Error> {
    nvrtc_version()?;
    let mut n: c_int = 0;
    // SAFETY: `n` is valid for writes.
    unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }
        .result()
        .map_err(|e| device_error(format!("nvrtcGetNumSupportedArchs: {e:?}")))?;
    let mut archs: Vec<c_int> = vec![0; usize::try_from(n).unwrap_or(0)];
    if !archs.is_empty() {
        // SAFETY: the buffer holds exactly the number of entries NVRTC reported.
        unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
            .result()
            .map_err(|e| device_error(format!("nvrtcGetSupportedArchs: {e:?}")))?;
    }
    Ok(archs
        .into_iter()
        .filter_map(|a| u32::try_from(a).ok())
        .collect())
}

/// The output of one NVRTC compilation.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The PTX text.
    pub ptx: String,
    /// Device code for a real architecture (`sm_XY` targets only).
    pub cubin: Option<Vec<u8>>,
    /// NVRTC's log: empty when the source compiled without a warning.
    pub log: String,
    /// The options NVRTC was given.
    pub options: Vec<String>,
}

/// Destroys the program when dropped (also on the error paths).
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the handle came from `create_program` and is destroyed exactly once.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

fn c_chars_to_string(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// An architecture name NVRTC accepts: `sm_XY`, `compute_XY` (with an optional letter suffix).
fn check_arch(arch: &str) -> Result<(), Error> {
    let digits = arch
        .strip_prefix("sm_")
        .or_else(|| arch.strip_prefix("compute_"));
    let ok = digits.is_some_and(|d| {
        let d = d.trim_end_matches(|c: char| c.is_ascii_lowercase());
        !d.is_empty() && d.len() <= 4 && d.chars().all(|c| c.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Unsupported {
            backend: BACKEND.into(),
            what: format!("GPU architecture `{arch}` (expected sm_XY or compute_XY)"),
        })
    }
}

/// Compiles CUDA C++ `source` with [`NVRTC_OPTIONS`] for `arch` (`sm_90`, `compute_80`, ...;
/// `None`: NVRTC's default architecture). A compile error returns [`Error::Device`] carrying
/// NVRTC's log; warnings are kept in [`Compiled::log`].
pub fn compile_source(source: &str, arch: Option<&str>) -> Result<Compiled, Error> {
    nvrtc_version()?;
    if let Some(a) = arch {
        check_arch(a)?;
    }
    let src = CString::new(source).map_err(|_| device_error("kernel source contains a NUL"))?;
    let prog = Program(
        result::create_program(&src, Some(c"ire_ops.cu"))
            .map_err(|e| device_error(format!("nvrtcCreateProgram: {e:?}")))?,
    );
    let mut options: Vec<String> = NVRTC_OPTIONS.iter().map(|o| (*o).to_owned()).collect();
    if let Some(a) = arch {
        options.push(format!("--gpu-architecture={a}"));
    }
    // SAFETY: `prog` is a live program; options hold no NUL (fixed text and a checked arch).
    let status = unsafe { result::compile_program(prog.0, &options) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(prog.0) }
        .map(|raw| c_chars_to_string(&raw))
        .unwrap_or_default();
    if let Err(e) = status {
        return Err(device_error(format!(
            "NVRTC could not compile the kernels ({e:?}), options {options:?}:\n{log}"
        )));
    }
    // SAFETY: `prog` compiled successfully.
    let ptx = unsafe { result::get_ptx(prog.0) }
        .map(|raw| c_chars_to_string(&raw))
        .map_err(|e| device_error(format!("nvrtcGetPTX: {e:?}")))?;
    let cubin = if arch.is_some_and(|a| a.starts_with("sm_")) {
        cubin_of(&prog)
    } else {
        None
    };
    Ok(Compiled {
        ptx,
        cubin,
        log: log.trim().to_owned(),
        options,
    })
}

fn cubin_of(prog: &Program) -> Option<Vec<u8>> {
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; `size` is valid for writes.
    unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }
        .result()
        .ok()?;
    if size == 0 {
        return None;
    }
    let mut image = vec![0u8; size];
    // SAFETY: the buffer holds the `size` bytes NVRTC reported.
    unsafe { sys::nvrtcGetCUBIN(prog.0, image.as_mut_ptr().cast::<c_char>()) }
        .result()
        .ok()?;
    Some(image)
}

/// Compiles the portable kernel program of `dtype` (`F32` or `F64`) for `arch`.
pub fn compile_program(dtype: DType, arch: Option<&str>) -> Result<Compiled, Error> {
    if !matches!(dtype, DType::F32 | DType::F64) {
        return Err(Error::Unsupported {
            backend: BACKEND.into(),
            what: format!(
                "a kernel program for {} (byte kernels live in the f32 program)",
                dtype.name()
            ),
        });
    }
    compile_source(&program_source(Dialect::Cuda, dtype), arch)
}

/// The PTX of the portable kernel program of `dtype` for `arch` (`None`: NVRTC's default).
/// Needs NVRTC only, not a GPU.
pub fn compile_ptx(dtype: DType, arch: Option<&str>) -> Result<String, Error> {
    compile_program(dtype, arch).map(|c| c.ptx)
}

/// The compile target for a device of compute capability `cc`, given the real architectures
/// NVRTC supports: `sm_XY` when NVRTC knows the device (device code, no JIT), else PTX for the
/// newest older virtual architecture (`compute_XY`), which the driver JIT-compiles.
pub(crate) fn choose_target(cc: (u32, u32), supported: &[u32]) -> Result<String, Error> {
    let want = cc.0 * 10 + cc.1;
    if supported.contains(&want) {
        return Ok(format!("sm_{want}"));
    }
    match supported.iter().copied().filter(|&a| a <= want).max() {
        Some(best) => Ok(format!("compute_{best}")),
        None => Err(unavailable(format!(
            "NVRTC supports architectures {supported:?}, none at or below the device's sm_{want}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn target_is_the_device_arch_or_older_ptx() {
        let s = [50, 52, 60, 70, 75, 80, 86, 89, 90];
        assert_eq!(choose_target((9, 0), &s).unwrap(), "sm_90");
        assert_eq!(choose_target((8, 6), &s).unwrap(), "sm_86");
        // A device newer than NVRTC: PTX of the newest arch NVRTC has, JIT by the driver.
        assert_eq!(choose_target((12, 0), &s).unwrap(), "compute_90");
        assert_eq!(choose_target((8, 7), &s).unwrap(), "compute_86");
        // Older than anything NVRTC supports: unavailable.
        assert!(matches!(
            choose_target((3, 5), &s),
            Err(Error::Unavailable { .. })
        ));
    }

    #[test]
    fn arch_names_are_validated_before_nvrtc_sees_them() {
        for ok in ["sm_90", "sm_90a", "compute_80", "sm_100", "sm_120f"] {
            assert!(check_arch(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "sm_",
            "90",
            "sm_9x0",
            "compute_80 --x",
            "sm_90\0",
            "gfx90a",
        ] {
            assert!(
                matches!(check_arch(bad), Err(Error::Unsupported { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn u8_has_no_program_of_its_own() {
        assert!(matches!(
            compile_program(DType::U8, None),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn c_strings_stop_at_the_nul() {
        let raw: Vec<c_char> = b"ab\0cd".iter().map(|&b| b as c_char).collect();
        assert_eq!(c_chars_to_string(&raw), "ab");
    }
}

//! Every kernel of the portable source compiles with NVRTC, without a warning, for Hopper
//! (`sm_90`) and for NVRTC's default architecture, in both programs. Needs NVRTC, not a GPU.
//!
//! Without NVRTC each test prints a skip line and passes, unless `IRE_REQUIRE` names `nvrtc`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cuda::{compile_program, compile_source, nvrtc_version};
use ire_core::kernels::{NVRTC_OPTIONS, kernel_names};
use ire_core::{DType, Error};

fn required(what: &str) -> bool {
    std::env::var("IRE_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim().eq_ignore_ascii_case(what))
}

/// `true` when NVRTC is there; otherwise prints the skip line (or fails under IRE_REQUIRE).
fn nvrtc_or_skip(test: &str) -> bool {
    match nvrtc_version() {
        Ok(_) => true,
        Err(e) => {
            assert!(
                !required("nvrtc"),
                "IRE_REQUIRE names nvrtc but NVRTC cannot be loaded: {e}"
            );
            println!("skipped {test}: {e}");
            false
        }
    }
}

/// Names of the `.entry` points of a PTX text.
fn entries(ptx: &str) -> Vec<&str> {
    ptx.split(".entry ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .map(str::trim)
        .collect()
}

#[test]
fn every_kernel_compiles_to_ptx_without_warnings() {
    if !nvrtc_or_skip("every_kernel_compiles_to_ptx_without_warnings") {
        return;
    }
    let (major, minor) = nvrtc_version().unwrap();
    let names: Vec<&str> = kernel_names().collect();
    assert!(names.len() >= 20, "too few kernels parsed: {names:?}");
    for arch in [Some("sm_90"), None] {
        for dtype in [DType::F32, DType::F64] {
            let what = format!(
                "{} program, arch {arch:?}, NVRTC {major}.{minor}",
                dtype.name()
            );
            let c = compile_program(dtype, arch).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                c.log.is_empty(),
                "{what}: NVRTC reported warnings:\n{}",
                c.log
            );
            for o in NVRTC_OPTIONS {
                assert!(
                    c.options.iter().any(|x| x == o),
                    "{what}: option {o} missing"
                );
            }
            // Exactly the kernels of the source, each an entry point of the PTX.
            let mut got = entries(&c.ptx);
            let mut want = names.clone();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{what}: PTX entry points");
            match arch {
                Some(a) => {
                    assert!(c.ptx.contains(&format!(".target {a}")), "{what}: target");
                    let cubin = c.cubin.as_deref().expect("device code for a real arch");
                    assert_eq!(&cubin[..4], b"\x7fELF", "{what}: cubin is not ELF");
                }
                None => assert!(c.ptx.contains(".target sm_"), "{what}: target"),
            }
            // What makes element-wise results bitwise: no contraction into FMA, IEEE
            // division and square root, no flush of subnormals.
            for banned in ["fma.", ".approx", ".ftz", "div.full"] {
                assert!(!c.ptx.contains(banned), "{what}: PTX contains `{banned}`");
            }
            if dtype == DType::F64 {
                assert!(c.ptx.contains("div.rn.f64") && c.ptx.contains("sqrt.rn.f64"));
                assert!(
                    !c.ptx.contains(".f32 "),
                    "{what}: f32 arithmetic in the f64 program"
                );
            } else {
                assert!(c.ptx.contains("div.rn.f32") && c.ptx.contains("sqrt.rn.f32"));
            }
        }
    }
}

#[test]
fn compile_errors_and_warnings_come_back_with_the_log() {
    if !nvrtc_or_skip("compile_errors_and_warnings_come_back_with_the_log") {
        return;
    }
    let bad = "extern \"C\" __global__ void k(float* x) { x[0] = not_declared_anywhere; }";
    match compile_source(bad, None) {
        Err(Error::Device { message, .. }) => {
            assert!(message.contains("not_declared_anywhere"), "{message}")
        }
        other => panic!("a compile error must be Err(Device), got {other:?}"),
    }
    // A warning does not fail the compilation but is in the log (the check above relies
    // on that).
    let warns = "extern \"C\" __global__ void k(float* x) { int unused_here; x[0] = 1.0f; }";
    let c = compile_source(warns, Some("sm_90")).unwrap();
    assert!(c.log.contains("warning"), "log: {:?}", c.log);
    assert!(entries(&c.ptx).contains(&"k"));
    // Bad architecture names are refused before NVRTC sees them.
    assert!(matches!(
        compile_source(warns, Some("sm_90 --fmad=true")),
        Err(Error::Unsupported { .. })
    ));
}

/// Every kernel's `.param` list in the PTX has the types the runtime's launches pass for the
/// arguments the device layer checks against the source: the widths of `T`, `KEY`, `INDEX`,
/// `U32`, `U8` and pointers agree, in both programs, with no GPU.
#[test]
fn launch_widths_match_the_ptx_parameters() {
    use ire_backend_cuda::ptx_param_type;
    use ire_core::device::KernelArg;
    use ire_core::device::signature::{Param, parse};
    use ire_core::kernels::OPS_SOURCE;
    if !nvrtc_or_skip("launch_widths_match_the_ptx_parameters") {
        return;
    }
    let sigs = parse(OPS_SOURCE).unwrap();
    for dtype in [DType::F32, DType::F64] {
        let c = compile_program(dtype, Some("sm_90")).unwrap();
        for sig in &sigs {
            // The PTX parameter types of this entry, in order.
            let entry = c
                .ptx
                .split(".entry ")
                .find(|e| {
                    e.trim_start().starts_with(sig.name)
                        && e[sig.name.len()..].trim_start().starts_with('(')
                })
                .unwrap_or_else(|| panic!("{} missing from the PTX", sig.name));
            let list = &entry[entry.find('(').unwrap() + 1..entry.find(')').unwrap()];
            let ptx: Vec<&str> = list
                .split(',')
                .map(|p| p.split_whitespace().nth(1).unwrap().trim_start_matches('.'))
                .collect();
            let passed: Vec<&str> = sig
                .params
                .iter()
                .map(|p| {
                    let a: KernelArg<'_, ()> = match p {
                        Param::Ptr { .. } => KernelArg::In(None, dtype),
                        Param::Real => KernelArg::Real(0.0),
                        Param::U8 => KernelArg::U8(0),
                        Param::U32 => KernelArg::U32(0),
                        Param::Index => KernelArg::Index(0),
                        Param::Key => KernelArg::Key(0),
                    };
                    ptx_param_type(&a, dtype)
                })
                .collect();
            assert_eq!(ptx, passed, "{} ({} program)", sig.name, dtype.name());
        }
    }
}

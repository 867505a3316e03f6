//! The neural-network kernels compile with NVRTC, without a warning, for Hopper (`sm_90`) and
//! for NVRTC's default architecture, in both programs, and every kernel's parameter list is
//! one the CUDA launches can pass. Needs NVRTC, not a GPU.
//!
//! Without NVRTC the test prints a skip line and passes, unless `IRE_REQUIRE` names `nvrtc`.

#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cuda::{compile_source, nvrtc_version};
use ire_core::DType;
use ire_core::device::signature::parse;
use ire_core::kernels::{Dialect, extension_source, kernel_names_in};
use ire_models::nn::device::NN_KERNELS;

fn required(what: &str) -> bool {
    std::env::var("IRE_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim().eq_ignore_ascii_case(what))
}

#[test]
fn nn_kernels_compile_to_ptx_without_warnings() {
    let names: Vec<&str> = kernel_names_in(NN_KERNELS.source).collect();
    assert!(names.len() >= 25, "too few kernels parsed: {names:?}");
    // The CUDA launch reads the same parameter lists; a type it cannot pass fails here.
    assert_eq!(parse(NN_KERNELS.source).unwrap().len(), names.len());
    if let Err(e) = nvrtc_version() {
        assert!(
            !required("nvrtc"),
            "IRE_REQUIRE names nvrtc but NVRTC cannot be loaded: {e}"
        );
        println!("skipped nn_kernels_compile_to_ptx_without_warnings: {e}");
        return;
    }
    for arch in [Some("sm_90"), None] {
        for dtype in [DType::F32, DType::F64] {
            let what = format!("{} NN program, arch {arch:?}", dtype.name());
            let src = extension_source(Dialect::Cuda, dtype, &NN_KERNELS);
            let c = compile_source(&src, arch).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(c.log.is_empty(), "{what}: NVRTC warnings:\n{}", c.log);
            let mut got: Vec<&str> = c
                .ptx
                .split(".entry ")
                .skip(1)
                .filter_map(|rest| rest.split('(').next())
                .map(str::trim)
                .collect();
            let mut want = names.clone();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{what}: PTX entry points");
        }
    }
}

//! The conformance suite of `ire-core`, on the first CUDA device.
//!
//! Without a usable GPU (no driver, no device, no NVRTC) each test prints a skip line and
//! passes, unless `IRE_REQUIRE` names `cuda`: then the reason is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cuda::CudaBackend;

fn make_backend() -> Option<CudaBackend> {
    let required = std::env::var("IRE_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim().eq_ignore_ascii_case("cuda"));
    match CudaBackend::from_env() {
        Ok(b) => {
            println!("cuda: {} (kernels for {})", b.device(), b.target());
            Some(b)
        }
        Err(e) if required => panic!("IRE_REQUIRE names cuda but no GPU is usable: {e}"),
        Err(e) => {
            println!("cuda unavailable: {e}");
            None
        }
    }
}

ire_core::conformance_tests!(make_backend());

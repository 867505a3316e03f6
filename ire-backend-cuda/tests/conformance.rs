//! The conformance suite of `ire-core`, on the first CUDA device.
//!
//! Without a usable GPU (no driver, no device, no NVRTC) each test prints a skip line and
//! passes, unless `IRE_REQUIRE` names `cuda`: then the reason is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cuda::{CudaBackend, required_by_env};
use ire_core::device::SelectionPath;

fn make_backend() -> Option<CudaBackend> {
    let required = required_by_env("cuda");
    match ire_backend_cuda::from_env() {
        Ok(b) => {
            let rt = b.runtime();
            println!("cuda: {} (kernels for {})", rt.info(), rt.target());
            Some(b)
        }
        Err(e) if required => panic!("IRE_REQUIRE names cuda but no GPU is usable: {e}"),
        Err(e) => {
            println!("cuda unavailable: {e}");
            None
        }
    }
}

ire_conformance::conformance_tests!(make_backend());

/// The same suite with the selection on the host, and with a small histogram budget (the
/// read-back path very large estimates take).
mod other_paths {
    use super::*;
    fn host() -> Option<CudaBackend> {
        make_backend().map(|b| b.with_selection_path(SelectionPath::Host))
    }
    fn tight() -> Option<CudaBackend> {
        make_backend().map(|b| {
            b.with_selection_path(SelectionPath::Device)
                .with_histogram_budget(1000)
        })
    }
    mod host_selection {
        ire_conformance::conformance_tests!(super::host());
    }
    mod histogram_budget {
        ire_conformance::conformance_tests!(super::tight());
    }
}

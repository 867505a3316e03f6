//! The backend the tests run on, opened once per test binary.
#![allow(clippy::panic, dead_code)]

use std::sync::OnceLock;

use ire_backend_opencl::{OpenClBackend, required_by_env};
use ire_core::Error;

/// The shared backend, or `None` (with a printed reason) when OpenCL is absent and
/// `IRE_REQUIRE` does not name `opencl`; with `IRE_REQUIRE=opencl`, absence panics.
pub fn make_backend() -> Option<OpenClBackend> {
    static BACKEND: OnceLock<Result<Option<OpenClBackend>, String>> = OnceLock::new();
    let b = BACKEND.get_or_init(|| match ire_backend_opencl::open() {
        Ok(b) => {
            println!("opencl device: {}", b.runtime().info());
            Ok(Some(b))
        }
        Err(e @ Error::Unavailable { .. }) if !required_by_env() => {
            println!("opencl tests skipped: {e}");
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    });
    match b {
        Ok(b) => b.clone(),
        Err(e) => panic!("OpenCL backend required (IRE_REQUIRE) but not usable: {e}"),
    }
}

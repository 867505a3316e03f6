//! The `ire-core` conformance suite on the OpenCL backend: element-wise ops bit for bit
//! against the reference, reductions within the tolerance table, selection exact.

mod common;

use common::make_backend;

ire_conformance::conformance_tests!(make_backend());

/// The same suite with the selection on the device and a small histogram budget (the
/// read-back path very large estimates take), and with the selection on the host.
mod other_paths {
    use ire_core::device::SelectionPath;

    fn device_tight() -> Option<ire_backend_opencl::OpenClBackend> {
        super::make_backend().map(|b| {
            b.with_selection_path(SelectionPath::Device)
                .with_histogram_budget(1000)
        })
    }
    fn host() -> Option<ire_backend_opencl::OpenClBackend> {
        super::make_backend().map(|b| b.with_selection_path(SelectionPath::Host))
    }
    mod device_selection {
        ire_conformance::conformance_tests!(super::device_tight());
    }
    mod host_selection {
        ire_conformance::conformance_tests!(super::host());
    }
}

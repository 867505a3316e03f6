//! The `ire-core` conformance suite on the OpenCL backend: element-wise ops bit for bit
//! against the reference, reductions within the tolerance table, selection exact.

mod common;

use common::make_backend;

ire_core::conformance_tests!(make_backend());

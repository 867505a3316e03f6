//! The conformance suite of `ire-core`, on the CPU backend: on rayon's global pool with the
//! default task size; on a two-thread pool with tiny tasks, so that every size of the suite
//! crosses many task boundaries; and with the AVX2 kernels turned off.

ire_conformance::conformance_tests!(Some(ire_backend_cpu::CpuBackend::new()));

mod small_tasks {
    fn backend() -> Option<ire_backend_cpu::CpuBackend> {
        ire_backend_cpu::CpuBackend::with_threads(2)
            .ok()
            .map(|b| b.with_chunk_len(100))
    }
    ire_conformance::conformance_tests!(backend());
}

mod base_target_kernels {
    fn backend() -> Option<ire_backend_cpu::CpuBackend> {
        Some(ire_backend_cpu::CpuBackend::new().with_wide_simd(false))
    }
    ire_conformance::conformance_tests!(backend());
}

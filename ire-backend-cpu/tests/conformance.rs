//! The conformance suite of `ire-core`, on the CPU backend: once on rayon's global pool with
//! the default task size, once on a two-thread pool with tiny tasks, so that every size of
//! the suite crosses many task boundaries.

ire_core::conformance_tests!(Some(ire_backend_cpu::CpuBackend::new()));

mod small_tasks {
    fn backend() -> Option<ire_backend_cpu::CpuBackend> {
        ire_backend_cpu::CpuBackend::with_threads(2)
            .ok()
            .map(|b| b.with_chunk_len(100))
    }
    ire_core::conformance_tests!(backend());
}

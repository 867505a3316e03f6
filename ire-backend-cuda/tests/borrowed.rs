//! The backend on device memory and a stream the caller owns (a framework's tensor and its
//! current stream): AdmIRE in place, equal to the reference bit for bit. Needs a GPU: without
//! one the test prints a skip line (or fails when `IRE_REQUIRE` names `cuda`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cuda::cudarc::driver::{CudaContext, DevicePtr};
use ire_backend_cuda::{Cuda, CudaMem, required_by_env};
use ire_conformance::borrowed;
use ire_core::{DeviceBackend, DeviceBuffer};

#[test]
fn admire_steps_in_place_on_a_callers_memory_and_stream() {
    if let Err(e) = ire_backend_cuda::probe().and_then(|d| {
        if d.is_empty() {
            Err(ire_core::Error::Unavailable {
                backend: "cuda".into(),
                reason: "no GPU".into(),
            })
        } else {
            Ok(d)
        }
    }) {
        assert!(!required_by_env("cuda"), "IRE_REQUIRE names cuda: {e}");
        println!("skipped: {e}");
        return;
    }
    // "The framework": its context, stream and tensors, made with cudarc directly.
    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    let n = 100_003;
    let theta0 = borrowed::theta0(n);
    let p_slice = stream.clone_htod(&theta0).unwrap();
    let (p_ptr, _g) = p_slice.device_ptr(&stream);
    // SAFETY: the stream belongs to the primary context of device 0 and outlives `rt`.
    let rt = unsafe { Cuda::on_stream(0, stream.cu_stream()) }.unwrap();
    let b = DeviceBackend::new(rt);
    // SAFETY: the slice holds n f32 and outlives the buffer; all work is on `stream`.
    let mut p: DeviceBuffer<Cuda, f32> =
        DeviceBuffer::from_mem("cuda", unsafe { CudaMem::borrow(p_ptr, n * 4) }, n).unwrap();
    let want = borrowed::admire_in_place(&b, &mut p, |g| {
        let g_slice = stream.clone_htod(g).unwrap();
        // The guard only orders other streams' access; all the work here is on `stream`.
        let (g_ptr, _) = g_slice.device_ptr(&stream);
        // SAFETY: the slice holds n f32 and is returned with the buffer, so it outlives it.
        let mem = unsafe { CudaMem::borrow(g_ptr, n * 4) };
        (g_slice, DeviceBuffer::from_mem("cuda", mem, n).unwrap())
    });
    drop(p);
    let got = stream.clone_dtoh(&p_slice).unwrap();
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

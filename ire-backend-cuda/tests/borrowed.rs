//! The backend on device memory and a stream the caller owns (a framework's tensor and its
//! current stream): AdmIRE in place, equal to the reference bit for bit. Needs a GPU: without
//! one the test prints a skip line (or fails when `IRE_REQUIRE` names `cuda`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cuda::cudarc::driver::{CudaContext, DevicePtr};
use ire_backend_cuda::{Cuda, CudaMem, required_by_env};
use ire_core::optim::EstimateInput;
use ire_core::{
    AdamW, AdamWConfig, Backend, DeviceBackend, DeviceBuffer, Ire, IreConfig, IreStep, Reference,
};

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
    let theta0: Vec<f32> = (0..n)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let p_slice = stream.clone_htod(&theta0).unwrap();
    let (p_ptr, _g) = p_slice.device_ptr(&stream);
    // SAFETY: the stream belongs to the primary context of device 0 and outlives `rt`.
    let rt = unsafe { Cuda::on_stream(0, stream.cu_stream()) }.unwrap();
    let b = DeviceBackend::new(rt);
    // SAFETY: the slice holds n f32 and outlives the buffer; all work is on `stream`.
    let mut p: DeviceBuffer<Cuda, f32> =
        DeviceBuffer::from_mem("cuda", unsafe { CudaMem::borrow(p_ptr, n * 4) }, n).unwrap();
    let cfg = IreConfig {
        refresh_every: 2,
        ..IreConfig::default()
    };
    let mut dev_opt = Ire::new(AdamW::new(AdamWConfig::default()).unwrap(), cfg).unwrap();
    let mut oracle = Ire::new(AdamW::new(AdamWConfig::default()).unwrap(), cfg).unwrap();
    let mut q = vec![Reference.alloc_from(&theta0).unwrap()];
    for t in 0..6 {
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 13 + t * 7) % 97) as f32 / 40.0 - 1.2)
            .collect();
        let g_slice = stream.clone_htod(&g).unwrap();
        let (g_ptr, _gg) = g_slice.device_ptr(&stream);
        // SAFETY: as above.
        let gb = DeviceBuffer::<Cuda, f32>::from_mem(
            "cuda",
            unsafe { CudaMem::borrow(g_ptr, n * 4) },
            n,
        )
        .unwrap();
        let due = dev_opt.refresh_due();
        dev_opt
            .step(
                &b,
                std::slice::from_mut(&mut p),
                std::slice::from_ref(&gb),
                IreStep {
                    lr: 1e-2,
                    estimate: due.then_some(EstimateInput::Gradient(std::slice::from_ref(&gb))),
                },
            )
            .unwrap();
        let rg = vec![Reference.alloc_from(&g).unwrap()];
        let due = oracle.refresh_due();
        oracle
            .step(
                &Reference,
                &mut q,
                &rg,
                IreStep {
                    lr: 1e-2,
                    estimate: due.then_some(EstimateInput::Gradient(&rg)),
                },
            )
            .unwrap();
    }
    drop(p);
    let got = stream.clone_dtoh(&p_slice).unwrap();
    let want = Reference.to_vec(&q[0]).unwrap();
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

//! The backend on memory and a queue the caller owns: a framework's `cl_mem` wrapped without a
//! copy, operations queued on the framework's own queue, results in the framework's buffer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use ire_backend_opencl::{ClMem, OpenCl};
use ire_conformance::borrowed;
use ire_core::{Backend, DeviceBackend, DeviceBuffer};
use ocl::core::{self, MemFlags};

/// A buffer created by "the framework" on the backend's context, filled from `v`.
fn framework_buffer(rt: &OpenCl, v: &[f32]) -> core::Mem {
    // SAFETY: the host pointer is only read while the buffer is created (COPY_HOST_PTR).
    unsafe {
        core::create_buffer(
            rt.context(),
            MemFlags::new().read_write().copy_host_ptr(),
            v.len(),
            Some(v),
        )
    }
    .unwrap()
}

fn read_framework(rt: &OpenCl, m: &core::Mem, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    // SAFETY: a blocking read into a vector that outlives it.
    unsafe { core::enqueue_read_buffer(rt.queue(), m, true, 0, &mut out, None::<()>, None::<()>) }
        .unwrap();
    out
}

#[test]
fn admire_steps_in_place_on_a_callers_buffer_and_queue() {
    let Some(owned_backend) = common::make_backend() else {
        println!("skipped: OpenCL unavailable");
        return;
    };
    let info = owned_backend.runtime().info().clone();
    // The framework's queue on the same context, and its parameter and gradient buffers.
    let rt = owned_backend.runtime();
    let dev = core::get_command_queue_info(rt.queue(), core::CommandQueueInfo::Device).unwrap();
    let core::CommandQueueInfoResult::Device(dev) = dev else {
        panic!("no device")
    };
    let queue = core::create_command_queue(rt.context(), dev, None).unwrap();
    let n = 10_007;
    let theta0 = borrowed::theta0(n);
    let p_mem = framework_buffer(rt, &theta0);
    let on_queue = DeviceBackend::new(OpenCl::on_queue(&queue, info).unwrap());
    let mut p: DeviceBuffer<OpenCl, f32> =
        DeviceBuffer::from_mem("opencl", ClMem::borrow(&p_mem).unwrap(), n).unwrap();
    let want = borrowed::admire_in_place(&on_queue, &mut p, |g| {
        let g_mem = framework_buffer(rt, g);
        let gb = DeviceBuffer::from_mem("opencl", ClMem::borrow(&g_mem).unwrap(), n).unwrap();
        (g_mem, gb)
    });
    // The framework's own buffer holds the result, bit for bit the reference's.
    let got = read_framework(rt, &p_mem, n);
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    assert_ne!(got, theta0);
    // Dropping the wrapper leaves the framework's buffer alive and intact.
    drop(p);
    assert_eq!(read_framework(rt, &p_mem, n), got);
    // A wrapper longer than the memory is refused, not trusted.
    assert!(
        DeviceBuffer::<OpenCl, f32>::from_mem("opencl", ClMem::borrow(&p_mem).unwrap(), n + 1)
            .is_err()
    );
    let _ = owned_backend.name();
}

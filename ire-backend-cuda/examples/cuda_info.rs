//! Reports what the CUDA backend finds: driver, devices, NVRTC and the compile target, then
//! opens each device and runs one kernel. Exits non-zero when no device is usable.
//!
//! `cargo run --release -p ire-backend-cuda --example cuda_info`

use std::process::ExitCode;

use ire_backend_cuda::{driver_version, nvrtc_version, probe, supported_archs};
use ire_core::Backend;

fn main() -> ExitCode {
    match driver_version() {
        Ok((major, minor)) => println!("driver: supports CUDA {major}.{minor}"),
        Err(e) => println!("driver: {e}"),
    }
    match nvrtc_version() {
        Ok((major, minor)) => println!(
            "nvrtc: {major}.{minor}, architectures {:?}",
            supported_archs()
        ),
        Err(e) => println!("nvrtc: {e}"),
    }
    let devices = match probe() {
        Ok(d) => d,
        Err(e) => {
            println!("devices: none ({e})");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for d in &devices {
        println!("device: {d}");
        match smoke(d.ordinal) {
            Ok(target) => println!("  kernels compiled for {target}, axpy ran and matched"),
            Err(e) => {
                println!("  FAILED: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Opens the device and checks one small axpy against its exact result.
fn smoke(ordinal: usize) -> Result<String, ire_core::Error> {
    let b = ire_backend_cuda::open(ordinal)?;
    let mut y = b.alloc_from(&[1.0f32, 2.0, 3.0])?;
    let x = b.alloc_from(&[0.5f32, 0.25, -1.0])?;
    b.axpy(&mut y, 2.0, &x)?;
    let got = b.to_vec(&y)?;
    if got != [2.0, 2.5, 1.0] {
        return Err(ire_core::Error::Device {
            backend: "cuda".into(),
            message: format!("axpy gave {got:?}, expected [2.0, 2.5, 1.0]"),
        });
    }
    Ok(b.runtime().target().to_owned())
}

//! Prints how far the device reductions are from the reference backend (|Δ|, relative, ulp)
//! for `f32` and `f64` at several sizes; element-wise ops are bitwise (see the conformance
//! tests), so only reductions are listed.
//!
//! `cargo run --release -p ire-backend-opencl --example equivalence`

use ire_conformance::{Rng, ulp_distance};
use ire_core::{Backend, DType, Scalar};

fn report<T: Scalar>(b: &ire_backend_opencl::OpenClBackend) -> Result<(), ire_core::Error> {
    let mut worst = [(0.0f64, 0u64), (0.0f64, 0u64)];
    for n in [1usize, 257, 4099, 100_003, 1_000_003, 4_200_011] {
        let mut rng = Rng::new(n as u64);
        let (x, y) = (rng.values::<T>(n), rng.values::<T>(n));
        let (dx, dy) = (b.alloc_from(&x)?, b.alloc_from(&y)?);
        let pairs = [
            (
                "sum_squares",
                b.sum_squares(&dx)?,
                ire_core::host::sum_squares(&x),
            ),
            (
                "sum_squares_product",
                b.sum_squares_product(&dx, &dy)?,
                ire_core::host::sum_squares_product(&x, &y),
            ),
        ];
        for (i, (op, got, want)) in pairs.into_iter().enumerate() {
            let d = (got.as_f64() - want.as_f64()).abs();
            let rel = d / want.as_f64().abs().max(1e-300);
            let ulp = ulp_distance(got, want);
            worst[i] = (worst[i].0.max(rel), worst[i].1.max(ulp));
            println!(
                "{} {op:<20} n = {n:>8}: |Δ| = {d:.3e}, rel = {rel:.3e}, {ulp} ulp",
                T::DTYPE.name()
            );
        }
    }
    for (i, op) in ["sum_squares", "sum_squares_product"].iter().enumerate() {
        println!(
            "{} {op}: max rel = {:.3e}, max ulp = {}",
            T::DTYPE.name(),
            worst[i].0,
            worst[i].1
        );
    }
    Ok(())
}

fn main() -> Result<(), ire_core::Error> {
    let b = ire_backend_opencl::open()?;
    println!("device: {}", b.runtime().info());
    report::<f32>(&b)?;
    if b.supports_dtype(DType::F64) {
        report::<f64>(&b)?;
    }
    Ok(())
}

//! Times the two k-th-largest paths (device radix select, host introselect) on the chosen
//! OpenCL device, checks both equal the host reference, and prints the numbers.
//!
//! `cargo run --release -p ire-backend-opencl --example selection_timing [SIZE...]`

use std::time::Instant;

use ire_conformance::Rng;
use ire_core::Backend;
use ire_core::device::SelectionPath;

fn main() -> Result<(), ire_core::Error> {
    let backend = ire_backend_opencl::open()?;
    println!("device: {}", backend.runtime().info());
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000_000, 10_000_000]
    } else {
        sizes
    };
    for n in sizes {
        let mut rng = Rng::new(n as u64);
        let h: Vec<f32> = rng.positive::<f32>(n);
        let buf = backend.alloc_from(&h)?;
        // k as IRE uses it with gamma = 0.6.
        let k = (0.4 * n as f64).floor() as usize;
        let want = ire_core::host::kth_largest(&mut h.clone(), k)?;
        for path in [SelectionPath::Device, SelectionPath::Host] {
            let b = backend.clone().with_selection_path(path);
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                b.synchronize()?;
                let t = Instant::now();
                let got = b.kth_largest(&[&buf], k)?;
                best = best.min(t.elapsed().as_secs_f64());
                assert_eq!(got.to_bits(), want.to_bits(), "{path:?} n={n}");
            }
            println!("n = {n:>9}  {path:?}: best of 5 = {:.2} ms", best * 1e3);
        }
    }
    Ok(())
}

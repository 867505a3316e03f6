//! The CPU backend's matrix product on row-major slices (transposes are strides): the `gemm`
//! crate's kernels, except for the one layout where `matrixmultiply` is faster; the naive loop
//! for element types other than `f32` and `f64`.
//!
//! Why two libraries: measured one thread, f32, AVX-512 machine (`gemm` 0.19 / `matrixmultiply`
//! 0.3), `gemm` is 1.1–3.7× faster on every shape of the models' training steps (convolution
//! forward `16×144·144×1024`: 43 vs 100 µs; the language model's output layer backward
//! `4096×33278·33278×128`: 337 vs 461 ms) except `C = A·Bᵀ` with fewer rows than columns (a
//! linear layer's forward at batch 128, `128×3072·(512×3072)ᵀ`: 8.0 vs 5.5 ms; a convolution's
//! `dW = dY·colsᵀ`: 419 vs 195 µs), which stays on `matrixmultiply` (the convolution computes
//! `dWᵀ = cols·dYᵀ` instead, 53 µs). Both run single-threaded here: callers split the work.

use std::any::TypeId;

use ire_core::{GemmShape, Scalar};

use super::host;

/// Whether `matrixmultiply` is the faster of the two for this shape (see the module doc).
fn prefer_matrixmultiply(g: &GemmShape) -> bool {
    g.trans_b && !g.trans_a && g.m < g.n
}

/// `C = α·op(A)·op(B) + β·C` (slices already cut to their sizes).
pub fn gemm<T: Scalar>(g: GemmShape, alpha: T, a: &[T], b: &[T], beta: T, c: &mut [T]) {
    let ((ar, ac), (br, bc)) = g.strides();
    let (na, nb, nc) = g.sizes();
    if a.len() < na || b.len() < nb || c.len() < nc {
        // Callers check sizes; never hand out-of-range strides to the unsafe kernels.
        return host::gemm(g, alpha, a, b, beta, c);
    }
    let (ar, ac, br, bc, cn) = (
        ar as isize,
        ac as isize,
        br as isize,
        bc as isize,
        g.n as isize,
    );
    let is_f32 = TypeId::of::<T>() == TypeId::of::<f32>();
    let is_f64 = TypeId::of::<T>() == TypeId::of::<f64>();
    if !(is_f32 || is_f64) {
        return host::gemm(g, alpha, a, b, beta, c);
    }
    if !prefer_matrixmultiply(&g) {
        // SAFETY: T is f32 or f64, which `gemm` dispatches on by type; the slices hold at
        // least the m×k, k×n and m×n elements the strides address (checked above). `gemm`
        // computes dst := α'·dst + β'·lhs·rhs, so its α' is our β and its β' our α; with
        // read_dst false (our β = 0) C is overwritten, never read (it may hold garbage).
        unsafe {
            gemm::gemm(
                g.m,
                g.n,
                g.k,
                c.as_mut_ptr(),
                1,
                cn,
                beta != T::zero(),
                a.as_ptr(),
                ac,
                ar,
                b.as_ptr(),
                bc,
                br,
                beta,
                alpha,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    } else if is_f32 {
        // SAFETY: T is f32 (same type, so same layout); sizes checked above.
        unsafe {
            matrixmultiply::sgemm(
                g.m,
                g.k,
                g.n,
                alpha.as_f64() as f32,
                a.as_ptr() as *const f32,
                ar,
                ac,
                b.as_ptr() as *const f32,
                br,
                bc,
                beta.as_f64() as f32,
                c.as_mut_ptr() as *mut f32,
                cn,
                1,
            )
        }
    } else {
        // SAFETY: as above, with T = f64.
        unsafe {
            matrixmultiply::dgemm(
                g.m,
                g.k,
                g.n,
                alpha.as_f64(),
                a.as_ptr() as *const f64,
                ar,
                ac,
                b.as_ptr() as *const f64,
                br,
                bc,
                beta.as_f64(),
                c.as_mut_ptr() as *mut f64,
                cn,
                1,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every transpose combination, both element types, both libraries' shapes, β = 0 over a
    /// C full of NaN (must be overwritten) and β ≠ 0, against the naive loop.
    #[test]
    fn both_libraries_match_the_naive_loop() {
        fn check<T: Scalar>(tol: f64) {
            for (m, n, k) in [
                (3, 17, 5),
                (17, 3, 5),
                (16, 144, 64),
                (144, 16, 64),
                (1, 1, 1),
            ] {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    let g = GemmShape {
                        trans_a: ta,
                        trans_b: tb,
                        m,
                        n,
                        k,
                    };
                    let a: Vec<T> = (0..m * k)
                        .map(|i| T::of(((i * 7 % 13) as f64) - 6.0))
                        .collect();
                    let b: Vec<T> = (0..k * n)
                        .map(|i| T::of(((i * 5 % 11) as f64) * 0.5))
                        .collect();
                    for beta in [0.0, 0.5] {
                        let init = if beta == 0.0 { f64::NAN } else { 1.25 };
                        let mut want = vec![T::of(init); m * n];
                        host::gemm(g, T::of(2.0), &a, &b, T::of(beta), &mut want);
                        let mut got = vec![T::of(init); m * n];
                        gemm(g, T::of(2.0), &a, &b, T::of(beta), &mut got);
                        for (x, y) in got.iter().zip(&want) {
                            let (x, y) = (x.as_f64(), y.as_f64());
                            assert!(
                                (x - y).abs() <= tol * y.abs().max(1.0),
                                "{g:?} β {beta}: {x} vs {y}"
                            );
                        }
                    }
                }
            }
        }
        // Integer-valued products summed over k ≤ 64: exact in both types whatever the order.
        check::<f32>(0.0);
        check::<f64>(0.0);
    }
}

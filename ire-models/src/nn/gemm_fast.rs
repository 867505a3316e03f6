//! The CPU backend's matrix product: `matrixmultiply`'s blocked, SIMD `sgemm`/`dgemm` on
//! row-major slices (transposes are strides), falling back to the naive loop for other types.

use std::any::TypeId;

use ire_core::Scalar;

use super::host::{self, Gemm};

/// `C = α·op(A)·op(B) + β·C` (slices already cut to their sizes).
pub fn gemm<T: Scalar>(g: Gemm, alpha: T, a: &[T], b: &[T], beta: T, c: &mut [T]) {
    let ((ar, ac), (br, bc)) = g.strides();
    let (na, nb, nc) = g.sizes();
    if a.len() < na || b.len() < nb || c.len() < nc {
        // Callers check sizes; never hand out-of-range strides to the unsafe kernel.
        return host::gemm(g, alpha, a, b, beta, c);
    }
    let (ar, ac, br, bc, cn) = (
        ar as isize,
        ac as isize,
        br as isize,
        bc as isize,
        g.n as isize,
    );
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        // SAFETY: T is f32 (same type, so same layout); the slices hold at least the m×k, k×n
        // and m×n elements the strides address, checked above.
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
    } else if TypeId::of::<T>() == TypeId::of::<f64>() {
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
    } else {
        host::gemm(g, alpha, a, b, beta, c)
    }
}

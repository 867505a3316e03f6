//! Parallel sums of squares.
//!
//! The sum is a fixed binary tree over the index range: a range longer than [`LEAF`] is split
//! in halves (the two halves run in parallel when the range is longer than the task size),
//! and a leaf of at most [`LEAF`] terms is summed in [`LANES`] independent accumulators (so
//! the compiler can vectorise it) that are then added pairwise. The tree depends only on the
//! length, never on the thread count, so results are deterministic.
//!
//! Error bound, relative to the exact sum of these non-negative terms: at most
//! `(LEAF/LANES + log2(LANES) + log2(N/LEAF) + 1)·u` with `u` the unit roundoff, i.e.
//! about `37·u` for `N = 10⁷`: `2.2e-6` for `f32`, `4.1e-15` for `f64`. The reference's
//! pairwise sum obeys a similar bound, so the two differ by less than the sum of both bounds,
//! inside the `sum_squares` entry of `ire_conformance::TOLERANCES` (1e-5 / 1e-13).

use ire_core::Scalar;

/// Terms summed by one leaf.
pub const LEAF: usize = 256;
/// Independent accumulators in a leaf.
pub const LANES: usize = 16;

/// Adds the lanes as a tree of halves: `a_i + a_{i+8}`, then `+ a_{i+4}`, … (the order of a
/// vector's horizontal sum, which keeps the accumulators in whole vector registers).
#[inline(always)]
fn combine<T: Scalar>(acc: [T; LANES]) -> T {
    let mut w = acc;
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        let (lo, hi) = w.split_at_mut(n);
        for (a, &b) in lo.iter_mut().zip(hi.iter()) {
            *a = *a + b;
        }
    }
    w[0]
}

crate::simd::kernel! {
    fn leaf_sq<T>(x: &[T]) -> T {
        leaf_sq_body(x)
    }
}

crate::simd::kernel! {
    fn leaf_sq_prod<T>(a: &[T], b: &[T]) -> T {
        leaf_sq_prod_body(a, b)
    }
}

#[inline(always)]
fn leaf_sq_body<T: Scalar>(x: &[T]) -> T {
    let zero = [T::zero(); LANES];
    let mut acc = zero;
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        // Fixed-size views (the fallback never runs) let the compiler map lanes to vectors.
        let c: &[T; LANES] = c.try_into().unwrap_or(&zero);
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = *a + v * v;
        }
    }
    let mut tail = T::zero();
    for &v in it.remainder() {
        tail = tail + v * v;
    }
    combine(acc) + tail
}

#[inline(always)]
fn leaf_sq_prod_body<T: Scalar>(a: &[T], b: &[T]) -> T {
    let zero = [T::zero(); LANES];
    let mut acc = zero;
    let mut ia = a.chunks_exact(LANES);
    let mut ib = b.chunks_exact(LANES);
    for (ca, cb) in (&mut ia).zip(&mut ib) {
        let ca: &[T; LANES] = ca.try_into().unwrap_or(&zero);
        let cb: &[T; LANES] = cb.try_into().unwrap_or(&zero);
        for ((s, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            let p = x * y;
            *s = *s + p * p;
        }
    }
    let mut tail = T::zero();
    for (&x, &y) in ia.remainder().iter().zip(ib.remainder()) {
        let p = x * y;
        tail = tail + p * p;
    }
    combine(acc) + tail
}

/// The tree over `lo..hi`: halves in parallel above `par_min` terms.
fn tree<T: Scalar, L: Fn(usize, usize) -> T + Sync>(
    lo: usize,
    hi: usize,
    par_min: usize,
    leaf: &L,
) -> T {
    let n = hi - lo;
    if n <= LEAF {
        return leaf(lo, hi);
    }
    let mid = lo + n / 2;
    if n > par_min {
        let (a, b) = rayon::join(
            || tree(lo, mid, par_min, leaf),
            || tree(mid, hi, par_min, leaf),
        );
        a + b
    } else {
        tree(lo, mid, par_min, leaf) + tree(mid, hi, par_min, leaf)
    }
}

/// `Σ x_i²`; ranges longer than `par_min` are split across threads; `wide` allows the AVX2
/// copy of the leaves (same result bits: the lanes are explicit).
pub fn sum_squares<T: Scalar>(x: &[T], par_min: usize, wide: bool) -> T {
    tree(0, x.len(), par_min.max(LEAF), &|lo, hi| {
        leaf_sq(wide, &x[lo..hi])
    })
}

/// `Σ (a_i·b_i)²` over the common length of `a` and `b`.
pub fn sum_squares_product<T: Scalar>(a: &[T], b: &[T], par_min: usize, wide: bool) -> T {
    let n = a.len().min(b.len());
    tree(0, n, par_min.max(LEAF), &|lo, hi| {
        leaf_sq_prod(wide, &a[lo..hi], &b[lo..hi])
    })
}

//! Host-side reductions and selection shared by the reference backend and the provided
//! defaults of [`crate::Backend`].

use crate::error::{Error, Result, check};
use crate::scalar::Scalar;

/// Below this length a block is summed left to right; above it, halves are summed
/// recursively (pairwise summation: error grows with `log n`, not `n`).
const PAIRWISE_BLOCK: usize = 128;

fn pairwise<T: Scalar>(n: usize, term: &impl Fn(usize) -> T, start: usize) -> T {
    if n <= PAIRWISE_BLOCK {
        let mut s = T::zero();
        for i in start..start + n {
            s = s + term(i);
        }
        s
    } else {
        let h = n / 2;
        pairwise(h, term, start) + pairwise(n - h, term, start + h)
    }
}

/// `Σ x_i²` by pairwise summation.
pub fn sum_squares<T: Scalar>(x: &[T]) -> T {
    pairwise(x.len(), &|i| x[i] * x[i], 0)
}

/// `Σ (a_i·b_i)²` by pairwise summation (`a`, `b` of equal length).
pub fn sum_squares_product<T: Scalar>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    pairwise(
        n,
        &|i| {
            let p = a[i] * b[i];
            p * p
        },
        0,
    )
}

/// The k-th largest value (1-based) of `values`, by an O(N) selection (introselect); reorders
/// `values`. Order is the total order of [`Scalar::order_key`], so the answer (sign of zero
/// included) is the same on every backend. NaN is rejected.
pub fn kth_largest<T: Scalar>(values: &mut [T], k: usize) -> Result<T> {
    let n = values.len();
    check("k", k as f64, k >= 1 && k <= n, "1..=N (number of values)")?;
    if values.iter().any(|v| v.is_nan()) {
        return Err(Error::NonFinite {
            what: "values of the k-th-largest selection".into(),
        });
    }
    let (_, kth, _) = values.select_nth_unstable_by_key(n - k, |v| v.order_key());
    Ok(*kth)
}

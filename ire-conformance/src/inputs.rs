//! Inputs shared by the conformance suite and the equivalence runner: the same seeded values,
//! step scalars and tied selection data, so both check every backend on the same bits.

use ire_core::Scalar;
use ire_core::formulas::{AdamWScalars, SgdScalars};
use ire_core::optim::AdamWConfig;

use super::rng::Rng;

/// SGD-with-momentum scalars with a learning rate and weight decay drawn from `rng`.
pub fn sgd_scalars<T: Scalar>(rng: &mut Rng, first: bool, nesterov: bool) -> SgdScalars<T> {
    SgdScalars {
        lr: T::of(0.05 + rng.uniform() * 0.1),
        weight_decay: T::of(rng.uniform() * 1e-3),
        momentum: T::of(0.9),
        dampening_complement: T::of(if nesterov { 1.0 } else { 0.9 }),
        nesterov,
        first_step: first,
    }
}

/// The AdamW configuration of the element-wise checks.
pub const OP_ADAMW: AdamWConfig = AdamWConfig {
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};

/// AdamW scalars of step `t` (learning rate 6e-4).
pub fn adamw_scalars<T: Scalar>(t: u64) -> AdamWScalars<T> {
    OP_ADAMW.scalars(6e-4, t)
}

/// Buffers of the given sizes with ties (every 5th value is 0.25) and both zeros (every 11th
/// is −0.0): the hard cases of an exact selection.
pub fn tied_parts<T: Scalar>(rng: &mut Rng, sizes: &[usize]) -> Vec<Vec<T>> {
    sizes
        .iter()
        .map(|&n| {
            let mut v = rng.values::<T>(n);
            for (i, x) in v.iter_mut().enumerate() {
                if i % 5 == 0 {
                    *x = T::of(0.25);
                }
                if i % 11 == 0 {
                    *x = T::of(-0.0);
                }
            }
            v
        })
        .collect()
}

/// The inputs of every operation at one size and dtype.
pub struct OpInputs<T> {
    /// Element count.
    pub n: usize,
    /// Values in [−1, 1).
    pub v1: Vec<T>,
    /// Values in [−1, 1).
    pub v2: Vec<T>,
    /// Positive values.
    pub v3: Vec<T>,
    /// Values in [−1, 1).
    pub v4: Vec<T>,
    /// A 0/1 mask.
    pub mask: Vec<u8>,
    /// `v1` with NaN and ±infinity sprinkled in.
    pub non_finite: Vec<T>,
    /// Selection buffers (one empty) with ties and both zeros.
    pub parts: Vec<Vec<T>>,
    /// The ranks selected over `parts`: 1, 2, a third, a half, N − 1 and N.
    pub ks: Vec<usize>,
}

impl<T: Scalar> OpInputs<T> {
    /// The inputs at size `n`, from a seed that depends only on `n`.
    pub fn new(n: usize) -> Self {
        let mut rng = Rng::new(0x5EED ^ (n as u64).wrapping_mul(0x9E37_79B9));
        let v1 = rng.values::<T>(n);
        let v2 = rng.values::<T>(n);
        let v3 = rng.positive::<T>(n);
        let v4 = rng.values::<T>(n);
        let mask = rng.mask(n);
        let mut non_finite = v1.clone();
        for (i, x) in non_finite.iter_mut().enumerate() {
            match i % 97 {
                0 => *x = T::nan(),
                31 => *x = T::infinity(),
                64 => *x = T::neg_infinity(),
                _ => {}
            }
        }
        let parts = tied_parts(&mut rng, &[n, 1, 0, 257]);
        let total: usize = parts.iter().map(Vec::len).sum();
        let mut ks: Vec<usize> = [1, 2, total / 3 + 1, total / 2 + 1, total - 1, total]
            .into_iter()
            .filter(|&k| (1..=total).contains(&k))
            .collect();
        ks.dedup();
        OpInputs {
            n,
            v1,
            v2,
            v3,
            v4,
            mask,
            non_finite,
            parts,
            ks,
        }
    }
}

//! Labels sampled from a model's own predictive distribution, the input of IRE's estimator
//! gradient `ĝ` (IRE-SPEC §2), drawn reproducibly: a draw depends only on `(seed, step, row)`,
//! so a resumed run samples the same labels as an uninterrupted one.
//!
//! The framework adapters compute `ĝ` from these draws (the cross-entropy of the logits at the
//! sampled labels, back-propagated by the framework).

#[cfg_attr(feature = "std", allow(unused_imports))] // no_std: exp comes from libm
use num_traits::Float;

use crate::scalar::Scalar;

/// SplitMix64's finalizer (a bijective 64-bit mixer).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in `[0, 1)` (53 random bits) that depends only on `(seed, stream, index)`,
/// e.g. `(run seed, step, row of the batch)`.
pub fn counter_uniform(seed: u64, stream: u64, index: u64) -> f64 {
    let z = mix(mix(mix(seed) ^ stream) ^ index);
    (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The class drawn from `softmax(logits)` by inverse transform at `u ∈ [0, 1)`: the first
/// class whose cumulative probability exceeds `u`. `None` when `logits` is empty or holds a
/// NaN or an infinity (no distribution to draw from). Computed in `f64`, max-subtracted.
pub fn sample_from_logits<T: Scalar>(logits: &[T], u: f64) -> Option<usize> {
    if logits.is_empty() || logits.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let max = logits
        .iter()
        .map(|x| x.as_f64())
        .fold(f64::NEG_INFINITY, f64::max);
    let weight = |x: &T| (x.as_f64() - max).exp();
    let target = u * logits.iter().map(weight).sum::<f64>();
    let mut acc = 0.0;
    let mut last_with_mass = 0;
    for (i, x) in logits.iter().enumerate() {
        let w = weight(x);
        acc += w;
        if w > 0.0 {
            last_with_mass = i;
        }
        if target < acc {
            return Some(i);
        }
    }
    // Rounding left the running sum just below the total: the last class with mass.
    Some(last_with_mass)
}

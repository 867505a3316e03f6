//! The softmax cross-entropy row: the one host loop where the exponential dominates (a
//! language model's output layer has tens of thousands of classes per row).
//!
//! `libm`'s `exp` is a scalar call; [`exp_nonpositive`] here is branch-free so a loop over a row
//! vectorizes, and the row is compiled three times (base target, AVX2, AVX-512F) and
//! dispatched on the CPU like the CPU backend's optimizer kernels. No FMA is enabled, so the
//! three copies give the same bits.

use ire_core::Scalar;

use super::host::{LANES, lane_sum};

/// `e^x` in `f64` for `x ≤ 0` (the softmax's arguments `z − max` and `z − lse`), within 2 ulp
/// of the correctly rounded value for `x ≥ −708`; results below `2^−1022` (`x < −708.39`) are
/// flushed to 0, NaN stays NaN, and `x > 0` is outside the contract (it gives 1).
///
/// Cody–Waite reduction `x = n·ln 2 + r`, `|r| ≤ ln2/2`, then the Taylor polynomial of
/// degree 13 (truncation error below 5e-18 on that interval) and `2^n` built from its bits.
#[inline(always)]
pub fn exp_nonpositive(x: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for |n| < 2^11 (fdlibm's ln2_hi, ln2_lo).
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    // Adding 1.5·2^52 rounds to an integer (ties to even) and leaves it in the low mantissa bits.
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    let xc = x.clamp(-708.0, 0.0);
    let t = xc * LOG2E + SHIFT;
    let n = t - SHIFT;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 6_227_020_800.0; // 1/13!
    for c in [
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    // n ∈ [−1022, 0] after the clamp: 2^n is a normal number.
    let ni = t.to_bits().wrapping_sub(SHIFT.to_bits());
    let scale = f64::from_bits(ni.wrapping_add(1023) << 52);
    let y = p * scale;
    if x < -708.39 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// The maximum and the index of its first occurrence (ties go to the lowest index, as on every
/// backend), tracked per lane so the loop vectorizes. `v` is finite (checked by the callers).
#[inline(always)]
fn first_max<T: Scalar>(v: &[T]) -> (f64, usize) {
    let mut m = [f64::NEG_INFINITY; LANES];
    let mut at = [0u64; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for (b, c) in (&mut chunks).enumerate() {
        for l in 0..LANES {
            let x = c[l].as_f64();
            let better = x > m[l];
            m[l] = if better { x } else { m[l] };
            at[l] = if better {
                (b * LANES + l) as u64
            } else {
                at[l]
            };
        }
    }
    let base = v.len() - chunks.remainder().len();
    for (l, x) in chunks.remainder().iter().enumerate() {
        if x.as_f64() > m[l] {
            m[l] = x.as_f64();
            at[l] = (base + l) as u64;
        }
    }
    let max = m
        .iter()
        .fold(f64::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let arg = (0..LANES)
        .filter(|&l| m[l] == max)
        .map(|l| at[l])
        .min()
        .unwrap_or(0);
    (max, arg as usize)
}

#[inline(always)]
fn xent_body<T: Scalar>(z: &[T], label: usize, eps: f64, scale: f64, d: &mut [T]) -> (f64, bool) {
    let c = z.len();
    let (max, arg) = first_max(z);
    let lse = max + lane_sum(z, |v| exp_nonpositive(v - max)).ln();
    // −Σ q_j (z_j − lse) with q = eps/C everywhere plus (1 − eps) at the label.
    let zl = z[label].as_f64() - lse;
    let loss = -(eps / c as f64) * (lane_sum(z, |v| v) - c as f64 * lse) - (1.0 - eps) * zl;
    let q = eps / c as f64;
    for (dj, zj) in d.iter_mut().zip(z) {
        *dj = T::of(scale * (exp_nonpositive(zj.as_f64() - lse) - q));
    }
    d[label] = T::of(scale * (exp_nonpositive(zl) - (q + (1.0 - eps))));
    (loss, arg == label)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn xent_avx2<T: Scalar>(
    z: &[T],
    label: usize,
    eps: f64,
    scale: f64,
    d: &mut [T],
) -> (f64, bool) {
    xent_body(z, label, eps, scale, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn xent_avx512<T: Scalar>(
    z: &[T],
    label: usize,
    eps: f64,
    scale: f64,
    d: &mut [T],
) -> (f64, bool) {
    xent_body(z, label, eps, scale, d)
}

/// Numerically stable softmax cross-entropy of one row with label smoothing `eps`:
/// target `q = (1 − eps)·onehot(label) + eps/C`. Writes `d = scale·(softmax − q)` and returns
/// `(loss, argmax == label)`. `label < z.len() == d.len()` (checked by the callers).
pub fn softmax_xent_row<T: Scalar>(
    z: &[T],
    label: usize,
    eps: f64,
    scale: f64,
    d: &mut [T],
) -> (f64, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { xent_avx512(z, label, eps, scale, d) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { xent_avx2(z, label, eps, scale, d) };
        }
    }
    xent_body(z, label, eps, scale, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite positive doubles.
    fn ulps(a: f64, b: f64) -> u64 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn exp_within_two_ulp_of_libm_on_the_softmax_range() {
        // A dense sweep of the softmax range and beyond, plus the edges of the clamp.
        let mut worst = 0;
        let mut x = -708.0;
        while x < 0.0 {
            worst = worst.max(ulps(exp_nonpositive(x), libm::exp(x)));
            x += 0.000_123_456_7;
        }
        for x in [
            0.0,
            -0.0,
            -1e-300,
            -1e-17,
            -0.5,
            -1.0,
            -0.346_573_590_279_972_6,
            -708.0,
        ] {
            worst = worst.max(ulps(exp_nonpositive(x), libm::exp(x)));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-800.0), 0.0);
        assert_eq!(exp_nonpositive(f64::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f64::NAN).is_nan());
    }

    #[test]
    fn first_max_takes_the_lowest_index_of_ties() {
        for len in 1..40usize {
            for a in 0..len {
                for b in a..len {
                    let mut v = vec![-1.0f32; len];
                    v[a] = 3.0;
                    v[b] = 3.0;
                    assert_eq!(first_max(&v), (3.0, a), "{len} {a} {b}");
                }
            }
        }
        assert_eq!(first_max(&[-5.0f64, -7.0]), (-5.0, 0));
    }

    #[test]
    fn xent_row_matches_the_direct_formula() {
        // Direct, sequential evaluation of the definition with libm.
        let direct = |z: &[f64], label: usize, eps: f64| {
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            let c = z.len() as f64;
            let q = |j: usize| eps / c + if j == label { 1.0 - eps } else { 0.0 };
            let loss: f64 = (0..z.len()).map(|j| -q(j) * (z[j] - lse)).sum();
            let d: Vec<f64> = (0..z.len()).map(|j| (z[j] - lse).exp() - q(j)).collect();
            (loss, d)
        };
        for c in [1usize, 3, 8, 13, 1000] {
            let z: Vec<f64> = (0..c)
                .map(|j| ((j * 37 % 101) as f64) * 0.173 - 8.0)
                .collect();
            for eps in [0.0, 0.1] {
                let label = c / 2;
                let mut d = vec![0.0; c];
                let (loss, _) = softmax_xent_row(&z, label, eps, 1.0, &mut d);
                let mut d0 = vec![0.0; c];
                let (l0, _) = xent_body(&z, label, eps, 1.0, &mut d0);
                // Every dispatch path gives the same bits.
                assert_eq!(loss.to_bits(), l0.to_bits());
                assert!(d.iter().zip(&d0).all(|(a, b)| a.to_bits() == b.to_bits()));
                let (lw, dw) = direct(&z, label, eps);
                assert!((loss - lw).abs() <= 1e-13 * lw.abs().max(1.0), "{c} {eps}");
                for (a, b) in d.iter().zip(&dw) {
                    assert!((a - b).abs() <= 1e-15, "{c} {eps}: {a} vs {b}");
                }
            }
        }
    }
}

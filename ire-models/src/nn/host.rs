//! The neural-network operations on host slices: the canonical formula of each op, shared by
//! the reference backend (sequential, the oracle) and the CPU backend (which runs the same
//! functions on chunks in parallel and swaps the naive GEMM for an optimized one).

use ire_core::{GemmShape, Scalar};

/// The naive triple loop (the reference's GEMM; sums over `k` in order).
pub fn gemm<T: Scalar>(g: GemmShape, alpha: T, a: &[T], b: &[T], beta: T, c: &mut [T]) {
    let ((ar, ac), (br, bc)) = g.strides();
    for i in 0..g.m {
        for j in 0..g.n {
            let mut s = T::zero();
            for p in 0..g.k {
                s = s + a[i * ar + p * ac] * b[p * br + j * bc];
            }
            let cij = &mut c[i * g.n + j];
            *cij = if beta == T::zero() {
                alpha * s
            } else {
                alpha * s + beta * *cij
            };
        }
    }
}

/// `y = max(x, 0)`.
pub fn relu<T: Scalar>(x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = if x > T::zero() { x } else { T::zero() };
    }
}

/// `dx = dy · [y > 0]` (from the output, so the input need not be kept).
pub fn relu_backward<T: Scalar>(y: &[T], dy: &[T], dx: &mut [T]) {
    for ((dx, &dy), &y) in dx.iter_mut().zip(dy).zip(y) {
        *dx = if y > T::zero() { dy } else { T::zero() };
    }
}

/// Exact GELU, `x·Φ(x) = x/2·(1 + erf(x/√2))` (PyTorch's default).
pub fn gelu<T: Scalar>(x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        let xf = x.as_f64();
        *y = T::of(0.5 * xf * (1.0 + libm::erf(xf * std::f64::consts::FRAC_1_SQRT_2)));
    }
}

/// `dx = dy · (Φ(x) + x·φ(x))`.
pub fn gelu_backward<T: Scalar>(x: &[T], dy: &[T], dx: &mut [T]) {
    let inv_sqrt_2pi = 0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2;
    for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
        let xf = x.as_f64();
        let cdf = 0.5 * (1.0 + libm::erf(xf * std::f64::consts::FRAC_1_SQRT_2));
        let pdf = inv_sqrt_2pi * (-0.5 * xf * xf).exp();
        *dx = T::of(dy.as_f64() * (cdf + xf * pdf));
    }
}

/// Partial sums per [`lane_sum`]: a fixed summation order, CPU-independent, that vectorizes.
pub const LANES: usize = 8;

/// `Σ f(vᵢ)` in `f64`, element `i` into partial sum `i mod LANES`, the partial sums added
/// pairwise at the end. The canonical order of the host sums over long runs (batch-norm
/// statistics, softmax normalizers): independent accumulators keep the loop from waiting on
/// each addition. `f` is mapped over blocks into a buffer first, which vectorizes.
#[inline(always)]
pub fn lane_sum<T: Scalar>(v: &[T], f: impl Fn(f64) -> f64) -> f64 {
    lane_sum2(v, v, |x, _| f(x))
}

/// `Σ f(aᵢ, bᵢ)` in the order of [`lane_sum`] (`a` and `b` of the same length); the one
/// implementation of that order.
#[inline(always)]
pub fn lane_sum2<T: Scalar>(a: &[T], b: &[T], f: impl Fn(f64, f64) -> f64) -> f64 {
    const BLOCK: usize = 32 * LANES;
    let mut acc = [0.0f64; LANES];
    let mut tmp = [0.0f64; BLOCK];
    for (ba, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let tmp = &mut tmp[..ba.len()];
        for ((t, x), y) in tmp.iter_mut().zip(ba).zip(bb) {
            *t = f(x.as_f64(), y.as_f64());
        }
        add_lanes(&mut acc, tmp);
    }
    fold_lanes(&acc)
}

#[inline(always)]
fn add_lanes(acc: &mut [f64; LANES], v: &[f64]) {
    let mut lanes = v.chunks_exact(LANES);
    for c in &mut lanes {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (l, x) in lanes.remainder().iter().enumerate() {
        acc[l] += x;
    }
}

#[inline(always)]
fn fold_lanes(acc: &[f64; LANES]) -> f64 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// Draws a label from `softmax(z)` with the uniform number `u ∈ [0, 1)`.
pub fn sample_row<T: Scalar>(z: &[T], u: f64) -> usize {
    let max = z
        .iter()
        .map(|v| v.as_f64())
        .fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = z.iter().map(|v| (v.as_f64() - max).exp()).sum();
    let mut acc = 0.0;
    for (j, v) in z.iter().enumerate() {
        acc += (v.as_f64() - max).exp() / sum;
        if u < acc {
            return j;
        }
    }
    z.len().saturating_sub(1)
}

/// The dropout decision of element `i` under `seed`: a counter-based hash (SplitMix64's
/// finalizer), so every backend can compute the same mask without a generator state.
pub fn dropout_keep(seed: u64, i: u64, p: f64) -> bool {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // 24-bit uniform compared with p·2^24: exact in f32 and f64 alike.
    ((z >> 40) as f64) >= p * (1u64 << 24) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::conv::{ConvGeom, col2im, im2col};
    use crate::nn::xent::softmax_xent_row;

    #[test]
    fn gemm_transposes() {
        // A = [[1,2],[3,4]], B = [[5,6],[7,8]].
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0];
        let mut c = [0.0f64; 4];
        gemm(
            GemmShape {
                trans_a: false,
                trans_b: false,
                m: 2,
                n: 2,
                k: 2,
            },
            1.0,
            &a,
            &b,
            0.0,
            &mut c,
        );
        assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
        gemm(
            GemmShape {
                trans_a: true,
                trans_b: false,
                m: 2,
                n: 2,
                k: 2,
            },
            1.0,
            &a,
            &b,
            0.0,
            &mut c,
        );
        assert_eq!(c, [26.0, 30.0, 38.0, 44.0]);
        gemm(
            GemmShape {
                trans_a: false,
                trans_b: true,
                m: 2,
                n: 2,
                k: 2,
            },
            2.0,
            &a,
            &b,
            1.0,
            &mut c,
        );
        assert_eq!(c, [26.0 + 34.0, 30.0 + 46.0, 38.0 + 78.0, 44.0 + 106.0]);
    }

    #[test]
    fn im2col_of_a_3x3_image() {
        let x: Vec<f64> = (1..=9).map(f64::from).collect();
        let g = ConvGeom {
            c_in: 1,
            h: 3,
            w: 3,
            c_out: 1,
            k: 2,
            stride: 1,
            pad: 0,
        };
        let mut cols = vec![0.0; 4 * 4];
        im2col(&x, &g, &mut cols);
        assert_eq!(&cols[..4], &[1.0, 2.0, 4.0, 5.0]);
        assert_eq!(&cols[12..], &[5.0, 6.0, 8.0, 9.0]);
        let mut back = vec![0.0; 9];
        col2im(&cols, &g, &mut back);
        // Each pixel is added once per window that contains it.
        assert_eq!(back, [1.0, 4.0, 3.0, 8.0, 20.0, 12.0, 7.0, 16.0, 9.0]);
    }

    /// im2col followed by the weight product must equal the direct 6-loop convolution.
    #[test]
    fn im2col_convolution_equals_direct_convolution() {
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        for (h, w, k, stride, pad) in [
            (5, 7, 3, 1, 1),
            (6, 6, 3, 2, 1),
            (5, 5, 1, 2, 0),
            (4, 6, 2, 1, 0),
            (7, 5, 3, 2, 2),
            (3, 3, 3, 3, 1),
        ] {
            let g = ConvGeom {
                c_in: 2,
                h,
                w,
                c_out: 3,
                k,
                stride,
                pad,
            };
            let x: Vec<f64> = (0..g.in_size()).map(|_| rnd()).collect();
            let wt: Vec<f64> = (0..g.weight_size()).map(|_| rnd()).collect();
            let mut cols = vec![0.0; g.col_rows() * g.col_cols()];
            im2col(&x, &g, &mut cols);
            let mut y = vec![0.0; g.out_size()];
            gemm(
                GemmShape {
                    trans_a: false,
                    trans_b: false,
                    m: g.c_out,
                    n: g.col_cols(),
                    k: g.col_rows(),
                },
                1.0,
                &wt,
                &cols,
                0.0,
                &mut y,
            );
            let (oh, ow) = (g.oh(), g.ow());
            for o in 0..g.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0.0;
                        for c in 0..g.c_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * stride + ky) as isize - pad as isize;
                                    let ix = (ox * stride + kx) as isize - pad as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w
                                    {
                                        s += wt[((o * g.c_in + c) * k + ky) * k + kx]
                                            * x[(c * h + iy as usize) * w + ix as usize];
                                    }
                                }
                            }
                        }
                        let got = y[(o * oh + oy) * ow + ox];
                        assert!(
                            (got - s).abs() < 1e-12,
                            "{h}x{w} k{k} s{stride} p{pad}: {got} vs {s}"
                        );
                    }
                }
            }
            // col2im is the adjoint: <im2col(x), c> = <x, col2im(c)>.
            let cvec: Vec<f64> = (0..cols.len()).map(|_| rnd()).collect();
            let mut back = vec![0.0; g.in_size()];
            col2im(&cvec, &g, &mut back);
            let lhs: f64 = cols.iter().zip(&cvec).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
            assert!((lhs - rhs).abs() < 1e-12);
        }
    }

    #[test]
    fn lane_sums_follow_their_stated_order() {
        // Values whose sum depends on the order: the definition, written out, must match bits.
        for len in [0usize, 1, 7, 8, 9, 255, 256, 257, 1000] {
            let v: Vec<f32> = (0..len)
                .map(|i| {
                    if i % 3 == 0 {
                        1e8
                    } else {
                        1.0 + i as f32 * 1e-3
                    }
                })
                .collect();
            let mut acc = [0.0f64; LANES];
            for (i, x) in v.iter().enumerate() {
                acc[i % LANES] += (*x as f64) * 2.0;
            }
            let want =
                ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
            assert_eq!(lane_sum(&v, |x| 2.0 * x).to_bits(), want.to_bits(), "{len}");
            let w: Vec<f32> = v.iter().rev().copied().collect();
            let mut acc2 = [0.0f64; LANES];
            for (i, (x, y)) in v.iter().zip(&w).enumerate() {
                acc2[i % LANES] += (*x as f64) * (*y as f64);
            }
            let want2 = ((acc2[0] + acc2[1]) + (acc2[2] + acc2[3]))
                + ((acc2[4] + acc2[5]) + (acc2[6] + acc2[7]));
            assert_eq!(
                lane_sum2(&v, &w, |x, y| x * y).to_bits(),
                want2.to_bits(),
                "{len}"
            );
        }
    }

    #[test]
    fn softmax_xent_matches_hand_values() {
        let z = [1.0f64, 2.0, 3.0];
        let mut d = [0.0; 3];
        let (loss, ok) = softmax_xent_row(&z, 2, 0.0, 1.0, &mut d);
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((loss - (lse - 3.0)).abs() < 1e-15 && ok);
        assert!((d.iter().sum::<f64>()).abs() < 1e-15);
        let (ls, _) = softmax_xent_row(&z, 0, 0.1, 1.0, &mut d);
        let want = -(0.1 / 3.0) * ((1.0 - lse) + (2.0 - lse) + (3.0 - lse)) - 0.9 * (1.0 - lse);
        assert!((ls - want).abs() < 1e-14);
    }

    #[test]
    fn dropout_mask_rate() {
        let kept = (0..100_000u64).filter(|&i| dropout_keep(7, i, 0.3)).count();
        // Binomial sd ≈ 145.
        assert!((kept as f64 - 70_000.0).abs() < 800.0, "{kept}");
        assert!((0..1000).all(|i| dropout_keep(7, i, 0.0)));
        assert!((0..1000).all(|i| !dropout_keep(7, i, 1.0)));
    }
}

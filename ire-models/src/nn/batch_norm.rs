//! Batch norm's shapes and modes, and its canonical host formulas (channel statistics and
//! gradient sums in the stated order of [`lane_sum`]).

use ire_core::{Backend, Scalar};

use super::host::{lane_sum, lane_sum2};

/// Shape of a batch-norm input `N × C × HW`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnShape {
    /// Batch.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Values per channel per example.
    pub hw: usize,
}

/// Batch-norm mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    /// Normalize with the batch statistics; update the running ones when `update_running`
    /// (false for the IRE estimator pass and SAM's second pass).
    Train {
        /// Whether the running statistics move.
        update_running: bool,
    },
    /// Normalize with the running statistics.
    Eval,
}

/// The per-layer buffers of a batch norm: running statistics and the saved batch statistics.
pub struct BnState<'a, B: Backend + ?Sized, T: Scalar> {
    /// Running mean (`C`).
    pub running_mean: &'a mut B::Buffer<T>,
    /// Running (unbiased) variance (`C`).
    pub running_var: &'a mut B::Buffer<T>,
    /// Batch mean of the last training forward (`C`).
    pub save_mean: &'a mut B::Buffer<T>,
    /// Batch `1/sqrt(var + eps)` of the last training forward (`C`).
    pub save_invstd: &'a mut B::Buffer<T>,
}

/// The `hw` values of channel `ch` of image `i`.
fn plane<T>(x: &[T], s: BnShape, i: usize, ch: usize) -> &[T] {
    let o = (i * s.c + ch) * s.hw;
    &x[o..o + s.hw]
}

/// Batch statistics of channel `ch`: mean and biased variance, in `f64` (per image a
/// [`lane_sum`], the images in order).
pub fn bn_channel_stats<T: Scalar>(x: &[T], s: BnShape, ch: usize) -> (f64, f64) {
    let m = (s.n * s.hw) as f64;
    let sum: f64 = (0..s.n).map(|i| lane_sum(plane(x, s, i, ch), |v| v)).sum();
    let mean = sum / m;
    let var: f64 = (0..s.n)
        .map(|i| lane_sum(plane(x, s, i, ch), |v| (v - mean) * (v - mean)))
        .sum();
    (mean, var / m)
}

/// `y = γ·(x − μ)·invstd + β` on one channel plane.
pub fn bn_plane_apply<T: Scalar>(x: &[T], y: &mut [T], mean: T, invstd: T, gamma: T, beta: T) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = gamma * ((x - mean) * invstd) + beta;
    }
}

/// The sums the backward of batch norm needs on channel `ch`: `(Σ dy·x̂, Σ dy)` = `(dγ, dβ)`,
/// `x̂ = (x − μ)·invstd` (in `T`, then widened), in the order of [`bn_channel_stats`].
pub fn bn_channel_grad_sums<T: Scalar>(
    x: &[T],
    dy: &[T],
    s: BnShape,
    ch: usize,
    mean: T,
    invstd: T,
) -> (f64, f64) {
    let (mut sdyx, mut sdy) = (0.0, 0.0);
    for i in 0..s.n {
        let (xp, dyp) = (plane(x, s, i, ch), plane(dy, s, i, ch));
        sdy += lane_sum(dyp, |g| g);
        sdyx += lane_sum2(xp, dyp, |x, g| g * ((T::of(x) - mean) * invstd).as_f64());
    }
    (sdyx, sdy)
}

/// Backward of training-mode batch norm on one channel plane, given the channel's sums from
/// [`bn_channel_grad_sums`] over `m = N·HW` values:
/// `dx = γ·invstd/m · (m·dy − Σdy − x̂·Σ(dy·x̂))`.
#[allow(clippy::too_many_arguments)]
pub fn bn_plane_backward<T: Scalar>(
    x: &[T],
    dy: &[T],
    dx: &mut [T],
    m: f64,
    mean: T,
    invstd: T,
    gamma: T,
    (sdyx, sdy): (f64, f64),
) {
    let k = gamma.as_f64() * invstd.as_f64() / m;
    for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
        let xh = ((x - mean) * invstd).as_f64();
        *dx = T::of(k * (m * g.as_f64() - sdy - xh * sdyx));
    }
}

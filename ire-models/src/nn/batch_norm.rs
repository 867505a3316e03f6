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

/// Joins the per-image partial sums of a batch norm over the processes of a data-parallel
/// group, for batch statistics over the group's whole batch (synchronized batch norm).
pub trait BnSync {
    /// Whether the forward and backward passes under way take their statistics over the group
    /// (`false`: each process normalizes over its own examples, as without a group).
    fn active(&self) -> bool;
    /// The rows of every process's `local` (`width` values per image of its examples, image
    /// by image), concatenated in the order of the images in the whole batch. Collective:
    /// every process calls it at the same point.
    fn gather(&self, local: &[f64], width: usize) -> ire_core::Result<Vec<f64>>;
}

/// `Σ_i rows[i·width + col]` for `col` in `0..width`, the rows in order (`f64`'s `sum`, the
/// fold of [`bn_channel_stats`]).
fn column_sums(rows: &[f64], width: usize) -> Vec<f64> {
    let n = rows.len() / width.max(1);
    (0..width)
        .map(|col| (0..n).map(|i| rows[i * width + col]).sum())
        .collect()
}

/// `f(i, ch)` for every image `i` of `0..s.n` and channel `ch`, image-major (images in
/// parallel when `parallel`).
fn per_image(s: BnShape, parallel: bool, f: impl Fn(usize, usize) -> f64 + Sync) -> Vec<f64> {
    use rayon::prelude::*;
    let row = |i: usize| (0..s.c).map(|ch| f(i, ch)).collect::<Vec<f64>>();
    if parallel {
        (0..s.n).into_par_iter().flat_map_iter(row).collect()
    } else {
        (0..s.n).flat_map(row).collect()
    }
}

/// Batch statistics of every channel over the whole batch of a group, with the number of
/// values per channel `m` over the group: `[(mean, biased variance)]`, `m`.
// Each image's per-channel sums (a [`lane_sum`]) are gathered and added in the order of the
// images in the whole batch, not per process: deterministic, and with the images of a batch
// cut over the processes in order, the very sums of one process holding the whole batch.
pub fn bn_synced_stats<T: Scalar>(
    x: &[T],
    s: BnShape,
    parallel: bool,
    sync: &dyn BnSync,
) -> ire_core::Result<(Vec<(f64, f64)>, f64)> {
    let sums = sync.gather(
        &per_image(s, parallel, |i, ch| lane_sum(plane(x, s, i, ch), |v| v)),
        s.c,
    )?;
    let m = ((sums.len() / s.c.max(1)) * s.hw) as f64;
    let mean: Vec<f64> = column_sums(&sums, s.c).into_iter().map(|v| v / m).collect();
    let centred = per_image(s, parallel, |i, ch| {
        let mu = mean[ch];
        lane_sum(plane(x, s, i, ch), |v| (v - mu) * (v - mu))
    });
    let var = column_sums(&sync.gather(&centred, s.c)?, s.c);
    Ok((
        mean.into_iter()
            .zip(var)
            .map(|(mu, v)| (mu, v / m))
            .collect(),
        m,
    ))
}

/// The sums of the batch-norm backward over the whole batch of a group, in the order of
/// [`bn_synced_stats`]: `(Σ dy·x̂, Σ dy)` of every channel over the group (for `dx`), the same
/// over this process's examples only (for `dγ, dβ`, which the group's gradient reduction then
/// adds up), and `m` over the group.
#[allow(clippy::type_complexity)]
pub fn bn_synced_grad_sums<T: Scalar>(
    x: &[T],
    dy: &[T],
    s: BnShape,
    (mean, invstd): (&[T], &[T]),
    parallel: bool,
    sync: &dyn BnSync,
) -> ire_core::Result<(Vec<(f64, f64)>, Vec<(f64, f64)>, f64)> {
    let width = 2 * s.c;
    let rows = per_image(BnShape { c: width, ..s }, parallel, |i, k| {
        let ch = k / 2;
        let (xp, dyp) = (plane(x, s, i, ch), plane(dy, s, i, ch));
        let (mu, is) = (mean[ch], invstd[ch]);
        if k % 2 == 0 {
            lane_sum2(xp, dyp, |x, g| g * ((T::of(x) - mu) * is).as_f64())
        } else {
            lane_sum(dyp, |g| g)
        }
    });
    // The fold of `bn_channel_grad_sums`: from 0.0, image by image.
    let fold = |rows: &[f64]| -> Vec<(f64, f64)> {
        let mut acc = vec![(0.0, 0.0); s.c];
        for row in rows.chunks_exact(width) {
            for (a, v) in acc.iter_mut().zip(row.chunks_exact(2)) {
                a.0 += v[0];
                a.1 += v[1];
            }
        }
        acc
    };
    let all = sync.gather(&rows, width)?;
    let m = ((all.len() / width.max(1)) * s.hw) as f64;
    Ok((fold(&all), fold(&rows), m))
}

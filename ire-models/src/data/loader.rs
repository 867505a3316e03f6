//! Deterministic batches: shuffling, random crop with padding, horizontal flip, normalization.
//!
//! Every random choice is derived from `(seed, epoch, batch index)` rather than from a running
//! generator, so batch `i` of epoch `e` is the same whether a run is fresh or resumed.

use serde::{Deserialize, Serialize};

use super::dataset::ImageDataset;
use crate::rng::Rng;

/// Per-channel normalization `x = (p / 255 − mean) / std`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    /// Channel means on the `[0, 1]` scale.
    pub mean: Vec<f32>,
    /// Channel standard deviations on the `[0, 1]` scale.
    pub std: Vec<f32>,
}

impl Normalize {
    /// The usual CIFAR-10 training-set statistics.
    pub fn cifar10() -> Self {
        Normalize {
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2470, 0.2435, 0.2616],
        }
    }

    /// Statistics measured on `ds` (use the training split only).
    pub fn from_dataset(ds: &ImageDataset) -> Self {
        let hw = ds.height * ds.width;
        let mut mean = vec![0f32; ds.channels];
        let mut std = vec![0f32; ds.channels];
        for c in 0..ds.channels {
            let (mut s, mut s2, mut n) = (0f64, 0f64, 0f64);
            for i in 0..ds.len() {
                for &p in &ds.image(i)[c * hw..(c + 1) * hw] {
                    let x = p as f64 / 255.0;
                    s += x;
                    s2 += x * x;
                    n += 1.0;
                }
            }
            let m = if n > 0.0 { s / n } else { 0.0 };
            mean[c] = m as f32;
            std[c] = ((s2 / n.max(1.0) - m * m).max(0.0).sqrt() as f32).max(1e-3);
        }
        Normalize { mean, std }
    }
}

/// Training-time augmentation (the standard CIFAR recipe: pad 4, random crop, flip).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Augment {
    /// Zero padding before a random crop back to the original size (0 = no crop).
    pub crop_padding: usize,
    /// Random horizontal flip with probability 1/2.
    pub hflip: bool,
}

impl Augment {
    /// No augmentation (evaluation).
    pub const NONE: Augment = Augment {
        crop_padding: 0,
        hflip: false,
    };
}

/// One batch, ready for a model: `x` is `n × C × H × W` `f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Inputs.
    pub x: Vec<f32>,
    /// Labels.
    pub y: Vec<u32>,
    /// Number of examples.
    pub n: usize,
}

impl Batch {
    /// Examples `r` of the batch as a batch of their own (inputs and labels split evenly per
    /// example, as every batch here holds the same number of each per example).
    pub fn examples(&self, r: std::ops::Range<usize>) -> Batch {
        let per = |len: usize| len.checked_div(self.n).unwrap_or(0);
        let (xs, ys) = (per(self.x.len()), per(self.y.len()));
        let (a, b) = (
            r.start.min(self.n),
            r.end.min(self.n).max(r.start.min(self.n)),
        );
        Batch {
            x: self.x[a * xs..b * xs].to_vec(),
            y: self.y[a * ys..b * ys].to_vec(),
            n: b - a,
        }
    }

    /// The example ranges of `parts` micro-batches: near-equal consecutive runs (the first
    /// `n mod parts` one example longer), none empty; one range when `parts ≤ 1`.
    pub fn micro_ranges(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
        let parts = parts.clamp(1, n.max(1));
        let (q, r) = (n / parts, n % parts);
        let mut start = 0;
        (0..parts)
            .map(|i| {
                let len = q + usize::from(i < r);
                let range = start..start + len;
                start += len;
                range
            })
            .collect()
    }
}

/// Cuts a dataset into batches, epoch by epoch, reproducibly from a seed.
#[derive(Clone, Debug)]
pub struct BatchLoader {
    n: usize,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    drop_last: bool,
    epoch_order: Option<(u64, Vec<u32>)>,
}

impl BatchLoader {
    /// A loader over `n` examples.
    pub fn new(n: usize, batch_size: usize, seed: u64, shuffle: bool, drop_last: bool) -> Self {
        BatchLoader {
            n,
            batch_size: batch_size.max(1),
            seed,
            shuffle,
            drop_last,
            epoch_order: None,
        }
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.n / self.batch_size
        } else {
            self.n.div_ceil(self.batch_size)
        }
    }

    /// The example order of `epoch`.
    pub fn order(&mut self, epoch: u64) -> &[u32] {
        let stale = self.epoch_order.as_ref().is_none_or(|(e, _)| *e != epoch);
        if stale {
            let order = if self.shuffle {
                Rng::derive(self.seed, 0x5EED_0F0D, epoch).permutation(self.n)
            } else {
                (0..self.n as u32).collect()
            };
            self.epoch_order = Some((epoch, order));
        }
        self.epoch_order.as_ref().map_or(&[], |(_, o)| o.as_slice())
    }

    /// Batch `index` of `epoch`, augmented and normalized.
    pub fn batch(
        &mut self,
        ds: &ImageDataset,
        epoch: u64,
        index: usize,
        norm: &Normalize,
        aug: Augment,
    ) -> Batch {
        let bs = self.batch_size;
        let seed = self.seed;
        let order = self.order(epoch);
        let start = (index * bs).min(order.len());
        let end = (start + bs).min(order.len());
        let ids: Vec<u32> = order[start..end].to_vec();
        let mut rng = Rng::derive(seed, epoch.wrapping_add(1), index as u64);
        let (c, h, w) = (ds.channels, ds.height, ds.width);
        let mut x = Vec::with_capacity(ids.len() * c * h * w);
        let mut y = Vec::with_capacity(ids.len());
        for &i in &ids {
            let img = ds.image(i as usize);
            let p = aug.crop_padding as i64;
            let (dy, dx) = if p > 0 {
                (
                    rng.below(2 * p as u64 + 1) as i64 - p,
                    rng.below(2 * p as u64 + 1) as i64 - p,
                )
            } else {
                (0, 0)
            };
            let flip = aug.hflip && rng.bernoulli(0.5);
            for ch in 0..c {
                let (m, s) = (
                    norm.mean[ch % norm.mean.len()],
                    norm.std[ch % norm.std.len()],
                );
                for r in 0..h as i64 {
                    for col in 0..w as i64 {
                        let sc = if flip { w as i64 - 1 - col } else { col };
                        let (sr, sc) = (r + dy, sc + dx);
                        // Out of the image: the zero padding of the raw pixels.
                        let v = if sr >= 0 && sr < h as i64 && sc >= 0 && sc < w as i64 {
                            img[ch * h * w + sr as usize * w + sc as usize]
                        } else {
                            0
                        };
                        x.push((v as f32 / 255.0 - m) / s);
                    }
                }
            }
            y.push(ds.labels[i as usize]);
        }
        Batch { n: ids.len(), x, y }
    }
}

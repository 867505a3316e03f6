//! A small, seedable, serializable random generator (xoshiro256**), so that every random choice
//! of a run (initialization, shuffling, augmentation, dropout, sampled labels) is reproducible
//! from the seed on every platform and can be derived per (seed, stream, index) without state.

use serde::{Deserialize, Serialize};

/// xoshiro256** seeded through SplitMix64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        Rng {
            s: [
                splitmix(&mut x),
                splitmix(&mut x),
                splitmix(&mut x),
                splitmix(&mut x),
            ],
        }
    }

    /// An independent generator for `(seed, stream, index)`: e.g. the augmentation of batch
    /// `index` of epoch `stream`. Derivation instead of state makes resuming trivial.
    pub fn derive(seed: u64, stream: u64, index: u64) -> Self {
        let mut x = seed ^ 0xA076_1D64_78BD_642F;
        let a = splitmix(&mut x) ^ stream.wrapping_mul(0xE703_7ED1_A0B4_28DB);
        let mut y = a;
        let b = splitmix(&mut y) ^ index.wrapping_mul(0x8EBC_6AF0_9C88_C6E3);
        Rng::new(b)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// `true` with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<u32> {
        let mut v: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
        v
    }

    /// An index drawn from the distribution `probs` (non-negative, summing to about 1).
    pub fn categorical(&mut self, probs: &[f32]) -> usize {
        let u = self.uniform() as f32;
        let mut acc = 0.0f32;
        for (i, &p) in probs.iter().enumerate() {
            acc += p;
            if u < acc {
                return i;
            }
        }
        // Rounding left the sum just below 1: the last class with non-zero mass.
        probs.iter().rposition(|&p| p > 0.0).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(
            Rng::derive(1, 0, 0).next_u64(),
            Rng::derive(1, 0, 1).next_u64()
        );
        assert_ne!(
            Rng::derive(1, 0, 0).next_u64(),
            Rng::derive(1, 1, 0).next_u64()
        );
        let p = Rng::new(3).permutation(1000);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<u32>>());
        assert_ne!(p, s);
    }

    #[test]
    fn moments_are_right() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: 1/√n ≈ 0.0022 for the mean, √(2/n) ≈ 0.0032 for the variance.
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.015,
            "{mean} {var}"
        );
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[r.categorical(&[0.2, 0.5, 0.3])] += 1;
        }
        // Binomial standard deviation ≈ 87 at most.
        for (c, p) in counts.iter().zip([0.2, 0.5, 0.3]) {
            assert!((*c as f64 - 30_000.0 * p).abs() < 450.0, "{counts:?}");
        }
    }
}

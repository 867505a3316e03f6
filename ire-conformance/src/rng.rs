//! The seeded generator of every test input (the same bits on every backend).

use ire_core::Scalar;

/// A small deterministic generator (SplitMix64) for test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n` is 0; the modulo bias is irrelevant for test data).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Values spread over several magnitudes and both signs, with exact zeros and repeats.
    pub fn values<T: Scalar>(&mut self, n: usize) -> Vec<T> {
        (0..n)
            .map(|_| {
                let r = self.next_u64() % 16;
                let mag = [1e-3, 0.1, 1.0, 3.0, 50.0][(self.next_u64() % 5) as usize];
                let x = match r {
                    0 => 0.0,
                    1 => 0.5,
                    _ => (self.uniform() * 2.0 - 1.0) * mag,
                };
                T::of(x)
            })
            .collect()
    }
    /// Positive values (second moments).
    pub fn positive<T: Scalar>(&mut self, n: usize) -> Vec<T> {
        self.values::<T>(n).into_iter().map(|x| x * x).collect()
    }
    /// A 0/1 mask with about half ones.
    pub fn mask(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() & 1) as u8).collect()
    }
}

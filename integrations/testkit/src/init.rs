//! Deterministic initial values, so that two runs (or two frameworks) start from the same bits.

/// SplitMix64: a small counter-based generator.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.uniform() * (i + 1) as f64) as usize;
            v.swap(i, j.min(i));
        }
        v
    }
}

/// `n` values uniform in `[-bound, bound)` from `seed` (PyTorch's default `Linear` init uses
/// `bound = 1/sqrt(fan_in)`).
pub fn uniform_init(seed: u64, n: usize, bound: f32) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| ((2.0 * r.uniform() - 1.0) * bound as f64) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_reproducible_and_bounded() {
        let a = uniform_init(3, 1000, 0.125);
        assert_eq!(a, uniform_init(3, 1000, 0.125));
        assert_ne!(a, uniform_init(4, 1000, 0.125));
        assert!(a.iter().all(|x| (-0.125..0.125).contains(x)));
        let mut p = SplitMix64::new(1).permutation(50);
        p.sort_unstable();
        assert_eq!(p, (0..50).collect::<Vec<_>>());
    }
}

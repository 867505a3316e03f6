//! The global threshold of a mask refresh: which coordinates are flat.
//!
//! The official code has three rules, all over the estimate `h` of every participating tensor
//! concatenated, with `r = 1 − γ` (the official `rank`) and counts truncated in `f64`; in each, a
//! coordinate is flat iff `h ≤ τ`, so ties at `τ` are flat:
//! - [`ThresholdRule::SharpTopK`]: `k = ⌊r N⌋` sharp coordinates, `τ` = the k-th largest `h`
//!   (`CV/cifar/sgdire.py`, `samire.py`, `CV/imagenet/ire.py`);
//! - [`ThresholdRule::FlatKthSmallest`]: `m = ⌊(1 − r) N⌋` flat coordinates, `τ` = the m-th
//!   smallest `h` (`NLP/small-scale/IRE.py`, `NLP/LLM/ire_new.py`);
//! - [`ThresholdRule::AdmIre`]: the first when `r < 0.5`, the second otherwise
//!   (`NLP/LLM/ire.py`, `AdamWIRE_PARAMS`).
//!
//! The m-th smallest of `N` values is their `(N − m + 1)`-th largest, so every rule is one exact
//! k-th-largest selection ([`crate::backend::Backend::kth_largest`]).

use crate::error::{Result, check};

/// How the threshold τ of a mask refresh is chosen (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ThresholdRule {
    /// `k = ⌊(1 − γ) N⌋` sharp coordinates; τ = the k-th largest estimate. `k = 0`: all flat;
    /// `k = N` (γ = 0): none flat.
    #[default]
    SharpTopK,
    /// `m = ⌊γ N⌋` flat coordinates; τ = the m-th smallest estimate. `m = 0`: none flat (the
    /// official code raises there); `m = N`: all flat.
    FlatKthSmallest,
    /// [`ThresholdRule::SharpTopK`] when `1 − γ < 0.5`, else [`ThresholdRule::FlatKthSmallest`].
    AdmIre,
}

/// How γ varies over the refreshes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum GammaSchedule {
    /// γ is the configured value at every refresh.
    #[default]
    Constant,
    /// The official `rank_increase` schedule of `NLP/LLM/ire.py` and `ire_new.py`, as written.
    /// With `r = 1 − γ`, `i` the steps since the IRE warm-up and `H = horizon`:
    /// when `i mod ⌊H/10⌋ < H/20`, `r_t = r + (0.1 − r)·i/(H/20)`, otherwise
    /// `r_t = 0.1 + (r − 0.1)·(i − H/20)/(H/20)`; then `γ_t = 1 − r_t`.
    ///
    /// The interpolation uses `i`, not `i mod ⌊H/10⌋`, so only the first tenth of the horizon
    /// moves `r_t` between `r` and 0.1 as the name suggests; later refreshes drive it far outside
    /// `[0, 1]`. Counts are then clamped to `[0, N]`: `r_t ≥ 1` makes every coordinate sharp,
    /// `r_t ≤ 0` every coordinate flat (where the official code would fail in `torch.topk`).
    RankIncrease {
        /// The official `max_iter_decay`: total steps after the IRE warm-up (≥ 20).
        horizon: u64,
    },
}

impl GammaSchedule {
    /// Checks the schedule's own parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            GammaSchedule::Constant => Ok(()),
            GammaSchedule::RankIncrease { horizon } => {
                check("horizon", horizon as f64, horizon >= 20, ">= 20")
            }
        }
    }

    /// The official `rank_t` (`= 1 − γ_t`) at `steps_since_warmup`, for the configured γ.
    pub fn rank_at(&self, gamma: f64, steps_since_warmup: u64) -> f64 {
        let rank = 1.0 - gamma;
        match *self {
            GammaSchedule::Constant => rank,
            GammaSchedule::RankIncrease { horizon } => {
                let (i, h) = (steps_since_warmup as f64, horizon as f64);
                // `int(max_iter_decay / 10)` truncates; `max_iter_decay / 20` does not.
                let period = (horizon / 10).max(1);
                let half = h / 20.0;
                if ((steps_since_warmup % period) as f64) < half {
                    rank + (0.1 - rank) * i / half
                } else {
                    0.1 + (rank - 0.1) * (i - half) / half
                }
            }
        }
    }
}

/// `⌊x·N⌋` for a fraction `x`, clamped to `[0, N]`, computed in `f64`; a product within `1e−9`
/// (relative) of an integer counts as that integer.
///
/// The snap makes γ = 0.9 on N = 10 give one sharp coordinate as a reader expects: `1 − 0.9`
/// is `0.0999…` in binary, and the official code, which takes `rank = 0.1` directly, gets 1.
pub fn truncated_count(n: usize, fraction: f64) -> usize {
    let x = fraction * n as f64;
    if x.is_nan() || x <= 0.0 {
        return 0;
    }
    let r = num_traits::Float::round(x);
    let k = if (x - r).abs() <= 1e-9 * x.max(1.0) {
        r
    } else {
        num_traits::Float::floor(x)
    };
    if k >= n as f64 { n } else { k as usize }
}

/// The number of SHARP coordinates `k = ⌊(1 − γ) N⌋` of [`ThresholdRule::SharpTopK`].
pub fn sharp_count(n: usize, gamma: f64) -> usize {
    truncated_count(n, 1.0 - gamma)
}

/// What a refresh's selection has to find, from the rule, `r_t = 1 − γ_t` and `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every coordinate is flat; no selection.
    AllFlat,
    /// No coordinate is flat; no selection.
    NoneFlat,
    /// τ is the k-th largest estimate (1-based, `1 ≤ k ≤ N`); flat iff `h ≤ τ`.
    KthLargest(usize),
}

impl ThresholdRule {
    /// The selection a refresh over `n` values runs at rank `r = 1 − γ`.
    pub fn selection(self, n: usize, rank: f64) -> Selection {
        let flat_rule = match self {
            ThresholdRule::SharpTopK => false,
            ThresholdRule::FlatKthSmallest => true,
            ThresholdRule::AdmIre => rank >= 0.5,
        };
        if flat_rule {
            match truncated_count(n, 1.0 - rank) {
                0 => Selection::NoneFlat,
                m => Selection::KthLargest(n - m + 1),
            }
        } else {
            match truncated_count(n, rank) {
                0 => Selection::AllFlat,
                k if k >= n => Selection::NoneFlat,
                k => Selection::KthLargest(k),
            }
        }
    }
}

//! The exact global IRE threshold over values spread over the ranks of a [`Collective`],
//! without gathering them.
//!
//! Each rank holds any number of local slices of any sizes (empty ones included). A radix
//! selection runs on the order-preserving integer keys of the values
//! ([`Scalar::order_key_u64`]), most significant digit first, [`DIGIT_BITS`] bits per pass:
//! each rank builds the histogram of the next digit among its values that match the prefix
//! chosen so far, the histograms (`u64` counts, 2 KiB) are summed by one all-reduce, and every
//! rank picks the same digit from the same global counts. After `bits / DIGIT_BITS` passes (4
//! for `f32`, 8 for `f64`), or as soon as a single value matches the prefix (its owner then
//! contributes its key to one more 8-byte all-reduce), every rank holds the same key, hence the
//! same value, bit for bit.
//!
//! The answer is the one of the single-process selection ([`crate::host::kth_largest`], the
//! backends' [`crate::Backend::kth_largest`]) over all local slices of all ranks
//! concatenated, at any world size: values are ranked by the same total order (`-∞ < … < -0.0
//! < +0.0 < … < +∞`), ties count once each, and the value returned is the one whose key has
//! the requested rank, sign of zero included. A NaN on any rank is counted through the first
//! all-reduce (with the number of values) and refused on every rank with the same
//! [`Error::NonFinite`].
//!
//! Counts `k`, `m` of the threshold rules ([`ThresholdRule`]) come from the GLOBAL number of
//! values. Every rank must pass the same rule, rank `r = 1 − γ` and `k`.

use alloc::format;
use alloc::vec::Vec;

use super::{Collective, CollectiveFailure, CollectiveOp, failure};
use crate::error::{Error, Result, check};
use crate::formulas;
use crate::optim::{Selection, ThresholdRule};
use crate::scalar::Scalar;

/// Bits of the key consumed per pass: 256 buckets, a 2 KiB histogram of `u64` counts.
pub const DIGIT_BITS: u32 = 8;
const BUCKETS: usize = 1 << DIGIT_BITS;

/// The numbers every rank learns from the first all-reduce of a selection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalCount {
    /// Number of values over all ranks.
    pub values: u64,
    /// Number of NaN among them.
    pub nan: u64,
}

/// The number of values and of NaN over all ranks (one all-reduce of two `u64`).
pub fn global_count<T: Scalar, C: Collective + ?Sized>(
    parts: &[&[T]],
    c: &C,
) -> Result<GlobalCount> {
    let mut counts = [0u64; 2];
    for p in parts {
        counts[0] += p.len() as u64;
        counts[1] += p.iter().filter(|x| x.is_nan()).count() as u64;
    }
    c.all_reduce_sum((&mut counts[..]).into())?;
    Ok(GlobalCount {
        values: counts[0],
        nan: counts[1],
    })
}

fn refuse_nan(count: &GlobalCount) -> Result<()> {
    if count.nan == 0 {
        Ok(())
    } else {
        Err(Error::NonFinite {
            what: format!(
                "values of the distributed k-th-largest selection ({} NaN among {} values over all ranks)",
                count.nan, count.values
            ),
        })
    }
}

fn to_usize(n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| Error::InvalidInput {
        what: format!("{n} values over all ranks: more than this target's usize counts"),
    })
}

/// The k-th largest value (1-based) over the local `parts` of every rank concatenated; exact,
/// and the same bits on every rank as the single-process selection over the concatenation.
/// `k` must be in `1..=N` (N over all ranks); a NaN on any rank is an [`Error::NonFinite`] on
/// every rank.
pub fn kth_largest<T: Scalar, C: Collective + ?Sized>(
    parts: &[&[T]],
    k: usize,
    c: &C,
) -> Result<T> {
    let count = global_count(parts, c)?;
    let n = to_usize(count.values)?;
    check("k", k as f64, k >= 1 && k <= n, "1..=N (number of values)")?;
    refuse_nan(&count)?;
    radix_select(parts, k as u64, c)
}

/// The m-th smallest value (1-based) over the local `parts` of every rank concatenated (the
/// `(N − m + 1)`-th largest); `m` must be in `1..=N`. See [`kth_largest`].
pub fn kth_smallest<T: Scalar, C: Collective + ?Sized>(
    parts: &[&[T]],
    m: usize,
    c: &C,
) -> Result<T> {
    let count = global_count(parts, c)?;
    let n = to_usize(count.values)?;
    check("m", m as f64, m >= 1 && m <= n, "1..=N (number of values)")?;
    refuse_nan(&count)?;
    radix_select(parts, (n - m + 1) as u64, c)
}

/// The global threshold of a mask refresh, the same on every rank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GlobalThreshold<T> {
    /// Number of values over all ranks (the `N` of the rule).
    pub n: u64,
    /// What the rule asked for at this `N`.
    pub selection: Selection,
    /// τ: flat iff `h ≤ τ` ([`formulas::mask_le`]); `None` when the selection is
    /// [`Selection::AllFlat`] or [`Selection::NoneFlat`].
    pub tau: Option<T>,
}

impl<T: Scalar> GlobalThreshold<T> {
    /// The mask value of one estimate: 1 (flat) or 0 (sharp).
    pub fn mask(&self, h: T) -> u8 {
        match (self.selection, self.tau) {
            (Selection::AllFlat, _) => 1,
            (Selection::KthLargest(_), Some(tau)) => formulas::mask_le(h, tau),
            _ => 0,
        }
    }
}

/// The global threshold of `rule` at rank `r = 1 − γ` (the official `rank`; see
/// [`ThresholdRule::selection`] and [`crate::optim::GammaSchedule::rank_at`]) over
/// the local estimate `parts` of every rank: the counts come from the global `N`, τ from
/// [`kth_largest`]'s radix selection. A NaN on any rank is refused on every rank (even when the
/// rule needs no selection); a NaN `rank` is an [`Error::InvalidHyperParameter`].
pub fn threshold<T: Scalar, C: Collective + ?Sized>(
    parts: &[&[T]],
    rule: ThresholdRule,
    rank: f64,
    c: &C,
) -> Result<GlobalThreshold<T>> {
    check("rank", rank, !rank.is_nan(), "not NaN (1 - gamma)")?;
    let count = global_count(parts, c)?;
    let n = to_usize(count.values)?;
    refuse_nan(&count)?;
    let selection = rule.selection(n, rank);
    let tau = match selection {
        Selection::KthLargest(k) => Some(radix_select(parts, k as u64, c)?),
        Selection::AllFlat | Selection::NoneFlat => None,
    };
    Ok(GlobalThreshold {
        n: count.values,
        selection,
        tau,
    })
}

/// The number of flat coordinates over all ranks of the mask `t` makes of the local `parts`
/// (one all-reduce of one `u64`); equal to the single-process count of
/// [`formulas::mask_le`] over the concatenation.
pub fn flat_count<T: Scalar, C: Collective + ?Sized>(
    parts: &[&[T]],
    t: &GlobalThreshold<T>,
    c: &C,
) -> Result<u64> {
    let mut local = [0u64];
    for p in parts {
        local[0] += match (t.selection, t.tau) {
            (Selection::AllFlat, _) => p.len() as u64,
            (Selection::KthLargest(_), Some(tau)) => p
                .iter()
                .filter(|&&h| formulas::mask_le(h, tau) == 1)
                .count() as u64,
            _ => 0,
        };
    }
    c.all_reduce_sum((&mut local[..]).into())?;
    Ok(local[0])
}

/// The most payload bytes one rank hands to [`Collective::all_reduce_sum`] in one
/// [`kth_largest`], [`kth_smallest`] or [`threshold`] of `T`: the counts (16 bytes) and one
/// 2 KiB histogram per pass (4 passes for `f32`, 8 for `f64`); a selection that isolates a
/// single value early sends fewer passes and 8 bytes more. It does not depend on the number
/// of values or of ranks. [`flat_count`] adds 8 bytes.
pub fn max_selection_bytes<T: Scalar>() -> u64 {
    let bits = 8 * core::mem::size_of::<T>() as u64;
    let passes = bits / DIGIT_BITS as u64;
    16 + passes * (BUCKETS as u64) * 8
}

/// What one rank's share of the selection reads: its slices, or (once few of its values match
/// the prefix) the keys of those that do.
enum Local<'a, T> {
    Parts(&'a [&'a [T]]),
    Keys(Vec<u64>),
}

/// The radix selection proper: the k-th largest key (`1 ≤ k ≤ N`, no NaN, checked by the
/// callers), the same on every rank.
fn radix_select<T: Scalar, C: Collective + ?Sized>(parts: &[&[T]], k: u64, c: &C) -> Result<T> {
    let bits = 8 * core::mem::size_of::<T>() as u32;
    let local_n: u64 = parts.iter().map(|p| p.len() as u64).sum();
    let lost = || failure(CollectiveOp::Selection, CollectiveFailure::RanksDisagree);
    let mut local = Local::Parts(parts);
    let (mut prefix, mut consumed, mut k) = (0u64, 0u32, k);
    loop {
        let shift = bits - consumed - DIGIT_BITS;
        let digit = |key: u64| ((key >> shift) as usize) & (BUCKETS - 1);
        let mut hist = [0u64; BUCKETS];
        match &local {
            Local::Parts(ps) => {
                for p in ps.iter() {
                    if consumed == 0 {
                        for x in p.iter() {
                            hist[digit(x.order_key_u64())] += 1;
                        }
                    } else {
                        for x in p.iter() {
                            let key = x.order_key_u64();
                            if key >> (bits - consumed) == prefix {
                                hist[digit(key)] += 1;
                            }
                        }
                    }
                }
            }
            Local::Keys(keys) => {
                for &key in keys {
                    hist[digit(key)] += 1;
                }
            }
        }
        let mine = hist;
        c.all_reduce_sum((&mut hist[..]).into())?;
        // The digit of the k-th largest: walk the buckets from the top.
        let mut above = 0u64;
        let mut chosen = None;
        for d in (0..BUCKETS).rev() {
            if above + hist[d] >= k {
                chosen = Some(d);
                break;
            }
            above += hist[d];
        }
        let d = chosen.ok_or_else(lost)?;
        k -= above;
        prefix = (prefix << DIGIT_BITS) | d as u64;
        consumed += DIGIT_BITS;
        if consumed == bits {
            return Ok(T::from_order_key_u64(prefix));
        }
        let matches = |key: u64| key >> (bits - consumed) == prefix;
        if hist[d] == 1 {
            // One value over all ranks has this prefix: its owner sends its key.
            let mut key = [0u64];
            if mine[d] == 1 {
                key[0] = match &local {
                    Local::Parts(ps) => ps
                        .iter()
                        .flat_map(|p| p.iter())
                        .map(|x| x.order_key_u64())
                        .find(|&key| matches(key)),
                    Local::Keys(keys) => keys.iter().copied().find(|&key| matches(key)),
                }
                .ok_or_else(lost)?;
            }
            c.all_reduce_sum((&mut key[..]).into())?;
            return Ok(T::from_order_key_u64(key[0]));
        }
        // Narrow this rank's share: keep the matching keys once they are few.
        match &mut local {
            Local::Keys(keys) => keys.retain(|&key| matches(key)),
            Local::Parts(ps) => {
                if mine[d] <= local_n / 8 {
                    let mut keys = Vec::with_capacity(mine[d] as usize);
                    for p in ps.iter() {
                        keys.extend(
                            p.iter()
                                .map(|x| x.order_key_u64())
                                .filter(|&key| matches(key)),
                        );
                    }
                    local = Local::Keys(keys);
                }
            }
        }
    }
}

//! Inputs and the single-process oracle of the distributed IRE threshold
//! ([`ire_core::collective::select`]): shared by its tests (simulated ranks) and by the MPI
//! check binary of `ire-mpi` (real ranks), so both judge it against the same thing.

use std::vec;
use std::vec::Vec;

use ire_core::optim::{Selection, ThresholdRule};
use ire_core::{Result, Scalar, formulas, host};

use crate::Rng;

/// Seeded values for a selection: with `tied`, a few dozen distinct values (both zeros, both
/// infinities, negatives, a subnormal and a few spread ones), the hard cases of an exact
/// selection; otherwise nearly all distinct, in [−0.5, 1.5).
pub fn threshold_values<T: Scalar>(rng: &mut Rng, n: usize, tied: bool) -> Vec<T> {
    (0..n)
        .map(|_| {
            if !tied {
                return T::of(rng.uniform() * 2.0 - 0.5);
            }
            match rng.below(20) {
                0 => T::zero(),
                1 => -T::zero(),
                2 => T::infinity(),
                3 => T::neg_infinity(),
                4 => T::min_positive_value() / T::of(4.0),
                5 => T::of(-(rng.below(5) as f64) - 0.5),
                6 | 7 => T::of(rng.uniform()),
                _ => T::of(rng.below(30) as f64 * 0.125),
            }
        })
        .collect()
}

/// Deals `all` out to `world` ranks as consecutive parts of uneven lengths (empty parts
/// included), each part to a seeded pseudo-random rank; with several ranks, rank
/// `empty_rank` holds a single empty part. Every rank's parts, in the order dealt: their
/// concatenation over the ranks is a permutation of `all`, which no selection can tell apart.
pub fn deal<T: Copy>(
    all: &[T],
    world: usize,
    rng: &mut Rng,
    empty_rank: usize,
) -> Vec<Vec<Vec<T>>> {
    let world = world.max(1);
    let empty = (world > 1).then_some(empty_rank % world);
    let mut ranks: Vec<Vec<Vec<T>>> = vec![Vec::new(); world];
    if let Some(e) = empty {
        ranks[e].push(Vec::new());
    }
    let mut i = 0;
    while i < all.len() {
        let len = match rng.below(4) {
            0 => 0,
            1 => 1,
            _ => rng.below(all.len() as u64 / 4 + 2) as usize,
        };
        let end = (i + len).min(all.len());
        let mut owner = rng.below(world as u64) as usize;
        if Some(owner) == empty {
            owner = (owner + 1) % world;
        }
        ranks[owner].push(all[i..end].to_vec());
        i = end;
    }
    ranks
}

/// The single-process refresh of IRE over `all`: the rule's selection, τ (the host's exact
/// k-th largest) and the flat count of the mask `h ≤ τ`.
pub fn single_process_refresh<T: Scalar>(
    all: &[T],
    rule: ThresholdRule,
    rank: f64,
) -> Result<(Selection, Option<T>, u64)> {
    let sel = rule.selection(all.len(), rank);
    Ok(match sel {
        Selection::AllFlat => (sel, None, all.len() as u64),
        Selection::NoneFlat => (sel, None, 0),
        Selection::KthLargest(k) => {
            let tau = host::kth_largest(&mut all.to_vec(), k)?;
            let flat = all
                .iter()
                .filter(|&&h| formulas::mask_le(h, tau) == 1)
                .count();
            (sel, Some(tau), flat as u64)
        }
    })
}

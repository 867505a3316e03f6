//! The exact distributed IRE threshold (`ire_core::collective::select`) on simulated ranks
//! (threads) against the single-process refresh: the same selection, τ with the same bits and
//! the same flat count at every world size, on tied, signed-zero, infinite and NaN inputs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_conformance::Rng;
use ire_conformance::collective::{deal, single_process_refresh, threshold_values};
use ire_core::collective::select::{
    flat_count, kth_largest, kth_smallest, max_selection_bytes, threshold,
};
use ire_core::collective::threads::ThreadGroup;
use ire_core::collective::{Collective, Metered, SingleProcess};
use ire_core::optim::{Selection, ThresholdRule};
use ire_core::{Error, Scalar};

fn refs<T>(parts: &[Vec<T>]) -> Vec<&[T]> {
    parts.iter().map(|p| &p[..]).collect()
}

const RULES: [ThresholdRule; 3] = [
    ThresholdRule::SharpTopK,
    ThresholdRule::FlatKthSmallest,
    ThresholdRule::AdmIre,
];
const GAMMAS: [f64; 6] = [0.0, 0.1, 0.5, 0.6, 0.9, 1.0];

/// Seeded tied values (see `threshold_values`).
fn tied_values<T: Scalar>(n: usize, seed: u64) -> Vec<T> {
    threshold_values(&mut Rng::new(seed), n, true)
}

/// `all` dealt to `world` ranks, the last one holding nothing.
fn shard<T: Copy>(all: &[T], world: usize, seed: u64) -> Vec<Vec<Vec<T>>> {
    deal(all, world, &mut Rng::new(seed), world.saturating_sub(1))
}

/// Every rule and γ on `world` simulated ranks against the single-process refresh: the same
/// selection, τ with the same bits and the same flat count, on every rank.
fn threshold_matches<T: Scalar>(all: &[T], world: usize, seed: u64) {
    let ranks = shard(all, world, seed);
    let concat: Vec<T> = ranks.iter().flatten().flatten().copied().collect();
    for rule in RULES {
        for gamma in GAMMAS {
            let rank = 1.0 - gamma;
            let (sel, tau, flat) = single_process_refresh(&concat, rule, rank).unwrap();
            let got = ThreadGroup::run(world, |c| {
                let local = refs(&ranks[c.rank()]);
                let t = threshold(&local, rule, rank, c).unwrap();
                let f = flat_count(&local, &t, c).unwrap();
                (t, f)
            })
            .unwrap();
            for (r, (t, f)) in got.iter().enumerate() {
                let what = format!("{rule:?} γ {gamma} world {world} rank {r}");
                assert_eq!(t.n, all.len() as u64, "{what}");
                assert_eq!(t.selection, sel, "{what}");
                assert_eq!(
                    t.tau.map(|x| x.to_bits_u64()),
                    tau.map(|x| x.to_bits_u64()),
                    "{what}"
                );
                assert_eq!(*f, flat, "{what}");
            }
        }
    }
}

trait Bits {
    fn to_bits_u64(self) -> u64;
}
impl<T: Scalar> Bits for T {
    fn to_bits_u64(self) -> u64 {
        // The key is a bijection of the bits (the inverse is tested below).
        self.order_key_u64()
    }
}

#[test]
fn keys_invert_to_the_same_bits() {
    let mut r = Rng::new(3);
    for _ in 0..10_000 {
        let x = f32::from_bits(r.next_u64() as u32);
        if !x.is_nan() {
            assert_eq!(
                f32::from_order_key_u64(x.order_key_u64()).to_bits(),
                x.to_bits()
            );
        }
        let y = f64::from_bits(r.next_u64());
        if !y.is_nan() {
            assert_eq!(
                f64::from_order_key_u64(y.order_key_u64()).to_bits(),
                y.to_bits()
            );
        }
    }
    for x in [
        0.0f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE / 2.0,
    ] {
        assert_eq!(
            f32::from_order_key_u64(x.order_key_u64()).to_bits(),
            x.to_bits()
        );
    }
}

#[test]
fn the_threshold_equals_the_single_process_one_at_every_world_size() {
    for (n, seed) in [(0usize, 1u64), (1, 2), (7, 3), (1000, 4), (20_011, 5)] {
        let v32 = tied_values::<f32>(n, seed);
        let v64 = tied_values::<f64>(n, seed + 100);
        for world in 1..=5 {
            threshold_matches(&v32, world, seed * 7 + world as u64);
            threshold_matches(&v64, world, seed * 11 + world as u64);
        }
    }
}

#[test]
fn distinct_values_take_the_early_exit_and_agree() {
    // Distinct values: a bucket soon holds a single value, whose owner sends its key.
    let mut r = Rng::new(9);
    let v: Vec<f64> = (0..5000)
        .map(|_| r.next_u64() as f64 / 3.0 - 1e18)
        .collect();
    let v32: Vec<f32> = (0..5000)
        .map(|_| (r.next_u64() >> 40) as f32 - 1e6)
        .collect();
    for world in [1, 2, 3, 4] {
        threshold_matches(&v, world, 40 + world as u64);
        threshold_matches(&v32, world, 50 + world as u64);
    }
}

#[test]
fn every_k_on_single_process_matches_the_host_selection() {
    let v = tied_values::<f32>(300, 21);
    let parts = shard(&v, 1, 22);
    let local = refs(&parts[0]);
    for k in 1..=v.len() {
        let want = ire_core::host::kth_largest(&mut v.clone(), k).unwrap();
        let got = kth_largest(&local, k, &SingleProcess).unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "k {k}");
        let got = kth_smallest(&local, v.len() + 1 - k, &SingleProcess).unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "m {}", v.len() + 1 - k);
    }
}

#[test]
fn every_k_on_three_ranks_matches_the_host_selection() {
    let v = tied_values::<f64>(200, 31);
    let ranks = shard(&v, 3, 32);
    let concat: Vec<f64> = ranks.iter().flatten().flatten().copied().collect();
    let got = ThreadGroup::run(3, |c| {
        let local = refs(&ranks[c.rank()]);
        (1..=concat.len())
            .map(|k| kth_largest(&local, k, c).unwrap().to_bits())
            .collect::<Vec<_>>()
    })
    .unwrap();
    for k in 1..=concat.len() {
        let want = ire_core::host::kth_largest(&mut concat.clone(), k).unwrap();
        for g in &got {
            assert_eq!(g[k - 1], want.to_bits(), "k {k}");
        }
    }
}

#[test]
fn signed_zeros_are_ranked_like_the_single_process_selection() {
    // -0.0 sorts just below +0.0: with two +0.0 and two -0.0, the 2nd largest is +0.0, the
    // 3rd is -0.0 (its sign bit set).
    let parts: [&[f32]; 2] = [&[-0.0, 0.0], &[0.0, -0.0]];
    let ranks = [vec![parts[0]], vec![parts[1]]];
    let got = ThreadGroup::run(2, |c| {
        let l = &ranks[c.rank()];
        [
            kth_largest(l, 2, c).unwrap().to_bits(),
            kth_largest(l, 3, c).unwrap().to_bits(),
        ]
    })
    .unwrap();
    for g in got {
        assert_eq!(g, [0.0f32.to_bits(), (-0.0f32).to_bits()]);
    }
    // τ = -0.0: the mask's `h ≤ τ` holds for +0.0 too (IEEE equality), as in one process.
    let all = [vec![-0.0f32, 0.0, 0.0, -0.0, 1.0]];
    let (sel, tau, flat) = single_process_refresh(&all[0], ThresholdRule::SharpTopK, 0.6).unwrap();
    assert_eq!(sel, Selection::KthLargest(3));
    assert_eq!(tau.unwrap().to_bits(), 0.0f32.to_bits());
    assert_eq!(flat, 4);
    let local = refs(&all);
    let t = threshold(&local, ThresholdRule::SharpTopK, 0.6, &SingleProcess).unwrap();
    assert_eq!(t.tau.unwrap().to_bits(), 0.0f32.to_bits());
    assert_eq!(flat_count(&local, &t, &SingleProcess).unwrap(), 4);
    let t = threshold(&local, ThresholdRule::SharpTopK, 0.8, &SingleProcess).unwrap();
    assert_eq!(t.tau.unwrap().to_bits(), (-0.0f32).to_bits());
    assert_eq!(flat_count(&local, &t, &SingleProcess).unwrap(), 4);
}

#[test]
fn infinities_are_ranked_like_the_single_process_selection() {
    let ranks: [Vec<&[f64]>; 3] = [
        vec![&[f64::INFINITY, 1.0]],
        vec![&[], &[f64::NEG_INFINITY]],
        vec![&[f64::INFINITY, f64::NEG_INFINITY, -1.0]],
    ];
    let got = ThreadGroup::run(3, |c| {
        (1..=6)
            .map(|k| kth_largest(&ranks[c.rank()], k, c).unwrap())
            .collect::<Vec<_>>()
    })
    .unwrap();
    let want = [
        f64::INFINITY,
        f64::INFINITY,
        1.0,
        -1.0,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    ];
    for g in got {
        assert_eq!(g, want);
    }
}

#[test]
fn all_tied_values_run_every_pass_and_cost_what_is_stated() {
    let v = vec![0.25f32; 1000];
    let got = ThreadGroup::run(3, |c| {
        let m = Metered::new(c);
        let shard = &v[c.rank() * 300..(c.rank() * 300 + 300 + 100 * (c.rank() / 2)).min(1000)];
        let t = threshold(&[shard], ThresholdRule::SharpTopK, 0.5, &m).unwrap();
        let bytes = m.bytes_sent();
        let f = flat_count(&[shard], &t, &m).unwrap();
        (t.tau, bytes, m.bytes_sent() - bytes, f)
    })
    .unwrap();
    for (tau, bytes, count_bytes, f) in got {
        assert_eq!(tau, Some(0.25));
        // Counts (2 u64), then 4 passes of 256 u64 for f32 keys.
        assert_eq!(bytes, 16 + 4 * 256 * 8);
        assert_eq!(bytes, max_selection_bytes::<f32>());
        assert_eq!(count_bytes, 8);
        assert_eq!(f, 1000);
    }
    assert_eq!(max_selection_bytes::<f64>(), 16 + 8 * 256 * 8);
}

#[test]
fn a_nan_on_one_rank_is_refused_on_every_rank() {
    let ranks: [Vec<&[f32]>; 3] = [vec![&[1.0, 2.0]], vec![&[3.0, f32::NAN, 4.0]], vec![&[]]];
    let got = ThreadGroup::run(3, |c| {
        let l = &ranks[c.rank()];
        (
            threshold(l, ThresholdRule::AdmIre, 0.5, c).unwrap_err(),
            // Even where the rule needs no selection (γ = 1: all flat).
            threshold(l, ThresholdRule::SharpTopK, 0.0, c).unwrap_err(),
            kth_largest(l, 2, c).unwrap_err(),
            kth_smallest(l, 2, c).unwrap_err(),
        )
    })
    .unwrap();
    let want = Error::NonFinite {
        what:
            "values of the distributed k-th-largest selection (1 NaN among 5 values over all ranks)"
                .into(),
    };
    for (a, b, k, m) in got {
        for e in [a, b, k, m] {
            assert_eq!(e, want);
        }
    }
}

#[test]
fn k_outside_one_to_n_is_refused_on_every_rank() {
    let ranks: [Vec<&[f32]>; 2] = [vec![&[1.0]], vec![&[2.0, 3.0]]];
    let got = ThreadGroup::run(2, |c| {
        let l = &ranks[c.rank()];
        [
            kth_largest(l, 0, c).unwrap_err(),
            kth_largest(l, 4, c).unwrap_err(),
            kth_smallest(l, 0, c).unwrap_err(),
            kth_smallest(l, 4, c).unwrap_err(),
        ]
    })
    .unwrap();
    for errs in got {
        for (e, (field, value)) in errs
            .iter()
            .zip([("k", 0.0), ("k", 4.0), ("m", 0.0), ("m", 4.0)])
        {
            assert_eq!(
                *e,
                Error::InvalidHyperParameter {
                    field,
                    value,
                    allowed: "1..=N (number of values)"
                }
            );
        }
    }
    let e = threshold::<f32, _>(&[], ThresholdRule::SharpTopK, f64::NAN, &SingleProcess);
    assert!(matches!(
        e,
        Err(Error::InvalidHyperParameter { field: "rank", .. })
    ));
}

#[test]
fn no_value_anywhere_needs_no_selection() {
    let got = ThreadGroup::run(2, |c| {
        let t = threshold::<f32, _>(&[&[]], ThresholdRule::SharpTopK, 0.5, c).unwrap();
        (t, flat_count::<f32, _>(&[], &t, c).unwrap())
    })
    .unwrap();
    for (t, f) in got {
        assert_eq!(
            (t.n, t.selection, t.tau, f),
            (0, Selection::AllFlat, None, 0)
        );
    }
}

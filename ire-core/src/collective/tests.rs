#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use alloc::vec;
use alloc::vec::Vec;

use super::threads::ThreadGroup;
use super::*;

fn op_err(op: CollectiveOp, f: CollectiveFailure) -> Error {
    failure(op, f)
}

#[test]
fn a_single_process_is_rank_zero_of_one_and_copies() {
    let c = SingleProcess;
    assert_eq!((c.rank(), c.world_size()), (0, 1));
    let mut x = [1.5f32, -2.0];
    c.all_reduce_sum((&mut x[..]).into()).unwrap();
    assert_eq!(x, [1.5, -2.0]);
    let mut out = [0u64; 3];
    c.reduce_scatter_sum(Buf::U64(&[4, 5, 6]), (&mut out[..]).into())
        .unwrap();
    assert_eq!(out, [4, 5, 6]);
    let mut g = [0.0f64; 2];
    c.all_gather(Buf::F64(&[7.0, 8.0]), (&mut g[..]).into())
        .unwrap();
    assert_eq!(g, [7.0, 8.0]);
    c.broadcast((&mut x[..]).into(), 0).unwrap();
    c.barrier().unwrap();
    assert_eq!(
        c.broadcast((&mut x[..]).into(), 1).unwrap_err(),
        op_err(
            CollectiveOp::Broadcast,
            CollectiveFailure::RootOutOfRange {
                root: 1,
                world_size: 1
            }
        )
    );
    assert_eq!(
        c.all_gather(Buf::F32(&[1.0]), (&mut g[..1]).into())
            .unwrap_err(),
        op_err(
            CollectiveOp::AllGather,
            CollectiveFailure::TypeMismatch {
                send: WireType::F32,
                recv: WireType::F64
            }
        )
    );
    assert_eq!(
        c.reduce_scatter_sum(Buf::U64(&[1, 2]), (&mut out[..]).into())
            .unwrap_err(),
        op_err(
            CollectiveOp::ReduceScatterSum,
            CollectiveFailure::Length {
                expected: 3,
                found: 2
            }
        )
    );
}

/// Rank `r`'s contribution to element `i`: exact in every type (small integers).
fn val(r: usize, i: usize) -> u32 {
    (r as u32 + 1) * 1000 + i as u32
}

#[test]
fn thread_groups_reduce_gather_and_broadcast_exactly() {
    for world in 1..=4usize {
        let got = ThreadGroup::run(world, |c| {
            let r = c.rank();
            let n = 5;
            let mut a32: Vec<f32> = (0..n).map(|i| val(r, i) as f32).collect();
            let mut a64: Vec<f64> = (0..n).map(|i| val(r, i) as f64 + 0.5).collect();
            let mut u32s: Vec<u32> = (0..n).map(|i| val(r, i)).collect();
            let mut u64s: Vec<u64> = (0..n).map(|i| val(r, i) as u64 + (1 << 40)).collect();
            c.all_reduce_sum((&mut a32[..]).into()).unwrap();
            c.all_reduce_sum((&mut a64[..]).into()).unwrap();
            c.all_reduce_sum((&mut u32s[..]).into()).unwrap();
            c.all_reduce_sum((&mut u64s[..]).into()).unwrap();
            let send: Vec<u64> = (0..2 * world).map(|i| val(r, i) as u64).collect();
            let mut rs = [0u64; 2];
            c.reduce_scatter_sum(Buf::U64(&send), (&mut rs[..]).into())
                .unwrap();
            let mut ag = vec![0.0f32; 2 * world];
            c.all_gather(Buf::F32(&[r as f32, -(r as f32)]), (&mut ag[..]).into())
                .unwrap();
            let mut bc: Vec<f64> = vec![r as f64; 3];
            c.broadcast((&mut bc[..]).into(), world - 1).unwrap();
            c.barrier().unwrap();
            (a32, a64, u32s, u64s, rs, ag, bc)
        })
        .unwrap();
        let total = |i: usize| (0..world).map(|r| val(r, i) as u64).sum::<u64>();
        for (r, (a32, a64, u32s, u64s, rs, ag, bc)) in got.into_iter().enumerate() {
            for i in 0..5 {
                assert_eq!(a32[i], total(i) as f32);
                assert_eq!(a64[i], total(i) as f64 + 0.5 * world as f64);
                assert_eq!(u32s[i] as u64, total(i));
                assert_eq!(u64s[i], total(i) + (world as u64) * (1 << 40));
            }
            assert_eq!(rs, [total(2 * r), total(2 * r + 1)]);
            let want: Vec<f32> = (0..world).flat_map(|q| [q as f32, -(q as f32)]).collect();
            assert_eq!(ag, want);
            assert_eq!(bc, vec![(world - 1) as f64; 3]);
        }
    }
}

#[test]
fn ranks_that_disagree_all_get_an_error_instead_of_waiting() {
    let got = ThreadGroup::run(3, |c| {
        // Rank 1 sends a longer buffer.
        let mut x = vec![1u64; 2 + (c.rank() == 1) as usize];
        let len = c.all_reduce_sum((&mut x[..]).into()).unwrap_err();
        // Rank 2 refuses its own arguments; the others learn the ranks disagree.
        let mut recv = [0u32; 2];
        let send = vec![1u32; if c.rank() == 2 { 5 } else { 6 }];
        let refused = c
            .reduce_scatter_sum(Buf::U32(&send), (&mut recv[..]).into())
            .unwrap_err();
        // Different roots.
        let mut b = [0.0f32];
        let root = c
            .broadcast((&mut b[..]).into(), c.rank().min(1))
            .unwrap_err();
        // The group still works afterwards.
        let mut ok = [c.rank() as u64];
        c.all_reduce_sum((&mut ok[..]).into()).unwrap();
        (len, refused, root, ok[0])
    })
    .unwrap();
    let disagree = |op| op_err(op, CollectiveFailure::RanksDisagree);
    for (r, (len, refused, root, ok)) in got.into_iter().enumerate() {
        assert_eq!(len, disagree(CollectiveOp::AllReduceSum));
        if r == 2 {
            assert_eq!(
                refused,
                op_err(
                    CollectiveOp::ReduceScatterSum,
                    CollectiveFailure::Length {
                        expected: 6,
                        found: 5
                    }
                )
            );
        } else {
            assert_eq!(refused, disagree(CollectiveOp::ReduceScatterSum));
        }
        assert_eq!(root, disagree(CollectiveOp::Broadcast));
        assert_eq!(ok, 3);
    }
    assert!(matches!(
        ThreadGroup::ranks(0),
        Err(Error::InvalidHyperParameter {
            field: "world_size",
            ..
        })
    ));
}

#[test]
fn metered_counts_the_payload_of_each_rank() {
    let got = ThreadGroup::run(2, |c| {
        let m = Metered::new(c);
        let mut a = [0.0f64; 3];
        m.all_reduce_sum((&mut a[..]).into()).unwrap();
        let mut r = [0u32; 1];
        m.reduce_scatter_sum(Buf::U32(&[1, 2]), (&mut r[..]).into())
            .unwrap();
        let mut g = [0u64; 4];
        m.all_gather(Buf::U64(&[1, 2]), (&mut g[..]).into())
            .unwrap();
        let mut b = [0.0f32; 5];
        m.broadcast((&mut b[..]).into(), 0).unwrap();
        m.barrier().unwrap();
        (m.bytes_sent(), m.calls())
    })
    .unwrap();
    assert_eq!(got, vec![(24 + 8 + 16 + 20, 5), (24 + 8 + 16, 5)]);
}

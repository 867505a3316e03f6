//! NCCL as `ire-core`'s `Collective` (feature `nccl`), on one GPU as a group of one: every
//! operation returns what a group of one must (sums and gathers of one rank, exact), the
//! in-place device all-reduce leaves the buffer as it was, and the distributed IRE threshold
//! through NCCL equals the single-process one. Needs a GPU and `libnccl`: without them the test
//! prints a skip line (or fails when `IRE_REQUIRE` names `cuda` / `nccl`).
#![cfg(feature = "nccl")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cuda::{Nccl, required_by_env};
use ire_conformance::Rng;
use ire_conformance::collective::{single_process_refresh, threshold_values};
use ire_core::collective::{Buf, Collective, SingleProcess, select};
use ire_core::optim::ThresholdRule;
use ire_core::{Backend, Scalar};

#[test]
fn probing_for_the_library_never_panics() {
    // On a machine without NCCL this is false; what matters is that asking is safe.
    let present = Nccl::library_present();
    println!("libnccl present: {present}");
    assert!(
        !required_by_env("nccl") || present,
        "IRE_REQUIRE names nccl"
    );
}

#[test]
fn a_group_of_one_gpu_is_exact() {
    let Some(b) = ire_backend_cuda::optional().unwrap() else {
        println!("skipped: no GPU");
        return;
    };
    if !Nccl::library_present() {
        assert!(
            !required_by_env("nccl"),
            "IRE_REQUIRE names nccl: no libnccl"
        );
        println!("skipped: no libnccl");
        return;
    }
    let nccl = Nccl::new(&b, &SingleProcess).unwrap();
    assert_eq!((nccl.rank(), nccl.world_size()), (0, 1));

    let mut a: Vec<f32> = vec![1.5, -2.0, 3.25];
    nccl.all_reduce_sum((&mut a[..]).into()).unwrap();
    assert_eq!(a, [1.5, -2.0, 3.25]);
    let mut u: Vec<u64> = vec![7, 1 << 40];
    nccl.all_reduce_sum((&mut u[..]).into()).unwrap();
    assert_eq!(u, [7, 1 << 40]);
    let mut r = [0f64; 2];
    nccl.reduce_scatter_sum(Buf::F64(&[0.5, 4.0]), (&mut r[..]).into())
        .unwrap();
    assert_eq!(r, [0.5, 4.0]);
    let mut g = [0u32; 3];
    nccl.all_gather(Buf::U32(&[9, 8, 7]), (&mut g[..]).into())
        .unwrap();
    assert_eq!(g, [9, 8, 7]);
    let mut c = [2.5f32; 4];
    nccl.broadcast((&mut c[..]).into(), 0).unwrap();
    assert_eq!(c, [2.5; 4]);
    assert!(nccl.broadcast((&mut c[..]).into(), 1).is_err());
    nccl.barrier().unwrap();

    // On the device, in place: a sum over one rank is the buffer itself.
    let host: Vec<f32> = (0..100_003).map(|i| (i as f32).sin()).collect();
    let mut dev = b.alloc_from(&host).unwrap();
    nccl.all_reduce_sum_buffer(&mut dev).unwrap();
    let back = b.to_vec(&dev).unwrap();
    assert_eq!(
        back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        host.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );

    // The distributed threshold over NCCL equals the single-process selection.
    let all: Vec<f32> = threshold_values(&mut Rng::new(5), 20_011, true);
    for rule in [ThresholdRule::SharpTopK, ThresholdRule::FlatKthSmallest] {
        let (sel, tau, flat) = single_process_refresh(&all, rule, 0.4).unwrap();
        let t = select::threshold(&[&all[..]], rule, 0.4, &nccl).unwrap();
        assert_eq!(t.selection, sel);
        assert_eq!(
            t.tau.map(|x| x.order_key_u64()),
            tau.map(|x| x.order_key_u64())
        );
        assert_eq!(select::flat_count(&[&all[..]], &t, &nccl).unwrap(), flat);
    }
}

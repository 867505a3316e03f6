//! Property (c): zero copy on the CPU (burn's ndarray backend). After the first step (which
//! allocates the optimizer's state, and at which burn copies parameters it still kept on the
//! data they were made from) a step writes every parameter where it is (its memory address
//! does not change), and neither a step nor a refresh allocates anything of parameter size.
//!
//! The counting allocator sees every thread, so this binary holds one test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{B, Batches, Mlp};
use ire_adapter_testkit::CountingAlloc;
use ire_burn::AdmIre;
use ire_burn::estimator::{LabelSampler, estimator_gradient};
use ire_core::{AdamWConfig, IreConfig};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

#[test]
fn steps_and_refreshes_run_in_place_without_parameter_sized_allocations() {
    let mut m = Mlp::<B>::new(1, 256);
    let sizes: Vec<usize> = m.values().iter().map(|v| v.len() * 4).collect();
    assert_eq!(sizes, [65536, 1024, 10240, 40]);
    let ire = IreConfig {
        kappa: 2.0,
        gamma: 0.8,
        refresh_every: 3,
        ..IreConfig::default()
    };
    let mut opt = AdmIre::<B>::adamw(AdamWConfig::default(), ire).unwrap();
    let data = Batches::new(64);
    let sampler = LabelSampler::new(1);
    let mut addresses = m.addresses();
    let mut checked_refreshes = 0;
    for step in 0..13 {
        let (x, y) = data.get::<B>(step);
        let (_, g) = m.loss_grads(x.clone(), y);
        let est = opt
            .refresh_due()
            .then(|| estimator_gradient(m.logits(x), &m, &sampler, step as u64).unwrap());
        let before = m.values();
        // Step 0 allocates the optimizer's state (moments, estimate, mask).
        let armed = step > 0;
        if let Some(e) = est {
            ALLOC.arm(1);
            opt.refresh(&m, e).unwrap();
            let record = ALLOC.disarm();
            if armed {
                // The refresh's k-th-largest selection (19,210 values, more than the CPU
                // backend gathers into its kept scratch) allocates its own working memory: a
                // sample of at most 4,096 values and per-chunk batches, bounded whatever the
                // model's size. A copy of a parameter would allocate exactly its size; no
                // allocation does, and none is as large as a weight matrix.
                assert_eq!(record.sizes.len(), record.count, "{record:?}");
                for s in &record.sizes {
                    assert!(
                        !sizes.contains(s),
                        "step {step}: an allocation of {s} bytes"
                    );
                    assert!(*s < sizes[2], "step {step}: an allocation of {s} bytes");
                }
                checked_refreshes += 1;
            }
        }
        if armed {
            ALLOC.arm(1);
        }
        let (next, r) = opt.try_step(1e-3, m, g);
        m = next;
        if armed {
            // burn's autodiff bookkeeping (its maps of graph nodes) grows now and then by a
            // KiB or two; nothing has a parameter's size or comes near the weight matrices.
            let record = ALLOC.disarm();
            assert_eq!(record.sizes.len(), record.count, "{record:?}");
            for s in &record.sizes {
                assert!(
                    !sizes.contains(s),
                    "step {step}: an allocation of {s} bytes"
                );
                assert!(*s < sizes[2], "step {step}: an allocation of {s} bytes");
            }
        }
        r.unwrap();
        if step == 0 {
            // burn kept the parameters on the `TensorData` they were made from; the first
            // write copied them once into arrays of their own.
            assert_eq!(opt.access_counts().copy_on_write, 4);
            addresses = m.addresses();
        }
        assert_eq!(m.addresses(), addresses, "step {step} moved a parameter");
        assert_ne!(m.values(), before, "step {step} changed nothing");
    }
    assert_eq!(checked_refreshes, 4);
    let counts = opt.access_counts();
    assert_eq!(counts.in_place, 12 * 4, "{counts:?}");
    assert_eq!(
        (counts.copy_on_write, counts.host_copy),
        (4, 0),
        "{counts:?}"
    );
}

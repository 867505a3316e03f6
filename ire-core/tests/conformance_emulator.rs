//! The device layer (`DeviceBackend`) on the kernel emulator: the conformance suite through
//! the real launch code (geometry, argument checks, reductions, the radix selection and its
//! read-back policy), on a machine without a device.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_conformance::emulator::{Emulator, HIST_PEAK};
use ire_core::device::{DeviceBackend, SelectionPath};
use ire_core::{Backend, Error};

fn device() -> Option<DeviceBackend<Emulator>> {
    Some(DeviceBackend::new(Emulator).with_selection_path(SelectionPath::Device))
}

ire_conformance::conformance_tests!(device());

mod host_selection {
    use super::*;
    fn host() -> Option<DeviceBackend<Emulator>> {
        Some(DeviceBackend::new(Emulator).with_selection_path(SelectionPath::Host))
    }
    ire_conformance::conformance_tests!(host());
}

mod small_histogram_budget {
    use super::*;
    fn tight() -> Option<DeviceBackend<Emulator>> {
        Some(
            DeviceBackend::new(Emulator)
                .with_selection_path(SelectionPath::Device)
                .with_histogram_budget(1000),
        )
    }
    ire_conformance::conformance_tests!(tight());
}

/// The histogram is read back before it counts more than its budget, and the answer is the
/// same.
#[test]
fn the_histogram_never_exceeds_its_budget() {
    let values: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
    let mut sorted = values.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    for budget in [7u64, 100, 999, 1000] {
        let b = DeviceBackend::new(Emulator)
            .with_selection_path(SelectionPath::Device)
            .with_histogram_budget(budget);
        let x = b.alloc_from(&values).unwrap();
        HIST_PEAK.with(|p| p.set(0));
        for k in [1, 2, 500, 1000] {
            assert_eq!(b.kth_largest(&[&x], k).unwrap(), sorted[k - 1], "k = {k}");
        }
        assert!(HIST_PEAK.with(|p| p.get()) <= budget, "budget {budget}");
    }
}

/// One policy for NaN and infinities, whichever selection path runs.
#[test]
fn nan_is_refused_and_infinities_are_values() {
    for path in [SelectionPath::Device, SelectionPath::Host] {
        let b = DeviceBackend::new(Emulator).with_selection_path(path);
        let x = b
            .alloc_from(&[1.0f32, f32::INFINITY, -f32::INFINITY, f32::MAX, 3e38])
            .unwrap();
        let y = b.alloc_from(&[-f32::MAX, 0.0]).unwrap();
        let want = [
            f32::INFINITY,
            f32::MAX,
            3e38,
            1.0,
            0.0,
            -f32::MAX,
            -f32::INFINITY,
        ];
        for (k, w) in want.iter().enumerate() {
            assert_eq!(
                b.kth_largest(&[&x, &y], k + 1).unwrap(),
                *w,
                "{path:?} k = {}",
                k + 1
            );
        }
        for nan in [f32::NAN, -f32::NAN] {
            let z = b.alloc_from(&[0.5f32, nan]).unwrap();
            let e = b.kth_largest(&[&y, &z], 1).unwrap_err();
            assert!(matches!(e, Error::NonFinite { .. }), "{path:?}: {e}");
        }
        let e = b.kth_largest(&[&x], 6).unwrap_err();
        assert!(matches!(e, Error::InvalidHyperParameter { field: "k", .. }));
    }
}

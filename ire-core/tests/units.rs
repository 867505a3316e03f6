//! Unit checks of ire-core's modules through their public interfaces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod threshold {
    use ire_core::optim::*;

    #[test]
    fn counts_truncate_with_a_snap_to_integers() {
        assert_eq!(truncated_count(10, 0.5), 5);
        assert_eq!(truncated_count(10, 1.0 - 0.9), 1);
        assert_eq!(truncated_count(10, 0.39), 3);
        assert_eq!(truncated_count(10, -0.3), 0);
        assert_eq!(truncated_count(10, 7.0), 10);
        assert_eq!(truncated_count(10, f64::NAN), 0);
        assert_eq!(truncated_count(0, 0.5), 0);
    }

    #[test]
    fn rules_pick_the_official_ranks() {
        // N = 10, γ = 0.75 → r = 0.25: sharp rule k = 2 (τ = 2nd largest);
        // flat rule m = 7 (τ = 7th smallest = 4th largest).
        let r = 0.25;
        assert_eq!(
            ThresholdRule::SharpTopK.selection(10, r),
            Selection::KthLargest(2)
        );
        assert_eq!(
            ThresholdRule::FlatKthSmallest.selection(10, r),
            Selection::KthLargest(4)
        );
        assert_eq!(
            ThresholdRule::AdmIre.selection(10, r),
            Selection::KthLargest(2)
        );
        assert_eq!(
            ThresholdRule::AdmIre.selection(10, 0.5),
            ThresholdRule::FlatKthSmallest.selection(10, 0.5)
        );
        // γ = 1 and γ = 0 under each rule.
        assert_eq!(
            ThresholdRule::SharpTopK.selection(10, 0.0),
            Selection::AllFlat
        );
        assert_eq!(
            ThresholdRule::SharpTopK.selection(10, 1.0),
            Selection::NoneFlat
        );
        assert_eq!(
            ThresholdRule::FlatKthSmallest.selection(10, 0.0),
            Selection::KthLargest(1)
        );
        assert_eq!(
            ThresholdRule::FlatKthSmallest.selection(10, 1.0),
            Selection::NoneFlat
        );
    }

    #[test]
    fn rank_increase_is_the_official_formula() {
        let s = GammaSchedule::RankIncrease { horizon: 1000 };
        let g = 0.4; // rank 0.6
        // i = 0: rank; i = 25 (< 50): halfway to 0.1; i = 75 (≥ 50 within the period of 100):
        // 0.1 + 0.5·(75 − 50)/50 = 0.35; i = 150 (150 mod 100 = 50, not < 50):
        // 0.1 + 0.5·100/50 = 1.1 (outside [0, 1], as written).
        assert_eq!(s.rank_at(g, 0), 0.6);
        assert!((s.rank_at(g, 25) - 0.35).abs() < 1e-15);
        assert!((s.rank_at(g, 75) - 0.35).abs() < 1e-15);
        assert!((s.rank_at(g, 150) - 1.1).abs() < 1e-15);
        // i = 110 (110 mod 100 = 10 < 50): 0.6 + (0.1 − 0.6)·110/50 = −0.5.
        assert!((s.rank_at(g, 110) + 0.5).abs() < 1e-15);
        assert_eq!(GammaSchedule::Constant.rank_at(g, 123), 1.0 - g);
        assert!(
            GammaSchedule::RankIncrease { horizon: 19 }
                .validate()
                .is_err()
        );
    }
}

mod scalar {
    use ire_core::scalar::*;

    #[test]
    fn order_keys_follow_numeric_order() {
        let xs = [-3.5f32, -1.0, -0.0, 0.0, 1e-30, 2.0, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(w[0].order_key() < w[1].order_key(), "{:?}", w);
        }
        let ys = [f64::NEG_INFINITY, -2.0, -0.0, 0.0, 5e-324, 1.0];
        for w in ys.windows(2) {
            assert!(w[0].order_key() < w[1].order_key(), "{:?}", w);
        }
    }
}

mod host {
    use ire_core::Error;
    use ire_core::host::*;

    #[test]
    fn kth_largest_matches_sorting() {
        let mut v = [3.0f64, -1.0, 7.0, 7.0, 0.5, 2.0];
        let mut sorted = v;
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        for k in 1..=v.len() {
            assert_eq!(kth_largest(&mut v, k).unwrap(), sorted[k - 1]);
        }
        assert!(kth_largest(&mut v, 0).is_err());
        assert!(kth_largest(&mut v, 7).is_err());
        let mut w = [1.0f32, f32::NAN];
        assert!(matches!(
            kth_largest(&mut w, 1),
            Err(Error::NonFinite { .. })
        ));
    }

    #[test]
    fn pairwise_sum_is_exact_on_integers() {
        let v: std::vec::Vec<f64> = (0..1000).map(|i| i as f64).collect();
        // Σ i² for i < 1000 = 999·1000·1999/6.
        assert_eq!(sum_squares(&v), 332_833_500.0);
        assert_eq!(sum_squares_product(&v[..3], &[2.0, 2.0, 2.0]), 20.0);
    }
}

mod schedule {
    use ire_core::schedule::*;

    #[test]
    fn warmup_then_cosine_to_floor() {
        let s = LrSchedule::WarmupCosine {
            lr_max: 6e-4,
            lr_min: 3e-5,
            warmup_steps: 10,
            total_steps: 110,
        };
        s.validate().unwrap();
        assert!((s.lr_at(0) - 6e-5).abs() < 1e-19);
        assert_eq!(s.lr_at(9), 6e-4);
        assert_eq!(s.lr_at(10), 6e-4);
        // Half-way through the cosine: the mean of max and min.
        assert!((s.lr_at(60) - (6e-4 + 3e-5) / 2.0).abs() < 1e-15);
        assert_eq!(s.lr_at(110), 3e-5);
        assert_eq!(s.lr_at(10_000), 3e-5);
        // CosineAnnealingLR(T_max=4) from 0.1: 0.1, 0.0853553, 0.05, 0.0146447, 0.
        let c = LrSchedule::WarmupCosine {
            lr_max: 0.1,
            lr_min: 0.0,
            warmup_steps: 0,
            total_steps: 4,
        };
        let want = [
            0.1,
            0.085_355_339_059_327_38,
            0.05,
            0.014_644_660_940_672_63,
            0.0,
        ];
        for (t, w) in want.iter().enumerate() {
            assert!((c.lr_at(t as u64) - w).abs() < 1e-15, "t={t}");
        }
    }

    #[test]
    fn bad_schedules_are_rejected() {
        let bad = LrSchedule::WarmupCosine {
            lr_max: 1.0,
            lr_min: 2.0,
            warmup_steps: 0,
            total_steps: 1,
        };
        assert!(bad.validate().is_err());
        assert!(LrSchedule::Constant { lr: f64::NAN }.validate().is_err());
    }
}

mod kernels {
    use ire_core::DType;
    use ire_core::kernels::*;

    /// Method names declared in `src/backend.rs` (lines starting `fn name<` or `fn name(`).
    fn backend_methods() -> Vec<&'static str> {
        include_str!("../src/backend.rs")
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("fn "))
            .filter_map(|l| l.split(['<', '(']).next())
            .collect()
    }

    #[test]
    fn every_backend_op_has_its_kernel_in_the_source() {
        let defined: Vec<&str> = kernel_names().collect();
        let methods = backend_methods();
        assert!(methods.len() > 20, "parsed too few methods: {methods:?}");
        for m in &methods {
            if PLUMBING.contains(m) {
                continue;
            }
            let entry = KERNELS.iter().find(|k| k.op == *m);
            let Some(entry) = entry else {
                panic!("Backend::{m} has no entry in KERNELS");
            };
            for k in entry.kernels {
                assert!(
                    defined.contains(k),
                    "kernel `{k}` of Backend::{m} is not in ire_ops.cl"
                );
            }
        }
        // And the table names no method that does not exist.
        for k in KERNELS {
            assert!(methods.contains(&k.op), "KERNELS names unknown op {}", k.op);
        }
        // Every kernel in the source is used by some op.
        for d in &defined {
            assert!(
                KERNELS.iter().any(|k| k.kernels.contains(d)),
                "kernel {d} is defined but not used"
            );
        }
    }

    #[test]
    fn programs_carry_their_dtype_and_prelude() {
        let cl = program_source(Dialect::OpenCl, DType::F64);
        assert!(cl.starts_with("#define IRE_F64\n#define T double\n"));
        assert!(cl.contains("#pragma OPENCL FP_CONTRACT OFF"));
        let cu = program_source(Dialect::Cuda, DType::F32);
        assert!(cu.contains("#define T float"));
        assert!(cu.contains("extern \"C\" __global__"));
        assert!(!cu.contains("#pragma OPENCL"));
    }
}

mod signature {
    use ire_core::DType;
    use ire_core::device::KernelArg;
    use ire_core::device::signature::*;
    use ire_core::kernels::{OPS_SOURCE, kernel_names};

    fn sig(name: &str) -> Signature {
        parse(OPS_SOURCE)
            .unwrap()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
    }

    #[test]
    fn every_kernel_of_the_source_parses() {
        let sigs = parse(OPS_SOURCE).unwrap();
        let names: Vec<&str> = kernel_names().collect();
        assert_eq!(sigs.len(), names.len());
        for (s, n) in sigs.iter().zip(&names) {
            assert_eq!(s.name, *n);
            assert!(!s.params.is_empty(), "{n} has no parameters");
        }
    }

    #[test]
    fn parameter_kinds_are_read_exactly() {
        use Param::*;
        let w = |elem| Ptr { elem, writes: true };
        let r = |elem| Ptr {
            elem,
            writes: false,
        };
        assert_eq!(
            sig("axpy").params,
            vec![w(PtrElem::Real), Real, r(PtrElem::Real), Index]
        );
        assert_eq!(
            sig("sgd_momentum_ire_step").params,
            vec![
                w(PtrElem::Real),
                r(PtrElem::Real),
                w(PtrElem::Real),
                Real,
                Real,
                Real,
                Real,
                U32,
                r(PtrElem::U32),
                Real,
                Index
            ]
        );
        assert_eq!(
            sig("mask_le").params,
            vec![r(PtrElem::Real), Real, w(PtrElem::U32), Index]
        );
        assert_eq!(
            sig("mask_unpack").params,
            vec![r(PtrElem::U32), w(PtrElem::U8), Index]
        );
        assert_eq!(
            sig("select_histogram").params,
            vec![
                r(PtrElem::Real),
                Index,
                Index,
                U32,
                Key,
                Key,
                w(PtrElem::U32)
            ]
        );
        assert_eq!(sig("fill_u8").params, vec![w(PtrElem::U8), U8, Index]);
    }

    #[test]
    fn malformed_parameters_are_errors() {
        assert!(parse("KERNEL void k(GLOBAL float* x)").is_err());
        assert!(parse("KERNEL void k(T x").is_err());
        assert!(parse("KERNEL void k(LONG x)").is_err());
        assert_eq!(parse("no kernels here").unwrap(), Vec::new());
    }

    #[test]
    fn launches_are_checked_kind_by_kind() {
        let m = 0u8;
        let axpy = sig("axpy");
        let good: [KernelArg<'_, u8>; 4] = [
            KernelArg::Out(Some(&m), DType::F32),
            KernelArg::Real(2.0),
            KernelArg::In(Some(&m), DType::F32),
            KernelArg::Index(3),
        ];
        check("test", &axpy, DType::F32, &good).unwrap();
        // The f64 program wants f64 buffers.
        assert!(check("test", &axpy, DType::F64, &good).is_err());
        // An input where the kernel writes, and the reverse.
        let swapped: [KernelArg<'_, u8>; 4] = [
            KernelArg::In(Some(&m), DType::F32),
            KernelArg::Real(2.0),
            KernelArg::Out(Some(&m), DType::F32),
            KernelArg::Index(3),
        ];
        let e = check("test", &axpy, DType::F32, &swapped).unwrap_err();
        assert!(e.to_string().contains("argument 0"), "{e}");
        // Too few arguments; a 64-bit key in the f32 program.
        assert!(check("test", &axpy, DType::F32, &good[..3]).is_err());
        let hist = sig("select_histogram");
        let args = |key| -> [KernelArg<'_, u8>; 7] {
            [
                KernelArg::In(Some(&m), DType::F32),
                KernelArg::Index(0),
                KernelArg::Index(5),
                KernelArg::U32(24),
                KernelArg::Key(key),
                KernelArg::Key(0),
                KernelArg::Out(Some(&m), DType::U32),
            ]
        };
        check("test", &hist, DType::F32, &args(0xFF00_0000)).unwrap();
        assert!(check("test", &hist, DType::F32, &args(1 << 40)).is_err());
    }
}

mod sampling {
    use ire_core::sampling::*;

    #[test]
    fn draws_follow_the_softmax() {
        // softmax(0, ln 3) = (1/4, 3/4): 20,000 draws give class 1 about 3/4 of the time
        // (binomial standard deviation 0.0031; the bound is 5 of them).
        let row = [0.0f64, 3f64.ln()];
        let ones = (0..20_000)
            .filter(|&r| sample_from_logits(&row, counter_uniform(1, 0, r)) == Some(1))
            .count();
        let frac = ones as f64 / 20_000.0;
        assert!((frac - 0.75).abs() < 0.016, "{frac}");
    }

    #[test]
    fn edges_of_the_inverse_transform() {
        assert_eq!(sample_from_logits::<f32>(&[], 0.5), None);
        assert_eq!(sample_from_logits(&[0.0f32, f32::NAN], 0.5), None);
        assert_eq!(sample_from_logits(&[0.0f32, f32::INFINITY], 0.5), None);
        // u = 0 gives the first class with mass; u just below 1 the last.
        assert_eq!(sample_from_logits(&[-1e30f64, 0.0, 0.0], 0.0), Some(1));
        assert_eq!(
            sample_from_logits(&[0.0f64, 0.0, -1e30], 0.999_999_999),
            Some(1)
        );
        // Equal logits split [0, 1) evenly.
        assert_eq!(sample_from_logits(&[0.0f32; 4], 0.49), Some(1));
        assert_eq!(sample_from_logits(&[0.0f32; 4], 0.51), Some(2));
    }

    #[test]
    fn draws_depend_on_every_counter() {
        let a = counter_uniform(7, 3, 11);
        assert_eq!(a, counter_uniform(7, 3, 11));
        assert_ne!(a, counter_uniform(8, 3, 11));
        assert_ne!(a, counter_uniform(7, 4, 11));
        assert_ne!(a, counter_uniform(7, 3, 12));
        assert!((0.0..1.0).contains(&a));
    }
}

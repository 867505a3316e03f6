//! The equivalence runner in quick mode on every backend of the build, and its verdict logic
//! on deliberately perturbed results (so a broken comparison cannot pass silently).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_bench::equivalence::{
    Bound, Diff, Op, Options, Plan, Report, Row, Trajectory, compare_exact, compare_floats, run,
    table_bound,
};
use ire_core::DType;
use ire_models::device::BackendKind;

fn row(diff: Diff, bound: Bound) -> Row {
    Row {
        op: "axpy".into(),
        dtype: DType::F32,
        backend: "cpu".into(),
        oracle: "reference".into(),
        bound,
        diff,
        error: None,
    }
}

#[test]
fn quick_mode_passes_and_has_every_row() {
    let report = run(&Options::new(true)).expect("the quick run starts");
    println!("{}", report.markdown());
    assert!(report.passed(), "{}", report.failure_summary());

    #[cfg_attr(not(any(feature = "opencl", feature = "cuda")), allow(unused_mut))]
    let mut expected = vec!["cpu"];
    #[cfg(feature = "opencl")]
    if ire_backend_opencl::optional()
        .expect("an OpenCL device that exists opens")
        .is_some()
    {
        expected.push("opencl");
    }
    #[cfg(feature = "cuda")]
    if ire_backend_cuda::from_env().is_ok() {
        expected.push("cuda");
    }
    for backend in expected {
        for dtype in [DType::F32, DType::F64] {
            for op in Op::ALL {
                assert!(
                    report.has_row(op.name(), dtype, backend),
                    "no row for {} {} {backend}",
                    op.name(),
                    dtype.name()
                );
            }
            for t in Trajectory::ALL {
                assert!(
                    report.has_row(t.name(), dtype, backend),
                    "no row for {} {} {backend}",
                    t.name(),
                    dtype.name()
                );
            }
        }
    }
    // Every row compared something, and element-wise ops are held to 0 ulp.
    for r in &report.rows {
        assert!(
            r.diff.values > 0,
            "{} {}: nothing compared",
            r.op,
            r.backend
        );
        assert_eq!(r.oracle, "reference");
    }
    let axpy = report
        .rows
        .iter()
        .find(|r| r.op == "axpy" && r.backend == "cpu")
        .unwrap();
    assert_eq!(axpy.bound, Bound::Bitwise);
    assert_eq!(axpy.compared(), "cpu vs reference");
    let table = report.table();
    assert!(table.contains("| axpy | f32 | cpu vs reference | 0 | 0 | 0 | 0 ulp | pass |"));
    assert!(table.contains("rel 1e-5 (sum_squares)"));
}

#[test]
fn the_backend_filter_keeps_only_the_backends_named() {
    let opts = Options {
        plan: Plan {
            sizes: vec![3, 1000],
            tensors: vec![1, 50],
            steps: 5,
            refresh_every: 2,
            warmup_steps: 1,
        },
        backends: Some(vec![BackendKind::Cpu]),
    };
    let report = run(&opts).unwrap();
    assert!(report.passed(), "{}", report.failure_summary());
    assert!(report.rows.iter().all(|r| r.backend == "cpu"));
    assert_eq!(
        report.rows.len(),
        2 * (Op::ALL.len() + Trajectory::ALL.len())
    );
}

#[test]
fn a_backend_the_build_lacks_is_an_error_when_asked_for() {
    #[cfg(not(feature = "cuda"))]
    {
        let opts = Options {
            backends: Some(vec![BackendKind::Cuda]),
            ..Options::new(true)
        };
        assert!(run(&opts).is_err());
    }
    let bad_plan = Options {
        plan: Plan {
            steps: 0,
            ..Plan::quick()
        },
        backends: Some(vec![BackendKind::Cpu]),
    };
    assert!(run(&bad_plan).is_err());
}

#[test]
fn one_ulp_under_a_zero_ulp_bound_is_a_violation() {
    let want = [1.0f32, -2.5, 3.0e-3, 0.0];
    let mut got = want;
    got[2] = f32::from_bits(got[2].to_bits() + 1);
    let d = compare_floats("nudged", &got, &want, Bound::Bitwise);
    assert_eq!(d.violations, 1);
    assert_eq!(d.max_ulp, 1);
    assert!(d.max_abs > 0.0);
    assert!(d.first_violation.as_deref().unwrap().contains("element 2"));

    // Through a report: the row fails, the table says so, the summary names it.
    let report = Report {
        rows: vec![row(d, Bound::Bitwise)],
        ..Report::default()
    };
    assert!(!report.passed());
    assert_eq!(report.failures().len(), 1);
    assert!(report.table().contains("| FAIL |"));
    assert!(
        report
            .failure_summary()
            .contains("FAILED: axpy [f32] cpu vs reference")
    );

    // The same vector unperturbed passes.
    let same = compare_floats("same", &want, &want, Bound::Bitwise);
    assert_eq!(same.violations, 0);
    assert_eq!(same.values, 4);
    assert!(row(same, Bound::Bitwise).passed());
}

#[test]
fn signed_zeros_nans_and_lengths_are_judged_strictly() {
    // -0.0 and +0.0 differ in bits (1 ulp apart, |Δ| 0).
    let d = compare_floats("zero", &[-0.0f64], &[0.0], Bound::Bitwise);
    assert_eq!((d.violations, d.max_ulp, d.max_abs), (1, 1, 0.0));
    // NaN against NaN is equal; NaN against a number is a violation under any bound.
    assert_eq!(
        compare_floats("nan", &[f32::NAN], &[f32::NAN], Bound::Bitwise).violations,
        0
    );
    let loose = Bound::Relative {
        rel: 1.0,
        entry: "test",
    };
    assert_eq!(
        compare_floats("nan", &[f32::NAN], &[1.0], loose).violations,
        1
    );
    assert_eq!(
        compare_floats("nan", &[1.0f32], &[f32::NAN], loose).violations,
        1
    );
    // A missing value is a violation.
    assert_eq!(
        compare_floats("len", &[1.0f32], &[1.0, 2.0], loose).violations,
        1
    );
    assert_eq!(compare_exact("len", &[1], &[]).violations, 1);
    // Counts must be equal.
    let c = compare_exact("count", &[3, 7], &[3, 8]);
    assert_eq!((c.violations, c.max_ulp), (1, 1));
}

#[test]
fn relative_bounds_come_from_the_table_and_are_enforced() {
    let bound = table_bound("sum_squares", DType::F32).unwrap();
    let Bound::Relative { rel, .. } = bound else {
        panic!("sum_squares must have a relative bound, got {bound:?}");
    };
    let want = [1000.0f32];
    let inside = [want[0] * (1.0 + 0.5 * rel as f32)];
    let outside = [want[0] * (1.0 + 3.0 * rel as f32)];
    assert_eq!(compare_floats("in", &inside, &want, bound).violations, 0);
    assert_eq!(compare_floats("out", &outside, &want, bound).violations, 1);
    // A zero reference demands an exact zero.
    assert_eq!(
        compare_floats("z", &[1e-20f64], &[0.0], bound).violations,
        1
    );
    // Merged diffs keep the worst case and the first violation.
    let mut d = compare_floats("in", &inside, &want, bound);
    d.merge(compare_floats("out", &outside, &want, bound));
    assert_eq!(d.violations, 1);
    assert_eq!(d.values, 2);
    assert!(d.first_violation.unwrap().starts_with("out"));
    assert!(!row(compare_floats("out", &outside, &want, bound), bound).passed());
}

//! The Figure-1 numbers of IRE-SPEC §4, through the library and through the `ire` command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use ire_models::toy::{self, ToyMethod};

/// Relative agreement to 6 significant digits.
fn close6(got: f64, want: f64) -> bool {
    (got - want).abs() <= 5e-7 * want.abs()
}

// Expected values: IRE-SPEC §4, reproduced by this Python (u ← u − (1+κ) u v², v ← v − (1+u²) v):
//   u, v = 1.0, 0.01
//   for _ in range(100):
//       gu, gv = u*v*v, (1+u*u)*v
//       u, v = u - lr*gu - kappa*lr*gu, v - lr*gv
const TABLE: &[(f64, f64, f64, f64)] = &[
    // (κ, lr, u, v)
    (0.0, 1.0, 0.9936741, 0.0045901),
    (90.0, 1.0, 0.9284908, 8.349487746e-9),
    (900.0, 1.0, 0.7425916, 5.474111524e-28),
    (9000.0, 1.0, 0.0099791, 0.0),
];

#[test]
fn figure1_numbers_through_the_library() {
    let b = ire_core::Reference;
    for &(kappa, lr, u, v) in TABLE {
        let method = if kappa == 0.0 {
            ToyMethod::Gd
        } else {
            ToyMethod::IreDiagonal { kappa }
        };
        let run = toy::run(&b, method, lr, 100, toy::sharp_direction_jacobi).unwrap();
        let last = run.last();
        assert_eq!(run.diverged_at, None);
        assert_eq!(last.step, 100);
        // The table's u has 7 significant digits; v of GD too. Tiny v's are compared to 6.
        assert!(
            (last.u - u).abs() <= 5e-8 + 5e-7 * u.abs(),
            "κ={kappa}: u={} want {u}",
            last.u
        );
        if v == 0.0 {
            assert_eq!(last.v, 0.0, "κ={kappa}");
        } else {
            assert!(
                close6(last.v, v) || (last.v - v).abs() <= 5e-8,
                "κ={kappa}: v={} want {v}",
                last.v
            );
        }
    }
    // GD at lr 2 diverges (|v| triples every step).
    let run = toy::run(&b, ToyMethod::Gd, 2.0, 100, toy::sharp_direction_jacobi).unwrap();
    assert_eq!(run.diverged_at, Some(9));
    assert!(run.path.iter().all(|p| p.u.is_finite() && p.v.is_finite()));
    // Exact eigen-projection, κ = 1: u = 0.9999979606, v = 0.0100994 (numpy eigh, same update).
    let run = toy::run(
        &b,
        ToyMethod::IreExact { kappa: 1.0 },
        1.0,
        100,
        toy::sharp_direction_jacobi,
    )
    .unwrap();
    let last = run.last();
    assert!(close6(last.u, 0.9999979606), "u={}", last.u);
    assert!(close6(last.v, 0.0100994448), "v={}", last.v);
    // ... and it diverges for κ ≥ 3 off the manifold.
    let run = toy::run(
        &b,
        ToyMethod::IreExact { kappa: 3.0 },
        1.0,
        100,
        toy::sharp_direction_jacobi,
    )
    .unwrap();
    assert!(run.diverged_at.is_some());
}

fn ire(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ire"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn parse_last(stdout: &str) -> (u64, f64, f64) {
    let line = stdout.lines().last().unwrap();
    let mut it = line
        .split_whitespace()
        .map(|kv| kv.split_once('=').unwrap().1);
    (
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
    )
}

#[test]
fn figure1_numbers_through_the_command() {
    for &(kappa, lr, u, v) in TABLE {
        let (opt, k) = if kappa == 0.0 {
            ("gd", "0".to_string())
        } else {
            ("ire", kappa.to_string())
        };
        let (code, out, err) = ire(&[
            "toy",
            "--optimizer",
            opt,
            "--lr",
            &lr.to_string(),
            "--kappa",
            &k,
            "--steps",
            "100",
            "--backend",
            "cpu",
        ]);
        assert_eq!(code, 0, "{err}");
        let (s, gu, gv) = parse_last(&out);
        assert_eq!(s, 100);
        assert!((gu - u).abs() <= 5e-8 + 5e-7 * u.abs(), "κ={kappa}: {out}");
        assert!(close6(gv, v) || (gv - v).abs() <= 5e-8, "κ={kappa}: {out}");
    }
    let (code, out, _) = ire(&[
        "toy",
        "--optimizer",
        "ire",
        "--projector",
        "exact",
        "--kappa",
        "1",
    ]);
    assert_eq!(code, 0);
    let (_, gu, gv) = parse_last(&out);
    assert!(
        close6(gu, 0.9999979606) && close6(gv, 0.0100994448),
        "{out}"
    );
    // lr 2: a clear message, a non-zero exit, no NaN printed.
    let (code, out, _) = ire(&["toy", "--optimizer", "gd", "--lr", "2"]);
    assert_eq!(code, 3);
    assert!(out.contains("diverged at step 9"), "{out}");
    assert!(
        !out.to_lowercase().contains("nan") && !out.contains("inf "),
        "{out}"
    );
}

#[test]
fn toy_csv_and_bad_arguments() {
    let dir = std::env::temp_dir().join(format!("ire-toy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("path.csv");
    let (code, _, err) = ire(&[
        "toy",
        "--optimizer",
        "ire",
        "--kappa",
        "90",
        "--steps",
        "10",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "step,u,v");
    assert_eq!(lines.len(), 12);
    assert_eq!(lines[1], "0,1,0.01");
    std::fs::remove_dir_all(&dir).unwrap();
    for bad in [
        vec!["toy", "--lr", "-1"],
        vec!["toy", "--lr", "nan"],
        vec!["toy", "--optimizer", "ire", "--kappa", "-2"],
        vec!["toy", "--backend", "tpu"],
        vec!["toy", "--optimizer", "adam"],
    ] {
        let (code, out, err) = ire(&bad);
        assert_eq!(code, 2, "{bad:?}: {out} {err}");
        assert!(err.contains("error"), "{bad:?}: {err}");
    }
}

/// Every op the toy uses is element-wise, so OpenCL prints exactly the CPU's numbers.
#[cfg(feature = "opencl")]
#[test]
fn toy_on_opencl_prints_the_cpu_numbers() {
    match ire_backend_opencl::optional() {
        Ok(Some(_)) => {}
        Ok(None) => {
            println!("skipped: no OpenCL device");
            return;
        }
        Err(e) => panic!("{e}"),
    }
    for args in [
        ["--optimizer", "gd", "--kappa", "0"],
        ["--optimizer", "ire", "--kappa", "90"],
    ] {
        let (c1, cpu, _) = ire(&[&["toy"][..], &args[..], &["--backend", "cpu"][..]].concat());
        let (c2, ocl, err) = ire(&[&["toy"][..], &args[..], &["--backend", "opencl"][..]].concat());
        assert_eq!((c1, c2), (0, 0), "{err}");
        assert_eq!(cpu, ocl);
    }
}

//! The Figure-1 numbers of IRE-SPEC §4, through the library and through the `ire` command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use ire_models::toy::{self, ToyMethod};

// Expected values, bit for bit: this Python (IRE-SPEC §2–3 in the library's operation order:
// the SGD step `θ − lr·(g + wd·θ)` with wd 0, then `θ_base + (κ·n)·(θ_base − θ_old)` with
// the mask n = (1, 0)) prints them with `repr`:
//   def run(kappa, lr=1.0, steps=100):
//       u, v = 1.0, 0.01
//       for _ in range(steps):
//           gu, gv = u*v*v, (1.0 + u*u)*v
//           bu, bv = u - lr*(gu + 0.0*u), v - lr*(gv + 0.0*v)
//           u, v = (bu + kappa*(bu - u), bv + 0.0*(bv - v)) if kappa else (bu, bv)
//       return u, v
// Every operation is an IEEE f64 operation without fused multiply-add on both sides, so all
// 16–17 digits agree; the paper's table (IRE-SPEC §4) is these rounded to 7 digits.
const TABLE: &[(f64, f64, f64, f64)] = &[
    // (κ, lr, u, v)
    (0.0, 1.0, 0.9936740950905748, 0.004590088676436991),
    (90.0, 1.0, 0.9284907628015818, 8.34948774611196e-09),
    (900.0, 1.0, 0.7425916319391727, 5.474111523718964e-28),
    (9000.0, 1.0, 0.009979115287067577, 0.0),
];

/// The paper's `u` column (IRE-SPEC §4), 7 significant digits.
const PAPER_U: [f64; 4] = [0.9936741, 0.9284908, 0.7425916, 0.0099791];

// The exact eigen-projection, κ = 1, from this Python (the eigenvector of the larger eigenvalue
// of [[a, b], [b, c]] in closed form, (b, λ − a) normalized; then θ ← θ − lr (g + κ P g),
// P = I − s sᵀ):
//   u, v = 1.0, 0.01
//   for _ in range(100):
//       a, b, c = v*v, 2*u*v, 1+u*u
//       lam = (a+c)/2 + math.sqrt(((a-c)/2)**2 + b*b)
//       sx, sy = b, lam - a; n = math.hypot(sx, sy); sx, sy = sx/n, sy/n
//       gu, gv = u*v*v, (1.0+u*u)*v; dot = sx*gu + sy*gv
//       u, v = u - (gu + (gu - sx*dot)), v - (gv + (gv - sy*dot))
// gives u = 0.9999979606199205 (the library's bits) and v = 0.010099444789341305; the library's
// Jacobi eigen-solver gives another last bit of the eigenvector, so v is 0.010099444789341371
// (6.5e-15 relative). Bound: 1e-13 relative, 15× that.
const EXACT: (f64, f64) = (0.9999979606199205, 0.010099444789341305);
const EXACT_REL: f64 = 1e-13;

fn same_bits(got: f64, want: f64) -> bool {
    got.to_bits() == want.to_bits()
}

fn close_exact(u: f64, v: f64) -> bool {
    (u - EXACT.0).abs() <= EXACT_REL * EXACT.0 && (v - EXACT.1).abs() <= EXACT_REL * EXACT.1
}

#[test]
fn golden_values_round_to_the_paper_table() {
    for (&(_, _, u, _), paper) in TABLE.iter().zip(PAPER_U) {
        assert_eq!(format!("{u:.7}"), format!("{paper:.7}"), "{u}");
    }
    assert_eq!(format!("{:.7}", EXACT.0), "0.9999980");
}

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
        assert!(
            same_bits(last.u, u) && same_bits(last.v, v),
            "κ={kappa}: (u, v) = ({}, {}), want ({u}, {v}) bit for bit",
            last.u,
            last.v
        );
    }
    // GD at lr 2 diverges (|v| triples every step).
    let run = toy::run(&b, ToyMethod::Gd, 2.0, 100, toy::sharp_direction_jacobi).unwrap();
    assert_eq!(run.diverged_at, Some(9));
    assert!(run.path.iter().all(|p| p.u.is_finite() && p.v.is_finite()));
    let run = toy::run(
        &b,
        ToyMethod::IreExact { kappa: 1.0 },
        1.0,
        100,
        toy::sharp_direction_jacobi,
    )
    .unwrap();
    let last = run.last();
    assert!(close_exact(last.u, last.v), "({}, {})", last.u, last.v);
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
        // The command prints the shortest text that parses back to the same f64.
        assert!(same_bits(gu, u) && same_bits(gv, v), "κ={kappa}: {out}");
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
    assert!(close_exact(gu, gv), "{out}");
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

//! The transformer and loss ops on the OpenCL and CUDA backends against the CPU backend, f32
//! and f64, on seeded random inputs of odd sizes, within `TF_TOLERANCES` (0 = bit-identical).
//!
//! Without an OpenCL device each OpenCL test prints a skip line and passes, unless
//! `IRE_REQUIRE` names `opencl`; likewise the CUDA tests, unless it names `cuda` (or `nvrtc`).
#![cfg(any(feature = "opencl", feature = "cuda"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(feature = "opencl")]
use std::sync::OnceLock;

use ire_backend_cpu::CpuBackend;
#[cfg(feature = "opencl")]
use ire_backend_opencl::OpenClBackend;
use ire_core::{Backend, Error, Result, Scalar};
use ire_models::nn::device::{LOSS_TOLERANCES, TF_TOLERANCES};
use ire_models::nn::{AttnShape, NnOps, NormKind, TransformerOps};
use ire_models::rng::Rng;

#[path = "support/naive_attention.rs"]
mod naive;
use naive::{attention_shapes, naive_attention, rel_err};

#[cfg(feature = "opencl")]
fn device(test: &str) -> Option<OpenClBackend> {
    static DEV: OnceLock<Option<OpenClBackend>> = OnceLock::new();
    let d = DEV
        .get_or_init(|| match ire_backend_opencl::optional() {
            Ok(d) => d,
            Err(e) => panic!("OpenCL backend required (IRE_REQUIRE) but not usable: {e}"),
        })
        .clone();
    if d.is_none() {
        println!("skipped {test}: no OpenCL device");
    }
    d
}

fn cpu() -> CpuBackend {
    CpuBackend::new()
}

fn randn(rng: &mut Rng, n: usize, s: f64) -> Vec<f64> {
    (0..n).map(|_| s * rng.normal()).collect()
}

fn up<B: Backend, T: Scalar>(b: &B, v: &[f64]) -> B::Buffer<T> {
    let v: Vec<T> = v.iter().map(|&x| T::of(x)).collect();
    b.alloc_from(&v).unwrap()
}

fn down<B: Backend, T: Scalar>(b: &B, buf: &B::Buffer<T>) -> Vec<T> {
    b.to_vec(buf).unwrap()
}

fn is_f32<T: Scalar>() -> bool {
    T::EPSILON_F64 > 1e-10
}

fn tolerance<T: Scalar>(op: &str) -> f64 {
    let row = TF_TOLERANCES
        .iter()
        .chain(LOSS_TOLERANCES)
        .find(|r| r.0 == op)
        .unwrap_or_else(|| panic!("{op} has no row in TF_TOLERANCES or LOSS_TOLERANCES"));
    if is_f32::<T>() { row.1 } else { row.2 }
}

/// The device result against the host's within the op's tolerance (bits when it is 0).
fn check<T: Scalar>(op: &str, what: &str, dev: &[T], host: &[T]) {
    assert_eq!(dev.len(), host.len(), "{op} {what}: lengths");
    let tol = tolerance::<T>(op);
    let ty = if is_f32::<T>() { "f32" } else { "f64" };
    if tol == 0.0 {
        for (i, (a, b)) in dev.iter().zip(host).enumerate() {
            assert!(
                a.order_key_u64() == b.order_key_u64(),
                "{op} {what} ({ty}) [{i}]: device {a:?}, host {b:?}, expected the same bits"
            );
        }
        return;
    }
    let scale = host
        .iter()
        .map(|v| v.as_f64().abs())
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let err = dev
        .iter()
        .zip(host)
        .map(|(a, b)| (a.as_f64() - b.as_f64()).abs())
        .fold(0.0, f64::max)
        / scale;
    println!("{op} {what} ({ty}): error {err:.3e} (tolerance {tol:.0e})");
    assert!(
        err <= tol,
        "{op} {what} ({ty}): error {err:e} above {tol:e}"
    );
}

// ---------------------------------------------------------------- softmax cross-entropy

fn xent<B: NnOps, T: Scalar>(
    b: &B,
    z: &[f64],
    lab: &[f64],
    c: usize,
    eps: f64,
) -> Result<(Vec<T>, f64, usize)> {
    let n = lab.len();
    let zb = up::<B, T>(b, z);
    let lb = up::<B, T>(b, lab);
    let mut d = b.alloc::<T>(n * c)?;
    let (loss, ok) = b.softmax_xent(&zb, &lb, n, c, eps, 1.0 / n as f64, &mut d)?;
    Ok((down(b, &d), loss, ok))
}

fn softmax_xent_case<D: NnOps, T: Scalar>(dev: &D, n: usize, c: usize) {
    let mut rng = Rng::new(11 + c as u64);
    let z = randn(&mut rng, n * c, 3.0);
    // Some labels are the argmax, so the count of correct rows is not trivially 0.
    let mut lab: Vec<f64> = (0..n).map(|_| rng.below(c as u64) as f64).collect();
    for (i, l) in lab.iter_mut().enumerate().step_by(2) {
        let row = &z[i * c..(i + 1) * c];
        let arg = (0..c).fold(0, |a, j| if row[j] > row[a] { j } else { a });
        *l = arg as f64;
    }
    for eps in [0.0, 0.1] {
        let (dh, lh, okh) = xent::<_, T>(&cpu(), &z, &lab, c, eps).unwrap();
        let (dd, ld, okd) = xent::<_, T>(dev, &z, &lab, c, eps).unwrap();
        check("softmax_xent", "dlogits", &dd, &dh);
        check("softmax_xent", "loss", &[T::of(ld)], &[T::of(lh)]);
        assert_eq!(okd, okh, "softmax_xent: correct rows");
        assert!(okh > 0);
    }
}

fn softmax_xent_matches_host_on<D: NnOps>(dev: &D) {
    for (n, c) in [(7, 33), (5, 300), (3, 1)] {
        softmax_xent_case::<_, f32>(dev, n, c);
        softmax_xent_case::<_, f64>(dev, n, c);
    }
}

#[cfg(feature = "opencl")]
#[test]
fn softmax_xent_matches_host() {
    if let Some(dev) = device("softmax_xent_matches_host") {
        softmax_xent_matches_host_on(&dev);
    }
}

fn xent_errors<D: NnOps, T: Scalar>(dev: &D) {
    let (n, c) = (7, 33);
    let mut rng = Rng::new(5);
    let z = randn(&mut rng, n * c, 1.0);
    let good: Vec<f64> = (0..n).map(|i| (i % c) as f64).collect();
    for bad in [c as f64, -1.0, 2.5] {
        let mut lab = good.clone();
        lab[3] = bad;
        lab[5] = 40.0;
        let eh = xent::<_, T>(&cpu(), &z, &lab, c, 0.0).unwrap_err();
        let ed = xent::<_, T>(dev, &z, &lab, c, 0.0).unwrap_err();
        assert!(matches!(ed, Error::InvalidInput { .. }), "{ed}");
        assert_eq!(ed.to_string(), eh.to_string());
    }
    // Every kind of non-finite logit, off and on the label (position 34 is row 1's label,
    // class 1; position 41 is not), with and without label smoothing.
    for (at, bad) in [
        (41, f64::INFINITY),
        (34, f64::INFINITY),
        (41, f64::NEG_INFINITY),
        (34, f64::NEG_INFINITY),
        (41, f64::NAN),
    ] {
        for eps in [0.0, 0.1] {
            let mut zn = z.clone();
            zn[at] = bad;
            let ed = xent::<_, T>(dev, &zn, &good, c, eps).unwrap_err();
            let eh = xent::<_, T>(&cpu(), &zn, &good, c, eps).unwrap_err();
            assert!(matches!(eh, Error::NonFinite { .. }), "{bad} at {at}: {eh}");
            assert_eq!(ed.to_string(), eh.to_string());
        }
    }
    // A dlogits buffer one row short.
    let zb = up::<_, T>(dev, &z);
    let lb = up::<_, T>(dev, &good);
    let mut d = dev.alloc::<T>((n - 1) * c).unwrap();
    let e = dev
        .softmax_xent(&zb, &lb, n, c, 0.0, 1.0, &mut d)
        .unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
}

fn softmax_xent_errors_like_host_on<D: NnOps>(dev: &D) {
    xent_errors::<_, f32>(dev);
    xent_errors::<_, f64>(dev);
}

#[cfg(feature = "opencl")]
#[test]
fn softmax_xent_errors_like_host() {
    if let Some(dev) = device("softmax_xent_errors_like_host") {
        softmax_xent_errors_like_host_on(&dev);
    }
}

// ---------------------------------------------------------------- sampling

fn sample<B: NnOps, T: Scalar>(b: &B, z: &[f64], u: &[f64], c: usize) -> Vec<T> {
    let n = u.len();
    let mut l = b.alloc::<T>(n).unwrap();
    b.sample_labels(&up::<B, T>(b, z), n, c, &up::<B, T>(b, u), &mut l)
        .unwrap();
    down(b, &l)
}

fn sample_case<D: NnOps, T: Scalar>(dev: &D, n: usize, c: usize) {
    let mut rng = Rng::new(21 + c as u64);
    let z = randn(&mut rng, n * c, 2.0);
    let u: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
    let h = sample::<_, T>(&cpu(), &z, &u, c);
    let d = sample::<_, T>(dev, &z, &u, c);
    check("sample_labels", "labels", &d, &h);
}

fn sample_labels_matches_host_on<D: NnOps>(dev: &D) {
    for (n, c) in [(64, 33), (9, 300), (4, 1)] {
        sample_case::<_, f32>(dev, n, c);
        sample_case::<_, f64>(dev, n, c);
    }
}

#[cfg(feature = "opencl")]
#[test]
fn sample_labels_matches_host() {
    if let Some(dev) = device("sample_labels_matches_host") {
        sample_labels_matches_host_on(&dev);
    }
}

// ---------------------------------------------------------------- dropout

fn drop<B: NnOps, T: Scalar>(b: &B, x: &[f64], p: f64, seed: u64, backward: bool) -> Vec<T> {
    let xb = up::<B, T>(b, x);
    let mut y = b.alloc::<T>(x.len()).unwrap();
    if backward {
        b.dropout_backward(&xb, &mut y, x.len(), p, seed).unwrap();
    } else {
        b.dropout(&xb, &mut y, x.len(), p, seed).unwrap();
    }
    down(b, &y)
}

fn dropout_case<D: NnOps, T: Scalar>(dev: &D) {
    let mut rng = Rng::new(3);
    let x = randn(&mut rng, 1001, 1.0);
    for (p, seed) in [
        (0.1, 7u64),
        (0.5, u64::MAX - 3),
        (0.0, 1),
        (1.0, 2),
        (0.3, 1 << 40),
    ] {
        for backward in [false, true] {
            let op = if backward {
                "dropout_backward"
            } else {
                "dropout"
            };
            let h = drop::<_, T>(&cpu(), &x, p, seed, backward);
            let d = drop::<_, T>(dev, &x, p, seed, backward);
            check(op, &format!("p {p}"), &d, &h);
        }
    }
}

fn dropout_matches_host_bit_for_bit_on<D: NnOps>(dev: &D) {
    dropout_case::<_, f32>(dev);
    dropout_case::<_, f64>(dev);
}

#[cfg(feature = "opencl")]
#[test]
fn dropout_matches_host_bit_for_bit() {
    if let Some(dev) = device("dropout_matches_host_bit_for_bit") {
        dropout_matches_host_bit_for_bit_on(&dev);
    }
}

// ---------------------------------------------------------------- row norms

struct NormIo {
    x: Vec<f64>,
    dy: Vec<f64>,
    params: Vec<f64>,
    grads: Vec<f64>,
}

const G_OFF: usize = 3;

fn beta_off(d: usize, beta: bool) -> Option<usize> {
    beta.then_some(G_OFF + d + 2)
}

/// Forward of a row norm: (y, mean, rstd).
fn norm_fwd<B: NnOps, T: Scalar>(
    b: &B,
    kind: NormKind,
    (rows, d): (usize, usize),
    io: &NormIo,
    beta: bool,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let x = up::<B, T>(b, &io.x);
    let p = up::<B, T>(b, &io.params);
    let mut y = b.alloc::<T>(rows * d).unwrap();
    let mut m = b.alloc::<T>(rows).unwrap();
    let mut s = b.alloc::<T>(rows).unwrap();
    b.norm_rows(
        kind,
        &x,
        &mut y,
        rows,
        d,
        &p,
        G_OFF,
        beta_off(d, beta),
        &mut m,
        &mut s,
        1e-5,
    )
    .unwrap();
    (down(b, &y), down(b, &m), down(b, &s))
}

/// Backward of a row norm from the given statistics: (dx, grads).
fn norm_bwd<B: NnOps, T: Scalar>(
    b: &B,
    kind: NormKind,
    (rows, d): (usize, usize),
    io: &NormIo,
    beta: bool,
    (mean, rstd): (&[T], &[T]),
) -> (Vec<T>, Vec<T>) {
    let f = |v: &[T]| v.iter().map(|x| x.as_f64()).collect::<Vec<f64>>();
    let x = up::<B, T>(b, &io.x);
    let p = up::<B, T>(b, &io.params);
    let dy = up::<B, T>(b, &io.dy);
    let (m, s) = (up::<B, T>(b, &f(mean)), up::<B, T>(b, &f(rstd)));
    let mut dx = b.alloc::<T>(rows * d).unwrap();
    let mut g = up::<B, T>(b, &io.grads);
    b.norm_rows_backward(
        kind,
        &x,
        &dy,
        &mut dx,
        rows,
        d,
        &p,
        G_OFF,
        &m,
        &s,
        &mut g,
        1,
        beta_off(d, beta).map(|o| o + 1),
    )
    .unwrap();
    (down(b, &dx), down(b, &g))
}

fn norm_case<D: NnOps, T: Scalar>(dev: &D, rows: usize, d: usize) {
    let mut rng = Rng::new(31 + d as u64);
    let mut x = randn(&mut rng, rows * d, 1.0);
    x.iter_mut().for_each(|v| *v += 0.5);
    let io = NormIo {
        x,
        dy: randn(&mut rng, rows * d, 1.0),
        params: (0..2 * d + 8).map(|_| 1.0 + 0.3 * rng.normal()).collect(),
        grads: randn(&mut rng, 2 * d + 8, 0.1),
    };
    for (kind, beta) in [
        (NormKind::Layer, true),
        (NormKind::Layer, false),
        (NormKind::Rms, false),
    ] {
        let h = norm_fwd::<_, T>(&cpu(), kind, (rows, d), &io, beta);
        let g = norm_fwd::<_, T>(dev, kind, (rows, d), &io, beta);
        check("norm_rows", "y", &g.0, &h.0);
        check("norm_rows", "mean", &g.1, &h.1);
        check("norm_rows", "rstd", &g.2, &h.2);
        // Deterministic: the same bits again.
        assert_eq!(norm_fwd::<_, T>(dev, kind, (rows, d), &io, beta), g);
        // The backward from the host's statistics, so only its own rounding is measured.
        let stats = (&h.1[..], &h.2[..]);
        let hb = norm_bwd::<_, T>(&cpu(), kind, (rows, d), &io, beta, stats);
        let gb = norm_bwd::<_, T>(dev, kind, (rows, d), &io, beta, stats);
        check("norm_rows_backward", "dx", &gb.0, &hb.0);
        check("norm_rows_backward", "grads", &gb.1, &hb.1);
        // dγ and dβ sum rows in the host's order: dβ the same bits, and dγ too in f64.
        if let Some(o) = beta_off(d, beta) {
            let db = o + 1..o + 1 + d;
            assert_eq!(gb.1[db.clone()], hb.1[db], "norm_rows_backward dbeta: bits");
        }
        if !is_f32::<T>() {
            assert_eq!(gb.1, hb.1, "norm_rows_backward grads (f64): bits");
        }
    }
}

fn norm_rows_match_host_on<D: NnOps>(dev: &D) {
    for (rows, d) in [(7, 33), (3, 300)] {
        norm_case::<_, f32>(dev, rows, d);
        norm_case::<_, f64>(dev, rows, d);
    }
}

#[cfg(feature = "opencl")]
#[test]
fn norm_rows_match_host() {
    if let Some(dev) = device("norm_rows_match_host") {
        norm_rows_match_host_on(&dev);
    }
}

fn wrong_sizes_are_errors_on<D: NnOps>(dev: &D) {
    let (rows, d) = (7, 33);
    let x = dev.alloc::<f32>(rows * d).unwrap();
    let mut y = dev.alloc::<f32>(rows * d - 1).unwrap();
    let p = dev.alloc::<f32>(2 * d).unwrap();
    let mut m = dev.alloc::<f32>(rows).unwrap();
    let mut s = dev.alloc::<f32>(rows).unwrap();
    let e = dev
        .norm_rows(
            NormKind::Layer,
            &x,
            &mut y,
            rows,
            d,
            &p,
            0,
            Some(d + 1),
            &mut m,
            &mut s,
            1e-5,
        )
        .unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    let sh = AttnShape {
        b: 2,
        t: 5,
        h: 3,
        dh: 4,
        causal: true,
    };
    let qkv = dev.alloc::<f64>(sh.qkv_len()).unwrap();
    let mut lse = dev.alloc::<f64>(sh.lse_len() - 1).unwrap();
    let mut out = dev.alloc::<f64>(sh.out_len()).unwrap();
    let e = dev.attention(&qkv, sh, &mut lse, &mut out).unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    let mut dq = dev.alloc::<f64>(sh.qkv_len()).unwrap();
    let e = dev
        .attention_backward(&qkv, &out, &lse, &out, sh, &mut dq)
        .unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    let ids = dev.alloc::<f32>(3).unwrap();
    let table = dev.alloc::<f32>(10 * 4).unwrap();
    let mut ye = dev.alloc::<f32>(4 * 4).unwrap();
    let e = dev
        .embedding(&ids, 4, &table, 0, 10, 4, &mut ye)
        .unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    // Zero sizes are no-ops.
    dev.embedding(&ids, 0, &table, 0, 10, 4, &mut ye).unwrap();
    dev.add_positions(&mut ye, 0, 4, 4, &table, 0).unwrap();
}

#[cfg(feature = "opencl")]
#[test]
fn wrong_sizes_are_errors() {
    if let Some(dev) = device("wrong_sizes_are_errors") {
        wrong_sizes_are_errors_on(&dev);
    }
}

// ---------------------------------------------------------------- attention and RoPE

/// (lse, out, dqkv) of attention on `qkv`, with `dout`; `dqkv` is filled with 7 first (it is
/// written, not accumulated).
fn attn<B: NnOps, T: Scalar>(
    b: &B,
    s: AttnShape,
    qkv: &[f64],
    dout: &[f64],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let q = up::<B, T>(b, qkv);
    let mut lse = b.alloc::<T>(s.lse_len()).unwrap();
    let mut out = b.alloc::<T>(s.out_len()).unwrap();
    b.attention(&q, s, &mut lse, &mut out).unwrap();
    let mut dq = up::<B, T>(b, &vec![7.0; s.qkv_len()]);
    b.attention_backward(&q, &out, &lse, &up::<B, T>(b, dout), s, &mut dq)
        .unwrap();
    (down(b, &lse), down(b, &out), down(b, &dq))
}

/// The backward alone from given `out` and `lse` (the host's), so only its own rounding counts.
fn attn_back<B: NnOps, T: Scalar>(
    b: &B,
    s: AttnShape,
    qkv: &[f64],
    out: &[f64],
    lse: &[f64],
    dout: &[f64],
) -> Vec<T> {
    let mut dq = up::<B, T>(b, &vec![7.0; s.qkv_len()]);
    b.attention_backward(
        &up::<B, T>(b, qkv),
        &up::<B, T>(b, out),
        &up::<B, T>(b, lse),
        &up::<B, T>(b, dout),
        s,
        &mut dq,
    )
    .unwrap();
    down(b, &dq)
}

fn f64s<T: Scalar>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.as_f64()).collect()
}

fn attention_case<D: NnOps, T: Scalar>(dev: &D, s: AttnShape) {
    let mut rng = Rng::new(41 + s.t as u64);
    let qkv = randn(&mut rng, s.qkv_len(), 1.5);
    let dout = randn(&mut rng, s.out_len(), 1.0);
    let h = attn::<_, T>(&cpu(), s, &qkv, &dout);
    let d = attn::<_, T>(dev, s, &qkv, &dout);
    check("attention", "lse", &d.0, &h.0);
    check("attention", "out", &d.1, &h.1);
    check(
        "attention_backward",
        "dqkv",
        &attn_back::<_, T>(dev, s, &qkv, &f64s(&h.1), &f64s(&h.0), &dout),
        &attn_back::<_, T>(&cpu(), s, &qkv, &f64s(&h.1), &f64s(&h.0), &dout),
    );
    // The whole chain from the device's own forward, and against the naive oracle (the full
    // probability matrix in f64, of the inputs as rounded to T).
    check("attention_backward", "dqkv (chain)", &d.2, &h.2);
    let r = |v: &[f64]| v.iter().map(|&x| T::of(x).as_f64()).collect::<Vec<f64>>();
    let (no, nl, nd) = naive_attention(&s, &r(&qkv), &r(&dout));
    let ty = if is_f32::<T>() { "f32" } else { "f64" };
    for (op, what, got, want) in [
        ("attention", "out", &d.1, &no),
        ("attention", "lse", &d.0, &nl),
        ("attention_backward", "dqkv", &d.2, &nd),
    ] {
        let e = rel_err(&f64s(got), want);
        println!("{op} {what} ({ty}) {s:?} against the naive oracle: {e:.3e}");
        assert!(
            e <= tolerance::<T>(op),
            "{op} {what} ({ty}) {s:?}: {e:e} from the naive oracle"
        );
    }
}

/// Attention at `t ∈ {1, 7, 64, 1000}` (support/naive_attention.rs), causal and not, plus odd
/// head widths past one chunk of the kernels' private accumulators (dh 40 > 32).
fn attention_matches_host_on<D: NnOps>(dev: &D) {
    let mut shapes = attention_shapes();
    for causal in [false, true] {
        shapes.push(AttnShape {
            b: 1,
            t: 9,
            h: 2,
            dh: 40,
            causal,
        });
    }
    for s in shapes {
        attention_case::<_, f32>(dev, s);
        attention_case::<_, f64>(dev, s);
    }
}

#[cfg(feature = "opencl")]
#[test]
fn attention_matches_host() {
    if let Some(dev) = device("attention_matches_host") {
        attention_matches_host_on(&dev);
    }
}

fn rope_run<B: NnOps, T: Scalar>(b: &B, s: AttnShape, qkv: &[f64], inverse: bool) -> Vec<T> {
    let mut q = up::<B, T>(b, qkv);
    b.rope(&mut q, s, 10000.0, inverse).unwrap();
    down(b, &q)
}

fn rope_matches_host_on<D: NnOps>(dev: &D) {
    for (t, dh) in [(5, 4), (17, 6), (4, 5)] {
        let s = AttnShape {
            b: 2,
            t,
            h: 3,
            dh,
            causal: true,
        };
        let mut rng = Rng::new(51);
        let qkv = randn(&mut rng, s.qkv_len(), 1.0);
        for inverse in [false, true] {
            let w = format!("t {t} dh {dh} inverse {inverse}");
            check(
                "rope",
                &w,
                &rope_run::<_, f32>(dev, s, &qkv, inverse),
                &rope_run::<_, f32>(&cpu(), s, &qkv, inverse),
            );
            check(
                "rope",
                &w,
                &rope_run::<_, f64>(dev, s, &qkv, inverse),
                &rope_run::<_, f64>(&cpu(), s, &qkv, inverse),
            );
        }
    }
}

#[cfg(feature = "opencl")]
#[test]
fn rope_matches_host() {
    if let Some(dev) = device("rope_matches_host") {
        rope_matches_host_on(&dev);
    }
}

// ---------------------------------------------------------------- SwiGLU

fn swiglu_run<B: NnOps, T: Scalar>(
    b: &B,
    rows: usize,
    f: usize,
    x: &[f64],
    dy: &[f64],
) -> (Vec<T>, Vec<T>) {
    let xb = up::<B, T>(b, x);
    let mut y = b.alloc::<T>(rows * f).unwrap();
    b.swiglu(&xb, &mut y, rows, f).unwrap();
    let mut dx = b.alloc::<T>(rows * 2 * f).unwrap();
    b.swiglu_backward(&xb, &up::<B, T>(b, dy), &mut dx, rows, f)
        .unwrap();
    (down(b, &y), down(b, &dx))
}

fn swiglu_case<D: NnOps, T: Scalar>(dev: &D) {
    let (rows, f) = (7, 33);
    let mut rng = Rng::new(61);
    let x = randn(&mut rng, rows * 2 * f, 2.0);
    let dy = randn(&mut rng, rows * f, 1.0);
    let h = swiglu_run::<_, T>(&cpu(), rows, f, &x, &dy);
    let d = swiglu_run::<_, T>(dev, rows, f, &x, &dy);
    check("swiglu", "y", &d.0, &h.0);
    check("swiglu_backward", "dx", &d.1, &h.1);
}

fn swiglu_matches_host_on<D: NnOps>(dev: &D) {
    swiglu_case::<_, f32>(dev);
    swiglu_case::<_, f64>(dev);
}

#[cfg(feature = "opencl")]
#[test]
fn swiglu_matches_host() {
    if let Some(dev) = device("swiglu_matches_host") {
        swiglu_matches_host_on(&dev);
    }
}

// ---------------------------------------------------------------- embeddings and positions

fn embed_run<B: NnOps, T: Scalar>(
    b: &B,
    ids: &[f64],
    table: &[f64],
    vocab: usize,
    d: usize,
    dy: &[f64],
) -> (Vec<T>, Vec<T>) {
    let n = ids.len();
    let (ib, tb) = (up::<B, T>(b, ids), up::<B, T>(b, table));
    let mut y = b.alloc::<T>(n * d).unwrap();
    b.embedding(&ib, n, &tb, 5, vocab, d, &mut y).unwrap();
    let mut g = up::<B, T>(b, table);
    b.embedding_backward(&ib, n, &up::<B, T>(b, dy), d, vocab, &mut g, 5)
        .unwrap();
    (down(b, &y), down(b, &g))
}

fn embedding_case<D: NnOps, T: Scalar>(dev: &D) {
    let (n, vocab, d) = (29, 11, 33);
    let mut rng = Rng::new(71);
    let ids: Vec<f64> = (0..n).map(|_| rng.below(vocab as u64) as f64).collect();
    let table = randn(&mut rng, 5 + vocab * d + 3, 1.0);
    let dy = randn(&mut rng, n * d, 1.0);
    let h = embed_run::<_, T>(&cpu(), &ids, &table, vocab, d, &dy);
    let g = embed_run::<_, T>(dev, &ids, &table, vocab, d, &dy);
    check("embedding", "y", &g.0, &h.0);
    check("embedding_backward", "dtable", &g.1, &h.1);

    // An invalid id: an error on the host, a NaN row on the device.
    let mut bad = ids.clone();
    bad[4] = vocab as f64;
    let (ib, tb) = (up::<_, T>(dev, &bad), up::<_, T>(dev, &table));
    let mut y = dev.alloc::<T>(n * d).unwrap();
    dev.embedding(&ib, n, &tb, 5, vocab, d, &mut y).unwrap();
    let y = down(dev, &y);
    assert!(y[4 * d..5 * d].iter().all(|v| v.is_nan()));
    assert!(y[..4 * d].iter().all(|v| v.is_finite()));
    let c = cpu();
    let mut yh = c.alloc::<T>(n * d).unwrap();
    let e = c
        .embedding(
            &up::<_, T>(&c, &bad),
            n,
            &up::<_, T>(&c, &table),
            5,
            vocab,
            d,
            &mut yh,
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
}

fn embedding_matches_host_bit_for_bit_on<D: NnOps>(dev: &D) {
    embedding_case::<_, f32>(dev);
    embedding_case::<_, f64>(dev);
}

#[cfg(feature = "opencl")]
#[test]
fn embedding_matches_host_bit_for_bit() {
    if let Some(dev) = device("embedding_matches_host_bit_for_bit") {
        embedding_matches_host_bit_for_bit_on(&dev);
    }
}

fn positions_run<B: NnOps, T: Scalar>(
    b: &B,
    (bs, t, d): (usize, usize, usize),
    x: &[f64],
    table: &[f64],
) -> (Vec<T>, Vec<T>) {
    let mut xb = up::<B, T>(b, x);
    let tb = up::<B, T>(b, table);
    b.add_positions(&mut xb, bs, t, d, &tb, 7).unwrap();
    let mut g = up::<B, T>(b, table);
    b.add_positions_backward(&up::<B, T>(b, x), bs, t, d, &mut g, 7)
        .unwrap();
    (down(b, &xb), down(b, &g))
}

fn positions_case<D: NnOps, T: Scalar>(dev: &D) {
    let (bs, t, d) = (3, 5, 33);
    let mut rng = Rng::new(81);
    let x = randn(&mut rng, bs * t * d + 4, 1.0);
    let table = randn(&mut rng, 7 + t * d + 2, 1.0);
    let h = positions_run::<_, T>(&cpu(), (bs, t, d), &x, &table);
    let g = positions_run::<_, T>(dev, (bs, t, d), &x, &table);
    check("add_positions", "x", &g.0, &h.0);
    check("add_positions_backward", "dtable", &g.1, &h.1);
}

fn add_positions_matches_host_bit_for_bit_on<D: NnOps>(dev: &D) {
    positions_case::<_, f32>(dev);
    positions_case::<_, f64>(dev);
}

#[cfg(feature = "opencl")]
#[test]
fn add_positions_matches_host_bit_for_bit() {
    if let Some(dev) = device("add_positions_matches_host_bit_for_bit") {
        add_positions_matches_host_bit_for_bit_on(&dev);
    }
}

fn patchify_case<D: NnOps, T: Scalar>(dev: &D) {
    // 3 images of 2 channels, 6 × 6, patches of 3: 4 patches + the CLS row.
    let (n, ch, side, p) = (3, 2, 6, 3);
    let mut rng = Rng::new(83);
    let x = randn(&mut rng, n * ch * side * side, 1.0);
    let run = |b: &dyn Fn(&[f64]) -> Vec<T>| b(&x);
    let h = run(&|x| {
        let b = cpu();
        // Garbage in `out` must be overwritten, CLS rows included.
        let mut out = up::<_, T>(&b, &vec![7.0; n * 5 * ch * p * p + 3]);
        b.patchify(&up::<_, T>(&b, x), n, ch, side, p, &mut out)
            .unwrap();
        down(&b, &out)
    });
    let mut out = up::<_, T>(dev, &vec![7.0; n * 5 * ch * p * p + 3]);
    dev.patchify(&up::<_, T>(dev, &x), n, ch, side, p, &mut out)
        .unwrap();
    let g = down(dev, &out);
    check("patchify", "rows", &g, &h);
    // Row 0 of each image is zero; patch (0, 1) of image 0 starts at x[0][0][0][3].
    let per = ch * p * p;
    assert!(h[..per].iter().all(|v| *v == T::zero()));
    assert_eq!(h[2 * per].as_f64(), T::of(x[3]).as_f64());
    let mut small = up::<_, T>(dev, &[0.0; 4]);
    assert!(
        dev.patchify(&up::<_, T>(dev, &x), n, ch, side, p, &mut small)
            .is_err()
    );
    assert!(
        dev.patchify(&up::<_, T>(dev, &x), n, ch, side, 4, &mut out)
            .is_err()
    );
}

fn patchify_matches_host_bit_for_bit_on<D: NnOps>(dev: &D) {
    patchify_case::<_, f32>(dev);
    patchify_case::<_, f64>(dev);
}

#[cfg(feature = "opencl")]
#[test]
fn patchify_matches_host_bit_for_bit() {
    if let Some(dev) = device("patchify_matches_host_bit_for_bit") {
        patchify_matches_host_bit_for_bit_on(&dev);
    }
}

// ---------------------------------------------------------------- CUDA

/// The whole NN program (both kernel files) compiles with NVRTC for Hopper without a
/// warning, every `tf_` kernel is an entry point, and launches can read every parameter list.
/// Needs NVRTC, not a GPU; without it the test prints a skip line, unless `IRE_REQUIRE`
/// names `nvrtc`.
#[cfg(feature = "cuda")]
#[test]
fn nn_program_compiles_with_nvrtc() {
    use ire_core::DType;
    use ire_core::kernels::{Dialect, extension_source, kernel_names_in};
    use ire_models::nn::device::NN_KERNELS;

    if let Err(e) = ire_backend_cuda::nvrtc_version() {
        assert!(
            !required("nvrtc"),
            "IRE_REQUIRE names nvrtc but NVRTC cannot be loaded: {e}"
        );
        println!("skipped nn_program_compiles_with_nvrtc: {e}");
        return;
    }
    let kernels = ire_core::device::signature::parse(NN_KERNELS.source)
        .unwrap()
        .len();
    let tf: Vec<&str> = kernel_names_in(NN_KERNELS.source)
        .filter(|k| k.starts_with("tf_"))
        .collect();
    assert!(tf.len() >= 15 && kernels >= tf.len(), "{tf:?}");
    for dtype in [DType::F32, DType::F64] {
        let src = extension_source(Dialect::Cuda, dtype, &NN_KERNELS);
        let c = ire_backend_cuda::compile_source(&src, Some("sm_90"))
            .unwrap_or_else(|e| panic!("{}: {e}", dtype.name()));
        assert!(
            c.log.is_empty(),
            "{}: NVRTC warnings:\n{}",
            dtype.name(),
            c.log
        );
        for k in &tf {
            assert!(
                c.ptx.contains(&format!(".entry {k}(")),
                "{}: {k} is not an entry point",
                dtype.name()
            );
        }
    }
}

/// Whether `IRE_REQUIRE` (comma-separated) names `what`.
#[cfg(feature = "cuda")]
fn required(what: &str) -> bool {
    std::env::var("IRE_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim().eq_ignore_ascii_case(what))
}

/// Every case above on the first CUDA device, when there is one (a skip line otherwise,
/// unless `IRE_REQUIRE` names `cuda`).
#[cfg(feature = "cuda")]
#[test]
fn cuda_matches_host() {
    let dev = match ire_backend_cuda::from_env() {
        Ok(d) => d,
        Err(e) => {
            assert!(
                !required("cuda"),
                "IRE_REQUIRE names cuda but no GPU is usable: {e}"
            );
            println!("skipped cuda_matches_host: {e}");
            return;
        }
    };
    softmax_xent_matches_host_on(&dev);
    softmax_xent_errors_like_host_on(&dev);
    sample_labels_matches_host_on(&dev);
    dropout_matches_host_bit_for_bit_on(&dev);
    norm_rows_match_host_on(&dev);
    wrong_sizes_are_errors_on(&dev);
    attention_matches_host_on(&dev);
    rope_matches_host_on(&dev);
    swiglu_matches_host_on(&dev);
    embedding_matches_host_bit_for_bit_on(&dev);
    add_positions_matches_host_bit_for_bit_on(&dev);
    patchify_matches_host_bit_for_bit_on(&dev);
}

//! The image-network ops on the OpenCL and CUDA backends against the CPU backend, in f32 and
//! f64, on seeded random inputs of odd sizes, within the tolerances of `CNN_TOLERANCES` (0: bit
//! for bit). Without an OpenCL device each OpenCL test prints a skip line and passes, unless
//! `IRE_REQUIRE` names `opencl`; likewise the CUDA test without a GPU, unless it names `cuda`.
#![cfg(any(feature = "opencl", feature = "cuda"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::rc::Rc;
#[cfg(feature = "opencl")]
use std::sync::OnceLock;

use ire_backend_cpu::CpuBackend;
#[cfg(feature = "opencl")]
use ire_backend_opencl::OpenClBackend;
use ire_core::GemmShape;
use ire_core::collective::SingleProcess;
use ire_core::{Backend, DType, Error, Scalar};
use ire_models::nn::batch_norm::BnSync;
use ire_models::nn::device::CNN_TOLERANCES;
use ire_models::nn::{BnMode, BnShape, BnState, ConvGeom, NnOps};
use ire_models::rng::Rng;
use ire_models::train::sync_bn::GroupBnSync;

/// One device for every test (its program is compiled once per dtype).
#[cfg(feature = "opencl")]
fn device(test: &str) -> Option<&'static OpenClBackend> {
    static DEV: OnceLock<Option<OpenClBackend>> = OnceLock::new();
    let dev = DEV
        .get_or_init(|| ire_backend_opencl::optional().expect("opening the OpenCL device"))
        .as_ref();
    if dev.is_none() {
        println!("skipped {test}: no OpenCL device");
    }
    dev
}

/// Runs `case` in f32 and, where the device has it, f64.
fn both<D: NnOps>(dev: &D, case: impl Fn(&D, DType)) {
    case(dev, DType::F32);
    if dev.supports_dtype(DType::F64) {
        case(dev, DType::F64);
    } else {
        println!("f64 skipped: the device has no f64");
    }
}

fn randn(rng: &mut Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.normal()).collect()
}

fn up<B: Backend, T: Scalar>(b: &B, v: &[f64]) -> B::Buffer<T> {
    let v: Vec<T> = v.iter().map(|&x| T::of(x)).collect();
    b.alloc_from(&v).unwrap()
}

fn down<B: Backend, T: Scalar>(b: &B, buf: &B::Buffer<T>) -> Vec<f64> {
    b.to_vec(buf).unwrap().iter().map(|v| v.as_f64()).collect()
}

fn tolerance<T: Scalar>(op: &str) -> f64 {
    let row = CNN_TOLERANCES
        .iter()
        .find(|r| r.0 == op)
        .unwrap_or_else(|| panic!("{op} is not in CNN_TOLERANCES"));
    if T::DTYPE == DType::F64 { row.2 } else { row.1 }
}

/// Every output of the device within the op's norm-wise tolerance of the CPU's (bit for bit
/// where the tolerance is 0). Returns the largest relative error seen.
fn check<T: Scalar>(op: &str, what: &str, got: &[Vec<f64>], want: &[Vec<f64>]) -> f64 {
    let tol = tolerance::<T>(op);
    let dt = T::DTYPE.name();
    assert_eq!(got.len(), want.len());
    let mut worst = 0.0f64;
    for (o, (got, want)) in got.iter().zip(want).enumerate() {
        assert_eq!(got.len(), want.len(), "{op} {dt} {what} output {o}: length");
        if tol == 0.0 {
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{op} {dt} {what} output {o}[{i}]: device {a:e}, cpu {b:e} (must be bitwise)"
                );
            }
            continue;
        }
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= tol * scale,
            "{op} {dt} {what} output {o}: max error {err:e} > {tol:e} · {scale:e}"
        );
        worst = worst.max(err / scale.max(f64::MIN_POSITIVE));
    }
    if worst > 0.0 {
        println!("{op} {dt} {what}: max relative error {worst:.1e}");
    }
    worst
}

/// `run::<B, T>(backend)` on the CPU and on the device, compared.
macro_rules! compare {
    ($dev:expr, $dt:expr, $op:expr, $what:expr, $run:ident $(, $arg:expr)*) => {{
        let cpu = CpuBackend::new();
        match $dt {
            DType::F64 => {
                let want = $run::<_, f64>(&cpu $(, $arg)*);
                let got = $run::<_, f64>($dev $(, $arg)*);
                check::<f64>($op, &$what, &got, &want)
            }
            _ => {
                let want = $run::<_, f32>(&cpu $(, $arg)*);
                let got = $run::<_, f32>($dev $(, $arg)*);
                check::<f32>($op, &$what, &got, &want)
            }
        }
    }};
}

// ------------------------------------------------------------------------------------------
// GEMM

#[derive(Clone, Copy)]
struct Offs(usize, usize, usize);

#[allow(clippy::too_many_arguments)]
fn run_gemm<B: NnOps, T: Scalar>(
    b: &B,
    g: GemmShape,
    alpha: f64,
    a: &[f64],
    bm: &[f64],
    beta: f64,
    c: &[f64],
    o: Offs,
) -> Vec<Vec<f64>> {
    let (ab, bb) = (up::<B, T>(b, a), up::<B, T>(b, bm));
    let mut cb = up::<B, T>(b, c);
    b.gemm(
        g,
        T::of(alpha),
        &ab,
        o.0,
        &bb,
        o.1,
        T::of(beta),
        &mut cb,
        o.2,
    )
    .unwrap();
    vec![down(b, &cb)]
}

fn gemm_matches_the_cpu_backend_on<D: NnOps>(dev: &D) {
    both(dev, |dev, dt| {
        let mut rng = Rng::new(1);
        let o = Offs(3, 5, 7);
        // (5, 7, 2100): few tiles and a long k, split over k.
        for (m, n, k) in [
            (1, 1, 1),
            (37, 19, 53),
            (130, 70, 40),
            (3, 4, 0),
            (5, 7, 2100),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let g = GemmShape {
                    trans_a: ta,
                    trans_b: tb,
                    m,
                    n,
                    k,
                };
                let a = randn(&mut rng, o.0 + m * k + 2);
                let bm = randn(&mut rng, o.1 + k * n + 1);
                let mut c = randn(&mut rng, o.2 + m * n + 3);
                for (alpha, beta) in [(0.75, -1.25), (1.0, 0.0)] {
                    if beta == 0.0 {
                        // β = 0 must not read C.
                        c[o.2..o.2 + m * n].fill(f64::NAN);
                    }
                    let what = format!("{m}x{n}x{k} ta={ta} tb={tb} α={alpha} β={beta}");
                    compare!(
                        dev, dt, "gemm", what, run_gemm, g, alpha, &a, &bm, beta, &c, o
                    );
                }
            }
        }
    });
}

#[cfg(feature = "opencl")]
#[test]
fn gemm_matches_the_cpu_backend() {
    if let Some(dev) = device("gemm_matches_the_cpu_backend") {
        gemm_matches_the_cpu_backend_on(dev);
    }
}

/// Unsplit, the kernel sums over k in the naive loop's order: the reference's bits.
#[cfg(feature = "opencl")]
fn gemm_equals_the_reference_bit_for_bit_on<D: NnOps>(dev: &D) {
    let mut rng = Rng::new(2);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let g = GemmShape {
            trans_a: ta,
            trans_b: tb,
            m: 67,
            n: 45,
            k: 33,
        };
        let a = randn(&mut rng, g.m * g.k);
        let b = randn(&mut rng, g.k * g.n);
        let c = randn(&mut rng, g.m * g.n);
        let o = Offs(0, 0, 0);
        let want = run_gemm::<_, f32>(&ire_core::Reference, g, 0.5, &a, &b, 2.0, &c, o);
        let got = run_gemm::<_, f32>(dev, g, 0.5, &a, &b, 2.0, &c, o);
        assert!(
            got[0]
                .iter()
                .zip(&want[0])
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "ta={ta} tb={tb}"
        );
    }
}

#[cfg(feature = "opencl")]
#[test]
fn gemm_equals_the_reference_bit_for_bit() {
    if let Some(dev) = device("gemm_equals_the_reference_bit_for_bit") {
        gemm_equals_the_reference_bit_for_bit_on(dev);
    }
}

// ------------------------------------------------------------------------------------------
// Bias

fn run_add_row_bias<B: NnOps, T: Scalar>(
    b: &B,
    y: &[f64],
    rows: usize,
    cols: usize,
    bias: &[f64],
) -> Vec<Vec<f64>> {
    let mut yb = up::<B, T>(b, y);
    b.add_row_bias(&mut yb, rows, cols, &up::<B, T>(b, bias), 4)
        .unwrap();
    vec![down(b, &yb)]
}

fn run_row_bias_grad<B: NnOps, T: Scalar>(
    b: &B,
    dy: &[f64],
    rows: usize,
    cols: usize,
    db: &[f64],
) -> Vec<Vec<f64>> {
    let mut dbb = up::<B, T>(b, db);
    b.row_bias_grad(&up::<B, T>(b, dy), rows, cols, &mut dbb, 6)
        .unwrap();
    vec![down(b, &dbb)]
}

fn bias_ops_match_the_cpu_backend_on<D: NnOps>(dev: &D) {
    both(dev, |dev, dt| {
        let mut rng = Rng::new(3);
        // 600 rows: partial sums of 256 rows; 300 columns: two column blocks.
        for (rows, cols) in [(37, 19), (1, 1), (600, 300)] {
            let y = randn(&mut rng, rows * cols + 5);
            let b = randn(&mut rng, cols + 9);
            let what = format!("{rows}x{cols}");
            compare!(
                dev,
                dt,
                "add_row_bias",
                what,
                run_add_row_bias,
                &y,
                rows,
                cols,
                &b
            );
            compare!(
                dev,
                dt,
                "row_bias_grad",
                what,
                run_row_bias_grad,
                &y,
                rows,
                cols,
                &b
            );
        }
    });
}

#[cfg(feature = "opencl")]
#[test]
fn bias_ops_match_the_cpu_backend() {
    if let Some(dev) = device("bias_ops_match_the_cpu_backend") {
        bias_ops_match_the_cpu_backend_on(dev);
    }
}

// ------------------------------------------------------------------------------------------
// Convolution

fn run_conv<B: NnOps, T: Scalar>(
    b: &B,
    n: usize,
    g: &ConvGeom,
    x: &[f64],
    w: &[f64],
) -> Vec<Vec<f64>> {
    let (xb, wb) = (up::<B, T>(b, x), up::<B, T>(b, w));
    let mut y = up::<B, T>(b, &vec![f64::NAN; n * g.out_size()]);
    b.conv2d(&xb, n, g, &wb, 2, &mut y).unwrap();
    vec![down(b, &y)]
}

#[allow(clippy::too_many_arguments)]
fn run_conv_backward<B: NnOps, T: Scalar>(
    b: &B,
    n: usize,
    g: &ConvGeom,
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    dw: &[f64],
    with_dx: bool,
) -> Vec<Vec<f64>> {
    let (xb, wb, dyb) = (up::<B, T>(b, x), up::<B, T>(b, w), up::<B, T>(b, dy));
    let mut dwb = up::<B, T>(b, dw);
    let mut dx = up::<B, T>(b, &vec![f64::NAN; n * g.in_size()]);
    let dxo = if with_dx { Some(&mut dx) } else { None };
    b.conv2d_backward(&xb, n, g, &wb, 2, &dyb, dxo, &mut dwb, 3)
        .unwrap();
    if with_dx {
        vec![down(b, &dwb), down(b, &dx)]
    } else {
        vec![down(b, &dwb)]
    }
}

fn convolutions_match_the_cpu_backend_on<D: NnOps>(dev: &D) {
    both(dev, |dev, dt| {
        let mut rng = Rng::new(4);
        for (k, stride, pad) in [(1, 1, 0), (3, 1, 1), (3, 2, 1), (1, 2, 0), (3, 2, 0)] {
            for n in [1, 3] {
                let g = ConvGeom {
                    c_in: 3,
                    h: 7,
                    w: 6,
                    c_out: 5,
                    k,
                    stride,
                    pad,
                };
                let x = randn(&mut rng, n * g.in_size());
                let w = randn(&mut rng, g.weight_size() + 2);
                let dy = randn(&mut rng, n * g.out_size());
                let dw = randn(&mut rng, g.weight_size() + 3);
                let what = format!("n{n} k{k} s{stride} p{pad}");
                compare!(dev, dt, "conv2d", what, run_conv, n, &g, &x, &w);
                for with_dx in [true, false] {
                    let what = format!("{what} dx={with_dx}");
                    compare!(
                        dev,
                        dt,
                        "conv2d_backward",
                        what,
                        run_conv_backward,
                        n,
                        &g,
                        &x,
                        &w,
                        &dy,
                        &dw,
                        with_dx
                    );
                }
            }
        }
    });
}

#[cfg(feature = "opencl")]
#[test]
fn convolutions_match_the_cpu_backend() {
    if let Some(dev) = device("convolutions_match_the_cpu_backend") {
        convolutions_match_the_cpu_backend_on(dev);
    }
}

// ------------------------------------------------------------------------------------------
// Element-wise ops

#[derive(Clone, Copy, PartialEq)]
enum Ew {
    Relu,
    ReluBackward,
    Gelu,
    GeluBackward,
    Scale,
}

/// The op on the first `len` values of buffers one value longer (which must stay as is).
fn run_elementwise<B: NnOps, T: Scalar>(
    b: &B,
    op: Ew,
    len: usize,
    x: &[f64],
    d: &[f64],
) -> Vec<Vec<f64>> {
    let (xb, db) = (up::<B, T>(b, x), up::<B, T>(b, d));
    let mut out = up::<B, T>(b, &vec![7.0; x.len()]);
    match op {
        Ew::Relu => b.relu(&xb, &mut out, len).unwrap(),
        Ew::ReluBackward => b.relu_backward(&xb, &db, &mut out, len).unwrap(),
        Ew::Gelu => b.gelu(&xb, &mut out, len).unwrap(),
        Ew::GeluBackward => b.gelu_backward(&xb, &db, &mut out, len).unwrap(),
        Ew::Scale => {
            let mut xs = up::<B, T>(b, x);
            b.scale(&mut xs, T::of(-0.3)).unwrap();
            return vec![down(b, &xs)];
        }
    }
    vec![down(b, &out)]
}

fn elementwise_ops_match_the_cpu_backend_on<D: NnOps>(dev: &D) {
    both(dev, |dev, dt| {
        let mut rng = Rng::new(5);
        let len = 1001;
        // Wide range for GELU's tails; exact zeros for ReLU's edge.
        let mut x: Vec<f64> = randn(&mut rng, len + 1).iter().map(|v| 4.0 * v).collect();
        x[10] = 0.0;
        x[11] = -0.0;
        x[12] = -9.0;
        let d = randn(&mut rng, len + 1);
        for (name, op) in [
            ("relu", Ew::Relu),
            ("relu_backward", Ew::ReluBackward),
            ("gelu", Ew::Gelu),
            ("gelu_backward", Ew::GeluBackward),
            ("scale", Ew::Scale),
        ] {
            compare!(dev, dt, name, "1001", run_elementwise, op, len, &x, &d);
        }
    });
}

#[cfg(feature = "opencl")]
#[test]
fn elementwise_ops_match_the_cpu_backend() {
    if let Some(dev) = device("elementwise_ops_match_the_cpu_backend") {
        elementwise_ops_match_the_cpu_backend_on(dev);
    }
}

// ------------------------------------------------------------------------------------------
// Batch norm

/// Outputs: y, running mean and variance, saved mean and invstd; then dx and the gradient
/// arena of a backward from the saved statistics. `sync` (training mode): the synchronized
/// ops.
fn run_batch_norm<B: NnOps, T: Scalar>(
    b: &B,
    s: BnShape,
    mode: BnMode,
    data: &[Vec<f64>],
    sync: Option<&dyn BnSync>,
) -> Vec<Vec<f64>> {
    let [x, params, rm, rv, dy, grads] = data else {
        panic!("six inputs")
    };
    let len = s.n * s.c * s.hw;
    let (xb, pb) = (up::<B, T>(b, x), up::<B, T>(b, params));
    let mut y = up::<B, T>(b, &vec![f64::NAN; len]);
    let (mut rmb, mut rvb) = (up::<B, T>(b, rm), up::<B, T>(b, rv));
    // Saved statistics as a previous training step left them (eval must not touch them).
    let (mut sm, mut si) = (up::<B, T>(b, rm), up::<B, T>(b, rv));
    let st = BnState {
        running_mean: &mut rmb,
        running_var: &mut rvb,
        save_mean: &mut sm,
        save_invstd: &mut si,
    };
    let (g_off, b_off) = (1, 1 + s.c);
    match (mode, sync) {
        (BnMode::Train { update_running }, Some(sync)) => {
            let (offsets, consts) = ((g_off, b_off), (0.1, 1e-5));
            b.batch_norm_synced(
                &xb,
                &mut y,
                s,
                &pb,
                offsets,
                st,
                update_running,
                consts,
                sync,
            )
        }
        _ => b.batch_norm(&xb, &mut y, s, &pb, g_off, b_off, st, mode, 0.1, 1e-5),
    }
    .unwrap();
    let mut out = vec![
        down(b, &y),
        down(b, &rmb),
        down(b, &rvb),
        down(b, &sm),
        down(b, &si),
    ];
    if matches!(mode, BnMode::Train { .. }) {
        let mut dx = up::<B, T>(b, &vec![f64::NAN; len]);
        let mut gb = up::<B, T>(b, grads);
        let dyb = up::<B, T>(b, dy);
        match sync {
            Some(sync) => b.batch_norm_backward_synced(
                &xb,
                &dyb,
                &mut dx,
                s,
                (&pb, g_off),
                (&sm, &si),
                (&mut gb, 2, 2 + s.c),
                sync,
            ),
            None => b.batch_norm_backward(
                &xb,
                &dyb,
                &mut dx,
                s,
                &pb,
                g_off,
                &sm,
                &si,
                &mut gb,
                2,
                2 + s.c,
            ),
        }
        .unwrap();
        out.extend([down(b, &dx), down(b, &gb)]);
    }
    out
}

fn batch_norm_matches_the_cpu_backend_on<D: NnOps>(dev: &D) {
    both(dev, |dev, dt| {
        let mut rng = Rng::new(6);
        // hw > WG, hw = 1 with many images, and a small odd shape.
        for (n, c, hw) in [(3, 5, 7), (2, 3, 300), (300, 2, 1)] {
            let s = BnShape { n, c, hw };
            let len = n * c * hw;
            // An offset mean, so the statistics are not trivially near 0.
            let x: Vec<f64> = randn(&mut rng, len).iter().map(|v| 2.0 * v + 0.7).collect();
            let params = randn(&mut rng, 2 * c + 1);
            let rm = randn(&mut rng, c);
            let rv: Vec<f64> = randn(&mut rng, c).iter().map(|v| v * v + 0.5).collect();
            let dy = randn(&mut rng, len);
            let grads = randn(&mut rng, 2 * c + 2);
            let data = vec![x, params, rm, rv, dy, grads];
            for mode in [
                BnMode::Train {
                    update_running: true,
                },
                BnMode::Train {
                    update_running: false,
                },
                BnMode::Eval,
            ] {
                let what = format!("{n}x{c}x{hw} {mode:?}");
                let op = match mode {
                    BnMode::Eval => "batch_norm",
                    _ => "batch_norm_backward",
                };
                // The forward outputs under the forward's tolerance, the backward's under its own.
                let cpu = CpuBackend::new();
                let (want, got) = match dt {
                    DType::F64 => (
                        run_batch_norm::<_, f64>(&cpu, s, mode, &data, None),
                        run_batch_norm::<_, f64>(dev, s, mode, &data, None),
                    ),
                    _ => (
                        run_batch_norm::<_, f32>(&cpu, s, mode, &data, None),
                        run_batch_norm::<_, f32>(dev, s, mode, &data, None),
                    ),
                };
                let f64s = dt == DType::F64;
                let chk = |op: &str, got: &[Vec<f64>], want: &[Vec<f64>]| {
                    if f64s {
                        check::<f64>(op, &what, got, want)
                    } else {
                        check::<f32>(op, &what, got, want)
                    }
                };
                chk("batch_norm", &got[..5], &want[..5]);
                if op == "batch_norm_backward" {
                    chk(op, &got[5..], &want[5..]);
                }
                // Deterministic: the same bits again.
                let again = match dt {
                    DType::F64 => run_batch_norm::<_, f64>(dev, s, mode, &data, None),
                    _ => run_batch_norm::<_, f32>(dev, s, mode, &data, None),
                };
                for (a, b) in again.iter().zip(&got) {
                    assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
                }
            }
        }
    });
}

#[cfg(feature = "opencl")]
#[test]
fn batch_norm_matches_the_cpu_backend() {
    if let Some(dev) = device("batch_norm_matches_the_cpu_backend") {
        batch_norm_matches_the_cpu_backend_on(dev);
    }
}

/// The synchronized batch norm on a device goes through the host implementation: in a group
/// of one it is the CPU backend's plain batch norm, bit for bit (forward, running and saved
/// statistics, dx and the gradient arena).
fn synced_batch_norm_matches_the_cpu_backend_on<D: NnOps>(dev: &D) {
    both(dev, |dev, dt| {
        let mut rng = Rng::new(7);
        let s = BnShape { n: 3, c: 5, hw: 7 };
        let len = s.n * s.c * s.hw;
        let data = vec![
            randn(&mut rng, len),
            randn(&mut rng, 2 * s.c + 1),
            randn(&mut rng, s.c),
            randn(&mut rng, s.c).iter().map(|v| v * v + 0.5).collect(),
            randn(&mut rng, len),
            randn(&mut rng, 2 * s.c + 2),
        ];
        let sync = GroupBnSync::new(Rc::new(SingleProcess));
        sync.set(Some(vec![s.n]));
        let mode = BnMode::Train {
            update_running: true,
        };
        let cpu = CpuBackend::new();
        let (want, got) = match dt {
            DType::F64 => (
                run_batch_norm::<_, f64>(&cpu, s, mode, &data, None),
                run_batch_norm::<_, f64>(dev, s, mode, &data, Some(&sync)),
            ),
            _ => (
                run_batch_norm::<_, f32>(&cpu, s, mode, &data, None),
                run_batch_norm::<_, f32>(dev, s, mode, &data, Some(&sync)),
            ),
        };
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{dt:?} output {i}: {g:?} vs {w:?}"
            );
        }
    });
}

#[cfg(feature = "opencl")]
#[test]
fn synced_batch_norm_matches_the_cpu_backend() {
    if let Some(dev) = device("synced_batch_norm_matches_the_cpu_backend") {
        synced_batch_norm_matches_the_cpu_backend_on(dev);
    }
}

// ------------------------------------------------------------------------------------------
// Pooling

fn run_avg_pool<B: NnOps, T: Scalar>(b: &B, s: BnShape, x: &[f64], d: &[f64]) -> Vec<Vec<f64>> {
    let mut y = up::<B, T>(b, &vec![f64::NAN; s.n * s.c + 1]);
    b.global_avg_pool(&up::<B, T>(b, x), &mut y, s).unwrap();
    let mut dx = up::<B, T>(b, &vec![f64::NAN; s.n * s.c * s.hw + 1]);
    b.global_avg_pool_backward(&up::<B, T>(b, d), &mut dx, s)
        .unwrap();
    vec![down(b, &y), down(b, &dx)]
}

fn run_max_pool<B: NnOps, T: Scalar>(
    b: &B,
    n: usize,
    g: &ConvGeom,
    x: &[f64],
    d: &[f64],
) -> Vec<Vec<f64>> {
    let xb = up::<B, T>(b, x);
    let mut y = up::<B, T>(b, &vec![f64::NAN; n * g.c_in * g.oh() * g.ow()]);
    b.max_pool2d(&xb, n, g, &mut y).unwrap();
    let mut dx = up::<B, T>(b, &vec![f64::NAN; n * g.in_size()]);
    b.max_pool2d_backward(&xb, n, g, &up::<B, T>(b, d), &mut dx)
        .unwrap();
    vec![down(b, &y), down(b, &dx)]
}

fn pooling_matches_the_cpu_backend_on<D: NnOps>(dev: &D) {
    both(dev, |dev, dt| {
        let mut rng = Rng::new(7);
        for (n, c, hw) in [(3, 5, 7), (2, 3, 49)] {
            let s = BnShape { n, c, hw };
            let x = randn(&mut rng, n * c * hw);
            let d = randn(&mut rng, n * c);
            let what = format!("{n}x{c}x{hw}");
            compare!(dev, dt, "global_avg_pool", what, run_avg_pool, s, &x, &d);
        }
        for (k, stride, pad) in [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)] {
            let (n, g) = (
                2,
                ConvGeom {
                    c_in: 3,
                    h: 7,
                    w: 6,
                    c_out: 0,
                    k,
                    stride,
                    pad,
                },
            );
            // Few distinct values: ties, where the first maximum takes the gradient.
            let x: Vec<f64> = randn(&mut rng, n * g.in_size())
                .iter()
                .map(|v| (v * 1.5).round())
                .collect();
            let d = randn(&mut rng, n * g.c_in * g.oh() * g.ow());
            let what = format!("k{k} s{stride} p{pad}");
            compare!(dev, dt, "max_pool2d", what, run_max_pool, n, &g, &x, &d);
        }
    });
}

#[cfg(feature = "opencl")]
#[test]
fn pooling_matches_the_cpu_backend() {
    if let Some(dev) = device("pooling_matches_the_cpu_backend") {
        pooling_matches_the_cpu_backend_on(dev);
    }
}

// ------------------------------------------------------------------------------------------
// Sizes

fn wrong_sizes_are_errors_and_empty_ops_do_nothing_on<D: NnOps>(dev: &D) {
    let buf = |len: usize| dev.alloc::<f32>(len).unwrap();
    let is_size = |r: ire_core::Result<()>| matches!(r, Err(Error::SizeMismatch { .. }));
    let g = GemmShape {
        trans_a: false,
        trans_b: false,
        m: 4,
        n: 5,
        k: 6,
    };
    let (a, b) = (buf(24), buf(30));
    assert!(is_size(dev.gemm(
        g,
        1.0,
        &a,
        0,
        &b,
        0,
        0.0,
        &mut buf(19),
        0
    )));
    assert!(is_size(dev.gemm(
        g,
        1.0,
        &a,
        1,
        &b,
        0,
        0.0,
        &mut buf(20),
        0
    )));
    assert!(is_size(dev.relu(&buf(10), &mut buf(9), 10)));
    assert!(is_size(dev.add_row_bias(&mut buf(12), 3, 4, &buf(4), 1)));
    let cg = ConvGeom {
        c_in: 3,
        h: 5,
        w: 5,
        c_out: 2,
        k: 3,
        stride: 1,
        pad: 1,
    };
    let x = buf(2 * cg.in_size());
    let w = buf(cg.weight_size());
    assert!(is_size(dev.conv2d(
        &x,
        2,
        &cg,
        &w,
        0,
        &mut buf(2 * cg.out_size() - 1)
    )));
    assert!(is_size(dev.conv2d_backward(
        &x,
        2,
        &cg,
        &w,
        0,
        &buf(2 * cg.out_size()),
        None,
        &mut buf(cg.weight_size()),
        1
    )));
    let s = BnShape { n: 2, c: 3, hw: 4 };
    let (mut rm, mut rv, mut sm) = (buf(3), buf(3), buf(3));
    let mut si = buf(2);
    let st = BnState {
        running_mean: &mut rm,
        running_var: &mut rv,
        save_mean: &mut sm,
        save_invstd: &mut si,
    };
    let mode = BnMode::Train {
        update_running: true,
    };
    let r = dev.batch_norm(
        &buf(24),
        &mut buf(24),
        s,
        &buf(6),
        0,
        3,
        st,
        mode,
        0.1,
        1e-5,
    );
    assert!(is_size(r));
    assert!(is_size(dev.max_pool2d(&x, 2, &cg, &mut buf(10))));
    // A window larger than the padded image is refused, not a panic.
    let big = ConvGeom { k: 9, ..cg };
    assert!(dev.max_pool2d(&x, 2, &big, &mut buf(1000)).is_err());
    // Empty ops succeed without touching anything.
    let mut y = buf(3);
    dev.relu(&buf(0), &mut y, 0).unwrap();
    let g0 = GemmShape { m: 0, ..g };
    dev.gemm(g0, 1.0, &buf(0), 0, &b, 0, 0.0, &mut buf(0), 0)
        .unwrap();
    dev.scale(&mut buf(0), 2.0).unwrap();
    dev.conv2d(&buf(0), 0, &cg, &w, 0, &mut buf(0)).unwrap();
}

#[cfg(feature = "opencl")]
#[test]
fn wrong_sizes_are_errors_and_empty_ops_do_nothing() {
    if let Some(dev) = device("wrong_sizes_are_errors_and_empty_ops_do_nothing") {
        wrong_sizes_are_errors_and_empty_ops_do_nothing_on(dev);
    }
}

// ------------------------------------------------------------------------------------------
// CUDA

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
fn cuda_matches_the_cpu_backend() {
    let dev = match ire_backend_cuda::from_env() {
        Ok(d) => d,
        Err(e) => {
            assert!(
                !required("cuda"),
                "IRE_REQUIRE names cuda but no GPU is usable: {e}"
            );
            println!("skipped cuda_matches_the_cpu_backend: {e}");
            return;
        }
    };
    // Not the bit-for-bit GEMM case: CUDA's GEMM may go to cuBLAS, which is not bit-identical.
    gemm_matches_the_cpu_backend_on(&dev);
    bias_ops_match_the_cpu_backend_on(&dev);
    convolutions_match_the_cpu_backend_on(&dev);
    elementwise_ops_match_the_cpu_backend_on(&dev);
    batch_norm_matches_the_cpu_backend_on(&dev);
    synced_batch_norm_matches_the_cpu_backend_on(&dev);
    pooling_matches_the_cpu_backend_on(&dev);
    wrong_sizes_are_errors_and_empty_ops_do_nothing_on(&dev);
}

//! Every layer's and model's hand-written backward against central finite differences, in f64
//! on the reference backend; and the CPU backend's ops against the reference's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cpu::CpuBackend;
use ire_core::{Backend, Reference};
use ire_models::models::{Model, ModelSpec, ResNetConfig};
use ire_models::nn::layers::{BatchNorm2d, Conv2d, Layout, Linear};
use ire_models::nn::{BnMode, BnShape, ConvGeom, ConvNetOps, LossOps};
use ire_models::rng::Rng;

const R: Reference = Reference;
const H: f64 = 1e-6;

fn randn(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

/// Compares `analytic[i]` with `(f(x + h e_i) − f(x − h e_i)) / 2h` for the given indices.
fn fd_check(
    what: &str,
    x: &[f64],
    analytic: &[f64],
    idx: &[usize],
    mut f: impl FnMut(&[f64]) -> f64,
) {
    let mut xp = x.to_vec();
    for &i in idx {
        let orig = xp[i];
        xp[i] = orig + H;
        let fp = f(&xp);
        xp[i] = orig - H;
        let fm = f(&xp);
        xp[i] = orig;
        let num = (fp - fm) / (2.0 * H);
        let err = (num - analytic[i]).abs() / num.abs().max(analytic[i].abs()).max(1e-3);
        assert!(
            err < 2e-5,
            "{what}[{i}]: numeric {num}, analytic {}, rel err {err}",
            analytic[i]
        );
    }
}

fn sample(n: usize, k: usize, rng: &mut Rng) -> Vec<usize> {
    if n <= k {
        (0..n).collect()
    } else {
        (0..k).map(|_| rng.below(n as u64) as usize).collect()
    }
}

/// L = Σ w ⊙ y for a fixed random w: dL/dy = w.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn linear_layer() {
    let mut rng = Rng::new(1);
    let mut layout = Layout::default();
    let lin = Linear::new(&mut layout, "fc", 5, 3, true);
    let (n, p0, x0) = (4, layout.init::<f64>(&mut rng), randn(&mut rng, 20));
    let w = randn(&mut rng, n * 3);
    let fwd = |p: &[f64], x: &[f64]| {
        let mut y = R.alloc::<f64>(n * 3).unwrap();
        lin.forward(
            &R,
            &R.alloc_from(p).unwrap(),
            &R.alloc_from(x).unwrap(),
            n,
            &mut y,
        )
        .unwrap();
        dot(&y.0, &w)
    };
    let mut g = R.alloc::<f64>(p0.len()).unwrap();
    let mut dx = R.alloc::<f64>(20).unwrap();
    lin.backward(
        &R,
        &R.alloc_from(&p0).unwrap(),
        &mut g,
        &R.alloc_from(&x0).unwrap(),
        &R.alloc_from(&w).unwrap(),
        n,
        Some(&mut dx),
    )
    .unwrap();
    fd_check(
        "linear dθ",
        &p0,
        &g.0,
        &(0..p0.len()).collect::<Vec<_>>(),
        |p| fwd(p, &x0),
    );
    fd_check("linear dx", &x0, &dx.0, &(0..20).collect::<Vec<_>>(), |x| {
        fwd(&p0, x)
    });
}

#[test]
fn conv_layer_strided_and_padded() {
    let mut rng = Rng::new(2);
    for (k, stride, pad) in [(3, 1, 1), (3, 2, 1), (1, 2, 0), (2, 1, 0)] {
        let mut layout = Layout::default();
        let conv = Conv2d::new(&mut layout, "c", 2, 3, k, stride, pad, (5, 5));
        let n = 2;
        let (p0, x0) = (layout.init::<f64>(&mut rng), randn(&mut rng, n * 50));
        let out = n * conv.geom.out_size();
        let w = randn(&mut rng, out);
        let fwd = |p: &[f64], x: &[f64]| {
            let mut y = R.alloc::<f64>(out).unwrap();
            conv.forward(
                &R,
                &R.alloc_from(p).unwrap(),
                &R.alloc_from(x).unwrap(),
                n,
                &mut y,
            )
            .unwrap();
            dot(&y.0, &w)
        };
        let mut g = R.alloc::<f64>(p0.len()).unwrap();
        let mut dx = R.alloc::<f64>(x0.len()).unwrap();
        conv.backward(
            &R,
            &R.alloc_from(&p0).unwrap(),
            &mut g,
            &R.alloc_from(&x0).unwrap(),
            &R.alloc_from(&w).unwrap(),
            n,
            Some(&mut dx),
        )
        .unwrap();
        fd_check(
            "conv dθ",
            &p0,
            &g.0,
            &(0..p0.len()).collect::<Vec<_>>(),
            |p| fwd(p, &x0),
        );
        fd_check(
            "conv dx",
            &x0,
            &dx.0,
            &(0..x0.len()).collect::<Vec<_>>(),
            |x| fwd(&p0, x),
        );
    }
}

#[test]
fn batch_norm_layer() {
    let mut rng = Rng::new(3);
    let mut layout = Layout::default();
    let mut bn = BatchNorm2d::<Reference, f64>::new(&R, &mut layout, "bn", 3, 4, 1.0).unwrap();
    let n = 5;
    let mut p0 = layout.init::<f64>(&mut rng);
    for v in p0.iter_mut() {
        *v += 0.3 * rng.normal(); // non-trivial γ and β
    }
    let x0 = randn(&mut rng, n * 12);
    let w = randn(&mut rng, n * 12);
    let mut fwd = |p: &[f64], x: &[f64]| {
        let mut y = R.alloc::<f64>(n * 12).unwrap();
        bn.forward(
            &R,
            &R.alloc_from(p).unwrap(),
            &R.alloc_from(x).unwrap(),
            n,
            &mut y,
            BnMode::Train {
                update_running: false,
            },
        )
        .unwrap();
        dot(&y.0, &w)
    };
    fwd(&p0, &x0);
    let mut bn2 =
        BatchNorm2d::<Reference, f64>::new(&R, &mut Layout::default(), "bn", 3, 4, 1.0).unwrap();
    let mut y = R.alloc::<f64>(n * 12).unwrap();
    bn2.forward(
        &R,
        &R.alloc_from(&p0).unwrap(),
        &R.alloc_from(&x0).unwrap(),
        n,
        &mut y,
        BnMode::Train {
            update_running: true,
        },
    )
    .unwrap();
    let mut g = R.alloc::<f64>(p0.len()).unwrap();
    let mut dx = R.alloc::<f64>(x0.len()).unwrap();
    bn2.backward(
        &R,
        &R.alloc_from(&p0).unwrap(),
        &mut g,
        &R.alloc_from(&x0).unwrap(),
        &R.alloc_from(&w).unwrap(),
        n,
        &mut dx,
    )
    .unwrap();
    fd_check(
        "bn dθ",
        &p0,
        &g.0,
        &(0..p0.len()).collect::<Vec<_>>(),
        |p| fwd(p, &x0),
    );
    fd_check(
        "bn dx",
        &x0,
        &dx.0,
        &(0..x0.len()).collect::<Vec<_>>(),
        |x| fwd(&p0, x),
    );
    // Running statistics: momentum 0.1 from (0, 1) towards the batch mean / unbiased variance.
    let xs: Vec<f64> = (0..n)
        .flat_map(|i| x0[i * 12..i * 12 + 4].to_vec())
        .collect();
    let mean = xs.iter().sum::<f64>() / 20.0;
    let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 19.0;
    assert!((bn2.running_mean.0[0] - 0.1 * mean).abs() < 1e-14);
    assert!((bn2.running_var.0[0] - (0.9 + 0.1 * var)).abs() < 1e-14);
    // update_running: false leaves them alone.
    assert_eq!(bn.running_mean.0, [0.0; 3]);
    assert_eq!(bn.running_var.0, [1.0; 3]);
}

#[test]
fn activations_pooling_dropout() {
    let mut rng = Rng::new(4);
    let len = 2 * 3 * 4 * 4;
    let x0 = randn(&mut rng, len);
    let w = randn(&mut rng, len);
    // GELU.
    let f = |x: &[f64]| {
        let mut y = R.alloc::<f64>(len).unwrap();
        R.gelu(&R.alloc_from(x).unwrap(), &mut y, len).unwrap();
        dot(&y.0, &w)
    };
    let mut dx = R.alloc::<f64>(len).unwrap();
    R.gelu_backward(
        &R.alloc_from(&x0).unwrap(),
        &R.alloc_from(&w).unwrap(),
        &mut dx,
        len,
    )
    .unwrap();
    fd_check("gelu", &x0, &dx.0, &(0..len).collect::<Vec<_>>(), f);
    // ReLU (away from the kink).
    let xr: Vec<f64> = x0
        .iter()
        .map(|v| if v.abs() < 1e-3 { 0.5 } else { *v })
        .collect();
    let f = |x: &[f64]| {
        let mut y = R.alloc::<f64>(len).unwrap();
        R.relu(&R.alloc_from(x).unwrap(), &mut y, len).unwrap();
        dot(&y.0, &w)
    };
    let mut y = R.alloc::<f64>(len).unwrap();
    R.relu(&R.alloc_from(&xr).unwrap(), &mut y, len).unwrap();
    R.relu_backward(&y, &R.alloc_from(&w).unwrap(), &mut dx, len)
        .unwrap();
    fd_check("relu", &xr, &dx.0, &(0..len).collect::<Vec<_>>(), f);
    // Max pooling 2×2 stride 2, and 3×3 stride 1 pad 1.
    for g in [
        ConvGeom {
            c_in: 3,
            h: 4,
            w: 4,
            c_out: 3,
            k: 2,
            stride: 2,
            pad: 0,
        },
        ConvGeom {
            c_in: 3,
            h: 4,
            w: 4,
            c_out: 3,
            k: 3,
            stride: 1,
            pad: 1,
        },
    ] {
        let out = 2 * 3 * g.oh() * g.ow();
        let wo = randn(&mut rng, out);
        let f = |x: &[f64]| {
            let mut y = R.alloc::<f64>(out).unwrap();
            R.max_pool2d(&R.alloc_from(x).unwrap(), 2, &g, &mut y)
                .unwrap();
            dot(&y.0, &wo)
        };
        R.max_pool2d_backward(
            &R.alloc_from(&x0).unwrap(),
            2,
            &g,
            &R.alloc_from(&wo).unwrap(),
            &mut dx,
        )
        .unwrap();
        fd_check("max_pool2d", &x0, &dx.0, &(0..len).collect::<Vec<_>>(), f);
    }
    // Global average pooling.
    let s = BnShape { n: 2, c: 3, hw: 16 };
    let wo = randn(&mut rng, 6);
    let f = |x: &[f64]| {
        let mut y = R.alloc::<f64>(6).unwrap();
        R.global_avg_pool(&R.alloc_from(x).unwrap(), &mut y, s)
            .unwrap();
        dot(&y.0, &wo)
    };
    R.global_avg_pool_backward(&R.alloc_from(&wo).unwrap(), &mut dx, s)
        .unwrap();
    fd_check(
        "global_avg_pool",
        &x0,
        &dx.0,
        &(0..len).collect::<Vec<_>>(),
        f,
    );
    // Dropout: a fixed mask from the seed; about p of the values zeroed, the rest scaled.
    let f = |x: &[f64]| {
        let mut y = R.alloc::<f64>(len).unwrap();
        R.dropout(&R.alloc_from(x).unwrap(), &mut y, len, 0.25, 99)
            .unwrap();
        dot(&y.0, &w)
    };
    R.dropout_backward(&R.alloc_from(&w).unwrap(), &mut dx, len, 0.25, 99)
        .unwrap();
    fd_check("dropout", &x0, &dx.0, &(0..len).collect::<Vec<_>>(), f);
    let zeros = dx.0.iter().filter(|v| **v == 0.0).count();
    assert!(
        zeros > 10 && zeros < 45,
        "{zeros} of 96 dropped at p = 0.25"
    );
}

#[test]
fn softmax_xent_gradient() {
    let mut rng = Rng::new(5);
    let (n, c) = (3, 4);
    let z0 = randn(&mut rng, n * c);
    let labels = R.alloc_from(&[1.0, 3.0, 0.0]).unwrap();
    let f = |z: &[f64]| {
        let mut d = R.alloc::<f64>(n * c).unwrap();
        R.softmax_xent(&R.alloc_from(z).unwrap(), &labels, n, c, 0.1, 1.0, &mut d)
            .unwrap()
            .0
    };
    let mut d = R.alloc::<f64>(n * c).unwrap();
    R.softmax_xent(&R.alloc_from(&z0).unwrap(), &labels, n, c, 0.1, 1.0, &mut d)
        .unwrap();
    fd_check(
        "softmax_xent",
        &z0,
        &d.0,
        &(0..n * c).collect::<Vec<_>>(),
        f,
    );
    // Bad labels and non-finite logits are errors.
    let bad = R.alloc_from(&[1.0, 4.0, 0.0]).unwrap();
    assert!(
        R.softmax_xent(&R.alloc_from(&z0).unwrap(), &bad, n, c, 0.0, 1.0, &mut d)
            .is_err()
    );
    let mut zn = z0.clone();
    zn[2] = f64::NAN;
    assert!(
        R.softmax_xent(&R.alloc_from(&zn).unwrap(), &labels, n, c, 0.0, 1.0, &mut d)
            .is_err()
    );
}

fn model_check(spec: ModelSpec, input: (usize, usize, usize), classes: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut m: Box<dyn Model<Reference, f64>> = spec.build(&R, input, classes).unwrap();
    let n = 3;
    let mut p0 = m.layout().init::<f64>(&mut rng);
    // Perturb norms away from γ = 1, β = 0 so their gradients are generic.
    for v in p0.iter_mut() {
        *v += 0.05 * rng.normal();
    }
    let x = R
        .alloc_from(&randn(&mut rng, n * input.0 * input.1 * input.2))
        .unwrap();
    let labels: Vec<f64> = (0..n).map(|i| (i % classes) as f64).collect();
    let labels = R.alloc_from(&labels).unwrap();
    let mode = BnMode::Train {
        update_running: false,
    };
    let loss = |m: &mut Box<dyn Model<Reference, f64>>, p: &[f64]| -> (f64, Vec<f64>) {
        m.forward(&R, &R.alloc_from(p).unwrap(), &x, n, mode)
            .unwrap();
        let mut d = R.alloc::<f64>(n * classes).unwrap();
        let (l, _) = R
            .softmax_xent(m.logits(), &labels, n, classes, 0.0, 1.0, &mut d)
            .unwrap();
        (l, d.0)
    };
    let (_, dl) = loss(&mut m, &p0);
    let mut g = R.alloc::<f64>(p0.len()).unwrap();
    m.backward(
        &R,
        &R.alloc_from(&p0).unwrap(),
        &mut g,
        &x,
        &R.alloc_from(&dl).unwrap(),
        n,
    )
    .unwrap();
    // Every tensor's first and last element, plus random coordinates.
    let mut idx: Vec<usize> = m
        .layout()
        .slots
        .iter()
        .flat_map(|s| [s.off, s.off + s.len() - 1])
        .collect();
    idx.extend(sample(p0.len(), 40, &mut rng));
    let name = m.name().to_string();
    fd_check(&name, &p0, &g.0, &idx, |p| loss(&mut m, p).0);
}

#[test]
fn mlp_gradients() {
    model_check(ModelSpec::Mlp(vec![7, 5]), (2, 3, 3), 4, 10);
}

#[test]
fn resnet_gradients() {
    // ResNet-8 of width 4 on 3×8×8: post-activation blocks, projection shortcuts in stages 2, 3.
    model_check(
        ModelSpec::ResNet(ResNetConfig::resnet(8, 4)),
        (3, 8, 8),
        5,
        11,
    );
}

#[test]
fn wrn_gradients() {
    // WRN-10-1 on 3×8×8: pre-activation blocks, a projection in every stage.
    model_check(
        ModelSpec::ResNet(ResNetConfig::wrn(10, 1)),
        (3, 8, 8),
        5,
        12,
    );
}

#[test]
fn parameter_counts_of_the_presets() {
    let count = |s: &str, classes: usize| -> usize {
        let spec: ModelSpec = s.parse().unwrap();
        let m: Box<dyn Model<Reference, f32>> = spec.build(&R, (3, 32, 32), classes).unwrap();
        m.layout().len()
    };
    // Known figures: ResNet-20 0.27M, ResNet-56 0.85M (He et al. with 1×1 projection
    // shortcuts: 0.86M), WRN-16-8 11.0M, WRN-28-10 36.5M (Zagoruyko & Komodakis).
    let r20 = count("resnet20", 10);
    let r56 = count("resnet56", 10);
    let w168 = count("wrn-16-8", 10);
    let w2810 = count("wrn-28-10", 10);
    println!("resnet20 {r20}, resnet56 {r56}, wrn-16-8 {w168}, wrn-28-10 {w2810}");
    assert!((265_000..=280_000).contains(&r20), "{r20}");
    assert!((850_000..=870_000).contains(&r56), "{r56}");
    assert!((10_900_000..=11_100_000).contains(&w168), "{w168}");
    assert!((36_400_000..=36_600_000).contains(&w2810), "{w2810}");
    assert_eq!(
        count("mlp", 10),
        3072 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10
    );
}

#[test]
fn cpu_backend_matches_reference() {
    // Same model, same f32 inputs: conv/GEMM sums in another order (blocked SIMD GEMM), so
    // logits and gradients agree to a relative 1e-4 of their scale, not bit for bit.
    let cpu = CpuBackend::new();
    let spec = ModelSpec::ResNet(ResNetConfig::resnet(8, 8));
    let mut rng = Rng::new(3);
    let mut mr: Box<dyn Model<Reference, f32>> = spec.build(&R, (3, 16, 16), 10).unwrap();
    let mut mc: Box<dyn Model<CpuBackend, f32>> = spec.build(&cpu, (3, 16, 16), 10).unwrap();
    let p: Vec<f32> = mr.layout().init(&mut rng);
    let n = 6;
    let x: Vec<f32> = (0..n * 768).map(|_| rng.normal() as f32).collect();
    let labels: Vec<f32> = (0..n).map(|i| (i % 10) as f32).collect();
    let mode = BnMode::Train {
        update_running: true,
    };
    mr.forward(
        &R,
        &R.alloc_from(&p).unwrap(),
        &R.alloc_from(&x).unwrap(),
        n,
        mode,
    )
    .unwrap();
    mc.forward(
        &cpu,
        &cpu.alloc_from(&p).unwrap(),
        &cpu.alloc_from(&x).unwrap(),
        n,
        mode,
    )
    .unwrap();
    let (lr, lc) = (
        R.to_vec(mr.logits()).unwrap(),
        cpu.to_vec(mc.logits()).unwrap(),
    );
    let scale = lr.iter().fold(0f32, |a, v| a.max(v.abs()));
    for (a, b) in lr.iter().zip(&lc) {
        assert!((a - b).abs() <= 1e-4 * scale, "{a} vs {b}");
    }
    let mut dr = R.alloc::<f32>(n * 10).unwrap();
    let mut dc = cpu.alloc::<f32>(n * 10).unwrap();
    R.softmax_xent(
        mr.logits(),
        &R.alloc_from(&labels).unwrap(),
        n,
        10,
        0.0,
        1.0 / n as f64,
        &mut dr,
    )
    .unwrap();
    cpu.softmax_xent(
        mc.logits(),
        &cpu.alloc_from(&labels).unwrap(),
        n,
        10,
        0.0,
        1.0 / n as f64,
        &mut dc,
    )
    .unwrap();
    let mut gr = R.alloc::<f32>(p.len()).unwrap();
    let mut gc = cpu.alloc::<f32>(p.len()).unwrap();
    mr.backward(
        &R,
        &R.alloc_from(&p).unwrap(),
        &mut gr,
        &R.alloc_from(&x).unwrap(),
        &dr,
        n,
    )
    .unwrap();
    mc.backward(
        &cpu,
        &cpu.alloc_from(&p).unwrap(),
        &mut gc,
        &cpu.alloc_from(&x).unwrap(),
        &dc,
        n,
    )
    .unwrap();
    let (gr, gc) = (gr.0, cpu.to_vec(&gc).unwrap());
    let gscale = gr.iter().fold(0f32, |a, v| a.max(v.abs()));
    for (i, (a, b)) in gr.iter().zip(&gc).enumerate() {
        assert!(
            (a - b).abs() <= 2e-4 * gscale,
            "grad {i}: {a} vs {b} (scale {gscale})"
        );
    }
}

//! The IRE estimator against independent computations, on every backend of the build:
//!
//! 1. Labels drawn by `NnOps::sample_labels` (the host's `nn::host::sample_row` on the reference
//!    and CPU backends, a kernel on OpenCL and CUDA) follow the softmax of their logits: a χ²
//!    goodness-of-fit test per logit row, on rows from near-uniform to very peaked and with
//!    logits of magnitude 1e4–5e4, in `f32` and `f64`. Fixed seeds; a row FAILS at a
//!    significance level of [`ALPHA`] = 1e-3 (the χ² p-value of the classes with an expected
//!    count of at least 5, and the Poisson tail probability of the count in the pooled rest).
//! 2. The trainer's estimator gradient `ĝ` equals the cross-entropy gradient at labels sampled
//!    from the model's softmax with the pass's uniforms, both computed here (softmax, inverse
//!    CDF and `dlogits` in `f64` in this file; the model's own backward), and differs from the
//!    gradient at the true labels.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use ire_backend_cpu::CpuBackend;
use ire_core::{DType, Reference, Scalar};
use ire_models::models::ModelSpec;
use ire_models::nn::{BnMode, NnOps, host};
use ire_models::rng::Rng;
use ire_models::text::{CharTokenizer, TokenBatches};
use ire_models::train::source::{Input, Source};
use ire_models::train::{DatasetKind, OptimizerKind, TrainConfig, Trainer};

/// A row fails the goodness-of-fit test when a p-value is below this.
const ALPHA: f64 = 1e-3;

// ---------------------------------------------------------------------------------------------
// χ² and Poisson tails, from the regularized incomplete gamma function
// ---------------------------------------------------------------------------------------------

/// `ln Γ(a)` for `a > 0`: Stirling's series at `a + 20` or beyond, shifted down by
/// `Γ(a) = Γ(a + n) / (a (a + 1) … (a + n − 1))`; about 1e-15 relative.
fn ln_gamma(a: f64) -> f64 {
    let mut shift = 0.0;
    let mut x = a;
    while x < 20.0 {
        shift += x.ln();
        x += 1.0;
    }
    let (x2, ln2pi) = (x * x, (2.0 * std::f64::consts::PI).ln());
    let series = 1.0 / (12.0 * x) - 1.0 / (360.0 * x * x2) + 1.0 / (1260.0 * x * x2 * x2)
        - 1.0 / (1680.0 * x * x2 * x2 * x2);
    (x - 0.5) * x.ln() - x + 0.5 * ln2pi + series - shift
}

/// The regularized upper incomplete gamma function `Q(a, x) = Γ(a, x) / Γ(a)`: the power
/// series of `P = 1 − Q` below `x = a + 1`, the continued fraction of `Q` (evaluated by the
/// modified Lentz method) above.
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let log_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        // P(a, x) = e^{−x} x^a / Γ(a + 1) · Σ_n x^n / ((a + 1) … (a + n)).
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-17 {
                break;
            }
        }
        1.0 - (log_prefix + sum.ln()).exp()
    } else {
        // Q(a, x) = e^{−x} x^a / Γ(a) · 1 / (x + 1 − a − 1·(1 − a) / (x + 3 − a − 2·(2 − a) / …)).
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (log_prefix + h.ln()).exp()
    }
}

/// `P(χ²_df ≥ x)`.
fn chi2_sf(x: f64, df: usize) -> f64 {
    gamma_q(df as f64 / 2.0, x / 2.0)
}

/// `P(X ≥ k)` for `X ~ Poisson(λ)`: the regularized LOWER gamma function `P(k, λ)`.
fn poisson_at_least(k: u64, lambda: f64) -> f64 {
    if k == 0 {
        1.0
    } else {
        1.0 - gamma_q(k as f64, lambda)
    }
}

/// The outcome of [`fit`].
#[derive(Debug)]
struct Fit {
    /// χ² over the classes with an expected count of at least 5 (and the pooled rest when its
    /// expected count is at least 5), its degrees of freedom and p-value.
    chi2: f64,
    df: usize,
    p: f64,
    /// The pooled classes with expected counts below 5 (when together still below 5):
    /// expected and observed count, and the probability of at least that many.
    rest: (f64, u64),
    p_rest: f64,
}

impl Fit {
    fn passes(&self) -> bool {
        self.p >= ALPHA && self.p_rest >= ALPHA
    }
}

/// Goodness of fit of class `counts` to the class probabilities `probs`.
fn fit(counts: &[u64], probs: &[f64]) -> Fit {
    let n: u64 = counts.iter().sum();
    let (mut bins, mut rest) = (Vec::new(), (0.0f64, 0u64));
    for (&o, &p) in counts.iter().zip(probs) {
        let e = p * n as f64;
        if e >= 5.0 {
            bins.push((e, o));
        } else {
            rest.0 += e;
            rest.1 += o;
        }
    }
    let mut p_rest = 1.0;
    if rest.0 >= 5.0 {
        bins.push(rest);
        rest = (0.0, 0);
    } else {
        p_rest = poisson_at_least(rest.1, rest.0);
    }
    let chi2: f64 = bins
        .iter()
        .map(|&(e, o)| (o as f64 - e) * (o as f64 - e) / e)
        .sum();
    let df = bins.len().saturating_sub(1);
    let p = if df == 0 { 1.0 } else { chi2_sf(chi2, df) };
    Fit {
        chi2,
        df,
        p,
        rest,
        p_rest,
    }
}

/// `softmax(z)` in `f64`, written here (max-shifted exponentials over their sum).
fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// The class whose interval of the cumulative distribution holds `u` (the last class when
/// rounding leaves `u` above the total).
fn inverse_cdf(p: &[f64], u: f64) -> usize {
    let mut acc = 0.0;
    for (j, pj) in p.iter().enumerate() {
        acc += pj;
        if u < acc {
            return j;
        }
    }
    p.len() - 1
}

#[test]
fn the_tail_functions_match_known_values() {
    // Closed forms: Q(1, y) = e^{−y}; Q(2, y) = e^{−y} (1 + y); Q(½, y) = erfc(√y), with
    // erfc(1) = 0.157299207050285 and erfc(2) = 0.004677734981047266.
    for y in [0.1, 0.9, 2.0, 7.5, 40.0] {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.max(1e-300);
        assert!(close(gamma_q(1.0, y), (-y).exp()), "Q(1, {y})");
        assert!(close(gamma_q(2.0, y), (-y).exp() * (1.0 + y)), "Q(2, {y})");
    }
    assert!((gamma_q(0.5, 1.0) - 0.157_299_207_050_285).abs() < 1e-13);
    assert!((gamma_q(0.5, 4.0) - 0.004_677_734_981_047_266).abs() < 1e-15);
    // The tables' 0.1 % points of χ²: df 1: 10.828, df 9: 27.877, df 99: 148.23.
    for (x, df) in [(10.828, 1), (27.877, 9), (148.23, 99)] {
        let p = chi2_sf(x, df);
        assert!((p - 1e-3).abs() < 2e-5, "χ² df {df} at {x}: p = {p}");
    }
    // ln Γ(n) = ln (n − 1)!.
    assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
    assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
    // Poisson: P(X ≥ 1) = 1 − e^{−λ}; P(X ≥ 3 | λ = 2) = 1 − 5 e^{−2}.
    assert!((poisson_at_least(1, 0.3) - (1.0 - (-0.3f64).exp())).abs() < 1e-14);
    assert!((poisson_at_least(3, 2.0) - (1.0 - 5.0 * (-2.0f64).exp())).abs() < 1e-14);
}

// ---------------------------------------------------------------------------------------------
// Sampled labels follow the softmax
// ---------------------------------------------------------------------------------------------

/// Logit rows (name, logits, draws): moderate, peaked with a sampled tail, so peaked that no
/// other class may ever appear, near-uniform over 97 classes, huge magnitudes of both signs,
/// two tied classes, 1000 classes (more than a device work-group), and a single class.
fn rows() -> Vec<(&'static str, Vec<f64>, usize)> {
    let mut rng = Rng::new(17);
    vec![
        (
            "moderate",
            vec![2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0, 0.1, 1.5],
            20_000,
        ),
        (
            "peaked, tail sampled",
            [9.0].into_iter().chain([0.0; 9]).collect(),
            20_000,
        ),
        (
            "very peaked",
            [30.0].into_iter().chain([0.0; 9]).collect(),
            20_000,
        ),
        (
            "near-uniform",
            (0..97)
                .map(|i| 1e-3 * ((i * 37 % 11) as f64 - 5.0))
                .collect(),
            20_000,
        ),
        (
            "huge positive",
            vec![1e4, 9999.0, 9997.5, -1e4, -3e4, 9999.5, 0.0, 9990.0],
            20_000,
        ),
        (
            "huge negative",
            vec![-5e4, -49_999.0, -49_998.0, -49_999.75, -50_010.0],
            20_000,
        ),
        ("two tied", vec![4.0, 4.0, -20.0], 20_000),
        (
            "1000 classes",
            (0..1000).map(|_| 3.0 * rng.normal()).collect(),
            5_000,
        ),
        ("one class", vec![3.0], 100),
    ]
}

/// Counts of the labels `b` draws for `draws` copies of the row `z` in dtype `T`.
fn draw<B: NnOps, T: Scalar>(b: &B, z: &[f64], draws: usize, seed: u64) -> Vec<u64> {
    let c = z.len();
    let row: Vec<T> = z.iter().map(|&v| T::of(v)).collect();
    let logits: Vec<T> = row.iter().cycle().take(c * draws).copied().collect();
    let mut rng = Rng::new(seed);
    let u: Vec<T> = (0..draws).map(|_| T::of(rng.uniform())).collect();
    let (zb, ub) = (b.alloc_from(&logits).unwrap(), b.alloc_from(&u).unwrap());
    let mut lb = b.alloc::<T>(draws).unwrap();
    b.sample_labels(&zb, draws, c, &ub, &mut lb).unwrap();
    let mut counts = vec![0u64; c];
    for l in b.to_vec(&lb).unwrap() {
        let l = l.as_f64();
        assert!(
            l >= 0.0 && l < c as f64 && l.fract() == 0.0,
            "label {l} outside 0..{c}"
        );
        counts[l as usize] += 1;
    }
    counts
}

fn follows_the_softmax_t<B: NnOps, T: Scalar>(b: &B) {
    let ty = if T::DTYPE == DType::F64 { "f64" } else { "f32" };
    let mut failures = Vec::new();
    for (i, (name, z, draws)) in rows().into_iter().enumerate() {
        // The probabilities of the logits as stored in T.
        let stored: Vec<f64> = z.iter().map(|&v| T::of(v).as_f64()).collect();
        let counts = draw::<B, T>(b, &z, draws, 1000 + i as u64);
        let f = fit(&counts, &softmax(&stored));
        println!(
            "{} {ty} {name}: χ² {:.2} on {} df, p {:.3}; pooled rest expected {:.2e}, seen {} \
             (p {:.3})",
            b.name(),
            f.chi2,
            f.df,
            f.p,
            f.rest.0,
            f.rest.1,
            f.p_rest
        );
        if !f.passes() {
            failures.push(format!("{ty} {name}: {f:?}, counts {counts:?}"));
        }
    }
    assert!(failures.is_empty(), "{}: {failures:#?}", b.name());
}

fn sampled_labels_follow_the_softmax<B: NnOps>(b: &B) {
    follows_the_softmax_t::<B, f32>(b);
    if b.supports_dtype(DType::F64) {
        follows_the_softmax_t::<B, f64>(b);
    }
}

#[test]
fn sampled_labels_follow_the_softmax_on_the_reference_backend() {
    sampled_labels_follow_the_softmax(&Reference);
}

#[test]
fn sampled_labels_follow_the_softmax_on_the_cpu_backend() {
    sampled_labels_follow_the_softmax(&CpuBackend::new());
}

#[cfg(feature = "opencl")]
#[test]
fn sampled_labels_follow_the_softmax_on_opencl() {
    if let Some(b) = common::opencl("sampled_labels_follow_the_softmax_on_opencl") {
        sampled_labels_follow_the_softmax(&b);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn sampled_labels_follow_the_softmax_on_cuda() {
    if let Some(b) = common::cuda("sampled_labels_follow_the_softmax_on_cuda") {
        sampled_labels_follow_the_softmax(&b);
    }
}

/// The test above can fail: a sampler at temperature 2, one that shifts every label by a
/// class, and one that returns the most likely class are each rejected on the moderate row,
/// while `host::sample_row` itself passes.
#[test]
fn the_fit_test_rejects_wrong_samplers() {
    let (_, z, draws) = rows().swap_remove(0);
    let p = softmax(&z);
    let half: Vec<f64> = z.iter().map(|v| v / 2.0).collect();
    let mut rng = Rng::new(1000);
    let u: Vec<f64> = (0..draws).map(|_| rng.uniform()).collect();
    let counts = |f: &dyn Fn(f64) -> usize| {
        let mut c = vec![0u64; z.len()];
        for &u in &u {
            c[f(u)] += 1;
        }
        c
    };
    let right = fit(&counts(&|u| host::sample_row(&z, u)), &p);
    assert!(right.passes(), "{right:?}");
    let hot = fit(&counts(&|u| host::sample_row(&half, u)), &p);
    let shifted = fit(&counts(&|u| (host::sample_row(&z, u) + 1) % z.len()), &p);
    let argmax = fit(&counts(&|_| 0), &p);
    for (what, f) in [
        ("temperature 2", hot),
        ("shifted", shifted),
        ("argmax", argmax),
    ] {
        assert!(!f.passes(), "{what}: {f:?}");
    }
    // A class of the very peaked row that appears 3 times where 1e-8 are expected fails too.
    let (_, z, _) = rows().swap_remove(2);
    let mut c = vec![0u64; z.len()];
    c[0] = 19_997;
    c[4] = 3;
    assert!(!fit(&c, &softmax(&z)).passes());
}

// ---------------------------------------------------------------------------------------------
// ĝ is the gradient at the sampled labels
// ---------------------------------------------------------------------------------------------

/// `‖a − b‖₂ / ‖b‖₂`.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        d += (f64::from(*x) - f64::from(*y)).powi(2);
        n += f64::from(*y).powi(2);
    }
    (d / n.max(1e-300)).sqrt()
}

fn image_cfg() -> TrainConfig {
    let mut c = TrainConfig {
        model: "mlp-small".into(),
        dataset: DatasetKind::Digits,
        data: common::root().join("data/digits.csv.gz"),
        optimizer: OptimizerKind::SgdIre,
        lr: 0.1,
        steps: 10,
        batch_size: 48,
        train_limit: 480,
        test_limit: 48,
        seed: 5,
        ..TrainConfig::default()
    };
    c.opt.refresh_every = 1;
    c.opt.momentum = 0.9;
    c
}

const VOCAB_TEXT: &str = "abcdefghijkl";

/// A text source over generated tokens (the same for equal arguments).
fn text_source(ctx: usize, batch: usize) -> Source {
    let tok = CharTokenizer::fit(VOCAB_TEXT);
    let mut rng = Rng::new(23);
    let ids: Vec<u32> = (0..4000)
        .map(|_| rng.below(VOCAB_TEXT.len() as u64) as u32)
        .collect();
    Source::Text {
        train: TokenBatches::new(ids.clone(), ctx, batch, 0).unwrap(),
        val: TokenBatches::new(ids, ctx, batch, 0).unwrap(),
        tokenizer: Box::new(tok),
    }
}

fn text_cfg(ctx: usize, batch: usize) -> TrainConfig {
    let mut c = TrainConfig {
        model: "llama-tiny".into(),
        dataset: DatasetKind::Text,
        context: ctx,
        batch_size: batch,
        optimizer: OptimizerKind::Admire,
        lr: 3e-3,
        steps: 10,
        seed: 9,
        ..TrainConfig::default()
    };
    c.opt.refresh_every = 1;
    c
}

/// Steps a trainer (with a refresh every step) and checks, at each of `steps` steps, its `ĝ`
/// against the gradient computed here at the labels this file samples with the step's
/// uniforms; `source` makes a second copy of the trainer's data for the batches.
fn estimate_is_the_sampled_label_gradient<B: NnOps + 'static>(
    make: &dyn Fn() -> B,
    cfg: TrainConfig,
    source: &dyn Fn() -> Source,
    steps: u64,
) {
    let spec: ModelSpec = cfg.model.parse().unwrap();
    let b = &make();
    let mut data = source();
    let mut model = match data.input() {
        Input::Image { shape, classes } => spec.build::<B, f32>(b, shape, classes).unwrap(),
        Input::Tokens { vocab, context } => spec.build_lm::<B, f32>(b, vocab, context).unwrap(),
    };
    let mut t = Trainer::with_source(make(), cfg.clone(), source()).unwrap();
    let c = model.num_classes();
    for step in 0..steps {
        let theta = t.params_host().unwrap();
        t.train_step().unwrap();
        let g_hat = t.estimator_gradient_host().unwrap().unwrap();
        // The same batch and θ, through the model's forward here.
        let batch = data.train_batch(step);
        let rows = batch.n * model.rows_per_example();
        let (p, x) = (
            b.alloc_from(&theta).unwrap(),
            b.alloc_from(&batch.x).unwrap(),
        );
        model
            .forward(
                b,
                &p,
                &x,
                batch.n,
                BnMode::Train {
                    update_running: false,
                },
            )
            .unwrap();
        let logits = b.to_vec(model.logits()).unwrap();
        let u = t.estimator_uniforms(step, rows);
        let probs: Vec<Vec<f64>> = logits
            .chunks(c)
            .map(|r| softmax(&r.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()))
            .collect();
        let sampled: Vec<usize> = probs
            .iter()
            .zip(&u)
            .map(|(p, &u)| inverse_cdf(p, f64::from(u)))
            .collect();
        let truth: Vec<usize> = batch.y.iter().map(|&y| y as usize).collect();
        // The gradient of the mean cross-entropy at `labels`: dlogits = (softmax − onehot)/rows.
        let mut grad_at = |labels: &[usize]| -> Vec<f32> {
            let dl: Vec<f32> = probs
                .iter()
                .zip(labels)
                .flat_map(|(p, &l)| {
                    p.iter().enumerate().map(move |(j, &pj)| {
                        ((pj - f64::from(u8::from(j == l))) / rows as f64) as f32
                    })
                })
                .collect();
            let dl = b.alloc_from(&dl).unwrap();
            let mut g = b.alloc::<f32>(theta.len()).unwrap();
            model.backward(b, &p, &mut g, &x, &dl, batch.n).unwrap();
            b.to_vec(&g).unwrap()
        };
        let (g_sampled, g_true) = (grad_at(&sampled), grad_at(&truth));
        let differ = sampled.iter().zip(&truth).filter(|(a, b)| a != b).count();
        let (d_sampled, d_true) = (rel_l2(&g_hat, &g_sampled), rel_l2(&g_hat, &g_true));
        println!(
            "{} {} step {step}: {differ} of {rows} sampled labels differ from the true ones; \
             ĝ vs the sampled-label gradient {d_sampled:.1e}, vs the true-label one {d_true:.2}",
            b.name(),
            cfg.model
        );
        // The model starts near uniform over its classes: most draws are not the true label.
        assert!(2 * differ > rows, "{differ} of {rows}");
        // The same backward on the same backend: only dlogits differ, by rounding (softmax in
        // f64 here; the same f32 bits on the host backends, the device's f32 softmax on
        // OpenCL). Measured: 0 on the reference and CPU backends, at most 3.3e-7 on OpenCL
        // (PoCL); the bound is 6 times that.
        assert!(
            d_sampled <= 2e-6,
            "ĝ is not the sampled-label gradient: {d_sampled:e}"
        );
        assert!(
            d_true >= 0.3,
            "ĝ is close to the true-label gradient: {d_true}"
        );
    }
}

fn estimate_checks<B: NnOps + 'static>(make: &dyn Fn() -> B) {
    let cfg = image_cfg();
    let images = || {
        let (train, test) = cfg.load_data().unwrap();
        Source::images(&cfg, train, test)
    };
    estimate_is_the_sampled_label_gradient(make, cfg.clone(), &images, 3);
    let (ctx, batch) = (16, 4);
    estimate_is_the_sampled_label_gradient(
        make,
        text_cfg(ctx, batch),
        &|| text_source(ctx, batch),
        2,
    );
}

#[test]
fn estimate_is_the_sampled_label_gradient_on_the_reference_backend() {
    estimate_checks(&|| Reference);
}

#[test]
fn estimate_is_the_sampled_label_gradient_on_the_cpu_backend() {
    estimate_checks(&CpuBackend::new);
}

#[cfg(feature = "opencl")]
#[test]
fn estimate_is_the_sampled_label_gradient_on_opencl() {
    if let Some(b) = common::opencl("estimate_is_the_sampled_label_gradient_on_opencl") {
        estimate_checks(&|| b.clone());
    }
}

#[cfg(feature = "cuda")]
#[test]
fn estimate_is_the_sampled_label_gradient_on_cuda() {
    let test = "estimate_is_the_sampled_label_gradient_on_cuda";
    if common::cuda(test).is_some() {
        estimate_checks(&|| common::cuda(test).unwrap());
    }
}

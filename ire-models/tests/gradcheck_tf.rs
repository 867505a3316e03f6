//! The transformer ops' backward passes against central finite differences (f64, reference
//! backend).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_core::{Backend, Reference};
use ire_models::nn::{AttnShape, LossOps, NormKind, TransformerOps};
use ire_models::rng::Rng;

const R: Reference = Reference;
const H: f64 = 1e-6;

fn randn(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn fd_check(what: &str, x: &[f64], analytic: &[f64], mut f: impl FnMut(&[f64]) -> f64) {
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        let o = xp[i];
        xp[i] = o + H;
        let fp = f(&xp);
        xp[i] = o - H;
        let fm = f(&xp);
        xp[i] = o;
        let num = (fp - fm) / (2.0 * H);
        let err = (num - analytic[i]).abs() / num.abs().max(analytic[i].abs()).max(1e-3);
        assert!(
            err < 2e-5,
            "{what}[{i}]: numeric {num}, analytic {}, rel err {err}",
            analytic[i]
        );
    }
}

fn buf(v: &[f64]) -> ire_core::reference::HostBuffer<f64> {
    R.alloc_from(v).unwrap()
}

#[test]
fn layer_norm_and_rms_norm() {
    let mut rng = Rng::new(1);
    let (rows, d) = (3, 5);
    for (kind, with_beta) in [
        (NormKind::Layer, true),
        (NormKind::Layer, false),
        (NormKind::Rms, false),
    ] {
        let p0: Vec<f64> = (0..2 * d).map(|_| 1.0 + 0.3 * rng.normal()).collect();
        let x0 = randn(&mut rng, rows * d);
        let w = randn(&mut rng, rows * d);
        let b_off = with_beta.then_some(d);
        let fwd = |p: &[f64], x: &[f64]| {
            let mut y = R.alloc::<f64>(rows * d).unwrap();
            let (mut m, mut s) = (R.alloc::<f64>(rows).unwrap(), R.alloc::<f64>(rows).unwrap());
            R.norm_rows(
                kind,
                &buf(x),
                &mut y,
                rows,
                d,
                &buf(p),
                0,
                b_off,
                &mut m,
                &mut s,
                1e-5,
            )
            .unwrap();
            dot(&y.0, &w)
        };
        let mut y = R.alloc::<f64>(rows * d).unwrap();
        let (mut m, mut s) = (R.alloc::<f64>(rows).unwrap(), R.alloc::<f64>(rows).unwrap());
        R.norm_rows(
            kind,
            &buf(&x0),
            &mut y,
            rows,
            d,
            &buf(&p0),
            0,
            b_off,
            &mut m,
            &mut s,
            1e-5,
        )
        .unwrap();
        let mut dx = R.alloc::<f64>(rows * d).unwrap();
        let mut g = R.alloc::<f64>(2 * d).unwrap();
        R.norm_rows_backward(
            kind,
            &buf(&x0),
            &buf(&w),
            &mut dx,
            rows,
            d,
            &buf(&p0),
            0,
            &m,
            &s,
            &mut g,
            0,
            b_off,
        )
        .unwrap();
        fd_check(&format!("{kind:?} dx"), &x0, &dx.0, |x| fwd(&p0, x));
        let pg: Vec<f64> = g.0.clone();
        fd_check(&format!("{kind:?} dγβ"), &p0, &pg, |p| fwd(p, &x0));
    }
}

/// The blocked attention's backward (probabilities recomputed from the saved log-sum-exp)
/// against finite differences of its forward, with rotary embeddings in front as in Llama;
/// `t = 70` spans two key blocks, so the online softmax rescales. The forward itself is
/// checked against the naive formulas in `attention.rs`.
#[test]
fn attention_gradient() {
    let mut rng = Rng::new(2);
    for (causal, b, t, h, dh) in [
        (true, 2, 4, 2, 3),
        (false, 2, 4, 2, 3),
        (true, 1, 70, 1, 2),
        (false, 1, 70, 1, 2),
    ] {
        let s = AttnShape {
            b,
            t,
            h,
            dh,
            causal,
        };
        let q0 = randn(&mut rng, s.qkv_len());
        let w = randn(&mut rng, s.out_len());
        let f = |q: &[f64]| {
            let mut qb = buf(q);
            R.rope(&mut qb, s, 10000.0, false).unwrap();
            let mut l = R.alloc::<f64>(s.lse_len()).unwrap();
            let mut o = R.alloc::<f64>(s.out_len()).unwrap();
            R.attention(&qb, s, &mut l, &mut o).unwrap();
            dot(&o.0, &w)
        };
        let mut qb = buf(&q0);
        R.rope(&mut qb, s, 10000.0, false).unwrap();
        let mut lse = R.alloc::<f64>(s.lse_len()).unwrap();
        let mut out = R.alloc::<f64>(s.out_len()).unwrap();
        R.attention(&qb, s, &mut lse, &mut out).unwrap();
        let mut dq = R.alloc::<f64>(s.qkv_len()).unwrap();
        R.attention_backward(&qb, &out, &lse, &buf(&w), s, &mut dq)
            .unwrap();
        R.rope(&mut dq, s, 10000.0, true).unwrap();
        fd_check(&format!("attention+rope {s:?}"), &q0, &dq.0, f);
    }
}

#[test]
fn rope_is_a_rotation() {
    let mut rng = Rng::new(3);
    // RoPE is a rotation: inverse undoes it, norms are kept.
    let s = AttnShape {
        b: 1,
        t: 5,
        h: 2,
        dh: 4,
        causal: true,
    };
    let q0 = randn(&mut rng, s.qkv_len());
    let mut qb = buf(&q0);
    R.rope(&mut qb, s, 10000.0, false).unwrap();
    assert!((dot(&qb.0, &qb.0) - dot(&q0, &q0)).abs() < 1e-10);
    R.rope(&mut qb, s, 10000.0, true).unwrap();
    assert!(qb.0.iter().zip(&q0).all(|(a, b)| (a - b).abs() < 1e-12));
}

#[test]
fn swiglu_embedding_positions() {
    let mut rng = Rng::new(3);
    let (rows, f) = (3, 4);
    let x0 = randn(&mut rng, rows * 2 * f);
    let w = randn(&mut rng, rows * f);
    let sw = |x: &[f64]| {
        let mut y = R.alloc::<f64>(rows * f).unwrap();
        R.swiglu(&buf(x), &mut y, rows, f).unwrap();
        dot(&y.0, &w)
    };
    let mut dx = R.alloc::<f64>(rows * 2 * f).unwrap();
    R.swiglu_backward(&buf(&x0), &buf(&w), &mut dx, rows, f)
        .unwrap();
    fd_check("swiglu", &x0, &dx.0, sw);
    // Embedding: gradient w.r.t. the table; a repeated id accumulates.
    let (vocab, d) = (5, 3);
    let ids = buf(&[1.0, 4.0, 1.0, 0.0]);
    let t0 = randn(&mut rng, vocab * d);
    let w = randn(&mut rng, 4 * d);
    let emb = |t: &[f64]| {
        let mut y = R.alloc::<f64>(4 * d).unwrap();
        R.embedding(&ids, 4, &buf(t), 0, vocab, d, &mut y).unwrap();
        dot(&y.0, &w)
    };
    let mut g = R.alloc::<f64>(vocab * d).unwrap();
    R.embedding_backward(&ids, 4, &buf(&w), d, vocab, &mut g, 0)
        .unwrap();
    fd_check("embedding", &t0, &g.0, emb);
    let mut y = R.alloc::<f64>(4 * d).unwrap();
    assert!(
        R.embedding(&buf(&[5.0]), 1, &buf(&t0), 0, vocab, d, &mut y)
            .is_err(),
        "id out of range"
    );
    // Positions: b sequences share the t × d table.
    let (b, t) = (2, 3);
    let tab0 = randn(&mut rng, t * d);
    let x = randn(&mut rng, b * t * d);
    let w = randn(&mut rng, b * t * d);
    let pos = |tab: &[f64]| {
        let mut xb = buf(&x);
        R.add_positions(&mut xb, b, t, d, &buf(tab), 0).unwrap();
        dot(&xb.0, &w)
    };
    let mut g = R.alloc::<f64>(t * d).unwrap();
    R.add_positions_backward(&buf(&w), b, t, d, &mut g, 0)
        .unwrap();
    fd_check("positions", &tab0, &g.0, pos);
}

use ire_models::models::{Ffn, Model, Positional, Transformer, TransformerConfig};
use ire_models::nn::BnMode;

fn model_fd(
    mut m: Box<dyn Model<Reference, f64>>,
    x: Vec<f64>,
    n: usize,
    labels: Vec<f64>,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let mut p0 = m.layout().init::<f64>(&mut rng);
    for v in p0.iter_mut() {
        *v += 0.05 * rng.normal();
    }
    let rows = n * m.rows_per_example();
    let c = m.num_classes();
    let x = buf(&x);
    let labels = buf(&labels);
    let loss = |m: &mut Box<dyn Model<Reference, f64>>, p: &[f64]| -> (f64, Vec<f64>) {
        m.forward(
            &R,
            &buf(p),
            &x,
            n,
            BnMode::Train {
                update_running: false,
            },
        )
        .unwrap();
        let mut d = R.alloc::<f64>(rows * c).unwrap();
        let (l, _) = R
            .softmax_xent(m.logits(), &labels, rows, c, 0.0, 1.0, &mut d)
            .unwrap();
        (l, d.0)
    };
    let (_, dl) = loss(&mut m, &p0);
    let mut g = R.alloc::<f64>(p0.len()).unwrap();
    m.backward(&R, &buf(&p0), &mut g, &x, &buf(&dl), n).unwrap();
    let mut idx: Vec<usize> = m
        .layout()
        .slots
        .iter()
        .flat_map(|s| [s.off, s.off + s.len() - 1, s.off + s.len() / 2])
        .collect();
    idx.extend((0..40).map(|_| rng.below(p0.len() as u64) as usize));
    let mut xp = p0.clone();
    for &i in &idx {
        let o = xp[i];
        xp[i] = o + H;
        let fp = loss(&mut m, &xp).0;
        xp[i] = o - H;
        let fm = loss(&mut m, &xp).0;
        xp[i] = o;
        let num = (fp - fm) / (2.0 * H);
        let err = (num - g.0[i]).abs() / num.abs().max(g.0[i].abs()).max(1e-3);
        let name = m
            .layout()
            .slots
            .iter()
            .find(|s| i >= s.off && i < s.off + s.len())
            .map(|s| s.name.clone())
            .unwrap_or_default();
        assert!(
            err < 3e-5,
            "{} {name}[{i}]: numeric {num}, analytic {}, err {err}",
            m.name(),
            g.0[i]
        );
    }
}

#[test]
fn language_models_gradients() {
    let (vocab, ctx, n) = (11, 5, 2);
    let mut rng = Rng::new(9);
    let toks: Vec<f64> = (0..n * ctx)
        .map(|_| rng.below(vocab as u64) as f64)
        .collect();
    let tgts: Vec<f64> = (0..n * ctx)
        .map(|_| rng.below(vocab as u64) as f64)
        .collect();
    let base = TransformerConfig {
        vocab,
        d: 8,
        heads: 2,
        layers: 2,
        ffn: 12,
        ctx,
        act: Ffn::Relu,
        norm: NormKind::Layer,
        pre_norm: false,
        pos: Positional::Sinusoidal,
        bias: true,
        tie: false,
    };
    let configs = [
        ("paper post-LN", base),
        (
            "paper quirk",
            TransformerConfig {
                pos: Positional::SinusoidalBatchQuirk,
                ..base
            },
        ),
        ("llama", TransformerConfig::llama(vocab, 8, 2, 2, 12, ctx)),
        ("gpt tied", TransformerConfig::gpt(vocab, 8, 2, 2, ctx)),
    ];
    for (i, (name, cfg)) in configs.into_iter().enumerate() {
        let m: Box<dyn Model<Reference, f64>> =
            Box::new(Transformer::lm(&R, name.into(), cfg).unwrap());
        model_fd(m, toks.clone(), n, tgts.clone(), 20 + i as u64);
    }
}

#[test]
fn vit_gradients() {
    let mut rng = Rng::new(10);
    let cfg = TransformerConfig {
        vocab: 0,
        d: 8,
        heads: 2,
        layers: 2,
        ffn: 16,
        ctx: 0,
        act: Ffn::Gelu,
        norm: NormKind::Layer,
        pre_norm: true,
        pos: Positional::Learned,
        bias: true,
        tie: false,
    };
    let m: Box<dyn Model<Reference, f64>> =
        Box::new(Transformer::vit(&R, "vit".into(), cfg, (2, 4), 2, 3).unwrap());
    let n = 2;
    let x: Vec<f64> = (0..n * 2 * 16).map(|_| rng.normal()).collect();
    model_fd(m, x, n, vec![0.0, 2.0], 30);
}

#[test]
fn causal_lm_ignores_the_future() {
    // Changing the last token must not change the logits of earlier positions.
    let cfg = TransformerConfig::llama(7, 8, 2, 2, 12, 4);
    let mut m: Box<dyn Model<Reference, f64>> =
        Box::new(Transformer::lm(&R, "llama".into(), cfg).unwrap());
    let p = buf(&m.layout().init::<f64>(&mut Rng::new(1)));
    m.forward(&R, &p, &buf(&[1.0, 2.0, 3.0, 4.0]), 1, BnMode::Eval)
        .unwrap();
    let a = m.logits().0.clone();
    m.forward(&R, &p, &buf(&[1.0, 2.0, 3.0, 6.0]), 1, BnMode::Eval)
        .unwrap();
    let b = m.logits().0.clone();
    assert_eq!(&a[..3 * 7], &b[..3 * 7]);
    assert_ne!(&a[3 * 7..], &b[3 * 7..]);
}

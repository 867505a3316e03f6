//! The reference and CPU backends run one host implementation of the network ops
//! (`nn::ops`, `nn::host`, `nn::host_tf`): the CPU backend splits the work across threads by
//! images, rows or channels, and swaps in its own GEMM kernels. Every op that does not go
//! through the matrix product gives the same bits on both, whatever the threading; this file
//! checks that on sizes that take the CPU backend's parallel paths, in `f32` and `f64`. The
//! matrix product and the convolutions built on it are NOT bit-identical (the CPU backend's
//! blocked GEMM adds in another order): `gradcheck.rs` bounds them (1e-4 of the scale in `f32`)
//! and `crosscheck_host.rs` bounds whole models.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cpu::CpuBackend;
use ire_core::{Backend, Reference, Scalar};
use ire_models::nn::{AttnShape, BnMode, BnShape, BnState, ConvGeom, NnOps, NormKind};
use ire_models::rng::Rng;

/// Named outputs, as bit patterns (`f64` of each value, so `f32` values keep their bits).
type Outputs = Vec<(&'static str, Vec<u64>)>;

fn up<B: Backend, T: Scalar>(b: &B, v: &[f64]) -> B::Buffer<T> {
    let v: Vec<T> = v.iter().map(|&x| T::of(x)).collect();
    b.alloc_from(&v).unwrap()
}

fn bits<B: Backend, T: Scalar>(b: &B, x: &B::Buffer<T>) -> Vec<u64> {
    b.to_vec(x)
        .unwrap()
        .iter()
        .map(|v| v.as_f64().to_bits())
        .collect()
}

fn randn(rng: &mut Rng, n: usize, s: f64) -> Vec<f64> {
    (0..n).map(|_| s * rng.normal()).collect()
}

/// Every non-GEMM op on `b`, from the same seeded inputs; returns every output buffer.
fn run_ops<B: NnOps, T: Scalar>(b: &B) -> Outputs {
    let mut rng = Rng::new(77);
    let mut out: Outputs = Vec::new();
    // Element-wise activations and their backward passes (long enough to be split).
    let len = 50_003;
    let x = up::<B, T>(b, &randn(&mut rng, len, 2.0));
    let dy = up::<B, T>(b, &randn(&mut rng, len, 1.0));
    let mut y = b.alloc::<T>(len).unwrap();
    let mut dx = b.alloc::<T>(len).unwrap();
    b.relu(&x, &mut y, len).unwrap();
    out.push(("relu", bits(b, &y)));
    b.relu_backward(&y, &dy, &mut dx, len).unwrap();
    out.push(("relu_backward", bits(b, &dx)));
    b.gelu(&x, &mut y, len).unwrap();
    out.push(("gelu", bits(b, &y)));
    b.gelu_backward(&x, &dy, &mut dx, len).unwrap();
    out.push(("gelu_backward", bits(b, &dx)));
    b.dropout(&x, &mut y, len, 0.3, 99).unwrap();
    out.push(("dropout", bits(b, &y)));
    b.dropout_backward(&dy, &mut dx, len, 0.3, 99).unwrap();
    out.push(("dropout_backward", bits(b, &dx)));
    // Row bias and its gradient.
    let (rows, cols) = (300, 37);
    let mut yb = up::<B, T>(b, &randn(&mut rng, rows * cols, 1.0));
    let bias = up::<B, T>(b, &randn(&mut rng, cols + 5, 1.0));
    b.add_row_bias(&mut yb, rows, cols, &bias, 5).unwrap();
    out.push(("add_row_bias", bits(b, &yb)));
    let mut db = b.alloc::<T>(cols + 2).unwrap();
    b.row_bias_grad(&yb, rows, cols, &mut db, 2).unwrap();
    out.push(("row_bias_grad", bits(b, &db)));
    // Batch norm (training mode, running statistics updated) and its backward; pooling.
    let s = BnShape { n: 9, c: 6, hw: 49 };
    let total = s.n * s.c * s.hw;
    let xb = up::<B, T>(b, &randn(&mut rng, total, 1.5));
    let dyb = up::<B, T>(b, &randn(&mut rng, total, 1.0));
    let params = up::<B, T>(b, &randn(&mut rng, 2 * s.c + 4, 1.0));
    let (mut rm, mut rv) = (b.alloc::<T>(s.c).unwrap(), b.alloc::<T>(s.c).unwrap());
    let (mut sm, mut si) = (b.alloc::<T>(s.c).unwrap(), b.alloc::<T>(s.c).unwrap());
    let mut yn = b.alloc::<T>(total).unwrap();
    b.batch_norm(
        &xb,
        &mut yn,
        s,
        &params,
        1,
        1 + s.c,
        BnState {
            running_mean: &mut rm,
            running_var: &mut rv,
            save_mean: &mut sm,
            save_invstd: &mut si,
        },
        BnMode::Train {
            update_running: true,
        },
        0.1,
        1e-5,
    )
    .unwrap();
    out.push(("batch_norm", bits(b, &yn)));
    out.push(("batch_norm running mean", bits(b, &rm)));
    out.push(("batch_norm running var", bits(b, &rv)));
    let mut dxn = b.alloc::<T>(total).unwrap();
    let mut g = b.alloc::<T>(2 * s.c + 4).unwrap();
    b.batch_norm_backward(
        &xb,
        &dyb,
        &mut dxn,
        s,
        &params,
        1,
        &sm,
        &si,
        &mut g,
        2,
        2 + s.c,
    )
    .unwrap();
    out.push(("batch_norm_backward dx", bits(b, &dxn)));
    out.push(("batch_norm_backward dγ dβ", bits(b, &g)));
    let mut pooled = b.alloc::<T>(s.n * s.c).unwrap();
    b.global_avg_pool(&xb, &mut pooled, s).unwrap();
    out.push(("global_avg_pool", bits(b, &pooled)));
    b.global_avg_pool_backward(&pooled, &mut dxn, s).unwrap();
    out.push(("global_avg_pool_backward", bits(b, &dxn)));
    let geom = ConvGeom {
        c_in: s.c,
        h: 7,
        w: 7,
        c_out: s.c,
        k: 3,
        stride: 2,
        pad: 1,
    };
    let mut mp = b.alloc::<T>(s.n * s.c * geom.oh() * geom.ow()).unwrap();
    b.max_pool2d(&xb, s.n, &geom, &mut mp).unwrap();
    out.push(("max_pool2d", bits(b, &mp)));
    b.max_pool2d_backward(&xb, s.n, &geom, &mp, &mut dxn)
        .unwrap();
    out.push(("max_pool2d_backward", bits(b, &dxn)));
    // Softmax cross-entropy (with label smoothing) and label sampling.
    let (n, c) = (65, 300);
    let z = up::<B, T>(b, &randn(&mut rng, n * c, 3.0));
    let labels: Vec<f64> = (0..n).map(|_| rng.below(c as u64) as f64).collect();
    let lab = up::<B, T>(b, &labels);
    let mut dl = b.alloc::<T>(n * c).unwrap();
    let (loss, ok) = b.softmax_xent(&z, &lab, n, c, 0.1, 0.5, &mut dl).unwrap();
    out.push((
        "softmax_xent loss, correct",
        vec![loss.to_bits(), ok as u64],
    ));
    out.push(("softmax_xent dlogits", bits(b, &dl)));
    let u = up::<B, T>(b, &(0..n).map(|_| rng.uniform()).collect::<Vec<_>>());
    let mut sl = b.alloc::<T>(n).unwrap();
    b.sample_labels(&z, n, c, &u, &mut sl).unwrap();
    out.push(("sample_labels", bits(b, &sl)));
    // Row norms (LayerNorm with β, RMSNorm) and their backward passes.
    let (rows, d) = (130, 48);
    let xr = up::<B, T>(b, &randn(&mut rng, rows * d, 1.0));
    let dyr = up::<B, T>(b, &randn(&mut rng, rows * d, 1.0));
    let pr = up::<B, T>(b, &randn(&mut rng, 2 * d + 3, 1.0));
    for (kind, beta, name) in [
        (NormKind::Layer, Some(3 + d), "layer"),
        (NormKind::Rms, None, "rms"),
    ] {
        let mut yr = b.alloc::<T>(rows * d).unwrap();
        let (mut m, mut r) = (b.alloc::<T>(rows).unwrap(), b.alloc::<T>(rows).unwrap());
        b.norm_rows(
            kind, &xr, &mut yr, rows, d, &pr, 3, beta, &mut m, &mut r, 1e-5,
        )
        .unwrap();
        let mut dxr = b.alloc::<T>(rows * d).unwrap();
        let mut gr = b.alloc::<T>(2 * d + 3).unwrap();
        b.norm_rows_backward(
            kind, &xr, &dyr, &mut dxr, rows, d, &pr, 3, &m, &r, &mut gr, 3, beta,
        )
        .unwrap();
        out.push((
            if name == "layer" {
                "norm_rows layer"
            } else {
                "norm_rows rms"
            },
            [
                bits(b, &yr),
                bits(b, &m),
                bits(b, &r),
                bits(b, &dxr),
                bits(b, &gr),
            ]
            .concat(),
        ));
    }
    // Causal attention, its backward, rotary positions.
    let a = AttnShape {
        b: 5,
        t: 17,
        h: 4,
        dh: 8,
        causal: true,
    };
    let mut qkv = up::<B, T>(b, &randn(&mut rng, a.qkv_len(), 1.0));
    b.rope(&mut qkv, a, 10_000.0, false).unwrap();
    out.push(("rope", bits(b, &qkv)));
    let mut lse = b.alloc::<T>(a.lse_len()).unwrap();
    let mut ao = b.alloc::<T>(a.out_len()).unwrap();
    b.attention(&qkv, a, &mut lse, &mut ao).unwrap();
    out.push(("attention", [bits(b, &lse), bits(b, &ao)].concat()));
    let dout = up::<B, T>(b, &randn(&mut rng, a.out_len(), 1.0));
    let mut dqkv = b.alloc::<T>(a.qkv_len()).unwrap();
    b.attention_backward(&qkv, &ao, &lse, &dout, a, &mut dqkv)
        .unwrap();
    out.push(("attention_backward", bits(b, &dqkv)));
    // SwiGLU.
    let (rows, f) = (70, 43);
    let xs = up::<B, T>(b, &randn(&mut rng, rows * 2 * f, 1.0));
    let dys = up::<B, T>(b, &randn(&mut rng, rows * f, 1.0));
    let mut ys = b.alloc::<T>(rows * f).unwrap();
    b.swiglu(&xs, &mut ys, rows, f).unwrap();
    out.push(("swiglu", bits(b, &ys)));
    let mut dxs = b.alloc::<T>(rows * 2 * f).unwrap();
    b.swiglu_backward(&xs, &dys, &mut dxs, rows, f).unwrap();
    out.push(("swiglu_backward", bits(b, &dxs)));
    // Embeddings (repeated ids: the backward adds several rows into one) and positions.
    let (ntok, vocab, d) = (200, 23, 16);
    let ids: Vec<f64> = (0..ntok).map(|_| rng.below(vocab as u64) as f64).collect();
    let ids = up::<B, T>(b, &ids);
    let table = up::<B, T>(b, &randn(&mut rng, vocab * d + 7, 1.0));
    let mut emb = b.alloc::<T>(ntok * d).unwrap();
    b.embedding(&ids, ntok, &table, 7, vocab, d, &mut emb)
        .unwrap();
    out.push(("embedding", bits(b, &emb)));
    let demb = up::<B, T>(b, &randn(&mut rng, ntok * d, 1.0));
    let mut dt = b.alloc::<T>(vocab * d + 7).unwrap();
    b.embedding_backward(&ids, ntok, &demb, d, vocab, &mut dt, 7)
        .unwrap();
    out.push(("embedding_backward", bits(b, &dt)));
    let (bs, t) = (8, 25);
    let pos = up::<B, T>(b, &randn(&mut rng, t * d, 1.0));
    b.add_positions(&mut emb, bs, t, d, &pos, 0).unwrap();
    out.push(("add_positions", bits(b, &emb)));
    let mut dpos = b.alloc::<T>(t * d).unwrap();
    b.add_positions_backward(&demb, bs, t, d, &mut dpos, 0)
        .unwrap();
    out.push(("add_positions_backward", bits(b, &dpos)));
    // Patches of images.
    let (ni, ch, side, p) = (6, 3, 8, 4);
    let img = up::<B, T>(b, &randn(&mut rng, ni * ch * side * side, 1.0));
    // One row per patch and one more per image (the class token's place).
    let rows = (side / p) * (side / p) + 1;
    let mut patches = b.alloc::<T>(ni * rows * ch * p * p).unwrap();
    b.patchify(&img, ni, ch, side, p, &mut patches).unwrap();
    out.push(("patchify", bits(b, &patches)));
    out
}

fn same_bits<T: Scalar>(ty: &str) {
    let want = run_ops::<Reference, T>(&Reference);
    for (name, cpu) in [
        ("cpu", CpuBackend::new()),
        (
            "cpu, 2 threads, tiny tasks",
            CpuBackend::with_threads(2).unwrap().with_chunk_len(100),
        ),
    ] {
        let got = run_ops::<CpuBackend, T>(&cpu);
        assert_eq!(got.len(), want.len());
        for ((op, g), (_, w)) in got.iter().zip(&want) {
            assert_eq!(g.len(), w.len(), "{op} ({ty}, {name}): length");
            if let Some(i) = g.iter().zip(w).position(|(a, b)| a != b) {
                panic!(
                    "{op} ({ty}, {name}): element {i} differs from the reference backend's: \
                     bits {:#x} vs {:#x}",
                    g[i], w[i]
                );
            }
        }
    }
}

#[test]
fn non_gemm_ops_give_the_reference_bits_on_the_cpu_backend() {
    same_bits::<f32>("f32");
    same_bits::<f64>("f64");
}

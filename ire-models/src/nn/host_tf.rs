//! Host formulas of the transformer operations (normalizations, attention, rotary embeddings,
//! SwiGLU, embeddings), shared by the reference and CPU backends like `host.rs`.

use ire_core::Scalar;

/// Which row normalization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `γ ⊙ (x − μ)/sqrt(σ² + ε) + β` (LayerNorm; β optional).
    Layer,
    /// `γ ⊙ x / sqrt(mean(x²) + ε)` (RMSNorm).
    Rms,
}

/// Normalizes one row; returns `(mean, rstd)` (mean 0 for RMSNorm). Statistics in `f64`.
pub fn norm_row<T: Scalar>(
    kind: NormKind,
    x: &[T],
    y: &mut [T],
    gamma: &[T],
    beta: Option<&[T]>,
    eps: f64,
) -> (T, T) {
    let d = x.len() as f64;
    let mean = match kind {
        NormKind::Layer => x.iter().map(|v| v.as_f64()).sum::<f64>() / d,
        NormKind::Rms => 0.0,
    };
    let var = x.iter().map(|v| (v.as_f64() - mean).powi(2)).sum::<f64>() / d;
    let rstd = 1.0 / (var + eps).sqrt();
    for j in 0..x.len() {
        let xh = (x[j].as_f64() - mean) * rstd;
        let b = beta.map_or(0.0, |b| b[j].as_f64());
        y[j] = T::of(gamma[j].as_f64() * xh + b);
    }
    (T::of(mean), T::of(rstd))
}

/// Backward of [`norm_row`]: writes `dx`, accumulates `dγ` (and `dβ`).
#[allow(clippy::too_many_arguments)]
pub fn norm_row_backward<T: Scalar>(
    kind: NormKind,
    x: &[T],
    dy: &[T],
    gamma: &[T],
    mean: T,
    rstd: T,
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: Option<&mut [T]>,
) {
    let d = x.len() as f64;
    let (mean, rstd) = (mean.as_f64(), rstd.as_f64());
    // g = γ ⊙ dy; LayerNorm: dx = rstd·(g − mean(g) − x̂·mean(g ⊙ x̂)); RMSNorm: drop mean(g).
    let (mut sg, mut sgx) = (0.0, 0.0);
    for j in 0..x.len() {
        let xh = (x[j].as_f64() - mean) * rstd;
        let g = gamma[j].as_f64() * dy[j].as_f64();
        sg += g;
        sgx += g * xh;
    }
    let mg = if kind == NormKind::Layer { sg / d } else { 0.0 };
    for j in 0..x.len() {
        let xh = (x[j].as_f64() - mean) * rstd;
        let g = gamma[j].as_f64() * dy[j].as_f64();
        dx[j] = T::of(rstd * (g - mg - xh * sgx / d));
        dgamma[j] = dgamma[j] + T::of(dy[j].as_f64() * xh);
    }
    if let Some(db) = dbeta {
        for j in 0..x.len() {
            db[j] = db[j] + dy[j];
        }
    }
}

/// Shape of a multi-head attention over `qkv` rows `[q | k | v]`, each `h` heads of `dh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Sequences.
    pub b: usize,
    /// Tokens per sequence.
    pub t: usize,
    /// Heads.
    pub h: usize,
    /// Dimension per head.
    pub dh: usize,
    /// Causal mask (a token attends to itself and earlier ones).
    pub causal: bool,
}

impl AttnShape {
    /// Model width `h·dh`.
    pub fn d(&self) -> usize {
        self.h * self.dh
    }
    /// Values in the `qkv` buffer.
    pub fn qkv_len(&self) -> usize {
        self.b * self.t * 3 * self.d()
    }
    /// Values in the output.
    pub fn out_len(&self) -> usize {
        self.b * self.t * self.d()
    }
    /// Values in the saved probabilities `b × h × t × t`.
    pub fn probs_len(&self) -> usize {
        self.b * self.h * self.t * self.t
    }
    fn q(&self, b: usize, t: usize, h: usize) -> usize {
        (b * self.t + t) * 3 * self.d() + h * self.dh
    }
}

/// Attention of sequence `bi`, head `hi`: `P = softmax(q kᵀ/√dh)`, `out = P v`; `probs` is this
/// head's `t × t` block and `out` the sequence's `t × d` rows.
pub fn attention_head<T: Scalar>(
    s: &AttnShape,
    qkv: &[T],
    bi: usize,
    hi: usize,
    probs: &mut [T],
    out: &mut [T],
) {
    let (t, d, dh) = (s.t, s.d(), s.dh);
    let scale = 1.0 / (dh as f64).sqrt();
    let mut row = vec![0.0f64; t];
    for i in 0..t {
        let q = &qkv[s.q(bi, i, hi)..s.q(bi, i, hi) + dh];
        let last = if s.causal { i + 1 } else { t };
        let mut max = f64::NEG_INFINITY;
        for (j, r) in row.iter_mut().enumerate().take(last) {
            let k = &qkv[s.q(bi, j, hi) + d..s.q(bi, j, hi) + d + dh];
            *r = q
                .iter()
                .zip(k)
                .map(|(a, b)| a.as_f64() * b.as_f64())
                .sum::<f64>()
                * scale;
            max = max.max(*r);
        }
        let mut sum = 0.0;
        for r in row.iter_mut().take(last) {
            *r = (*r - max).exp();
            sum += *r;
        }
        let p = &mut probs[(i) * t..(i + 1) * t];
        for j in 0..t {
            p[j] = if j < last {
                T::of(row[j] / sum)
            } else {
                T::zero()
            };
        }
        let o = &mut out[i * d + hi * dh..i * d + hi * dh + dh];
        for (c, ov) in o.iter_mut().enumerate() {
            let mut acc = 0.0;
            for j in 0..last {
                acc += p[j].as_f64() * qkv[s.q(bi, j, hi) + 2 * d + c].as_f64();
            }
            *ov = T::of(acc);
        }
    }
}

/// Backward of [`attention_head`]: ACCUMULATES into the q, k, v parts of `dqkv` for this head
/// (`dV = Pᵀ dO`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))` with `dP = dO Vᵀ`, `dQ = dS K/√dh`,
/// `dK = dSᵀ Q/√dh`). `probs` is this head's block, `dout` and `dqkv` the sequence's rows.
pub fn attention_head_backward<T: Scalar>(
    s: &AttnShape,
    qkv: &[T],
    probs: &[T],
    dout: &[T],
    bi: usize,
    hi: usize,
    dqkv: &mut [T],
) {
    let (t, d, dh) = (s.t, s.d(), s.dh);
    let base = bi * s.t * 3 * d;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut ds = vec![0.0f64; t];
    for i in 0..t {
        let p = &probs[i * t..(i + 1) * t];
        let last = if s.causal { i + 1 } else { t };
        let o = i * d + hi * dh;
        let dop = &dout[o..o + dh];
        // dP_ij = dO_i · v_j; dV_j += P_ij dO_i.
        let mut dot = 0.0;
        for j in 0..last {
            let vj = s.q(bi, j, hi) + 2 * d;
            let mut dp = 0.0;
            for c in 0..dh {
                dp += dop[c].as_f64() * qkv[vj + c].as_f64();
                dqkv[vj - base + c] = dqkv[vj - base + c] + T::of(p[j].as_f64() * dop[c].as_f64());
            }
            ds[j] = dp;
            dot += dp * p[j].as_f64();
        }
        for (dsj, pj) in ds.iter_mut().zip(p).take(last) {
            *dsj = pj.as_f64() * (*dsj - dot) * scale;
        }
        let qi = s.q(bi, i, hi);
        for (j, &dsj) in ds.iter().enumerate().take(last) {
            let kj = s.q(bi, j, hi) + d;
            for c in 0..dh {
                dqkv[qi - base + c] = dqkv[qi - base + c] + T::of(dsj * qkv[kj + c].as_f64());
                dqkv[kj - base + c] = dqkv[kj - base + c] + T::of(dsj * qkv[qi + c].as_f64());
            }
        }
    }
}

/// Rotary position embedding on the q and k parts of `qkv`, pairs `(2i, 2i+1)` of each head
/// rotated by `pos·base^(−2i/dh)` (RoFormer's interleaved pairs, as the official hand-written
/// Llama); `inverse` rotates back (the backward pass, the rotation being orthogonal).
pub fn rope<T: Scalar>(s: &AttnShape, qkv: &mut [T], base: f64, inverse: bool) {
    let d = s.d();
    for bi in 0..s.b {
        for ti in 0..s.t {
            for part in 0..2 {
                for hi in 0..s.h {
                    let o = s.q(bi, ti, hi) + part * d;
                    for i in 0..s.dh / 2 {
                        let ang = ti as f64 * base.powf(-2.0 * i as f64 / s.dh as f64);
                        let (sn, cs) = ang.sin_cos();
                        let sn = if inverse { -sn } else { sn };
                        let (a, b) = (qkv[o + 2 * i].as_f64(), qkv[o + 2 * i + 1].as_f64());
                        qkv[o + 2 * i] = T::of(a * cs - b * sn);
                        qkv[o + 2 * i + 1] = T::of(a * sn + b * cs);
                    }
                }
            }
        }
    }
}

/// SwiGLU on a row `[a | b]` of `2f` values: `y = silu(a) ⊙ b`.
pub fn swiglu_row<T: Scalar>(x: &[T], y: &mut [T]) {
    let f = y.len();
    for j in 0..f {
        let a = x[j].as_f64();
        y[j] = T::of(a / (1.0 + (-a).exp()) * x[f + j].as_f64());
    }
}

/// Backward of [`swiglu_row`].
pub fn swiglu_row_backward<T: Scalar>(x: &[T], dy: &[T], dx: &mut [T]) {
    let f = dy.len();
    for j in 0..f {
        let (a, b) = (x[j].as_f64(), x[f + j].as_f64());
        let sig = 1.0 / (1.0 + (-a).exp());
        let silu = a * sig;
        dx[j] = T::of(dy[j].as_f64() * b * (sig * (1.0 + a * (1.0 - sig))));
        dx[f + j] = T::of(dy[j].as_f64() * silu);
    }
}

/// The sinusoidal position table `t × d` of "Attention is all you need".
pub fn sinusoidal_table(t: usize, d: usize) -> Vec<f64> {
    let mut v = vec![0.0; t * d];
    for p in 0..t {
        for i in (0..d).step_by(2) {
            let div = (-(i as f64) * (10000f64.ln()) / d as f64).exp();
            v[p * d + i] = (p as f64 * div).sin();
            if i + 1 < d {
                v[p * d + i + 1] = (p as f64 * div).cos();
            }
        }
    }
    v
}

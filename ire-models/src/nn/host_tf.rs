//! Host formulas of the transformer operations (normalizations, rotary embeddings, SwiGLU,
//! embeddings) and the attention shape, shared by the reference and CPU backends like
//! `host.rs`; attention itself is in `attention.rs`.

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
    /// Values in the saved row statistics (one log-sum-exp per sequence, head and query:
    /// `b × h × t`, in that order).
    pub fn lse_len(&self) -> usize {
        self.b * self.h * self.t
    }
    /// The score scale `1/√dh` (1 for `dh = 0`, where there is nothing to scale).
    pub fn scale(&self) -> f64 {
        1.0 / (self.dh.max(1) as f64).sqrt()
    }
    fn q(&self, b: usize, t: usize, h: usize) -> usize {
        (b * self.t + t) * 3 * self.d() + h * self.dh
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

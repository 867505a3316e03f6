//! The oracle of the attention tests: attention and its backward by the textbook formulas in
//! `f64`, with the whole `t × t` probability matrix of each head written out.
//!
//! `P = softmax(q kᵀ/√dh + mask)`, `O = P v`; backward `dV = Pᵀ dO`, `dP = dO vᵀ`,
//! `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = dS k/√dh`, `dK = dSᵀ q/√dh`.

use ire_models::nn::AttnShape;

/// `(out, lse, dqkv)` of attention on `qkv` (`b × t × [q | k | v]`) with the output gradient
/// `dout`; `lse` is each row's log-sum-exp of the scores (`b × h × t`).
pub fn naive_attention(s: &AttnShape, qkv: &[f64], dout: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (t, d, dh) = (s.t, s.h * s.dh, s.dh);
    let scale = 1.0 / (dh as f64).sqrt();
    let mut out = vec![0.0; s.b * t * d];
    let mut dqkv = vec![0.0; s.b * t * 3 * d];
    let mut lse = vec![0.0; s.b * s.h * t];
    for b in 0..s.b {
        for h in 0..s.h {
            let at =
                |ti: usize, part: usize, c: usize| (b * t + ti) * 3 * d + part * d + h * dh + c;
            let ot = |ti: usize, c: usize| (b * t + ti) * d + h * dh + c;
            let mut p = vec![0.0; t * t];
            for i in 0..t {
                let sc: Vec<f64> = (0..t)
                    .map(|j| {
                        if s.causal && j > i {
                            f64::NEG_INFINITY
                        } else {
                            (0..dh)
                                .map(|c| qkv[at(i, 0, c)] * qkv[at(j, 1, c)])
                                .sum::<f64>()
                                * scale
                        }
                    })
                    .collect();
                let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|v| (v - m).exp()).sum();
                lse[(b * s.h + h) * t + i] = m + z.ln();
                for j in 0..t {
                    p[i * t + j] = (sc[j] - m).exp() / z;
                }
                for c in 0..dh {
                    out[ot(i, c)] = (0..t).map(|j| p[i * t + j] * qkv[at(j, 2, c)]).sum();
                }
            }
            for i in 0..t {
                let dp: Vec<f64> = (0..t)
                    .map(|j| (0..dh).map(|c| dout[ot(i, c)] * qkv[at(j, 2, c)]).sum())
                    .collect();
                let row: f64 = (0..t).map(|j| dp[j] * p[i * t + j]).sum();
                for j in 0..t {
                    let ds = p[i * t + j] * (dp[j] - row) * scale;
                    for c in 0..dh {
                        dqkv[at(i, 0, c)] += ds * qkv[at(j, 1, c)];
                        dqkv[at(j, 1, c)] += ds * qkv[at(i, 0, c)];
                        dqkv[at(j, 2, c)] += p[i * t + j] * dout[ot(i, c)];
                    }
                }
            }
        }
    }
    (out, lse, dqkv)
}

/// The shapes of the attention tests: `t ∈ {1, 7, 64, 1000}` (one key block, a partial
/// block, exactly one block of the host's 64 keys, many blocks), causal and not, heads of a
/// width that is not a multiple of a vector.
pub fn attention_shapes() -> Vec<AttnShape> {
    let mut v = Vec::new();
    for causal in [false, true] {
        for (b, t, h, dh) in [(2, 1, 3, 5), (2, 7, 3, 5), (2, 64, 2, 16), (1, 1000, 2, 12)] {
            v.push(AttnShape {
                b,
                t,
                h,
                dh,
                causal,
            });
        }
    }
    v
}

/// Relative, norm-wise error `max |got − want| / max |want|` (the tolerance tables' measure).
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths");
    let scale = want
        .iter()
        .map(|v| v.abs())
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / scale
}

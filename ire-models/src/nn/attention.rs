//! Multi-head attention on host slices in blocks with an online softmax (the flash-attention
//! scheme), shared by the reference backend (heads one after the other) and the CPU backend
//! (heads in parallel): the same function per head, so the same bits either way.
//!
//! No `t × t` buffer exists at any point. The forward pass visits the keys in blocks of
//! [`KEY_BLOCK`], keeping per query row a running maximum `m`, a running normalizer `l` and an
//! unnormalized output that is rescaled by `e^(m_old − m_new)` when a block raises the maximum;
//! it saves each row's log-sum-exp `m + ln l`. The backward pass recomputes each probability
//! as `e^(s − lse)` from the scores and that one number per row, with
//! `D_i = dO_i · O_i = Σ_j P_ij dP_ij`, so `dS = P ⊙ (dP − D)`. Memory per head is a few
//! `t × dh` copies of its slices of `q`, `k`, `v` (contiguous, and `k`, `v` transposed for the
//! score products) and one block of scores.
//!
//! Order of operations, the contract both backends keep: a score is `(Σ_c q_c k_c)·scale`
//! summed over `c` in order; the forward rescales once per key block; `dQ_i` sums over keys in
//! order, `dK_j` and `dV_j` over queries in order. Products run in the element type `T`; the
//! row statistics (`m`, `l`, `lse`, `D`) and the exponentials in `f64`.

use ire_core::Scalar;

use super::host::lane_sum;
use super::host_tf::AttnShape;
use super::xent::exp_nonpositive;

/// Keys per block of the forward pass: where the online softmax rescales (part of the order
/// of operations). The backward pass uses the same blocks, which changes no result.
pub const KEY_BLOCK: usize = 64;
/// Query rows that share one pass over a key block (cache reuse only; no effect on results).
const QUERY_BLOCK: usize = 32;
/// Columns of one register tile of the products.
const W: usize = 16;

/// `out[j] = Σ_c x[c]·mt[c·ld + j0 + j]` for `j < out.len()`, summed over `c` in order (the
/// row `x` times columns `j0..` of the transposed matrix `mt`, leading dimension `ld`).
#[inline(always)]
fn row_times_cols<T: Scalar>(x: &[T], mt: &[T], ld: usize, j0: usize, out: &mut [T]) {
    let n = out.len();
    let mut j = 0;
    while j + W <= n {
        let mut acc = [T::zero(); W];
        for (c, &xc) in x.iter().enumerate() {
            let col = &mt[c * ld + j0 + j..c * ld + j0 + j + W];
            for l in 0..W {
                acc[l] = acc[l] + xc * col[l];
            }
        }
        out[j..j + W].copy_from_slice(&acc);
        j += W;
    }
    for (jj, o) in out.iter_mut().enumerate().skip(j) {
        let mut a = T::zero();
        for (c, &xc) in x.iter().enumerate() {
            a = a + xc * mt[c * ld + j0 + jj];
        }
        *o = a;
    }
}

/// `acc[c] += Σ_j w[j]·rows[(j0 + j)·dh + c]`, summed over `j` in order (`dh = acc.len()`).
#[inline(always)]
fn add_weighted_rows<T: Scalar>(acc: &mut [T], w: &[T], rows: &[T], j0: usize) {
    let dh = acc.len();
    let mut c = 0;
    while c + W <= dh {
        let mut a = [T::zero(); W];
        a.copy_from_slice(&acc[c..c + W]);
        for (j, &wj) in w.iter().enumerate() {
            let r = &rows[(j0 + j) * dh + c..(j0 + j) * dh + c + W];
            for l in 0..W {
                a[l] = a[l] + wj * r[l];
            }
        }
        acc[c..c + W].copy_from_slice(&a);
        c += W;
    }
    for (cc, av) in acc.iter_mut().enumerate().skip(c) {
        let mut a = *av;
        for (j, &wj) in w.iter().enumerate() {
            a = a + wj * rows[(j0 + j) * dh + cc];
        }
        *av = a;
    }
}

/// `y += a·x`, element by element.
#[inline(always)]
fn axpy<T: Scalar>(y: &mut [T], a: T, x: &[T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = *y + a * x;
    }
}

/// The largest value, NaNs skipped (`-∞` for none): exact, so the order does not matter.
#[inline(always)]
fn max_of<T: Scalar>(v: &[T]) -> f64 {
    v.iter().fold(f64::NEG_INFINITY, |m, x| {
        let x = x.as_f64();
        if x > m { x } else { m }
    })
}

/// One head's slices of `qkv` (or of another buffer of the same row layout) copied out.
struct HeadSlices<T> {
    t: usize,
    dh: usize,
    q: Vec<T>,
    k: Vec<T>,
    kt: Vec<T>,
    v: Vec<T>,
    vt: Vec<T>,
}

impl<T: Scalar> HeadSlices<T> {
    /// Part `part` (0 q, 1 k, 2 v) of head `hi` of sequence `bi`, as `t × dh` rows.
    fn rows(s: &AttnShape, qkv: &[T], bi: usize, hi: usize, part: usize) -> Vec<T> {
        let (t, d, dh) = (s.t, s.d(), s.dh);
        let mut out = Vec::with_capacity(t * dh);
        for ti in 0..t {
            let o = (bi * t + ti) * 3 * d + part * d + hi * dh;
            out.extend_from_slice(&qkv[o..o + dh]);
        }
        out
    }

    fn transpose(rows: &[T], t: usize, dh: usize) -> Vec<T> {
        let mut out = vec![T::zero(); t * dh];
        for (ti, r) in rows.chunks_exact(dh.max(1)).enumerate() {
            for (c, &x) in r.iter().enumerate() {
                out[c * t + ti] = x;
            }
        }
        out
    }

    fn new(s: &AttnShape, qkv: &[T], bi: usize, hi: usize) -> Self {
        let q = Self::rows(s, qkv, bi, hi, 0);
        let k = Self::rows(s, qkv, bi, hi, 1);
        let v = Self::rows(s, qkv, bi, hi, 2);
        let kt = Self::transpose(&k, s.t, s.dh);
        let vt = Self::transpose(&v, s.t, s.dh);
        HeadSlices {
            t: s.t,
            dh: s.dh,
            q,
            k,
            kt,
            v,
            vt,
        }
    }

    /// The scaled scores of query row `i` against keys `j0 .. j0 + out.len()`.
    #[inline(always)]
    fn scores(&self, i: usize, j0: usize, scale: T, out: &mut [T]) {
        let dh = self.dh;
        row_times_cols(&self.q[i * dh..(i + 1) * dh], &self.kt, self.t, j0, out);
        for x in out.iter_mut() {
            *x = *x * scale;
        }
    }
}

/// Keys `j0..` that query `i` sees within a block ending at `j1`.
#[inline(always)]
fn visible_end(s: &AttnShape, i: usize, j1: usize) -> usize {
    if s.causal { j1.min(i + 1) } else { j1 }
}

#[inline(always)]
fn forward_body<T: Scalar>(
    s: &AttnShape,
    qkv: &[T],
    bi: usize,
    hi: usize,
    o: &mut [T],
    lse: &mut [T],
) {
    let (t, dh) = (s.t, s.dh);
    let hs = HeadSlices::new(s, qkv, bi, hi);
    let scale = T::of(s.scale());
    let mut m = [f64::NEG_INFINITY; QUERY_BLOCK];
    let mut l = [0.0f64; QUERY_BLOCK];
    let mut sc = [T::zero(); KEY_BLOCK];
    o[..t * dh].iter_mut().for_each(|v| *v = T::zero());
    for i0 in (0..t).step_by(QUERY_BLOCK) {
        let i1 = (i0 + QUERY_BLOCK).min(t);
        m.fill(f64::NEG_INFINITY);
        l.fill(0.0);
        let jend = if s.causal { i1 } else { t };
        for j0 in (0..jend).step_by(KEY_BLOCK) {
            let j1 = (j0 + KEY_BLOCK).min(jend);
            for i in i0..i1 {
                let jl = visible_end(s, i, j1);
                if jl <= j0 {
                    continue;
                }
                let p = &mut sc[..jl - j0];
                hs.scores(i, j0, scale, p);
                let r = i - i0;
                let mb = max_of(p);
                let m_new = if mb > m[r] { mb } else { m[r] };
                let alpha = exp_nonpositive(m[r] - m_new);
                for x in p.iter_mut() {
                    *x = T::of(exp_nonpositive(x.as_f64() - m_new));
                }
                l[r] = l[r] * alpha + lane_sum(p, |x| x);
                m[r] = m_new;
                let acc = &mut o[i * dh..(i + 1) * dh];
                let a = T::of(alpha);
                acc.iter_mut().for_each(|v| *v = *v * a);
                add_weighted_rows(acc, p, &hs.v, j0);
            }
        }
        for i in i0..i1 {
            let r = i - i0;
            let inv = l[r];
            o[i * dh..(i + 1) * dh]
                .iter_mut()
                .for_each(|v| *v = T::of(v.as_f64() / inv));
            lse[i] = T::of(m[r] + inv.ln());
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_body<T: Scalar>(
    s: &AttnShape,
    qkv: &[T],
    out: &[T],
    lse: &[T],
    dout: &[T],
    bi: usize,
    hi: usize,
    dq: &mut [T],
) {
    let (t, d, dh) = (s.t, s.d(), s.dh);
    let hs = HeadSlices::new(s, qkv, bi, hi);
    let scale = T::of(s.scale());
    let scale64 = s.scale();
    // dO and O of this head as t × dh rows; D_i = dO_i · O_i.
    let mut dot_rows = Vec::with_capacity(t * dh);
    let mut dd = Vec::with_capacity(t);
    for ti in 0..t {
        let o = (bi * t + ti) * d + hi * dh;
        let (g, y) = (&dout[o..o + dh], &out[o..o + dh]);
        dot_rows.extend_from_slice(g);
        dd.push(super::host::lane_sum2(g, y, |a, b| a * b));
    }
    // dq holds [dq | dk | dv] of this head, each t × dh.
    let (dqh, rest) = dq.split_at_mut(t * dh);
    let (dkh, dvh) = rest.split_at_mut(t * dh);
    dqh.iter_mut()
        .chain(dkh.iter_mut())
        .chain(dvh.iter_mut())
        .for_each(|v| *v = T::zero());
    let mut p = [T::zero(); KEY_BLOCK];
    let mut ds = [T::zero(); KEY_BLOCK];
    for j0 in (0..t).step_by(KEY_BLOCK) {
        let j1 = (j0 + KEY_BLOCK).min(t);
        let istart = if s.causal { j0 } else { 0 };
        for i in istart..t {
            let n = visible_end(s, i, j1) - j0;
            let (p, ds) = (&mut p[..n], &mut ds[..n]);
            hs.scores(i, j0, scale, p);
            let li = lse[i].as_f64();
            for x in p.iter_mut() {
                *x = T::of(exp_nonpositive(x.as_f64() - li));
            }
            let g = &dot_rows[i * dh..(i + 1) * dh];
            row_times_cols(g, &hs.vt, t, j0, ds);
            let di = dd[i];
            for (x, &pj) in ds.iter_mut().zip(p.iter()) {
                *x = T::of(pj.as_f64() * (x.as_f64() - di) * scale64);
            }
            let qi = &hs.q[i * dh..(i + 1) * dh];
            for j in 0..n {
                let r = (j0 + j) * dh;
                axpy(&mut dvh[r..r + dh], p[j], g);
                axpy(&mut dkh[r..r + dh], ds[j], qi);
            }
            add_weighted_rows(&mut dqh[i * dh..(i + 1) * dh], ds, &hs.k, j0);
        }
    }
}

macro_rules! dispatched {
    ($name:ident, $body:ident, $avx2:ident, $avx512:ident, ($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx2<T: Scalar>($($arg: $ty),*) {
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx512<T: Scalar>($($arg: $ty),*) {
            $body($($arg),*)
        }

        #[allow(clippy::too_many_arguments)]
        fn $name<T: Scalar>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked just above.
                    return unsafe { $avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2, checked just above.
                    return unsafe { $avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

// The head loops compiled three times (base target, AVX2, AVX-512F) and dispatched on the CPU,
// as the softmax cross-entropy: no FMA is enabled, so the three copies give the same bits.
dispatched!(forward_head, forward_body, forward_avx2, forward_avx512,
    (s: &AttnShape, qkv: &[T], bi: usize, hi: usize, o: &mut [T], lse: &mut [T]));
dispatched!(backward_head, backward_body, backward_avx2, backward_avx512,
    (s: &AttnShape, qkv: &[T], out: &[T], lse: &[T], dout: &[T], bi: usize, hi: usize,
     dq: &mut [T]));

/// Attention of head `hi` of sequence `bi`: writes this head's output as `t × dh` rows into
/// `o` and its rows' log-sum-exp into `lse` (`t` values).
pub fn attention_head<T: Scalar>(
    s: &AttnShape,
    qkv: &[T],
    bi: usize,
    hi: usize,
    o: &mut [T],
    lse: &mut [T],
) {
    forward_head(s, qkv, bi, hi, o, lse)
}

/// Backward of [`attention_head`] from the forward's output `out` (all heads, `b × t × d`), this
/// head's `lse` and `dout` (`b × t × d`): writes `[dq | dk | dv]` of this head, each `t × dh`
/// rows, into `dqkv` (`3·t·dh` values).
#[allow(clippy::too_many_arguments)]
pub fn attention_head_backward<T: Scalar>(
    s: &AttnShape,
    qkv: &[T],
    out: &[T],
    lse: &[T],
    dout: &[T],
    bi: usize,
    hi: usize,
    dqkv: &mut [T],
) {
    backward_head(s, qkv, out, lse, dout, bi, hi, dqkv)
}

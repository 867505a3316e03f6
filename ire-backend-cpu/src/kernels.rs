//! The per-chunk loops of the element-wise operations: each one calls the canonical formula of
//! [`ire_core::formulas`] on every element, in one pass over its operands.
//!
//! Every kernel takes `wide` first (run the AVX2 copy when the CPU has it) and slices of equal
//! length (checked by the callers; the loops zip, so a shorter operand would only shorten the
//! loop, never read out of bounds); a mask is the packed one of [`ire_core::mask`], with the
//! words of the chunk's coordinates (chunks of masked operations start on a word boundary).

use ire_core::formulas::{self as f, AdamWScalars, SgdScalars};

use ire_core::mask as pm;

use crate::simd::kernel;

/// Runs `body` once per word of the packed mask `words` over operands of `len` coordinates,
/// with `r` the range of the word's coordinates and `w` the word: whole words first (ranges of
/// exactly 32, which the compiler unrolls into full vectors), then the partial last word. The
/// callers check that `words` has `⌈len / 32⌉` words.
macro_rules! per_word {
    ($len:expr, $words:expr, |$r:ident, $w:ident| $body:block) => {{
        let (len, words): (usize, &[u32]) = ($len, $words);
        let full = len - len % pm::WORD_BITS;
        for (i, &$w) in words[..full / pm::WORD_BITS].iter().enumerate() {
            let $r = i * pm::WORD_BITS..(i + 1) * pm::WORD_BITS;
            $body
        }
        if full < len {
            let $w = words[full / pm::WORD_BITS];
            let $r = full..len;
            $body
        }
    }};
}

kernel! {
    /// `y ← y + a·x`.
    fn axpy<T>(y: &mut [T], x: &[T], a: T) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = f::axpy(*y, a, x);
        }
    }
}

kernel! {
    /// `θ ← θ + g·s`.
    fn sam_perturb<T>(p: &mut [T], g: &[T], s: T) {
        for (p, &g) in p.iter_mut().zip(g) {
            *p = f::sam_perturb(*p, g, s);
        }
    }
}

kernel! {
    /// `θ ← θ + ((θ·θ)·g)·s`.
    fn asam_perturb<T>(p: &mut [T], g: &[T], s: T) {
        for (p, &g) in p.iter_mut().zip(g) {
            *p = f::asam_perturb(*p, g, s);
        }
    }
}

kernel! {
    /// Plain SGD.
    fn sgd<T>(p: &mut [T], g: &[T], s: &SgdScalars<T>) {
        for (p, &g) in p.iter_mut().zip(g) {
            *p = f::sgd(*p, g, s);
        }
    }
}

kernel! {
    /// SGD with momentum.
    fn sgd_momentum<T>(p: &mut [T], b: &mut [T], g: &[T], s: &SgdScalars<T>) {
        for ((p, b), &g) in p.iter_mut().zip(b.iter_mut()).zip(g) {
            (*p, *b) = f::sgd_momentum(*p, g, *b, s);
        }
    }
}

kernel! {
    /// AdamW.
    fn adamw<T>(p: &mut [T], m: &mut [T], v: &mut [T], g: &[T], s: &AdamWScalars<T>) {
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            (*p, *m, *v) = f::adamw(*p, g, *m, *v, s);
        }
    }
}

kernel! {
    /// The IRE boost of a step already taken.
    fn boost<T>(p: &mut [T], old: &[T], n: &[u32], kappa: T) {
        per_word!(p.len(), n, |r, w| {
            for (j, (p, &o)) in p[r.clone()].iter_mut().zip(&old[r]).enumerate() {
                *p = f::boost(*p, o, pm::word_bit(w, j), kappa);
            }
        });
    }
}

kernel! {
    /// `h ← β·h + (1−β)·g²`.
    fn ema_square<T>(h: &mut [T], g: &[T], beta: T, c: T) {
        for (h, &g) in h.iter_mut().zip(g) {
            *h = f::ema_square(*h, g, beta, c);
        }
    }
}

kernel! {
    /// `h ← β·h + (1−β)·|g|`.
    fn ema_abs<T>(h: &mut [T], g: &[T], beta: T, c: T) {
        for (h, &g) in h.iter_mut().zip(g) {
            *h = f::ema_abs(*h, g, beta, c);
        }
    }
}

kernel! {
    /// `h ← β·h + (1−β)·(a·b)`.
    fn ema_product<T>(h: &mut [T], a: &[T], b: &[T], beta: T, c: T) {
        for ((h, &a), &b) in h.iter_mut().zip(a).zip(b) {
            *h = f::ema_product(*h, a, b, beta, c);
        }
    }
}

kernel! {
    /// `n ← (h ≤ τ)`, packed: `n` holds the words of `h`'s coordinates.
    fn mask_le<T>(n: &mut [u32], h: &[T], tau: T) {
        for (w, h) in n.iter_mut().zip(h.chunks(pm::WORD_BITS)) {
            *w = pm::le_word(h, tau);
        }
    }
}

kernel! {
    /// Fused SGD + IRE boost: `θ_base` stays in a register.
    fn sgd_ire<T>(p: &mut [T], g: &[T], n: &[u32], s: &SgdScalars<T>, kappa: T) {
        per_word!(p.len(), n, |r, w| {
            for (j, (p, &g)) in p[r.clone()].iter_mut().zip(&g[r]).enumerate() {
                let old = *p;
                *p = f::boost(f::sgd(old, g, s), old, pm::word_bit(w, j), kappa);
            }
        });
    }
}

kernel! {
    /// Fused SGD-momentum + IRE boost.
    fn sgd_momentum_ire<T>(
        p: &mut [T],
        b: &mut [T],
        g: &[T],
        n: &[u32],
        s: &SgdScalars<T>,
        kappa: T,
    ) {
        per_word!(p.len(), n, |r, w| {
            let (p, b, g) = (&mut p[r.clone()], &mut b[r.clone()], &g[r]);
            for (j, ((p, b), &g)) in p.iter_mut().zip(b.iter_mut()).zip(g).enumerate() {
                let old = *p;
                let (base, b2) = f::sgd_momentum(old, g, *b, s);
                *p = f::boost(base, old, pm::word_bit(w, j), kappa);
                *b = b2;
            }
        });
    }
}

kernel! {
    /// Fused AdamW + IRE boost (AdmIRE).
    fn adamw_ire<T>(
        p: &mut [T],
        m: &mut [T],
        v: &mut [T],
        g: &[T],
        n: &[u32],
        s: &AdamWScalars<T>,
        kappa: T,
    ) {
        per_word!(p.len(), n, |r, w| {
            let (p, m, v) = (&mut p[r.clone()], &mut m[r.clone()], &mut v[r.clone()]);
            for (j, (((p, m), v), &g)) in
                p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(&g[r]).enumerate()
            {
                let old = *p;
                let (base, m2, v2) = f::adamw(old, g, *m, *v, s);
                *p = f::boost(base, old, pm::word_bit(w, j), kappa);
                *m = m2;
                *v = v2;
            }
        });
    }
}

kernel! {
    /// Number of NaN or infinite values.
    fn count_non_finite<T>(x: &[T]) -> usize {
        x.iter().map(|x| (!x.is_finite()) as usize).sum()
    }
}

//! # ire-conformance
//!
//! The conformance suite: generic checks of any [`Backend`] against the reference backend, the
//! one tolerance table, and a host [`emulator`] of the device kernels for testing the device
//! layer without a device. It is test machinery, kept out of `ire-core` itself: backend crates
//! take it as a dev-dependency and stamp it into their tests with
//! [`conformance_tests!`](crate::conformance_tests):
//!
//! ```text
//! fn backend() -> Option<MyBackend> { MyBackend::new().ok() }
//! ire_conformance::conformance_tests!(backend());
//! ```
//!
//! Element-wise operations must match the reference bit for bit; reductions match within
//! [`TOLERANCES`]; the k-th-largest selection is exact. Every check runs for `f32` and, where
//! the backend supports it, `f64`, on sizes that include 0, 1 and odd sizes.

// This crate IS a test suite (used from backend crates' tests): a failed check panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod borrowed;
pub mod collective;
pub mod emulator;
pub mod inputs;
mod rng;

pub use rng::Rng;

use std::format;
use std::string::String;
use std::vec::Vec;

use ire_core::backend::Backend;
use ire_core::formulas as f;
use ire_core::mask;
use ire_core::optim::{
    AdamW, AdamWConfig, EstimateInput, Estimator, Ire, IreConfig, IreStep, KappaSchedule,
    Optimizer, Sam, SamConfig, Sgd, SgdConfig,
};
use ire_core::reference::Reference;
use ire_core::scalar::{DType, Scalar};
use ire_core::state::StateDict;

use inputs::{adamw_scalars, sgd_scalars, tied_parts};

/// Sizes every element-wise op is checked on.
pub const SIZES: &[usize] = &[0, 1, 2, 3, 7, 64, 255, 256, 257, 1000, 4099];

/// A stated tolerance for an operation whose result may differ from the reference.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// The operation (or trajectory) it applies to.
    pub op: &'static str,
    /// Relative bound on `f32` results.
    pub rel_f32: f64,
    /// Relative bound on `f64` results.
    pub rel_f64: f64,
    /// Why the result is not bitwise.
    pub reason: &'static str,
}

/// The one tolerance table. Everything not listed must be bit-identical to the reference.
pub const TOLERANCES: &[Tolerance] = &[
    Tolerance {
        op: "sum_squares",
        rel_f32: 3e-6,
        rel_f64: 5e-15,
        reason: "parallel reductions add in another order (a tree per work-group, chunks per \
                 thread) than the reference's pairwise order; two such sums of n <= 2^20 \
                 positive terms (the equivalence runner's largest) differ by at most about \
                 2·log2(n) = 40 ulps (2.4e-6 in f32, 4.4e-15 in f64); measured here at most \
                 1.1e-7 and 1.9e-16 (CPU, OpenCL on PoCL, CUDA emulator)",
    },
    Tolerance {
        op: "sum_squares_product",
        rel_f32: 3e-6,
        rel_f64: 5e-15,
        reason: "as sum_squares; measured here at most 1.9e-7 and 4.7e-16",
    },
    Tolerance {
        op: "sam_trajectory",
        rel_f32: 2e-5,
        rel_f64: 7e-14,
        reason: "SAM/ASAM(-IRE) trajectories of up to 20 steps whose gradient is taken at the \
                 backend's own θ + ε (the equivalence runner of ire-bench; this suite's own SAM \
                 trajectories are bit-identical): the scale ρ/‖g‖ comes from a reduction, so \
                 each step's perturbation may differ by a few ulps, and the steps compound it; \
                 element-wise relative, so largest on coordinates near zero; measured at most \
                 2.1e-6 (f32) and 7.0e-15 (f64) over 12 steps (ASAM, CPU and OpenCL on PoCL); \
                 the bound is 10 times that",
    },
    Tolerance {
        op: "sam_oracle",
        rel_f32: 0.0,
        rel_f64: 1e-14,
        reason: "f64 only (the f32 column is unused): SAM/ASAM(-IRE) against the independent \
                 host oracle over 60 steps, max |Δθ| / max |θ| over all coordinates; the oracle \
                 sums ‖g‖ in another order and rounds ASAM's ρ·θ²·g/‖·‖ in another order, so \
                 each step may differ by an ulp or two; measured at most 1.2e-15 (reference, \
                 CPU, CUDA emulator) and 1.4e-15 (OpenCL on PoCL); the bound is 7 times that",
    },
];

/// The tolerance entry of `op` (panics in a test if the table lacks it).
pub fn tolerance(op: &str) -> &'static Tolerance {
    TOLERANCES
        .iter()
        .find(|t| t.op == op)
        .unwrap_or_else(|| panic!("no tolerance entry for {op}"))
}

/// The relative bound of `op` for dtype `T`.
pub fn rel_tol<T: Scalar>(op: &str) -> f64 {
    let t = tolerance(op);
    if T::DTYPE == DType::F64 {
        t.rel_f64
    } else {
        t.rel_f32
    }
}

/// Distance in units in the last place between two finite values of the same type.
pub fn ulp_distance<T: Scalar>(a: T, b: T) -> u64 {
    a.order_key_u64().abs_diff(b.order_key_u64())
}

/// Asserts two slices are bit-identical, naming the first differing index.
pub fn assert_bitwise<T: Scalar>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.as_f64().to_bits() == w.as_f64().to_bits() || (g.is_nan() && w.is_nan());
        assert!(
            same,
            "{what} [{}]: element {i} differs: got {g:?}, reference {w:?} ({} ulp)",
            T::DTYPE.name(),
            ulp_distance(*g, *w)
        );
    }
}

/// Asserts `|got − want| ≤ rel·max(|want|, tiny)` element-wise.
pub fn assert_close<T: Scalar>(what: &str, got: &[T], want: &[T], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.as_f64(), w.as_f64());
        let bound = rel * w.abs().max(1e-30);
        assert!(
            (g - w).abs() <= bound,
            "{what} [{}]: element {i}: got {g}, reference {w}, |Δ| = {} > {bound}",
            T::DTYPE.name(),
            (g - w).abs()
        );
    }
}

fn up<B: Backend, E: ire_core::scalar::Element>(b: &B, v: &[E]) -> B::Buffer<E> {
    b.alloc_from(v)
        .unwrap_or_else(|e| panic!("{}: upload failed: {e}", b.name()))
}

fn down<B: Backend, E: ire_core::scalar::Element>(b: &B, x: &B::Buffer<E>) -> Vec<E> {
    b.to_vec(x)
        .unwrap_or_else(|e| panic!("{}: download failed: {e}", b.name()))
}

/// Runs `f::<f32>` and, if supported, `f::<f64>`.
macro_rules! both_dtypes {
    ($b:expr, $f:ident) => {{
        $f::<B, f32>($b);
        if $b.supports_dtype(DType::F64) {
            $f::<B, f64>($b);
        } else {
            println!("{}: f64 unsupported, f64 checks skipped", $b.name());
        }
    }};
}

// ------------------------------------------------------------------ plumbing

fn plumbing_t<B: Backend, T: Scalar>(b: &B) {
    let mut rng = Rng::new(1);
    for &n in SIZES {
        let z: B::Buffer<T> = b.alloc(n).unwrap();
        assert_eq!(b.len(&z), n);
        assert!(
            down(b, &z).iter().all(|x| x.as_f64() == 0.0),
            "alloc must zero"
        );
        let v = rng.values::<T>(n);
        let x = up(b, &v);
        assert_bitwise("upload/download", &down(b, &x), &v);
        let mut y: B::Buffer<T> = b.alloc(n).unwrap();
        b.copy(&x, &mut y).unwrap();
        assert_bitwise("copy", &down(b, &y), &v);
        b.fill(&mut y, T::of(-2.5)).unwrap();
        assert!(down(b, &y).iter().all(|x| x.as_f64() == -2.5), "fill");
        let mut m: B::Buffer<u8> = b.alloc(n).unwrap();
        b.fill(&mut m, 1u8).unwrap();
        assert_eq!(down(b, &m), vec![1u8; n], "fill u8");
        let bytes = rng.mask(n);
        let words = up(b, &mask::pack(&bytes));
        assert_eq!(
            b.count_flat(&words).unwrap(),
            bytes.iter().filter(|&&x| x != 0).count()
        );
        assert_eq!(b.count_flat(&up(b, &mask::filled(n, true))).unwrap(), n);
    }
    // Size mismatches are errors, not panics.
    let mut a: B::Buffer<T> = b.alloc(3).unwrap();
    let c: B::Buffer<T> = b.alloc(4).unwrap();
    assert!(b.upload(&mut a, &[T::zero(); 2]).is_err());
    assert!(b.copy(&c, &mut a).is_err());
    assert!(b.axpy(&mut a, T::one(), &c).is_err());
    let mut host = [T::zero(); 5];
    assert!(b.download(&a, &mut host).is_err());
}

/// Allocation, upload/download, copy, fill (floats and bytes), size-mismatch errors.
pub fn plumbing<B: Backend>(b: &B) {
    both_dtypes!(b, plumbing_t);
}

// ------------------------------------------------------------------ parts of one buffer

fn parts_t<B: Backend, T: Scalar>(b: &B) {
    let mut rng = Rng::new(21);
    let n = 1000;
    let (v, g, h) = (rng.values::<T>(n), rng.values::<T>(n), rng.values::<T>(n));
    let lens = [3, 0, 600, 1, 396];
    let mut p = up(b, &v);
    let (gb, hb) = (up(b, &g), up(b, &h));
    // Each part of p gets axpy with its parts of g (a = 2) and h (a = −0.5), in place.
    b.with_parts(&mut p, &[&gb, &hb], &lens, |ps, sh| {
        assert_eq!(ps.len(), lens.len());
        for (i, part) in ps.iter_mut().enumerate() {
            assert_eq!(b.len(part), lens[i]);
            b.axpy(part, T::of(2.0), &sh[0][i])?;
            b.axpy(part, T::of(-0.5), &sh[1][i])?;
        }
        Ok(())
    })
    .unwrap();
    let mut want = up(b, &v);
    b.axpy(&mut want, T::of(2.0), &gb).unwrap();
    b.axpy(&mut want, T::of(-0.5), &hb).unwrap();
    assert_bitwise("with_parts", &down(b, &p), &down(b, &want));
    assert_bitwise("with_parts leaves shared buffers", &down(b, &gb), &g);
    // A failing `f` still leaves what it wrote, like an operation in place.
    let mut p = up(b, &v);
    let e = b.with_parts(&mut p, &[], &lens, |ps, _| {
        b.fill(&mut ps[2], T::of(7.0))?;
        Err::<(), _>(ire_core::Error::Protocol("stop".into()))
    });
    assert!(e.is_err());
    let got = down(b, &p);
    assert!(got[3..603].iter().all(|&x| x == T::of(7.0)));
    assert_bitwise(
        "with_parts outside the written part",
        &got[603..],
        &v[603..],
    );
    // Lengths that do not add up, or a shared buffer of another length, are refused.
    let mut p = up(b, &v);
    assert!(b.with_parts(&mut p, &[], &[10, 10], |_, _| Ok(())).is_err());
    let short = up(b, &v[..10]);
    assert!(
        b.with_parts(&mut p, &[&short], &lens, |_, _| Ok(()))
            .is_err()
    );
    assert_bitwise("with_parts refused: unchanged", &down(b, &p), &v);
}

/// [`Backend::with_parts`]: parts of one buffer as buffers of their own, written back.
pub fn parts<B: Backend>(b: &B) {
    both_dtypes!(b, parts_t);
}

// ------------------------------------------------------------------ element-wise ops

fn elementwise_t<B: Backend, T: Scalar>(b: &B) {
    let r = Reference;
    let mut rng = Rng::new(7);
    for &n in SIZES {
        let (v1, v2, v3) = (rng.values::<T>(n), rng.values::<T>(n), rng.positive::<T>(n));
        let mask = mask::pack(&rng.mask(n));
        let kappa = T::of(4.0);
        let a = T::of(-0.37);
        // axpy
        let (mut y, x) = (up(b, &v1), up(b, &v2));
        b.axpy(&mut y, a, &x).unwrap();
        let mut ry = up(&r, &v1);
        r.axpy(&mut ry, a, &up(&r, &v2)).unwrap();
        assert_bitwise("axpy", &down(b, &y), ry.as_slice());
        // sam/asam perturb
        let mut p = up(b, &v1);
        b.sam_perturb(&mut p, &x, T::of(0.013)).unwrap();
        let mut rp = up(&r, &v1);
        r.sam_perturb(&mut rp, &up(&r, &v2), T::of(0.013)).unwrap();
        assert_bitwise("sam_perturb", &down(b, &p), rp.as_slice());
        let mut p = up(b, &v1);
        b.asam_perturb(&mut p, &x, T::of(0.013)).unwrap();
        let mut rp = up(&r, &v1);
        r.asam_perturb(&mut rp, &up(&r, &v2), T::of(0.013)).unwrap();
        assert_bitwise("asam_perturb", &down(b, &p), rp.as_slice());
        // ire_boost
        let mut p = up(b, &v1);
        b.ire_boost(&mut p, &x, &up(b, &mask), kappa).unwrap();
        let mut rp = up(&r, &v1);
        r.ire_boost(&mut rp, &up(&r, &v2), &up(&r, &mask), kappa)
            .unwrap();
        assert_bitwise("ire_boost", &down(b, &p), rp.as_slice());
        // ema_*
        for beta in [0.0, 0.9] {
            let beta = T::of(beta);
            let mut h = up(b, &v3);
            b.ema_square(&mut h, &x, beta).unwrap();
            let mut rh = up(&r, &v3);
            r.ema_square(&mut rh, &up(&r, &v2), beta).unwrap();
            assert_bitwise("ema_square", &down(b, &h), rh.as_slice());
            let mut h = up(b, &v3);
            b.ema_abs(&mut h, &x, beta).unwrap();
            let mut rh = up(&r, &v3);
            r.ema_abs(&mut rh, &up(&r, &v2), beta).unwrap();
            assert_bitwise("ema_abs", &down(b, &h), rh.as_slice());
            let mut h = up(b, &v3);
            b.ema_product(&mut h, &x, &up(b, &v1), beta).unwrap();
            let mut rh = up(&r, &v3);
            r.ema_product(&mut rh, &up(&r, &v2), &up(&r, &v1), beta)
                .unwrap();
            assert_bitwise("ema_product", &down(b, &h), rh.as_slice());
        }
        // mask_le, at a threshold that is one of the values (ties)
        let tau = if n > 0 { v1[n / 2] } else { T::zero() };
        let mut m: B::Buffer<u32> = b.alloc(mask::words(n)).unwrap();
        b.mask_le(&up(b, &v1), tau, &mut m).unwrap();
        let mut rm = r.alloc::<u32>(mask::words(n)).unwrap();
        r.mask_le(&up(&r, &v1), tau, &mut rm).unwrap();
        assert_eq!(down(b, &m), rm.0, "mask_le n={n}");
        // sgd (plain, momentum first/later, nesterov), plain and fused IRE
        for (first, nesterov) in [(true, false), (false, false), (false, true)] {
            let s = sgd_scalars::<T>(&mut rng, first, nesterov);
            let mut p = up(b, &v1);
            b.sgd_step(&mut p, &x, &s).unwrap();
            let mut rp = up(&r, &v1);
            r.sgd_step(&mut rp, &up(&r, &v2), &s).unwrap();
            assert_bitwise("sgd_step", &down(b, &p), rp.as_slice());
            let (mut p, mut mb) = (up(b, &v1), up(b, &v3));
            b.sgd_momentum_step(&mut p, &x, &mut mb, &s).unwrap();
            let (mut rp, mut rmb) = (up(&r, &v1), up(&r, &v3));
            r.sgd_momentum_step(&mut rp, &up(&r, &v2), &mut rmb, &s)
                .unwrap();
            assert_bitwise("sgd_momentum_step", &down(b, &p), rp.as_slice());
            assert_bitwise("sgd_momentum_step: buffer", &down(b, &mb), rmb.as_slice());
            // Fused IRE versions equal step-then-boost on the reference.
            let mut p = up(b, &v1);
            b.sgd_ire_step(&mut p, &x, &s, &up(b, &mask), kappa)
                .unwrap();
            let mut rp = up(&r, &v1);
            r.sgd_step(&mut rp, &up(&r, &v2), &s).unwrap();
            r.ire_boost(&mut rp, &up(&r, &v1), &up(&r, &mask), kappa)
                .unwrap();
            assert_bitwise("sgd_ire_step", &down(b, &p), rp.as_slice());
            let (mut p, mut mb) = (up(b, &v1), up(b, &v3));
            b.sgd_momentum_ire_step(&mut p, &x, &mut mb, &s, &up(b, &mask), kappa)
                .unwrap();
            let (mut rp, mut rmb) = (up(&r, &v1), up(&r, &v3));
            r.sgd_momentum_step(&mut rp, &up(&r, &v2), &mut rmb, &s)
                .unwrap();
            r.ire_boost(&mut rp, &up(&r, &v1), &up(&r, &mask), kappa)
                .unwrap();
            assert_bitwise("sgd_momentum_ire_step", &down(b, &p), rp.as_slice());
            assert_bitwise(
                "sgd_momentum_ire_step: buffer",
                &down(b, &mb),
                rmb.as_slice(),
            );
        }
        // adamw, plain and fused
        for t in [1, 2, 1000] {
            let s = adamw_scalars::<T>(t);
            let (mut p, mut m, mut v) = (up(b, &v1), up(b, &v2), up(b, &v3));
            b.adamw_step(&mut p, &x, &mut m, &mut v, &s).unwrap();
            let (mut rp, mut rm, mut rv) = (up(&r, &v1), up(&r, &v2), up(&r, &v3));
            r.adamw_step(&mut rp, &up(&r, &v2), &mut rm, &mut rv, &s)
                .unwrap();
            assert_bitwise("adamw_step", &down(b, &p), rp.as_slice());
            assert_bitwise("adamw_step: m", &down(b, &m), rm.as_slice());
            assert_bitwise("adamw_step: v", &down(b, &v), rv.as_slice());
            let (mut p, mut m, mut v) = (up(b, &v1), up(b, &v2), up(b, &v3));
            b.adamw_ire_step(&mut p, &x, &mut m, &mut v, &s, &up(b, &mask), kappa)
                .unwrap();
            let (mut rp, mut rm, mut rv) = (up(&r, &v1), up(&r, &v2), up(&r, &v3));
            r.adamw_step(&mut rp, &up(&r, &v2), &mut rm, &mut rv, &s)
                .unwrap();
            r.ire_boost(&mut rp, &up(&r, &v1), &up(&r, &mask), kappa)
                .unwrap();
            assert_bitwise("adamw_ire_step", &down(b, &p), rp.as_slice());
            assert_bitwise("adamw_ire_step: m", &down(b, &m), rm.as_slice());
            assert_bitwise("adamw_ire_step: v", &down(b, &v), rv.as_slice());
        }
    }
}

/// Every element-wise op, bit for bit against the reference, on [`SIZES`].
pub fn elementwise<B: Backend>(b: &B) {
    both_dtypes!(b, elementwise_t);
}

// ------------------------------------------------------------------ the packed mask

/// Lengths the packed mask is checked on: empty, within one word, word boundaries, and long
/// tensors whose length is not a multiple of 32 (more are drawn at random).
const MASK_SIZES: &[usize] = &[0, 1, 31, 32, 33, 63, 64, 65, 1000, 4099, 70_001];

/// The tail of a packed mask: the bits of its last word past the coordinates are zero.
fn assert_tail_zero(what: &str, words: &[u32], n: usize) {
    assert_eq!(
        words.len(),
        mask::words(n),
        "{what}: number of words for n={n}"
    );
    if let Some(&last) = words.last() {
        assert_eq!(
            last & !mask::tail_bits(n),
            0,
            "{what}: unused bits of n={n}"
        );
    }
}

fn packed_mask_t<B: Backend, T: Scalar>(b: &B) {
    let mut rng = Rng::new(32);
    let random: Vec<usize> = (0..4).map(|_| (rng.next_u64() % 3000) as usize).collect();
    for &n in MASK_SIZES.iter().chain(&random) {
        // Any byte value: 0 is sharp, anything else flat.
        let raw: Vec<u8> = (0..n).map(|_| (rng.next_u64() % 4) as u8 * 85).collect();
        let bytes: Vec<u8> = raw.iter().map(|&x| u8::from(x != 0)).collect();
        let flat = bytes.iter().filter(|&&x| x == 1).count();
        // pack on the device → the canonical layout; unpack → the byte mask.
        let mut words: B::Buffer<u32> = b.alloc(mask::words(n)).unwrap();
        b.mask_pack(&up(b, &raw), &mut words).unwrap();
        let got = down(b, &words);
        assert_eq!(got, mask::pack(&raw), "mask_pack n={n}");
        assert_tail_zero("mask_pack", &got, n);
        let mut back: B::Buffer<u8> = b.alloc(n).unwrap();
        b.mask_unpack(&words, &mut back).unwrap();
        assert_eq!(down(b, &back), bytes, "pack then unpack n={n}");
        assert_eq!(mask::unpack(&got, n).unwrap(), bytes, "host unpack n={n}");
        assert_eq!(b.count_flat(&words).unwrap(), flat, "count_flat n={n}");
        // The rule h ≤ τ, packed, equals the byte rule packed (ties at τ flat).
        let h = rng.values::<T>(n);
        let tau = if n > 0 { h[n / 3] } else { T::zero() };
        let mut m: B::Buffer<u32> = b.alloc(mask::words(n)).unwrap();
        b.upload(&mut m, &vec![u32::MAX; mask::words(n)]).unwrap();
        b.mask_le(&up(b, &h), tau, &mut m).unwrap();
        let rule: Vec<u8> = h.iter().map(|&x| f::mask_le(x, tau)).collect();
        let got = down(b, &m);
        assert_eq!(got, mask::pack(&rule), "mask_le n={n}");
        assert_tail_zero("mask_le", &got, n);
        // Through Ire: set_mask from host bytes, read back as bytes; flat count.
        let params = vec![up(b, &vec![T::zero(); n]), up(b, &[T::zero(); 33])];
        let mut ire = Ire::new(
            Sgd::<B, T>::new(SgdConfig::default()).unwrap(),
            ire_manual(),
        )
        .unwrap();
        let other: Vec<u8> = (0..33).map(|i| (i % 3 == 0) as u8).collect();
        ire.set_mask(b, &params, &[&raw, &other]).unwrap();
        assert_eq!(
            ire.mask(b).unwrap(),
            vec![bytes.clone(), other.clone()],
            "Ire mask n={n}"
        );
        assert_eq!(
            ire.flat_count(b).unwrap(),
            flat + 11,
            "Ire flat count n={n}"
        );
        assert_tail_zero("Ire packed mask", &down(b, &ire.packed_mask()[0]), n);
        let mut out: B::Buffer<u8> = b.alloc(n).unwrap();
        ire.mask_into(b, 0, &mut out).unwrap();
        assert_eq!(down(b, &out), bytes, "Ire mask_into n={n}");
    }
    // Word counts that do not fit the length are errors, not panics.
    let mut short: B::Buffer<u32> = b.alloc(1).unwrap();
    assert!(b.mask_pack(&up(b, &[1u8; 33]), &mut short).is_err());
    let mut out: B::Buffer<u8> = b.alloc(33).unwrap();
    assert!(b.mask_unpack(&short, &mut out).is_err());
    assert!(
        b.mask_le(&up(b, &[T::zero(); 33]), T::zero(), &mut short)
            .is_err()
    );
    let mut p = up(b, &[T::zero(); 33]);
    assert!(
        b.ire_boost(&mut p, &up(b, &[T::zero(); 33]), &short, T::one())
            .is_err()
    );
}

fn ire_manual() -> IreConfig {
    IreConfig {
        estimator: Estimator::Manual,
        ..IreConfig::default()
    }
}

/// The packed mask ([`ire_core::mask`]): pack and unpack on the backend round-trip the byte
/// mask (lengths 0, 1, 31, 32, 33, 1000, … and random), the unused bits stay zero, `mask_le`
/// and the flat count agree with the byte rule, and `Ire`'s byte views read what was set.
pub fn packed_mask<B: Backend>(b: &B) {
    both_dtypes!(b, packed_mask_t);
}

fn fused_vs_byte_mask_t<B: Backend, T: Scalar>(b: &B) {
    let mut rng = Rng::new(33);
    let random: Vec<usize> = (0..3)
        .map(|_| 1 + (rng.next_u64() % 5000) as usize)
        .collect();
    let kappa = T::of(3.0);
    for &n in [1usize, 31, 33, 95, 1000, 4099, 70_001]
        .iter()
        .chain(&random)
    {
        let (p0, g, m0, v0) = (
            rng.values::<T>(n),
            rng.values::<T>(n),
            rng.values::<T>(n),
            rng.positive::<T>(n),
        );
        let bytes = rng.mask(n);
        let words = up(b, &mask::pack(&bytes));
        let gb = up(b, &g);
        // The byte-mask formula: θ_base from the base formula, boosted where the byte is 1.
        let boost = |base: T, old: T, i: usize| f::boost(base, old, bytes[i], kappa);
        for (first, nesterov) in [(true, false), (false, true)] {
            let s = sgd_scalars::<T>(&mut rng, first, nesterov);
            let mut p = up(b, &p0);
            b.sgd_ire_step(&mut p, &gb, &s, &words, kappa).unwrap();
            let want: Vec<T> = (0..n)
                .map(|i| boost(f::sgd(p0[i], g[i], &s), p0[i], i))
                .collect();
            assert_bitwise(&format!("sgd_ire_step n={n}"), &down(b, &p), &want);
            let (mut p, mut mb) = (up(b, &p0), up(b, &m0));
            b.sgd_momentum_ire_step(&mut p, &gb, &mut mb, &s, &words, kappa)
                .unwrap();
            let (want, want_b): (Vec<T>, Vec<T>) = (0..n)
                .map(|i| {
                    let (base, b2) = f::sgd_momentum(p0[i], g[i], m0[i], &s);
                    (boost(base, p0[i], i), b2)
                })
                .unzip();
            assert_bitwise(&format!("sgd_momentum_ire_step n={n}"), &down(b, &p), &want);
            assert_bitwise(
                &format!("sgd_momentum_ire_step buffer n={n}"),
                &down(b, &mb),
                &want_b,
            );
        }
        for t in [1, 7] {
            let s = adamw_scalars::<T>(t);
            let (mut p, mut m, mut v) = (up(b, &p0), up(b, &m0), up(b, &v0));
            b.adamw_ire_step(&mut p, &gb, &mut m, &mut v, &s, &words, kappa)
                .unwrap();
            let mut want = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..n {
                let (base, m2, v2) = f::adamw(p0[i], g[i], m0[i], v0[i], &s);
                want.0.push(boost(base, p0[i], i));
                want.1.push(m2);
                want.2.push(v2);
            }
            assert_bitwise(&format!("adamw_ire_step n={n}"), &down(b, &p), &want.0);
            assert_bitwise(&format!("adamw_ire_step m n={n}"), &down(b, &m), &want.1);
            assert_bitwise(&format!("adamw_ire_step v n={n}"), &down(b, &v), &want.2);
        }
        // The unfused boost (SAM-IRE's step, external bases) and SAM-IRE's perturbation
        // followed by the boosted SGD step.
        let mut p = up(b, &p0);
        b.ire_boost(&mut p, &up(b, &m0), &words, kappa).unwrap();
        let want: Vec<T> = (0..n).map(|i| boost(p0[i], m0[i], i)).collect();
        assert_bitwise(&format!("ire_boost n={n}"), &down(b, &p), &want);
        let rho = T::of(0.05);
        let mut p = up(b, &p0);
        b.sam_perturb(&mut p, &gb, rho).unwrap();
        let s = sgd_scalars::<T>(&mut rng, false, false);
        b.sgd_ire_step(&mut p, &gb, &s, &words, kappa).unwrap();
        let want: Vec<T> = (0..n)
            .map(|i| {
                let q = f::sam_perturb(p0[i], g[i], rho);
                boost(f::sgd(q, g[i], &s), q, i)
            })
            .collect();
        assert_bitwise(
            &format!("sam perturb + sgd_ire_step n={n}"),
            &down(b, &p),
            &want,
        );
    }
}

/// Every fused step over the packed mask equals, bit for bit, the byte-mask formula
/// (`formulas::boost` with one byte per coordinate) on random data with lengths that are not
/// multiples of 32.
pub fn fused_vs_byte_mask<B: Backend>(b: &B) {
    both_dtypes!(b, fused_vs_byte_mask_t);
}

// ------------------------------------------------------------------ reductions and selection

fn reductions_t<B: Backend, T: Scalar>(b: &B) {
    let mut rng = Rng::new(11);
    for &n in SIZES.iter().chain(&[100_003usize]) {
        let (v1, v2) = (rng.values::<T>(n), rng.values::<T>(n));
        let want = ire_core::host::sum_squares(&v1);
        let got = b.sum_squares(&up(b, &v1)).unwrap();
        assert_close("sum_squares", &[got], &[want], rel_tol::<T>("sum_squares"));
        let want = ire_core::host::sum_squares_product(&v1, &v2);
        let got = b.sum_squares_product(&up(b, &v1), &up(b, &v2)).unwrap();
        assert_close(
            "sum_squares_product",
            &[got],
            &[want],
            rel_tol::<T>("sum_squares_product"),
        );
        let mut bad = v1.clone();
        for i in (0..n).step_by(97) {
            bad[i] = if i % 2 == 0 { T::nan() } else { T::infinity() };
        }
        let count = bad.iter().filter(|x| !x.is_finite()).count();
        assert_eq!(
            b.count_non_finite(&up(b, &bad)).unwrap(),
            count,
            "count_non_finite n={n}"
        );
    }
}

/// Sums of squares within [`TOLERANCES`]; counts exact.
pub fn reductions<B: Backend>(b: &B) {
    both_dtypes!(b, reductions_t);
}

fn selection_t<B: Backend, T: Scalar>(b: &B) {
    let mut rng = Rng::new(13);
    // Several buffers of awkward sizes (one empty), with ties and both zeros.
    for sizes in [
        vec![1usize],
        vec![5, 0, 3],
        vec![257, 1, 1000],
        vec![4099, 64, 7],
        vec![100_003],
    ] {
        let parts: Vec<Vec<T>> = tied_parts(&mut rng, &sizes);
        let bufs: Vec<B::Buffer<T>> = parts.iter().map(|p| up(b, p)).collect();
        let refs: Vec<&B::Buffer<T>> = bufs.iter().collect();
        let mut all: Vec<T> = parts.concat();
        let n = all.len();
        for k in [1, 2, n / 3 + 1, n / 2 + 1, n.saturating_sub(1).max(1), n] {
            if k > n {
                continue;
            }
            let want = ire_core::host::kth_largest(&mut all, k).unwrap();
            let got = b.kth_largest(&refs, k).unwrap();
            assert_bitwise(&format!("kth_largest k={k} of {n}"), &[got], &[want]);
        }
        assert!(b.kth_largest(&refs, 0).is_err(), "k = 0 must be an error");
        assert!(
            b.kth_largest(&refs, n + 1).is_err(),
            "k > N must be an error"
        );
    }
    let with_nan = up(b, &[T::one(), T::nan(), T::zero()]);
    assert!(
        b.kth_largest(&[&with_nan], 1).is_err(),
        "NaN must be rejected"
    );
}

/// The global k-th largest over several buffers: exact, ties and signed zeros included.
pub fn selection<B: Backend>(b: &B) {
    both_dtypes!(b, selection_t);
}

// ------------------------------------------------------------------ IRE mask rule

fn mask_rule_t<B: Backend, T: Scalar>(b: &B) {
    // N = 10 over two tensors; the estimator gradient g gives h = g².
    let g1 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0].map(T::of);
    let g2 = [7.0, 8.0, 9.0, 10.0].map(T::of);
    let params: Vec<B::Buffer<T>> = vec![up(b, &[T::zero(); 6]), up(b, &[T::zero(); 4])];
    let flat = |gamma: f64, g: (&[T], &[T])| -> (Vec<u8>, Vec<u8>) {
        let cfg = IreConfig {
            gamma,
            ..IreConfig::default()
        };
        let mut ire = Ire::new(Sgd::<B, T>::new(SgdConfig::default()).unwrap(), cfg).unwrap();
        let est = vec![up(b, g.0), up(b, g.1)];
        let grads = vec![up(b, &[T::zero(); 6]), up(b, &[T::zero(); 4])];
        ire.refresh(b, &params, &grads, Some(&EstimateInput::Gradient(&est)))
            .unwrap();
        (
            ire.mask(b).unwrap()[0].clone(),
            ire.mask(b).unwrap()[1].clone(),
        )
    };
    // γ = 0.5: k = 5, τ = 6² → flat iff h ≤ 36: six coordinates (N − k + 1, the official quirk).
    assert_eq!(flat(0.5, (&g1, &g2)), (vec![1; 6], vec![0; 4]));
    // γ = 0.9: k = 1, τ = 100 → all flat.
    assert_eq!(flat(0.9, (&g1, &g2)), (vec![1; 6], vec![1; 4]));
    // γ = 0.8: k = 2, τ = 81 → nine flat.
    assert_eq!(flat(0.8, (&g1, &g2)), (vec![1; 6], vec![1, 1, 1, 0]));
    // γ = 1 → all flat; γ = 0 → none flat.
    assert_eq!(flat(1.0, (&g1, &g2)), (vec![1; 6], vec![1; 4]));
    assert_eq!(flat(0.0, (&g1, &g2)), (vec![0; 6], vec![0; 4]));
    // Ties at τ are flat: h = (1,1,1,1,1,1 | 2,2,2,2), k = 5 → τ = 1 → six flat.
    let t1 = [T::one(); 6];
    let t2 = [T::of(core::f64::consts::SQRT_2); 4].map(|x| x);
    let (a, c) = flat(0.5, (&t1, &t2));
    assert_eq!(a, vec![1; 6]);
    assert_eq!(c, vec![0; 4]);
    // All equal: every coordinate ties at τ, all flat whatever γ > 0.
    assert_eq!(
        flat(0.3, (&[T::one(); 6], &[T::one(); 4])),
        (vec![1; 6], vec![1; 4])
    );
    // A non-finite estimate is refused, the mask kept.
    let cfg = IreConfig {
        gamma: 0.5,
        ..IreConfig::default()
    };
    let mut ire = Ire::new(Sgd::<B, T>::new(SgdConfig::default()).unwrap(), cfg).unwrap();
    let grads = vec![up(b, &[T::zero(); 6]), up(b, &[T::zero(); 4])];
    let est = vec![up(b, &g1), up(b, &g2)];
    ire.refresh(b, &params, &grads, Some(&EstimateInput::Gradient(&est)))
        .unwrap();
    let before = (
        ire.mask(b).unwrap()[0].clone(),
        ire.mask(b).unwrap()[1].clone(),
        down(b, &ire.estimate()[1]),
    );
    let mut bad = g2;
    bad[2] = T::nan();
    let est_bad = vec![up(b, &g1), up(b, &bad)];
    let err = ire.refresh(b, &params, &grads, Some(&EstimateInput::Gradient(&est_bad)));
    assert!(
        matches!(err, Err(ire_core::Error::NonFinite { .. })),
        "{err:?}"
    );
    let after = (
        ire.mask(b).unwrap()[0].clone(),
        ire.mask(b).unwrap()[1].clone(),
        down(b, &ire.estimate()[1]),
    );
    assert_eq!(before.0, after.0);
    assert_eq!(before.1, after.1);
    assert_bitwise("estimate kept", &after.2, &before.2);
}

/// The official threshold rule, its ties and its edge cases, through `Ire`.
pub fn mask_rule<B: Backend>(b: &B) {
    both_dtypes!(b, mask_rule_t);
}

// ------------------------------------------------------------------ threshold rules

fn threshold_rules_t<B: Backend, T: Scalar>(b: &B) {
    use ire_core::optim::ThresholdRule::{self, AdmIre, FlatKthSmallest, SharpTopK};
    // h = |ĝ| (β = 0) over two tensors, N = 10, with ties:
    // ascending 1 1 2 3 3 4 5 5 6 9, descending 9 6 5 5 4 3 3 2 1 1.
    let g1 = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0].map(T::of);
    let g2 = [2.0, 6.0, 5.0, 3.0].map(T::of);
    let h: Vec<f64> = [&g1[..], &g2[..]]
        .concat()
        .iter()
        .map(|x| x.as_f64())
        .collect();
    let params: Vec<B::Buffer<T>> = vec![up(b, &[T::zero(); 6]), up(b, &[T::zero(); 4])];
    let grads = vec![up(b, &[T::zero(); 6]), up(b, &[T::zero(); 4])];
    let est = vec![up(b, &g1), up(b, &g2)];
    // (rule, γ, τ) with τ = None for "no selection" and `all` saying which way.
    // Sharp: k = ⌊(1−γ)N⌋, τ = k-th largest. Flat: m = ⌊γN⌋, τ = m-th smallest.
    #[derive(Debug)]
    enum Want {
        Tau(f64),
        All,
        None,
    }
    let table: &[(ThresholdRule, f64, Want)] = &[
        (SharpTopK, 0.5, Want::Tau(4.0)),  // k = 5
        (SharpTopK, 0.7, Want::Tau(5.0)),  // k = 3, ties at 5 flat
        (SharpTopK, 0.25, Want::Tau(3.0)), // k = 7
        (SharpTopK, 0.1, Want::Tau(1.0)),  // k = 9
        (SharpTopK, 0.95, Want::All),      // k = 0
        (SharpTopK, 1.0, Want::All),
        (SharpTopK, 0.0, Want::None),            // k = N
        (FlatKthSmallest, 0.5, Want::Tau(3.0)),  // m = 5
        (FlatKthSmallest, 0.7, Want::Tau(5.0)),  // m = 7
        (FlatKthSmallest, 0.25, Want::Tau(1.0)), // m = 2
        (FlatKthSmallest, 0.1, Want::Tau(1.0)),  // m = 1
        (FlatKthSmallest, 0.95, Want::Tau(6.0)), // m = 9
        (FlatKthSmallest, 1.0, Want::Tau(9.0)),  // m = N: all flat
        (FlatKthSmallest, 0.0, Want::None),      // m = 0
        (AdmIre, 0.5, Want::Tau(3.0)),           // r = 0.5: flat rule
        (AdmIre, 0.7, Want::Tau(5.0)),           // r = 0.3: sharp rule
        (AdmIre, 0.25, Want::Tau(1.0)),          // r = 0.75: flat rule
        (AdmIre, 0.1, Want::Tau(1.0)),           // r = 0.9: flat rule, m = 1
        (AdmIre, 0.95, Want::All),               // r = 0.05: sharp rule, k = 0
        (AdmIre, 1.0, Want::All),
        (AdmIre, 0.0, Want::None), // r = 1: flat rule, m = 0
    ];
    for (rule, gamma, want) in table {
        let cfg = IreConfig {
            gamma: *gamma,
            estimator: Estimator::AbsGradient,
            threshold: *rule,
            ..IreConfig::default()
        };
        let mut ire = Ire::new(Sgd::<B, T>::new(SgdConfig::default()).unwrap(), cfg).unwrap();
        let tau = ire
            .refresh(b, &params, &grads, Some(&EstimateInput::Gradient(&est)))
            .unwrap();
        let mask: Vec<u8> = [
            ire.mask(b).unwrap()[0].clone(),
            ire.mask(b).unwrap()[1].clone(),
        ]
        .concat();
        let expected: Vec<u8> = match want {
            Want::Tau(t) => h.iter().map(|&x| (x <= *t) as u8).collect(),
            Want::All => vec![1; 10],
            Want::None => vec![0; 10],
        };
        let what = format!("{rule:?} γ = {gamma}");
        assert_eq!(mask, expected, "{what}: mask");
        match want {
            Want::Tau(t) => assert_eq!(tau, Some(*t), "{what}: τ"),
            _ => assert_eq!(tau, None, "{what}: no selection"),
        }
        assert_eq!(
            ire.flat_count(b).unwrap(),
            expected.iter().filter(|&&x| x == 1).count(),
            "{what}: flat count"
        );
    }
}

/// Every official threshold rule (sharp top-k, flat k-th smallest, AdmIRE's switch) on
/// hand-made data with ties, γ ∈ {0, 0.5, 1} and boundary counts: exact masks and τ.
pub fn threshold_rules<B: Backend>(b: &B) {
    both_dtypes!(b, threshold_rules_t);
}

// ------------------------------------------------------------------ groups and step forms

/// AdmIRE and SGD-IRE over three tensors in two groups (the second without IRE, without
/// weight decay, at half the learning rate), stepped four ways: whole steps, tensor by
/// tensor, and (AdamW) as an external base step boosted afterwards. Returns each way's θ.
fn grouped_runs<B: Backend, T: Scalar>(b: &B) -> Vec<(String, Vec<Vec<T>>)> {
    use ire_core::optim::{External, ParamGroup, ParamGroups};
    let sizes: &[usize] = &[300, 17, 64];
    let groups = || {
        ParamGroups::new(
            vec![
                ParamGroup::default(),
                ParamGroup {
                    lr_scale: 0.5,
                    weight_decay: Some(0.0),
                    ire: false,
                },
            ],
            vec![0, 1, 0],
        )
        .unwrap()
    };
    let cfg = IreConfig {
        gamma: 0.7,
        refresh_every: 3,
        warmup_steps: 1,
        ..IreConfig::default()
    };
    let adamw = || {
        AdamW::<B, T>::new(AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        })
        .unwrap()
    };
    let sgd = || {
        Sgd::<B, T>::new(SgdConfig {
            momentum: 0.9,
            weight_decay: 1e-3,
            ..SgdConfig::default()
        })
        .unwrap()
    };
    let init = || -> Vec<B::Buffer<T>> {
        let mut rng = Rng::new(5);
        sizes.iter().map(|&n| up(b, &rng.values::<T>(n))).collect()
    };
    let tensors = |t: u64, salt: u64| -> Vec<B::Buffer<T>> {
        grads_at::<T>(t, sizes, salt)
            .iter()
            .map(|v| up(b, v))
            .collect()
    };
    let inputs = |t: u64| (tensors(t, 0), tensors(t, 7));
    let lr = |t: u64| 0.01 * (1.0 - t as f64 / 20.0);
    let steps = 8u64;
    let mut out = Vec::new();

    // AdmIRE, whole steps.
    let ire = Ire::new(adamw(), cfg)
        .unwrap()
        .with_groups(groups())
        .unwrap();
    let p = whole_steps(b, ire, init(), steps, &inputs, &lr);
    out.push((
        "admire whole".into(),
        p.iter().map(|x| down(b, x)).collect(),
    ));

    // AdmIRE, tensor by tensor (a framework that hands out one tensor at a time).
    let gr = groups();
    let mut ire = Ire::new(adamw(), cfg)
        .unwrap()
        .with_groups(groups())
        .unwrap();
    let mut p = init();
    for t in 0..steps {
        let (g, e) = inputs(t);
        let est = ire.refresh_due().then_some(EstimateInput::Gradient(&e));
        ire.begin_step(
            b,
            sizes,
            IreStep {
                lr: lr(t),
                estimate: est,
            },
        )
        .unwrap();
        for (i, (x, gi)) in p.iter_mut().zip(&g).enumerate() {
            ire.step_tensor(b, i, x, gi, gr.tensor_step(i, lr(t)))
                .unwrap();
        }
        ire.end_step().unwrap();
    }
    out.push((
        "admire per tensor".into(),
        p.iter().map(|x| down(b, x)).collect(),
    ));

    // AdmIRE around an AdamW stepped by someone else (unfused: copy, step, boost).
    let mut ire = Ire::new(External, cfg)
        .unwrap()
        .with_groups(groups())
        .unwrap();
    let mut base = adamw();
    let mut p = init();
    for t in 0..steps {
        let (g, e) = inputs(t);
        let est = ire.refresh_due().then_some(EstimateInput::Gradient(&e));
        ire.begin_external(
            b,
            &p,
            IreStep {
                lr: lr(t),
                estimate: est,
            },
        )
        .unwrap();
        base.step_grouped(b, &mut p, &g, lr(t), Some(&gr)).unwrap();
        ire.finish_external(b, &mut p).unwrap();
    }
    out.push((
        "admire external".into(),
        p.iter().map(|x| down(b, x)).collect(),
    ));

    // SGD-IRE with momentum, whole steps.
    let ire = Ire::new(sgd(), cfg).unwrap().with_groups(groups()).unwrap();
    let p = whole_steps(b, ire, init(), steps, &inputs, &lr);
    out.push((
        "sgd-ire whole".into(),
        p.iter().map(|x| down(b, x)).collect(),
    ));

    // The tensor outside IRE follows its plain base optimizer at its group's settings.
    let mut plain = sgd();
    let mut q = init();
    for t in 0..steps {
        let (g, _) = inputs(t);
        plain.step_grouped(b, &mut q, &g, lr(t), Some(&gr)).unwrap();
    }
    out.push(("sgd plain".into(), q.iter().map(|x| down(b, x)).collect()));
    out
}

fn groups_t<B: Backend, T: Scalar>(b: &B) {
    let mine = grouped_runs::<B, T>(b);
    let oracle = grouped_runs::<Reference, T>(&Reference);
    for ((what, got), (_, want)) in mine.iter().zip(&oracle) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_bitwise(&format!("{what}, tensor {i}"), g, w);
        }
    }
    // Every way of stepping AdmIRE gives the same bits (the fused kernel equals copy, step,
    // boost), and the tensor outside IRE moved exactly as under its plain optimizer.
    for (a, c) in [(0, 1), (0, 2)] {
        for (i, (x, y)) in mine[a].1.iter().zip(&mine[c].1).enumerate() {
            assert_bitwise(&format!("{} vs {}, tensor {i}", mine[a].0, mine[c].0), x, y);
        }
    }
    assert_bitwise("sgd-ire tensor 1 (no IRE)", &mine[3].1[1], &mine[4].1[1]);
    assert!(
        mine[3].1[0] != mine[4].1[0],
        "IRE must move the participating tensors"
    );
}

/// `steps` whole steps of `ire` from `p`: step `t` takes the gradients and estimator
/// gradients `inputs(t)` at learning rate `lr(t)`, estimating when a refresh is due.
#[allow(clippy::type_complexity)]
fn whole_steps<B: Backend, T: Scalar, O: Optimizer<B, T>>(
    b: &B,
    mut ire: Ire<B, T, O>,
    mut p: Vec<B::Buffer<T>>,
    steps: u64,
    inputs: &dyn Fn(u64) -> (Vec<B::Buffer<T>>, Vec<B::Buffer<T>>),
    lr: &dyn Fn(u64) -> f64,
) -> Vec<B::Buffer<T>> {
    for t in 0..steps {
        let (g, e) = inputs(t);
        let estimate = ire.refresh_due().then_some(EstimateInput::Gradient(&e));
        let step = IreStep {
            lr: lr(t),
            estimate,
        };
        ire.step(b, &mut p, &g, step).unwrap();
    }
    p
}

/// Parameter groups (learning-rate scale, weight decay, IRE participation with one global
/// threshold) and the three ways to step (whole, per tensor, external base): all equal the
/// reference bit for bit, and each other.
pub fn groups_and_step_forms<B: Backend>(b: &B) {
    both_dtypes!(b, groups_t);
}

// ------------------------------------------------------------------ trajectories

/// Gradient tensors of step `t`, the same on every backend.
fn grads_at<T: Scalar>(t: u64, sizes: &[usize], salt: u64) -> Vec<Vec<T>> {
    let mut rng = Rng::new(1000 + t * 31 + salt);
    sizes.iter().map(|&n| rng.values::<T>(n)).collect()
}

const TRAJ_SIZES: &[usize] = &[257, 1, 64, 1000];
const TRAJ_STEPS: u64 = 20;

fn run_trajectory<B: Backend, T: Scalar, O: Optimizer<B, T>>(
    b: &B,
    mut opt: O,
    kind: &str,
) -> Vec<Vec<T>> {
    let mut rng = Rng::new(99);
    let init: Vec<Vec<T>> = TRAJ_SIZES.iter().map(|&n| rng.values::<T>(n)).collect();
    let mut params: Vec<B::Buffer<T>> = init.iter().map(|v| up(b, v)).collect();
    for t in 0..TRAJ_STEPS {
        let lr = 0.05 * (1.0 - t as f64 / 40.0);
        let g: Vec<B::Buffer<T>> = grads_at::<T>(t, TRAJ_SIZES, 0)
            .iter()
            .map(|v| up(b, v))
            .collect();
        opt.step(b, &mut params, &g, lr)
            .unwrap_or_else(|e| panic!("{kind} step {t}: {e}"));
    }
    params.iter().map(|p| down(b, p)).collect()
}

fn run_ire_trajectory<B: Backend, T: Scalar, O: Optimizer<B, T>>(
    b: &B,
    base: O,
    cfg: IreConfig,
) -> Vec<Vec<T>> {
    let mut rng = Rng::new(99);
    let init: Vec<Vec<T>> = TRAJ_SIZES.iter().map(|&n| rng.values::<T>(n)).collect();
    let mut params: Vec<B::Buffer<T>> = init.iter().map(|v| up(b, v)).collect();
    let mut ire = Ire::new(base, cfg).unwrap();
    for t in 0..TRAJ_STEPS {
        let lr = 0.05 * (1.0 - t as f64 / 40.0);
        let g: Vec<B::Buffer<T>> = grads_at::<T>(t, TRAJ_SIZES, 0)
            .iter()
            .map(|v| up(b, v))
            .collect();
        let est: Vec<B::Buffer<T>> = grads_at::<T>(t, TRAJ_SIZES, 7)
            .iter()
            .map(|v| up(b, v))
            .collect();
        let ctx = IreStep {
            lr,
            estimate: ire.refresh_due().then_some(EstimateInput::Gradient(&est)),
        };
        ire.step(b, &mut params, &g, ctx)
            .unwrap_or_else(|e| panic!("IRE step {t}: {e}"));
    }
    params.iter().map(|p| down(b, p)).collect()
}

fn run_sam_trajectory<B: Backend, T: Scalar>(
    b: &B,
    adaptive: bool,
    ire: Option<IreConfig>,
) -> Vec<Vec<T>> {
    let mut rng = Rng::new(99);
    let init: Vec<Vec<T>> = TRAJ_SIZES.iter().map(|&n| rng.values::<T>(n)).collect();
    let mut params: Vec<B::Buffer<T>> = init.iter().map(|v| up(b, v)).collect();
    let base = Sgd::<B, T>::new(SgdConfig {
        momentum: 0.9,
        weight_decay: 5e-4,
        ..SgdConfig::default()
    })
    .unwrap();
    let sam = Sam::new(
        base,
        SamConfig {
            rho: if adaptive { 2.0 } else { 0.05 },
            adaptive,
        },
    )
    .unwrap();
    match ire {
        None => {
            let mut sam = sam;
            for t in 0..TRAJ_STEPS {
                let mut g: Vec<B::Buffer<T>> = grads_at::<T>(t, TRAJ_SIZES, 0)
                    .iter()
                    .map(|v| up(b, v))
                    .collect();
                sam.step_with(b, &mut params, &mut g, 0.05, |_, gp| {
                    for (x, v) in gp.iter_mut().zip(grads_at::<T>(t, TRAJ_SIZES, 3)) {
                        b.upload(x, &v)?;
                    }
                    Ok(())
                })
                .unwrap();
            }
        }
        Some(cfg) => {
            let mut ire = Ire::new(sam, cfg).unwrap();
            for t in 0..TRAJ_STEPS {
                let mut g: Vec<B::Buffer<T>> = grads_at::<T>(t, TRAJ_SIZES, 0)
                    .iter()
                    .map(|v| up(b, v))
                    .collect();
                let est: Vec<B::Buffer<T>> = grads_at::<T>(t, TRAJ_SIZES, 7)
                    .iter()
                    .map(|v| up(b, v))
                    .collect();
                let ctx = IreStep {
                    lr: 0.05,
                    estimate: ire.refresh_due().then_some(EstimateInput::Gradient(&est)),
                };
                ire.sam_step_with(b, &mut params, &mut g, ctx, |_, gp| {
                    for (x, v) in gp.iter_mut().zip(grads_at::<T>(t, TRAJ_SIZES, 3)) {
                        b.upload(x, &v)?;
                    }
                    Ok(())
                })
                .unwrap();
            }
        }
    }
    params.iter().map(|p| down(b, p)).collect()
}

fn ire_cfg(estimator: Estimator, schedule: KappaSchedule) -> IreConfig {
    IreConfig {
        kappa: 3.0,
        gamma: 0.6,
        refresh_every: 4,
        warmup_steps: 3,
        beta: 0.5,
        kappa_schedule: schedule,
        estimator,
        ..IreConfig::default()
    }
}

fn trajectories_t<B: Backend, T: Scalar>(b: &B) {
    let r = Reference;
    let sgd_cfgs = [
        SgdConfig::default(),
        SgdConfig {
            momentum: 0.9,
            dampening: 0.1,
            weight_decay: 5e-4,
            nesterov: false,
        },
        SgdConfig {
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 5e-4,
            nesterov: true,
        },
    ];
    for cfg in sgd_cfgs {
        let got = run_trajectory(b, Sgd::<B, T>::new(cfg).unwrap(), "sgd");
        let want = run_trajectory(&r, Sgd::<Reference, T>::new(cfg).unwrap(), "sgd");
        for (g, w) in got.iter().zip(&want) {
            assert_bitwise(&format!("SGD trajectory {cfg:?}"), g, w);
        }
    }
    let acfg = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let got = run_trajectory(b, AdamW::<B, T>::new(acfg).unwrap(), "adamw");
    let want = run_trajectory(&r, AdamW::<Reference, T>::new(acfg).unwrap(), "adamw");
    for (g, w) in got.iter().zip(&want) {
        assert_bitwise("AdamW trajectory", g, w);
    }
    for (est, sched) in [
        (Estimator::SquaredGradient, KappaSchedule::Constant),
        (
            Estimator::AbsGradient,
            KappaSchedule::ProportionalToLr { lr_max: 0.05 },
        ),
        (Estimator::SquaredTrainingGradient, KappaSchedule::Constant),
    ] {
        let cfg = ire_cfg(est, sched);
        let got = run_ire_trajectory(b, Sgd::<B, T>::new(sgd_cfgs[1]).unwrap(), cfg);
        let want = run_ire_trajectory(&r, Sgd::<Reference, T>::new(sgd_cfgs[1]).unwrap(), cfg);
        for (g, w) in got.iter().zip(&want) {
            assert_bitwise(&format!("SGD-IRE trajectory {est:?}"), g, w);
        }
        let got = run_ire_trajectory(b, AdamW::<B, T>::new(acfg).unwrap(), cfg);
        let want = run_ire_trajectory(&r, AdamW::<Reference, T>::new(acfg).unwrap(), cfg);
        for (g, w) in got.iter().zip(&want) {
            assert_bitwise(&format!("AdmIRE trajectory {est:?}"), g, w);
        }
    }
    // Here the gradient "at θ + ε" is given by the test and does not depend on ε, and SAM
    // restores θ by copy: so the reduction behind ρ/‖g‖ cannot reach θ and the trajectories
    // are bit-identical (measured on every backend). Trajectories whose gradient does depend on
    // θ + ε are `sam_ire_oracle`'s (against an independent oracle) and the equivalence
    // runner's (`sam_trajectory` of TOLERANCES).
    for adaptive in [false, true] {
        for ire in [
            None,
            Some(ire_cfg(Estimator::SquaredGradient, KappaSchedule::Constant)),
        ] {
            let got = run_sam_trajectory::<B, T>(b, adaptive, ire);
            let want = run_sam_trajectory::<Reference, T>(&r, adaptive, ire);
            for (g, w) in got.iter().zip(&want) {
                assert_bitwise(
                    &format!("SAM trajectory adaptive={adaptive} ire={}", ire.is_some()),
                    g,
                    w,
                );
            }
        }
    }
}

/// Multi-step SGD, AdamW, SAM/ASAM and their IRE versions, fed identical gradients: bit for bit.
pub fn trajectories<B: Backend>(b: &B) {
    both_dtypes!(b, trajectories_t);
}

// ------------------------------------------------------------------ SAM-IRE oracle

/// The loss the oracle trajectories descend, `L(θ) = ½ Σ a_i (θ_i − c_i)²` over all tensors:
/// its gradient `a ⊙ (θ − c)` depends on `θ`, so SAM's second gradient, taken at `θ + ε`,
/// differs from the first one, and a step measured from the wrong point shows.
struct Quadratic {
    a: Vec<Vec<f64>>,
    c: Vec<Vec<f64>>,
}

/// Values of both signs over four decades up to 3, one in 16 exactly zero (where ASAM does
/// not perturb): moderate, so that the trajectories contract and rounding differences stay at
/// rounding size instead of being amplified by an unstable run.
fn oracle_values(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let mag = [1e-3, 0.1, 1.0, 3.0][(rng.next_u64() % 4) as usize];
            let x = (rng.uniform() * 2.0 - 1.0) * mag;
            if rng.next_u64().is_multiple_of(16) {
                0.0
            } else {
                x
            }
        })
        .collect()
}

impl Quadratic {
    /// Curvatures in [0.05, 1]: with lr 0.05, κ ≤ 3 and ASAM's gradient at up to three times
    /// θ, every coordinate's step stays in heavy-ball momentum's stable range.
    fn new(rng: &mut Rng) -> Self {
        let a = TRAJ_SIZES
            .iter()
            .map(|&n| (0..n).map(|_| 0.05 + 0.95 * rng.uniform()).collect())
            .collect();
        let c = TRAJ_SIZES.iter().map(|&n| oracle_values(rng, n)).collect();
        Quadratic { a, c }
    }

    /// The gradient of step `t` at `θ`: `a ⊙ (θ − c)` plus the step's noise `ξ_t` (uniform in
    /// ±0.05, the same at `θ` and at `θ + ε`, as a mini-batch is). The noise keeps ‖g‖ away
    /// from 0, where SAM's direction `g/‖g‖` would turn every rounding difference into a large
    /// one (in any implementation) and the comparison would measure that instead.
    fn grad(&self, theta: &[Vec<f64>], t: u64) -> Vec<Vec<f64>> {
        let mut noise = Rng::new(7000 + t);
        theta
            .iter()
            .zip(self.a.iter().zip(&self.c))
            .map(|(th, (a, c))| {
                th.iter()
                    .zip(a.iter().zip(c))
                    .map(|(th, (a, c))| a * (th - c) + (noise.uniform() - 0.5) * 0.1)
                    .collect()
            })
            .collect()
    }
}

/// The estimator gradient the oracle runs feed at step `t`: the gradient at the unperturbed
/// `θ` plus step-dependent noise (as a sampled-label gradient is the true one plus noise).
fn oracle_estimate(q: &Quadratic, theta: &[Vec<f64>], t: u64) -> Vec<Vec<f64>> {
    let mut rng = Rng::new(5000 + t);
    q.grad(theta, t)
        .into_iter()
        .map(|g| g.into_iter().map(|x| x + rng.uniform() - 0.5).collect())
        .collect()
}

/// SAM / ASAM and SAM-IRE / ASAM-IRE around SGD with momentum and weight decay, written from
/// IRE-SPEC §2–3 on plain host vectors in `f64`, sharing no code with `crate::optim`.
struct SamIreOracle {
    rho: f64,
    adaptive: bool,
    sgd: SgdConfig,
    ire: Option<IreConfig>,
    theta: Vec<Vec<f64>>,
    h: Vec<Vec<f64>>,
    flat: Vec<Vec<u8>>,
    momentum: Option<Vec<Vec<f64>>>,
    t: u64,
    refreshes: usize,
}

impl SamIreOracle {
    fn new(theta: Vec<Vec<f64>>, rho: f64, adaptive: bool, sgd: SgdConfig) -> Self {
        let zeros: Vec<Vec<f64>> = theta.iter().map(|x| vec![0.0; x.len()]).collect();
        SamIreOracle {
            rho,
            adaptive,
            sgd,
            ire: None,
            flat: theta.iter().map(|x| vec![0; x.len()]).collect(),
            h: zeros,
            theta,
            momentum: None,
            t: 0,
            refreshes: 0,
        }
    }

    /// §2 step 1: a refresh is due at `t ≥ T_w` with `(t − T_w) mod K = 0`.
    fn refresh_due(&self) -> bool {
        self.ire.is_some_and(|c| {
            self.t >= c.warmup_steps && (self.t - c.warmup_steps).is_multiple_of(c.refresh_every)
        })
    }

    /// §2 step 1: `h ← β h + (1 − β) e²`; `k = ⌊(1 − γ) N⌋` over all tensors; `τ` the k-th
    /// largest `h`; flat iff `h ≤ τ` (`k = 0`: all flat).
    fn refresh(&mut self, cfg: &IreConfig, e: &[Vec<f64>]) {
        for (h, e) in self.h.iter_mut().zip(e) {
            for (h, e) in h.iter_mut().zip(e) {
                *h = cfg.beta * *h + (1.0 - cfg.beta) * (e * e);
            }
        }
        let mut all: Vec<f64> = self.h.concat();
        let k = ((1.0 - cfg.gamma) * all.len() as f64).floor() as usize;
        all.sort_by(|x, y| y.total_cmp(x));
        for (h, n) in self.h.iter().zip(self.flat.iter_mut()) {
            for (h, n) in h.iter().zip(n.iter_mut()) {
                *n = u8::from(k == 0 || *h <= all[k - 1]);
            }
        }
        self.refreshes += 1;
    }

    /// One step at learning rate `lr`; `estimate` is `ĝ` at the unperturbed `θ` when the
    /// estimator takes one (else the training gradient there is used, as the
    /// squared-training-gradient estimator does).
    fn step(&mut self, lr: f64, q: &Quadratic, estimate: Option<&[Vec<f64>]>) {
        let g = q.grad(&self.theta, self.t);
        if self.refresh_due() {
            let cfg = self.ire.unwrap();
            self.refresh(&cfg, estimate.unwrap_or(&g));
        }
        // §3 SAM: ε = ρ g / (‖g‖ + 1e−12); ASAM: ε = ρ θ² ⊙ g / (‖|θ| ⊙ g‖ + 1e−12).
        let mut sq = 0.0;
        for (t, g) in self.theta.iter().zip(&g) {
            for (t, g) in t.iter().zip(g) {
                let x = if self.adaptive { t.abs() * g } else { *g };
                sq += x * x;
            }
        }
        let scale = self.rho / (sq.sqrt() + 1e-12);
        let perturbed: Vec<Vec<f64>> = self
            .theta
            .iter()
            .zip(&g)
            .map(|(t, g)| {
                t.iter()
                    .zip(g)
                    .map(|(t, g)| {
                        let e = if self.adaptive { t * t * g } else { *g };
                        t + scale * e
                    })
                    .collect()
            })
            .collect();
        // The gradient at θ + ε, then the base step from the restored θ.
        let gp = q.grad(&perturbed, self.t);
        let s = self.sgd;
        let first = self.momentum.is_none();
        let buf = self
            .momentum
            .get_or_insert_with(|| self.theta.iter().map(|x| vec![0.0; x.len()]).collect());
        let kappa = match self.ire {
            Some(c) if self.t >= c.warmup_steps => match c.kappa_schedule {
                KappaSchedule::Constant => c.kappa,
                KappaSchedule::ProportionalToLr { lr_max } => c.kappa * lr / lr_max,
            },
            _ => 0.0,
        };
        for (((t, g), b), n) in self
            .theta
            .iter_mut()
            .zip(&gp)
            .zip(buf.iter_mut())
            .zip(&self.flat)
        {
            for (((t, g), b), n) in t.iter_mut().zip(g).zip(b.iter_mut()).zip(n) {
                // §3 SGD: g' = g + wd θ; b ← g' (first step) or μ b + (1 − dampening) g';
                // Nesterov g' + μ b, else b; θ_base = θ − lr · that.
                let d = g + s.weight_decay * *t;
                *b = if first {
                    d
                } else {
                    s.momentum * *b + (1.0 - s.dampening) * d
                };
                let u = if s.nesterov { d + s.momentum * *b } else { *b };
                let base = *t - lr * u;
                // §2 step 3: θ ← θ_base + (κ_t n) ⊙ (θ_base − θ_old), θ_old the unperturbed θ.
                *t = base + kappa * f64::from(*n) * (base - *t);
            }
        }
        self.t += 1;
    }
}

/// How a test drives SAM-IRE: the one-call form, or the two phases as a training loop does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SamEntry {
    /// `Ire::sam_step_with` (or `Sam::step_with` without IRE).
    StepWith,
    /// Refresh (when due) and `perturb`, the caller's gradient at `θ + ε`, then `step`.
    TwoPhase,
}

const ORACLE_STEPS: u64 = 60;

/// `max_i |got_i − want_i| / max_i |want_i|` over all coordinates of all tensors (one tensor
/// holds a single coordinate that may converge to 0, so a per-tensor scale would not do).
fn normwise_rel(got: &[Vec<f64>], want: &[Vec<f64>]) -> f64 {
    let scale = want
        .iter()
        .flatten()
        .fold(0.0f64, |m, x| m.max(x.abs()))
        .max(1e-300);
    let diff = got
        .iter()
        .flatten()
        .zip(want.iter().flatten())
        .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
    diff / scale
}

/// Runs `Ire<Sam<Sgd>>` (or `Sam<Sgd>` when `ire` is `None`) on `b` beside the oracle for
/// [`ORACLE_STEPS`] steps; checks the mask after every step and `θ` within the tolerance;
/// returns the largest deviation seen.
fn sam_oracle_run<B: Backend>(
    b: &B,
    adaptive: bool,
    sgd: SgdConfig,
    ire: Option<IreConfig>,
    entry: SamEntry,
) -> f64 {
    let what = format!(
        "{}{} oracle ({entry:?}, {sgd:?}, {ire:?})",
        if adaptive { "ASAM" } else { "SAM" },
        if ire.is_some() { "-IRE" } else { "" }
    );
    let tol = rel_tol::<f64>("sam_oracle");
    let mut rng = Rng::new(4242 + u64::from(adaptive));
    let q = Quadratic::new(&mut rng);
    let init: Vec<Vec<f64>> = TRAJ_SIZES
        .iter()
        .map(|&n| oracle_values(&mut rng, n))
        .collect();
    let rho = if adaptive { 2.0 } else { 0.05 };
    let mut oracle = SamIreOracle::new(init.clone(), rho, adaptive, sgd);
    oracle.ire = ire;
    let mut params: Vec<B::Buffer<f64>> = init.iter().map(|v| up(b, v)).collect();
    let sam = Sam::new(
        Sgd::<B, f64>::new(sgd).unwrap(),
        SamConfig { rho, adaptive },
    )
    .unwrap();
    let mut plain = None;
    let mut boosted = None;
    match ire {
        Some(cfg) => boosted = Some(Ire::new(sam, cfg).unwrap()),
        None => plain = Some(sam),
    }
    let download = |params: &[B::Buffer<f64>]| -> Vec<Vec<f64>> {
        params.iter().map(|p| down(b, p)).collect()
    };
    let upload_all = |bufs: &mut [B::Buffer<f64>], v: &[Vec<f64>]| -> ire_core::Result<()> {
        for (x, v) in bufs.iter_mut().zip(v) {
            b.upload(x, v)?;
        }
        Ok(())
    };
    let mut worst = 0.0f64;
    for t in 0..ORACLE_STEPS {
        let lr = 0.05 * (1.0 - t as f64 / (2 * ORACLE_STEPS) as f64);
        let theta = download(&params);
        let ghat = oracle_estimate(&q, &theta, t);
        let mut g: Vec<B::Buffer<f64>> = q.grad(&theta, t).iter().map(|v| up(b, v)).collect();
        let est: Vec<B::Buffer<f64>> = ghat.iter().map(|v| up(b, v)).collect();
        let wants_input = ire.is_some_and(|c| c.estimator != Estimator::SquaredTrainingGradient);
        let grad_at = |p: &[B::Buffer<f64>], gp: &mut [B::Buffer<f64>]| {
            upload_all(gp, &q.grad(&download(p), t))
        };
        let r = match (&mut boosted, &mut plain, entry) {
            (Some(o), _, SamEntry::StepWith) => {
                let estimate =
                    (wants_input && o.refresh_due()).then_some(EstimateInput::Gradient(&est));
                o.sam_step_with(b, &mut params, &mut g, IreStep { lr, estimate }, grad_at)
                    .map(|_| ())
            }
            (Some(o), _, SamEntry::TwoPhase) => (|| {
                if o.refresh_due() {
                    let input = wants_input.then_some(EstimateInput::Gradient(&est));
                    o.refresh(b, &params, &g, input.as_ref())?;
                    o.keep_mask_this_step();
                }
                o.base_mut().perturb(b, &mut params, &g)?;
                grad_at(&params, &mut g)?;
                o.step(b, &mut params, &g, IreStep::lr(lr)).map(|_| ())
            })(),
            (None, Some(o), SamEntry::StepWith) => o.step_with(b, &mut params, &mut g, lr, grad_at),
            (None, Some(o), SamEntry::TwoPhase) => (|| {
                o.perturb(b, &mut params, &g)?;
                grad_at(&params, &mut g)?;
                o.step(b, &mut params, &g, lr)
            })(),
            (None, None, _) => unreachable!(),
        };
        r.unwrap_or_else(|e| panic!("{what}: step {t}: {e}"));
        oracle.step(lr, &q, wants_input.then_some(&ghat[..]));
        let got = download(&params);
        let dev = normwise_rel(&got, &oracle.theta);
        worst = worst.max(dev);
        assert!(
            dev <= tol,
            "{what} [{}]: θ after step {t} is {dev:e} (norm-wise relative) from the oracle's, \
             over the bound {tol:e}",
            b.name()
        );
        if let Some(o) = &boosted {
            for (i, (m, want)) in o.mask(b).unwrap().iter().zip(&oracle.flat).enumerate() {
                assert_eq!(
                    m,
                    want,
                    "{what} [{}]: mask of tensor {i} after step {t}",
                    b.name()
                );
            }
        }
    }
    if let (Some(o), Some(cfg)) = (&boosted, ire) {
        assert_eq!(o.step_count(), ORACLE_STEPS, "{what}");
        // Refreshes at T_w, T_w + K, ...; each one made a mask with flat and sharp coordinates.
        let due = (ORACLE_STEPS - cfg.warmup_steps).div_ceil(cfg.refresh_every) as usize;
        assert_eq!(oracle.refreshes, due, "{what}: refreshes");
        let flat: usize = oracle.flat.iter().flatten().map(|&n| usize::from(n)).sum();
        assert!(
            flat > 0 && flat < oracle.flat.iter().map(Vec::len).sum::<usize>(),
            "{what}: the final mask is all {flat}"
        );
    }
    worst
}

/// The SAM/ASAM settings the oracle runs: momentum with dampening and weight decay, Nesterov.
fn oracle_sgd_configs() -> [SgdConfig; 2] {
    [
        SgdConfig {
            momentum: 0.9,
            dampening: 0.1,
            weight_decay: 5e-4,
            nesterov: false,
        },
        SgdConfig {
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 1e-3,
            nesterov: true,
        },
    ]
}

/// SAM-IRE and ASAM-IRE (and plain SAM and ASAM) against an independent host implementation
/// of IRE-SPEC §2–3 in `f64`: 60 steps on a quadratic whose gradient depends on `θ`, momentum,
/// dampening or Nesterov, weight decay, mask refreshes every K steps after a warm-up (EMA of
/// `ĝ²`, or the squared training gradient), constant and learning-rate-proportional `κ`, both
/// entry points (`sam_step_with`, and refresh + `perturb` + `step`). The mask must match after
/// every step; `θ` within `sam_oracle` of [`TOLERANCES`]. Backends without `f64` skip it.
pub fn sam_ire_oracle<B: Backend>(b: &B) {
    if !b.supports_dtype(DType::F64) {
        println!("{}: f64 unsupported, the SAM-IRE oracle skipped", b.name());
        return;
    }
    let [sgd_a, sgd_b] = oracle_sgd_configs();
    let ire_a = IreConfig {
        kappa: 3.0,
        gamma: 0.6,
        refresh_every: 5,
        warmup_steps: 3,
        beta: 0.5,
        kappa_schedule: KappaSchedule::Constant,
        estimator: Estimator::SquaredGradient,

        ..IreConfig::default()
    };
    let ire_b = IreConfig {
        kappa: 2.0,
        gamma: 0.75,
        refresh_every: 4,
        warmup_steps: 0,
        beta: 0.0,
        kappa_schedule: KappaSchedule::ProportionalToLr { lr_max: 0.05 },
        estimator: Estimator::SquaredTrainingGradient,

        ..IreConfig::default()
    };
    let mut worst = 0.0f64;
    for adaptive in [false, true] {
        for (sgd, ire, entry) in [
            (sgd_a, Some(ire_a), SamEntry::StepWith),
            (sgd_b, Some(ire_b), SamEntry::TwoPhase),
            (sgd_b, Some(ire_a), SamEntry::TwoPhase),
            (sgd_a, Some(ire_b), SamEntry::StepWith),
            (sgd_a, None, SamEntry::StepWith),
            (sgd_b, None, SamEntry::TwoPhase),
        ] {
            let dev = sam_oracle_run(b, adaptive, sgd, ire, entry);
            println!(
                "{}: {} {entry:?} {}: largest deviation {dev:e}",
                b.name(),
                if adaptive { "ASAM" } else { "SAM" },
                ire.map_or("without IRE".to_string(), |c| format!("{:?}", c.estimator))
            );
            worst = worst.max(dev);
        }
    }
    println!(
        "{}: SAM/ASAM(-IRE) against the oracle, {ORACLE_STEPS} steps: largest norm-wise relative \
         deviation of θ {worst:e} (bound {:e})",
        b.name(),
        rel_tol::<f64>("sam_oracle")
    );
}

// ------------------------------------------------------------------ save / load

fn save_load_t<B: Backend, T: Scalar>(b: &B) {
    let cfg = ire_cfg(Estimator::SquaredGradient, KappaSchedule::Constant);
    let make = || Ire::new(AdamW::<B, T>::new(AdamWConfig::default()).unwrap(), cfg).unwrap();
    let mut rng = Rng::new(5);
    let init: Vec<Vec<T>> = TRAJ_SIZES.iter().map(|&n| rng.values::<T>(n)).collect();
    let run =
        |ire: &mut Ire<B, T, AdamW<B, T>>, params: &mut Vec<B::Buffer<T>>, from: u64, to: u64| {
            for t in from..to {
                let g: Vec<B::Buffer<T>> = grads_at::<T>(t, TRAJ_SIZES, 0)
                    .iter()
                    .map(|v| up(b, v))
                    .collect();
                let est: Vec<B::Buffer<T>> = grads_at::<T>(t, TRAJ_SIZES, 7)
                    .iter()
                    .map(|v| up(b, v))
                    .collect();
                let ctx = IreStep {
                    lr: 1e-3,
                    estimate: ire.refresh_due().then_some(EstimateInput::Gradient(&est)),
                };
                ire.step(b, params, &g, ctx).unwrap();
            }
        };
    // Uninterrupted: 12 steps.
    let mut a = make();
    let mut pa: Vec<B::Buffer<T>> = init.iter().map(|v| up(b, v)).collect();
    run(&mut a, &mut pa, 0, 12);
    // Interrupted at 5: save, serialize, load into a fresh optimizer, continue.
    let mut c = make();
    let mut pc: Vec<B::Buffer<T>> = init.iter().map(|v| up(b, v)).collect();
    run(&mut c, &mut pc, 0, 5);
    let saved = c.save(b).unwrap();
    let json = serde_json_round_trip(&saved);
    let mut d = make();
    d.load(b, &json).unwrap();
    assert_eq!(d.step_count(), 5);
    run(&mut d, &mut pc, 5, 12);
    for (x, y) in pa.iter().zip(&pc) {
        assert_bitwise("resumed trajectory", &down(b, y), &down(b, x));
    }
    // Broken states are refused and change nothing.
    let good = d.save(b).unwrap();
    let mut broken = Vec::new();
    let mut s = good.clone();
    s.format_version += 1;
    broken.push(("future version", s));
    let mut s = good.clone();
    s.entries.retain(|e| e.name != "h.2");
    broken.push(("missing entry", s));
    let mut s = good.clone();
    s.put("extra", ire_core::state::StateValue::Bool(true));
    broken.push(("extra entry", s));
    let mut s = good.clone();
    if let Some(e) = s.entries.iter_mut().find(|e| e.name == "mask.1") {
        e.value = ire_core::state::StateValue::U8(vec![1, 1]);
    }
    broken.push(("wrong size", s));
    let mut s = good.clone();
    if let Some(e) = s.entries.iter_mut().find(|e| e.name == "base")
        && let ire_core::state::StateValue::Nested(inner) = &mut e.value
    {
        inner.entries.retain(|e| e.name != "v.3");
    }
    broken.push(("missing nested entry", s));
    let mut s = good.clone();
    s.optimizer = "sgd".into();
    broken.push(("wrong optimizer", s));
    for (what, s) in broken {
        let before = d.save(b).unwrap();
        let err = d.load(b, &s);
        assert!(
            matches!(err, Err(ire_core::Error::State(_))),
            "{what}: {err:?}"
        );
        assert_eq!(
            d.save(b).unwrap(),
            before,
            "{what}: state changed by a failed load"
        );
    }
    // Plain SGD with momentum and SAM round trip too.
    let scfg = SgdConfig {
        momentum: 0.9,
        ..SgdConfig::default()
    };
    let mut sgd = Sgd::<B, T>::new(scfg).unwrap();
    let mut p: Vec<B::Buffer<T>> = init.iter().map(|v| up(b, v)).collect();
    let g: Vec<B::Buffer<T>> = grads_at::<T>(0, TRAJ_SIZES, 0)
        .iter()
        .map(|v| up(b, v))
        .collect();
    sgd.step(b, &mut p, &g, 0.1).unwrap();
    let st = serde_json_round_trip(&sgd.save(b).unwrap());
    let mut sgd2 = Sgd::<B, T>::new(scfg).unwrap();
    sgd2.load(b, &st).unwrap();
    assert_eq!(sgd2.save(b).unwrap(), st);
    let mut sam = Sam::new(Sgd::<B, T>::new(scfg).unwrap(), SamConfig::default()).unwrap();
    sam.load(
        b,
        &StateDict {
            optimizer: "sam".into(),
            entries: vec![ire_core::state::StateEntry {
                name: "base".into(),
                value: ire_core::state::StateValue::Nested(st.clone()),
            }],
            format_version: ire_core::state::STATE_FORMAT_VERSION,
        },
    )
    .unwrap();
    assert_eq!(sam.base().steps(), 1);
}

fn serde_json_round_trip(s: &StateDict) -> StateDict {
    // The format is the caller's choice; JSON exercises the serde derives end to end.
    let text = serde_json_string(s);
    serde_json_parse(&text)
}

fn serde_json_string(s: &StateDict) -> String {
    serde_json::to_string(s).unwrap_or_else(|e| panic!("serialize: {e}"))
}

fn serde_json_parse(s: &str) -> StateDict {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("deserialize: {e}"))
}

/// Save, serialize, load and continue: bit-identical to an uninterrupted run; broken states
/// (version, missing, extra, wrong size, wrong optimizer) are refused and change nothing.
pub fn save_load<B: Backend>(b: &B) {
    both_dtypes!(b, save_load_t);
}

/// Every check of the suite, in order (for runners that want one call).
pub fn all<B: Backend>(b: &B) {
    plumbing(b);
    packed_mask(b);
    elementwise(b);
    fused_vs_byte_mask(b);
    reductions(b);
    selection(b);
    mask_rule(b);
    threshold_rules(b);
    groups_and_step_forms(b);
    trajectories(b);
    sam_ire_oracle(b);
    save_load(b);
}

/// Stamps the conformance suite into a backend crate's tests.
///
/// `$make` is an expression returning `Option<B>`: `None` (device absent) makes each test print
/// a skip line and pass; a backend crate that must not skip (CI's `IRE_REQUIRE`) panics in
/// `$make` instead.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@one $make, conformance_plumbing, plumbing);
        $crate::conformance_tests!(@one $make, conformance_parts, parts);
        $crate::conformance_tests!(@one $make, conformance_packed_mask, packed_mask);
        $crate::conformance_tests!(@one $make, conformance_elementwise, elementwise);
        $crate::conformance_tests!(@one $make, conformance_fused_vs_byte_mask, fused_vs_byte_mask);
        $crate::conformance_tests!(@one $make, conformance_reductions, reductions);
        $crate::conformance_tests!(@one $make, conformance_selection, selection);
        $crate::conformance_tests!(@one $make, conformance_mask_rule, mask_rule);
        $crate::conformance_tests!(@one $make, conformance_threshold_rules, threshold_rules);
        $crate::conformance_tests!(@one $make, conformance_groups, groups_and_step_forms);
        $crate::conformance_tests!(@one $make, conformance_trajectories, trajectories);
        $crate::conformance_tests!(@one $make, conformance_sam_ire_oracle, sam_ire_oracle);
        $crate::conformance_tests!(@one $make, conformance_save_load, save_load);
    };
    (@one $make:expr, $name:ident, $check:ident) => {
        #[test]
        fn $name() {
            match $make {
                Some(b) => $crate::$check(&b),
                None => println!("skipped {}: backend unavailable", stringify!($name)),
            }
        }
    };
}

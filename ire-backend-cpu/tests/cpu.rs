//! CPU-specific checks: sizes that cross the parallel task boundaries, thread-count
//! independence, and the selection on large arrays with many ties, against the reference.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ire_backend_cpu::select::{Strategy, kth_largest_with};
use ire_backend_cpu::{CpuBackend, DEFAULT_CHUNK_LEN};
use ire_conformance::{Rng, assert_bitwise, assert_close, rel_tol};
use ire_core::formulas::{AdamWScalars, SgdScalars};
use ire_core::{Backend, Error, Reference, Scalar};

/// Three full tasks and a remainder.
const BIG: usize = 3 * DEFAULT_CHUNK_LEN + 12_345;

fn adamw_scalars<T: Scalar>() -> AdamWScalars<T> {
    let (lr, wd, b1, b2, t) = (1e-3f64, 0.1, 0.9, 0.999, 7);
    AdamWScalars {
        decay: T::of(1.0 - lr * wd),
        beta1: T::of(b1),
        one_minus_beta1: T::of(1.0 - b1),
        beta2: T::of(b2),
        one_minus_beta2: T::of(1.0 - b2),
        step_size: T::of(lr / (1.0 - b1.powi(t))),
        bias_correction2_sqrt: T::of((1.0 - b2.powi(t)).sqrt()),
        eps: T::of(1e-8),
    }
}

fn sgd_scalars<T: Scalar>(nesterov: bool, first_step: bool) -> SgdScalars<T> {
    SgdScalars {
        lr: T::of(0.05),
        weight_decay: T::of(5e-4),
        momentum: T::of(0.9),
        dampening_complement: T::of(0.9),
        nesterov,
        first_step,
    }
}

/// Runs one operation on both backends from the same inputs and compares every output.
macro_rules! check_op {
    ($name:expr, $cpu:expr, $ins:expr, $masks:expr, |$b:ident, $bufs:ident, $mk:ident| $body:expr) => {{
        let ins: &[Vec<T>] = $ins;
        let masks: &[Vec<u32>] = $masks;
        let got = {
            let $b = $cpu;
            let mut $bufs: Vec<_> = ins.iter().map(|v| $b.alloc_from(v).unwrap()).collect();
            let $mk: Vec<_> = masks.iter().map(|v| $b.alloc_from(v).unwrap()).collect();
            $body;
            $bufs
                .iter()
                .map(|x| $b.to_vec(x).unwrap())
                .collect::<Vec<_>>()
        };
        let want = {
            let $b = &Reference;
            let mut $bufs: Vec<_> = ins.iter().map(|v| $b.alloc_from(v).unwrap()).collect();
            let $mk: Vec<_> = masks.iter().map(|v| $b.alloc_from(v).unwrap()).collect();
            $body;
            $bufs
                .iter()
                .map(|x| $b.to_vec(x).unwrap())
                .collect::<Vec<_>>()
        };
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_bitwise(&format!("{} operand {i}", $name), g, w);
        }
    }};
}

fn split2<X>(v: &mut [X]) -> (&mut X, &mut X) {
    let (a, b) = v.split_at_mut(1);
    (&mut a[0], &mut b[0])
}

fn split3<X>(v: &mut [X]) -> (&mut X, &mut X, &mut X) {
    let (a, rest) = v.split_at_mut(1);
    let (b, c) = rest.split_at_mut(1);
    (&mut a[0], &mut b[0], &mut c[0])
}

fn elementwise_big<T: Scalar>(cpu: &CpuBackend, n: usize) {
    let mut rng = Rng::new(42 + n as u64);
    let th = rng.values::<T>(n);
    let g = rng.values::<T>(n);
    let m = rng.values::<T>(n);
    let v = rng.positive::<T>(n);
    let mask = ire_core::mask::pack(&rng.mask(n));
    let a = T::of(-0.37);
    let kappa = T::of(3.0);
    let beta = T::of(0.95);
    let sa = adamw_scalars::<T>();

    check_op!("axpy", cpu, &[th.clone(), g.clone()], &[], |b, x, _m| {
        let (y, x) = split2(&mut x);
        b.axpy(y, a, x).unwrap()
    });
    check_op!(
        "sam_perturb",
        cpu,
        &[th.clone(), g.clone()],
        &[],
        |b, x, _m| {
            let (y, x) = split2(&mut x);
            b.sam_perturb(y, x, a).unwrap()
        }
    );
    check_op!(
        "asam_perturb",
        cpu,
        &[th.clone(), g.clone()],
        &[],
        |b, x, _m| {
            let (y, x) = split2(&mut x);
            b.asam_perturb(y, x, a).unwrap()
        }
    );
    for (nesterov, first) in [(false, false), (true, false), (false, true)] {
        let s = sgd_scalars::<T>(nesterov, first);
        check_op!("sgd", cpu, &[th.clone(), g.clone()], &[], |b, x, _m| {
            let (p, g) = split2(&mut x);
            b.sgd_step(p, g, &s).unwrap()
        });
        check_op!(
            "sgd_momentum",
            cpu,
            &[th.clone(), g.clone(), m.clone()],
            &[],
            |b, x, _m| {
                let (p, g, mo) = split3(&mut x);
                b.sgd_momentum_step(p, g, mo, &s).unwrap()
            }
        );
        check_op!(
            "sgd_ire",
            cpu,
            &[th.clone(), g.clone()],
            std::slice::from_ref(&mask),
            |b, x, mk| {
                let (p, g) = split2(&mut x);
                b.sgd_ire_step(p, g, &s, &mk[0], kappa).unwrap()
            }
        );
        check_op!(
            "sgd_momentum_ire",
            cpu,
            &[th.clone(), g.clone(), m.clone()],
            std::slice::from_ref(&mask),
            |b, x, mk| {
                let (p, g, mo) = split3(&mut x);
                b.sgd_momentum_ire_step(p, g, mo, &s, &mk[0], kappa)
                    .unwrap()
            }
        );
    }
    check_op!(
        "adamw",
        cpu,
        &[th.clone(), g.clone(), m.clone(), v.clone()],
        &[],
        |b, x, _m| {
            let (p, rest) = x.split_at_mut(1);
            let (gm, v) = rest.split_at_mut(2);
            let (g, m) = split2(gm);
            b.adamw_step(&mut p[0], g, m, &mut v[0], &sa).unwrap()
        }
    );
    check_op!(
        "adamw_ire",
        cpu,
        &[th.clone(), g.clone(), m.clone(), v.clone()],
        std::slice::from_ref(&mask),
        |b, x, mk| {
            let (p, rest) = x.split_at_mut(1);
            let (gm, v) = rest.split_at_mut(2);
            let (g, m) = split2(gm);
            b.adamw_ire_step(&mut p[0], g, m, &mut v[0], &sa, &mk[0], kappa)
                .unwrap()
        }
    );
    check_op!(
        "ire_boost",
        cpu,
        &[th.clone(), g.clone()],
        std::slice::from_ref(&mask),
        |b, x, mk| {
            let (p, o) = split2(&mut x);
            b.ire_boost(p, o, &mk[0], kappa).unwrap()
        }
    );
    check_op!(
        "ema_square",
        cpu,
        &[v.clone(), g.clone()],
        &[],
        |b, x, _m| {
            let (h, g) = split2(&mut x);
            b.ema_square(h, g, beta).unwrap()
        }
    );
    check_op!("ema_abs", cpu, &[v.clone(), g.clone()], &[], |b, x, _m| {
        let (h, g) = split2(&mut x);
        b.ema_abs(h, g, beta).unwrap()
    });
    check_op!(
        "ema_product",
        cpu,
        &[v.clone(), g.clone(), m.clone()],
        &[],
        |b, x, _m| {
            let (h, a, c) = split3(&mut x);
            b.ema_product(h, a, c, beta).unwrap()
        }
    );
    check_op!("copy", cpu, &[th.clone(), g.clone()], &[], |b, x, _m| {
        let (d, s) = split2(&mut x);
        b.copy(s, d).unwrap()
    });
    check_op!("fill", cpu, std::slice::from_ref(&th), &[], |b, x, _m| b
        .fill(&mut x[0], T::of(-1.5))
        .unwrap());

    // The mask rule and the counts.
    let tau = T::of(0.3);
    let got = {
        let h = cpu.alloc_from(&v).unwrap();
        let mut mk = cpu.alloc::<u32>(ire_core::mask::words(n)).unwrap();
        cpu.mask_le(&h, tau, &mut mk).unwrap();
        cpu.to_vec(&mk).unwrap()
    };
    let want = {
        let h = Reference.alloc_from(&v).unwrap();
        let mut mk = Reference.alloc::<u32>(ire_core::mask::words(n)).unwrap();
        Reference.mask_le(&h, tau, &mut mk).unwrap();
        Reference.to_vec(&mk).unwrap()
    };
    assert_eq!(got, want, "mask_le");
    let flat = ire_core::mask::count(&want);
    assert_eq!(
        cpu.count_flat(&cpu.alloc_from(&want).unwrap()).unwrap(),
        flat
    );
    let mut bad = th.clone();
    for i in (0..n).step_by(4_999) {
        bad[i] = if i % 2 == 0 {
            T::nan()
        } else {
            T::neg_infinity()
        };
    }
    assert_eq!(
        cpu.count_non_finite(&cpu.alloc_from(&bad).unwrap())
            .unwrap(),
        n.div_ceil(4_999)
    );

    // Reductions: within the stated tolerance of the reference.
    let x = cpu.alloc_from(&g).unwrap();
    let y = cpu.alloc_from(&th).unwrap();
    let want = ire_core::host::sum_squares(&g);
    assert_close(
        "sum_squares",
        &[cpu.sum_squares(&x).unwrap()],
        &[want],
        rel_tol::<T>("sum_squares"),
    );
    let want = ire_core::host::sum_squares_product(&g, &th);
    assert_close(
        "sum_squares_product",
        &[cpu.sum_squares_product(&x, &y).unwrap()],
        &[want],
        rel_tol::<T>("sum_squares_product"),
    );
}

#[test]
fn elementwise_ops_cross_task_boundaries_bit_for_bit() {
    let cpu = CpuBackend::new();
    elementwise_big::<f32>(&cpu, BIG);
    elementwise_big::<f64>(&cpu, BIG);
    // The base-target (SSE2) kernels, without the run-time AVX2 dispatch.
    let narrow = CpuBackend::new().with_wide_simd(false);
    assert!(!narrow.wide_simd());
    elementwise_big::<f32>(&narrow, BIG);
    elementwise_big::<f64>(&narrow, 20_001);
    // Tiny tasks on a private pool: hundreds of boundaries, one of them inside a vector.
    let small = CpuBackend::with_threads(2).unwrap().with_chunk_len(1_001);
    elementwise_big::<f32>(&small, 50_000);
    elementwise_big::<f64>(&small, 50_000);
}

#[test]
fn reductions_do_not_depend_on_threads_or_tasks() {
    let mut rng = Rng::new(7);
    let v = rng.values::<f32>(BIG);
    let w = rng.values::<f32>(BIG);
    let one = CpuBackend::with_threads(1).unwrap();
    let two = CpuBackend::with_threads(2).unwrap().with_chunk_len(777);
    let (a1, b1) = (one.alloc_from(&v).unwrap(), one.alloc_from(&w).unwrap());
    let (a2, b2) = (two.alloc_from(&v).unwrap(), two.alloc_from(&w).unwrap());
    assert_eq!(
        one.sum_squares(&a1).unwrap().to_bits(),
        two.sum_squares(&a2).unwrap().to_bits()
    );
    assert_eq!(
        one.sum_squares_product(&a1, &b1).unwrap().to_bits(),
        two.sum_squares_product(&a2, &b2).unwrap().to_bits()
    );
    // Exact on integers: Σ i² for i < 300000 fits f64's 53 bits exactly at every step.
    let ints: Vec<f64> = (0..300_000).map(|i| i as f64).collect();
    let n = 300_000f64;
    let want = (n - 1.0) * n * (2.0 * n - 1.0) / 6.0;
    assert_eq!(
        one.sum_squares(&one.alloc_from(&ints).unwrap()).unwrap(),
        want
    );
    assert_eq!(
        two.sum_squares(&two.alloc_from(&ints).unwrap()).unwrap(),
        want
    );
}

/// Values from a small set (massive ties, both zeros, infinities) or a continuous spread.
fn tie_heavy<T: Scalar>(rng: &mut Rng, n: usize, distinct: usize) -> Vec<T> {
    let pool: Vec<T> = (0..distinct)
        .map(|i| match i {
            0 => T::zero(),
            1 => T::of(-0.0),
            2 => T::infinity(),
            3 => T::neg_infinity(),
            _ => T::of((rng.uniform() - 0.3) * 10.0),
        })
        .collect();
    (0..n)
        .map(|_| pool[(rng.next_u64() % distinct as u64) as usize])
        .collect()
}

fn check_selection<T: Scalar>(cpu: &CpuBackend, parts: &[Vec<T>], ks: &[usize]) {
    let bufs: Vec<_> = parts.iter().map(|p| cpu.alloc_from(p).unwrap()).collect();
    let refs: Vec<_> = bufs.iter().collect();
    let slices: Vec<&[T]> = parts.iter().map(|p| p.as_slice()).collect();
    let mut all = parts.concat();
    let n = all.len();
    for &k in ks {
        let k = k.clamp(1, n);
        let want = ire_core::host::kth_largest(&mut all, k).unwrap();
        let got = cpu.kth_largest(&refs, k).unwrap();
        assert_bitwise(&format!("kth_largest k={k} of {n}"), &[got], &[want]);
        for strategy in [Strategy::Radix, Strategy::SampledBracket] {
            let got = kth_largest_with(&slices, k, 4_096, strategy).unwrap();
            assert_bitwise(&format!("{strategy:?} k={k} of {n}"), &[got], &[want]);
        }
    }
    assert!(cpu.kth_largest(&refs, 0).is_err());
    assert!(cpu.kth_largest(&refs, n + 1).is_err());
}

fn selection_big<T: Scalar>() {
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(99);
    let sizes = [DEFAULT_CHUNK_LEN + 3, 0, 150_001, 17];
    let n: usize = sizes.iter().sum();
    let ks = [1, 2, 7, n / 10, n * 4 / 10, n / 2 + 1, n * 9 / 10, n - 1, n];
    for distinct in [1usize, 2, 5, 40, 5_000] {
        let parts: Vec<Vec<T>> = sizes
            .iter()
            .map(|&s| tie_heavy::<T>(&mut rng, s, distinct))
            .collect();
        check_selection(&cpu, &parts, &ks);
    }
    // A continuous spread, and every k around the tie boundaries of a 3-valued array.
    let parts: Vec<Vec<T>> = sizes.iter().map(|&s| rng.values::<T>(s)).collect();
    check_selection(&cpu, &parts, &ks);
    let mut three = vec![T::of(2.0); 100_000];
    three.extend(vec![T::of(-0.0); 50_000]);
    three.extend(vec![T::zero(); 50_000]);
    let ks: Vec<usize> = [1, 99_999, 100_000, 100_001, 150_000, 150_001, 200_000].to_vec();
    check_selection(&cpu, &[three], &ks);
    // Half the values tied at 1, the other half spread just above (then just below) it: the
    // answer sits on the lower (then upper) end of the sampled bracket, found by counting the
    // ties there.
    let n = 200_000;
    for above in [true, false] {
        let v: Vec<T> = (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    T::one()
                } else {
                    let u = rng.uniform() * 0.5 + 0.25;
                    T::of(if above { 1.0 + u } else { u })
                }
            })
            .collect();
        let ks = [n / 2 - 1, n / 2, n / 2 + 1, n / 2 + 2, n - 1];
        check_selection(&cpu, &[v], &ks);
    }
    // Outliers the sample cannot see: the bracket misses and the radix select answers.
    let mut spiky = vec![T::one(); 300_000];
    for i in [5usize, 77_777, 123_456, 299_999] {
        spiky[i] = T::of(1e6 + i as f64);
    }
    check_selection(&cpu, &[spiky], &[1, 2, 3, 4, 5, 6, 300_000]);
}

#[test]
fn kth_largest_on_big_arrays_with_ties_equals_the_host_selection() {
    selection_big::<f32>();
    selection_big::<f64>();
}

#[test]
fn kth_largest_rejects_nan_anywhere() {
    let cpu = CpuBackend::new();
    for pos in [0usize, 65_535, 65_536, 199_999] {
        let mut v = vec![1.0f32; 200_000];
        v[pos] = if pos % 2 == 0 { f32::NAN } else { -f32::NAN };
        let b = cpu.alloc_from(&v).unwrap();
        for k in [1, 100_000, 200_000] {
            let r = cpu.kth_largest(&[&b], k);
            assert!(
                matches!(r, Err(Error::NonFinite { .. })),
                "{pos} {k}: {r:?}"
            );
        }
        for strategy in [Strategy::Radix, Strategy::SampledBracket] {
            let r = kth_largest_with(&[&v[..]], 3, 4_096, strategy);
            assert!(matches!(r, Err(Error::NonFinite { .. })), "{strategy:?}");
        }
    }
}

#[test]
fn size_mismatches_and_bad_pools_are_errors() {
    assert!(CpuBackend::with_threads(0).is_err());
    let cpu = CpuBackend::with_threads(2).unwrap();
    assert_eq!(cpu.threads(), 2);
    let mut a = cpu.alloc::<f32>(BIG).unwrap();
    let mut m = cpu.alloc::<f32>(BIG).unwrap();
    let mut v = cpu.alloc::<f32>(BIG).unwrap();
    let g = cpu.alloc::<f32>(BIG - 1).unwrap();
    let ok = cpu.alloc::<f32>(BIG).unwrap();
    let mask = cpu.alloc::<u32>(ire_core::mask::words(BIG) + 1).unwrap();
    let s = adamw_scalars::<f32>();
    assert!(cpu.adamw_step(&mut a, &g, &mut m, &mut v, &s).is_err());
    let r = cpu.adamw_ire_step(&mut a, &ok, &mut m, &mut v, &s, &mask, 1.0);
    assert!(matches!(r, Err(Error::SizeMismatch { .. })));
    let q = sgd_scalars::<f32>(false, false);
    assert!(cpu.sgd_ire_step(&mut a, &ok, &q, &mask, 1.0).is_err());
    assert!(
        cpu.sgd_momentum_ire_step(&mut a, &ok, &mut m, &q, &mask, 1.0)
            .is_err()
    );
    assert!(cpu.sum_squares_product(&a, &g).is_err());
    assert!(cpu.ire_boost(&mut a, &ok, &mask, 1.0).is_err());
    let mut short_mask = cpu.alloc::<u32>(3).unwrap();
    assert!(cpu.mask_le(&a, 0.0, &mut short_mask).is_err());
}

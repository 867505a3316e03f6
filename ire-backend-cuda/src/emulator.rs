//! A host emulator of the portable kernels, for this crate's tests on machines without a GPU.
//!
//! Each kernel reads its arguments by position, as the C source declares them, and runs
//! thread by thread with the launch's grid and block: element-wise kernels cover only the
//! threads launched, reduction kernels refuse a block other than `REDUCE_WG` and reduce in the
//! source's tree order. So a launch site with a wrong argument order, a short grid or a wrong
//! block fails the conformance suite here, before it ever reaches a GPU.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard};

use ire_core::formulas as f;
use ire_core::kernels::REDUCE_WG;
use ire_core::{DType, Error, Result, Scalar};

use crate::BACKEND;
use crate::backend::{Arg, Elem, Mem};
use crate::signature::{Param, signature};

thread_local! {
    /// The largest total the device histogram reached on this thread (32-bit counters must
    /// be read back before they could wrap: `Limits::flush` is their budget).
    static HIST_PEAK: Cell<u64> = const { Cell::new(0) };
}

fn err(message: String) -> Error {
    Error::Device {
        backend: BACKEND.into(),
        message: format!("emulator: {message}"),
    }
}

fn host(m: &Mem) -> MutexGuard<'_, Vec<u8>> {
    match m {
        Mem::Host(v) => v.lock().unwrap_or_else(|e| e.into_inner()),
        Mem::Cuda(_) => panic!("emulator given device memory"),
    }
}

pub(crate) fn write(dst: &mut Mem, src: &[u8]) -> Result<()> {
    let mut d = host(dst);
    assert_eq!(d.len(), src.len(), "emulator upload size");
    d.copy_from_slice(src);
    Ok(())
}

pub(crate) fn read(src: &Mem, offset: usize, dst: &mut [u8]) -> Result<()> {
    let s = host(src);
    dst.copy_from_slice(&s[offset..offset + dst.len()]);
    Ok(())
}

pub(crate) fn copy(src: &Mem, dst: &mut Mem) -> Result<()> {
    let s = host(src).clone();
    write(dst, &s)
}

pub(crate) fn zero(dst: &mut Mem) -> Result<()> {
    host(dst).fill(0);
    Ok(())
}

/// Floats as stored in device memory.
trait Real: Scalar {
    const SIZE: usize;
    fn load(b: &[u8]) -> Self;
    fn store(self, b: &mut [u8]);
}

impl Real for f32 {
    const SIZE: usize = 4;
    fn load(b: &[u8]) -> Self {
        f32::from_ne_bytes(b.try_into().unwrap())
    }
    fn store(self, b: &mut [u8]) {
        b.copy_from_slice(&self.to_ne_bytes());
    }
}

impl Real for f64 {
    const SIZE: usize = 8;
    fn load(b: &[u8]) -> Self {
        f64::from_ne_bytes(b.try_into().unwrap())
    }
    fn store(self, b: &mut [u8]) {
        b.copy_from_slice(&self.to_ne_bytes());
    }
}

/// An argument as the kernel body sees it: arrays are copied in, and written back after the
/// kernel for the pointers the source does not declare `const`.
enum Val<T> {
    R(Vec<T>),
    B(Vec<u8>),
    W(Vec<u32>),
    S(T),
    U8(u8),
    U32(u32),
    U64(u64),
}

struct Args<T>(Vec<Val<T>>);

impl<T: Real> Args<T> {
    fn r(&mut self, i: usize) -> &mut Vec<T> {
        match &mut self.0[i] {
            Val::R(v) => v,
            _ => panic!("argument {i} is not a T*"),
        }
    }
    fn b(&mut self, i: usize) -> &mut Vec<u8> {
        match &mut self.0[i] {
            Val::B(v) => v,
            _ => panic!("argument {i} is not a U8*"),
        }
    }
    fn w(&mut self, i: usize) -> &mut Vec<u32> {
        match &mut self.0[i] {
            Val::W(v) => v,
            _ => panic!("argument {i} is not a U32*"),
        }
    }
    fn s(&self, i: usize) -> T {
        match self.0[i] {
            Val::S(x) => x,
            _ => panic!("argument {i} is not a T"),
        }
    }
    fn u8(&self, i: usize) -> u8 {
        match self.0[i] {
            Val::U8(x) => x,
            _ => panic!("argument {i} is not a U8"),
        }
    }
    fn u32(&self, i: usize) -> u32 {
        match self.0[i] {
            Val::U32(x) => x,
            _ => panic!("argument {i} is not a U32"),
        }
    }
    /// An `INDEX` or a `KEY`.
    fn u64(&self, i: usize) -> u64 {
        match self.0[i] {
            Val::U64(x) => x,
            _ => panic!("argument {i} is not an INDEX or KEY"),
        }
    }
}

fn load_arg<T: Real>(a: &Arg<'_>) -> Val<T> {
    match *a {
        Arg::Buf(m, off, e) => {
            let bytes = host(m);
            let tail = &bytes[off * e.size()..];
            match e {
                Elem::F32 | Elem::F64 => {
                    assert_eq!(e.size(), T::SIZE, "pointer of the other float type");
                    Val::R(tail.chunks_exact(T::SIZE).map(T::load).collect())
                }
                Elem::U8 => Val::B(tail.to_vec()),
                Elem::U32 => Val::W(
                    tail.chunks_exact(4)
                        .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
            }
        }
        Arg::Real(x) => Val::S(T::of(x)),
        Arg::U8(x) => Val::U8(x),
        Arg::U32(x) => Val::U32(x),
        Arg::Index(x) | Arg::Key(x) => Val::U64(x),
    }
}

fn store_arg<T: Real>(a: &Arg<'_>, v: &Val<T>) {
    let Arg::Buf(m, off, e) = *a else { return };
    let mut bytes = host(m);
    let tail = &mut bytes[off * e.size()..];
    match v {
        Val::R(xs) => {
            for (c, x) in tail.chunks_exact_mut(T::SIZE).zip(xs) {
                x.store(c);
            }
        }
        Val::B(xs) => tail[..xs.len()].copy_from_slice(xs),
        Val::W(xs) => {
            for (c, x) in tail.chunks_exact_mut(4).zip(xs) {
                c.copy_from_slice(&x.to_ne_bytes());
            }
        }
        _ => {}
    }
}

/// Runs `kernel` of the `program` (F32 or F64) over `grid` blocks of `block` threads.
pub(crate) fn run(
    program: DType,
    kernel: &str,
    grid: u32,
    block: u32,
    args: &[Arg<'_>],
) -> Result<()> {
    match program {
        DType::F32 => run_t::<f32>(kernel, grid, block, args),
        DType::F64 => run_t::<f64>(kernel, grid, block, args),
        DType::U8 => Err(err("there is no u8 program".into())),
    }
}

fn run_t<T: Real>(kernel: &str, grid: u32, block: u32, args: &[Arg<'_>]) -> Result<()> {
    let sig = signature(kernel).map_err(err)?;
    let mut a = Args(args.iter().map(load_arg::<T>).collect());
    let threads = grid as usize * block as usize;
    if block == 0 || grid == 0 || block > 1024 {
        return Err(err(format!("{kernel}: invalid launch {grid} x {block}")));
    }
    let reduction = kernel.ends_with("_partial") || kernel == "select_histogram";
    if reduction && block as usize != REDUCE_WG {
        return Err(err(format!(
            "{kernel} needs blocks of {REDUCE_WG} threads, launched with {block}"
        )));
    }
    let last = args.len() - 1;
    // Element-wise kernels end with `n`; thread i handles element i if it was launched.
    let covered = |n: u64| (n as usize).min(threads);
    let len_ok = |what: &str, have: usize, need: usize| -> Result<()> {
        if have < need {
            Err(err(format!(
                "{kernel}: {what} has {have} elements, {need} used"
            )))
        } else {
            Ok(())
        }
    };
    match kernel {
        "fill" => {
            let (v, n) = (a.s(1), covered(a.u64(2)));
            let x = a.r(0);
            len_ok("x", x.len(), n)?;
            x[..n].iter_mut().for_each(|e| *e = v);
        }
        "fill_u8" => {
            let (v, n) = (a.u8(1), covered(a.u64(2)));
            let x = a.b(0);
            len_ok("x", x.len(), n)?;
            x[..n].iter_mut().for_each(|e| *e = v);
        }
        "axpy" => {
            let (s, n) = (a.s(1), covered(a.u64(3)));
            let x = a.r(2).clone();
            let y = a.r(0);
            len_ok("y/x", y.len().min(x.len()), n)?;
            for i in 0..n {
                y[i] = f::axpy(y[i], s, x[i]);
            }
        }
        "sgd_step" | "sgd_ire_step" => {
            let s = f::SgdScalars {
                lr: a.s(2),
                weight_decay: a.s(3),
                momentum: T::zero(),
                dampening_complement: T::zero(),
                nesterov: false,
                first_step: false,
            };
            let fused = kernel == "sgd_ire_step";
            let (mask, kappa) = if fused {
                (a.b(4).clone(), a.s(5))
            } else {
                (Vec::new(), T::zero())
            };
            let n = covered(a.u64(last));
            let g = a.r(1).clone();
            let p = a.r(0);
            len_ok("theta/grad", p.len().min(g.len()), n)?;
            for i in 0..n {
                let base = f::sgd(p[i], g[i], &s);
                p[i] = if fused {
                    f::boost(base, p[i], mask[i], kappa)
                } else {
                    base
                };
            }
        }
        "sgd_momentum_step" | "sgd_momentum_ire_step" => {
            let flags = a.u32(7);
            let s = f::SgdScalars {
                lr: a.s(3),
                weight_decay: a.s(4),
                momentum: a.s(5),
                dampening_complement: a.s(6),
                first_step: flags & 1 != 0,
                nesterov: flags & 2 != 0,
            };
            let fused = kernel == "sgd_momentum_ire_step";
            let (mask, kappa) = if fused {
                (a.b(8).clone(), a.s(9))
            } else {
                (Vec::new(), T::zero())
            };
            let n = covered(a.u64(last));
            let g = a.r(1).clone();
            let mut buf = a.r(2).clone();
            let p = a.r(0);
            len_ok("theta/grad/buf", p.len().min(g.len()).min(buf.len()), n)?;
            for i in 0..n {
                let (base, b2) = f::sgd_momentum(p[i], g[i], buf[i], &s);
                buf[i] = b2;
                p[i] = if fused {
                    f::boost(base, p[i], mask[i], kappa)
                } else {
                    base
                };
            }
            *a.r(2) = buf;
        }
        "adamw_step" | "adamw_ire_step" => {
            let s = f::AdamWScalars {
                decay: a.s(4),
                beta1: a.s(5),
                one_minus_beta1: a.s(6),
                beta2: a.s(7),
                one_minus_beta2: a.s(8),
                step_size: a.s(9),
                bias_correction2_sqrt: a.s(10),
                eps: a.s(11),
            };
            let fused = kernel == "adamw_ire_step";
            let (mask, kappa) = if fused {
                (a.b(12).clone(), a.s(13))
            } else {
                (Vec::new(), T::zero())
            };
            let n = covered(a.u64(last));
            let g = a.r(1).clone();
            let mut m = a.r(2).clone();
            let mut v = a.r(3).clone();
            let p = a.r(0);
            len_ok(
                "theta/grad/m/v",
                p.len().min(g.len()).min(m.len()).min(v.len()),
                n,
            )?;
            for i in 0..n {
                let (base, m2, v2) = f::adamw(p[i], g[i], m[i], v[i], &s);
                m[i] = m2;
                v[i] = v2;
                p[i] = if fused {
                    f::boost(base, p[i], mask[i], kappa)
                } else {
                    base
                };
            }
            *a.r(2) = m;
            *a.r(3) = v;
        }
        "ire_boost" => {
            let (kappa, n) = (a.s(3), covered(a.u64(4)));
            let old = a.r(1).clone();
            let mask = a.b(2).clone();
            let p = a.r(0);
            len_ok("theta/old/mask", p.len().min(old.len()).min(mask.len()), n)?;
            for i in 0..n {
                p[i] = f::boost(p[i], old[i], mask[i], kappa);
            }
        }
        "ema_square" | "ema_abs" => {
            let (beta, c, n) = (a.s(2), a.s(3), covered(a.u64(4)));
            let g = a.r(1).clone();
            let h = a.r(0);
            len_ok("h/g", h.len().min(g.len()), n)?;
            for i in 0..n {
                h[i] = if kernel == "ema_square" {
                    f::ema_square(h[i], g[i], beta, c)
                } else {
                    f::ema_abs(h[i], g[i], beta, c)
                };
            }
        }
        "ema_product" => {
            let (beta, c, n) = (a.s(3), a.s(4), covered(a.u64(5)));
            let x = a.r(1).clone();
            let y = a.r(2).clone();
            let h = a.r(0);
            len_ok("h/a/b", h.len().min(x.len()).min(y.len()), n)?;
            for i in 0..n {
                h[i] = f::ema_product(h[i], x[i], y[i], beta, c);
            }
        }
        "mask_le" => {
            let (tau, n) = (a.s(1), covered(a.u64(3)));
            let h = a.r(0).clone();
            let m = a.b(2);
            len_ok("h/mask", h.len().min(m.len()), n)?;
            for i in 0..n {
                m[i] = f::mask_le(h[i], tau);
            }
        }
        "asam_perturb" => {
            let (s, n) = (a.s(2), covered(a.u64(3)));
            let g = a.r(1).clone();
            let p = a.r(0);
            len_ok("theta/g", p.len().min(g.len()), n)?;
            for i in 0..n {
                p[i] = f::asam_perturb(p[i], g[i], s);
            }
        }
        "sum_squares_partial" | "sum_squares_product_partial" | "sum_partial" => {
            let two = kernel == "sum_squares_product_partial";
            let n = a.u64(if two { 2 } else { 1 }) as usize;
            let x = a.r(0).clone();
            let y = if two { a.r(1).clone() } else { Vec::new() };
            len_ok("input", x.len(), n)?;
            if two {
                len_ok("b", y.len(), n)?;
            }
            let term = |i: usize| match kernel {
                "sum_squares_partial" => x[i] * x[i],
                "sum_partial" => x[i],
                _ => {
                    let p = x[i] * y[i];
                    p * p
                }
            };
            let partial = group_reduce(
                grid,
                block,
                n,
                T::zero(),
                |acc, i| acc + term(i),
                |p, q| p + q,
            );
            let out = a.r(last);
            len_ok("partial", out.len(), grid as usize)?;
            out[..grid as usize].copy_from_slice(&partial);
        }
        "count_non_finite_partial" | "count_nonzero_partial" | "sum_u32_partial" => {
            let n = a.u64(1) as usize;
            let term: Box<dyn Fn(usize) -> u32> = match kernel {
                "count_non_finite_partial" => {
                    let x = a.r(0).clone();
                    len_ok("x", x.len(), n)?;
                    Box::new(move |i| u32::from(!x[i].is_finite()))
                }
                "count_nonzero_partial" => {
                    let x = a.b(0).clone();
                    len_ok("x", x.len(), n)?;
                    Box::new(move |i| u32::from(x[i] != 0))
                }
                _ => {
                    let x = a.w(0).clone();
                    len_ok("x", x.len(), n)?;
                    Box::new(move |i| x[i])
                }
            };
            let partial = group_reduce(
                grid,
                block,
                n,
                0u32,
                |acc, i| acc.wrapping_add(term(i)),
                u32::wrapping_add,
            );
            let out = a.w(last);
            len_ok("partial", out.len(), grid as usize)?;
            out[..grid as usize].copy_from_slice(&partial);
        }
        "select_histogram" => {
            let n = a.u64(1) as usize;
            let (shift, mask, prefix) = (a.u32(2), a.u64(3), a.u64(4));
            let x = a.r(0).clone();
            len_ok("x", x.len(), n)?;
            let hist = a.w(5);
            len_ok("hist", hist.len(), 256)?;
            // Each block counts its grid-stride share, then adds its non-zero bins.
            for g in 0..grid as usize {
                let mut local = [0u32; 256];
                for t in 0..block as usize {
                    let mut i = g * block as usize + t;
                    while i < n {
                        let k = x[i].order_key_u64();
                        if k & mask == prefix {
                            local[((k >> shift) & 0xFF) as usize] += 1;
                        }
                        i += threads;
                    }
                }
                for (h, l) in hist.iter_mut().zip(local) {
                    *h = h.wrapping_add(l);
                }
            }
            let total: u64 = hist.iter().map(|&c| u64::from(c)).sum();
            HIST_PEAK.with(|p| p.set(p.get().max(total)));
        }
        other => return Err(err(format!("no emulation of kernel {other}"))),
    }
    for ((arg, p), v) in args.iter().zip(&sig.params).zip(&a.0) {
        if let Param::Ptr { writes: true, .. } = p {
            store_arg(arg, v);
        }
    }
    Ok(())
}

/// The `GROUP_REDUCE` of the source: each thread folds its grid-stride elements, then the
/// block adds its `REDUCE_WG` accumulators pairwise (s = 128, 64, ..., 1); one partial per
/// block.
fn group_reduce<A: Copy>(
    grid: u32,
    block: u32,
    n: usize,
    zero: A,
    fold: impl Fn(A, usize) -> A,
    add: impl Fn(A, A) -> A,
) -> Vec<A> {
    let threads = grid as usize * block as usize;
    (0..grid as usize)
        .map(|g| {
            let mut scratch: Vec<A> = (0..block as usize)
                .map(|t| {
                    let mut acc = zero;
                    let mut i = g * block as usize + t;
                    while i < n {
                        acc = fold(acc, i);
                        i += threads;
                    }
                    acc
                })
                .collect();
            let mut s = block as usize / 2;
            while s > 0 {
                for t in 0..s {
                    scratch[t] = add(scratch[t], scratch[t + s]);
                }
                s >>= 1;
            }
            scratch[0]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CudaBackend, Limits};
    use ire_core::Backend;

    fn emulated() -> Option<CudaBackend> {
        Some(CudaBackend::emulated(Limits::default()))
    }

    // The whole conformance suite, through the real launch code, kernels emulated.
    ire_core::conformance_tests!(emulated());

    /// Tiny chunk and flush sizes: the split counting and the histogram read-back run on
    /// ordinary sizes.
    #[test]
    fn chunked_counts_and_selection() {
        let b = CudaBackend::emulated(Limits {
            chunk: 300,
            flush: 700,
        });
        HIST_PEAK.with(|p| p.set(0));
        ire_core::conformance::reductions(&b);
        ire_core::conformance::selection(&b);
        ire_core::conformance::mask_rule(&b);
        // The histogram was read back and cleared before it held more than `flush` counts
        // (and it did hold a full chunk, so the check is not vacuous).
        let peak = HIST_PEAK.with(Cell::get);
        assert!((300..=700).contains(&peak), "histogram peak {peak}");
        let m = b.alloc_from(&[1u8; 1001]).unwrap();
        assert_eq!(b.count_nonzero(&m).unwrap(), 1001);
    }

    #[test]
    fn short_grids_and_wrong_blocks_are_caught() {
        let mem = Mem::Host(Mutex::new(vec![0; 4 * 600]));
        let x = Arg::Buf(&mem, 0, Elem::F32);
        // 2 blocks of 256 cover 512 of 600 elements: the rest keeps its old value.
        run(
            DType::F32,
            "fill",
            2,
            256,
            &[x, Arg::Real(1.5), Arg::Index(600)],
        )
        .unwrap();
        let mut raw = vec![0u8; 4 * 600];
        read(&mem, 0, &mut raw).unwrap();
        let v: Vec<f32> = raw.chunks_exact(4).map(f32::load).collect();
        assert!(v[..512].iter().all(|&e| e == 1.5));
        assert!(v[512..].iter().all(|&e| e == 0.0));
        let out = Mem::Host(Mutex::new(vec![0; 4 * 4]));
        let p = Arg::Buf(&out, 0, Elem::F32);
        assert!(run(DType::F32, "sum_partial", 1, 128, &[x, Arg::Index(600), p]).is_err());
        // More blocks than partials: out of bounds on a GPU, an error here.
        assert!(run(DType::F32, "sum_partial", 8, 256, &[x, Arg::Index(600), p]).is_err());
    }

    #[test]
    fn each_block_reduces_its_grid_stride_share() {
        // 1000 integer-valued elements, 2 blocks of 256: block g owns the elements whose
        // index modulo 512 falls in [256 g, 256 g + 256). Integers add exactly in any order.
        let v: Vec<f64> = (0..1000).map(f64::from).collect();
        let p = group_reduce(2, 256, v.len(), 0.0, |acc, i| acc + v[i], |a, b| a + b);
        let want = |g: usize| -> f64 {
            (0..1000)
                .filter(|i| i % 512 / 256 == g)
                .map(|i| i as f64)
                .sum()
        };
        assert_eq!(p, vec![want(0), want(1)]);
        assert_eq!(p[0] + p[1], 499_500.0);
    }
}

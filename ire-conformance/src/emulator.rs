//! A host runtime that runs the IRE kernels' semantics thread by thread, for the tests of the
//! device layer on machines without a device.
//!
//! What it checks is launch plumbing, not device arithmetic: each kernel reads its arguments
//! by position as the source declares them and runs with the launch's work-groups, so a wrong
//! argument order, a short grid or a wrong geometry fails the conformance suite; but it
//! computes with the same `ire_core::formulas` as the reference backend, so its bit-identity
//! with the reference is true by construction. Reductions follow the source's tree order.

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard};

use ire_core::device::{DeviceClass, KernelArg, Launch, ProgramSource, Runtime};
use ire_core::formulas as f;
use ire_core::kernels::{Dialect, REDUCE_WG};
use ire_core::mask as pm;
use ire_core::{DType, Error, Result, Scalar};

thread_local! {
    /// The largest total the device histogram reached on this thread (tests of the read-back
    /// budget reset and read it).
    pub static HIST_PEAK: Cell<u64> = const { Cell::new(0) };
}

/// The emulated device.
#[derive(Debug, Default)]
pub struct Emulator;

fn err(message: String) -> Error {
    Error::Device {
        backend: "emulator".into(),
        message,
    }
}

fn host(m: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Runtime for Emulator {
    type Mem = Mutex<Vec<u8>>;
    type Program = &'static str;

    const NAME: &'static str = "emulator";
    fn class(&self) -> DeviceClass {
        DeviceClass::Emulated
    }
    fn dialect(&self) -> Dialect {
        Dialect::OpenCl
    }
    fn supports(&self, _: DType) -> bool {
        true
    }
    fn bytes(mem: &Self::Mem) -> usize {
        host(mem).len()
    }
    fn alloc(&self, bytes: usize) -> Result<Self::Mem> {
        // Unspecified contents: fill with a pattern so that reading unwritten scratch shows.
        Ok(Mutex::new(vec![0xA5; bytes]))
    }
    fn write(&self, dst: &mut Self::Mem, offset: usize, src: &[u8]) -> Result<()> {
        let mut d = host(dst);
        let end = offset + src.len();
        if end > d.len() {
            return Err(err(format!("write past the end ({end} > {})", d.len())));
        }
        d[offset..end].copy_from_slice(src);
        Ok(())
    }
    fn read(&self, src: &Self::Mem, offset: usize, dst: &mut [u8]) -> Result<()> {
        let s = host(src);
        let end = offset + dst.len();
        if end > s.len() {
            return Err(err(format!("read past the end ({end} > {})", s.len())));
        }
        dst.copy_from_slice(&s[offset..end]);
        Ok(())
    }
    fn copy(&self, src: &Self::Mem, dst: &mut Self::Mem, bytes: usize) -> Result<()> {
        let s = host(src)[..bytes].to_vec();
        self.write(dst, 0, &s)
    }
    fn zero(&self, dst: &mut Self::Mem, bytes: usize) -> Result<()> {
        host(dst)[..bytes].fill(0);
        Ok(())
    }
    fn build(&self, p: &ProgramSource<'_>) -> Result<Self::Program> {
        if p.name == "ire-ops" {
            Ok(p.name)
        } else {
            Err(Error::Unsupported {
                backend: "emulator".into(),
                what: format!("the kernel program {}", p.name),
            })
        }
    }
    fn launch(&self, _: &Self::Program, l: &Launch<'_, '_, Self::Mem>) -> Result<()> {
        match l.dtype {
            DType::F32 => run::<f32>(l.kernel, l.groups, l.args),
            DType::F64 => run::<f64>(l.kernel, l.groups, l.args),
            d => Err(err(format!("there is no {} program", d.name()))),
        }
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
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

/// An argument as the kernel body sees it; arrays are copied in, and written back after the
/// kernel for outputs.
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
    fn u64(&self, i: usize) -> u64 {
        match self.0[i] {
            Val::U64(x) => x,
            _ => panic!("argument {i} is not an INDEX or KEY"),
        }
    }
}

fn load<T: Real>(a: &KernelArg<'_, Mutex<Vec<u8>>>) -> Val<T> {
    match a {
        KernelArg::In(m, d) | KernelArg::Out(m, d) => {
            let bytes = m.map(|m| host(m).clone()).unwrap_or_default();
            match d {
                DType::F32 | DType::F64 => {
                    assert_eq!(d.size(), T::SIZE, "pointer of the other float type");
                    Val::R(bytes.chunks_exact(T::SIZE).map(T::load).collect())
                }
                DType::U8 => Val::B(bytes),
                DType::U32 => Val::W(
                    bytes
                        .chunks_exact(4)
                        .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
            }
        }
        KernelArg::Real(x) => Val::S(T::of(*x)),
        KernelArg::U8(x) => Val::U8(*x),
        KernelArg::U32(x) => Val::U32(*x),
        KernelArg::Index(x) => Val::U64(*x as u64),
        KernelArg::Key(x) => Val::U64(*x),
    }
}

fn store<T: Real>(a: &KernelArg<'_, Mutex<Vec<u8>>>, v: &Val<T>) {
    let KernelArg::Out(Some(m), _) = a else {
        return;
    };
    let mut bytes = host(m);
    match v {
        Val::R(xs) => {
            for (c, x) in bytes.chunks_exact_mut(T::SIZE).zip(xs) {
                x.store(c);
            }
        }
        Val::B(xs) => bytes[..xs.len()].copy_from_slice(xs),
        Val::W(xs) => {
            for (c, x) in bytes.chunks_exact_mut(4).zip(xs) {
                c.copy_from_slice(&x.to_ne_bytes());
            }
        }
        _ => {}
    }
}

fn run<T: Real>(kernel: &str, groups: usize, args: &[KernelArg<'_, Mutex<Vec<u8>>>]) -> Result<()> {
    let mut a = Args(args.iter().map(load::<T>).collect());
    let block = REDUCE_WG;
    let threads = groups * block;
    let last = args.len() - 1;
    // Element-wise kernels end with `n`; thread i handles element i only if it was launched.
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
                (a.w(4).clone(), a.s(5))
            } else {
                (Vec::new(), T::zero())
            };
            let n = covered(a.u64(last));
            let g = a.r(1).clone();
            let p = a.r(0);
            len_ok("theta/grad", p.len().min(g.len()), n)?;
            if fused {
                len_ok("mask", mask.len(), pm::words(n))?;
            }
            for i in 0..n {
                let base = f::sgd(p[i], g[i], &s);
                p[i] = if fused {
                    f::boost(base, p[i], pm::bit(&mask, i), kappa)
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
                (a.w(8).clone(), a.s(9))
            } else {
                (Vec::new(), T::zero())
            };
            let n = covered(a.u64(last));
            let g = a.r(1).clone();
            let mut buf = a.r(2).clone();
            let p = a.r(0);
            len_ok("theta/grad/buf", p.len().min(g.len()).min(buf.len()), n)?;
            if fused {
                len_ok("mask", mask.len(), pm::words(n))?;
            }
            for i in 0..n {
                let (base, b2) = f::sgd_momentum(p[i], g[i], buf[i], &s);
                buf[i] = b2;
                p[i] = if fused {
                    f::boost(base, p[i], pm::bit(&mask, i), kappa)
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
                (a.w(12).clone(), a.s(13))
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
            if fused {
                len_ok("mask", mask.len(), pm::words(n))?;
            }
            for i in 0..n {
                let (base, m2, v2) = f::adamw(p[i], g[i], m[i], v[i], &s);
                m[i] = m2;
                v[i] = v2;
                p[i] = if fused {
                    f::boost(base, p[i], pm::bit(&mask, i), kappa)
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
            let mask = a.w(2).clone();
            let p = a.r(0);
            len_ok("theta/old", p.len().min(old.len()), n)?;
            len_ok("mask", mask.len(), pm::words(n))?;
            for i in 0..n {
                p[i] = f::boost(p[i], old[i], pm::bit(&mask, i), kappa);
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
        // One work-item per mask word.
        "mask_le" | "mask_pack" => {
            let n = a.u64(last) as usize;
            let words = pm::words(n).min(threads);
            let m = if kernel == "mask_le" {
                let h = a.r(0).clone();
                len_ok("h", h.len(), n)?;
                let tau = a.s(1);
                (0..words)
                    .map(|w| {
                        pm::le_word(&h[w * pm::WORD_BITS..((w + 1) * pm::WORD_BITS).min(n)], tau)
                    })
                    .collect::<Vec<u32>>()
            } else {
                let x = a.b(0).clone();
                len_ok("bytes", x.len(), n)?;
                (0..words)
                    .map(|w| pm::pack_word(&x[w * pm::WORD_BITS..((w + 1) * pm::WORD_BITS).min(n)]))
                    .collect()
            };
            let out = a.w(if kernel == "mask_le" { 2 } else { 1 });
            len_ok("mask", out.len(), words)?;
            out[..words].copy_from_slice(&m);
        }
        "mask_unpack" => {
            let n = covered(a.u64(2));
            let mask = a.w(0).clone();
            let out = a.b(1);
            len_ok("bytes", out.len(), n)?;
            len_ok("mask", mask.len(), pm::words(n))?;
            for (i, x) in out[..n].iter_mut().enumerate() {
                *x = pm::bit(&mask, i);
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
        "sum_squares_partial" | "sum_squares_product_partial" => {
            let two = kernel == "sum_squares_product_partial";
            let n = a.u64(if two { 2 } else { 1 }) as usize;
            let x = a.r(0).clone();
            let y = if two { a.r(1).clone() } else { Vec::new() };
            len_ok("input", x.len(), n)?;
            if two {
                len_ok("b", y.len(), n)?;
            }
            let term = |i: usize| {
                if two {
                    let p = x[i] * y[i];
                    p * p
                } else {
                    x[i] * x[i]
                }
            };
            let partial = group_reduce(groups, n, T::zero(), |acc, i| acc + term(i), |p, q| p + q);
            let out = a.r(last);
            len_ok("partial", out.len(), groups)?;
            out[..groups].copy_from_slice(&partial);
        }
        "count_non_finite_partial" | "count_nan_partial" | "count_flat_partial" => {
            let n = a.u64(1) as usize;
            let term: Box<dyn Fn(usize) -> u32> = match kernel {
                "count_flat_partial" => {
                    let x = a.w(0).clone();
                    len_ok("x", x.len(), n)?;
                    Box::new(move |i| x[i].count_ones())
                }
                "count_nan_partial" => {
                    let x = a.r(0).clone();
                    len_ok("x", x.len(), n)?;
                    Box::new(move |i| u32::from(x[i].is_nan()))
                }
                _ => {
                    let x = a.r(0).clone();
                    len_ok("x", x.len(), n)?;
                    Box::new(move |i| u32::from(!x[i].is_finite()))
                }
            };
            let partial = group_reduce(
                groups,
                n,
                0u32,
                |acc, i| acc.wrapping_add(term(i)),
                u32::wrapping_add,
            );
            let out = a.w(last);
            len_ok("partial", out.len(), groups)?;
            out[..groups].copy_from_slice(&partial);
        }
        "select_histogram" => {
            let (start, n) = (a.u64(1) as usize, a.u64(2) as usize);
            let (shift, mask, prefix) = (a.u32(3), a.u64(4), a.u64(5));
            let x = a.r(0).clone();
            len_ok("x", x.len(), start + n)?;
            let hist = a.w(6);
            len_ok("hist", hist.len(), 256)?;
            // Each group counts its grid-stride share, then adds its bins.
            for g in 0..groups {
                let mut local = [0u32; 256];
                for t in 0..block {
                    let mut i = g * block + t;
                    while i < n {
                        let k = x[start + i].order_key_u64();
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
            let total: u64 = hist[..256].iter().map(|&c| u64::from(c)).sum();
            HIST_PEAK.with(|p| p.set(p.get().max(total)));
        }
        other => return Err(err(format!("no emulation of kernel {other}"))),
    }
    for (arg, v) in args.iter().zip(&a.0) {
        store(arg, v);
    }
    Ok(())
}

/// The source's `GROUP_REDUCE`: each work-item folds its grid-stride elements, then the group
/// adds its `REDUCE_WG` accumulators pairwise (s = 128, 64, ..., 1); one partial per group.
fn group_reduce<A: Copy>(
    groups: usize,
    n: usize,
    zero: A,
    fold: impl Fn(A, usize) -> A,
    add: impl Fn(A, A) -> A,
) -> Vec<A> {
    let block = REDUCE_WG;
    let threads = groups * block;
    (0..groups)
        .map(|g| {
            let mut scratch: Vec<A> = (0..block)
                .map(|t| {
                    let mut acc = zero;
                    let mut i = g * block + t;
                    while i < n {
                        acc = fold(acc, i);
                        i += threads;
                    }
                    acc
                })
                .collect();
            let mut s = block / 2;
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

//! [`Backend`] for [`DeviceBackend`]: every IRE operation, once, for every runtime.
//!
//! Element-wise operations launch one work-item per element of the canonical formula in the
//! portable source; the scalars that depend only on the step are computed on the host.

use alloc::format;

use super::args::KernelArg::{self, Index, Real, U8, U32};
use super::backend::{DeviceBackend, IRE_OPS, groups_for};
use super::buffer::DeviceBuffer;
use super::reduce::{self, read_all};
use super::runtime::Runtime;
use super::select;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::formulas::{AdamWScalars, SgdScalars};
use crate::mask as pm;
use crate::scalar::{DType, Element, Scalar, as_bytes};

type Buf<R, E> = DeviceBuffer<R, E>;

/// The common length of buffers that must agree, or an error naming the pair.
fn same(what: &str, expected: usize, found: usize) -> Result<usize> {
    if expected == found {
        Ok(expected)
    } else {
        Err(Error::SizeMismatch {
            what: what.into(),
            expected,
            found,
        })
    }
}

/// Bit 0: first step (buffer := d); bit 1: Nesterov (the kernels' `flags`).
fn sgd_flags<T>(s: &SgdScalars<T>) -> u32 {
    (s.first_step as u32) | ((s.nesterov as u32) << 1)
}

fn real<'a, M, T: Scalar>(x: T) -> KernelArg<'a, M> {
    Real(x.as_f64())
}

/// The eight host scalars of an AdamW step, in kernel order.
fn adamw_args<'a, M, T: Scalar>(s: &AdamWScalars<T>) -> [KernelArg<'a, M>; 8] {
    [
        real(s.decay),
        real(s.beta1),
        real(s.one_minus_beta1),
        real(s.beta2),
        real(s.one_minus_beta2),
        real(s.step_size),
        real(s.bias_correction2_sqrt),
        real(s.eps),
    ]
}

/// The four host scalars of an SGD-with-momentum step, in kernel order (after lr, wd).
fn momentum_args<'a, M, T: Scalar>(s: &SgdScalars<T>) -> [KernelArg<'a, M>; 4] {
    [
        real(s.weight_decay),
        real(s.momentum),
        real(s.dampening_complement),
        U32(sgd_flags(s)),
    ]
}

impl<R: Runtime> DeviceBackend<R> {
    /// An element-wise kernel of the IRE program over `n` elements (nothing when `n == 0`).
    fn each<T: Scalar>(
        &self,
        kernel: &'static str,
        n: usize,
        args: &[KernelArg<'_, R::Mem>],
    ) -> Result<()> {
        self.require(T::DTYPE)?;
        self.launch_in(&IRE_OPS, T::DTYPE, kernel, groups_for(n), args)
    }

    /// `h ← β·h + (1−β)·f(g)` by `kernel` (`ema_square`: f = g², `ema_abs`: f = |g|); the
    /// complement is computed here once so every backend rounds it the same.
    fn ema_of<T: Scalar>(
        &self,
        kernel: &'static str,
        h: &mut Buf<R, T>,
        g: &Buf<R, T>,
        beta: T,
    ) -> Result<()> {
        let n = same(kernel, h.len(), g.len())?;
        let args = [
            h.output(),
            g.input(),
            real(beta),
            real(T::one() - beta),
            Index(n),
        ];
        self.each::<T>(kernel, n, &args)
    }
}

impl<R: Runtime> Backend for DeviceBackend<R> {
    type Buffer<E: Element> = DeviceBuffer<R, E>;

    fn name(&self) -> &str {
        R::NAME
    }

    fn supports_dtype(&self, dtype: DType) -> bool {
        self.runtime().supports(dtype)
    }

    fn alloc<E: Element>(&self, len: usize) -> Result<Buf<R, E>> {
        self.require(E::DTYPE)?;
        if len == 0 {
            return Ok(DeviceBuffer::new(None, 0));
        }
        let bytes = len
            .checked_mul(E::DTYPE.size())
            .ok_or_else(|| self.error(format!("a buffer of {len} elements overflows usize")))?;
        let mut mem = self.runtime().alloc(bytes)?;
        self.runtime().zero(&mut mem, bytes)?;
        Ok(DeviceBuffer::new(Some(mem), len))
    }

    // Not the trait's alloc + upload: the upload overwrites every byte, so zeroing the new
    // memory first would be one more pass over it for nothing.
    fn alloc_from<E: Element>(&self, src: &[E]) -> Result<Buf<R, E>> {
        self.require(E::DTYPE)?;
        if src.is_empty() {
            return Ok(DeviceBuffer::new(None, 0));
        }
        let mut mem = self.runtime().alloc(core::mem::size_of_val(src))?;
        self.runtime().write(&mut mem, 0, as_bytes(src))?;
        Ok(DeviceBuffer::new(Some(mem), src.len()))
    }

    fn synchronize(&self) -> Result<()> {
        self.runtime().synchronize()
    }

    fn len<E: Element>(&self, buf: &Buf<R, E>) -> usize {
        buf.len()
    }

    fn upload<E: Element>(&self, dst: &mut Buf<R, E>, src: &[E]) -> Result<()> {
        same("upload", dst.len(), src.len())?;
        match dst.mem.as_mut() {
            Some(m) => self.runtime().write(m, 0, as_bytes(src)),
            None => Ok(()),
        }
    }

    fn download<E: Element>(&self, src: &Buf<R, E>, dst: &mut [E]) -> Result<()> {
        same("download", src.len(), dst.len())?;
        read_all(self, src, dst)
    }

    fn copy<E: Element>(&self, src: &Buf<R, E>, dst: &mut Buf<R, E>) -> Result<()> {
        let n = same("copy", dst.len(), src.len())?;
        match (src.mem(), dst.mem.as_mut()) {
            (Some(s), Some(d)) => self.runtime().copy(s, d, n * E::DTYPE.size()),
            _ => Ok(()),
        }
    }

    fn fill<E: Element>(&self, dst: &mut Buf<R, E>, value: E) -> Result<()> {
        let n = dst.len();
        let bytes = as_bytes(core::slice::from_ref(&value));
        match E::DTYPE {
            DType::U8 => self.each::<f32>("fill_u8", n, &[dst.output(), U8(bytes[0]), Index(n)]),
            DType::F32 | DType::F64 => {
                let v = if E::DTYPE == DType::F64 {
                    f64::from_ne_bytes(bytes.try_into().map_err(|_| self.error("fill".into()))?)
                } else {
                    let b4: [u8; 4] = bytes.try_into().map_err(|_| self.error("fill".into()))?;
                    f64::from(f32::from_ne_bytes(b4))
                };
                self.require(E::DTYPE)?;
                self.launch_in(
                    &IRE_OPS,
                    E::DTYPE,
                    "fill",
                    groups_for(n),
                    &[dst.output(), Real(v), Index(n)],
                )
            }
            DType::U32 => Err(Error::Unsupported {
                backend: self.name().into(),
                what: "filling a u32 buffer with a value".into(),
            }),
        }
    }

    fn axpy<T: Scalar>(&self, y: &mut Buf<R, T>, a: T, x: &Buf<R, T>) -> Result<()> {
        let n = same("axpy", y.len(), x.len())?;
        self.each::<T>("axpy", n, &[y.output(), real(a), x.input(), Index(n)])
    }

    fn sgd_step<T: Scalar>(
        &self,
        theta: &mut Buf<R, T>,
        grad: &Buf<R, T>,
        s: &SgdScalars<T>,
    ) -> Result<()> {
        let n = same("sgd_step: grad", theta.len(), grad.len())?;
        let args = [
            theta.output(),
            grad.input(),
            real(s.lr),
            real(s.weight_decay),
            Index(n),
        ];
        self.each::<T>("sgd_step", n, &args)
    }

    fn sgd_momentum_step<T: Scalar>(
        &self,
        theta: &mut Buf<R, T>,
        grad: &Buf<R, T>,
        momentum: &mut Buf<R, T>,
        s: &SgdScalars<T>,
    ) -> Result<()> {
        let n = same("sgd_momentum_step: grad", theta.len(), grad.len())?;
        same("sgd_momentum_step: momentum", n, momentum.len())?;
        let [wd, mu, dc, flags] = momentum_args(s);
        let args = [
            theta.output(),
            grad.input(),
            momentum.output(),
            real(s.lr),
            wd,
            mu,
            dc,
            flags,
            Index(n),
        ];
        self.each::<T>("sgd_momentum_step", n, &args)
    }

    fn adamw_step<T: Scalar>(
        &self,
        theta: &mut Buf<R, T>,
        grad: &Buf<R, T>,
        m: &mut Buf<R, T>,
        v: &mut Buf<R, T>,
        s: &AdamWScalars<T>,
    ) -> Result<()> {
        let n = same("adamw_step: grad", theta.len(), grad.len())?;
        same("adamw_step: m", n, m.len())?;
        same("adamw_step: v", n, v.len())?;
        let [a, b, c, d, e, f, g, h] = adamw_args(s);
        let args = [
            theta.output(),
            grad.input(),
            m.output(),
            v.output(),
            a,
            b,
            c,
            d,
            e,
            f,
            g,
            h,
            Index(n),
        ];
        self.each::<T>("adamw_step", n, &args)
    }

    fn ire_boost<T: Scalar>(
        &self,
        theta: &mut Buf<R, T>,
        theta_old: &Buf<R, T>,
        mask: &Buf<R, u32>,
        kappa: T,
    ) -> Result<()> {
        let n = same("ire_boost: theta_old", theta.len(), theta_old.len())?;
        pm::check_words("ire_boost: mask", n, mask.len())?;
        let args = [
            theta.output(),
            theta_old.input(),
            mask.input(),
            real(kappa),
            Index(n),
        ];
        self.each::<T>("ire_boost", n, &args)
    }

    fn ema_square<T: Scalar>(&self, h: &mut Buf<R, T>, g: &Buf<R, T>, beta: T) -> Result<()> {
        self.ema_of("ema_square", h, g, beta)
    }

    fn ema_abs<T: Scalar>(&self, h: &mut Buf<R, T>, g: &Buf<R, T>, beta: T) -> Result<()> {
        self.ema_of("ema_abs", h, g, beta)
    }

    fn ema_product<T: Scalar>(
        &self,
        h: &mut Buf<R, T>,
        a: &Buf<R, T>,
        b: &Buf<R, T>,
        beta: T,
    ) -> Result<()> {
        let n = same("ema_product: a", h.len(), a.len())?;
        same("ema_product: b", n, b.len())?;
        let args = [
            h.output(),
            a.input(),
            b.input(),
            real(beta),
            real(T::one() - beta),
            Index(n),
        ];
        self.each::<T>("ema_product", n, &args)
    }

    fn mask_le<T: Scalar>(&self, h: &Buf<R, T>, tau: T, mask: &mut Buf<R, u32>) -> Result<()> {
        let n = h.len();
        pm::check_words("mask_le", n, mask.len())?;
        let args = [h.input(), real(tau), mask.output(), Index(n)];
        self.each::<T>("mask_le", pm::words(n), &args)
    }

    fn mask_pack(&self, bytes: &Buf<R, u8>, mask: &mut Buf<R, u32>) -> Result<()> {
        let n = bytes.len();
        pm::check_words("mask_pack", n, mask.len())?;
        // Mask kernels live in the f32 program, which every device has.
        let args = [bytes.input(), mask.output(), Index(n)];
        self.each::<f32>("mask_pack", pm::words(n), &args)
    }

    fn mask_unpack(&self, mask: &Buf<R, u32>, bytes: &mut Buf<R, u8>) -> Result<()> {
        let n = bytes.len();
        pm::check_words("mask_unpack", n, mask.len())?;
        let args = [mask.input(), bytes.output(), Index(n)];
        self.each::<f32>("mask_unpack", n, &args)
    }

    fn asam_perturb<T: Scalar>(&self, theta: &mut Buf<R, T>, g: &Buf<R, T>, s: T) -> Result<()> {
        let n = same("asam_perturb", theta.len(), g.len())?;
        let args = [theta.output(), g.input(), real(s), Index(n)];
        self.each::<T>("asam_perturb", n, &args)
    }

    fn sum_squares<T: Scalar>(&self, x: &Buf<R, T>) -> Result<T> {
        self.require(T::DTYPE)?;
        reduce::sum(self, "sum_squares_partial", &[x], x.len())
    }

    fn sum_squares_product<T: Scalar>(&self, a: &Buf<R, T>, b: &Buf<R, T>) -> Result<T> {
        let n = same("sum_squares_product", a.len(), b.len())?;
        self.require(T::DTYPE)?;
        reduce::sum(self, "sum_squares_product_partial", &[a, b], n)
    }

    fn count_non_finite<T: Scalar>(&self, x: &Buf<R, T>) -> Result<usize> {
        self.require(T::DTYPE)?;
        reduce::count(
            self,
            T::DTYPE,
            "count_non_finite_partial",
            x.input(),
            x.len(),
        )
    }

    fn count_flat(&self, mask: &Buf<R, u32>) -> Result<usize> {
        reduce::count(
            self,
            DType::F32,
            "count_flat_partial",
            mask.input(),
            mask.len(),
        )
    }

    fn kth_largest<T: Scalar>(&self, bufs: &[&Buf<R, T>], k: usize) -> Result<T> {
        select::kth_largest(self, bufs, k)
    }

    fn sgd_ire_step<T: Scalar>(
        &self,
        theta: &mut Buf<R, T>,
        grad: &Buf<R, T>,
        s: &SgdScalars<T>,
        mask: &Buf<R, u32>,
        kappa: T,
    ) -> Result<()> {
        let n = same("sgd_ire_step: grad", theta.len(), grad.len())?;
        pm::check_words("sgd_ire_step: mask", n, mask.len())?;
        let args = [
            theta.output(),
            grad.input(),
            real(s.lr),
            real(s.weight_decay),
            mask.input(),
            real(kappa),
            Index(n),
        ];
        self.each::<T>("sgd_ire_step", n, &args)
    }

    fn sgd_momentum_ire_step<T: Scalar>(
        &self,
        theta: &mut Buf<R, T>,
        grad: &Buf<R, T>,
        momentum: &mut Buf<R, T>,
        s: &SgdScalars<T>,
        mask: &Buf<R, u32>,
        kappa: T,
    ) -> Result<()> {
        let n = same("sgd_momentum_ire_step: grad", theta.len(), grad.len())?;
        same("sgd_momentum_ire_step: momentum", n, momentum.len())?;
        pm::check_words("sgd_momentum_ire_step: mask", n, mask.len())?;
        let [wd, mu, dc, flags] = momentum_args(s);
        let args = [
            theta.output(),
            grad.input(),
            momentum.output(),
            real(s.lr),
            wd,
            mu,
            dc,
            flags,
            mask.input(),
            real(kappa),
            Index(n),
        ];
        self.each::<T>("sgd_momentum_ire_step", n, &args)
    }

    fn adamw_ire_step<T: Scalar>(
        &self,
        theta: &mut Buf<R, T>,
        grad: &Buf<R, T>,
        m: &mut Buf<R, T>,
        v: &mut Buf<R, T>,
        s: &AdamWScalars<T>,
        mask: &Buf<R, u32>,
        kappa: T,
    ) -> Result<()> {
        let n = same("adamw_ire_step: grad", theta.len(), grad.len())?;
        same("adamw_ire_step: m", n, m.len())?;
        same("adamw_ire_step: v", n, v.len())?;
        pm::check_words("adamw_ire_step: mask", n, mask.len())?;
        let [a, b, c, d, e, f, g, h] = adamw_args(s);
        let args = [
            theta.output(),
            grad.input(),
            m.output(),
            v.output(),
            a,
            b,
            c,
            d,
            e,
            f,
            g,
            h,
            mask.input(),
            real(kappa),
            Index(n),
        ];
        self.each::<T>("adamw_ire_step", n, &args)
    }
}

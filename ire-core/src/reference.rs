//! The reference backend: host vectors and one plain loop per operation, in no_std Rust.
//!
//! It is the oracle every other backend is checked against, and what an embedded user runs.
//! Speed is not its job: clarity and the canonical formulas are.

use alloc::vec;
use alloc::vec::Vec;

use crate::backend::Backend;
use crate::error::{Result, check_len};
use crate::formulas::{self as f, AdamWScalars, SgdScalars};
use crate::mask as pm;
use crate::scalar::{Element, Scalar};

/// A buffer of the reference backend: a host vector.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostBuffer<E>(pub Vec<E>);

impl<E> HostBuffer<E> {
    /// The elements.
    pub fn as_slice(&self) -> &[E] {
        &self.0
    }
    /// The elements, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [E] {
        &mut self.0
    }
}

/// The reference backend (host memory, sequential loops).
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

fn same<A, B>(what: &str, a: &[A], b: &[B]) -> Result<()> {
    check_len(what, a.len(), b.len())
}

impl Backend for Reference {
    type Buffer<E: Element> = HostBuffer<E>;

    fn name(&self) -> &str {
        "reference"
    }

    fn alloc<E: Element>(&self, len: usize) -> Result<HostBuffer<E>> {
        Ok(HostBuffer(vec![E::default(); len]))
    }

    fn len<E: Element>(&self, buf: &HostBuffer<E>) -> usize {
        buf.0.len()
    }

    fn upload<E: Element>(&self, dst: &mut HostBuffer<E>, src: &[E]) -> Result<()> {
        same("upload", &dst.0, src)?;
        dst.0.copy_from_slice(src);
        Ok(())
    }

    fn download<E: Element>(&self, src: &HostBuffer<E>, dst: &mut [E]) -> Result<()> {
        same("download", &src.0, dst)?;
        dst.copy_from_slice(&src.0);
        Ok(())
    }

    fn copy<E: Element>(&self, src: &HostBuffer<E>, dst: &mut HostBuffer<E>) -> Result<()> {
        same("copy", &src.0, &dst.0)?;
        dst.0.copy_from_slice(&src.0);
        Ok(())
    }

    fn fill<E: Element>(&self, dst: &mut HostBuffer<E>, value: E) -> Result<()> {
        dst.0.iter_mut().for_each(|x| *x = value);
        Ok(())
    }

    fn axpy<T: Scalar>(&self, y: &mut HostBuffer<T>, a: T, x: &HostBuffer<T>) -> Result<()> {
        same("axpy", &y.0, &x.0)?;
        for (y, &x) in y.0.iter_mut().zip(&x.0) {
            *y = f::axpy(*y, a, x);
        }
        Ok(())
    }

    fn sgd_step<T: Scalar>(
        &self,
        theta: &mut HostBuffer<T>,
        grad: &HostBuffer<T>,
        s: &SgdScalars<T>,
    ) -> Result<()> {
        same("sgd_step: grad", &theta.0, &grad.0)?;
        for (p, &g) in theta.0.iter_mut().zip(&grad.0) {
            *p = f::sgd(*p, g, s);
        }
        Ok(())
    }

    fn sgd_momentum_step<T: Scalar>(
        &self,
        theta: &mut HostBuffer<T>,
        grad: &HostBuffer<T>,
        momentum: &mut HostBuffer<T>,
        s: &SgdScalars<T>,
    ) -> Result<()> {
        same("sgd_momentum_step: grad", &theta.0, &grad.0)?;
        same("sgd_momentum_step: momentum", &theta.0, &momentum.0)?;
        for ((p, &g), b) in theta.0.iter_mut().zip(&grad.0).zip(momentum.0.iter_mut()) {
            (*p, *b) = f::sgd_momentum(*p, g, *b, s);
        }
        Ok(())
    }

    fn adamw_step<T: Scalar>(
        &self,
        theta: &mut HostBuffer<T>,
        grad: &HostBuffer<T>,
        m: &mut HostBuffer<T>,
        v: &mut HostBuffer<T>,
        s: &AdamWScalars<T>,
    ) -> Result<()> {
        same("adamw_step: grad", &theta.0, &grad.0)?;
        same("adamw_step: m", &theta.0, &m.0)?;
        same("adamw_step: v", &theta.0, &v.0)?;
        for (((p, &g), m), v) in theta
            .0
            .iter_mut()
            .zip(&grad.0)
            .zip(m.0.iter_mut())
            .zip(v.0.iter_mut())
        {
            (*p, *m, *v) = f::adamw(*p, g, *m, *v, s);
        }
        Ok(())
    }

    fn ire_boost<T: Scalar>(
        &self,
        theta: &mut HostBuffer<T>,
        theta_old: &HostBuffer<T>,
        mask: &HostBuffer<u32>,
        kappa: T,
    ) -> Result<()> {
        same("ire_boost: theta_old", &theta.0, &theta_old.0)?;
        pm::check_words("ire_boost: mask", theta.0.len(), mask.0.len())?;
        for (i, (p, &o)) in theta.0.iter_mut().zip(&theta_old.0).enumerate() {
            *p = f::boost(*p, o, pm::bit(&mask.0, i), kappa);
        }
        Ok(())
    }

    fn ema_square<T: Scalar>(
        &self,
        h: &mut HostBuffer<T>,
        g: &HostBuffer<T>,
        beta: T,
    ) -> Result<()> {
        same("ema_square", &h.0, &g.0)?;
        let c = T::one() - beta;
        for (h, &g) in h.0.iter_mut().zip(&g.0) {
            *h = f::ema_square(*h, g, beta, c);
        }
        Ok(())
    }

    fn ema_abs<T: Scalar>(&self, h: &mut HostBuffer<T>, g: &HostBuffer<T>, beta: T) -> Result<()> {
        same("ema_abs", &h.0, &g.0)?;
        let c = T::one() - beta;
        for (h, &g) in h.0.iter_mut().zip(&g.0) {
            *h = f::ema_abs(*h, g, beta, c);
        }
        Ok(())
    }

    fn ema_product<T: Scalar>(
        &self,
        h: &mut HostBuffer<T>,
        a: &HostBuffer<T>,
        b: &HostBuffer<T>,
        beta: T,
    ) -> Result<()> {
        same("ema_product: a", &h.0, &a.0)?;
        same("ema_product: b", &h.0, &b.0)?;
        let c = T::one() - beta;
        for ((h, &a), &b) in h.0.iter_mut().zip(&a.0).zip(&b.0) {
            *h = f::ema_product(*h, a, b, beta, c);
        }
        Ok(())
    }

    fn mask_le<T: Scalar>(
        &self,
        h: &HostBuffer<T>,
        tau: T,
        mask: &mut HostBuffer<u32>,
    ) -> Result<()> {
        pm::check_words("mask_le", h.0.len(), mask.0.len())?;
        for (w, h) in mask.0.iter_mut().zip(h.0.chunks(pm::WORD_BITS)) {
            *w = pm::le_word(h, tau);
        }
        Ok(())
    }

    fn asam_perturb<T: Scalar>(
        &self,
        theta: &mut HostBuffer<T>,
        g: &HostBuffer<T>,
        s: T,
    ) -> Result<()> {
        same("asam_perturb", &theta.0, &g.0)?;
        for (p, &g) in theta.0.iter_mut().zip(&g.0) {
            *p = f::asam_perturb(*p, g, s);
        }
        Ok(())
    }
}

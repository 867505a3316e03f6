//! The `Backend` trait: the small set of fused operations the optimizers need.
//!
//! Required methods are buffer plumbing and the element-wise kernels; provided methods
//! (reductions, the global k-th-largest selection, fused IRE steps) have correct default bodies
//! built from the required ones or from host copies, so a backend overrides only its hot paths.
//! Every element-wise method computes the canonical formula of [`crate::formulas`].

use alloc::vec;
use alloc::vec::Vec;

use crate::error::{Error, Result, check_len};
use crate::formulas::{AdamWScalars, SgdScalars};
use crate::host;
use crate::scalar::{DType, Element, Scalar};

/// A compute device holding opaque buffers and running the IRE/optimizer operations on them.
///
/// Lengths of the buffers passed to one call must agree; a backend returns
/// [`Error::SizeMismatch`] otherwise. A capability a device lacks is an `Err`, never a panic.
pub trait Backend {
    /// A device buffer of `len` elements of type `E`.
    type Buffer<E: Element>;

    /// Short name of the backend (`reference`, `cpu`, `opencl`, `cuda`).
    fn name(&self) -> &str;

    /// Whether buffers of this dtype can be allocated and computed on.
    fn supports_dtype(&self, dtype: DType) -> bool {
        let _ = dtype;
        true
    }

    // ---- buffer plumbing (required) ----

    /// A zero-filled buffer of `len` elements.
    fn alloc<E: Element>(&self, len: usize) -> Result<Self::Buffer<E>>;
    /// Number of elements of `buf`.
    fn len<E: Element>(&self, buf: &Self::Buffer<E>) -> usize;
    /// Copies host data into the buffer (same length).
    fn upload<E: Element>(&self, dst: &mut Self::Buffer<E>, src: &[E]) -> Result<()>;
    /// Copies the buffer into host memory (same length).
    fn download<E: Element>(&self, src: &Self::Buffer<E>, dst: &mut [E]) -> Result<()>;
    /// Device-to-device copy (same length).
    fn copy<E: Element>(&self, src: &Self::Buffer<E>, dst: &mut Self::Buffer<E>) -> Result<()>;
    /// Sets every element to `value`.
    fn fill<E: Element>(&self, dst: &mut Self::Buffer<E>, value: E) -> Result<()>;

    // ---- element-wise kernels (required; formulas in `crate::formulas`) ----

    /// `y ← y + a·x`.
    fn axpy<T: Scalar>(&self, y: &mut Self::Buffer<T>, a: T, x: &Self::Buffer<T>) -> Result<()>;
    /// Plain SGD step in place.
    fn sgd_step<T: Scalar>(
        &self,
        theta: &mut Self::Buffer<T>,
        grad: &Self::Buffer<T>,
        s: &SgdScalars<T>,
    ) -> Result<()>;
    /// SGD-with-momentum step in place (updates the momentum buffer too).
    fn sgd_momentum_step<T: Scalar>(
        &self,
        theta: &mut Self::Buffer<T>,
        grad: &Self::Buffer<T>,
        momentum: &mut Self::Buffer<T>,
        s: &SgdScalars<T>,
    ) -> Result<()>;
    /// AdamW step in place (updates both moment buffers too).
    fn adamw_step<T: Scalar>(
        &self,
        theta: &mut Self::Buffer<T>,
        grad: &Self::Buffer<T>,
        m: &mut Self::Buffer<T>,
        v: &mut Self::Buffer<T>,
        s: &AdamWScalars<T>,
    ) -> Result<()>;
    /// `θ ← θ + (κ·n)·(θ − θ_old)`: the IRE boost of a step already taken. `mask` is the
    /// packed mask of `θ`'s coordinates ([`crate::mask`]: `⌈len / 32⌉` words).
    fn ire_boost<T: Scalar>(
        &self,
        theta: &mut Self::Buffer<T>,
        theta_old: &Self::Buffer<T>,
        mask: &Self::Buffer<u32>,
        kappa: T,
    ) -> Result<()>;
    /// `h ← β·h + (1−β)·g²`.
    fn ema_square<T: Scalar>(
        &self,
        h: &mut Self::Buffer<T>,
        g: &Self::Buffer<T>,
        beta: T,
    ) -> Result<()>;
    /// `h ← β·h + (1−β)·|g|`.
    fn ema_abs<T: Scalar>(
        &self,
        h: &mut Self::Buffer<T>,
        g: &Self::Buffer<T>,
        beta: T,
    ) -> Result<()>;
    /// `h ← β·h + (1−β)·(a ⊙ b)`.
    fn ema_product<T: Scalar>(
        &self,
        h: &mut Self::Buffer<T>,
        a: &Self::Buffer<T>,
        b: &Self::Buffer<T>,
        beta: T,
    ) -> Result<()>;
    /// `n ← (h ≤ τ)` into the packed mask ([`crate::mask`]: `⌈len(h) / 32⌉` words, the unused
    /// bits of the last one zero).
    fn mask_le<T: Scalar>(
        &self,
        h: &Self::Buffer<T>,
        tau: T,
        mask: &mut Self::Buffer<u32>,
    ) -> Result<()>;
    /// ASAM perturbation `θ ← θ + ((θ·θ)·g)·s`.
    fn asam_perturb<T: Scalar>(
        &self,
        theta: &mut Self::Buffer<T>,
        g: &Self::Buffer<T>,
        s: T,
    ) -> Result<()>;

    // ---- provided: conveniences ----

    /// Waits until every operation submitted so far has completed (and reports an error a
    /// device raised meanwhile). Host backends finish each operation before it returns.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// A buffer holding a copy of `src`.
    fn alloc_from<E: Element>(&self, src: &[E]) -> Result<Self::Buffer<E>> {
        let mut b = self.alloc(src.len())?;
        self.upload(&mut b, src)?;
        Ok(b)
    }

    /// The buffer's contents as a host vector.
    fn to_vec<E: Element>(&self, src: &Self::Buffer<E>) -> Result<Vec<E>> {
        let mut v = vec![E::default(); self.len(src)];
        self.download(src, &mut v)?;
        Ok(v)
    }

    /// Runs `f` with the consecutive parts of lengths `lens` (which must add up to the
    /// buffers' length) of `mutable` and of every buffer of `shared`, each part a buffer of its
    /// own: `f` gets `mutable`'s parts, and `shared[i]`'s parts as its `i`-th list. What `f`
    /// writes into `mutable`'s parts is in `mutable` afterwards, whether `f` succeeds or not
    /// (as if it had written in place). This is how an optimizer steps parameter groups that
    /// live in one arena.
    ///
    /// The default copies each part out through the host and `mutable`'s parts back; a backend
    /// that can address part of an allocation lends the parts without a copy (the CPU backend
    /// does).
    fn with_parts<E: Element, R>(
        &self,
        mutable: &mut Self::Buffer<E>,
        shared: &[&Self::Buffer<E>],
        lens: &[usize],
        f: impl FnOnce(&mut [Self::Buffer<E>], &[Vec<Self::Buffer<E>>]) -> Result<R>,
    ) -> Result<R> {
        let n = self.len(mutable);
        check_parts(lens, n)?;
        for (i, b) in shared.iter().enumerate() {
            check_len(
                &alloc::format!("shared buffer {i} of with_parts"),
                n,
                self.len(*b),
            )?;
        }
        let split = |v: Vec<E>| -> Result<Vec<Self::Buffer<E>>> {
            let mut at = 0;
            lens.iter()
                .map(|&l| {
                    at += l;
                    self.alloc_from(&v[at - l..at])
                })
                .collect()
        };
        let mut parts = split(self.to_vec(mutable)?)?;
        let sh: Vec<Vec<Self::Buffer<E>>> = shared
            .iter()
            .map(|b| split(self.to_vec(*b)?))
            .collect::<Result<_>>()?;
        let out = f(&mut parts, &sh);
        let mut whole = Vec::with_capacity(n);
        for p in &parts {
            whole.extend_from_slice(&self.to_vec(p)?);
        }
        // A part `f` replaced by one of another length cannot go back: say so, keep `mutable`.
        check_len("parts written back by with_parts", n, whole.len())?;
        self.upload(mutable, &whole)?;
        out
    }

    /// SAM perturbation `θ ← θ + g·s` (same bits as `axpy`).
    fn sam_perturb<T: Scalar>(
        &self,
        theta: &mut Self::Buffer<T>,
        g: &Self::Buffer<T>,
        s: T,
    ) -> Result<()> {
        self.axpy(theta, s, g)
    }

    // ---- provided: reductions (default: on the host, canonical pairwise order) ----

    /// `Σ x_i²`. Tolerance against the reference: see `tolerance::SUM_SQUARES`.
    fn sum_squares<T: Scalar>(&self, x: &Self::Buffer<T>) -> Result<T> {
        let v = self.to_vec(x)?;
        Ok(host::sum_squares(&v))
    }

    /// `Σ (a_i·b_i)²` (the ASAM norm `‖|θ| ⊙ g‖²`).
    fn sum_squares_product<T: Scalar>(
        &self,
        a: &Self::Buffer<T>,
        b: &Self::Buffer<T>,
    ) -> Result<T> {
        check_len("sum_squares_product", self.len(a), self.len(b))?;
        let va = self.to_vec(a)?;
        let vb = self.to_vec(b)?;
        Ok(host::sum_squares_product(&va, &vb))
    }

    /// Number of NaN or infinite elements.
    fn count_non_finite<T: Scalar>(&self, x: &Self::Buffer<T>) -> Result<usize> {
        let v = self.to_vec(x)?;
        Ok(v.iter().filter(|x| !x.is_finite()).count())
    }

    /// Number of flat coordinates of a packed mask (its set bits; the unused bits are zero).
    fn count_flat(&self, mask: &Self::Buffer<u32>) -> Result<usize> {
        Ok(crate::mask::count(&self.to_vec(mask)?))
    }

    /// Packs a byte mask (0 = sharp, anything else = flat) into `mask`, the packed mask of
    /// `bytes.len()` coordinates ([`crate::mask`]).
    fn mask_pack(&self, bytes: &Self::Buffer<u8>, mask: &mut Self::Buffer<u32>) -> Result<()> {
        let mut words = vec![0u32; self.len(mask)];
        crate::mask::pack_into(&self.to_vec(bytes)?, &mut words)?;
        self.upload(mask, &words)
    }

    /// Unpacks the packed mask of `bytes.len()` coordinates into 0/1 bytes.
    fn mask_unpack(&self, mask: &Self::Buffer<u32>, bytes: &mut Self::Buffer<u8>) -> Result<()> {
        let mut out = vec![0u8; self.len(bytes)];
        crate::mask::unpack_into(&self.to_vec(mask)?, &mut out)?;
        self.upload(bytes, &out)
    }

    /// The k-th largest value (1-based) over all buffers concatenated; exact (it is one of the
    /// values). `k` must be in `1..=N`; a NaN anywhere is an error.
    fn kth_largest<T: Scalar>(&self, bufs: &[&Self::Buffer<T>], k: usize) -> Result<T> {
        let n: usize = bufs.iter().map(|b| self.len(*b)).sum();
        let mut all = Vec::with_capacity(n);
        for b in bufs {
            all.extend_from_slice(&self.to_vec(*b)?);
        }
        host::kth_largest(&mut all, k)
    }

    // ---- provided: fused IRE steps (default: copy, base step, boost) ----
    //
    // `mask` is the packed mask of `θ`'s coordinates ([`crate::mask`]).

    /// Plain SGD step followed by the IRE boost; identical to the unfused sequence.
    fn sgd_ire_step<T: Scalar>(
        &self,
        theta: &mut Self::Buffer<T>,
        grad: &Self::Buffer<T>,
        s: &SgdScalars<T>,
        mask: &Self::Buffer<u32>,
        kappa: T,
    ) -> Result<()> {
        let mut old = self.alloc(self.len(theta))?;
        self.copy(theta, &mut old)?;
        self.sgd_step(theta, grad, s)?;
        self.ire_boost(theta, &old, mask, kappa)
    }

    /// SGD-with-momentum step followed by the IRE boost; identical to the unfused sequence.
    fn sgd_momentum_ire_step<T: Scalar>(
        &self,
        theta: &mut Self::Buffer<T>,
        grad: &Self::Buffer<T>,
        momentum: &mut Self::Buffer<T>,
        s: &SgdScalars<T>,
        mask: &Self::Buffer<u32>,
        kappa: T,
    ) -> Result<()> {
        let mut old = self.alloc(self.len(theta))?;
        self.copy(theta, &mut old)?;
        self.sgd_momentum_step(theta, grad, momentum, s)?;
        self.ire_boost(theta, &old, mask, kappa)
    }

    /// AdamW step followed by the IRE boost (AdmIRE); identical to the unfused sequence.
    #[allow(clippy::too_many_arguments)]
    fn adamw_ire_step<T: Scalar>(
        &self,
        theta: &mut Self::Buffer<T>,
        grad: &Self::Buffer<T>,
        m: &mut Self::Buffer<T>,
        v: &mut Self::Buffer<T>,
        s: &AdamWScalars<T>,
        mask: &Self::Buffer<u32>,
        kappa: T,
    ) -> Result<()> {
        let mut old = self.alloc(self.len(theta))?;
        self.copy(theta, &mut old)?;
        self.adamw_step(theta, grad, m, v, s)?;
        self.ire_boost(theta, &old, mask, kappa)
    }
}

/// Checks that the part lengths of [`Backend::with_parts`] add up to `n`.
pub fn check_parts(lens: &[usize], n: usize) -> Result<()> {
    let total = lens.iter().try_fold(0usize, |a, &l| a.checked_add(l));
    check_len(
        "sum of the part lengths (vs the buffer)",
        n,
        total.unwrap_or(usize::MAX),
    )
}

/// Fails with [`Error::UnsupportedDType`] when the backend cannot hold `E`.
pub fn require_dtype<B: Backend + ?Sized, E: Element>(backend: &B) -> Result<()> {
    if backend.supports_dtype(E::DTYPE) {
        Ok(())
    } else {
        Err(Error::UnsupportedDType {
            backend: backend.name().into(),
            dtype: E::DTYPE,
        })
    }
}

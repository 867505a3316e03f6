//! # ire-backend-cpu
//!
//! The multi-threaded CPU backend of [`ire_core`]: [`CpuBackend`] implements
//! [`ire_core::Backend`] on host vectors ([`CpuBuffer`]), with every fused operation one pass
//! over memory, split into chunks that rayon spreads over all cores.
//!
//! - Element-wise operations call the canonical formulas of [`ire_core::formulas`], so their
//!   results are bit-identical to [`ire_core::Reference`] whatever the number of threads. On
//!   x86-64 the loops are also compiled for AVX2 and picked at run time (the same IEEE
//!   operations and no FMA contraction, hence the same bits).
//! - Reductions (`sum_squares`, `sum_squares_product`) add in a fixed tree that depends only
//!   on the length, so they are deterministic across thread counts; they differ from the
//!   reference's pairwise order by a few ulps (see [`reduce`] for the bound).
//! - The global k-th-largest selection is exact and O(N): a sampled bracket, one counting and
//!   copying pass, the same on the copies, and a radix-select fallback (see [`select`]); never
//!   a full sort.
//! - Feature `lapack`: the exact eigen-projection from a dense Hessian (LAPACK `eigh`) and
//!   Lanczos for the top eigenpairs of a Hessian-vector product (module `lapack`). It links
//!   the system OpenBLAS (`libopenblas-dev` on Debian).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use ire_core::formulas::{AdamWScalars, SgdScalars};
use ire_core::{Backend, DType, Element, Error, Result, Scalar, mask};
use rayon::prelude::*;

mod borrow;
mod buffer;
mod kernels;
#[cfg(feature = "lapack")]
pub mod lapack;
pub mod projector;
pub mod reduce;
pub mod select;
mod simd;

pub use buffer::CpuBuffer;

/// Elements per parallel task: buffers up to this length run on the calling thread.
///
/// 64K elements (256 KiB of `f32`) amortise rayon's per-task cost (about a microsecond) over
/// tens of microseconds of streaming work, while a 1M-element buffer still makes 16 tasks.
pub const DEFAULT_CHUNK_LEN: usize = 1 << 16;

/// The multi-threaded CPU backend.
///
/// Cheap to clone (the thread pool, if any, is shared). [`CpuBackend::new`] runs on rayon's
/// global pool; [`CpuBackend::with_threads`] on a private pool of a given size.
///
/// The backend keeps the scratch memory of its last k-th-largest selection (a few percent of
/// the values selected over) for the next one: on some virtual machines a page fault on fresh
/// memory costs more than streaming the page.
#[derive(Clone)]
pub struct CpuBackend {
    pool: Option<Arc<rayon::ThreadPool>>,
    chunk: usize,
    simd: bool,
    scratch: Arc<Mutex<HashMap<TypeId, Box<dyn Any + Send>>>>,
}

impl fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuBackend")
            .field("threads", &self.threads())
            .field("private_pool", &self.pool.is_some())
            .field("chunk_len", &self.chunk)
            .field("wide_simd", &self.wide_simd())
            .finish()
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// A backend on rayon's global thread pool (one thread per core unless
    /// `RAYON_NUM_THREADS` says otherwise).
    pub fn new() -> Self {
        CpuBackend {
            pool: None,
            chunk: DEFAULT_CHUNK_LEN,
            simd: true,
            scratch: Arc::default(),
        }
    }

    /// A backend on a private pool of `threads` threads (`threads ≥ 1`).
    pub fn with_threads(threads: usize) -> Result<Self> {
        if threads == 0 {
            return Err(Error::InvalidHyperParameter {
                field: "threads",
                value: 0.0,
                allowed: ">= 1",
            });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("ire-cpu-{i}"))
            .build()
            .map_err(|e| Error::Unavailable {
                backend: "cpu".into(),
                reason: format!("cannot start a pool of {threads} threads: {e}"),
            })?;
        Ok(CpuBackend {
            pool: Some(Arc::new(pool)),
            chunk: DEFAULT_CHUNK_LEN,
            simd: true,
            scratch: Arc::default(),
        })
    }

    /// The same backend with another task size (elements per parallel task, at least 1).
    ///
    /// Element-wise results, reductions and selections never depend on it; it only moves the
    /// line between single-threaded and parallel work (tests use small values to cross many
    /// task boundaries cheaply).
    pub fn with_chunk_len(mut self, chunk_len: usize) -> Self {
        self.chunk = chunk_len.max(1);
        self
    }

    /// The same backend with the wide-vector element-wise and reduction kernels (AVX-512F or
    /// AVX2, the widest the CPU has, detected at run time) allowed or not. Results are bit-identical either way (the same
    /// IEEE operations, no contraction into FMA); only the speed differs. The selection's
    /// counting pass (integer compares, exact either way) uses AVX2 whenever the CPU has it.
    pub fn with_wide_simd(mut self, allowed: bool) -> Self {
        self.simd = allowed;
        self
    }

    /// Whether the element-wise kernels run with AVX2 or wider (allowed and present).
    pub fn wide_simd(&self) -> bool {
        self.simd && simd::has_avx2()
    }

    /// Elements per parallel task.
    pub fn chunk_len(&self) -> usize {
        self.chunk
    }

    /// Number of threads the backend's work runs on.
    pub fn threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    /// Runs `op` inside the backend's pool.
    pub fn install<R: Send>(&self, op: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(op),
            None => op(),
        }
    }

    /// The kept scratch vector for `T` (empty if none, or if another call holds it).
    fn take_scratch<T: Scalar>(&self) -> Vec<T> {
        let mut cache = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .remove(&TypeId::of::<T>())
            .and_then(|b| b.downcast::<Vec<T>>().ok())
            .map(|b| *b)
            .unwrap_or_default()
    }

    fn keep_scratch<T: Scalar>(&self, v: Vec<T>) {
        let mut cache = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        cache.insert(TypeId::of::<T>(), Box::new(v));
    }

    fn parallel(&self, n: usize) -> bool {
        n > self.chunk
    }

    // ---- drivers: one pass over aligned chunks of every operand ----
    //
    // Each takes the operands (mutable first) and a kernel over one chunk of each; buffers up to
    // one chunk run the kernel once on the calling thread, larger ones run it per chunk in the
    // pool. Lengths are checked by the callers.

    fn zip_m<A: Send>(&self, a: &mut [A], k: impl Fn(&mut [A]) + Sync + Send) {
        if self.parallel(a.len()) {
            let c = self.chunk;
            self.install(|| a.par_chunks_mut(c).for_each(&k));
        } else {
            k(a)
        }
    }

    fn zip_mr<A: Send, B: Sync>(
        &self,
        a: &mut [A],
        b: &[B],
        k: impl Fn(&mut [A], &[B]) + Sync + Send,
    ) {
        if self.parallel(a.len()) {
            let c = self.chunk;
            self.install(|| {
                a.par_chunks_mut(c)
                    .zip(b.par_chunks(c))
                    .for_each(|(a, b)| k(a, b))
            });
        } else {
            k(a, b)
        }
    }

    fn zip_mrr<A: Send, B: Sync, C: Sync>(
        &self,
        a: &mut [A],
        b: &[B],
        cc: &[C],
        k: impl Fn(&mut [A], &[B], &[C]) + Sync + Send,
    ) {
        if self.parallel(a.len()) {
            let c = self.chunk;
            self.install(|| {
                a.par_chunks_mut(c)
                    .zip(b.par_chunks(c))
                    .zip(cc.par_chunks(c))
                    .for_each(|((a, b), cc)| k(a, b, cc))
            });
        } else {
            k(a, b, cc)
        }
    }

    fn zip_mmr<A: Send, B: Send, C: Sync>(
        &self,
        a: &mut [A],
        b: &mut [B],
        cc: &[C],
        k: impl Fn(&mut [A], &mut [B], &[C]) + Sync + Send,
    ) {
        if self.parallel(a.len()) {
            let c = self.chunk;
            self.install(|| {
                a.par_chunks_mut(c)
                    .zip(b.par_chunks_mut(c))
                    .zip(cc.par_chunks(c))
                    .for_each(|((a, b), cc)| k(a, b, cc))
            });
        } else {
            k(a, b, cc)
        }
    }

    fn zip_mmmr<A: Send, B: Send, C: Send, D: Sync>(
        &self,
        a: &mut [A],
        b: &mut [B],
        cc: &mut [C],
        d: &[D],
        k: impl Fn(&mut [A], &mut [B], &mut [C], &[D]) + Sync + Send,
    ) {
        if self.parallel(a.len()) {
            let c = self.chunk;
            self.install(|| {
                a.par_chunks_mut(c)
                    .zip(b.par_chunks_mut(c))
                    .zip(cc.par_chunks_mut(c))
                    .zip(d.par_chunks(c))
                    .for_each(|(((a, b), cc), d)| k(a, b, cc, d))
            });
        } else {
            k(a, b, cc, d)
        }
    }

    // ---- drivers over a packed mask: chunks of whole mask words ----
    //
    // The element operands are split into chunks of a multiple of 32 elements and the mask
    // into the words of each chunk ([`ire_core::mask`]).

    /// Elements per task of an operation over a packed mask: the task size rounded up to
    /// whole mask words.
    fn word_chunk(&self) -> usize {
        self.chunk.div_ceil(mask::WORD_BITS) * mask::WORD_BITS
    }

    fn zip_mr_words<A: Send, B: Sync>(
        &self,
        a: &mut [A],
        b: &[B],
        n: &[u32],
        k: impl Fn(&mut [A], &[B], &[u32]) + Sync + Send,
    ) {
        if self.parallel(a.len()) {
            let c = self.word_chunk();
            self.install(|| {
                a.par_chunks_mut(c)
                    .zip(b.par_chunks(c))
                    .zip(n.par_chunks(c / mask::WORD_BITS))
                    .for_each(|((a, b), n)| k(a, b, n))
            });
        } else {
            k(a, b, n)
        }
    }

    fn zip_mmr_words<A: Send, B: Send, C: Sync>(
        &self,
        a: &mut [A],
        b: &mut [B],
        cc: &[C],
        n: &[u32],
        k: impl Fn(&mut [A], &mut [B], &[C], &[u32]) + Sync + Send,
    ) {
        if self.parallel(a.len()) {
            let c = self.word_chunk();
            self.install(|| {
                a.par_chunks_mut(c)
                    .zip(b.par_chunks_mut(c))
                    .zip(cc.par_chunks(c))
                    .zip(n.par_chunks(c / mask::WORD_BITS))
                    .for_each(|(((a, b), cc), n)| k(a, b, cc, n))
            });
        } else {
            k(a, b, cc, n)
        }
    }

    #[allow(clippy::type_complexity)]
    fn zip_mmmr_words<A: Send, B: Send, C: Send, D: Sync>(
        &self,
        a: &mut [A],
        b: &mut [B],
        cc: &mut [C],
        d: &[D],
        n: &[u32],
        k: impl Fn(&mut [A], &mut [B], &mut [C], &[D], &[u32]) + Sync + Send,
    ) {
        if self.parallel(a.len()) {
            let c = self.word_chunk();
            self.install(|| {
                a.par_chunks_mut(c)
                    .zip(b.par_chunks_mut(c))
                    .zip(cc.par_chunks_mut(c))
                    .zip(d.par_chunks(c))
                    .zip(n.par_chunks(c / mask::WORD_BITS))
                    .for_each(|((((a, b), cc), d), n)| k(a, b, cc, d, n))
            });
        } else {
            k(a, b, cc, d, n)
        }
    }

    /// Sum over chunks of `count(chunk)`, in parallel for long slices.
    fn count<A: Sync>(&self, a: &[A], k: impl Fn(&[A]) -> usize + Sync + Send) -> usize {
        if self.parallel(a.len()) {
            let c = self.chunk;
            self.install(|| a.par_chunks(c).map(&k).sum())
        } else {
            k(a)
        }
    }
}

fn same<A, B>(what: &str, a: &[A], b: &[B]) -> Result<()> {
    if a.len() == b.len() {
        Ok(())
    } else {
        Err(Error::SizeMismatch {
            what: what.into(),
            expected: a.len(),
            found: b.len(),
        })
    }
}

impl Backend for CpuBackend {
    fn with_parts<E: Element, R>(
        &self,
        mutable: &mut CpuBuffer<E>,
        shared: &[&CpuBuffer<E>],
        lens: &[usize],
        f: impl FnOnce(&mut [CpuBuffer<E>], &[Vec<CpuBuffer<E>>]) -> Result<R>,
    ) -> Result<R> {
        let n = mutable.len();
        ire_core::backend::check_parts(lens, n)?;
        for (i, b) in shared.iter().enumerate() {
            same(&format!("with_parts: shared buffer {i}"), &mutable.0, &b.0)?;
        }
        let sh: Vec<&[E]> = shared.iter().map(|b| b.as_slice()).collect();
        self.lend_parts(mutable.as_mut_slice(), &sh, lens, f)
    }

    type Buffer<E: Element> = CpuBuffer<E>;

    fn name(&self) -> &str {
        "cpu"
    }

    /// Every dtype (`f32`, `f64`, `u8`) is supported.
    fn supports_dtype(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::F64 | DType::U8)
    }

    fn alloc<E: Element>(&self, len: usize) -> Result<CpuBuffer<E>> {
        Ok(CpuBuffer::from_vec(vec![E::default(); len]))
    }

    fn len<E: Element>(&self, buf: &CpuBuffer<E>) -> usize {
        buf.0.len()
    }

    fn upload<E: Element>(&self, dst: &mut CpuBuffer<E>, src: &[E]) -> Result<()> {
        same("upload", &dst.0, src)?;
        self.zip_mr(&mut dst.0, src, |d, s| d.copy_from_slice(s));
        Ok(())
    }

    fn download<E: Element>(&self, src: &CpuBuffer<E>, dst: &mut [E]) -> Result<()> {
        same("download", &src.0, dst)?;
        self.zip_mr(dst, &src.0, |d, s| d.copy_from_slice(s));
        Ok(())
    }

    fn copy<E: Element>(&self, src: &CpuBuffer<E>, dst: &mut CpuBuffer<E>) -> Result<()> {
        same("copy", &src.0, &dst.0)?;
        self.zip_mr(&mut dst.0, &src.0, |d, s| d.copy_from_slice(s));
        Ok(())
    }

    fn fill<E: Element>(&self, dst: &mut CpuBuffer<E>, value: E) -> Result<()> {
        self.zip_m(&mut dst.0, |d| d.fill(value));
        Ok(())
    }

    fn axpy<T: Scalar>(&self, y: &mut CpuBuffer<T>, a: T, x: &CpuBuffer<T>) -> Result<()> {
        same("axpy", &y.0, &x.0)?;
        let w = self.wide_simd();
        self.zip_mr(&mut y.0, &x.0, |y, x| kernels::axpy(w, y, x, a));
        Ok(())
    }

    fn sgd_step<T: Scalar>(
        &self,
        theta: &mut CpuBuffer<T>,
        grad: &CpuBuffer<T>,
        s: &SgdScalars<T>,
    ) -> Result<()> {
        same("sgd_step: grad", &theta.0, &grad.0)?;
        let (w, s) = (self.wide_simd(), *s);
        self.zip_mr(&mut theta.0, &grad.0, |p, g| kernels::sgd(w, p, g, &s));
        Ok(())
    }

    fn sgd_momentum_step<T: Scalar>(
        &self,
        theta: &mut CpuBuffer<T>,
        grad: &CpuBuffer<T>,
        momentum: &mut CpuBuffer<T>,
        s: &SgdScalars<T>,
    ) -> Result<()> {
        same("sgd_momentum_step: grad", &theta.0, &grad.0)?;
        same("sgd_momentum_step: momentum", &theta.0, &momentum.0)?;
        let (w, s) = (self.wide_simd(), *s);
        self.zip_mmr(&mut theta.0, &mut momentum.0, &grad.0, |p, b, g| {
            kernels::sgd_momentum(w, p, b, g, &s)
        });
        Ok(())
    }

    fn adamw_step<T: Scalar>(
        &self,
        theta: &mut CpuBuffer<T>,
        grad: &CpuBuffer<T>,
        m: &mut CpuBuffer<T>,
        v: &mut CpuBuffer<T>,
        s: &AdamWScalars<T>,
    ) -> Result<()> {
        same("adamw_step: grad", &theta.0, &grad.0)?;
        same("adamw_step: m", &theta.0, &m.0)?;
        same("adamw_step: v", &theta.0, &v.0)?;
        let (w, s) = (self.wide_simd(), *s);
        self.zip_mmmr(&mut theta.0, &mut m.0, &mut v.0, &grad.0, |p, m, v, g| {
            kernels::adamw(w, p, m, v, g, &s)
        });
        Ok(())
    }

    fn ire_boost<T: Scalar>(
        &self,
        theta: &mut CpuBuffer<T>,
        theta_old: &CpuBuffer<T>,
        mask: &CpuBuffer<u32>,
        kappa: T,
    ) -> Result<()> {
        same("ire_boost: theta_old", &theta.0, &theta_old.0)?;
        mask::check_words("ire_boost: mask", theta.0.len(), mask.0.len())?;
        let w = self.wide_simd();
        self.zip_mr_words(&mut theta.0, &theta_old.0, &mask.0, |p, o, n| {
            kernels::boost(w, p, o, n, kappa)
        });
        Ok(())
    }

    fn ema_square<T: Scalar>(&self, h: &mut CpuBuffer<T>, g: &CpuBuffer<T>, beta: T) -> Result<()> {
        same("ema_square", &h.0, &g.0)?;
        let (w, c) = (self.wide_simd(), T::one() - beta);
        self.zip_mr(&mut h.0, &g.0, |h, g| kernels::ema_square(w, h, g, beta, c));
        Ok(())
    }

    fn ema_abs<T: Scalar>(&self, h: &mut CpuBuffer<T>, g: &CpuBuffer<T>, beta: T) -> Result<()> {
        same("ema_abs", &h.0, &g.0)?;
        let (w, c) = (self.wide_simd(), T::one() - beta);
        self.zip_mr(&mut h.0, &g.0, |h, g| kernels::ema_abs(w, h, g, beta, c));
        Ok(())
    }

    fn ema_product<T: Scalar>(
        &self,
        h: &mut CpuBuffer<T>,
        a: &CpuBuffer<T>,
        b: &CpuBuffer<T>,
        beta: T,
    ) -> Result<()> {
        same("ema_product: a", &h.0, &a.0)?;
        same("ema_product: b", &h.0, &b.0)?;
        let (w, c) = (self.wide_simd(), T::one() - beta);
        self.zip_mrr(&mut h.0, &a.0, &b.0, |h, a, b| {
            kernels::ema_product(w, h, a, b, beta, c)
        });
        Ok(())
    }

    fn mask_le<T: Scalar>(
        &self,
        h: &CpuBuffer<T>,
        tau: T,
        words: &mut CpuBuffer<u32>,
    ) -> Result<()> {
        mask::check_words("mask_le", h.0.len(), words.0.len())?;
        let w = self.wide_simd();
        let k = |n: &mut [u32], h: &[T]| kernels::mask_le(w, n, h, tau);
        if self.parallel(h.0.len()) {
            let c = self.word_chunk();
            self.install(|| {
                words
                    .0
                    .par_chunks_mut(c / mask::WORD_BITS)
                    .zip(h.0.par_chunks(c))
                    .for_each(|(n, h)| k(n, h))
            });
        } else {
            k(&mut words.0, &h.0)
        }
        Ok(())
    }

    fn asam_perturb<T: Scalar>(
        &self,
        theta: &mut CpuBuffer<T>,
        g: &CpuBuffer<T>,
        s: T,
    ) -> Result<()> {
        same("asam_perturb", &theta.0, &g.0)?;
        let w = self.wide_simd();
        self.zip_mr(&mut theta.0, &g.0, |p, g| kernels::asam_perturb(w, p, g, s));
        Ok(())
    }

    fn sam_perturb<T: Scalar>(
        &self,
        theta: &mut CpuBuffer<T>,
        g: &CpuBuffer<T>,
        s: T,
    ) -> Result<()> {
        same("sam_perturb", &theta.0, &g.0)?;
        let w = self.wide_simd();
        self.zip_mr(&mut theta.0, &g.0, |p, g| kernels::sam_perturb(w, p, g, s));
        Ok(())
    }

    // ---- reductions ----

    /// `Σ x_i²`, in parallel; within `rel 1e-5` (f32) / `1e-13` (f64) of the reference (see
    /// [`reduce`]).
    fn sum_squares<T: Scalar>(&self, x: &CpuBuffer<T>) -> Result<T> {
        let w = self.wide_simd();
        Ok(self.install(|| reduce::sum_squares(&x.0, self.chunk, w)))
    }

    fn sum_squares_product<T: Scalar>(&self, a: &CpuBuffer<T>, b: &CpuBuffer<T>) -> Result<T> {
        same("sum_squares_product", &a.0, &b.0)?;
        let w = self.wide_simd();
        Ok(self.install(|| reduce::sum_squares_product(&a.0, &b.0, self.chunk, w)))
    }

    fn count_non_finite<T: Scalar>(&self, x: &CpuBuffer<T>) -> Result<usize> {
        let w = self.wide_simd();
        Ok(self.count(&x.0, |c| kernels::count_non_finite(w, c)))
    }

    fn count_flat(&self, words: &CpuBuffer<u32>) -> Result<usize> {
        Ok(self.count(&words.0, mask::count))
    }

    /// Exact k-th largest over all buffers, O(N), in parallel (see [`select`]).
    fn kth_largest<T: Scalar>(&self, bufs: &[&CpuBuffer<T>], k: usize) -> Result<T> {
        let parts: Vec<&[T]> = bufs.iter().map(|b| b.as_slice()).collect();
        let mut scratch = self.take_scratch::<T>();
        let strategy = select::Strategy::SampledBracket;
        let r =
            self.install(|| select::kth_largest_in(&parts, k, self.chunk, strategy, &mut scratch));
        self.keep_scratch(scratch);
        r
    }

    // ---- fused IRE steps: θ_base stays in a register, θ_old is never stored ----

    fn sgd_ire_step<T: Scalar>(
        &self,
        theta: &mut CpuBuffer<T>,
        grad: &CpuBuffer<T>,
        s: &SgdScalars<T>,
        mask: &CpuBuffer<u32>,
        kappa: T,
    ) -> Result<()> {
        same("sgd_ire_step: grad", &theta.0, &grad.0)?;
        mask::check_words("sgd_ire_step: mask", theta.0.len(), mask.0.len())?;
        let (w, s) = (self.wide_simd(), *s);
        self.zip_mr_words(&mut theta.0, &grad.0, &mask.0, |p, g, n| {
            kernels::sgd_ire(w, p, g, n, &s, kappa)
        });
        Ok(())
    }

    fn sgd_momentum_ire_step<T: Scalar>(
        &self,
        theta: &mut CpuBuffer<T>,
        grad: &CpuBuffer<T>,
        momentum: &mut CpuBuffer<T>,
        s: &SgdScalars<T>,
        mask: &CpuBuffer<u32>,
        kappa: T,
    ) -> Result<()> {
        same("sgd_momentum_ire_step: grad", &theta.0, &grad.0)?;
        same("sgd_momentum_ire_step: momentum", &theta.0, &momentum.0)?;
        mask::check_words("sgd_momentum_ire_step: mask", theta.0.len(), mask.0.len())?;
        let (w, s) = (self.wide_simd(), *s);
        self.zip_mmr_words(
            &mut theta.0,
            &mut momentum.0,
            &grad.0,
            &mask.0,
            |p, b, g, n| kernels::sgd_momentum_ire(w, p, b, g, n, &s, kappa),
        );
        Ok(())
    }

    fn adamw_ire_step<T: Scalar>(
        &self,
        theta: &mut CpuBuffer<T>,
        grad: &CpuBuffer<T>,
        m: &mut CpuBuffer<T>,
        v: &mut CpuBuffer<T>,
        s: &AdamWScalars<T>,
        mask: &CpuBuffer<u32>,
        kappa: T,
    ) -> Result<()> {
        same("adamw_ire_step: grad", &theta.0, &grad.0)?;
        same("adamw_ire_step: m", &theta.0, &m.0)?;
        same("adamw_ire_step: v", &theta.0, &v.0)?;
        mask::check_words("adamw_ire_step: mask", theta.0.len(), mask.0.len())?;
        let (w, s) = (self.wide_simd(), *s);
        self.zip_mmmr_words(
            &mut theta.0,
            &mut m.0,
            &mut v.0,
            &grad.0,
            &mask.0,
            |p, m, v, g, n| kernels::adamw_ire(w, p, m, v, g, n, &s, kappa),
        );
        Ok(())
    }
}

//! Running the backend on memory the caller owns, for the length of a closure.

use crate::CpuBackend;
use crate::buffer::CpuBuffer;

impl CpuBackend {
    /// Runs `f` with buffers that borrow `params` (read and written in place) and `grads`
    /// (only read): every operation of the backend, and every optimizer, works on the
    /// caller's memory with no copy.
    ///
    /// The buffers live only inside `f`. Moving one of the parameter buffers out of its slice
    /// (with `std::mem::swap`, `take` or `replace`) so that it could outlive the borrow is a
    /// misuse the types cannot rule out; it is detected when `f` returns, and the process
    /// aborts with a message rather than leave a buffer pointing at memory the caller may free.
    /// Reordering the buffers within the slice is harmless and allowed.
    ///
    /// ```
    /// use ire_backend_cpu::CpuBackend;
    /// use ire_core::optim::Optimizer;
    /// use ire_core::{AdamW, AdamWConfig};
    ///
    /// let b = CpuBackend::new();
    /// let mut opt = AdamW::new(AdamWConfig::default())?;
    /// let (mut w, g) = (vec![1.0f32; 8], vec![0.5f32; 8]);
    /// b.with_borrowed(&mut [&mut w[..]], &[&g[..]], |p, g| opt.step(&b, p, g, 1e-3))?;
    /// assert!(w[0] < 1.0); // updated in place
    /// # Ok::<(), ire_core::Error>(())
    /// ```
    pub fn with_borrowed<E, R>(
        &self,
        params: &mut [&mut [E]],
        grads: &[&[E]],
        f: impl FnOnce(&mut [CpuBuffer<E>], &[CpuBuffer<E>]) -> R,
    ) -> R {
        // SAFETY: each slice is valid, aligned and exclusively (params) or shared (grads)
        // borrowed for this whole call; the buffers are handed to `f` only, grads only by
        // shared reference, and any parameter buffer that escapes `f` aborts the process
        // below before the borrows end.
        let mut p: Vec<CpuBuffer<E>> = params
            .iter_mut()
            .map(|s| unsafe { CpuBuffer::from_raw_parts_mut(s.as_mut_ptr(), s.len()) })
            .collect();
        // SAFETY: as above; `f` only ever sees `&[CpuBuffer]` for these, so nothing writes.
        let g: Vec<CpuBuffer<E>> = grads
            .iter()
            .map(|s| unsafe { CpuBuffer::from_raw_parts(s.as_ptr(), s.len()) })
            .collect();
        let mut lent: Vec<Option<(usize, usize)>> = p.iter().map(|b| b.borrowed_span()).collect();
        let out = f(&mut p, &g);
        let mut back: Vec<Option<(usize, usize)>> = p.iter().map(|b| b.borrowed_span()).collect();
        lent.sort_unstable();
        back.sort_unstable();
        if lent != back {
            eprintln!(
                "ire-backend-cpu: a buffer borrowed by CpuBackend::with_borrowed was moved out \
                 of its scope; aborting before the memory it points to can be freed"
            );
            std::process::abort();
        }
        out
    }

    /// [`ire_core::Backend::with_parts`] without a copy: consecutive parts of lengths `lens`
    /// (checked by the caller to add up to each slice's length) lent from `mutable` (through
    /// [`CpuBackend::with_borrowed`], with its escape check) and from each slice of `shared`.
    pub(crate) fn lend_parts<E, R>(
        &self,
        mutable: &mut [E],
        shared: &[&[E]],
        lens: &[usize],
        f: impl FnOnce(&mut [CpuBuffer<E>], &[Vec<CpuBuffer<E>>]) -> R,
    ) -> R {
        let mut rest = mutable;
        let mut parts: Vec<&mut [E]> = Vec::with_capacity(lens.len());
        for &l in lens {
            let at = l.min(rest.len());
            let (a, b) = std::mem::take(&mut rest).split_at_mut(at);
            parts.push(a);
            rest = b;
        }
        let lent: Vec<Vec<CpuBuffer<E>>> = shared
            .iter()
            .map(|s| {
                let mut at = 0;
                lens.iter()
                    .map(|&l| {
                        let part = &s[at.min(s.len())..(at + l).min(s.len())];
                        at += l;
                        // SAFETY: `part` is borrowed from `shared` for this whole call and these
                        // buffers are handed to `f` by shared reference only (a clone is an
                        // owned copy), then dropped here.
                        unsafe { CpuBuffer::from_raw_parts(part.as_ptr(), part.len()) }
                    })
                    .collect()
            })
            .collect();
        self.with_borrowed(&mut parts, &[], |p, _| f(p, &lent))
    }
}

//! Attention's memory on the host backends: no `t × t` buffer. The heap is counted by a
//! global allocator (this file holds one test, so nothing else allocates beside it), and the
//! peak above what existed before the call is held to a bound linear in `t`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ire_backend_cpu::CpuBackend;
use ire_core::Reference;
use ire_models::nn::{AttnShape, TransformerOps};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator unchanged; only the counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = NOW.fetch_add(l.size(), Ordering::SeqCst) + l.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(p, l) };
        NOW.fetch_sub(l.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap bytes above the level at the start, over forward and backward of `s` in f32.
fn extra_bytes<B: TransformerOps>(b: &B, s: AttnShape) -> usize {
    let qkv = b
        .alloc_from(
            &(0..s.qkv_len())
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let dout = b.alloc_from(&vec![0.5f32; s.out_len()]).unwrap();
    let mut lse = b.alloc::<f32>(s.lse_len()).unwrap();
    let mut out = b.alloc::<f32>(s.out_len()).unwrap();
    let mut dq = b.alloc::<f32>(s.qkv_len()).unwrap();
    peak_above_start(|| {
        b.attention(&qkv, s, &mut lse, &mut out).unwrap();
        b.attention_backward(&qkv, &out, &lse, &dout, s, &mut dq)
            .unwrap();
    })
}

/// Peak heap bytes above the level at the start of `f`, while it runs.
fn peak_above_start(f: impl FnOnce()) -> usize {
    let base = NOW.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst) - base
}

/// Heap the host attention may use beyond its buffers for shape `s` (f32): every head's
/// results gathered before they are laid out in the model's rows (the size of `qkv` in the
/// backward, a third of it in the forward), the per-head copies of `q`, `k`, `v` (and `kᵀ`,
/// `vᵀ`, `dO`) of the heads in flight, and 256 KiB for the thread pool's own bookkeeping.
fn allowed_bytes(s: &AttnShape) -> usize {
    let qkv_bytes = 4 * s.qkv_len();
    let per_head = 4 * 6 * s.t * s.dh;
    let in_flight = s.b * s.h;
    qkv_bytes + in_flight * per_head + (256 << 10)
}

#[test]
fn attention_memory_is_linear_in_the_context() {
    for causal in [true, false] {
        for t in [1024, 2048] {
            let s = AttnShape {
                b: 1,
                t,
                h: 2,
                dh: 16,
                causal,
            };
            let allowed = allowed_bytes(&s);
            // One head's t × t matrix in f32 alone is more than the bound: a single score or
            // probability buffer of the naive form, kept or transient, fails the test.
            let one_tt = 4 * t * t;
            assert!(
                allowed < one_tt,
                "the bound {allowed} must stay below one t×t buffer ({one_tt} bytes)"
            );
            // And the counter sees such a buffer, even one dropped at once.
            let seen = peak_above_start(|| {
                std::hint::black_box(vec![0f32; t * t]);
            });
            assert!(
                seen >= one_tt && seen > allowed,
                "a t×t buffer counted as {seen}"
            );
            for (name, extra) in [
                ("reference", extra_bytes(&Reference, s)),
                ("cpu", extra_bytes(&CpuBackend::new(), s)),
            ] {
                println!(
                    "{name} t {t} causal {causal}: {extra} bytes beyond the buffers \
                     (allowed {allowed}, one head's t×t buffer {one_tt})"
                );
                assert!(
                    extra <= allowed,
                    "{name} t {t} causal {causal}: {extra} bytes beyond the buffers, over \
                     {allowed} (one t×t buffer is {one_tt})"
                );
            }
        }
    }
}

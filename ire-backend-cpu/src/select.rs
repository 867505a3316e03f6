//! The exact global k-th largest value over several slices, in O(N), in parallel.
//!
//! Values are ordered by [`Scalar::order_key`] (a total order with `-0.0 < +0.0`), so the
//! answer is the same element, sign of zero included, as `ire_core::host::kth_largest`.
//! The selection counts ranks over keys, so ties cost nothing special.
//!
//! Two strategies, both exact:
//! - [`Strategy::SampledBracket`] (the default): a stratified sample of 4096 values gives two
//!   keys `lo ≤ hi` that bracket the answer with high probability (4 standard deviations of
//!   its sample rank on each side); ONE parallel pass over the values counts those above `hi`,
//!   equal to `hi` and equal to `lo`, and copies the few strictly between (about 6%); the
//!   ranks then say whether the answer is `hi`, `lo`, or the same selection, recursively, among
//!   the copies. A bracket that missed (rare) falls back to the radix select. For `f32` on
//!   x86-64 with AVX2 the pass is an explicit vector loop (compare, count, and compact the
//!   copies through a permutation table); elsewhere it is portable Rust.
//! - [`Strategy::Radix`]: most-significant-digit radix select over the keys, 16 bits per pass
//!   (a parallel histogram of the next digit among the values matching the prefix so far),
//!   until few values remain; then they are copied and selected. Two or three passes for `f32`.
//!
//! The sampled bracket reads the values once instead of two or three times: on 10M `f32`
//! values and two cores, about 1.8 ms against 12 ms for the radix select.

use std::sync::{Mutex, PoisonError};

use ire_core::{Error, Result, Scalar};
use rayon::prelude::*;

/// At most this many values are copied and selected on one thread (introselect).
pub const GATHER_MAX: usize = 1 << 14;
/// Sample size of the bracket.
pub const SAMPLE: usize = 1 << 12;
/// Bits per radix pass.
const DIGIT_BITS: u32 = 16;

/// How the k-th largest value is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Sample, one counting-and-copying pass, then the same on the copies; radix select if
    /// the bracket missed.
    SampledBracket,
    /// Most-significant-digit radix select, 16 bits per pass.
    Radix,
}

/// The k-th largest (1-based) of all `parts` concatenated, with the default strategy.
/// `k` must be in `1..=N`; any NaN is an [`Error::NonFinite`]. Parallel work is split into
/// tasks of `chunk` values; run it inside the thread pool you want it on.
pub fn kth_largest<T: Scalar>(parts: &[&[T]], k: usize, chunk: usize) -> Result<T> {
    kth_largest_with(parts, k, chunk, Strategy::SampledBracket)
}

/// [`kth_largest`] with an explicit strategy (both give the same, exact answer).
pub fn kth_largest_with<T: Scalar>(
    parts: &[&[T]],
    k: usize,
    chunk: usize,
    strategy: Strategy,
) -> Result<T> {
    kth_largest_in(parts, k, chunk, strategy, &mut Vec::new())
}

/// [`kth_largest_with`] copying the bracketed values into `scratch` (cleared first), whose
/// memory a caller can keep from one selection to the next: fresh pages cost a page fault
/// each, several times the price of the pass itself on some virtual machines.
pub fn kth_largest_in<T: Scalar>(
    parts: &[&[T]],
    k: usize,
    chunk: usize,
    strategy: Strategy,
    scratch: &mut Vec<T>,
) -> Result<T> {
    let n: usize = parts.iter().map(|p| p.len()).sum();
    if k == 0 || k > n {
        return Err(Error::InvalidHyperParameter {
            field: "k",
            value: k as f64,
            allowed: "1..=N (number of values)",
        });
    }
    if n <= GATHER_MAX {
        scratch.clear();
        for p in parts {
            scratch.extend_from_slice(p);
        }
        return ire_core::host::kth_largest(scratch, k);
    }
    let chunk = chunk.max(1024);
    let chunks: Vec<&[T]> = parts
        .iter()
        .flat_map(|p| p.chunks(chunk))
        .filter(|c| !c.is_empty())
        .collect();
    if strategy == Strategy::SampledBracket
        && let Some(v) = bracket_select(parts, &chunks, n, k, chunk, scratch)?
    {
        return Ok(v);
    }
    radix_select(&chunks, k)
}

fn non_finite() -> Error {
    Error::NonFinite {
        what: "values of the k-th-largest selection".into(),
    }
}

/// SplitMix64 finaliser: a fixed pseudo-random position inside each sampling stratum.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The global index sampled in stratum `j` of `s`: strata of `⌊n/s⌋` consecutive indices,
/// the last one taking the remainder; a fixed pseudo-random position inside each.
fn sample_index(j: usize, n: usize, s: usize) -> usize {
    let width = n / s;
    let span = if j + 1 == s { n - j * width } else { width };
    // Multiply-shift maps 32 random bits onto 0..span without a division.
    j * width + (((mix(j as u64) >> 32) * span as u64) >> 32) as usize
}

/// One value from each of `s` equal strata of the global index range (`s ≤ n`). The reads
/// are cache and TLB misses, so two threads take half each.
fn sample<T: Scalar>(parts: &[&[T]], n: usize, s: usize) -> Vec<T> {
    let strata = |from: usize, to: usize| {
        let mut out = Vec::with_capacity(to - from);
        // The part holding the first index, then forward: indices increase with j.
        let first = sample_index(from, n, s);
        let (mut p, mut base) = (0usize, 0usize);
        while p + 1 < parts.len() && first >= base + parts[p].len() {
            base += parts[p].len();
            p += 1;
        }
        for j in from..to {
            let idx = sample_index(j, n, s);
            while idx >= base + parts[p].len() {
                base += parts[p].len();
                p += 1;
            }
            out.push(parts[p][idx - base]);
        }
        out
    };
    let half = s / 2;
    let (mut a, b) = rayon::join(|| strata(0, half), || strata(half, s));
    a.extend_from_slice(&b);
    a
}

/// Counts of one bracket pass over a chunk (the copies go to a separate vector); `nan` is
/// non-zero if and only if the chunk holds a NaN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    above: usize,
    eq_hi: usize,
    eq_lo: usize,
    nan: usize,
}

impl core::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.above += o.above;
        self.eq_hi += o.eq_hi;
        self.eq_lo += o.eq_lo;
        self.nan += o.nan;
    }
}

/// Values a pass collects locally before appending them to the shared copies.
const BATCH: usize = 4096;
/// Values per block of the portable pass.
const PORTABLE_BLOCK: usize = 256;

/// Appends `batch` to the shared copies.
fn flush<T: Scalar>(sink: &Mutex<Vec<T>>, batch: &[T]) {
    let mut v = sink.lock().unwrap_or_else(PoisonError::into_inner);
    v.extend_from_slice(batch);
}

crate::simd::kernel! {
    /// Portable bracket pass (AVX2 codegen when available): counts, and appends the values
    /// with `lo < key < hi` to `sink`.
    fn bracket_pass<T>(c: &[T], lo: T, hi: T, sink: &Mutex<Vec<T>>) -> Counts {
        bracket_pass_body(c, lo, hi, sink)
    }
}

#[inline(always)]
fn bracket_pass_body<T: Scalar>(c: &[T], lo: T, hi: T, sink: &Mutex<Vec<T>>) -> Counts {
    let (lo, hi) = (lo.order_key(), hi.order_key());
    let mut n = Counts::default();
    let mut buf: Vec<T> = Vec::with_capacity(BATCH + PORTABLE_BLOCK);
    for block in c.chunks(PORTABLE_BLOCK) {
        // Branch-free counts (a plain reduction the compiler vectorises), then the copies.
        let (mut above, mut eq_hi, mut eq_lo, mut nan, mut inside) = (0u32, 0u32, 0u32, 0u32, 0u32);
        for x in block {
            let key = x.order_key();
            above += (key > hi) as u32;
            eq_hi += (key == hi) as u32;
            eq_lo += (key == lo) as u32;
            nan += x.is_nan() as u32;
            inside += ((key > lo) & (key < hi)) as u32;
        }
        n.above += above as usize;
        n.eq_hi += eq_hi as usize;
        n.eq_lo += eq_lo as usize;
        n.nan += nan as usize;
        if inside > 0 {
            buf.extend(block.iter().filter(|x| {
                let key = x.order_key();
                key > lo && key < hi
            }));
            if buf.len() >= BATCH {
                flush(sink, &buf);
                buf.clear();
            }
        }
    }
    flush(sink, &buf);
    n
}

/// The bracket pass on one chunk, through the AVX2 loop for `f32` when the CPU has it.
fn pass_chunk<T: Scalar>(c: &[T], lo: T, hi: T, sink: &Mutex<Vec<T>>) -> Counts {
    #[cfg(target_arch = "x86_64")]
    {
        if core::any::TypeId::of::<T>() == core::any::TypeId::of::<f32>() && avx2::available() {
            // SAFETY: T is f32 (same type, checked through TypeId), so the slice may be viewed
            // as &[f32] with the same pointer and length.
            let cf: &[f32] = unsafe { core::slice::from_raw_parts(c.as_ptr().cast(), c.len()) };
            let (lo32, hi32) = (lo.as_f64() as f32, hi.as_f64() as f32);
            let mut out = |batch: &[f32]| {
                let mut v = sink.lock().unwrap_or_else(PoisonError::into_inner);
                v.extend(batch.iter().map(|&x| T::of(x as f64)));
            };
            // SAFETY: the CPU supports AVX2 and POPCNT, checked above.
            return unsafe { avx2::bracket_pass_f32(cf, lo32, hi32, &mut out) };
        }
    }
    bracket_pass(true, c, lo, hi, sink)
}

/// The sampled-bracket selection; `Ok(None)` when the bracket missed the answer.
fn bracket_select<T: Scalar>(
    parts: &[&[T]],
    chunks: &[&[T]],
    n: usize,
    k: usize,
    chunk: usize,
    scratch: &mut Vec<T>,
) -> Result<Option<T>> {
    let s = SAMPLE.min(n / 16).max(16);
    let mut smp = sample(parts, n, s);
    if smp.iter().any(|x| x.is_nan()) {
        return Err(non_finite());
    }
    // Expected descending rank of the answer in the sample, and 4 standard deviations of it
    // (binomial) on each side, plus a little for tiny fractions.
    let p = k as f64 / n as f64;
    let r = p * s as f64;
    let margin = 4.0 * (s as f64 * p * (1.0 - p)).sqrt() + 4.0;
    let r_hi = (r - margin).floor();
    let r_lo = (r + margin).ceil();
    let key = |v: &T| v.order_key();
    let lo = if r_lo > s as f64 {
        T::neg_infinity()
    } else {
        *smp.select_nth_unstable_by_key(s - r_lo as usize, key).1
    };
    let hi = if r_hi < 1.0 {
        T::infinity()
    } else {
        *smp.select_nth_unstable_by_key(s - r_hi as usize, key).1
    };
    scratch.clear();
    let sink = Mutex::new(core::mem::take(scratch));
    let mut total = chunks
        .par_iter()
        .map(|c| pass_chunk(c, lo, hi, &sink))
        .reduce(Counts::default, |mut a, b| {
            a += b;
            a
        });
    *scratch = sink.into_inner().unwrap_or_else(PoisonError::into_inner);
    let inside_len = scratch.len();
    if total.nan > 0 {
        return Err(non_finite());
    }
    if lo.order_key() == hi.order_key() {
        total.eq_lo = 0; // the same values, already counted once as `eq_hi`
    }
    // Descending ranks: (above) > hi, (eq_hi) = hi, (inside) in (lo, hi), (eq_lo) = lo, rest.
    if k <= total.above {
        return Ok(None);
    }
    let k = k - total.above;
    if k <= total.eq_hi {
        return Ok(Some(hi));
    }
    let k = k - total.eq_hi;
    if k <= inside_len {
        // The same selection on the copies (a few percent of the values): parallel and
        // bracketed again while they are many, introselect once they are few.
        return kth_largest_in(
            &[&scratch[..]],
            k,
            chunk,
            Strategy::SampledBracket,
            &mut Vec::new(),
        )
        .map(Some);
    }
    if k - inside_len <= total.eq_lo {
        return Ok(Some(lo));
    }
    Ok(None)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The bracket pass for `f32` with AVX2 intrinsics: 8 values per step, the copies
    //! compacted with a permutation table instead of a branch per value.

    use core::arch::x86_64::*;

    use super::Counts;

    /// `COMPACT[m]` lists the lanes of the set bits of `m`, packed to the front.
    static COMPACT: [[i32; 8]; 256] = compact_table();

    const fn compact_table() -> [[i32; 8]; 256] {
        let mut t = [[0i32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let (mut j, mut l) = (0usize, 0i32);
            while l < 8 {
                if m & (1 << l) != 0 {
                    t[m][j] = l;
                    j += 1;
                }
                l += 1;
            }
            m += 1;
        }
        t
    }

    /// The order of [`ire_core::Scalar::order_key`] as a signed integer (so one signed
    /// compare does): flip the 31 low bits of negative values.
    #[inline(always)]
    fn signed_key(x: f32) -> i32 {
        let b = x.to_bits() as i32;
        b ^ (((b >> 31) as u32) >> 1) as i32
    }

    /// Whether the CPU has what [`bracket_pass_f32`] needs.
    pub(super) fn available() -> bool {
        crate::simd::has_avx2() && std::arch::is_x86_feature_detected!("popcnt")
    }

    /// Copies gathered on the stack before they are handed to `out`.
    const BUF: usize = 4096;
    /// Groups of 8 values per inner loop (at most 8·64 copies, so `buf` has room for a whole
    /// inner loop after each check); the inner loop holds no call, so its counters stay in
    /// registers.
    const INNER: usize = 64;
    /// Inner loops between two flushes of the 32-bit lane counters.
    const FLUSH_INNER: usize = 1 << 16;

    /// Counts `key > hi`, `key == hi`, `key == lo` (and NaN: non-zero if any), and hands the
    /// values with `lo < key < hi` to `out`, in batches.
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT ([`available`]).
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn bracket_pass_f32(
        c: &[f32],
        lo: f32,
        hi: f32,
        out: &mut dyn FnMut(&[f32]),
    ) -> Counts {
        let (klo, khi) = (signed_key(lo), signed_key(hi));
        let mut n = Counts::default();
        // The 8 lanes of a group are stored unconditionally at `len` (a branch per group
        // would be mispredicted ~40% of the time); only the copies advance `len`.
        let mut buf = [0f32; BUF + 8];
        let mut len = 0usize;
        let groups = c.len() / 8;
        let mut g = 0;
        while g < groups {
            let block_end = groups.min(g + INNER * FLUSH_INNER);
            // SAFETY: AVX2 is available (the caller's contract); every load reads 8 values at
            // 8·g ≤ c.len() − 8; every store writes 8 lanes at `len`, and `len` stays below
            // BUF − 8·INNER at the start of an inner loop (checked after each), which adds at
            // most 8·INNER, so every store lands inside `buf`.
            unsafe {
                let vlo = _mm256_set1_epi32(klo);
                let vhi = _mm256_set1_epi32(khi);
                let mut above = _mm256_setzero_si256();
                let mut eq_hi = _mm256_setzero_si256();
                let mut eq_lo = _mm256_setzero_si256();
                let mut nan = _mm256_setzero_ps();
                while g < block_end {
                    let end = block_end.min(g + INNER);
                    while g < end {
                        let xf = _mm256_loadu_ps(c.as_ptr().add(8 * g));
                        let x = _mm256_castps_si256(xf);
                        let flip = _mm256_srli_epi32::<1>(_mm256_srai_epi32::<31>(x));
                        let key = _mm256_xor_si256(x, flip);
                        above = _mm256_sub_epi32(above, _mm256_cmpgt_epi32(key, vhi));
                        eq_hi = _mm256_sub_epi32(eq_hi, _mm256_cmpeq_epi32(key, vhi));
                        eq_lo = _mm256_sub_epi32(eq_lo, _mm256_cmpeq_epi32(key, vlo));
                        // NaN only needs detecting (it makes the selection an error).
                        nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(xf, xf));
                        let inside = _mm256_and_si256(
                            _mm256_cmpgt_epi32(key, vlo),
                            _mm256_cmpgt_epi32(vhi, key),
                        );
                        let m = _mm256_movemask_ps(_mm256_castsi256_ps(inside)) as usize;
                        let perm = _mm256_loadu_si256(COMPACT[m].as_ptr().cast());
                        let packed = _mm256_permutevar8x32_ps(xf, perm);
                        _mm256_storeu_ps(buf.as_mut_ptr().add(len), packed);
                        len += m.count_ones() as usize;
                        g += 1;
                    }
                    if len >= BUF - 8 * INNER {
                        out(&buf[..len]);
                        len = 0;
                    }
                }
                n.above += hsum(above);
                n.eq_hi += hsum(eq_hi);
                n.eq_lo += hsum(eq_lo);
                n.nan += (_mm256_movemask_ps(nan) != 0) as usize;
            }
        }
        for &x in &c[8 * groups..] {
            let key = signed_key(x);
            n.above += (key > khi) as usize;
            n.eq_hi += (key == khi) as usize;
            n.eq_lo += (key == klo) as usize;
            n.nan += x.is_nan() as usize;
            if key > klo && key < khi {
                buf[len] = x;
                len += 1;
            }
        }
        out(&buf[..len]);
        n
    }

    /// Sum of the 8 unsigned 32-bit lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn hsum(v: __m256i) -> usize {
        let mut lanes = [0u32; 8];
        // SAFETY: an unaligned 32-byte store into a 32-byte array.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v) };
        lanes.iter().map(|&x| x as usize).sum()
    }
}

/// Histogram of the `width`-bit digit below the top `consumed` bits, over the values whose top
/// `consumed` bits equal `prefix`.
fn histogram<T: Scalar>(
    chunks: &[&[T]],
    prefix: u64,
    consumed: u32,
    width: u32,
    bits: u32,
) -> Vec<u64> {
    let nb = 1usize << width;
    let shift = bits - consumed - width;
    let mask = (nb - 1) as u64;
    chunks
        .par_iter()
        .fold(
            || vec![0u64; nb],
            |mut h, c| {
                for &x in *c {
                    let key = x.order_key_u64();
                    if consumed == 0 || key >> (bits - consumed) == prefix {
                        h[((key >> shift) & mask) as usize] += 1;
                    }
                }
                h
            },
        )
        .reduce_with(|mut a, b| {
            for (x, y) in a.iter_mut().zip(&b) {
                *x += y;
            }
            a
        })
        .unwrap_or_else(|| vec![0u64; nb])
}

/// The radix select (it checks for NaN itself: it also runs without the bracket pass).
fn radix_select<T: Scalar>(chunks: &[&[T]], k: usize) -> Result<T> {
    let nan = chunks
        .par_iter()
        .map(|c| c.iter().filter(|x| x.is_nan()).count())
        .sum::<usize>();
    if nan > 0 {
        return Err(non_finite());
    }
    let bits = 8 * core::mem::size_of::<T>() as u32;
    let matches = move |key: u64, prefix: u64, consumed: u32| {
        consumed == 0 || key >> (bits - consumed) == prefix
    };
    let (mut prefix, mut consumed, mut k) = (0u64, 0u32, k);
    let mut remaining = usize::MAX;
    while consumed < bits && remaining > GATHER_MAX {
        let width = DIGIT_BITS.min(bits - consumed);
        let h = histogram(chunks, prefix, consumed, width, bits);
        let mut above = 0usize;
        let mut digit = None;
        for (d, &c) in h.iter().enumerate().rev() {
            let c = c as usize;
            if above + c >= k {
                digit = Some((d as u64, c));
                break;
            }
            above += c;
        }
        let (d, c) = digit.ok_or_else(|| Error::Protocol("radix select lost its rank".into()))?;
        k -= above;
        prefix = (prefix << width) | d;
        consumed += width;
        remaining = c;
    }
    if consumed == bits {
        // Every remaining value has the same key: return one of them.
        return chunks
            .par_iter()
            .find_map_any(|c| c.iter().find(|x| x.order_key_u64() == prefix).copied())
            .ok_or_else(|| Error::Protocol("radix select lost its value".into()));
    }
    let mut cand: Vec<T> = chunks
        .par_iter()
        .map(|c| {
            c.iter()
                .filter(|x| matches(x.order_key_u64(), prefix, consumed))
                .copied()
                .collect::<Vec<T>>()
        })
        .flatten_iter()
        .collect();
    if k == 0 || k > cand.len() {
        return Err(Error::Protocol("radix select lost its rank".into()));
    }
    let i = cand.len() - k;
    Ok(*cand.select_nth_unstable_by_key(i, |v| v.order_key()).1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// The bracket alone (no radix fallback) must find the answer on ordinary data, on ties
    /// at either end of the bracket, and through the recursion on the copies.
    fn bracket_finds<T: Scalar>(v: &[T], ks: &[usize]) {
        let n = v.len();
        let chunks: Vec<&[T]> = v.chunks(4096).collect();
        for &k in ks {
            let want = ire_core::host::kth_largest(&mut v.to_vec(), k).unwrap();
            let got = bracket_select(&[v], &chunks, n, k, 4096, &mut Vec::new()).unwrap();
            let got = got.unwrap_or_else(|| panic!("bracket missed k = {k}"));
            assert_eq!(got.order_key(), want.order_key(), "k = {k}");
        }
    }

    fn bracket_cases<T: Scalar>() {
        let n = 300_000;
        let mut z = 7u64;
        let mut uniform = move || {
            z = mix(z);
            (z >> 11) as f64 / (1u64 << 53) as f64
        };
        let spread: Vec<T> = (0..n).map(|_| T::of(uniform() * 2.0 - 1.0)).collect();
        bracket_finds(&spread, &[1, 17, n / 3, n / 2, n - 5, n]);
        for above in [true, false] {
            // Half the values tied at 1, the rest spread above (below) it: at k just past the
            // spread values the answer is the bracket's `lo` (`hi`), counted, never copied.
            let v: Vec<T> = (0..n)
                .map(|i| {
                    let u = uniform() * 0.5 + 0.25;
                    T::of(if i % 2 == 0 {
                        1.0
                    } else if above {
                        1.0 + u
                    } else {
                        u
                    })
                })
                .collect();
            bracket_finds(&v, &[n / 2 - 1, n / 2, n / 2 + 1, n / 2 + 3]);
        }
    }

    #[test]
    fn the_bracket_answers_without_the_fallback() {
        bracket_cases::<f32>();
        bracket_cases::<f64>();
    }

    #[test]
    fn a_bracket_that_misses_falls_back_to_the_radix_select() {
        // The sampled positions hold 0 and every other position a distinct positive value:
        // every threshold is 0, the counting pass finds almost every value above them, and the
        // answer must come from the radix select.
        let n = 200_000;
        let s = SAMPLE.min(n / 16).max(16);
        let mut v: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
        for j in 0..s {
            v[sample_index(j, n, s)] = 0.0;
        }
        let parts = [&v[..]];
        let chunks: Vec<&[f32]> = v.chunks(4096).collect();
        assert_eq!(
            bracket_select(&parts, &chunks, n, n / 2, 4096, &mut Vec::new()).unwrap(),
            None
        );
        for k in [1, n / 2, n - s, n - s + 1, n] {
            let want = ire_core::host::kth_largest(&mut v.clone(), k).unwrap();
            let got = kth_largest(&parts, k, 4096).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "k = {k}");
        }
    }
}

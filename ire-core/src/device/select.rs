//! The global k-th largest over several buffers, exact, with one policy on every runtime:
//!
//! - `k` must be in `1..=N` (an error naming `k` otherwise), as on the host.
//! - A NaN anywhere is [`Error::NonFinite`], as on the host. Every NaN's order key has the top
//!   byte `0x00` or `0xFF`, which it shares only with infinities and magnitudes of at least
//!   `2^127` (`f32`) or `2^1023` (`f64`); so NaN is looked for, with one counting pass, only
//!   when the first histogram has keys there, and the common case costs nothing extra.
//! - Infinities and huge values are ordinary keys.
//! - The device's histogram counters are 32-bit: each launch covers at most `CHUNK` (2^31)
//!   elements, and the histogram is read back and cleared before it could count more than its
//!   budget (`u32::MAX`, or [`DeviceBackend::with_histogram_budget`]).
//!
//! [`SelectionPath::Host`] downloads every buffer and selects on the host instead; both paths
//! return the same bits.

use alloc::vec;
use alloc::vec::Vec;

use super::args::KernelArg;
use super::backend::{DeviceBackend, IRE_OPS, SelectionPath};
use super::buffer::DeviceBuffer;
use super::reduce::{self, MAX_GROUPS, read_all};
use super::runtime::Runtime;
use crate::error::{Error, Result};
use crate::kernels::REDUCE_WG;
use crate::scalar::{DType, Scalar};

/// Most elements one histogram launch covers.
pub(crate) const CHUNK: usize = 1 << 31;
/// Elements each work-item of a histogram launch scans (before the group is capped).
const HIST_ITEMS: usize = 16;

fn k_error(k: usize) -> Error {
    Error::InvalidHyperParameter {
        field: "k",
        value: k as f64,
        allowed: "1..=N (number of values)",
    }
}

/// The k-th largest (1-based) over `bufs` concatenated.
pub(crate) fn kth_largest<R: Runtime, T: Scalar>(
    b: &DeviceBackend<R>,
    bufs: &[&DeviceBuffer<R, T>],
    k: usize,
) -> Result<T> {
    b.require(T::DTYPE)?;
    let n: usize = bufs.iter().map(|x| x.len()).sum();
    if k == 0 || k > n {
        return Err(k_error(k));
    }
    match b.selection_path() {
        SelectionPath::Host => on_host(b, bufs, k, n),
        SelectionPath::Device => on_device(b, bufs, k),
    }
}

fn on_host<R: Runtime, T: Scalar>(
    b: &DeviceBackend<R>,
    bufs: &[&DeviceBuffer<R, T>],
    k: usize,
    n: usize,
) -> Result<T> {
    let mut all = vec![T::zero(); n];
    let mut at = 0;
    for x in bufs {
        read_all(b, x, &mut all[at..at + x.len()])?;
        at += x.len();
    }
    crate::host::kth_largest(&mut all, k)
}

fn on_device<R: Runtime, T: Scalar>(
    b: &DeviceBackend<R>,
    bufs: &[&DeviceBuffer<R, T>],
    k: usize,
) -> Result<T> {
    let size = T::DTYPE.size();
    let bits = 8 * size;
    let mut hist = b.scratch::<u32>(256)?;
    let (mut prefix, mut mask, mut rank) = (0u64, 0u64, k as u64);
    for pass in 0..size {
        let shift = bits - 8 * (pass + 1);
        let counts = histogram(b, bufs, shift as u32, mask, prefix, &mut hist)?;
        if pass == 0 && counts[0] + counts[255] > 0 && has_nan(b, bufs)? {
            return Err(Error::NonFinite {
                what: "the values of a k-th-largest selection".into(),
            });
        }
        let (byte, within) = pick_bin(&counts, rank).ok_or_else(|| {
            b.error(alloc::format!(
                "select_histogram pass {pass}: the histogram holds fewer than {rank} values"
            ))
        })?;
        rank = within;
        prefix |= byte << shift;
        mask |= 0xFFu64 << shift;
    }
    Ok(value_of_key(prefix))
}

fn has_nan<R: Runtime, T: Scalar>(
    b: &DeviceBackend<R>,
    bufs: &[&DeviceBuffer<R, T>],
) -> Result<bool> {
    for x in bufs {
        if reduce::count(b, T::DTYPE, "count_nan_partial", x.input(), x.len())? > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One radix pass: how many elements of `bufs` whose key matches `prefix` on `mask` have
/// each value of the key byte at `shift`.
fn histogram<R: Runtime, T: Scalar>(
    b: &DeviceBackend<R>,
    bufs: &[&DeviceBuffer<R, T>],
    shift: u32,
    mask: u64,
    prefix: u64,
    hist: &mut DeviceBuffer<R, u32>,
) -> Result<[u64; 256]> {
    let mut counts = [0u64; 256];
    clear(b, hist)?;
    let budget = b.histogram_budget();
    let mut pending = 0u64;
    for x in bufs {
        let mut start = 0usize;
        while start < x.len() {
            let len = (x.len() - start).min(CHUNK).min(budget as usize);
            if pending > 0 && pending + len as u64 > budget {
                flush(b, hist, &mut counts)?;
                pending = 0;
            }
            let groups = len.div_ceil(REDUCE_WG * HIST_ITEMS).min(MAX_GROUPS);
            b.launch_in(
                &IRE_OPS,
                T::DTYPE,
                "select_histogram",
                groups,
                &[
                    x.input(),
                    KernelArg::Index(start),
                    KernelArg::Index(len),
                    KernelArg::U32(shift),
                    KernelArg::Key(mask),
                    KernelArg::Key(prefix),
                    hist.output(),
                ],
            )?;
            pending += len as u64;
            start += len;
        }
    }
    if pending > 0 {
        flush(b, hist, &mut counts)?;
    }
    Ok(counts)
}

fn clear<R: Runtime>(b: &DeviceBackend<R>, hist: &mut DeviceBuffer<R, u32>) -> Result<()> {
    let bytes = hist.len() * DType::U32.size();
    match hist.mem.as_mut() {
        Some(m) => b.runtime().zero(m, bytes),
        None => Ok(()),
    }
}

/// Adds the device histogram to `counts` and clears it.
fn flush<R: Runtime>(
    b: &DeviceBackend<R>,
    hist: &mut DeviceBuffer<R, u32>,
    counts: &mut [u64; 256],
) -> Result<()> {
    let mut host: Vec<u32> = vec![0; 256];
    read_all(b, hist, &mut host)?;
    for (c, h) in counts.iter_mut().zip(&host) {
        *c += u64::from(*h);
    }
    clear(b, hist)
}

/// The bin (scanning from the largest key byte down) holding the `rank`-th largest element,
/// and the rank within that bin; `None` if the counts hold fewer than `rank` elements.
pub(crate) fn pick_bin(counts: &[u64; 256], rank: u64) -> Option<(u64, u64)> {
    let mut rank = rank;
    for bin in (0..256).rev() {
        let c = counts[bin];
        if rank <= c {
            return Some((bin as u64, rank));
        }
        rank -= c;
    }
    None
}

/// The value whose order key ([`Scalar::order_key`]) is `key`.
pub(crate) fn value_of_key<T: Scalar>(key: u64) -> T {
    if T::DTYPE == DType::F64 {
        let bits = if key >> 63 == 1 {
            key & !(1u64 << 63)
        } else {
            !key
        };
        T::of(f64::from_bits(bits))
    } else {
        let k = key as u32;
        let bits = if k >> 31 == 1 { k & !(1u32 << 31) } else { !k };
        T::of(f64::from(f32::from_bits(bits)))
    }
}

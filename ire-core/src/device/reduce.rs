//! Sums and counts on the device: one pass writes a partial per work-group, and the host adds
//! the (at most `MAX_GROUPS`, 1024) partials in index order.
//!
//! Reading the partials costs the same round trip as reading one total, so a second device
//! pass would only add a launch; on the host the partials of a count add in `u64` (no 32-bit
//! wrap at any size) and those of a sum in `f64`.

use alloc::vec;
use alloc::vec::Vec;

use super::args::KernelArg;
use super::backend::{DeviceBackend, IRE_OPS};
use super::buffer::DeviceBuffer;
use super::runtime::Runtime;
use crate::error::Result;
use crate::kernels::REDUCE_WG;
use crate::scalar::{DType, Element, Scalar, as_bytes_mut};

/// Elements each work-item adds before the work-group tree (when groups are not capped).
const REDUCE_ITEMS: usize = 8;
/// Most work-groups of one reduction; grid-stride loops cover the rest.
pub(crate) const MAX_GROUPS: usize = 1024;

/// Work-groups of a reduction over `n > 0` elements.
pub(crate) fn reduce_groups(n: usize) -> usize {
    n.div_ceil(REDUCE_WG * REDUCE_ITEMS).clamp(1, MAX_GROUPS)
}

/// Copies a whole buffer to the host (blocking).
pub(crate) fn read_all<R: Runtime, E: Element>(
    b: &DeviceBackend<R>,
    src: &DeviceBuffer<R, E>,
    dst: &mut [E],
) -> Result<()> {
    match src.mem() {
        Some(m) if !dst.is_empty() => b.runtime().read(m, 0, as_bytes_mut(dst)),
        _ => Ok(()),
    }
}

/// The sum of the per-group partials `first` writes for `inputs` (each of `n` elements).
pub(crate) fn sum<R: Runtime, T: Scalar>(
    b: &DeviceBackend<R>,
    first: &'static str,
    inputs: &[&DeviceBuffer<R, T>],
    n: usize,
) -> Result<T> {
    if n == 0 {
        return Ok(T::zero());
    }
    let groups = reduce_groups(n);
    let mut partial = b.scratch::<T>(groups)?;
    {
        let mut args: Vec<KernelArg<'_, R::Mem>> = inputs.iter().map(|x| x.input()).collect();
        args.push(KernelArg::Index(n));
        args.push(partial.output());
        b.launch_in(&IRE_OPS, T::DTYPE, first, groups, &args)?;
    }
    let mut host = vec![T::zero(); groups];
    read_all(b, &partial, &mut host)?;
    Ok(T::of(host.iter().fold(0.0f64, |s, x| s + x.as_f64())))
}

/// The number of elements of `x` (of `n`) that `first` counts, in the program of `program`.
pub(crate) fn count<R: Runtime>(
    b: &DeviceBackend<R>,
    program: DType,
    first: &'static str,
    x: KernelArg<'_, R::Mem>,
    n: usize,
) -> Result<usize> {
    if n == 0 {
        return Ok(0);
    }
    let groups = reduce_groups(n);
    let mut partial = b.scratch::<u32>(groups)?;
    b.launch_in(
        &IRE_OPS,
        program,
        first,
        groups,
        &[x, KernelArg::Index(n), partial.output()],
    )?;
    let mut host = vec![0u32; groups];
    read_all(b, &partial, &mut host)?;
    Ok(host.iter().map(|&c| c as u64).sum::<u64>() as usize)
}

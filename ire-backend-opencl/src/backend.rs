//! `OpenClBackend`: the `ire_core::Backend` implementation.

use std::sync::Arc;

use ire_core::formulas::{AdamWScalars, SgdScalars};
use ire_core::kernels::REDUCE_WG;
use ire_core::{Backend, DType, Element, Error, Scalar};
use ocl::core::{self, Mem, MemFlags};

use crate::buffer::{ClBuffer, as_bytes, as_bytes_mut};
use crate::device::{Arg, BACKEND, Device, Program, dev_err};
use crate::discovery::{self, DEVICE_ENV, DeviceInfo, DeviceKind};

/// Elements each work-item of a reduction adds sequentially before the work-group tree.
const REDUCE_ITEMS: usize = 8;
/// Elements one reduction work-group covers.
const REDUCE_SPAN: usize = REDUCE_WG * REDUCE_ITEMS;
/// Elements each work-item of the selection histogram scans (each work-group ends with up to
/// 256 global atomics, so groups cover more elements than in the sums).
const HIST_ITEMS: usize = 16;

/// Where [`Backend::kth_largest`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectionPath {
    /// MSB-first radix selection on the device (`select_histogram`): 4 passes for `f32`,
    /// 8 for `f64`, each reading back 256 counters.
    Device,
    /// Download every buffer and run `ire_core::host::kth_largest` (introselect).
    Host,
}

/// The OpenCL backend: the portable kernel source compiled at run time for one device.
///
/// Cloning is cheap and shares the device, its queue and its compiled programs.
#[derive(Clone)]
pub struct OpenClBackend {
    dev: Arc<Device>,
    selection: SelectionPath,
}

impl std::fmt::Debug for OpenClBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenClBackend")
            .field("device", &self.dev.info.to_string())
            .field("selection", &self.selection)
            .finish()
    }
}

fn same(what: &str, expected: usize, found: usize) -> Result<usize, Error> {
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

/// A host scalar as the kernel argument of type `T` (`float` or `double`).
fn t_arg<'a, T: Scalar>(x: T) -> Arg<'a> {
    match T::DTYPE {
        DType::F64 => Arg::F64(x.as_f64()),
        // Widening to f64 and back is exact.
        _ => Arg::F32(x.as_f64() as f32),
    }
}

/// A radix key (`Scalar::order_key`) as the kernel's `KEY` argument.
fn key_arg<'a, T: Scalar>(key: u64) -> Arg<'a> {
    match T::DTYPE {
        DType::F64 => Arg::U64(key),
        _ => Arg::U32(key as u32),
    }
}

/// Inverse of `Scalar::order_key`.
fn from_key<T: Scalar>(key: u64) -> T {
    match T::DTYPE {
        DType::F64 => {
            let bits = if key >> 63 == 1 {
                key & !(1u64 << 63)
            } else {
                !key
            };
            T::of(f64::from_bits(bits))
        }
        _ => {
            let key = key as u32;
            let bits = if key >> 31 == 1 {
                key & 0x7FFF_FFFF
            } else {
                !key
            };
            T::of(f32::from_bits(bits) as f64)
        }
    }
}

/// A `T` from its native-endian bytes.
fn scalar_from_bytes<T: Scalar>(b: &[u8]) -> Result<T, Error> {
    let bad = || dev_err("reading a scalar", "wrong byte count");
    Ok(match T::DTYPE {
        DType::F64 => T::of(f64::from_ne_bytes(b.try_into().map_err(|_| bad())?)),
        _ => T::of(f32::from_ne_bytes(b.try_into().map_err(|_| bad())?) as f64),
    })
}

fn k_error(k: usize) -> Error {
    Error::InvalidHyperParameter {
        field: "k",
        value: k as f64,
        allowed: "1..=N (number of values)",
    }
}

fn nonzero<E>(b: &ClBuffer<E>) -> Option<&ClBuffer<E>> {
    (b.len > 0).then_some(b)
}

impl OpenClBackend {
    /// Opens the device chosen by `IRE_OPENCL_DEVICE` (default: the first GPU, else the first
    /// accelerator, else the first device) and compiles the `f32` program.
    ///
    /// `Err(Error::Unavailable)` with the reason when there is no OpenCL or no such device;
    /// `Err(Error::Device)` when the device fails to open or to compile the kernels.
    pub fn new() -> Result<Self, Error> {
        Self::with_selector(&std::env::var(DEVICE_ENV).unwrap_or_default())
    }

    /// Opens the device `selector` names: `P:D`, an index into [`crate::probe`]'s list, a
    /// name substring, or `auto`/empty.
    pub fn with_selector(selector: &str) -> Result<Self, Error> {
        // PoCL initialises its device lazily and not thread-safely: two threads opening a
        // backend at once can see no device, or crash. Opening is rare; serialise it.
        static OPENING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = OPENING.lock().unwrap_or_else(|e| e.into_inner());
        let found = discovery::find(selector)?;
        let dev = Device::open(found)?;
        let selection = default_selection(&dev.info);
        Ok(OpenClBackend {
            dev: Arc::new(dev),
            selection,
        })
    }

    /// [`OpenClBackend::new`], except that an absent device is `Ok(None)` unless
    /// `IRE_REQUIRE` names `opencl`. Any other failure (a device that exists but fails to
    /// open or compile) is always an error.
    pub fn optional() -> Result<Option<Self>, Error> {
        match Self::new() {
            Ok(b) => Ok(Some(b)),
            Err(Error::Unavailable { .. }) if !discovery::required_by_env() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The device this backend runs on.
    pub fn device(&self) -> &DeviceInfo {
        &self.dev.info
    }

    /// Where the k-th-largest selection runs.
    pub fn selection_path(&self) -> SelectionPath {
        self.selection
    }

    /// The same backend with the selection run on `path`.
    pub fn with_selection_path(mut self, path: SelectionPath) -> Self {
        self.selection = path;
        self
    }

    /// Waits until every enqueued command has completed.
    pub fn synchronize(&self) -> Result<(), Error> {
        self.dev.finish()
    }

    pub(crate) fn device_handle(&self) -> &Device {
        &self.dev
    }

    fn prog(&self, dtype: DType) -> Result<&Program, Error> {
        self.dev.program(dtype)
    }

    fn launch(
        &self,
        dtype: DType,
        name: &'static str,
        args: &[Arg<'_>],
        groups: usize,
    ) -> Result<(), Error> {
        self.prog(dtype)?
            .launch(&self.dev.queue, name, args, groups)
    }

    /// An element-wise kernel over `n` elements (one work-item each).
    fn elementwise(
        &self,
        dtype: DType,
        name: &'static str,
        args: &[Arg<'_>],
        n: usize,
    ) -> Result<(), Error> {
        if n == 0 {
            return Ok(());
        }
        self.launch(dtype, name, args, n.div_ceil(REDUCE_WG))
    }

    /// An uninitialised device buffer of `bytes` bytes (`bytes > 0`).
    fn raw_alloc(&self, bytes: usize) -> Result<Mem, Error> {
        // SAFETY: no host pointer is passed; the flags ask for plain device memory.
        unsafe {
            core::create_buffer::<_, u8>(
                &self.dev.context,
                MemFlags::new().read_write(),
                bytes,
                None,
            )
        }
        .map_err(|e| dev_err(&format!("allocating {bytes} bytes"), e))
    }

    fn read_bytes(&self, mem: &Mem, dst: &mut [u8]) -> Result<(), Error> {
        // SAFETY: blocking read: `dst` outlives the command.
        unsafe {
            core::enqueue_read_buffer(&self.dev.queue, mem, true, 0, dst, None::<()>, None::<()>)
        }
        .map_err(|e| dev_err("reading a buffer", e))
    }

    fn write_bytes(&self, mem: &Mem, src: &[u8]) -> Result<(), Error> {
        // SAFETY: blocking write: `src` outlives the command.
        unsafe {
            core::enqueue_write_buffer(&self.dev.queue, mem, true, 0, src, None::<()>, None::<()>)
        }
        .map_err(|e| dev_err("writing a buffer", e))
    }

    /// First pass `first` (one partial per work-group), then `sum_partial` passes until one
    /// value is left.
    fn reduce_float<T: Scalar>(
        &self,
        first: &'static str,
        inputs: &[&Mem],
        n: usize,
    ) -> Result<T, Error> {
        if n == 0 {
            return Ok(T::zero());
        }
        let size = T::DTYPE.size();
        let g1 = n.div_ceil(REDUCE_SPAN);
        let pa = self.raw_alloc(g1 * size)?;
        let pb = self.raw_alloc(g1.div_ceil(REDUCE_SPAN) * size)?;
        let mut args: Vec<Arg<'_>> = inputs.iter().map(|m| Arg::Mem(m)).collect();
        args.push(Arg::U64(n as u64));
        args.push(Arg::Mem(&pa));
        self.launch(T::DTYPE, first, &args, g1)?;
        let (mut src, mut dst, mut m) = (&pa, &pb, g1);
        while m > 1 {
            let g = m.div_ceil(REDUCE_SPAN);
            self.launch(
                T::DTYPE,
                "sum_partial",
                &[Arg::Mem(src), Arg::U64(m as u64), Arg::Mem(dst)],
                g,
            )?;
            std::mem::swap(&mut src, &mut dst);
            m = g;
        }
        let mut out = [0u8; 8];
        self.read_bytes(src, &mut out[..size])?;
        scalar_from_bytes(&out[..size])
    }

    /// A count: first pass `first` in the `dtype` program, then `sum_u32_partial` passes.
    fn reduce_count(
        &self,
        dtype: DType,
        first: &'static str,
        input: &Mem,
        n: usize,
    ) -> Result<usize, Error> {
        if n == 0 {
            return Ok(0);
        }
        let g1 = n.div_ceil(REDUCE_SPAN);
        let pa = self.raw_alloc(g1 * 4)?;
        self.launch(
            dtype,
            first,
            &[Arg::Mem(input), Arg::U64(n as u64), Arg::Mem(&pa)],
            g1,
        )?;
        if n > u32::MAX as usize {
            // The u32 partials of later passes could overflow: add them on the host.
            let mut parts = vec![0u8; g1 * 4];
            self.read_bytes(&pa, &mut parts)?;
            return Ok(parts
                .chunks_exact(4)
                .map(|c| c.try_into().map(u32::from_ne_bytes).unwrap_or(0) as usize)
                .sum());
        }
        let pb = self.raw_alloc(g1.div_ceil(REDUCE_SPAN) * 4)?;
        let (mut src, mut dst, mut m) = (&pa, &pb, g1);
        while m > 1 {
            let g = m.div_ceil(REDUCE_SPAN);
            self.launch(
                dtype,
                "sum_u32_partial",
                &[Arg::Mem(src), Arg::U64(m as u64), Arg::Mem(dst)],
                g,
            )?;
            std::mem::swap(&mut src, &mut dst);
            m = g;
        }
        let mut out = [0u8; 4];
        self.read_bytes(src, &mut out)?;
        Ok(u32::from_ne_bytes(out) as usize)
    }

    fn total_and_check_k<T: Scalar>(bufs: &[&ClBuffer<T>], k: usize) -> Result<usize, Error> {
        let n: usize = bufs.iter().map(|b| b.len).sum();
        if k == 0 || k > n {
            return Err(k_error(k));
        }
        Ok(n)
    }

    /// The k-th largest by downloading every buffer and selecting on the host.
    pub fn kth_largest_host<T: Scalar>(&self, bufs: &[&ClBuffer<T>], k: usize) -> Result<T, Error> {
        let n = Self::total_and_check_k(bufs, k)?;
        let mut all = vec![T::zero(); n];
        let mut at = 0;
        for b in bufs {
            self.download(b, &mut all[at..at + b.len])?;
            at += b.len;
        }
        ire_core::host::kth_largest(&mut all, k)
    }

    /// The k-th largest by radix selection on the device (exact, equal to the host's).
    ///
    /// A NaN must be rejected and infinities are legal: the first pass's histogram tells
    /// whether any key has the top byte of a NaN (0x00 or 0xFF, shared only with infinities
    /// and magnitudes ≥ 2^127 for f32, 2^1009 for f64); if so, the selection falls back to
    /// the host path, which sorts it out. The common case costs no extra pass.
    pub fn kth_largest_device<T: Scalar>(
        &self,
        bufs: &[&ClBuffer<T>],
        k: usize,
    ) -> Result<T, Error> {
        let n = Self::total_and_check_k(bufs, k)?;
        if n > u32::MAX as usize {
            // The histogram counters are u32.
            return self.kth_largest_host(bufs, k);
        }
        let size = T::DTYPE.size();
        let bits = 8 * size;
        let hist = self.raw_alloc(256 * 4)?;
        let (mut prefix, mut mask, mut rem) = (0u64, 0u64, k as u64);
        for pass in 0..size {
            let shift = bits - 8 * (pass + 1);
            self.write_bytes(&hist, &[0u8; 256 * 4])?;
            for b in bufs.iter().filter_map(|b| nonzero(b)) {
                self.launch(
                    T::DTYPE,
                    "select_histogram",
                    &[
                        Arg::Mem(b.mem_ref()?),
                        Arg::U64(b.len as u64),
                        Arg::U32(shift as u32),
                        key_arg::<T>(mask),
                        key_arg::<T>(prefix),
                        Arg::Mem(&hist),
                    ],
                    b.len.div_ceil(REDUCE_WG * HIST_ITEMS),
                )?;
            }
            let mut counts = [0u8; 256 * 4];
            self.read_bytes(&hist, &mut counts)?;
            let count = |byte: usize| {
                counts[byte * 4..byte * 4 + 4]
                    .try_into()
                    .map(u32::from_ne_bytes)
                    .unwrap_or(0) as u64
            };
            if pass == 0 && count(0) + count(255) > 0 {
                return self.kth_largest_host(bufs, k);
            }
            let mut chosen = None;
            for byte in (0..256usize).rev() {
                let c = count(byte);
                if rem <= c {
                    chosen = Some(byte as u64);
                    break;
                }
                rem -= c;
            }
            let byte = chosen.ok_or_else(|| {
                dev_err(
                    "select_histogram",
                    format!("pass {pass}: the histogram holds fewer than k values"),
                )
            })?;
            prefix |= byte << shift;
            mask |= 0xFFu64 << shift;
        }
        Ok(from_key::<T>(prefix))
    }
}

/// The default selection path for a device (measurements in the crate documentation).
///
/// On a CPU device (PoCL) the buffers already live in host memory, and one introselect beats
/// five passes of atomics-heavy kernels; on a GPU the download alone costs a PCIe transfer
/// of the whole estimate, so the selection stays on the device.
fn default_selection(info: &DeviceInfo) -> SelectionPath {
    match info.kind {
        DeviceKind::Cpu => SelectionPath::Host,
        _ => SelectionPath::Device,
    }
}

impl Backend for OpenClBackend {
    type Buffer<E: Element> = ClBuffer<E>;

    fn name(&self) -> &str {
        BACKEND
    }

    fn supports_dtype(&self, dtype: DType) -> bool {
        match dtype {
            DType::F64 => self.dev.info.fp64,
            _ => true,
        }
    }

    fn alloc<E: Element>(&self, len: usize) -> Result<ClBuffer<E>, Error> {
        if !self.supports_dtype(E::DTYPE) {
            return Err(Error::UnsupportedDType {
                backend: BACKEND.into(),
                dtype: E::DTYPE,
            });
        }
        if len == 0 {
            return Ok(ClBuffer::new(None, 0));
        }
        let bytes = len
            .checked_mul(E::DTYPE.size())
            .ok_or_else(|| dev_err("alloc", format!("{len} elements overflow usize")))?;
        let mem = self.raw_alloc(bytes)?;
        self.elementwise(
            DType::U8,
            "fill_u8",
            &[Arg::Mem(&mem), Arg::U8(0), Arg::U64(bytes as u64)],
            bytes,
        )?;
        Ok(ClBuffer::new(Some(mem), len))
    }

    fn len<E: Element>(&self, buf: &ClBuffer<E>) -> usize {
        buf.len
    }

    fn upload<E: Element>(&self, dst: &mut ClBuffer<E>, src: &[E]) -> Result<(), Error> {
        same("upload", dst.len, src.len())?;
        match nonzero(dst) {
            None => Ok(()),
            Some(d) => self.write_bytes(d.mem_ref()?, as_bytes(src)?),
        }
    }

    fn download<E: Element>(&self, src: &ClBuffer<E>, dst: &mut [E]) -> Result<(), Error> {
        same("download", src.len, dst.len())?;
        match nonzero(src) {
            None => Ok(()),
            Some(s) => self.read_bytes(s.mem_ref()?, as_bytes_mut(dst)?),
        }
    }

    fn copy<E: Element>(&self, src: &ClBuffer<E>, dst: &mut ClBuffer<E>) -> Result<(), Error> {
        let n = same("copy", dst.len, src.len)?;
        if n == 0 {
            return Ok(());
        }
        core::enqueue_copy_buffer::<u8, _, _, _>(
            &self.dev.queue,
            src.mem_ref()?,
            dst.mem_ref()?,
            0,
            0,
            n * E::DTYPE.size(),
            None::<()>,
            None::<()>,
        )
        .map_err(|e| dev_err("copy", e))
    }

    fn fill<E: Element>(&self, dst: &mut ClBuffer<E>, value: E) -> Result<(), Error> {
        let n = dst.len;
        if n == 0 {
            return Ok(());
        }
        let b = as_bytes(std::slice::from_ref(&value))?;
        let bad = || dev_err("fill", "value of the wrong size");
        let (name, v) = match E::DTYPE {
            DType::U8 => ("fill_u8", Arg::U8(b[0])),
            DType::F32 => (
                "fill",
                Arg::F32(f32::from_ne_bytes(b.try_into().map_err(|_| bad())?)),
            ),
            DType::F64 => (
                "fill",
                Arg::F64(f64::from_ne_bytes(b.try_into().map_err(|_| bad())?)),
            ),
        };
        let dtype = if E::DTYPE == DType::U8 {
            DType::F32
        } else {
            E::DTYPE
        };
        self.elementwise(
            dtype,
            name,
            &[Arg::Mem(dst.mem_ref()?), v, Arg::U64(n as u64)],
            n,
        )
    }

    fn axpy<T: Scalar>(&self, y: &mut ClBuffer<T>, a: T, x: &ClBuffer<T>) -> Result<(), Error> {
        let n = same("axpy", y.len, x.len)?;
        if n == 0 {
            return Ok(());
        }
        self.elementwise(
            T::DTYPE,
            "axpy",
            &[
                Arg::Mem(y.mem_ref()?),
                t_arg(a),
                Arg::Mem(x.mem_ref()?),
                Arg::U64(n as u64),
            ],
            n,
        )
    }

    fn sam_perturb<T: Scalar>(
        &self,
        theta: &mut ClBuffer<T>,
        g: &ClBuffer<T>,
        s: T,
    ) -> Result<(), Error> {
        self.axpy(theta, s, g)
    }

    fn sgd_step<T: Scalar>(
        &self,
        theta: &mut ClBuffer<T>,
        grad: &ClBuffer<T>,
        s: &SgdScalars<T>,
    ) -> Result<(), Error> {
        let n = same("sgd_step", theta.len, grad.len)?;
        if n == 0 {
            return Ok(());
        }
        self.elementwise(
            T::DTYPE,
            "sgd_step",
            &[
                Arg::Mem(theta.mem_ref()?),
                Arg::Mem(grad.mem_ref()?),
                t_arg(s.lr),
                t_arg(s.weight_decay),
                Arg::U64(n as u64),
            ],
            n,
        )
    }

    fn sgd_momentum_step<T: Scalar>(
        &self,
        theta: &mut ClBuffer<T>,
        grad: &ClBuffer<T>,
        momentum: &mut ClBuffer<T>,
        s: &SgdScalars<T>,
    ) -> Result<(), Error> {
        let n = same("sgd_momentum_step: grad", theta.len, grad.len)?;
        same("sgd_momentum_step: momentum", n, momentum.len)?;
        if n == 0 {
            return Ok(());
        }
        self.elementwise(
            T::DTYPE,
            "sgd_momentum_step",
            &[
                Arg::Mem(theta.mem_ref()?),
                Arg::Mem(grad.mem_ref()?),
                Arg::Mem(momentum.mem_ref()?),
                t_arg(s.lr),
                t_arg(s.weight_decay),
                t_arg(s.momentum),
                t_arg(s.dampening_complement),
                Arg::U32(sgd_flags(s)),
                Arg::U64(n as u64),
            ],
            n,
        )
    }

    fn adamw_step<T: Scalar>(
        &self,
        theta: &mut ClBuffer<T>,
        grad: &ClBuffer<T>,
        m: &mut ClBuffer<T>,
        v: &mut ClBuffer<T>,
        s: &AdamWScalars<T>,
    ) -> Result<(), Error> {
        let n = same("adamw_step: grad", theta.len, grad.len)?;
        same("adamw_step: m", n, m.len)?;
        same("adamw_step: v", n, v.len)?;
        if n == 0 {
            return Ok(());
        }
        let mut args = vec![
            Arg::Mem(theta.mem_ref()?),
            Arg::Mem(grad.mem_ref()?),
            Arg::Mem(m.mem_ref()?),
            Arg::Mem(v.mem_ref()?),
        ];
        args.extend(adamw_args(s));
        args.push(Arg::U64(n as u64));
        self.elementwise(T::DTYPE, "adamw_step", &args, n)
    }

    fn ire_boost<T: Scalar>(
        &self,
        theta: &mut ClBuffer<T>,
        theta_old: &ClBuffer<T>,
        mask: &ClBuffer<u8>,
        kappa: T,
    ) -> Result<(), Error> {
        let n = same("ire_boost: theta_old", theta.len, theta_old.len)?;
        same("ire_boost: mask", n, mask.len)?;
        if n == 0 {
            return Ok(());
        }
        self.elementwise(
            T::DTYPE,
            "ire_boost",
            &[
                Arg::Mem(theta.mem_ref()?),
                Arg::Mem(theta_old.mem_ref()?),
                Arg::Mem(mask.mem_ref()?),
                t_arg(kappa),
                Arg::U64(n as u64),
            ],
            n,
        )
    }

    fn ema_square<T: Scalar>(
        &self,
        h: &mut ClBuffer<T>,
        g: &ClBuffer<T>,
        beta: T,
    ) -> Result<(), Error> {
        let n = same("ema_square", h.len, g.len)?;
        if n == 0 {
            return Ok(());
        }
        self.elementwise(
            T::DTYPE,
            "ema_square",
            &[
                Arg::Mem(h.mem_ref()?),
                Arg::Mem(g.mem_ref()?),
                t_arg(beta),
                t_arg(T::one() - beta),
                Arg::U64(n as u64),
            ],
            n,
        )
    }

    fn ema_abs<T: Scalar>(
        &self,
        h: &mut ClBuffer<T>,
        g: &ClBuffer<T>,
        beta: T,
    ) -> Result<(), Error> {
        let n = same("ema_abs", h.len, g.len)?;
        if n == 0 {
            return Ok(());
        }
        self.elementwise(
            T::DTYPE,
            "ema_abs",
            &[
                Arg::Mem(h.mem_ref()?),
                Arg::Mem(g.mem_ref()?),
                t_arg(beta),
                t_arg(T::one() - beta),
                Arg::U64(n as u64),
            ],
            n,
        )
    }

    fn ema_product<T: Scalar>(
        &self,
        h: &mut ClBuffer<T>,
        a: &ClBuffer<T>,
        b: &ClBuffer<T>,
        beta: T,
    ) -> Result<(), Error> {
        let n = same("ema_product: a", h.len, a.len)?;
        same("ema_product: b", n, b.len)?;
        if n == 0 {
            return Ok(());
        }
        self.elementwise(
            T::DTYPE,
            "ema_product",
            &[
                Arg::Mem(h.mem_ref()?),
                Arg::Mem(a.mem_ref()?),
                Arg::Mem(b.mem_ref()?),
                t_arg(beta),
                t_arg(T::one() - beta),
                Arg::U64(n as u64),
            ],
            n,
        )
    }

    fn mask_le<T: Scalar>(
        &self,
        h: &ClBuffer<T>,
        tau: T,
        mask: &mut ClBuffer<u8>,
    ) -> Result<(), Error> {
        let n = same("mask_le", h.len, mask.len)?;
        if n == 0 {
            return Ok(());
        }
        self.elementwise(
            T::DTYPE,
            "mask_le",
            &[
                Arg::Mem(h.mem_ref()?),
                t_arg(tau),
                Arg::Mem(mask.mem_ref()?),
                Arg::U64(n as u64),
            ],
            n,
        )
    }

    fn asam_perturb<T: Scalar>(
        &self,
        theta: &mut ClBuffer<T>,
        g: &ClBuffer<T>,
        s: T,
    ) -> Result<(), Error> {
        let n = same("asam_perturb", theta.len, g.len)?;
        if n == 0 {
            return Ok(());
        }
        self.elementwise(
            T::DTYPE,
            "asam_perturb",
            &[
                Arg::Mem(theta.mem_ref()?),
                Arg::Mem(g.mem_ref()?),
                t_arg(s),
                Arg::U64(n as u64),
            ],
            n,
        )
    }

    fn sum_squares<T: Scalar>(&self, x: &ClBuffer<T>) -> Result<T, Error> {
        match nonzero(x) {
            None => Ok(T::zero()),
            Some(x) => self.reduce_float("sum_squares_partial", &[x.mem_ref()?], x.len),
        }
    }

    fn sum_squares_product<T: Scalar>(&self, a: &ClBuffer<T>, b: &ClBuffer<T>) -> Result<T, Error> {
        let n = same("sum_squares_product", a.len, b.len)?;
        if n == 0 {
            return Ok(T::zero());
        }
        self.reduce_float(
            "sum_squares_product_partial",
            &[a.mem_ref()?, b.mem_ref()?],
            n,
        )
    }

    fn count_non_finite<T: Scalar>(&self, x: &ClBuffer<T>) -> Result<usize, Error> {
        match nonzero(x) {
            None => Ok(0),
            Some(x) => self.reduce_count(T::DTYPE, "count_non_finite_partial", x.mem_ref()?, x.len),
        }
    }

    fn count_nonzero(&self, x: &ClBuffer<u8>) -> Result<usize, Error> {
        match nonzero(x) {
            None => Ok(0),
            Some(x) => self.reduce_count(DType::F32, "count_nonzero_partial", x.mem_ref()?, x.len),
        }
    }

    fn kth_largest<T: Scalar>(&self, bufs: &[&ClBuffer<T>], k: usize) -> Result<T, Error> {
        match self.selection {
            SelectionPath::Device => self.kth_largest_device(bufs, k),
            SelectionPath::Host => self.kth_largest_host(bufs, k),
        }
    }

    fn sgd_ire_step<T: Scalar>(
        &self,
        theta: &mut ClBuffer<T>,
        grad: &ClBuffer<T>,
        s: &SgdScalars<T>,
        mask: &ClBuffer<u8>,
        kappa: T,
    ) -> Result<(), Error> {
        let n = same("sgd_ire_step: grad", theta.len, grad.len)?;
        same("sgd_ire_step: mask", n, mask.len)?;
        if n == 0 {
            return Ok(());
        }
        self.elementwise(
            T::DTYPE,
            "sgd_ire_step",
            &[
                Arg::Mem(theta.mem_ref()?),
                Arg::Mem(grad.mem_ref()?),
                t_arg(s.lr),
                t_arg(s.weight_decay),
                Arg::Mem(mask.mem_ref()?),
                t_arg(kappa),
                Arg::U64(n as u64),
            ],
            n,
        )
    }

    fn sgd_momentum_ire_step<T: Scalar>(
        &self,
        theta: &mut ClBuffer<T>,
        grad: &ClBuffer<T>,
        momentum: &mut ClBuffer<T>,
        s: &SgdScalars<T>,
        mask: &ClBuffer<u8>,
        kappa: T,
    ) -> Result<(), Error> {
        let n = same("sgd_momentum_ire_step: grad", theta.len, grad.len)?;
        same("sgd_momentum_ire_step: momentum", n, momentum.len)?;
        same("sgd_momentum_ire_step: mask", n, mask.len)?;
        if n == 0 {
            return Ok(());
        }
        self.elementwise(
            T::DTYPE,
            "sgd_momentum_ire_step",
            &[
                Arg::Mem(theta.mem_ref()?),
                Arg::Mem(grad.mem_ref()?),
                Arg::Mem(momentum.mem_ref()?),
                t_arg(s.lr),
                t_arg(s.weight_decay),
                t_arg(s.momentum),
                t_arg(s.dampening_complement),
                Arg::U32(sgd_flags(s)),
                Arg::Mem(mask.mem_ref()?),
                t_arg(kappa),
                Arg::U64(n as u64),
            ],
            n,
        )
    }

    fn adamw_ire_step<T: Scalar>(
        &self,
        theta: &mut ClBuffer<T>,
        grad: &ClBuffer<T>,
        m: &mut ClBuffer<T>,
        v: &mut ClBuffer<T>,
        s: &AdamWScalars<T>,
        mask: &ClBuffer<u8>,
        kappa: T,
    ) -> Result<(), Error> {
        let n = same("adamw_ire_step: grad", theta.len, grad.len)?;
        same("adamw_ire_step: m", n, m.len)?;
        same("adamw_ire_step: v", n, v.len)?;
        same("adamw_ire_step: mask", n, mask.len)?;
        if n == 0 {
            return Ok(());
        }
        let mut args = vec![
            Arg::Mem(theta.mem_ref()?),
            Arg::Mem(grad.mem_ref()?),
            Arg::Mem(m.mem_ref()?),
            Arg::Mem(v.mem_ref()?),
        ];
        args.extend(adamw_args(s));
        args.push(Arg::Mem(mask.mem_ref()?));
        args.push(t_arg(kappa));
        args.push(Arg::U64(n as u64));
        self.elementwise(T::DTYPE, "adamw_ire_step", &args, n)
    }
}

/// Bit 0: first step (buffer := d); bit 1: Nesterov (the kernels' `flags`).
fn sgd_flags<T>(s: &SgdScalars<T>) -> u32 {
    (s.first_step as u32) | ((s.nesterov as u32) << 1)
}

/// The eight host scalars of an AdamW step, in kernel order.
fn adamw_args<'a, T: Scalar>(s: &AdamWScalars<T>) -> [Arg<'a>; 8] {
    [
        t_arg(s.decay),
        t_arg(s.beta1),
        t_arg(s.one_minus_beta1),
        t_arg(s.beta2),
        t_arg(s.one_minus_beta2),
        t_arg(s.step_size),
        t_arg(s.bias_correction2_sqrt),
        t_arg(s.eps),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_convert_back_to_the_same_bits() {
        let xs = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-40,
            -0.0,
            0.0,
            1e-45,
            0.25,
            f32::MAX,
            f32::INFINITY,
        ];
        for x in xs {
            let back: f32 = from_key(x.order_key_u64());
            assert_eq!(back.to_bits(), x.to_bits(), "{x:?}");
        }
        let ys = [f64::NEG_INFINITY, -2.0, -0.0, 0.0, 5e-324, 1.0, f64::MAX];
        for y in ys {
            let back: f64 = from_key(y.order_key_u64());
            assert_eq!(back.to_bits(), y.to_bits(), "{y:?}");
        }
    }

    #[test]
    fn flags_follow_the_kernel_contract() {
        let mut s = SgdScalars {
            lr: 0.1f32,
            weight_decay: 0.0,
            momentum: 0.9,
            dampening_complement: 1.0,
            nesterov: false,
            first_step: true,
        };
        assert_eq!(sgd_flags(&s), 1);
        s.nesterov = true;
        assert_eq!(sgd_flags(&s), 3);
        s.first_step = false;
        assert_eq!(sgd_flags(&s), 2);
    }
}

//! `CudaBackend`: device buffers, kernel launches and the `ire_core::Backend` operations.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use ire_core::formulas::{AdamWScalars, SgdScalars};
use ire_core::kernels::{REDUCE_WG, kernel_names};
use ire_core::{Backend, DType, Element, Error, Result, Scalar};

use crate::BACKEND;
use crate::driver::{self, DeviceInfo, driver_error, unavailable};
use crate::nvrtc;
use crate::signature::{Param, PtrElem, signature};

/// Threads per block of the element-wise kernels (one thread per element).
pub(crate) const BLOCK: u32 = 256;
/// Threads per block of the reduction kernels (their shared arrays have this size).
pub(crate) const REDUCE_BLOCK: u32 = REDUCE_WG as u32;
/// Upper bound on the blocks of one reduction launch; grid-stride loops cover the rest, and
/// the partials (at most this many) fit in the one block of the second pass.
pub(crate) const MAX_REDUCE_BLOCKS: u32 = 1024;

/// Environment variable: the device ordinal [`CudaBackend::from_env`] opens (default 0).
pub const ENV_DEVICE: &str = "IRE_CUDA_DEVICE";
/// Environment variable: compile for this architecture (`sm_90`, `compute_80`) instead of
/// the one chosen from the device's compute capability.
pub const ENV_ARCH: &str = "IRE_CUDA_ARCH";

pub(crate) fn internal(message: impl Into<String>) -> Error {
    Error::Device {
        backend: BACKEND.into(),
        message: format!("internal error: {}", message.into()),
    }
}

fn same_len(what: &str, expected: usize, found: usize) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::SizeMismatch {
            what: what.into(),
            expected,
            found,
        })
    }
}

// ------------------------------------------------------------------ memory

/// Device memory of one buffer.
#[derive(Debug)]
pub(crate) enum Mem {
    /// Memory on the GPU.
    Cuda(CudaSlice<u8>),
    /// Host memory standing in for the GPU in the crate's own tests (kernel emulator).
    #[cfg(test)]
    Host(std::sync::Mutex<Vec<u8>>),
}

/// The element type of a buffer as the kernels see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    F64,
    U8,
    U32,
}

impl Elem {
    pub(crate) const fn size(self) -> usize {
        match self {
            Elem::F32 | Elem::U32 => 4,
            Elem::F64 => 8,
            Elem::U8 => 1,
        }
    }
}

/// The kernel element type of `E`: only `f32`, `f64` and `u8` (whose bytes may be copied
/// to and from the device as they are) are accepted.
fn elem_of<E: Element>() -> Result<Elem> {
    let t = TypeId::of::<E>();
    if t == TypeId::of::<f32>() {
        Ok(Elem::F32)
    } else if t == TypeId::of::<f64>() {
        Ok(Elem::F64)
    } else if t == TypeId::of::<u8>() {
        Ok(Elem::U8)
    } else {
        Err(Error::UnsupportedDType {
            backend: BACKEND.into(),
            dtype: E::DTYPE,
        })
    }
}

/// The kernel program (`F32` or `F64`) that computes on `T`.
pub(crate) fn program_of<T: Scalar>() -> Result<(DType, Elem)> {
    match elem_of::<T>()? {
        Elem::F32 => Ok((DType::F32, Elem::F32)),
        Elem::F64 => Ok((DType::F64, Elem::F64)),
        _ => Err(Error::UnsupportedDType {
            backend: BACKEND.into(),
            dtype: T::DTYPE,
        }),
    }
}

fn bytes_of<E: Element>(s: &[E]) -> Result<&[u8]> {
    elem_of::<E>()?;
    // SAFETY: `E` is f32, f64 or u8 (checked above): no padding, every byte initialised. The
    // view covers exactly the slice's memory and lives as long as the borrow of `s`.
    Ok(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) })
}

fn bytes_of_mut<E: Element>(s: &mut [E]) -> Result<&mut [u8]> {
    elem_of::<E>()?;
    // SAFETY: as in `bytes_of`; moreover every byte pattern is a valid f32, f64 or u8, so
    // writing arbitrary bytes through the view cannot create an invalid value.
    Ok(unsafe {
        std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(s))
    })
}

/// A buffer of `len` elements of `E` on the device of the [`CudaBackend`] that allocated it.
///
/// A zero-length buffer holds no device memory. Buffers must only be used with the backend
/// that allocated them.
pub struct CudaBuffer<E> {
    pub(crate) mem: Option<Mem>,
    len: usize,
    _elem: PhantomData<E>,
}

impl<E: Element> CudaBuffer<E> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device memory as raw bytes (`None` for an empty buffer), for kernels of other
    /// crates: pass it to a launch builder as the pointer argument.
    pub fn cuda_slice(&self) -> Option<&CudaSlice<u8>> {
        match self.mem.as_ref()? {
            Mem::Cuda(s) => Some(s),
            #[cfg(test)]
            Mem::Host(_) => None,
        }
    }

    /// The device memory as raw bytes, mutably (`None` for an empty buffer).
    pub fn cuda_slice_mut(&mut self) -> Option<&mut CudaSlice<u8>> {
        match self.mem.as_mut()? {
            Mem::Cuda(s) => Some(s),
            #[cfg(test)]
            Mem::Host(_) => None,
        }
    }

    fn arg(&self, elem: Elem) -> Result<Arg<'_>> {
        let mem = self
            .mem
            .as_ref()
            .ok_or_else(|| internal("an empty buffer reached a kernel launch"))?;
        Ok(Arg::Buf(mem, 0, elem))
    }
}

impl<E: Element> fmt::Debug for CudaBuffer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaBuffer")
            .field("dtype", &E::DTYPE)
            .field("len", &self.len)
            .finish()
    }
}

// ------------------------------------------------------------------ launches

/// One kernel argument.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    /// A pointer: the memory, an element offset into it, and its element type.
    Buf(&'a Mem, usize, Elem),
    /// A `T` scalar (converted to the program's float type; exact for values that came from it).
    Real(f64),
    /// A `U8` scalar.
    U8(u8),
    /// A `U32` scalar.
    U32(u32),
    /// An `INDEX` (64-bit).
    Index(u64),
    /// A `KEY`: 32-bit in the f32 program, 64-bit in the f64 program.
    Key(u64),
}

/// Checks a launch against the kernel's parameter list in the source.
pub(crate) fn check_args(program: DType, kernel: &str, args: &[Arg<'_>]) -> Result<()> {
    check_args_with(signature(kernel).map_err(internal)?, program, kernel, args)
}

/// Checks a launch against the parameter list `sig`.
pub(crate) fn check_args_with(
    sig: &crate::signature::Signature,
    program: DType,
    kernel: &str,
    args: &[Arg<'_>],
) -> Result<()> {
    if sig.params.len() != args.len() {
        return Err(internal(format!(
            "{kernel} takes {} arguments, {} given",
            sig.params.len(),
            args.len()
        )));
    }
    let real = if program == DType::F64 {
        Elem::F64
    } else {
        Elem::F32
    };
    for (i, (p, a)) in sig.params.iter().zip(args).enumerate() {
        let ok = match (p, a) {
            (Param::Ptr { elem, .. }, Arg::Buf(_, _, e)) => {
                *e == match elem {
                    PtrElem::Real => real,
                    PtrElem::U8 => Elem::U8,
                    PtrElem::U32 => Elem::U32,
                }
            }
            (Param::Real, Arg::Real(_))
            | (Param::U8, Arg::U8(_))
            | (Param::U32, Arg::U32(_))
            | (Param::Index, Arg::Index(_)) => true,
            (Param::Key, Arg::Key(k)) => program == DType::F64 || *k <= u64::from(u32::MAX),
            _ => false,
        };
        if !ok {
            return Err(internal(format!(
                "{kernel} ({program:?} program): argument {i} is {a:?}, the source declares {p:?}"
            )));
        }
    }
    Ok(())
}

/// Blocks of an element-wise launch over `n` elements (one thread each).
pub(crate) fn elementwise_blocks(n: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(BLOCK as usize))
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| Error::Unsupported {
            backend: BACKEND.into(),
            what: format!("a buffer of {n} elements (more than one launch can cover)"),
        })
}

/// Blocks of a reduction launch over `n` elements: one per 256 elements, at most
/// [`MAX_REDUCE_BLOCKS`].
pub(crate) fn reduce_blocks(n: usize) -> u32 {
    n.div_ceil(REDUCE_BLOCK as usize)
        .clamp(1, MAX_REDUCE_BLOCKS as usize) as u32
}

/// Sizes above which work is split (counters on the device are 32-bit).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Most elements one counting or histogram launch covers.
    pub chunk: usize,
    /// Most elements counted into the device histogram before it is read and cleared.
    pub flush: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            chunk: 1 << 31,
            flush: u64::from(u32::MAX),
        }
    }
}

/// One compiled kernel program, loaded into the context, with its functions.
#[derive(Debug)]
struct Program {
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
}

impl Program {
    fn load(ctx: &Arc<CudaContext>, dtype: DType, target: &str) -> Result<Self> {
        let compiled = nvrtc::compile_cached(dtype, target)?;
        let module = load_module(
            ctx,
            &compiled,
            &format!("the {} kernels", dtype.name()),
            target,
        )?;
        let mut functions = HashMap::new();
        for name in kernel_names() {
            let f = module
                .load_function(name)
                .map_err(|e| driver_error(&format!("kernel {name}"), e))?;
            functions.insert(name, f);
        }
        Ok(Program {
            _module: module,
            functions,
        })
    }
}

/// Loads compiled kernels: the device code when there is some and the driver takes it, else
/// the PTX (which needs a driver at least as new as NVRTC).
pub(crate) fn load_module(
    ctx: &Arc<CudaContext>,
    compiled: &nvrtc::Compiled,
    what: &str,
    target: &str,
) -> Result<Arc<CudaModule>> {
    let from_ptx = || ctx.load_module(Ptx::from_src(compiled.ptx.clone()));
    match &compiled.cubin {
        Some(cubin) => match ctx.load_module(Ptx::from_binary(cubin.clone())) {
            Ok(m) => Ok(m),
            // Device code the driver refuses (from an NVRTC newer than it): try the PTX.
            Err(e_bin) => from_ptx().map_err(|e| {
                driver_error(
                    &format!(
                        "loading {what} for {target} (device code: {e_bin:?}; \
                         PTX needs a driver at least as new as NVRTC)"
                    ),
                    e,
                )
            }),
        },
        None => from_ptx().map_err(|e| {
            driver_error(
                &format!(
                    "loading the PTX of {what} for {target} (PTX needs a driver at least \
                     as new as NVRTC)"
                ),
                e,
            )
        }),
    }
}

/// The driver state of a backend: context, its one stream, the two programs.
#[derive(Debug)]
pub(crate) struct Driver {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    f32: Program,
    f64: Program,
    /// Extension programs and cuBLAS, created on first use.
    pub(crate) extra: crate::launch::Extras,
}

pub(crate) fn cuda_mem(m: &Mem) -> Result<&CudaSlice<u8>> {
    match m {
        Mem::Cuda(s) => Ok(s),
        #[cfg(test)]
        Mem::Host(_) => Err(internal("a host buffer reached the CUDA device")),
    }
}

fn cuda_mem_mut(m: &mut Mem) -> Result<&mut CudaSlice<u8>> {
    match m {
        Mem::Cuda(s) => Ok(s),
        #[cfg(test)]
        Mem::Host(_) => Err(internal("a host buffer reached the CUDA device")),
    }
}

/// How one argument is passed to the device: a pointer or a scalar of a given width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Pointer,
    F32,
    F64,
    U8,
    U32,
    U64,
}

impl Slot {
    /// How an argument of the `program` is passed (`T` and `KEY` follow the program).
    pub(crate) fn of(program: DType, a: &Arg<'_>) -> Slot {
        let f64_program = program == DType::F64;
        match a {
            Arg::Buf(..) => Slot::Pointer,
            Arg::Real(_) if f64_program => Slot::F64,
            Arg::Real(_) => Slot::F32,
            Arg::U8(_) => Slot::U8,
            Arg::U32(_) => Slot::U32,
            Arg::Key(_) if !f64_program => Slot::U32,
            Arg::Index(_) | Arg::Key(_) => Slot::U64,
        }
    }

    /// The PTX parameter type of a kernel parameter passed this way.
    #[cfg(test)]
    pub(crate) fn ptx_type(self) -> &'static str {
        match self {
            Slot::Pointer | Slot::U64 => "u64",
            Slot::F32 => "f32",
            Slot::F64 => "f64",
            Slot::U8 => "u8",
            Slot::U32 => "u32",
        }
    }
}

impl Driver {
    fn launch(
        &self,
        program: DType,
        kernel: &str,
        grid: u32,
        block: u32,
        args: &[Arg<'_>],
    ) -> Result<()> {
        let functions = if program == DType::F64 {
            &self.f64.functions
        } else {
            &self.f32.functions
        };
        let f = functions
            .get(kernel)
            .ok_or_else(|| internal(format!("kernel {kernel} was not loaded")))?;
        self.launch_function(f, program, kernel, grid, block, args)
    }

    /// Launches `f` (kernel `kernel` of a `program`-typed source) with checked arguments.
    pub(crate) fn launch_function(
        &self,
        f: &CudaFunction,
        program: DType,
        kernel: &str,
        grid: u32,
        block: u32,
        args: &[Arg<'_>],
    ) -> Result<()> {
        // Every value is stored first, then pushed by reference: the builder keeps pointers
        // to them until the launch, so the vectors must not grow in between.
        let n = args.len();
        let (mut views, mut f32s, mut f64s) = (
            Vec::<CudaView<'_, u8>>::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut u8s, mut u32s, mut u64s) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut slots = Vec::with_capacity(n);
        for a in args {
            let slot = Slot::of(program, a);
            let index = match (slot, *a) {
                (Slot::Pointer, Arg::Buf(mem, offset, elem)) => {
                    let view = cuda_mem(mem)?
                        .try_slice(offset * elem.size()..)
                        .ok_or_else(|| {
                            internal(format!("{kernel}: offset {offset} past the end"))
                        })?;
                    views.push(view);
                    views.len() - 1
                }
                (Slot::F32, Arg::Real(x)) => {
                    f32s.push(x as f32);
                    f32s.len() - 1
                }
                (Slot::F64, Arg::Real(x)) => {
                    f64s.push(x);
                    f64s.len() - 1
                }
                (Slot::U8, Arg::U8(x)) => {
                    u8s.push(x);
                    u8s.len() - 1
                }
                (Slot::U32, Arg::U32(x)) => {
                    u32s.push(x);
                    u32s.len() - 1
                }
                // `check_args` has verified that a KEY of the f32 program fits in 32 bits.
                (Slot::U32, Arg::Key(x)) => {
                    u32s.push(x as u32);
                    u32s.len() - 1
                }
                (Slot::U64, Arg::Index(x) | Arg::Key(x)) => {
                    u64s.push(x);
                    u64s.len() - 1
                }
                _ => return Err(internal(format!("{kernel}: argument {a:?} as {slot:?}"))),
            };
            slots.push((slot, index));
        }
        let mut builder = self.stream.launch_builder(f);
        for &(slot, i) in &slots {
            match slot {
                Slot::Pointer => builder.arg(&views[i]),
                Slot::F32 => builder.arg(&f32s[i]),
                Slot::F64 => builder.arg(&f64s[i]),
                Slot::U8 => builder.arg(&u8s[i]),
                Slot::U32 => builder.arg(&u32s[i]),
                Slot::U64 => builder.arg(&u64s[i]),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's parameter list in the source (checked by
        // `check_args`: kinds, order, pointer element types, widths); every buffer holds the
        // `n` elements the launch covers (lengths are checked by the callers); the stored
        // values outlive the launch call.
        unsafe { builder.launch(cfg) }.map_err(|e| driver_error(kernel, e))?;
        Ok(())
    }
}

/// What executes the kernels.
#[derive(Debug)]
enum Dev {
    Cuda(Box<Driver>),
    /// The crate's own tests: kernels emulated on the host, thread by thread.
    #[cfg(test)]
    Emulated,
}

// ------------------------------------------------------------------ the backend

/// The CUDA backend: the portable kernels compiled by NVRTC for one device.
///
/// Each `f32`/`f64` element-wise operation equals the reference backend bit for bit;
/// reductions differ by rounding only (tree order); the k-th-largest selection is exact.
/// All work runs in order on one stream of the device's primary context.
#[derive(Debug)]
pub struct CudaBackend {
    dev: Dev,
    info: DeviceInfo,
    target: String,
    limits: Limits,
}

impl CudaBackend {
    /// Opens device `ordinal`: checks the driver, compiles the kernels with NVRTC for the
    /// device (or for [`ENV_ARCH`] when set) and loads them. Fails with
    /// [`Error::Unavailable`] when the driver, the device or NVRTC is missing.
    pub fn new(ordinal: usize) -> Result<Self> {
        let count = driver::device_count()?;
        if count == 0 {
            return Err(unavailable("the CUDA driver reports no GPU"));
        }
        if ordinal >= count {
            return Err(unavailable(format!(
                "there is no CUDA device {ordinal}: the driver reports {count}"
            )));
        }
        let info = driver::device_info(ordinal)?;
        nvrtc::nvrtc_version()?;
        let target = match std::env::var(ENV_ARCH) {
            Ok(a) if !a.trim().is_empty() => a.trim().to_owned(),
            _ => nvrtc::choose_target(info.compute_capability, &nvrtc::supported_archs()?)?,
        };
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("cannot open CUDA device {ordinal}: {e:?}")))?;
        // SAFETY: the backend submits everything to its one stream, in order, so buffers need
        // no cross-stream event tracking; this only affects buffers created from now on.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_error("cuStreamCreate", e))?;
        let f32 = Program::load(&ctx, DType::F32, &target)?;
        let f64 = Program::load(&ctx, DType::F64, &target)?;
        Ok(CudaBackend {
            dev: Dev::Cuda(Box::new(Driver {
                ctx,
                stream,
                f32,
                f64,
                extra: crate::launch::Extras::default(),
            })),
            info,
            target,
            limits: Limits::default(),
        })
    }

    /// Opens the device named by [`ENV_DEVICE`] (an ordinal; 0 when unset).
    pub fn from_env() -> Result<Self> {
        let ordinal = match std::env::var(ENV_DEVICE) {
            Ok(s) if !s.trim().is_empty() => s
                .trim()
                .parse::<usize>()
                .map_err(|_| unavailable(format!("{ENV_DEVICE}=`{s}` is not a device ordinal")))?,
            _ => 0,
        };
        Self::new(ordinal)
    }

    /// The device this backend runs on.
    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    /// The architecture the kernels were compiled for (`sm_90`; `compute_XY` means PTX
    /// compiled to device code by the driver).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The driver context (always present for a backend from [`CudaBackend::new`]).
    pub fn context(&self) -> Option<&Arc<CudaContext>> {
        match &self.dev {
            Dev::Cuda(d) => Some(&d.ctx),
            #[cfg(test)]
            Dev::Emulated => None,
        }
    }

    /// The stream every operation of this backend runs on (always present for a backend
    /// from [`CudaBackend::new`]). Work of other crates on these buffers must use it too.
    pub fn stream(&self) -> Option<&Arc<CudaStream>> {
        match &self.dev {
            Dev::Cuda(d) => Some(&d.stream),
            #[cfg(test)]
            Dev::Emulated => None,
        }
    }

    /// Compiles more CUDA C++ with the backend's NVRTC options for its target, and loads it.
    pub fn load_source(&self, source: &str) -> Result<Arc<CudaModule>> {
        let d = self.driver()?;
        let compiled = nvrtc::compile_source(source, Some(&self.target))?;
        let image = match compiled.cubin {
            Some(c) => Ptx::from_binary(c),
            None => Ptx::from_src(compiled.ptx),
        };
        d.ctx
            .load_module(image)
            .map_err(|e| driver_error("cuModuleLoadData", e))
    }

    /// Waits for all work submitted so far and reports any asynchronous error.
    pub fn synchronize(&self) -> Result<()> {
        match &self.dev {
            Dev::Cuda(d) => d
                .stream
                .synchronize()
                .map_err(|e| driver_error("cuStreamSynchronize", e)),
            #[cfg(test)]
            Dev::Emulated => Ok(()),
        }
    }

    pub(crate) fn driver(&self) -> Result<&Driver> {
        match &self.dev {
            Dev::Cuda(d) => Ok(d),
            #[cfg(test)]
            Dev::Emulated => Err(internal("no driver behind the emulated device")),
        }
    }

    /// A backend whose kernels run in the host emulator (tests of this crate only).
    #[cfg(test)]
    pub(crate) fn emulated(limits: Limits) -> Self {
        CudaBackend {
            dev: Dev::Emulated,
            info: DeviceInfo {
                ordinal: 0,
                name: "emulated".into(),
                compute_capability: (9, 0),
                total_memory: 0,
            },
            target: "emulated".into(),
            limits,
        }
    }

    // ---- memory primitives ----

    fn alloc_mem(&self, bytes: usize) -> Result<Mem> {
        match &self.dev {
            Dev::Cuda(d) => d
                .stream
                .alloc_zeros::<u8>(bytes)
                .map(Mem::Cuda)
                .map_err(|e| driver_error(&format!("allocating {bytes} bytes"), e)),
            #[cfg(test)]
            Dev::Emulated => Ok(Mem::Host(std::sync::Mutex::new(vec![0; bytes]))),
        }
    }

    fn write_mem(&self, dst: &mut Mem, src: &[u8]) -> Result<()> {
        match &self.dev {
            Dev::Cuda(d) => {
                let s = cuda_mem_mut(dst)?;
                if s.len() != src.len() {
                    return Err(internal("upload size"));
                }
                d.stream
                    .memcpy_htod(src, s)
                    .map_err(|e| driver_error("cuMemcpyHtoD", e))
            }
            #[cfg(test)]
            Dev::Emulated => crate::emulator::write(dst, src),
        }
    }

    /// Reads `dst.len()` bytes starting at byte `offset`, and waits for them.
    fn read_mem(&self, src: &Mem, offset: usize, dst: &mut [u8]) -> Result<()> {
        match &self.dev {
            Dev::Cuda(d) => {
                let s = cuda_mem(src)?;
                let view = s
                    .try_slice(offset..offset + dst.len())
                    .ok_or_else(|| internal("download range"))?;
                d.stream
                    .memcpy_dtoh(&view, dst)
                    .map_err(|e| driver_error("cuMemcpyDtoH", e))?;
                d.stream
                    .synchronize()
                    .map_err(|e| driver_error("cuStreamSynchronize", e))
            }
            #[cfg(test)]
            Dev::Emulated => crate::emulator::read(src, offset, dst),
        }
    }

    fn copy_mem(&self, src: &Mem, dst: &mut Mem) -> Result<()> {
        match &self.dev {
            Dev::Cuda(d) => {
                let (s, t) = (cuda_mem(src)?, cuda_mem_mut(dst)?);
                if s.len() != t.len() {
                    return Err(internal("copy size"));
                }
                d.stream
                    .memcpy_dtod(s, t)
                    .map_err(|e| driver_error("cuMemcpyDtoD", e))
            }
            #[cfg(test)]
            Dev::Emulated => crate::emulator::copy(src, dst),
        }
    }

    fn zero_mem(&self, dst: &mut Mem) -> Result<()> {
        match &self.dev {
            Dev::Cuda(d) => d
                .stream
                .memset_zeros(cuda_mem_mut(dst)?)
                .map_err(|e| driver_error("cuMemsetD8", e)),
            #[cfg(test)]
            Dev::Emulated => crate::emulator::zero(dst),
        }
    }

    fn launch(
        &self,
        program: DType,
        kernel: &'static str,
        grid: u32,
        block: u32,
        args: &[Arg<'_>],
    ) -> Result<()> {
        check_args(program, kernel, args)?;
        match &self.dev {
            Dev::Cuda(d) => d.launch(program, kernel, grid, block, args),
            #[cfg(test)]
            Dev::Emulated => crate::emulator::run(program, kernel, grid, block, args),
        }
    }

    /// An element-wise launch over `n > 0` elements.
    fn each(&self, program: DType, kernel: &'static str, n: usize, args: &[Arg<'_>]) -> Result<()> {
        self.launch(program, kernel, elementwise_blocks(n)?, BLOCK, args)
    }

    // ---- reductions ----

    /// `first` (a `*_partial` kernel over `inputs`, then `n`, then the partials) followed by
    /// `sum_partial`: the sum as one `T`.
    fn reduce_real<T: Scalar>(&self, first: &'static str, inputs: &[&Mem], n: usize) -> Result<T> {
        let (program, e) = program_of::<T>()?;
        if n == 0 {
            return Ok(T::zero());
        }
        let blocks = reduce_blocks(n);
        let partial = self.alloc_mem(blocks as usize * e.size())?;
        let mut args: Vec<Arg<'_>> = inputs.iter().map(|m| Arg::Buf(m, 0, e)).collect();
        args.push(Arg::Index(n as u64));
        args.push(Arg::Buf(&partial, 0, e));
        self.launch(program, first, blocks, REDUCE_BLOCK, &args)?;
        let total = if blocks > 1 {
            let out = self.alloc_mem(e.size())?;
            self.launch(
                program,
                "sum_partial",
                1,
                REDUCE_BLOCK,
                &[
                    Arg::Buf(&partial, 0, e),
                    Arg::Index(u64::from(blocks)),
                    Arg::Buf(&out, 0, e),
                ],
            )?;
            out
        } else {
            partial
        };
        let mut raw = [0u8; 8];
        self.read_mem(&total, 0, &mut raw[..e.size()])?;
        Ok(match e {
            Elem::F64 => T::of(f64::from_ne_bytes(raw)),
            _ => T::of(f64::from(f32::from_ne_bytes([
                raw[0], raw[1], raw[2], raw[3],
            ]))),
        })
    }

    /// A count (`first` writes `U32` partials, `sum_u32_partial` adds them), in chunks small
    /// enough for 32-bit counters.
    fn count(
        &self,
        program: DType,
        first: &'static str,
        mem: &Mem,
        elem: Elem,
        n: usize,
    ) -> Result<usize> {
        if n == 0 {
            return Ok(0);
        }
        let partial = self.alloc_mem(MAX_REDUCE_BLOCKS as usize * 4)?;
        let out = self.alloc_mem(4)?;
        let mut total = 0usize;
        let mut start = 0usize;
        while start < n {
            let len = (n - start).min(self.limits.chunk);
            let blocks = reduce_blocks(len);
            self.launch(
                program,
                first,
                blocks,
                REDUCE_BLOCK,
                &[
                    Arg::Buf(mem, start, elem),
                    Arg::Index(len as u64),
                    Arg::Buf(&partial, 0, Elem::U32),
                ],
            )?;
            self.launch(
                program,
                "sum_u32_partial",
                1,
                REDUCE_BLOCK,
                &[
                    Arg::Buf(&partial, 0, Elem::U32),
                    Arg::Index(u64::from(blocks)),
                    Arg::Buf(&out, 0, Elem::U32),
                ],
            )?;
            let mut raw = [0u8; 4];
            self.read_mem(&out, 0, &mut raw)?;
            total += u32::from_ne_bytes(raw) as usize;
            start += len;
        }
        Ok(total)
    }

    /// One radix-select pass: how many elements of `bufs` whose key matches `prefix` on
    /// `mask` have each value of the key byte at `shift`.
    #[allow(clippy::too_many_arguments)]
    fn histogram<T: Scalar>(
        &self,
        bufs: &[&CudaBuffer<T>],
        shift: u32,
        mask: u64,
        prefix: u64,
        hist: &mut Mem,
    ) -> Result<[u64; 256]> {
        let (program, e) = program_of::<T>()?;
        let mut counts = [0u64; 256];
        self.zero_mem(hist)?;
        let mut pending = 0u64;
        for b in bufs {
            let Some(mem) = b.mem.as_ref() else { continue };
            let mut start = 0usize;
            while start < b.len {
                let len = (b.len - start).min(self.limits.chunk);
                if pending > 0 && pending + len as u64 > self.limits.flush {
                    self.flush_histogram(hist, &mut counts)?;
                    pending = 0;
                }
                self.launch(
                    program,
                    "select_histogram",
                    reduce_blocks(len),
                    REDUCE_BLOCK,
                    &[
                        Arg::Buf(mem, start, e),
                        Arg::Index(len as u64),
                        Arg::U32(shift),
                        Arg::Key(mask),
                        Arg::Key(prefix),
                        Arg::Buf(hist, 0, Elem::U32),
                    ],
                )?;
                pending += len as u64;
                start += len;
            }
        }
        if pending > 0 {
            self.flush_histogram(hist, &mut counts)?;
        }
        Ok(counts)
    }

    /// Adds the device histogram to `counts` and clears it.
    fn flush_histogram(&self, hist: &mut Mem, counts: &mut [u64; 256]) -> Result<()> {
        let mut raw = [0u8; 256 * 4];
        self.read_mem(hist, 0, &mut raw)?;
        for (c, b) in counts.iter_mut().zip(raw.chunks_exact(4)) {
            *c += u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        }
        self.zero_mem(hist)
    }
}

/// The bin (scanning from the largest key byte down) holding the `rank`-th largest element,
/// and the rank within that bin. `None` if the counts hold fewer than `rank` elements.
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

/// The value whose order key (`Scalar::order_key`) is `key`.
pub(crate) fn value_of_key<T: Scalar>(key: u64, program: DType) -> T {
    if program == DType::F64 {
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

fn scalar_of<E: Element, S: Copy + 'static>(value: &E) -> Option<S> {
    (value as &dyn Any).downcast_ref::<S>().copied()
}

impl Backend for CudaBackend {
    type Buffer<E: Element> = CudaBuffer<E>;

    fn name(&self) -> &str {
        BACKEND
    }

    fn supports_dtype(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::F64 | DType::U8)
    }

    fn alloc<E: Element>(&self, len: usize) -> Result<CudaBuffer<E>> {
        let elem = elem_of::<E>()?;
        let mem = if len == 0 {
            None
        } else {
            let bytes = len
                .checked_mul(elem.size())
                .ok_or_else(|| Error::Unsupported {
                    backend: BACKEND.into(),
                    what: format!("a buffer of {len} elements"),
                })?;
            Some(self.alloc_mem(bytes)?)
        };
        Ok(CudaBuffer {
            mem,
            len,
            _elem: PhantomData,
        })
    }

    fn len<E: Element>(&self, buf: &CudaBuffer<E>) -> usize {
        buf.len
    }

    fn upload<E: Element>(&self, dst: &mut CudaBuffer<E>, src: &[E]) -> Result<()> {
        same_len("upload", dst.len, src.len())?;
        let bytes = bytes_of(src)?;
        match dst.mem.as_mut() {
            Some(m) => self.write_mem(m, bytes),
            None => Ok(()),
        }
    }

    fn download<E: Element>(&self, src: &CudaBuffer<E>, dst: &mut [E]) -> Result<()> {
        same_len("download", src.len, dst.len())?;
        let bytes = bytes_of_mut(dst)?;
        match src.mem.as_ref() {
            Some(m) => self.read_mem(m, 0, bytes),
            None => Ok(()),
        }
    }

    fn copy<E: Element>(&self, src: &CudaBuffer<E>, dst: &mut CudaBuffer<E>) -> Result<()> {
        same_len("copy", src.len, dst.len)?;
        match (src.mem.as_ref(), dst.mem.as_mut()) {
            (Some(s), Some(d)) => self.copy_mem(s, d),
            _ => Ok(()),
        }
    }

    fn fill<E: Element>(&self, dst: &mut CudaBuffer<E>, value: E) -> Result<()> {
        let elem = elem_of::<E>()?;
        let n = dst.len;
        if n == 0 {
            return Ok(());
        }
        let x = dst.arg(elem)?;
        let idx = Arg::Index(n as u64);
        let bad = || internal("fill value of an unexpected type");
        match elem {
            Elem::F32 => {
                let v = scalar_of::<E, f32>(&value).ok_or_else(bad)?;
                self.each(DType::F32, "fill", n, &[x, Arg::Real(f64::from(v)), idx])
            }
            Elem::F64 => {
                let v = scalar_of::<E, f64>(&value).ok_or_else(bad)?;
                self.each(DType::F64, "fill", n, &[x, Arg::Real(v), idx])
            }
            Elem::U8 => {
                let v = scalar_of::<E, u8>(&value).ok_or_else(bad)?;
                self.each(DType::F32, "fill_u8", n, &[x, Arg::U8(v), idx])
            }
            Elem::U32 => Err(bad()),
        }
    }

    fn axpy<T: Scalar>(&self, y: &mut CudaBuffer<T>, a: T, x: &CudaBuffer<T>) -> Result<()> {
        same_len("axpy", y.len, x.len)?;
        let (p, e) = program_of::<T>()?;
        let n = y.len;
        if n == 0 {
            return Ok(());
        }
        let args = [
            y.arg(e)?,
            Arg::Real(a.as_f64()),
            x.arg(e)?,
            Arg::Index(n as u64),
        ];
        self.each(p, "axpy", n, &args)
    }

    fn sam_perturb<T: Scalar>(
        &self,
        theta: &mut CudaBuffer<T>,
        g: &CudaBuffer<T>,
        s: T,
    ) -> Result<()> {
        self.axpy(theta, s, g)
    }

    fn sgd_step<T: Scalar>(
        &self,
        theta: &mut CudaBuffer<T>,
        grad: &CudaBuffer<T>,
        s: &SgdScalars<T>,
    ) -> Result<()> {
        same_len("sgd_step: grad", theta.len, grad.len)?;
        let (p, e) = program_of::<T>()?;
        let n = theta.len;
        if n == 0 {
            return Ok(());
        }
        let args = [
            theta.arg(e)?,
            grad.arg(e)?,
            Arg::Real(s.lr.as_f64()),
            Arg::Real(s.weight_decay.as_f64()),
            Arg::Index(n as u64),
        ];
        self.each(p, "sgd_step", n, &args)
    }

    fn sgd_momentum_step<T: Scalar>(
        &self,
        theta: &mut CudaBuffer<T>,
        grad: &CudaBuffer<T>,
        momentum: &mut CudaBuffer<T>,
        s: &SgdScalars<T>,
    ) -> Result<()> {
        same_len("sgd_momentum_step: grad", theta.len, grad.len)?;
        same_len("sgd_momentum_step: momentum", theta.len, momentum.len)?;
        let (p, e) = program_of::<T>()?;
        let n = theta.len;
        if n == 0 {
            return Ok(());
        }
        let mut args = vec![theta.arg(e)?, grad.arg(e)?, momentum.arg(e)?];
        args.extend(momentum_scalars(s));
        args.push(Arg::Index(n as u64));
        self.each(p, "sgd_momentum_step", n, &args)
    }

    fn adamw_step<T: Scalar>(
        &self,
        theta: &mut CudaBuffer<T>,
        grad: &CudaBuffer<T>,
        m: &mut CudaBuffer<T>,
        v: &mut CudaBuffer<T>,
        s: &AdamWScalars<T>,
    ) -> Result<()> {
        same_len("adamw_step: grad", theta.len, grad.len)?;
        same_len("adamw_step: m", theta.len, m.len)?;
        same_len("adamw_step: v", theta.len, v.len)?;
        let (p, e) = program_of::<T>()?;
        let n = theta.len;
        if n == 0 {
            return Ok(());
        }
        let mut args = vec![theta.arg(e)?, grad.arg(e)?, m.arg(e)?, v.arg(e)?];
        args.extend(adamw_scalars(s));
        args.push(Arg::Index(n as u64));
        self.each(p, "adamw_step", n, &args)
    }

    fn ire_boost<T: Scalar>(
        &self,
        theta: &mut CudaBuffer<T>,
        theta_old: &CudaBuffer<T>,
        mask: &CudaBuffer<u8>,
        kappa: T,
    ) -> Result<()> {
        same_len("ire_boost: theta_old", theta.len, theta_old.len)?;
        same_len("ire_boost: mask", theta.len, mask.len)?;
        let (p, e) = program_of::<T>()?;
        let n = theta.len;
        if n == 0 {
            return Ok(());
        }
        let args = [
            theta.arg(e)?,
            theta_old.arg(e)?,
            mask.arg(Elem::U8)?,
            Arg::Real(kappa.as_f64()),
            Arg::Index(n as u64),
        ];
        self.each(p, "ire_boost", n, &args)
    }

    fn ema_square<T: Scalar>(
        &self,
        h: &mut CudaBuffer<T>,
        g: &CudaBuffer<T>,
        beta: T,
    ) -> Result<()> {
        same_len("ema_square", h.len, g.len)?;
        self.ema(h, &[g], beta, "ema_square")
    }

    fn ema_abs<T: Scalar>(&self, h: &mut CudaBuffer<T>, g: &CudaBuffer<T>, beta: T) -> Result<()> {
        same_len("ema_abs", h.len, g.len)?;
        self.ema(h, &[g], beta, "ema_abs")
    }

    fn ema_product<T: Scalar>(
        &self,
        h: &mut CudaBuffer<T>,
        a: &CudaBuffer<T>,
        b: &CudaBuffer<T>,
        beta: T,
    ) -> Result<()> {
        same_len("ema_product: a", h.len, a.len)?;
        same_len("ema_product: b", h.len, b.len)?;
        self.ema(h, &[a, b], beta, "ema_product")
    }

    fn mask_le<T: Scalar>(
        &self,
        h: &CudaBuffer<T>,
        tau: T,
        mask: &mut CudaBuffer<u8>,
    ) -> Result<()> {
        same_len("mask_le", h.len, mask.len)?;
        let (p, e) = program_of::<T>()?;
        let n = h.len;
        if n == 0 {
            return Ok(());
        }
        let args = [
            h.arg(e)?,
            Arg::Real(tau.as_f64()),
            mask.arg(Elem::U8)?,
            Arg::Index(n as u64),
        ];
        self.each(p, "mask_le", n, &args)
    }

    fn asam_perturb<T: Scalar>(
        &self,
        theta: &mut CudaBuffer<T>,
        g: &CudaBuffer<T>,
        s: T,
    ) -> Result<()> {
        same_len("asam_perturb", theta.len, g.len)?;
        let (p, e) = program_of::<T>()?;
        let n = theta.len;
        if n == 0 {
            return Ok(());
        }
        let args = [
            theta.arg(e)?,
            g.arg(e)?,
            Arg::Real(s.as_f64()),
            Arg::Index(n as u64),
        ];
        self.each(p, "asam_perturb", n, &args)
    }

    fn sum_squares<T: Scalar>(&self, x: &CudaBuffer<T>) -> Result<T> {
        match x.mem.as_ref() {
            Some(m) => self.reduce_real("sum_squares_partial", &[m], x.len),
            None => Ok(T::zero()),
        }
    }

    fn sum_squares_product<T: Scalar>(&self, a: &CudaBuffer<T>, b: &CudaBuffer<T>) -> Result<T> {
        same_len("sum_squares_product", a.len, b.len)?;
        match (a.mem.as_ref(), b.mem.as_ref()) {
            (Some(ma), Some(mb)) => {
                self.reduce_real("sum_squares_product_partial", &[ma, mb], a.len)
            }
            _ => Ok(T::zero()),
        }
    }

    fn count_non_finite<T: Scalar>(&self, x: &CudaBuffer<T>) -> Result<usize> {
        let (p, e) = program_of::<T>()?;
        match x.mem.as_ref() {
            Some(m) => self.count(p, "count_non_finite_partial", m, e, x.len),
            None => Ok(0),
        }
    }

    fn count_nonzero(&self, x: &CudaBuffer<u8>) -> Result<usize> {
        match x.mem.as_ref() {
            Some(m) => self.count(DType::F32, "count_nonzero_partial", m, Elem::U8, x.len),
            None => Ok(0),
        }
    }

    fn kth_largest<T: Scalar>(&self, bufs: &[&CudaBuffer<T>], k: usize) -> Result<T> {
        let n: usize = bufs.iter().map(|b| b.len).sum();
        if k < 1 || k > n {
            return Err(Error::InvalidHyperParameter {
                field: "k",
                value: k as f64,
                allowed: "1..=N (number of values)",
            });
        }
        let (program, _) = program_of::<T>()?;
        // NaN has no place in the order: refuse it. Infinities are ordinary values; the
        // host only looks when the device finds a non-finite element.
        for b in bufs {
            if self.count_non_finite(b)? > 0 && self.to_vec(b)?.iter().any(|x| x.is_nan()) {
                return Err(Error::NonFinite {
                    what: "values of the k-th-largest selection".into(),
                });
            }
        }
        let bits: u32 = if program == DType::F64 { 64 } else { 32 };
        let mut hist = self.alloc_mem(256 * 4)?;
        let (mut prefix, mut mask, mut rank) = (0u64, 0u64, k as u64);
        for pass in 0..bits / 8 {
            let shift = bits - 8 * (pass + 1);
            let counts = self.histogram(bufs, shift, mask, prefix, &mut hist)?;
            let (bin, r) = pick_bin(&counts, rank).ok_or_else(|| {
                internal(format!(
                    "radix selection: pass {pass} counted fewer than {rank} candidates"
                ))
            })?;
            rank = r;
            prefix |= bin << shift;
            mask |= 0xFFu64 << shift;
        }
        Ok(value_of_key(prefix, program))
    }

    fn sgd_ire_step<T: Scalar>(
        &self,
        theta: &mut CudaBuffer<T>,
        grad: &CudaBuffer<T>,
        s: &SgdScalars<T>,
        mask: &CudaBuffer<u8>,
        kappa: T,
    ) -> Result<()> {
        same_len("sgd_ire_step: grad", theta.len, grad.len)?;
        same_len("sgd_ire_step: mask", theta.len, mask.len)?;
        let (p, e) = program_of::<T>()?;
        let n = theta.len;
        if n == 0 {
            return Ok(());
        }
        let args = [
            theta.arg(e)?,
            grad.arg(e)?,
            Arg::Real(s.lr.as_f64()),
            Arg::Real(s.weight_decay.as_f64()),
            mask.arg(Elem::U8)?,
            Arg::Real(kappa.as_f64()),
            Arg::Index(n as u64),
        ];
        self.each(p, "sgd_ire_step", n, &args)
    }

    fn sgd_momentum_ire_step<T: Scalar>(
        &self,
        theta: &mut CudaBuffer<T>,
        grad: &CudaBuffer<T>,
        momentum: &mut CudaBuffer<T>,
        s: &SgdScalars<T>,
        mask: &CudaBuffer<u8>,
        kappa: T,
    ) -> Result<()> {
        same_len("sgd_momentum_ire_step: grad", theta.len, grad.len)?;
        same_len("sgd_momentum_ire_step: momentum", theta.len, momentum.len)?;
        same_len("sgd_momentum_ire_step: mask", theta.len, mask.len)?;
        let (p, e) = program_of::<T>()?;
        let n = theta.len;
        if n == 0 {
            return Ok(());
        }
        let mut args = vec![theta.arg(e)?, grad.arg(e)?, momentum.arg(e)?];
        args.extend(momentum_scalars(s));
        args.push(mask.arg(Elem::U8)?);
        args.push(Arg::Real(kappa.as_f64()));
        args.push(Arg::Index(n as u64));
        self.each(p, "sgd_momentum_ire_step", n, &args)
    }

    fn adamw_ire_step<T: Scalar>(
        &self,
        theta: &mut CudaBuffer<T>,
        grad: &CudaBuffer<T>,
        m: &mut CudaBuffer<T>,
        v: &mut CudaBuffer<T>,
        s: &AdamWScalars<T>,
        mask: &CudaBuffer<u8>,
        kappa: T,
    ) -> Result<()> {
        same_len("adamw_ire_step: grad", theta.len, grad.len)?;
        same_len("adamw_ire_step: m", theta.len, m.len)?;
        same_len("adamw_ire_step: v", theta.len, v.len)?;
        same_len("adamw_ire_step: mask", theta.len, mask.len)?;
        let (p, e) = program_of::<T>()?;
        let n = theta.len;
        if n == 0 {
            return Ok(());
        }
        let mut args = vec![theta.arg(e)?, grad.arg(e)?, m.arg(e)?, v.arg(e)?];
        args.extend(adamw_scalars(s));
        args.push(mask.arg(Elem::U8)?);
        args.push(Arg::Real(kappa.as_f64()));
        args.push(Arg::Index(n as u64));
        self.each(p, "adamw_ire_step", n, &args)
    }
}

impl CudaBackend {
    /// The three EMA kernels: `(h, inputs..., beta, 1 − beta, n)`, `1 − beta` rounded in `T`
    /// on the host as the reference does.
    fn ema<T: Scalar>(
        &self,
        h: &mut CudaBuffer<T>,
        inputs: &[&CudaBuffer<T>],
        beta: T,
        kernel: &'static str,
    ) -> Result<()> {
        let (p, e) = program_of::<T>()?;
        let n = h.len;
        if n == 0 {
            return Ok(());
        }
        let c = T::one() - beta;
        let mut args = vec![h.arg(e)?];
        for x in inputs {
            args.push(x.arg(e)?);
        }
        args.push(Arg::Real(beta.as_f64()));
        args.push(Arg::Real(c.as_f64()));
        args.push(Arg::Index(n as u64));
        self.each(p, kernel, n, &args)
    }
}

/// `lr, wd, mu, dc, flags` of the momentum kernels (flags: bit 0 first step, bit 1 Nesterov).
fn momentum_scalars<T: Scalar>(s: &SgdScalars<T>) -> [Arg<'static>; 5] {
    let flags = u32::from(s.first_step) | (u32::from(s.nesterov) << 1);
    [
        Arg::Real(s.lr.as_f64()),
        Arg::Real(s.weight_decay.as_f64()),
        Arg::Real(s.momentum.as_f64()),
        Arg::Real(s.dampening_complement.as_f64()),
        Arg::U32(flags),
    ]
}

/// `decay, b1, 1−b1, b2, 1−b2, step_size, sqrt(1−b2^t), eps` of the AdamW kernels.
fn adamw_scalars<T: Scalar>(s: &AdamWScalars<T>) -> [Arg<'static>; 8] {
    [
        Arg::Real(s.decay.as_f64()),
        Arg::Real(s.beta1.as_f64()),
        Arg::Real(s.one_minus_beta1.as_f64()),
        Arg::Real(s.beta2.as_f64()),
        Arg::Real(s.one_minus_beta2.as_f64()),
        Arg::Real(s.step_size.as_f64()),
        Arg::Real(s.bias_correction2_sqrt.as_f64()),
        Arg::Real(s.eps.as_f64()),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn keys_convert_back_to_the_exact_value() {
        let xs32 = [
            -f32::INFINITY,
            -3.5,
            -0.0,
            0.0,
            1e-45,
            0.25,
            f32::MAX,
            f32::INFINITY,
        ];
        for x in xs32 {
            let back: f32 = value_of_key(u64::from(x.order_key()), DType::F32);
            assert_eq!(back.to_bits(), x.to_bits(), "{x}");
        }
        let xs64 = [
            -f64::INFINITY,
            -1e300,
            -0.0,
            0.0,
            5e-324,
            2.0,
            f64::INFINITY,
        ];
        for x in xs64 {
            let back: f64 = value_of_key(x.order_key(), DType::F64);
            assert_eq!(back.to_bits(), x.to_bits(), "{x}");
        }
    }

    #[test]
    fn pick_bin_walks_down_from_the_largest_byte() {
        let mut c = [0u64; 256];
        c[255] = 2;
        c[7] = 3;
        c[0] = 1;
        assert_eq!(pick_bin(&c, 1), Some((255, 1)));
        assert_eq!(pick_bin(&c, 2), Some((255, 2)));
        assert_eq!(pick_bin(&c, 3), Some((7, 1)));
        assert_eq!(pick_bin(&c, 5), Some((7, 3)));
        assert_eq!(pick_bin(&c, 6), Some((0, 1)));
        assert_eq!(pick_bin(&c, 7), None);
    }

    #[test]
    fn launch_shapes() {
        assert_eq!(elementwise_blocks(1).unwrap(), 1);
        assert_eq!(elementwise_blocks(256).unwrap(), 1);
        assert_eq!(elementwise_blocks(257).unwrap(), 2);
        assert!(elementwise_blocks(usize::MAX).is_err());
        assert_eq!(reduce_blocks(1), 1);
        assert_eq!(reduce_blocks(513), 3);
        assert_eq!(reduce_blocks(1 << 30), MAX_REDUCE_BLOCKS);
    }

    #[test]
    fn arguments_are_checked_against_the_source() {
        let mem = Mem::Host(std::sync::Mutex::new(vec![0; 16]));
        let x = Arg::Buf(&mem, 0, Elem::F32);
        let ok = [x, Arg::Real(1.0), x, Arg::Index(4)];
        assert!(check_args(DType::F32, "axpy", &ok).is_ok());
        // The f64 program wants f64 pointers.
        assert!(check_args(DType::F64, "axpy", &ok).is_err());
        // Swapped scalar and pointer, a missing argument, a mask where T* is declared.
        assert!(check_args(DType::F32, "axpy", &[Arg::Real(1.0), x, x, Arg::Index(4)]).is_err());
        assert!(check_args(DType::F32, "axpy", &ok[..3]).is_err());
        let m = Arg::Buf(&mem, 0, Elem::U8);
        assert!(check_args(DType::F32, "axpy", &[x, Arg::Real(1.0), m, Arg::Index(4)]).is_err());
        // KEY is 32-bit in the f32 program.
        let h = Arg::Buf(&mem, 0, Elem::U32);
        let sel = |key: u64| {
            [
                x,
                Arg::Index(4),
                Arg::U32(24),
                Arg::Key(key),
                Arg::Key(0),
                h,
            ]
        };
        assert!(check_args(DType::F32, "select_histogram", &sel(0xFF00_0000)).is_ok());
        assert!(check_args(DType::F32, "select_histogram", &sel(1 << 40)).is_err());
        assert!(check_args(DType::F32, "nope", &[]).is_err());
    }

    #[test]
    fn only_plain_element_types_are_viewed_as_bytes() {
        assert_eq!(bytes_of(&[1.0f32]).unwrap(), 1.0f32.to_ne_bytes());
        assert_eq!(bytes_of(&[2u8, 3]).unwrap(), [2, 3]);
        let mut v = [0.0f64; 1];
        bytes_of_mut(&mut v)
            .unwrap()
            .copy_from_slice(&1.5f64.to_ne_bytes());
        assert_eq!(v[0], 1.5);
    }

    #[test]
    fn an_absent_driver_is_an_error_not_a_panic() {
        match CudaBackend::new(0) {
            Ok(b) => assert_eq!(b.name(), "cuda"),
            Err(Error::Unavailable { backend, reason }) => {
                assert_eq!(backend, "cuda");
                assert!(!reason.is_empty());
            }
            Err(other) => panic!("expected Unavailable, got {other:?}"),
        }
        // An ordinal no machine has.
        assert!(matches!(
            CudaBackend::new(1 << 20),
            Err(Error::Unavailable { .. })
        ));
    }

    /// The PTX parameter types of entry `name` (`.param .u64 name_param_0`, ...).
    fn ptx_params(ptx: &str, name: &str) -> Vec<String> {
        let start = ptx
            .find(&format!(".entry {name}("))
            .unwrap_or_else(|| panic!("no .entry {name} in the PTX"));
        let body = &ptx[start..];
        let end = body.find(')').unwrap();
        body[..end]
            .lines()
            .filter_map(|l| l.trim().strip_prefix(".param ."))
            .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
            .collect()
    }

    /// What `Driver::launch` pushes for each parameter (kind and width, in order) is what the
    /// compiled kernel expects, for every kernel of both programs.
    #[test]
    fn launch_widths_match_the_ptx_parameters() {
        if let Err(e) = crate::nvrtc_version() {
            assert!(!crate::required("nvrtc"), "IRE_REQUIRE names nvrtc: {e}");
            println!("skipped launch_widths_match_the_ptx_parameters: {e}");
            return;
        }
        let mem = Mem::Host(std::sync::Mutex::new(vec![0; 8]));
        for program in [DType::F32, DType::F64] {
            let real = if program == DType::F64 {
                Elem::F64
            } else {
                Elem::F32
            };
            let ptx = crate::compile_ptx(program, Some("sm_90")).unwrap();
            for sig in crate::signature::signatures().unwrap() {
                // A launch of this kernel as the backend builds it.
                let args: Vec<Arg<'_>> = sig
                    .params
                    .iter()
                    .map(|p| match p {
                        Param::Ptr { elem, .. } => Arg::Buf(
                            &mem,
                            0,
                            match elem {
                                PtrElem::Real => real,
                                PtrElem::U8 => Elem::U8,
                                PtrElem::U32 => Elem::U32,
                            },
                        ),
                        Param::Real => Arg::Real(0.5),
                        Param::U8 => Arg::U8(1),
                        Param::U32 => Arg::U32(2),
                        Param::Index => Arg::Index(3),
                        Param::Key => Arg::Key(4),
                    })
                    .collect();
                check_args(program, sig.name, &args).unwrap();
                let pushed: Vec<&str> = args
                    .iter()
                    .map(|a| Slot::of(program, a).ptx_type())
                    .collect();
                assert_eq!(
                    pushed,
                    ptx_params(&ptx, sig.name),
                    "{} in the {program:?} program",
                    sig.name
                );
            }
        }
    }
}

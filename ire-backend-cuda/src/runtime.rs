//! [`Cuda`]: the [`Runtime`] of one CUDA device — a context, one stream (its own or a caller's),
//! programs compiled by NVRTC, memory (its own or a caller's), and cuBLAS for matrix products.

use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{CudaBlas, sys as blas_sys};
use cudarc::driver::result as dr;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use ire_core::device::{
    DeviceBackend, DeviceClass, GemmOperand, GemmShape, KernelArg, Launch, ProgramSource, Runtime,
};
use ire_core::kernels::{Dialect, REDUCE_WG};
use ire_core::{DType, Error, Result};

use crate::driver::{self, BACKEND, DeviceInfo, driver_error, unavailable};
use crate::nvrtc::{self, Compiled};

/// The CUDA backend: every IRE operation on one CUDA device.
pub type CudaBackend = DeviceBackend<Cuda>;

/// A CUDA buffer.
pub type CudaBuffer<E> = ire_core::DeviceBuffer<Cuda, E>;

/// Environment variable: the device ordinal [`Cuda::from_env`] opens (default 0).
pub const ENV_DEVICE: &str = "IRE_CUDA_DEVICE";
/// Environment variable: compile for this architecture (`sm_90`, `compute_80`) instead of
/// the one chosen from the device's compute capability.
pub const ENV_ARCH: &str = "IRE_CUDA_ARCH";

fn internal(message: impl Into<String>) -> Error {
    Error::Device {
        backend: BACKEND.into(),
        message: message.into(),
    }
}

/// Device memory: an allocation the runtime owns, or a caller's memory (never freed here).
#[derive(Debug)]
pub struct CudaMem {
    ptr: CUdeviceptr,
    bytes: usize,
    /// The allocation when the runtime owns it (freed on its stream when dropped).
    _owner: Option<CudaSlice<u8>>,
}

impl CudaMem {
    /// `bytes` bytes of a caller's device memory at `ptr`, used in place (a framework's tensor).
    ///
    /// # Safety
    /// `ptr` addresses at least `bytes` bytes of device memory in the context of the [`Cuda`]
    /// runtime it is used with, which stay allocated, and which no other work touches while
    /// operations of the backend on it are queued unless that work is ordered with the
    /// runtime's stream (e.g. the runtime runs on the caller's own stream,
    /// [`Cuda::on_stream`]).
    pub unsafe fn borrow(ptr: CUdeviceptr, bytes: usize) -> Self {
        CudaMem {
            ptr,
            bytes,
            _owner: None,
        }
    }

    /// The device address.
    pub fn device_ptr(&self) -> CUdeviceptr {
        self.ptr
    }
}

/// A loaded program and its functions.
pub struct CudaProgram {
    _module: Arc<CudaModule>,
    functions: Vec<CudaFunction>,
}

/// One CUDA device: its context, the stream every operation runs on, and the compile target.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    target: String,
    /// `None` when cuBLAS is absent or fails to start: the portable GEMM kernel runs instead.
    blas: OnceLock<Option<CudaBlas>>,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("device", &self.info.to_string())
            .field("target", &self.target)
            .finish()
    }
}

/// The compile target of device `info`: [`ENV_ARCH`] when set, else chosen from its compute
/// capability and what NVRTC supports.
fn target_for(info: &DeviceInfo) -> Result<String> {
    nvrtc::nvrtc_version()?;
    match std::env::var(ENV_ARCH) {
        Ok(a) if !a.trim().is_empty() => Ok(a.trim().to_owned()),
        _ => nvrtc::choose_target(info.compute_capability, &nvrtc::supported_archs()?),
    }
}

impl Cuda {
    /// Opens device `ordinal` (its primary context, which PyTorch and most frameworks share)
    /// with a stream of its own. [`Error::Unavailable`] when the driver, the device or NVRTC
    /// is missing; never panics.
    pub fn open(ordinal: usize) -> Result<Self> {
        let ctx = Self::context(ordinal)?;
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_error("cuStreamCreate", e))?;
        Self::with(ctx, stream, ordinal)
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
        Self::open(ordinal)
    }

    /// Runs on a caller's stream of device `ordinal`'s primary context, so that the backend's
    /// kernels queue behind the caller's own work with no synchronization added.
    ///
    /// # Safety
    /// `stream` is a valid stream of that context (e.g. PyTorch's current stream), kept alive
    /// by its owner while the runtime exists.
    pub unsafe fn on_stream(ordinal: usize, stream: cudarc::driver::sys::CUstream) -> Result<Self> {
        let ctx = Self::context(ordinal)?;
        // SAFETY: the caller's contract.
        let stream = unsafe { ctx.wrap_borrowed_stream(stream) };
        Self::with(ctx, stream, ordinal)
    }

    fn context(ordinal: usize) -> Result<Arc<CudaContext>> {
        let count = driver::device_count()?;
        if count == 0 {
            return Err(unavailable("the CUDA driver reports no GPU"));
        }
        if ordinal >= count {
            return Err(unavailable(format!(
                "there is no CUDA device {ordinal}: the driver reports {count}"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("cannot open CUDA device {ordinal}: {e:?}")))?;
        // SAFETY: all work of the runtime goes to its one stream, in order, so buffers need no
        // cross-stream event tracking; this affects only buffers created from now on.
        unsafe { ctx.disable_event_tracking() };
        Ok(ctx)
    }

    fn with(ctx: Arc<CudaContext>, stream: Arc<CudaStream>, ordinal: usize) -> Result<Self> {
        let info = driver::device_info(ordinal)?;
        let target = target_for(&info)?;
        Ok(Cuda {
            ctx,
            stream,
            info,
            target,
            blas: OnceLock::new(),
        })
    }

    /// The device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The architecture kernels are compiled for (`sm_90`; `compute_XY` means PTX compiled to
    /// device code by the driver).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The driver context.
    pub fn cuda_context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every operation runs on. Work of other crates on the backend's buffers must
    /// be ordered with it.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))
    }

    fn blas(&self) -> Option<&CudaBlas> {
        self.blas
            .get_or_init(|| {
                // SAFETY: only probes whether the shared library can be loaded.
                if !unsafe { blas_sys::is_culib_present() } {
                    return None;
                }
                CudaBlas::new(Arc::clone(&self.stream)).ok()
            })
            .as_ref()
    }
}

/// NVRTC output is shared by every runtime of the process (compiling a large program takes
/// seconds; tests open many backends), keyed by program, dtype and target.
fn compile_cached(
    name: &'static str,
    dtype: DType,
    source: &str,
    target: &str,
) -> Result<Arc<Compiled>> {
    type Entry = ((&'static str, DType, String), Arc<Compiled>);
    static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
    let key = (name, dtype, target.to_owned());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(Arc::clone(c));
    }
    let compiled = Arc::new(nvrtc::compile_source(source, Some(target))?);
    cache.push((key, Arc::clone(&compiled)));
    Ok(compiled)
}

impl Runtime for Cuda {
    type Mem = CudaMem;
    type Program = CudaProgram;

    const NAME: &'static str = BACKEND;

    fn dialect(&self) -> Dialect {
        Dialect::Cuda
    }

    fn supports(&self, _: DType) -> bool {
        true
    }

    fn class(&self) -> DeviceClass {
        DeviceClass::Gpu
    }

    fn bytes(mem: &CudaMem) -> usize {
        mem.bytes
    }

    fn alloc(&self, bytes: usize) -> Result<CudaMem> {
        self.bind()?;
        // SAFETY: uninitialised device memory is never read before it is written (the
        // contract of `Runtime::alloc`).
        let slice = unsafe { self.stream.alloc::<u8>(bytes) }
            .map_err(|e| driver_error(&format!("allocating {bytes} bytes"), e))?;
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(&self.stream);
            ptr
        };
        Ok(CudaMem {
            ptr,
            bytes,
            _owner: Some(slice),
        })
    }

    fn write(&self, dst: &mut CudaMem, offset: usize, src: &[u8]) -> Result<()> {
        check_range("write", dst, offset, src.len())?;
        self.bind()?;
        // SAFETY: the range is inside `dst`; a copy from pageable host memory returns once the
        // source has been staged, so `src` may be reused when this returns.
        unsafe { dr::memcpy_htod_async(dst.ptr + offset as u64, src, self.stream.cu_stream()) }
            .map_err(|e| driver_error("cuMemcpyHtoDAsync", e))
    }

    fn read(&self, src: &CudaMem, offset: usize, dst: &mut [u8]) -> Result<()> {
        check_range("read", src, offset, dst.len())?;
        self.bind()?;
        // SAFETY: the range is inside `src`; `dst` stays borrowed until the synchronize below.
        unsafe { dr::memcpy_dtoh_async(dst, src.ptr + offset as u64, self.stream.cu_stream()) }
            .map_err(|e| driver_error("cuMemcpyDtoHAsync", e))?;
        self.synchronize()
    }

    fn copy(&self, src: &CudaMem, dst: &mut CudaMem, bytes: usize) -> Result<()> {
        check_range("copy from", src, 0, bytes)?;
        check_range("copy to", dst, 0, bytes)?;
        self.bind()?;
        // SAFETY: both ranges are inside their allocations.
        unsafe { dr::memcpy_dtod_async(dst.ptr, src.ptr, bytes, self.stream.cu_stream()) }
            .map_err(|e| driver_error("cuMemcpyDtoDAsync", e))
    }

    fn zero(&self, dst: &mut CudaMem, bytes: usize) -> Result<()> {
        check_range("zero", dst, 0, bytes)?;
        self.bind()?;
        // SAFETY: the range is inside the allocation.
        unsafe { dr::memset_d8_async(dst.ptr, 0, bytes, self.stream.cu_stream()) }
            .map_err(|e| driver_error("cuMemsetD8Async", e))
    }

    fn build(&self, p: &ProgramSource<'_>) -> Result<CudaProgram> {
        let (name, dtype, kernels) = (p.name, p.dtype, p.kernels);
        let compiled = compile_cached(name, dtype, p.text, &self.target)?;
        let what = format!("the {name} {} kernels for {}", dtype.name(), self.target);
        let from_ptx = || self.ctx.load_module(Ptx::from_src(compiled.ptx.clone()));
        let module = match &compiled.cubin {
            // Device code a driver refuses (from an NVRTC newer than it): try the PTX.
            Some(cubin) => self
                .ctx
                .load_module(Ptx::from_binary(cubin.clone()))
                .or_else(|_| from_ptx()),
            None => from_ptx(),
        }
        .map_err(|e| {
            driver_error(
                &format!("loading {what} (PTX needs a driver at least as new as NVRTC)"),
                e,
            )
        })?;
        let mut functions = Vec::with_capacity(kernels.len());
        for &k in kernels {
            let f = module
                .load_function(k)
                .map_err(|e| driver_error(&format!("kernel {k} of {name}"), e))?;
            functions.push(f);
        }
        Ok(CudaProgram {
            _module: module,
            functions,
        })
    }

    fn launch(&self, program: &CudaProgram, l: &Launch<'_, '_, CudaMem>) -> Result<()> {
        let (kernel, dtype, groups, args) = (l.kernel, l.dtype, l.groups, l.args);
        let f = program
            .functions
            .get(l.index)
            .ok_or_else(|| internal(format!("kernel {kernel} was not loaded")))?;
        let grid = u32::try_from(groups)
            .ok()
            .filter(|&g| g <= i32::MAX as u32)
            .ok_or_else(|| Error::Unsupported {
                backend: BACKEND.into(),
                what: format!("a launch of {groups} blocks"),
            })?;
        // Every value is stored first and pushed by reference: the builder keeps pointers to
        // them until the launch, so the vectors must not grow in between.
        let n = args.len();
        let (mut u64s, mut f32s, mut f64s) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut u32s, mut u8s) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut slots = Vec::with_capacity(n);
        for a in args {
            let slot = slot_of(a, dtype);
            let value = match a {
                // An empty buffer holds no memory; its kernels never dereference it.
                KernelArg::In(m, _) | KernelArg::Out(m, _) => m.map_or(0, |m| m.ptr),
                KernelArg::Index(x) => *x as u64,
                KernelArg::Key(x) => *x,
                KernelArg::U32(x) => u64::from(*x),
                KernelArg::U8(x) => u64::from(*x),
                KernelArg::Real(_) => 0,
            };
            let index = match (slot, a) {
                (Slot::F64, KernelArg::Real(x)) => {
                    f64s.push(*x);
                    f64s.len() - 1
                }
                (Slot::F32, KernelArg::Real(x)) => {
                    f32s.push(*x as f32);
                    f32s.len() - 1
                }
                // The signature check has verified that a key fits the program's width.
                (Slot::U32, _) => {
                    u32s.push(value as u32);
                    u32s.len() - 1
                }
                (Slot::U8, _) => {
                    u8s.push(value as u8);
                    u8s.len() - 1
                }
                _ => {
                    u64s.push(value);
                    u64s.len() - 1
                }
            };
            slots.push((slot, index));
        }
        self.bind()?;
        let mut builder = self.stream.launch_builder(f);
        for &(slot, i) in &slots {
            match slot {
                Slot::U64 => builder.arg(&u64s[i]),
                Slot::F32 => builder.arg(&f32s[i]),
                Slot::F64 => builder.arg(&f64s[i]),
                Slot::U32 => builder.arg(&u32s[i]),
                Slot::U8 => builder.arg(&u8s[i]),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (REDUCE_WG as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's parameter list in the source (checked by the
        // device layer: kinds, order, element types, widths); every buffer holds the elements
        // the launch covers (lengths are checked by the operations); the stored values outlive
        // the launch call.
        unsafe { builder.launch(cfg) }.map_err(|e| driver_error(kernel, e))?;
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_error("cuStreamSynchronize", e))
    }

    fn gemm(
        &self,
        dtype: DType,
        g: GemmShape,
        alpha: f64,
        a: GemmOperand<'_, CudaMem>,
        b: GemmOperand<'_, CudaMem>,
        beta: f64,
        c: (&mut CudaMem, usize),
    ) -> Result<bool> {
        if g.m == 0 || g.n == 0 {
            return Ok(true);
        }
        let Some(blas) = self.blas() else {
            return Ok(false);
        };
        if [g.m, g.n, g.k].iter().any(|&d| i32::try_from(d).is_err()) {
            return Ok(false);
        }
        let (m, n, k) = (g.m as i32, g.n as i32, g.k as i32);
        let size = dtype.size() as u64;
        let (pa, pb, pc) = (
            a.0.ptr + a.1 as u64 * size,
            b.0.ptr + b.1 as u64 * size,
            c.0.ptr + c.1 as u64 * size,
        );
        // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: B first, m and n
        // exchanged, each operand's transpose flag kept.
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let ldb = if g.trans_b { k } else { n };
        let lda = if g.trans_a { m } else { k };
        self.bind()?;
        let status = match dtype {
            DType::F64 => {
                // SAFETY: the device layer checked every operand's extent; alpha and beta are
                // host values (the default pointer mode) living across the call.
                unsafe {
                    cudarc::cublas::result::dgemm(
                        *blas.handle(),
                        op(g.trans_b),
                        op(g.trans_a),
                        n,
                        m,
                        k,
                        &alpha,
                        pb as *const f64,
                        ldb,
                        pa as *const f64,
                        lda,
                        &beta,
                        pc as *mut f64,
                        n,
                    )
                }
            }
            _ => {
                let (al, be) = (alpha as f32, beta as f32);
                // SAFETY: as above, for f32.
                unsafe {
                    cudarc::cublas::result::sgemm(
                        *blas.handle(),
                        op(g.trans_b),
                        op(g.trans_a),
                        n,
                        m,
                        k,
                        &al,
                        pb as *const f32,
                        ldb,
                        pa as *const f32,
                        lda,
                        &be,
                        pc as *mut f32,
                        n,
                    )
                }
            }
        };
        status.map_err(|e| internal(format!("cuBLAS gemm {m}×{n}×{k}: {e:?}")))?;
        Ok(true)
    }
}

/// How a launch passes one argument to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    U64,
    F32,
    F64,
    U32,
    U8,
}

fn slot_of<M>(a: &KernelArg<'_, M>, dtype: DType) -> Slot {
    let f64_program = dtype == DType::F64;
    match a {
        KernelArg::In(..) | KernelArg::Out(..) | KernelArg::Index(_) => Slot::U64,
        KernelArg::Real(_) if f64_program => Slot::F64,
        KernelArg::Real(_) => Slot::F32,
        KernelArg::Key(_) if f64_program => Slot::U64,
        KernelArg::Key(_) | KernelArg::U32(_) => Slot::U32,
        KernelArg::U8(_) => Slot::U8,
    }
}

/// The PTX parameter type (`u64`, `f32`, `f64`, `u32`, `u8`) as which [`Cuda`]'s launches pass
/// `arg` in a program of `dtype`: tests compare it with the `.param` list NVRTC produces.
pub fn ptx_param_type<M>(arg: &KernelArg<'_, M>, dtype: DType) -> &'static str {
    match slot_of(arg, dtype) {
        Slot::U64 => "u64",
        Slot::F32 => "f32",
        Slot::F64 => "f64",
        Slot::U32 => "u32",
        Slot::U8 => "u8",
    }
}

fn check_range(what: &str, mem: &CudaMem, offset: usize, len: usize) -> Result<()> {
    if offset.checked_add(len).is_some_and(|end| end <= mem.bytes) {
        Ok(())
    } else {
        Err(internal(format!(
            "{what}: bytes {offset}..{} outside an allocation of {}",
            offset.saturating_add(len),
            mem.bytes
        )))
    }
}

//! [`OpenCl`]: the [`Runtime`] of one OpenCL device — its context, one in-order queue, programs
//! built from the portable kernel source, and memory objects (its own or a caller's).

use std::ffi::CString;
use std::sync::Mutex;

use ire_core::device::{DeviceBackend, DeviceClass, KernelArg, Launch, ProgramSource, Runtime};
use ire_core::kernels::{Dialect, OPENCL_BUILD_OPTIONS, REDUCE_WG};
use ire_core::{DType, Error, Result};
use ocl::core::{
    self, ArgVal, CommandQueue, Context, ContextProperties, DeviceId, Kernel, Mem, MemFlags,
    MemInfo, MemInfoResult,
};

use crate::discovery::{self, BACKEND, DEVICE_ENV, DeviceInfo, DeviceKind};

/// The OpenCL backend: every IRE operation on one OpenCL device.
pub type OpenClBackend = DeviceBackend<OpenCl>;

/// Wraps a device-side failure.
fn dev_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Device {
        backend: BACKEND.into(),
        message: format!("{what}: {e}"),
    }
}

/// An OpenCL memory object and its size: the runtime's own allocation, or a caller's buffer
/// (retained while held, so it cannot be freed under the backend).
#[derive(Debug)]
pub struct ClMem {
    mem: Mem,
    bytes: usize,
}

impl ClMem {
    /// Wraps a caller's memory object (retained until dropped; no copy). Its size is read from
    /// the object.
    pub fn borrow(mem: &Mem) -> Result<Self> {
        let bytes = match core::get_mem_object_info(mem, MemInfo::Size)
            .map_err(|e| dev_err("reading the size of a memory object", e))?
        {
            MemInfoResult::Size(n) => n,
            other => return Err(dev_err("reading the size of a memory object", other)),
        };
        Ok(ClMem {
            mem: mem.clone(),
            bytes,
        })
    }

    /// The memory object, for callers that enqueue their own commands on it.
    pub fn mem(&self) -> &Mem {
        &self.mem
    }
}

/// A program built for one dtype, with each kernel created once. `clSetKernelArg` and the
/// enqueue of a shared kernel must not interleave between threads: one lock per kernel.
pub struct ClProgram {
    _program: core::Program,
    kernels: Vec<Mutex<Kernel>>,
}

/// One opened OpenCL device: context, queue, and what discovery reported about it.
pub struct OpenCl {
    info: DeviceInfo,
    context: Context,
    queue: CommandQueue,
    device: DeviceId,
}

impl std::fmt::Debug for OpenCl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenCl")
            .field("device", &self.info.to_string())
            .finish()
    }
}

impl OpenCl {
    /// Opens the device `selector` names: `P:D`, an index into [`crate::probe`]'s list, a name
    /// substring, or `auto`/empty (the first GPU, else accelerator, else any device).
    /// `Err(Error::Unavailable)` with the reason when there is no OpenCL or no such device.
    pub fn open(selector: &str) -> Result<Self> {
        // PoCL initialises its device lazily and not thread-safely: serialise opening.
        static OPENING: Mutex<()> = Mutex::new(());
        let _guard = OPENING.lock().unwrap_or_else(|e| e.into_inner());
        let found = discovery::find(selector)?;
        let info = found.info;
        if info.max_work_group_size < REDUCE_WG {
            return Err(Error::Unavailable {
                backend: BACKEND.into(),
                reason: format!(
                    "device {} allows work-groups of {} items; the kernels need {REDUCE_WG}",
                    info.name, info.max_work_group_size
                ),
            });
        }
        // SAFETY: both ids come from the loader's own lists.
        let (platform, device) = unsafe {
            (
                core::PlatformId::from_raw(found.platform),
                DeviceId::from_raw(found.device),
            )
        };
        let props = ContextProperties::new().platform(platform);
        let context = core::create_context(Some(&props), &[device], None, None)
            .map_err(|e| dev_err("creating the context", e))?;
        let queue = core::create_command_queue(&context, device, None)
            .map_err(|e| dev_err("creating the queue", e))?;
        Ok(OpenCl {
            info,
            context,
            queue,
            device,
        })
    }

    /// Opens the device named by `IRE_OPENCL_DEVICE` (see [`OpenCl::open`]).
    pub fn from_env() -> Result<Self> {
        Self::open(&std::env::var(DEVICE_ENV).unwrap_or_default())
    }

    /// Runs on a caller's command queue (and its context and device), so that the backend's
    /// work is ordered with the caller's own commands on it, with no synchronization added.
    /// The queue must be in-order. `info` describes the device (see [`crate::probe`]).
    pub fn on_queue(queue: &CommandQueue, info: DeviceInfo) -> Result<Self> {
        let context = match core::get_command_queue_info(queue, core::CommandQueueInfo::Context)
            .map_err(|e| dev_err("reading the queue's context", e))?
        {
            core::CommandQueueInfoResult::Context(c) => c,
            other => return Err(dev_err("reading the queue's context", other)),
        };
        let device = match core::get_command_queue_info(queue, core::CommandQueueInfo::Device)
            .map_err(|e| dev_err("reading the queue's device", e))?
        {
            core::CommandQueueInfoResult::Device(d) => d,
            other => return Err(dev_err("reading the queue's device", other)),
        };
        Ok(OpenCl {
            info,
            context,
            queue: queue.clone(),
            device,
        })
    }

    /// The device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The context, for callers that create their own memory objects on it.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The queue every operation runs on, in order.
    pub fn queue(&self) -> &CommandQueue {
        &self.queue
    }
}

impl Runtime for OpenCl {
    type Mem = ClMem;
    type Program = ClProgram;

    const NAME: &'static str = BACKEND;

    fn class(&self) -> DeviceClass {
        match self.info.kind {
            DeviceKind::Cpu => DeviceClass::Cpu,
            DeviceKind::Gpu => DeviceClass::Gpu,
            _ => DeviceClass::Accelerator,
        }
    }

    fn dialect(&self) -> Dialect {
        Dialect::OpenCl
    }

    fn supports(&self, dtype: DType) -> bool {
        dtype != DType::F64 || self.info.fp64
    }

    fn bytes(mem: &ClMem) -> usize {
        mem.bytes
    }

    fn alloc(&self, bytes: usize) -> Result<ClMem> {
        // SAFETY: no host pointer is passed; the flags ask for plain device memory.
        let mem = unsafe {
            core::create_buffer::<_, u8>(&self.context, MemFlags::new().read_write(), bytes, None)
        }
        .map_err(|e| dev_err(&format!("allocating {bytes} bytes"), e))?;
        Ok(ClMem { mem, bytes })
    }

    fn write(&self, dst: &mut ClMem, offset: usize, src: &[u8]) -> Result<()> {
        // SAFETY: blocking write: `src` outlives the command.
        unsafe {
            core::enqueue_write_buffer(
                &self.queue,
                &dst.mem,
                true,
                offset,
                src,
                None::<()>,
                None::<()>,
            )
        }
        .map_err(|e| dev_err("writing a buffer", e))
    }

    fn read(&self, src: &ClMem, offset: usize, dst: &mut [u8]) -> Result<()> {
        // SAFETY: blocking read: `dst` outlives the command.
        unsafe {
            core::enqueue_read_buffer(
                &self.queue,
                &src.mem,
                true,
                offset,
                dst,
                None::<()>,
                None::<()>,
            )
        }
        .map_err(|e| dev_err("reading a buffer", e))
    }

    fn copy(&self, src: &ClMem, dst: &mut ClMem, bytes: usize) -> Result<()> {
        core::enqueue_copy_buffer::<u8, _, _, _>(
            &self.queue,
            &src.mem,
            &dst.mem,
            0,
            0,
            bytes,
            None::<()>,
            None::<()>,
        )
        .map_err(|e| dev_err("copying a buffer", e))
    }

    fn zero(&self, dst: &mut ClMem, bytes: usize) -> Result<()> {
        core::enqueue_fill_buffer(
            &self.queue,
            &dst.mem,
            0u8,
            0,
            bytes,
            None::<()>,
            None::<()>,
            None,
        )
        .map_err(|e| dev_err("zeroing a buffer", e))
    }

    fn build(&self, p: &ProgramSource<'_>) -> Result<ClProgram> {
        let (name, dtype, kernels) = (p.name, p.dtype, p.kernels);
        let src = CString::new(p.text).map_err(|e| dev_err("kernel source", e))?;
        let opts = CString::new(OPENCL_BUILD_OPTIONS).map_err(|e| dev_err("build options", e))?;
        let program =
            core::create_build_program(&self.context, &[src], Some(&[self.device]), &opts)
                .map_err(|e| {
                    dev_err(&format!("building the {name} {} program", dtype.name()), e)
                })?;
        let mut table = Vec::with_capacity(kernels.len());
        for &k in kernels {
            let kernel = core::create_kernel(&program, k)
                .map_err(|e| dev_err(&format!("creating kernel {k} of {name}"), e))?;
            table.push(Mutex::new(kernel));
        }
        Ok(ClProgram {
            _program: program,
            kernels: table,
        })
    }

    fn launch(&self, program: &ClProgram, l: &Launch<'_, '_, ClMem>) -> Result<()> {
        let (kernel, dtype, groups, args) = (l.kernel, l.dtype, l.groups, l.args);
        let k = program
            .kernels
            .get(l.index)
            .ok_or_else(|| dev_err(kernel, "no such kernel in the program"))?
            .lock()
            .map_err(|_| dev_err(kernel, "kernel lock poisoned"))?;
        let f64_program = dtype == DType::F64;
        for (i, a) in args.iter().enumerate() {
            let (f, d, w, q, b);
            let val = match a {
                KernelArg::In(m, _) | KernelArg::Out(m, _) => match m {
                    Some(m) => ArgVal::mem(&m.mem),
                    None => ArgVal::mem_null(),
                },
                KernelArg::Real(x) if f64_program => {
                    d = *x;
                    ArgVal::scalar(&d)
                }
                KernelArg::Real(x) => {
                    f = *x as f32;
                    ArgVal::scalar(&f)
                }
                KernelArg::U8(x) => {
                    b = *x;
                    ArgVal::scalar(&b)
                }
                KernelArg::U32(x) => {
                    w = *x;
                    ArgVal::scalar(&w)
                }
                KernelArg::Index(x) => {
                    q = *x as u64;
                    ArgVal::scalar(&q)
                }
                // The signature check has verified that the key fits the program's width.
                KernelArg::Key(x) if f64_program => {
                    q = *x;
                    ArgVal::scalar(&q)
                }
                KernelArg::Key(x) => {
                    w = *x as u32;
                    ArgVal::scalar(&w)
                }
            };
            core::set_kernel_arg(&k, i as u32, val)
                .map_err(|e| dev_err(&format!("{kernel}: argument {i}"), e))?;
        }
        let gws = [groups * REDUCE_WG, 1, 1];
        // SAFETY: every argument is set and checked against the kernel's parameter list;
        // buffers are retained by the runtime until the kernel completes; every kernel guards
        // its index against its element count.
        unsafe {
            core::enqueue_kernel(
                &self.queue,
                &k,
                1,
                None,
                &gws,
                Some([REDUCE_WG, 1, 1]),
                None::<()>,
                None::<()>,
            )
        }
        .map_err(|e| dev_err(&format!("launching {kernel}"), e))
    }

    fn synchronize(&self) -> Result<()> {
        core::finish(&self.queue).map_err(|e| dev_err("clFinish", e))
    }
}

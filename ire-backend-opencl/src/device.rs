//! Context, queue, compiled programs and kernel launches.

use std::collections::HashMap;
use std::ffi::CString;
use std::fmt::Display;
use std::sync::{Arc, Mutex, OnceLock};

use ire_core::kernels::{self, Dialect, Extension, REDUCE_WG};
use ire_core::{DType, Error};
use ocl::core::{self, ArgVal, CommandQueue, Context, ContextProperties, DeviceId, Kernel, Mem};

use crate::discovery::{DeviceInfo, Found};

pub(crate) const BACKEND: &str = "opencl";

/// Wraps a device-side failure.
pub(crate) fn dev_err(what: &str, e: impl Display) -> Error {
    Error::Device {
        backend: BACKEND.into(),
        message: format!("{what}: {e}"),
    }
}

/// One kernel argument.
pub(crate) enum Arg<'a> {
    Mem(&'a Mem),
    /// No buffer (an empty one: OpenCL has no zero-sized buffers).
    NullMem,
    F32(f32),
    F64(f64),
    U64(u64),
    U32(u32),
    U8(u8),
}

impl Arg<'_> {
    fn val(&self) -> ArgVal<'_> {
        match self {
            Arg::Mem(m) => ArgVal::mem(m),
            Arg::NullMem => ArgVal::mem_null(),
            Arg::F32(x) => ArgVal::scalar(x),
            Arg::F64(x) => ArgVal::scalar(x),
            Arg::U64(x) => ArgVal::scalar(x),
            Arg::U32(x) => ArgVal::scalar(x),
            Arg::U8(x) => ArgVal::scalar(x),
        }
    }
}

/// The portable source compiled for one dtype, with every kernel created once.
pub(crate) struct Program {
    _program: core::Program,
    // `clSetKernelArg` + enqueue on a shared kernel must not interleave between threads.
    kernels: Mutex<HashMap<&'static str, Kernel>>,
}

impl Program {
    fn build(context: &Context, device: DeviceId, dtype: DType) -> Result<Program, Error> {
        let source = kernels::program_source(Dialect::OpenCl, dtype);
        Self::build_source(
            context,
            device,
            dtype,
            "IRE",
            source,
            kernels::kernel_names(),
        )
    }

    /// Builds `source` and creates the kernels `names`; `what` names the program in errors.
    fn build_source(
        context: &Context,
        device: DeviceId,
        dtype: DType,
        what: &str,
        source: String,
        names: impl Iterator<Item = &'static str>,
    ) -> Result<Program, Error> {
        let src = CString::new(source).map_err(|e| dev_err("kernel source", e))?;
        let opts =
            CString::new(kernels::OPENCL_BUILD_OPTIONS).map_err(|e| dev_err("build options", e))?;
        let program = core::create_build_program(context, &[src], Some(&[device]), &opts)
            .map_err(|e| dev_err(&format!("building the {what} {} program", dtype.name()), e))?;
        let mut table = HashMap::new();
        for name in names {
            let k = core::create_kernel(&program, name)
                .map_err(|e| dev_err(&format!("creating kernel {name}"), e))?;
            table.insert(name, k);
        }
        Ok(Program {
            _program: program,
            kernels: Mutex::new(table),
        })
    }

    /// Enqueues `name` over `groups` work-groups of `REDUCE_WG` items.
    pub(crate) fn launch(
        &self,
        queue: &CommandQueue,
        name: &'static str,
        args: &[Arg<'_>],
        groups: usize,
    ) -> Result<(), Error> {
        let table = self
            .kernels
            .lock()
            .map_err(|_| dev_err(name, "kernel table lock poisoned"))?;
        let kernel = table
            .get(name)
            .ok_or_else(|| dev_err(name, "no such kernel in the program"))?;
        for (i, a) in args.iter().enumerate() {
            core::set_kernel_arg(kernel, i as u32, a.val())
                .map_err(|e| dev_err(&format!("{name}: argument {i}"), e))?;
        }
        let gws = [groups * REDUCE_WG, 1, 1];
        // SAFETY: every argument is set; buffers are retained by the runtime until the
        // kernel completes; all kernels guard their index against `n`.
        unsafe {
            core::enqueue_kernel(
                queue,
                kernel,
                1,
                None,
                &gws,
                Some([REDUCE_WG, 1, 1]),
                None::<()>,
                None::<()>,
            )
        }
        .map_err(|e| dev_err(&format!("launching {name}"), e))
    }
}

/// Everything one opened device holds.
pub(crate) struct Device {
    pub info: DeviceInfo,
    pub context: Context,
    pub queue: CommandQueue,
    device: DeviceId,
    f32: Program,
    f64: OnceLock<Result<Program, Error>>,
    /// Extension programs by (name, dtype), built on first use.
    extensions: Mutex<HashMap<(&'static str, DType), Arc<Program>>>,
}

impl Device {
    pub(crate) fn open(found: Found) -> Result<Device, Error> {
        let info = found.info;
        if info.max_work_group_size < REDUCE_WG {
            return Err(Error::Unavailable {
                backend: BACKEND.into(),
                reason: format!(
                    "device {} allows work-groups of {} items; the reductions need {REDUCE_WG}",
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
        let f32 = Program::build(&context, device, DType::F32)?;
        Ok(Device {
            info,
            context,
            queue,
            device,
            f32,
            f64: OnceLock::new(),
            extensions: Mutex::new(HashMap::new()),
        })
    }

    /// The program computing on `dtype` (`U8` ops live in the `F32` program); the `f64`
    /// program is compiled on first use.
    pub(crate) fn program(&self, dtype: DType) -> Result<&Program, Error> {
        match dtype {
            DType::F32 | DType::U8 => Ok(&self.f32),
            DType::F64 => {
                if !self.info.fp64 {
                    return Err(Error::UnsupportedDType {
                        backend: BACKEND.into(),
                        dtype,
                    });
                }
                self.f64
                    .get_or_init(|| Program::build(&self.context, self.device, DType::F64))
                    .as_ref()
                    .map_err(Clone::clone)
            }
        }
    }

    /// The program of `ext` for `dtype` (`F32` or `F64`), built on first use.
    pub(crate) fn extension(
        &self,
        ext: &'static Extension,
        dtype: DType,
    ) -> Result<Arc<Program>, Error> {
        if dtype == DType::F64 && !self.info.fp64 {
            return Err(Error::UnsupportedDType {
                backend: BACKEND.into(),
                dtype,
            });
        }
        let key = (ext.name, dtype);
        if let Some(p) = self
            .extensions
            .lock()
            .map_err(|_| dev_err(ext.name, "program cache lock poisoned"))?
            .get(&key)
        {
            return Ok(Arc::clone(p));
        }
        // Built outside the lock: a first build takes seconds and must not block launches of
        // programs already built. Two threads racing here build twice and keep one.
        let source = kernels::extension_source(Dialect::OpenCl, dtype, ext);
        let built = Arc::new(Program::build_source(
            &self.context,
            self.device,
            dtype,
            ext.name,
            source,
            kernels::kernel_names_in(ext.source),
        )?);
        let mut cache = self
            .extensions
            .lock()
            .map_err(|_| dev_err(ext.name, "program cache lock poisoned"))?;
        Ok(Arc::clone(cache.entry(key).or_insert(built)))
    }

    /// Waits for every enqueued command.
    pub(crate) fn finish(&self) -> Result<(), Error> {
        core::finish(&self.queue).map_err(|e| dev_err("clFinish", e))
    }
}

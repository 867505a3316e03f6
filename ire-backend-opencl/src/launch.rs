//! [`DeviceKernels`] for the OpenCL backend: extension programs built on first use.

use ire_core::kernels::Extension;
use ire_core::{DType, DeviceKernels, Error, KernelArg, Scalar};

use crate::backend::OpenClBackend;
use crate::device::Arg;

impl DeviceKernels for OpenClBackend {
    fn launch<T: Scalar>(
        &self,
        ext: &'static Extension,
        kernel: &'static str,
        groups: usize,
        args: &[KernelArg<'_, Self, T>],
    ) -> Result<(), Error> {
        if groups == 0 {
            return Ok(());
        }
        let dtype = match T::DTYPE {
            DType::F64 => DType::F64,
            _ => DType::F32,
        };
        let program = self.device_handle().extension(ext, dtype)?;
        let args = args
            .iter()
            .map(|a| match a {
                KernelArg::In(b) => b.mem().map_or(Arg::NullMem, Arg::Mem),
                KernelArg::Out(b) => b.mem().map_or(Arg::NullMem, Arg::Mem),
                KernelArg::Real(x) if dtype == DType::F64 => Arg::F64(*x),
                KernelArg::Real(x) => Arg::F32(*x as f32),
                KernelArg::Index(i) => Arg::U64(*i as u64),
                KernelArg::U32(u) => Arg::U32(*u),
            })
            .collect::<Vec<_>>();
        program.launch(&self.device_handle().queue, kernel, &args, groups)
    }
}

//! The portable kernel source, shared by the OpenCL and CUDA backends.
//!
//! One C dialect (`kernels/ire_ops.cl`) with a prelude of macros per target
//! (`kernels/prelude_opencl.h`, `kernels/prelude_cuda.h`). Device backends compile it at run
//! time (OpenCL's compiler, NVRTC): no nvcc and no build script. The table [`KERNELS`] names
//! the kernel behind each [`crate::Backend`] operation.

use alloc::string::String;

use crate::scalar::DType;

/// The kernel source proper.
pub const OPS_SOURCE: &str = include_str!("../kernels/ire_ops.cl");
/// The OpenCL prelude.
pub const OPENCL_PRELUDE: &str = include_str!("../kernels/prelude_opencl.h");
/// The CUDA (NVRTC) prelude.
pub const CUDA_PRELUDE: &str = include_str!("../kernels/prelude_cuda.h");

/// Work-group size the reduction kernels must be launched with (`REDUCE_WG` in the source).
pub const REDUCE_WG: usize = 256;

/// The compiler a program is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// OpenCL C 1.2.
    OpenCl,
    /// CUDA C++ through NVRTC.
    Cuda,
}

/// Build options that keep element-wise results bit-identical to the reference backend.
pub const OPENCL_BUILD_OPTIONS: &str = "-cl-fp32-correctly-rounded-divide-sqrt";
/// NVRTC options with the same purpose (no FMA contraction, IEEE division and sqrt).
pub const NVRTC_OPTIONS: &[&str] = &["--fmad=false", "--prec-div=true", "--prec-sqrt=true"];

/// The full program text for one dialect and one floating-point dtype (`F32` or `F64`).
///
/// Byte and mask-word kernels (`fill_u8`, `mask_pack`, `mask_unpack`, `count_flat_partial`)
/// are in every program; backends use the `F32` program for them so that they work on devices
/// without `f64`.
pub fn program_source(dialect: Dialect, dtype: DType) -> String {
    with_prelude(dialect, dtype, OPS_SOURCE)
}

/// A program of kernels in the portable dialect (the IRE ops are one, [`crate::device::IRE_OPS`];
/// crates above add their own), compiled by a device backend on first use and launched with
/// [`crate::device::DeviceBackend::launch`].
#[derive(Debug)]
pub struct Extension {
    /// A unique name (device backends cache the compiled program under it).
    pub name: &'static str,
    /// The kernel source, without the dtype header and prelude (added by
    /// [`extension_source`]).
    pub source: &'static str,
}

/// The full program text of `ext` for one dialect and one floating-point dtype.
pub fn extension_source(dialect: Dialect, dtype: DType, ext: &Extension) -> String {
    with_prelude(dialect, dtype, ext.source)
}

fn with_prelude(dialect: Dialect, dtype: DType, body: &str) -> String {
    let header = match dtype {
        DType::F64 => "#define IRE_F64\n#define T double\n",
        _ => "#define IRE_F32\n#define T float\n",
    };
    let prelude = match dialect {
        Dialect::OpenCl => OPENCL_PRELUDE,
        Dialect::Cuda => CUDA_PRELUDE,
    };
    let mut s = String::with_capacity(header.len() + prelude.len() + body.len() + 2);
    s.push_str(header);
    s.push_str(prelude);
    s.push('\n');
    s.push_str(body);
    s
}

/// Every kernel entry point (`KERNEL void name(`) defined in `source`, in order.
pub fn kernel_names_in(source: &'static str) -> impl Iterator<Item = &'static str> {
    source
        .split("KERNEL void ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
}

/// A `Backend` operation and the kernels that implement it on a device.
#[derive(Clone, Copy, Debug)]
pub struct KernelOp {
    /// The method of [`crate::Backend`].
    pub op: &'static str,
    /// Kernel entry points used by it (in call order).
    pub kernels: &'static [&'static str],
}

/// Every computing operation of [`crate::Backend`] and its kernels.
pub const KERNELS: &[KernelOp] = &[
    KernelOp {
        op: "fill",
        kernels: &["fill", "fill_u8"],
    },
    KernelOp {
        op: "axpy",
        kernels: &["axpy"],
    },
    KernelOp {
        op: "sam_perturb",
        kernels: &["axpy"],
    },
    KernelOp {
        op: "sgd_step",
        kernels: &["sgd_step"],
    },
    KernelOp {
        op: "sgd_momentum_step",
        kernels: &["sgd_momentum_step"],
    },
    KernelOp {
        op: "adamw_step",
        kernels: &["adamw_step"],
    },
    KernelOp {
        op: "ire_boost",
        kernels: &["ire_boost"],
    },
    KernelOp {
        op: "sgd_ire_step",
        kernels: &["sgd_ire_step"],
    },
    KernelOp {
        op: "sgd_momentum_ire_step",
        kernels: &["sgd_momentum_ire_step"],
    },
    KernelOp {
        op: "adamw_ire_step",
        kernels: &["adamw_ire_step"],
    },
    KernelOp {
        op: "ema_square",
        kernels: &["ema_square"],
    },
    KernelOp {
        op: "ema_abs",
        kernels: &["ema_abs"],
    },
    KernelOp {
        op: "ema_product",
        kernels: &["ema_product"],
    },
    KernelOp {
        op: "mask_le",
        kernels: &["mask_le"],
    },
    KernelOp {
        op: "asam_perturb",
        kernels: &["asam_perturb"],
    },
    KernelOp {
        op: "sum_squares",
        kernels: &["sum_squares_partial"],
    },
    KernelOp {
        op: "sum_squares_product",
        kernels: &["sum_squares_product_partial"],
    },
    KernelOp {
        op: "count_non_finite",
        kernels: &["count_non_finite_partial"],
    },
    KernelOp {
        op: "count_flat",
        kernels: &["count_flat_partial"],
    },
    KernelOp {
        op: "mask_pack",
        kernels: &["mask_pack"],
    },
    KernelOp {
        op: "mask_unpack",
        kernels: &["mask_unpack"],
    },
    KernelOp {
        op: "kth_largest",
        kernels: &["select_histogram", "count_nan_partial"],
    },
];

/// `Backend` methods that are buffer plumbing (device API calls, no kernel).
pub const PLUMBING: &[&str] = &[
    "name",
    "synchronize",
    "supports_dtype",
    "alloc",
    "len",
    "upload",
    "download",
    "copy",
    "alloc_from",
    "to_vec",
    "with_parts",
];

/// Every kernel entry point defined in the source, in order.
pub fn kernel_names() -> impl Iterator<Item = &'static str> {
    kernel_names_in(OPS_SOURCE)
}

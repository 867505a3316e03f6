//! The one kernel-argument type of the workspace.

use alloc::format;
use alloc::string::String;

use crate::scalar::DType;

/// One argument of a kernel launch, in the order of the kernel's parameters.
///
/// Buffers are passed whole (OpenCL cannot point into the middle of a buffer), so a kernel that
/// reads at an element offset takes the offset as an extra `INDEX` parameter. A buffer
/// argument names its element type; every launch is checked against the kernel's parameter
/// list in the source ([`super::signature`]) before it reaches the device. Make buffer
/// arguments with [`super::DeviceBuffer::input`] and [`super::DeviceBuffer::output`], which
/// borrow the buffer as the kernel will use it.
pub enum KernelArg<'a, M> {
    /// A buffer the kernel only reads (`GLOBAL const E*`): its memory (`None` when empty).
    In(Option<&'a M>, DType),
    /// A buffer the kernel writes (`GLOBAL E*`).
    Out(Option<&'a M>, DType),
    /// A scalar of the program's float type `T` (`f32` or `f64`).
    Real(f64),
    /// A `U8` scalar.
    U8(u8),
    /// A `U32` scalar.
    U32(u32),
    /// An element count or offset (`INDEX`, 64 bits).
    Index(usize),
    /// A radix key (`KEY`): 32 bits in the `f32` program, 64 in the `f64` program.
    Key(u64),
}

impl<M> KernelArg<'_, M> {
    /// A short description for error messages.
    pub fn describe(&self) -> String {
        match self {
            KernelArg::In(m, d) => format!("input {} buffer{}", d.name(), empty(m.is_none())),
            KernelArg::Out(m, d) => format!("output {} buffer{}", d.name(), empty(m.is_none())),
            KernelArg::Real(x) => format!("real {x}"),
            KernelArg::U8(x) => format!("u8 {x}"),
            KernelArg::U32(x) => format!("u32 {x}"),
            KernelArg::Index(x) => format!("index {x}"),
            KernelArg::Key(x) => format!("key {x:#x}"),
        }
    }
}

fn empty(yes: bool) -> &'static str {
    if yes { " (empty)" } else { "" }
}

//! Kernel parameter lists, read from the portable source itself, and the check of every launch
//! against them.
//!
//! A launch site that drifts from the source (an argument missing, swapped, of the wrong
//! element type, or an output passed where the kernel only reads) fails with an error naming
//! the kernel and the argument, on every runtime, before anything reaches the device.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::args::KernelArg;
use crate::error::{Error, Result};
use crate::scalar::DType;

/// The element type a pointer parameter points to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtrElem {
    /// `T`: the program's floating-point type.
    Real,
    /// `U8` (masks).
    U8,
    /// `U32` (counters, partial counts).
    U32,
}

/// One kernel parameter, as declared in the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// `GLOBAL [const] E* name`; `writes` is false for `const` pointers.
    Ptr {
        /// Element type.
        elem: PtrElem,
        /// Whether the kernel may write through it.
        writes: bool,
    },
    /// A scalar `T`.
    Real,
    /// A scalar `U8`.
    U8,
    /// A scalar `U32`.
    U32,
    /// `INDEX` (64-bit unsigned).
    Index,
    /// `KEY`: 32-bit unsigned in the f32 program, 64-bit in the f64 program.
    Key,
}

/// A kernel entry point and its parameters in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Entry-point name.
    pub name: &'static str,
    /// Parameters in declaration order.
    pub params: Vec<Param>,
}

/// Parses every `KERNEL void name(...)` of `src`; an error names a parameter type launches
/// cannot pass (use `GLOBAL T*`, `GLOBAL const T*`, `U8*`, `U32*`, `T`, `U8`, `U32`, `INDEX`,
/// `KEY`).
pub fn parse(src: &'static str) -> core::result::Result<Vec<Signature>, String> {
    let mut out = Vec::new();
    for rest in src.split("KERNEL void ").skip(1) {
        let open = rest.find('(').ok_or_else(|| {
            format!(
                "no parameter list after `KERNEL void {}`",
                &rest[..rest.len().min(40)]
            )
        })?;
        let name = rest[..open].trim();
        let close = rest[open..]
            .find(')')
            .ok_or_else(|| format!("kernel {name}: unterminated parameter list"))?;
        let mut params = Vec::new();
        for decl in rest[open + 1..open + close].split(',') {
            params.push(parse_param(decl).map_err(|e| format!("kernel {name}: {e}"))?);
        }
        out.push(Signature { name, params });
    }
    Ok(out)
}

fn parse_param(decl: &str) -> core::result::Result<Param, String> {
    let spaced = decl.replace('*', " * ");
    let tokens: Vec<&str> = spaced
        .split_whitespace()
        .filter(|t| *t != "GLOBAL")
        .collect();
    if tokens.len() < 2 {
        return Err(format!("cannot read parameter `{}`", decl.trim()));
    }
    let ty = tokens
        .iter()
        .find(|t| **t != "const" && **t != "*")
        .copied()
        .unwrap_or("");
    if tokens.contains(&"*") {
        let elem = match ty {
            "T" => PtrElem::Real,
            "U8" => PtrElem::U8,
            "U32" => PtrElem::U32,
            other => return Err(format!("unknown pointer type `{other}*`")),
        };
        return Ok(Param::Ptr {
            elem,
            writes: !tokens.contains(&"const"),
        });
    }
    match ty {
        "T" => Ok(Param::Real),
        "U8" => Ok(Param::U8),
        "U32" => Ok(Param::U32),
        "INDEX" => Ok(Param::Index),
        "KEY" => Ok(Param::Key),
        other => Err(format!("unknown scalar type `{other}`")),
    }
}

/// Checks a launch of `sig` in a program compiled for `dtype` (`F32` or `F64`).
pub fn check<M>(
    backend: &str,
    sig: &Signature,
    dtype: DType,
    args: &[KernelArg<'_, M>],
) -> Result<()> {
    let kernel = sig.name;
    let bad = |message: String| Error::Device {
        backend: backend.into(),
        message: format!("launch of {kernel} ({} program): {message}", dtype.name()),
    };
    if sig.params.len() != args.len() {
        return Err(bad(format!(
            "{} arguments given, the source declares {}",
            args.len(),
            sig.params.len()
        )));
    }
    for (i, (p, a)) in sig.params.iter().zip(args).enumerate() {
        let ok = match (p, a) {
            (Param::Ptr { elem, writes }, KernelArg::In(_, d) | KernelArg::Out(_, d)) => {
                let want = match elem {
                    PtrElem::Real => dtype,
                    PtrElem::U8 => DType::U8,
                    PtrElem::U32 => DType::U32,
                };
                *d == want && *writes == matches!(a, KernelArg::Out(..))
            }
            (Param::Real, KernelArg::Real(_))
            | (Param::U8, KernelArg::U8(_))
            | (Param::U32, KernelArg::U32(_))
            | (Param::Index, KernelArg::Index(_)) => true,
            (Param::Key, KernelArg::Key(k)) => dtype == DType::F64 || *k <= u64::from(u32::MAX),
            _ => false,
        };
        if !ok {
            return Err(bad(format!(
                "argument {i} is {}, the source declares {p:?}",
                a.describe()
            )));
        }
    }
    Ok(())
}

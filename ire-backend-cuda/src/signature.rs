//! Kernel parameter lists, read from the portable source itself.
//!
//! Every launch is checked against the parameter list of its kernel as written in
//! `ire_ops.cl` (kind, pointer element type and order), so a launch site that drifts from the
//! source fails with an error instead of passing the wrong bits to the device.

use std::sync::OnceLock;

use ire_core::kernels::OPS_SOURCE;

/// The element type a pointer parameter points to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PtrElem {
    /// `T`: the program's floating-point type.
    Real,
    /// `U8` (masks).
    U8,
    /// `U32` (counters, partial counts).
    U32,
}

/// One kernel parameter, as declared in the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Param {
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
pub(crate) struct Signature {
    /// Entry-point name.
    pub name: &'static str,
    /// Parameters in declaration order.
    pub params: Vec<Param>,
}

/// Parses every `KERNEL void name(...)` of `src`.
pub(crate) fn parse(src: &'static str) -> Result<Vec<Signature>, String> {
    let mut out = Vec::new();
    for rest in src.split("KERNEL void ").skip(1) {
        let open = rest
            .find('(')
            .ok_or_else(|| format!("no parameter list after `KERNEL void {}`", head(rest)))?;
        let name = rest[..open].trim();
        let close = rest[open..]
            .find(')')
            .ok_or_else(|| format!("kernel {name}: unterminated parameter list"))?;
        let list = &rest[open + 1..open + close];
        let mut params = Vec::new();
        for decl in list.split(',') {
            params.push(parse_param(decl).map_err(|e| format!("kernel {name}: {e}"))?);
        }
        out.push(Signature { name, params });
    }
    Ok(out)
}

fn head(s: &str) -> &str {
    &s[..s.len().min(40)]
}

fn parse_param(decl: &str) -> Result<Param, String> {
    let spaced = decl.replace('*', " * ");
    let tokens: Vec<&str> = spaced
        .split_whitespace()
        .filter(|t| *t != "GLOBAL")
        .collect();
    if tokens.len() < 2 {
        return Err(format!("cannot read parameter `{}`", decl.trim()));
    }
    let is_const = tokens.contains(&"const");
    let is_ptr = tokens.contains(&"*");
    let ty = tokens
        .iter()
        .find(|t| **t != "const" && **t != "*")
        .copied()
        .unwrap_or("");
    if is_ptr {
        let elem = match ty {
            "T" => PtrElem::Real,
            "U8" => PtrElem::U8,
            "U32" => PtrElem::U32,
            other => return Err(format!("unknown pointer type `{other}*`")),
        };
        return Ok(Param::Ptr {
            elem,
            writes: !is_const,
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

/// The signatures of the portable source, parsed once.
pub(crate) fn signatures() -> Result<&'static [Signature], String> {
    static PARSED: OnceLock<Result<Vec<Signature>, String>> = OnceLock::new();
    PARSED
        .get_or_init(|| parse(OPS_SOURCE))
        .as_ref()
        .map(Vec::as_slice)
        .map_err(Clone::clone)
}

/// The signature of one kernel.
pub(crate) fn signature(name: &str) -> Result<&'static Signature, String> {
    signatures()?
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("kernel `{name}` is not in the portable source"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn every_kernel_of_the_source_parses() {
        let sigs = signatures().unwrap();
        let names: Vec<&str> = ire_core::kernels::kernel_names().collect();
        assert_eq!(sigs.len(), names.len());
        for (s, n) in sigs.iter().zip(&names) {
            assert_eq!(s.name, *n);
            assert!(!s.params.is_empty(), "{n} has no parameters");
        }
    }

    #[test]
    fn parameter_kinds_are_read_exactly() {
        use Param::*;
        let w = |elem| Ptr { elem, writes: true };
        let r = |elem| Ptr {
            elem,
            writes: false,
        };
        assert_eq!(
            signature("axpy").unwrap().params,
            vec![w(PtrElem::Real), Real, r(PtrElem::Real), Index]
        );
        assert_eq!(
            signature("sgd_momentum_ire_step").unwrap().params,
            vec![
                w(PtrElem::Real),
                r(PtrElem::Real),
                w(PtrElem::Real),
                Real,
                Real,
                Real,
                Real,
                U32,
                r(PtrElem::U8),
                Real,
                Index
            ]
        );
        assert_eq!(
            signature("select_histogram").unwrap().params,
            vec![r(PtrElem::Real), Index, U32, Key, Key, w(PtrElem::U32)]
        );
        assert_eq!(
            signature("fill_u8").unwrap().params,
            vec![w(PtrElem::U8), U8, Index]
        );
        assert!(signature("no_such_kernel").is_err());
    }

    #[test]
    fn malformed_parameters_are_errors() {
        assert!(parse("KERNEL void k(GLOBAL float* x)").is_err());
        assert!(parse("KERNEL void k(T x").is_err());
        assert!(parse("KERNEL void k(LONG x)").is_err());
        assert_eq!(parse("no kernels here").unwrap(), Vec::new());
    }
}

//! The extension's one error type, and how each kind reaches Python.
//!
//! Every failure becomes a Python exception with a message naming the offending tensor, field
//! or value: `TypeError` for a tensor of the wrong kind (not a tensor, wrong dtype), `ValueError`
//! for bad values and tensors in the wrong place or layout, `RuntimeError` for calls out of
//! order. Nothing panics across the boundary.

use std::fmt;

use ire_core::DType;
use pyo3::PyErr;

use crate::place::Place;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};

/// Which tensor of a call an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Role {
    /// What the tensor is for.
    pub kind: RoleKind,
    /// Its position among the optimizer's parameters (or in the call's list).
    pub index: usize,
}

/// What a tensor is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleKind {
    /// A parameter (updated in place).
    Parameter,
    /// A training gradient.
    Gradient,
    /// An estimator gradient (a mask refresh's input).
    Estimate,
    /// A tensor the extension writes a copy of its state into.
    Output,
    /// A tensor of a saved state being loaded.
    State,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            RoleKind::Parameter => "parameter",
            RoleKind::Gradient => "gradient of parameter",
            RoleKind::Estimate => "estimator gradient (.grad) of parameter",
            RoleKind::Output => "output tensor",
            RoleKind::State => "state tensor",
        };
        write!(f, "{what} {}", self.index)
    }
}

/// The devices this build reaches, for messages.
#[cfg(feature = "cuda")]
const REACHED: &str = "CPU and CUDA";
#[cfg(not(feature = "cuda"))]
const REACHED: &str = "CPU";

/// Everything that can go wrong in the extension.
#[derive(Debug)]
pub enum TorchError {
    /// An error of the optimizer core (hyper-parameter, size, non-finite value, protocol).
    Core(ire_core::Error),
    /// An argument that is not a `torch.Tensor`.
    NotATensor {
        /// Which argument.
        role: Role,
        /// Its Python type.
        found: String,
    },
    /// A tensor on a device this build cannot reach.
    Device {
        /// Which tensor.
        role: Role,
        /// The tensor's device, as torch prints it.
        device: String,
    },
    /// A tensor on a device other than the optimizer's (or than the call's first tensor).
    OtherDevice {
        /// Which tensor.
        role: Role,
        /// Its device.
        found: Place,
        /// The optimizer's.
        expected: Place,
    },
    /// A tensor of a dtype the optimizers do not take.
    DType {
        /// Which tensor.
        role: Role,
        /// Its dtype, as torch prints it.
        found: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A tensor whose dtype differs from the optimizer's.
    MixedDType {
        /// Which tensor.
        role: Role,
        /// Its dtype.
        found: DType,
        /// The optimizer's.
        expected: DType,
    },
    /// A sparse or otherwise non-strided tensor.
    Layout {
        /// Which tensor.
        role: Role,
        /// Its layout, as torch prints it.
        found: String,
    },
    /// A strided tensor whose elements are not one dense block in row-major order.
    NonContiguous {
        /// Which tensor.
        role: Role,
    },
    /// A data pointer not aligned for its element type.
    Misaligned {
        /// Which tensor.
        role: Role,
        /// The address.
        address: usize,
    },
    /// Two tensors whose memory overlaps where one of them is written.
    Overlap {
        /// The tensor written.
        written: Role,
        /// The other.
        other: Role,
    },
    /// A gradient (or estimator gradient) that is required and missing (`.grad` is `None`).
    Missing {
        /// Which tensor.
        role: Role,
    },
    /// A list of the wrong length.
    Count {
        /// What the list holds.
        what: &'static str,
        /// Its required length.
        expected: usize,
        /// Its length.
        found: usize,
    },
    /// A string option that names no choice.
    UnknownChoice {
        /// The option.
        field: &'static str,
        /// The value given.
        value: String,
        /// The values allowed.
        allowed: &'static [&'static str],
    },
    /// An option of the wrong Python type.
    BadOption {
        /// Which set of options.
        what: &'static str,
        /// The option.
        key: &'static str,
        /// Why it could not be read.
        reason: String,
    },
    /// An operation this optimizer's kind does not have (e.g. SAM's perturbation on plain IRE).
    WrongKind {
        /// The operation.
        op: &'static str,
        /// The optimizer's kind.
        kind: &'static str,
    },
    /// A Python call made by the extension failed (its own exception is kept).
    Python(PyErr),
}

impl fmt::Display for TorchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TorchError::Core(e) => write!(f, "{e}"),
            TorchError::NotATensor { role, found } => {
                write!(f, "{role} must be a torch.Tensor, got {found}")
            }
            TorchError::Device { role, device } => write!(
                f,
                "{role} is on device `{device}`: this build of ire_torch works on {REACHED} \
                 tensors only (move the model, or use a build with the device's support)"
            ),
            TorchError::OtherDevice {
                role,
                found,
                expected,
            } => write!(
                f,
                "{role} is on device `{found}`, but the optimizer's parameters are on \
                 `{expected}` (every tensor of a step must be on the parameters' device)"
            ),
            TorchError::DType {
                role,
                found,
                expected,
            } => write!(f, "{role} has dtype {found}; expected {expected}"),
            TorchError::MixedDType {
                role,
                found,
                expected,
            } => write!(
                f,
                "{role} has dtype {}, but the optimizer's parameters are {} (all parameters of \
                 one optimizer share a dtype)",
                torch_name(*found),
                torch_name(*expected)
            ),
            TorchError::Layout { role, found } => write!(
                f,
                "{role} has layout {found}; only dense (torch.strided) tensors are supported"
            ),
            TorchError::NonContiguous { role } => write!(
                f,
                "{role} is not contiguous; the optimizer works in place on one dense block \
                 (make the parameter contiguous before creating the optimizer)"
            ),
            TorchError::Misaligned { role, address } => write!(
                f,
                "{role} starts at address {address:#x}, not aligned for its element type"
            ),
            TorchError::Overlap { written, other } => write!(
                f,
                "{written} shares memory with {other}; a parameter updated in place must not \
                 overlap any other tensor of the step"
            ),
            TorchError::Missing { role } => write!(f, "{role} is None (no gradient was computed)"),
            TorchError::Count {
                what,
                expected,
                found,
            } => write!(f, "expected {expected} {what}, got {found}"),
            TorchError::UnknownChoice {
                field,
                value,
                allowed,
            } => write!(
                f,
                "unknown {field} {value:?}; expected one of {}",
                allowed.join(", ")
            ),
            TorchError::BadOption { what, key, reason } => {
                write!(f, "{what} `{key}` has the wrong type: {reason}")
            }
            TorchError::WrongKind { op, kind } => {
                write!(f, "{op} is not available on a {kind} optimizer")
            }
            TorchError::Python(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TorchError {}

impl From<ire_core::Error> for TorchError {
    fn from(e: ire_core::Error) -> Self {
        TorchError::Core(e)
    }
}

impl From<PyErr> for TorchError {
    fn from(e: PyErr) -> Self {
        TorchError::Python(e)
    }
}

impl From<TorchError> for PyErr {
    fn from(e: TorchError) -> PyErr {
        use ire_core::Error as C;
        let msg = e.to_string();
        match e {
            TorchError::Python(err) => err,
            TorchError::NotATensor { .. }
            | TorchError::DType { .. }
            | TorchError::MixedDType { .. }
            | TorchError::BadOption { .. } => PyTypeError::new_err(msg),
            TorchError::Core(C::Protocol(_)) | TorchError::WrongKind { .. } => {
                PyRuntimeError::new_err(msg)
            }
            TorchError::Core(
                C::Unsupported { .. }
                | C::UnsupportedDType { .. }
                | C::Unavailable { .. }
                | C::Device { .. },
            ) => PyRuntimeError::new_err(msg),
            _ => PyValueError::new_err(msg),
        }
    }
}

/// The extension's result type.
pub type Result<T, E = TorchError> = std::result::Result<T, E>;

/// torch's name of a dtype (`torch.float32`, ...).
pub fn torch_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "torch.float32",
        DType::F64 => "torch.float64",
        DType::U8 => "torch.uint8",
        DType::U32 => "torch.uint32",
    }
}

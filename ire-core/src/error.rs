//! The one error type of `ire-core`: every failure a user, a file or a device can cause.

use alloc::string::String;
use core::fmt;

use crate::collective::failure::{CollectiveFailure, CollectiveOp};
use crate::scalar::DType;

/// Result alias used across the crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Everything that can go wrong in `ire-core` and in the backends that implement its traits.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A hyper-parameter outside its allowed range (or NaN).
    InvalidHyperParameter {
        /// The field, as named in the config struct (`kappa`, `gamma`, ...).
        field: &'static str,
        /// The value given.
        value: f64,
        /// The allowed range, in words (`[0, 1]`, `>= 1`, ...).
        allowed: &'static str,
    },
    /// Two buffers (or a buffer and a slice) that must have the same length do not.
    SizeMismatch {
        /// What was being compared.
        what: String,
        /// The length required.
        expected: usize,
        /// The length found.
        found: usize,
    },
    /// A NaN or infinity where only finite values are allowed (an estimator gradient, a norm).
    NonFinite {
        /// Where it was found.
        what: String,
    },
    /// Data that is not what the operation takes (a class label or token id out of range).
    InvalidInput {
        /// What was wrong, and what was expected.
        what: String,
    },
    /// The backend cannot do this (a missing dtype, an operation the device lacks).
    Unsupported {
        /// The backend's name.
        backend: String,
        /// What was asked for.
        what: String,
    },
    /// The element type is not available on this device (e.g. `f64` without `cl_khr_fp64`).
    UnsupportedDType {
        /// The backend's name.
        backend: String,
        /// The dtype asked for.
        dtype: DType,
    },
    /// The device is absent or could not be opened.
    Unavailable {
        /// The backend's name.
        backend: String,
        /// Why.
        reason: String,
    },
    /// A device call failed (out of memory, a kernel compile error, a launch failure).
    Device {
        /// The backend's name.
        backend: String,
        /// The device's own message.
        message: String,
    },
    /// An optimizer was used out of order (e.g. a SAM step without its perturbation).
    Protocol(String),
    /// Saved state that cannot be loaded: wrong version, missing or extra entry, wrong size/type.
    State(String),
    /// A collective operation over the ranks of a group ([`crate::collective::Collective`])
    /// was refused or failed.
    Collective {
        /// The operation.
        op: CollectiveOp,
        /// What went wrong.
        failure: CollectiveFailure,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidHyperParameter {
                field,
                value,
                allowed,
            } => write!(
                f,
                "invalid hyper-parameter `{field}` = {value}: allowed range is {allowed}"
            ),
            Error::SizeMismatch {
                what,
                expected,
                found,
            } => write!(
                f,
                "size mismatch in {what}: expected {expected}, found {found}"
            ),
            Error::NonFinite { what } => write!(f, "non-finite value (NaN or infinity) in {what}"),
            Error::InvalidInput { what } => write!(f, "invalid input: {what}"),
            Error::Unsupported { backend, what } => {
                write!(f, "backend `{backend}` does not support {what}")
            }
            Error::UnsupportedDType { backend, dtype } => {
                write!(
                    f,
                    "backend `{backend}` does not support dtype {}",
                    dtype.name()
                )
            }
            Error::Unavailable { backend, reason } => {
                write!(f, "backend `{backend}` is unavailable: {reason}")
            }
            Error::Device { backend, message } => {
                write!(f, "backend `{backend}` failed: {message}")
            }
            Error::Protocol(m) => write!(f, "optimizer used out of order: {m}"),
            Error::State(m) => write!(f, "cannot load optimizer state: {m}"),
            Error::Collective { op, failure } => {
                write!(f, "collective {}: {failure}", op.name())
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// Checks `value` against a predicate and names the field when it fails (NaN always fails).
pub fn check(field: &'static str, value: f64, ok: bool, allowed: &'static str) -> Result<()> {
    if ok && !value.is_nan() {
        Ok(())
    } else {
        Err(Error::InvalidHyperParameter {
            field,
            value,
            allowed,
        })
    }
}

/// Checks that two lengths agree.
pub fn check_len(what: &str, expected: usize, found: usize) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::SizeMismatch {
            what: String::from(what),
            expected,
            found,
        })
    }
}

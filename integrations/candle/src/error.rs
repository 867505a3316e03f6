//! The adapter's error type.

use std::path::PathBuf;

use candle_core::DType;

/// Everything the adapter can refuse or fail at. On every error the variables and the
/// optimizer's state are as they were before the call, except where a variant says otherwise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The optimizer refused the step or the state (an `ire-core` error: a due refresh without
    /// an estimate, a non-finite estimate, a size mismatch, state that does not fit).
    #[error(transparent)]
    Core(#[from] ire_core::Error),
    /// candle failed (reading a tensor, making a gradient contiguous).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A variable or a gradient is not on the CPU.
    #[error("{what} of variable {var} is on {device:?}; the adapter runs on the CPU")]
    NotOnCpu {
        /// Index of the variable (among the float variables given to the optimizer).
        var: usize,
        /// `"the value"` or `"the gradient"`.
        what: &'static str,
        /// Where it is.
        device: candle_core::DeviceLocation,
    },
    /// A variable or a gradient has another float type than the optimizer.
    #[error("{what} of variable {var} is {found:?}, the optimizer steps {expected:?}")]
    DType {
        /// Index of the variable.
        var: usize,
        /// `"the value"` or `"the gradient"`.
        what: &'static str,
        /// The optimizer's element type.
        expected: DType,
        /// The tensor's.
        found: DType,
    },
    /// A gradient's shape is not its variable's.
    #[error("the gradient of variable {var} has shape {found:?}, the variable {expected:?}")]
    Shape {
        /// Index of the variable.
        var: usize,
        /// The variable's shape.
        expected: Vec<usize>,
        /// The gradient's shape.
        found: Vec<usize>,
    },
    /// The same variable was given twice.
    #[error("variable {var} is variable {first} again")]
    DuplicateVar {
        /// The later index.
        var: usize,
        /// The first index.
        first: usize,
    },
    /// A variable is not contiguous in memory, so it cannot be stepped in place.
    #[error("variable {var} is not contiguous in memory")]
    NotContiguous {
        /// Index of the variable.
        var: usize,
    },
    /// A gradient shares memory with a variable (it would be read while written).
    #[error("the gradient of variable {grad_of} shares memory with variable {var}")]
    Aliased {
        /// The variable whose gradient it is.
        grad_of: usize,
        /// The variable it overlaps.
        var: usize,
    },
    /// A step of SAM needs a gradient for every variable, and one is missing.
    #[error("the gradient store has no gradient for variable {var}, and a SAM step needs all")]
    MissingGradient {
        /// Index of the variable.
        var: usize,
    },
    /// An estimate with no gradient for any variable (a gradient store of another model).
    #[error("the estimate has no gradient for any variable")]
    EmptyEstimate,
    /// Logits with no class dimension (rank below 2) or no class.
    #[error("logits of shape {shape:?}: expected [rows..., classes] with at least one class")]
    LogitsShape {
        /// Their shape.
        shape: Vec<usize>,
    },
    /// A logit is NaN or infinite, so no label can be drawn from its row.
    #[error("row {row} of the logits has a non-finite value")]
    NonFiniteLogits {
        /// The row (leading dimensions flattened).
        row: usize,
    },
    /// A state file could not be read or written.
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A state file is not what [`crate::IreOptimizer::save`] writes.
    #[error("{}: not an optimizer state file: {problem}", path.display())]
    StateFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: StateFileProblem,
    },
    /// The state fits the optimizer but not these variables.
    #[error(
        "the state is for {saved} tensors of sizes {saved_sizes:?}, the variables are {sizes:?}"
    )]
    StateVars {
        /// Number of tensors in the state.
        saved: usize,
        /// Their sizes.
        saved_sizes: Vec<usize>,
        /// The variables' sizes.
        sizes: Vec<usize>,
    },
}

/// What is wrong with a state file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateFileProblem {
    /// The safetensors container itself is unreadable.
    #[error("safetensors: {0}")]
    Container(#[from] safetensors::SafeTensorError),
    /// A metadata key is missing.
    #[error("metadata key `{key}` is missing")]
    MissingMetadata {
        /// The key.
        key: String,
    },
    /// A metadata value cannot be parsed.
    #[error("metadata key `{key}` has the value `{value}`, expected {expected}")]
    BadMetadata {
        /// The key.
        key: String,
        /// The value found.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A tensor the metadata lists is missing.
    #[error("tensor `{name}` is missing")]
    MissingTensor {
        /// Its name.
        name: String,
    },
    /// A tensor has a type or shape no state entry has.
    #[error("tensor `{name}` is {dtype:?} of shape {shape:?}, which no state entry has")]
    BadTensor {
        /// Its name.
        name: String,
        /// Its type.
        dtype: safetensors::Dtype,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// The file has a tensor the metadata does not list.
    #[error("tensor `{name}` belongs to no state entry")]
    ExtraTensor {
        /// Its name.
        name: String,
    },
}

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(c) => c,
            e => candle_core::Error::wrap(e),
        }
    }
}

/// The adapter's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The adapter's error type.

/// Everything the adapter can refuse or fail at. Unless a variant says otherwise, the module
/// and the optimizer's state are as they were before the call.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The optimizer refused the step or the state (an `ire-core` error: a due refresh without
    /// an estimate, a non-finite estimate, a size mismatch, state that does not fit).
    #[error(transparent)]
    Core(#[from] ire_core::Error),
    /// The module's parameters are not the ones the optimizer was first used with.
    #[error(
        "the module has {found} trainable parameters {found_sizes:?}, the optimizer was set up \
         for {expected} {expected_sizes:?} (or their ids differ)"
    )]
    ModuleChanged {
        /// Parameters the optimizer knows.
        expected: usize,
        /// Their sizes.
        expected_sizes: Vec<usize>,
        /// Parameters the module has.
        found: usize,
        /// Their sizes.
        found_sizes: Vec<usize>,
    },
    /// A parameter or gradient has another float type than the optimizer.
    #[error("{what} of parameter {param} is {found}, the optimizer steps {expected}")]
    DType {
        /// Index of the parameter (the module's visiting order).
        param: usize,
        /// `"the value"` or `"the gradient"`.
        what: &'static str,
        /// The optimizer's element type.
        expected: &'static str,
        /// The tensor's.
        found: String,
    },
    /// A gradient's shape is not its parameter's.
    #[error("the gradient of parameter {param} has shape {found:?}, the parameter {expected:?}")]
    Shape {
        /// Index of the parameter.
        param: usize,
        /// The parameter's shape.
        expected: Vec<usize>,
        /// The gradient's shape.
        found: Vec<usize>,
    },
    /// A quantized parameter cannot be stepped.
    #[error("parameter {param} is quantized; the optimizer steps float parameters")]
    Quantized {
        /// Index of the parameter.
        param: usize,
    },
    /// Reading a tensor to host memory failed (the copying path of a non-ndarray backend).
    #[error("reading parameter {param} to host memory failed: {reason}")]
    HostRead {
        /// Index of the parameter.
        param: usize,
        /// The backend's message.
        reason: String,
    },
    /// An estimate with no gradient for any trainable parameter (e.g. from logits whose graph a
    /// backward had already consumed).
    #[error("the estimate has no gradient for any trainable parameter")]
    EmptyEstimate,
    /// A record without optimizer state (written while a step was in progress).
    #[error("the record holds no optimizer state")]
    EmptyRecord,
    /// A record whose parameter ids and state disagree on the number of parameters.
    #[error("the record names {ids} parameters but holds state for {tensors}")]
    InconsistentRecord {
        /// Parameter ids in the record.
        ids: usize,
        /// Tensors in its state.
        tensors: usize,
    },
    /// A record for other parameters (ids) than the module's.
    #[error("the record is for parameter ids {saved:?}, the module has {found:?}")]
    RecordParams {
        /// Ids in the record.
        saved: Vec<u64>,
        /// Ids of the module's parameters.
        found: Vec<u64>,
    },
}

/// The adapter's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Why a training run stopped: the error of the trainer and of the run around it.

use crate::data::DataError;

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A bad setting.
    #[error("{0}")]
    Config(String),
    /// A dataset problem.
    #[error(transparent)]
    Data(#[from] DataError),
    /// An optimizer or backend problem.
    #[error(transparent)]
    Core(#[from] ire_core::Error),
    /// The loss or the gradient stopped being finite.
    #[error("training diverged at step {step}: {what}")]
    Diverged {
        /// The step.
        step: u64,
        /// What became non-finite.
        what: String,
    },
    /// A run-folder, history, checkpoint or data-identity problem.
    #[error(transparent)]
    Run(#[from] super::run_error::RunError),
    /// More memory than the limit.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
}

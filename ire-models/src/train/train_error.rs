//! Why a training run stopped: the error of the trainer and of the run around it.

use std::path::PathBuf;

use super::config_error::ConfigError;
use super::run_error::RunError;
use crate::artifacts::ArtifactError;
use crate::data::DataError;
use crate::text::TextError;

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A bad setting.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A flag that the chosen optimizer or dataset would ignore.
    #[error(transparent)]
    NotApplicable(#[from] super::applies::NotApplicable),
    /// A dataset problem.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A text-corpus or tokenizer problem.
    #[error(transparent)]
    Text(#[from] TextError),
    /// A checkpoint, metrics or weights file could not be written or read.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
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
    Run(#[from] RunError),
    /// More memory than the limit.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// The training split has no example.
    #[error("the training split is empty")]
    EmptyTrainingSplit,
    /// An image model on text or a language model on images.
    #[error("model `{model}` does not fit the {data} data (language models need --dataset text)")]
    ModelDoesNotFit {
        /// The model preset.
        model: String,
        /// The kind of data: `image` or `text`.
        data: &'static str,
    },
    /// A checkpoint's metadata is not JSON.
    #[error("{}: bad checkpoint metadata: {source}", .path.display())]
    CheckpointMeta {
        /// The checkpoint.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A checkpoint that is not a training checkpoint of a version this build reads.
    #[error(
        "{}: not a training checkpoint of version 1 to {supported} (found kind {kind}, version {})",
        .path.display(),
        match .version { Some(v) => v.to_string(), None => "none".to_string() }
    )]
    NotTrainingCheckpoint {
        /// The checkpoint.
        path: PathBuf,
        /// Its `kind` field, as JSON.
        kind: String,
        /// Its `version` field.
        version: Option<u64>,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The configuration stored in a checkpoint cannot be read.
    #[error("{}: bad config in checkpoint: {source}", .path.display())]
    CheckpointConfig {
        /// The checkpoint.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A checkpoint lacks a part a resume needs.
    #[error("the checkpoint has no {part}")]
    CheckpointLacks {
        /// The part (`step`, `parameters`, `optimizer state`, `model state `name``).
        part: String,
    },
    /// A checkpoint's configuration differs from the run's in fields that change the
    /// trajectory.
    #[error(
        "the checkpoint was taken with another configuration ({})",
        .differences.iter().map(|d| format!("{}: checkpoint {}, now {}", d.field, d.checkpoint, d.now)).collect::<Vec<_>>().join("; ")
    )]
    OtherConfiguration {
        /// Each field that differs.
        differences: Vec<FieldDifference>,
    },
    /// A tensor (parameters, a model state, a point to evaluate) of the wrong length.
    #[error("{what} has {found} values, the model {expected}")]
    WrongLength {
        /// What was given (`the checkpoint's parameters`, `model state `name``, `theta`).
        what: String,
        /// Its length.
        found: usize,
        /// The length the model needs.
        expected: usize,
    },
    /// A checkpoint's model state names another tensor than the model's.
    #[error("checkpoint model state `{found}` does not fit the model's `{expected}`")]
    StateName {
        /// The checkpoint's name.
        found: String,
        /// The model's name.
        expected: String,
    },
    /// Sampling text from a checkpoint that is not a language model's.
    #[error("sampling needs a language-model checkpoint")]
    NotLanguageModel,
    /// Two backends initialised different parameters from one seed.
    #[error("the two backends initialised different parameters from one seed")]
    InitDiffers,
}

/// One configuration field that differs between a checkpoint and a run.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldDifference {
    /// The field.
    pub field: String,
    /// Its value in the checkpoint (JSON).
    pub checkpoint: String,
    /// Its value now (JSON).
    pub now: String,
}

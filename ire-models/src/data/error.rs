//! What can go wrong reading a dataset, and the one way a dataset file is read whole.

use std::path::{Path, PathBuf};

/// What can go wrong reading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file ends early or has a partial record.
    #[error("{path} is truncated: {detail}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was expected.
        detail: String,
    },
    /// The content is not the expected format.
    #[error("{path} is not a valid {format} file: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The expected format.
        format: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Files that must agree (images and labels, several batches) do not.
    #[error("inconsistent dataset: {0}")]
    Inconsistent(String),
    /// The training and test splits of a dataset do not fit one model.
    #[error(
        "the training and test splits of {} differ: {what} {train} (training) vs {test} (test)",
        .data.display()
    )]
    SplitsDiffer {
        /// The dataset location.
        data: PathBuf,
        /// What differs.
        what: &'static str,
        /// The training split's value.
        train: String,
        /// The test split's value.
        test: String,
    },
    /// A class folder of the test split that the training split does not have (its images
    /// could not get the label the model learned for them).
    #[error(
        "{}: class `{class}` has no folder in the training split ({}); labels are numbered by \
         the training split's class folders",
        .folder.display(),
        .known.join(", ")
    )]
    ClassNotInTraining {
        /// The test split's folder.
        folder: PathBuf,
        /// The class.
        class: String,
        /// The training split's classes.
        known: Vec<String>,
    },
    /// The data would not fit in memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
}

/// The bytes of `path`; a failure is a [`DataError::Io`] naming it.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

//! What can go wrong writing or reading a run artifact.

use std::io;
use std::path::{Path, PathBuf};

/// The result type of the artifacts module.
pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// What went wrong while writing or reading a run artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// An operating-system call on `path` failed.
    #[error("{}: {op} failed: {source}", .path.display())]
    Io {
        /// The file or folder the call was about.
        path: PathBuf,
        /// What was being done (`"open"`, `"write"`, `"rename"`, ...).
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the magic bytes of its format.
    #[error("{}: not an IRE checkpoint (wrong magic bytes)", .path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// The file's format version is not one this build reads.
    #[error(
        "{}: checkpoint format version {found} is not supported (this build reads version \
         {supported}{})",
        .path.display(),
        if *.found > *.supported { "; the file was written by a newer ire-models" } else { "" }
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version the file declares.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The file ends before the data its header announces.
    #[error("{}: truncated: {detail}", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where it ends and what was still expected.
        detail: String,
    },
    /// The file goes on after the end of the data its header announces.
    #[error("{}: {extra} unexpected trailing byte(s) after the end of the data", .path.display())]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// How many bytes too many.
        extra: u64,
    },
    /// A checksum does not match, or a header field is impossible.
    #[error("{}: corrupt: {detail}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which check failed.
        detail: String,
    },
    /// The caller asked for something that cannot be written (duplicate names, a shape that does
    /// not match the data, a path without a file name, ...).
    #[error("{}: invalid input: {detail}", .path.display())]
    InvalidInput {
        /// The file that was to be written.
        path: PathBuf,
        /// What is wrong with the input.
        detail: String,
    },
    /// A line of a JSON-lines file is not valid JSON.
    #[error("{}: line {line}: malformed JSON: {source}", .path.display())]
    Jsonl {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// Drawing or encoding a plot failed.
    #[error("{}: plotting failed: {detail}", .path.display())]
    Plot {
        /// The image file.
        path: PathBuf,
        /// The drawing library's error.
        detail: String,
    },
    /// The `safetensors` library rejected the data or the file.
    #[error("{}: safetensors: {detail}", .path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The library's error, or which tensor is unsupported.
        detail: String,
    },
    /// A value could not be encoded with [`checkpoint::encode`](super::checkpoint::encode).
    #[error("binary encoding failed: {0}")]
    Encode(String),
    /// Bytes could not be decoded with [`checkpoint::decode`](super::checkpoint::decode).
    #[error("binary decoding failed: {0}")]
    Decode(String),
}

impl ArtifactError {
    /// An [`ArtifactError::Io`] for `path`.
    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// An [`ArtifactError::InvalidInput`] for `path`.
    pub(crate) fn invalid(path: &Path, detail: impl Into<String>) -> Self {
        Self::InvalidInput {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    /// The file the error is about, when it is about one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Io { path, .. }
            | Self::BadMagic { path }
            | Self::UnsupportedVersion { path, .. }
            | Self::Truncated { path, .. }
            | Self::TrailingBytes { path, .. }
            | Self::Corrupt { path, .. }
            | Self::InvalidInput { path, .. }
            | Self::Jsonl { path, .. }
            | Self::Plot { path, .. }
            | Self::Safetensors { path, .. } => Some(path),
            Self::Encode(_) | Self::Decode(_) => None,
        }
    }
}

//! What can go wrong with text data, and the one fallible way text files are read.

use std::path::{Path, PathBuf};

/// What can go wrong reading, tokenizing or windowing text.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A corpus file has no bytes.
    #[error("{path} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A corpus file is not UTF-8.
    #[error("{path} is not valid UTF-8: invalid byte sequence at byte offset {offset}")]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// A character the (character-level) vocabulary does not contain.
    #[error("character {ch:?} at byte offset {offset} is not in the {tokenizer} vocabulary")]
    UnknownChar {
        /// The tokenizer's name.
        tokenizer: String,
        /// The character.
        ch: char,
        /// Its byte offset in the encoded text.
        offset: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the {tokenizer} vocabulary of {vocab_size} ids")]
    UnknownId {
        /// The tokenizer's name.
        tokenizer: String,
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A saved tokenizer (or other text-data file) is malformed.
    #[error("{path} is not a valid {what}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the file should have been.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A tokenizer could not be built or its name is unknown.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The tokens are too few for one window of `context` inputs plus the shifted target.
    #[error("the split has {tokens} tokens but context {context} needs at least {needed}")]
    TooShort {
        /// Tokens available.
        tokens: usize,
        /// The context length asked for.
        context: usize,
        /// `context + 1`.
        needed: usize,
    },
    /// A setting out of its range (zero context or batch).
    #[error("invalid setting: {0}")]
    Config(String),
    /// A file too large for the memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
}

/// The bytes of `path`; its size comes from the file, so the buffer is reserved fallibly and
/// checked against the memory limit.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, TextError> {
    let io = |source| TextError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    crate::memory::read_all(f, len, || format!("the file {}", path.display())).map_err(
        |e| match e {
            crate::memory::MemoryError::Read { source, .. } => io(source),
            other => other.into(),
        },
    )
}

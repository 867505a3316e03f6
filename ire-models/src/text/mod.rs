//! Text data for language models: plain-text corpora, a documented train/validation split,
//! character-, word- and GPT-2 BPE tokenizers, a token cache, and context windows.
//!
//! ```no_run
//! use std::path::Path;
//! use ire_models::text::{CharTokenizer, Corpus, TokenBatches, Tokenizer};
//!
//! # fn main() -> Result<(), ire_models::text::TextError> {
//! let corpus = Corpus::load(Path::new("tinyshakespeare.txt"))?;
//! let (train, val) = corpus.split(0.1);
//! let tok = CharTokenizer::fit(&train);
//! let batches = TokenBatches::new(tok.encode(&train)?, 64, 12, 1337)?;
//! let (inputs, targets) = batches.random_batch(0); // 12 × 64 ids each, row-major
//! # let _ = (val, inputs, targets);
//! # Ok(())
//! # }
//! ```
//!
//! Every failure (an unreadable file, invalid UTF-8, a character outside the vocabulary, a
//! split shorter than one window) is a [`TextError`] naming the file or the problem, never a
//! panic.

mod batches;
mod cache;
mod corpus;
mod gpt2;
mod tokenizer;

pub use batches::{RANDOM_BATCH_STREAM, SequentialBatch, SequentialBatches, TokenBatches};
pub use cache::{
    CACHE_MAGIC, CACHE_VERSION, CacheStatus, cache_file, tokenize_cached, tokenize_cached_status,
    tokenize_text_cached,
};
pub use corpus::{Corpus, split_point};
pub use gpt2::Gpt2Tokenizer;
pub use tokenizer::{
    CharTokenizer, EOS, TokenizerKind, UNK, WordTokenizer, load_tokenizer, python_lines,
    python_words,
};

use std::path::{Path, PathBuf};

/// A tokenizer: text to ids in `0..vocab_size()` and back.
///
/// Object safe, so a run can hold a `Box<dyn Tokenizer + Send + Sync>` chosen at run time
/// ([`TokenizerKind`], [`load_tokenizer`]).
pub trait Tokenizer {
    /// A short name of the scheme (`char`, `word`, `gpt2`); part of the token cache key.
    fn name(&self) -> &str;
    /// Number of ids; every id produced by [`Tokenizer::encode`] is below it.
    fn vocab_size(&self) -> usize;
    /// The ids of `text`.
    fn encode(&self, text: &str) -> Result<Vec<u32>, TextError>;
    /// The text of `ids`; an id outside the vocabulary is an error.
    fn decode(&self, ids: &[u32]) -> Result<String, TextError>;
    /// A hex digest identifying the vocabulary, so that cached ids of one vocabulary are never
    /// read back for another. The default hashes the name and the decoding of every id.
    fn fingerprint(&self) -> String {
        let mut h = Digest::new("tokenizer");
        h.bytes(self.name().as_bytes());
        h.u64(self.vocab_size() as u64);
        for id in 0..self.vocab_size() {
            match self.decode(&[id as u32]) {
                Ok(s) => h.bytes(s.as_bytes()),
                Err(_) => h.bytes(b"\xff"),
            }
        }
        h.hex()
    }
}

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

/// SHA-256 over length-prefixed fields, so that field boundaries are part of the digest.
pub(crate) struct Digest(sha2::Sha256);

impl Digest {
    pub(crate) fn new(domain: &str) -> Self {
        use sha2::Digest as _;
        let mut d = Digest(sha2::Sha256::new());
        d.bytes(domain.as_bytes());
        d
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        use sha2::Digest as _;
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
    }

    pub(crate) fn u64(&mut self, x: u64) {
        use sha2::Digest as _;
        self.0.update(x.to_le_bytes());
    }

    pub(crate) fn finish(self) -> [u8; 32] {
        use sha2::Digest as _;
        self.0.finalize().into()
    }

    pub(crate) fn hex(self) -> String {
        hex(&self.finish())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

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
mod digest;
mod error;
mod gpt2;
mod kind;
mod tokenize;
mod tokenizer;
mod tokenizer_file;

pub use batches::{RANDOM_BATCH_STREAM, SequentialBatch, SequentialBatches, TokenBatches};
pub use cache::{
    CACHE_MAGIC, CACHE_VERSION, CacheStatus, cache_file, tokenize_cached, tokenize_cached_status,
    tokenize_text_cached,
};
pub use corpus::{Corpus, split_point};
pub use error::TextError;
pub use gpt2::Gpt2Tokenizer;
pub use kind::{TokenizerKind, load_tokenizer};
pub use tokenize::Tokenizer;
pub use tokenizer::{CharTokenizer, EOS, UNK, WordTokenizer, python_lines, python_words};

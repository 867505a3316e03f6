//! The [`Tokenizer`] trait every tokenizer implements.

use super::digest::Digest;
use super::error::TextError;

/// A tokenizer: text to ids in `0..vocab_size()` and back.
///
/// Object safe, so a run can hold a `Box<dyn Tokenizer + Send + Sync>` chosen at run time
/// ([`TokenizerKind`](super::TokenizerKind), [`load_tokenizer`](super::load_tokenizer)).
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

//! GPT-2 byte-level BPE (`r50k_base`) through `tiktoken-rs`, which embeds the vocabulary.

use std::path::Path;

use rayon::prelude::*;
use tiktoken_rs::CoreBPE;

use super::digest::Digest;
use super::error::TextError;
use super::tokenize::Tokenizer;
use super::tokenizer_file::write_gpt2_json;

/// GPT-2's tokenizer: 50,257 ids (50,256 byte-pair merges of the byte alphabet plus
/// `<|endoftext|>` = 50256). The text is encoded as ordinary text (nanoGPT's
/// `encode_ordinary`: a literal `<|endoftext|>` in a corpus is not the special token).
/// Decoding replaces bytes that are not UTF-8 (a sequence cut inside a character) by U+FFFD,
/// so sampled ids always decode.
#[derive(Clone)]
pub struct Gpt2Tokenizer {
    bpe: CoreBPE,
}

impl std::fmt::Debug for Gpt2Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gpt2Tokenizer(r50k_base)")
    }
}

/// Texts shorter than this are encoded on one thread.
const PARALLEL_CHUNK: usize = 1 << 18;

impl Gpt2Tokenizer {
    /// The encoding's name in `tiktoken`.
    pub const ENCODING: &'static str = "r50k_base";
    /// Number of ids.
    pub const VOCAB_SIZE: usize = 50_257;
    /// The id of `<|endoftext|>`.
    pub const END_OF_TEXT: u32 = 50_256;

    /// Builds the tokenizer from the vocabulary embedded in `tiktoken-rs` (no download).
    pub fn new() -> Result<Gpt2Tokenizer, TextError> {
        let bpe = tiktoken_rs::r50k_base()
            .map_err(|e| TextError::Tokenizer(format!("GPT-2 r50k_base: {e}")))?;
        Ok(Gpt2Tokenizer { bpe })
    }

    /// Encodes on one thread, the whole text at once (the reference for [`Tokenizer::encode`],
    /// which splits long texts).
    pub fn encode_serial(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    /// Writes `{"kind": "gpt2", "version": 1, "encoding": "r50k_base"}`.
    pub fn save(&self, path: &Path) -> Result<(), TextError> {
        write_gpt2_json(path, Self::ENCODING)
    }
}

/// Byte offsets where a long text can be cut without changing its BPE ids: just after a `\n`
/// that has a printable ASCII character on each side.
///
/// GPT-2's pre-tokenizer splits the text into pieces by the pattern
/// `'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s` and encodes
/// each piece alone. In `x\ny` with `x`, `y` not whitespace, only the whitespace branches can
/// match `\n`, and they match it alone (`\s+(?!\S)` cannot stop before `y`), so `\n` is one
/// piece whether or not the text ends after it (where `\s++$` matches it instead); no branch
/// looks behind, so the pieces after the cut are the same too.
fn cut_points(text: &str, chunk: usize) -> Vec<usize> {
    let b = text.as_bytes();
    let printable = |c: u8| c.is_ascii_graphic();
    let mut cuts = vec![0];
    let mut at = chunk;
    while at < b.len() {
        let found = (at.max(2)..b.len())
            .find(|&p| b[p - 1] == b'\n' && printable(b[p - 2]) && printable(b[p]));
        match found {
            Some(p) => {
                cuts.push(p);
                at = p + chunk;
            }
            None => break,
        }
    }
    cuts.push(b.len());
    cuts
}

impl Tokenizer for Gpt2Tokenizer {
    fn name(&self) -> &str {
        "gpt2"
    }

    fn vocab_size(&self) -> usize {
        Self::VOCAB_SIZE
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        if text.len() < 2 * PARALLEL_CHUNK {
            return Ok(self.encode_serial(text));
        }
        // The regex pre-tokenizer is the cost; pieces never span the cuts (see `cut_points`),
        // so chunks encode in parallel to exactly the ids of the whole text.
        let cuts = cut_points(text, PARALLEL_CHUNK);
        let parts: Vec<Vec<u32>> = cuts
            .par_windows(2)
            .map(|w| self.bpe.encode_ordinary(&text[w[0]..w[1]]))
            .collect();
        Ok(parts.concat())
    }

    fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= Self::VOCAB_SIZE) {
            return Err(TextError::UnknownId {
                tokenizer: self.name().to_string(),
                id,
                vocab_size: Self::VOCAB_SIZE,
            });
        }
        let bytes = self
            .bpe
            .decode_bytes(ids)
            .map_err(|e| TextError::UnknownId {
                tokenizer: self.name().to_string(),
                id: e.token,
                vocab_size: Self::VOCAB_SIZE,
            })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn fingerprint(&self) -> String {
        let mut h = Digest::new("gpt2");
        for id in 0..Self::VOCAB_SIZE as u32 {
            match self.bpe.decode_bytes(&[id]) {
                Ok(b) => h.bytes(&b),
                Err(_) => h.bytes(b"\xff"),
            }
        }
        h.hex()
    }
}

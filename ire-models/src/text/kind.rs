//! The run-time choice of a tokenizer: by name, or from a saved tokenizer file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::TextError;
use super::gpt2::Gpt2Tokenizer;
use super::tokenize::Tokenizer;
use super::tokenizer::{CharTokenizer, WordTokenizer};
use super::tokenizer_file::{TokenizerFile, bad_file, read_json};

/// Reads any tokenizer saved by [`CharTokenizer::save`], [`WordTokenizer::save`] or
/// [`Gpt2Tokenizer::save`] (the file's `kind` field says which).
pub fn load_tokenizer(path: &Path) -> Result<Box<dyn Tokenizer + Send + Sync>, TextError> {
    Ok(match read_json(path)? {
        TokenizerFile::Char { chars, .. } => Box::new(CharTokenizer::from_chars(chars, path)?),
        TokenizerFile::Word { words, .. } => Box::new(WordTokenizer::from_words(words, path)?),
        TokenizerFile::Gpt2 { encoding, .. } => {
            if encoding != Gpt2Tokenizer::ENCODING {
                return Err(bad_file(
                    path,
                    format!(
                        "encoding {encoding:?}, only {:?} is known",
                        Gpt2Tokenizer::ENCODING
                    ),
                ));
            }
            Box::new(Gpt2Tokenizer::new()?)
        }
    })
}

/// The tokenizers, by name, for a run's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// [`CharTokenizer`].
    Char,
    /// [`WordTokenizer`].
    Word,
    /// [`Gpt2Tokenizer`].
    Gpt2,
}

impl TokenizerKind {
    /// `char`, `word` or `gpt2`.
    pub fn from_name(name: &str) -> Result<TokenizerKind, TextError> {
        match name {
            "char" => Ok(TokenizerKind::Char),
            "word" => Ok(TokenizerKind::Word),
            "gpt2" => Ok(TokenizerKind::Gpt2),
            other => Err(TextError::Tokenizer(format!(
                "unknown tokenizer {other:?} (char, word or gpt2)"
            ))),
        }
    }

    /// The tokenizer of this kind: fitted on `train_text` for `char` and `word`, the fixed
    /// GPT-2 vocabulary for `gpt2` (which ignores the text).
    pub fn build(self, train_text: &str) -> Result<Box<dyn Tokenizer + Send + Sync>, TextError> {
        Ok(match self {
            TokenizerKind::Char => Box::new(CharTokenizer::fit(train_text)),
            TokenizerKind::Word => Box::new(WordTokenizer::fit(train_text)),
            TokenizerKind::Gpt2 => Box::new(Gpt2Tokenizer::new()?),
        })
    }
}

impl std::str::FromStr for TokenizerKind {
    type Err = TextError;
    fn from_str(s: &str) -> Result<Self, TextError> {
        TokenizerKind::from_name(s)
    }
}

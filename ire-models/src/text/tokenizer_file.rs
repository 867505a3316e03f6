//! The JSON file a tokenizer is saved to, tagged by its kind.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{TextError, read_file};

pub(crate) const FILE_VERSION: u32 = 1;

/// A saved tokenizer, tagged by its kind.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum TokenizerFile {
    Char { version: u32, chars: Vec<char> },
    Word { version: u32, words: Vec<String> },
    Gpt2 { version: u32, encoding: String },
}

pub(crate) fn write_json(path: &Path, file: &TokenizerFile) -> Result<(), TextError> {
    let json = serde_json::to_string_pretty(file).map_err(|e| TextError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(path, json + "\n").map_err(|source| TextError::Write {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn write_gpt2_json(path: &Path, encoding: &str) -> Result<(), TextError> {
    write_json(
        path,
        &TokenizerFile::Gpt2 {
            version: FILE_VERSION,
            encoding: encoding.to_string(),
        },
    )
}

pub(crate) fn read_json(path: &Path) -> Result<TokenizerFile, TextError> {
    let bytes = read_file(path)?;
    let file: TokenizerFile = serde_json::from_slice(&bytes).map_err(|e| TextError::Format {
        path: path.to_path_buf(),
        what: "tokenizer file",
        detail: e.to_string(),
    })?;
    let version = match &file {
        TokenizerFile::Char { version, .. }
        | TokenizerFile::Word { version, .. }
        | TokenizerFile::Gpt2 { version, .. } => *version,
    };
    if version != FILE_VERSION {
        return Err(TextError::Format {
            path: path.to_path_buf(),
            what: "tokenizer file",
            detail: format!("version {version}, this build reads version {FILE_VERSION}"),
        });
    }
    Ok(file)
}

pub(crate) fn bad_file(path: &Path, detail: String) -> TextError {
    TextError::Format {
        path: path.to_path_buf(),
        what: "tokenizer file",
        detail,
    }
}

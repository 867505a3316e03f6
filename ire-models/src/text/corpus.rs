//! Plain-text corpora and the train/validation split.

use std::path::Path;

use super::error::{TextError, read_file};

/// A plain-text corpus held in memory: any UTF-8 text file, the WikiText raw and token files
/// (`wiki.train.raw`, `wiki.train.tokens`, `train.txt`, ...) included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corpus {
    /// The whole text, exactly as in the file.
    pub text: String,
    /// The file's name (without its folder), or a name given to [`Corpus::from_text`].
    pub name: String,
}

impl Corpus {
    /// Reads a UTF-8 text file. An empty file, or invalid UTF-8 (reported with the byte offset
    /// of the first invalid sequence), is an error.
    pub fn load(path: &Path) -> Result<Corpus, TextError> {
        let bytes = read_file(path)?;
        let text = utf8(path, bytes)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string_lossy().into_owned());
        Ok(Corpus { text, name })
    }

    /// A corpus from text already in memory.
    pub fn from_text(name: &str, text: &str) -> Corpus {
        Corpus {
            text: text.to_string(),
            name: name.to_string(),
        }
    }

    /// `(train, validation)`: the validation part is the LAST `val_fraction` of the text, moved
    /// to a line boundary by the rule of [`split_point`] (as nanoGPT's `shakespeare_char`: the
    /// first 90 % trains, the last 10 % validates, for `val_fraction = 0.1`). The two parts
    /// concatenate to the whole text. `val_fraction` is clamped to `[0, 1]` (NaN counts as 0).
    pub fn split(&self, val_fraction: f64) -> (String, String) {
        let cut = split_point(&self.text, val_fraction);
        (self.text[..cut].to_string(), self.text[cut..].to_string())
    }
}

/// Checks that `bytes` are UTF-8, naming the byte offset of the first invalid sequence.
pub(crate) fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String, TextError> {
    if bytes.is_empty() {
        return Err(TextError::Empty {
            path: path.to_path_buf(),
        });
    }
    String::from_utf8(bytes).map_err(|e| TextError::InvalidUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// The byte offset where [`Corpus::split`] cuts `text` (train `text[..cut]`, validation
/// `text[cut..]`), for `f = val_fraction` clamped to `[0, 1]` and `n = text.len()` bytes:
///
/// 1. `f = 0` cuts at `n` (no validation text). Otherwise the target is `t = ⌊n (1 − f)⌋`.
/// 2. If `t` is at the start of a line (`t = 0` or the byte before it is `\n`), cut at `t`.
/// 3. Otherwise cut at the start of the next line, if that start is before the end of the text.
/// 4. Otherwise (`t` falls inside the last line) cut at the start of that last line, so the
///    validation text is not empty; and if the text is a single line, at the first character
///    boundary at or after `t`.
pub fn split_point(text: &str, val_fraction: f64) -> usize {
    let n = text.len();
    let f = if val_fraction.is_nan() {
        0.0
    } else {
        val_fraction.clamp(0.0, 1.0)
    };
    if f == 0.0 {
        return n;
    }
    let t = ((n as f64 * (1.0 - f)).floor() as usize).min(n);
    let b = text.as_bytes();
    if t == 0 || b[t - 1] == b'\n' {
        return t;
    }
    if let Some(i) = b[t..].iter().position(|&c| c == b'\n') {
        let next = t + i + 1;
        if next < n {
            return next;
        }
    }
    match b[..t].iter().rposition(|&c| c == b'\n') {
        Some(i) => i + 1,
        None => (t..=n).find(|&i| text.is_char_boundary(i)).unwrap_or(n),
    }
}

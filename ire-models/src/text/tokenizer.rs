//! Character- and word-level tokenizers.

use std::collections::HashMap;
use std::path::Path;

use super::digest::Digest;
use super::error::TextError;
use super::tokenize::Tokenizer;
use super::tokenizer_file::{FILE_VERSION, TokenizerFile, bad_file, read_json, write_json};

/// The end-of-line token of the word-level tokenizer.
pub const EOS: &str = "<eos>";
/// The unknown-word token of the word-level tokenizer (WikiText's own spelling).
pub const UNK: &str = "<unk>";

// ------------------------------------------------------------------------------------------
// Characters
// ------------------------------------------------------------------------------------------

/// Character-level tokenizer: the id of a character is its rank among the distinct characters
/// of the fitted text, sorted by code point (nanoGPT's `shakespeare_char`: `sorted(set(text))`;
/// 65 ids on `tinyshakespeare.txt`, `\n` = 0, space = 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
    index: HashMap<char, u32>,
    // Direct table for ASCII, the common case; `u32::MAX` marks a character not in the vocabulary.
    ascii: [u32; 128],
}

impl CharTokenizer {
    /// The distinct characters of `text`, sorted by code point.
    pub fn fit(text: &str) -> CharTokenizer {
        let mut seen = [false; 128];
        let mut other: Vec<char> = Vec::new();
        for c in text.chars() {
            if c.is_ascii() {
                seen[c as usize] = true;
            } else {
                other.push(c);
            }
        }
        other.sort_unstable();
        other.dedup();
        let mut chars: Vec<char> = (0u8..128)
            .filter(|&b| seen[b as usize])
            .map(char::from)
            .collect();
        chars.extend(other);
        Self::build(chars)
    }

    fn build(chars: Vec<char>) -> CharTokenizer {
        let mut ascii = [u32::MAX; 128];
        let mut index = HashMap::with_capacity(chars.len());
        for (i, &c) in chars.iter().enumerate() {
            index.insert(c, i as u32);
            if c.is_ascii() {
                ascii[c as usize] = i as u32;
            }
        }
        CharTokenizer {
            chars,
            index,
            ascii,
        }
    }

    pub(crate) fn from_chars(chars: Vec<char>, path: &Path) -> Result<CharTokenizer, TextError> {
        let t = Self::build(chars);
        if t.index.len() != t.chars.len() {
            return Err(bad_file(path, "a character is listed twice".into()));
        }
        Ok(t)
    }

    /// The vocabulary: the character of each id.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// Writes the vocabulary as JSON (`{"kind": "char", "version": 1, "chars": [...]}`).
    pub fn save(&self, path: &Path) -> Result<(), TextError> {
        write_json(
            path,
            &TokenizerFile::Char {
                version: FILE_VERSION,
                chars: self.chars.clone(),
            },
        )
    }

    /// Reads a file written by [`CharTokenizer::save`].
    pub fn load(path: &Path) -> Result<CharTokenizer, TextError> {
        match read_json(path)? {
            TokenizerFile::Char { chars, .. } => Self::from_chars(chars, path),
            _ => Err(bad_file(path, "not a character tokenizer".into())),
        }
    }
}

impl Tokenizer for CharTokenizer {
    fn name(&self) -> &str {
        "char"
    }

    fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let mut ids = Vec::with_capacity(text.len());
        for (offset, c) in text.char_indices() {
            let id = if c.is_ascii() {
                Some(self.ascii[c as usize]).filter(|&i| i != u32::MAX)
            } else {
                self.index.get(&c).copied()
            };
            match id {
                Some(id) => ids.push(id),
                None => {
                    return Err(TextError::UnknownChar {
                        tokenizer: self.name().to_string(),
                        ch: c,
                        offset,
                    });
                }
            }
        }
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        ids.iter()
            .map(|&id| {
                self.chars
                    .get(id as usize)
                    .copied()
                    .ok_or_else(|| TextError::UnknownId {
                        tokenizer: self.name().to_string(),
                        id,
                        vocab_size: self.chars.len(),
                    })
            })
            .collect()
    }

    fn fingerprint(&self) -> String {
        let mut h = Digest::new("char");
        h.bytes(self.chars.iter().collect::<String>().as_bytes());
        h.hex()
    }
}

// ------------------------------------------------------------------------------------------
// Words
// ------------------------------------------------------------------------------------------

/// The lines of `text` as Python's text-mode file iteration yields them, without their
/// terminators: `\n`, `\r\n` and a lone `\r` end a line (universal newlines), an empty text has
/// no line, and a final terminator does not start another line.
pub fn python_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let b = rest.as_bytes();
        match b.iter().position(|&c| c == b'\n' || c == b'\r') {
            None => {
                let line = rest;
                rest = "";
                Some(line)
            }
            Some(i) => {
                let line = &rest[..i];
                let skip = if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
                Some(line)
            }
        }
    })
}

// Python's `str.isspace` is Rust's Unicode White_Space plus the four information separators
// U+001C..U+001F; matching it keeps the word split identical to the official `line.split()`.
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The words of a line as Python's `line.split()`: maximal runs of non-whitespace.
pub fn python_words(line: &str) -> impl Iterator<Item = &str> {
    line.split(python_space).filter(|w| !w.is_empty())
}

/// The paper's WikiText-2 word-level tokenizer (the `Corpus`/`Dictionary` of the official
/// code's `NLP/small-scale/data.py`): each line becomes its whitespace-separated words followed
/// by [`EOS`] ([`python_lines`], [`python_words`]); ids are given in order of first appearance.
///
/// Differences from the official code, which builds one dictionary over the train, validation
/// and test files together: here the vocabulary comes from the training text only, and a word
/// it lacks encodes as [`UNK`] (appended after fitting when the text has none; WikiText's files
/// already use `<unk>`, and on WikiText-2 every validation and test word is in the training
/// vocabulary, so the ids are the official ones). Decoding joins words with spaces and turns
/// [`EOS`] into a newline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WordTokenizer {
    words: Vec<String>,
    index: HashMap<String, u32>,
    eos: u32,
    unk: u32,
}

impl WordTokenizer {
    /// The vocabulary of `train_text` in order of first appearance, plus [`EOS`] and [`UNK`] if
    /// the text does not produce them.
    pub fn fit(train_text: &str) -> WordTokenizer {
        let mut words: Vec<String> = Vec::new();
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut add = |w: &str, words: &mut Vec<String>| {
            if !index.contains_key(w) {
                index.insert(w.to_string(), words.len() as u32);
                words.push(w.to_string());
            }
        };
        for line in python_lines(train_text) {
            for w in python_words(line) {
                add(w, &mut words);
            }
            add(EOS, &mut words);
        }
        add(EOS, &mut words);
        add(UNK, &mut words);
        Self::build(words)
    }

    fn build(words: Vec<String>) -> WordTokenizer {
        let index: HashMap<String, u32> = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        let eos = index.get(EOS).copied().unwrap_or(u32::MAX);
        let unk = index.get(UNK).copied().unwrap_or(u32::MAX);
        WordTokenizer {
            words,
            index,
            eos,
            unk,
        }
    }

    pub(crate) fn from_words(words: Vec<String>, path: &Path) -> Result<WordTokenizer, TextError> {
        if let Some(w) = words
            .iter()
            .find(|w| w.is_empty() || w.chars().any(python_space))
        {
            return Err(bad_file(
                path,
                format!("word {w:?} is empty or contains whitespace"),
            ));
        }
        let t = Self::build(words);
        if t.index.len() != t.words.len() {
            return Err(bad_file(path, "a word is listed twice".into()));
        }
        if t.eos == u32::MAX || t.unk == u32::MAX {
            return Err(bad_file(
                path,
                format!("the vocabulary lacks {EOS} or {UNK}"),
            ));
        }
        Ok(t)
    }

    /// The vocabulary: the word of each id.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// The id of a word, if it is in the vocabulary.
    pub fn id(&self, word: &str) -> Option<u32> {
        self.index.get(word).copied()
    }

    /// The id of [`EOS`].
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The id of [`UNK`].
    pub fn unk_id(&self) -> u32 {
        self.unk
    }

    /// Writes the vocabulary as JSON (`{"kind": "word", "version": 1, "words": [...]}`).
    pub fn save(&self, path: &Path) -> Result<(), TextError> {
        write_json(
            path,
            &TokenizerFile::Word {
                version: FILE_VERSION,
                words: self.words.clone(),
            },
        )
    }

    /// Reads a file written by [`WordTokenizer::save`].
    pub fn load(path: &Path) -> Result<WordTokenizer, TextError> {
        match read_json(path)? {
            TokenizerFile::Word { words, .. } => Self::from_words(words, path),
            _ => Err(bad_file(path, "not a word tokenizer".into())),
        }
    }
}

impl Tokenizer for WordTokenizer {
    fn name(&self) -> &str {
        "word"
    }

    fn vocab_size(&self) -> usize {
        self.words.len()
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let mut ids = Vec::with_capacity(text.len() / 5);
        for line in python_lines(text) {
            ids.extend(python_words(line).map(|w| self.index.get(w).copied().unwrap_or(self.unk)));
            ids.push(self.eos);
        }
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        let mut out = String::new();
        let mut line_start = true;
        for &id in ids {
            let word = self
                .words
                .get(id as usize)
                .ok_or_else(|| TextError::UnknownId {
                    tokenizer: self.name().to_string(),
                    id,
                    vocab_size: self.words.len(),
                })?;
            if id == self.eos {
                out.push('\n');
                line_start = true;
            } else {
                if !line_start {
                    out.push(' ');
                }
                out.push_str(word);
                line_start = false;
            }
        }
        Ok(out)
    }

    fn fingerprint(&self) -> String {
        let mut h = Digest::new("word");
        for w in &self.words {
            h.bytes(w.as_bytes());
        }
        h.hex()
    }
}

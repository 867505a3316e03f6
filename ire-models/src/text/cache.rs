//! A token cache, so that a corpus is tokenized once per tokenizer.
//!
//! A cache file is named from a SHA-256 key over (corpus bytes, tokenizer name, vocabulary
//! fingerprint) and holds, little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic [`CACHE_MAGIC`] |
//! | 4 | format version [`CACHE_VERSION`] (`u32`) |
//! | 32 | the key |
//! | 8 | number of ids `n` (`u64`) |
//! | 4 n | the ids (`u32`) |
//! | 4 | CRC-32 of all the bytes before it |
//!
//! It is written to a temporary file in the same folder and renamed into place, so a reader
//! never sees a partial file. A file that fails any check (length, magic, version, key, CRC, an
//! id outside the vocabulary) is ignored and rebuilt, never trusted.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::corpus::utf8;
use super::digest::{Digest, hex};
use super::error::{TextError, read_file};
use super::tokenize::Tokenizer;

/// First bytes of a token-cache file.
pub const CACHE_MAGIC: [u8; 8] = *b"IRETOKS\0";
/// Version of the token-cache format.
pub const CACHE_VERSION: u32 = 1;

const HEADER: usize = 8 + 4 + 32 + 8;

/// Where [`tokenize_cached_status`] found the ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Read from a valid cache file.
    Hit,
    /// No cache file: tokenized and written.
    Built,
    /// A cache file existed but failed a check: tokenized again and rewritten.
    Rebuilt,
}

/// The ids of the text file `corpus_path` under `tok`, read from `cache_dir` when a valid cache
/// file exists, otherwise tokenized and cached there (the folder is created if needed).
pub fn tokenize_cached(
    corpus_path: &Path,
    tok: &dyn Tokenizer,
    cache_dir: &Path,
) -> Result<Vec<u32>, TextError> {
    tokenize_cached_status(corpus_path, tok, cache_dir).map(|(ids, _)| ids)
}

/// [`tokenize_cached`], also saying whether the cache was hit.
pub fn tokenize_cached_status(
    corpus_path: &Path,
    tok: &dyn Tokenizer,
    cache_dir: &Path,
) -> Result<(Vec<u32>, CacheStatus), TextError> {
    let bytes = read_file(corpus_path)?;
    let label = label_of(corpus_path);
    let key = key(&bytes, tok);
    let path = cache_dir.join(file_name(&label, tok, &key));
    if let Some(hit) = read_cache(&path, &key, tok.vocab_size()) {
        return Ok((hit, CacheStatus::Hit));
    }
    let text = utf8(corpus_path, bytes)?;
    build(&text, tok, cache_dir, &path, &key)
}

/// The same cache for text already in memory (a train or validation split), under a `label`
/// that only names the file: the key is the text itself.
pub fn tokenize_text_cached(
    text: &str,
    label: &str,
    tok: &dyn Tokenizer,
    cache_dir: &Path,
) -> Result<(Vec<u32>, CacheStatus), TextError> {
    let key = key(text.as_bytes(), tok);
    let path = cache_dir.join(file_name(label, tok, &key));
    if let Some(hit) = read_cache(&path, &key, tok.vocab_size()) {
        return Ok((hit, CacheStatus::Hit));
    }
    build(text, tok, cache_dir, &path, &key)
}

/// The path of the cache file [`tokenize_cached`] uses for this corpus and tokenizer.
pub fn cache_file(
    corpus_path: &Path,
    tok: &dyn Tokenizer,
    cache_dir: &Path,
) -> Result<PathBuf, TextError> {
    let bytes = read_file(corpus_path)?;
    Ok(cache_dir.join(file_name(&label_of(corpus_path), tok, &key(&bytes, tok))))
}

fn build(
    text: &str,
    tok: &dyn Tokenizer,
    cache_dir: &Path,
    path: &Path,
    key: &[u8; 32],
) -> Result<(Vec<u32>, CacheStatus), TextError> {
    let status = if path.exists() {
        CacheStatus::Rebuilt
    } else {
        CacheStatus::Built
    };
    let ids = tok.encode(text)?;
    std::fs::create_dir_all(cache_dir).map_err(|source| TextError::Write {
        path: cache_dir.to_path_buf(),
        source,
    })?;
    write_atomic(path, &serialize(key, &ids))?;
    Ok((ids, status))
}

fn key(bytes: &[u8], tok: &dyn Tokenizer) -> [u8; 32] {
    let mut h = Digest::new("ire token cache");
    h.bytes(bytes);
    h.bytes(tok.name().as_bytes());
    h.bytes(tok.fingerprint().as_bytes());
    h.finish()
}

fn label_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn file_name(label: &str, tok: &dyn Tokenizer, key: &[u8; 32]) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect()
    };
    format!(
        "{}.{}.{}.tokens",
        clean(label),
        clean(tok.name()),
        hex(&key[..12])
    )
}

fn serialize(key: &[u8; 32], ids: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 4 * ids.len() + 4);
    out.extend_from_slice(&CACHE_MAGIC);
    out.extend_from_slice(&CACHE_VERSION.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The ids of a valid cache file; `None` for a missing, unreadable or invalid one.
fn read_cache(path: &Path, key: &[u8; 32], vocab_size: usize) -> Option<Vec<u32>> {
    let b = std::fs::read(path).ok()?;
    parse(&b, key, vocab_size)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn parse(b: &[u8], key: &[u8; 32], vocab_size: usize) -> Option<Vec<u32>> {
    if b.len() < HEADER + 4 || b[..8] != CACHE_MAGIC || u32_at(b, 8)? != CACHE_VERSION {
        return None;
    }
    if &b[12..44] != key {
        return None;
    }
    let count_bytes = b.get(44..52)?;
    let mut c = [0u8; 8];
    c.copy_from_slice(count_bytes);
    let count = usize::try_from(u64::from_le_bytes(c)).ok()?;
    let end = count.checked_mul(4)?.checked_add(HEADER)?;
    if end.checked_add(4)? != b.len() || crc32fast::hash(&b[..end]) != u32_at(b, end)? {
        return None;
    }
    let ids: Vec<u32> = b[HEADER..end]
        .chunks_exact(4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .collect();
    if ids.iter().any(|&id| id as usize >= vocab_size) {
        return None;
    }
    Some(ids)
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TextError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A name unique to this process and call, so concurrent writers never share a temporary
    // file; the rename then replaces the cache file in one step.
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let err = |source| TextError::Write {
        path: tmp.clone(),
        source,
    };
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|source| TextError::Write {
            path: path.to_path_buf(),
            source,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

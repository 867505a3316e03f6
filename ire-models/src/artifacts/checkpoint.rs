//! Checkpoints: a checksummed binary container of named `f32` tensors and byte blobs, plus a JSON
//! metadata string, and the compact binary serde format used for blobs.
//!
//! # File format (version 1; every integer little-endian)
//!
//! ```text
//! offset  size  field
//!      0     8  magic            b"IRECKPT\0"
//!      8     4  version u32      1
//!     12     4  flags u32        0 (reserved)
//!     16     8  header_len u64   H, the size of the header that follows
//!     24     H  header           meta_len u64, meta (UTF-8 JSON text),
//!                                entry_count u64, then per entry:
//!                                  kind u8 (1 = f32 tensor, 2 = byte blob),
//!                                  name_len u32, name (UTF-8),
//!                                  len u64 (elements for a tensor, bytes for a blob)
//!   24+H     4  header_crc u32   CRC-32 of bytes [0, 24+H)
//!   28+H     D  data             each entry's payload in header order, tensors as f32 LE
//!  28+H+D    4  file_crc u32     CRC-32 of bytes [0, 28+H+D)
//! ```
//!
//! The header checksum is checked before any field of the header is believed, and the file's
//! length must equal what the header announces, so truncation, trailing bytes and corruption each
//! get their own error.

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::atomic;
use super::error::{ArtifactError, Result};

/// The first eight bytes of every checkpoint file.
pub const MAGIC: [u8; 8] = *b"IRECKPT\0";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Size of the fixed prelude: magic, version, flags, header length.
const PRELUDE_LEN: usize = 24;
const KIND_TENSOR: u8 = 1;
const KIND_BLOB: u8 = 2;
/// The smallest header entry: kind, name length, element count (with an empty name).
const MIN_ENTRY_LEN: usize = 1 + 4 + 8;

/// Everything a training run needs to resume: opaque JSON metadata, named `f32` tensors
/// (parameters, optimizer state) and named byte blobs (see [`encode`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    /// JSON text describing the run; stored and returned verbatim.
    pub meta: String,
    /// Named `f32` tensors, in order. Names are unique.
    pub tensors: Vec<(String, Vec<f32>)>,
    /// Named byte blobs, in order. Names are unique.
    pub blobs: Vec<(String, Vec<u8>)>,
}

impl Checkpoint {
    /// The tensor called `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The blob called `name`, if any.
    pub fn blob(&self, name: &str) -> Option<&[u8]> {
        self.blobs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Writes `ck` to `path` atomically: a crash never leaves a half-written checkpoint at `path` and
/// never destroys the previous one.
///
/// Fails with [`ArtifactError::InvalidInput`] when two tensors or two blobs share a name.
pub fn write_atomic(path: &Path, ck: &Checkpoint) -> Result<()> {
    check_unique(path, "tensor", ck.tensors.iter().map(|(n, _)| n.as_str()))?;
    check_unique(path, "blob", ck.blobs.iter().map(|(n, _)| n.as_str()))?;
    let mut head = Vec::with_capacity(PRELUDE_LEN + 64 + ck.meta.len());
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&0u64.to_le_bytes()); // header_len, patched below
    head.extend_from_slice(&len_u64(ck.meta.len()).to_le_bytes());
    head.extend_from_slice(ck.meta.as_bytes());
    head.extend_from_slice(&len_u64(ck.tensors.len() + ck.blobs.len()).to_le_bytes());
    let tensor_entries = ck.tensors.iter().map(|(n, v)| (KIND_TENSOR, n, v.len()));
    let blob_entries = ck.blobs.iter().map(|(n, v)| (KIND_BLOB, n, v.len()));
    for (kind, name, len) in tensor_entries.chain(blob_entries) {
        let name_len = u32::try_from(name.len())
            .map_err(|_| ArtifactError::invalid(path, format!("name too long: {name:.64}...")))?;
        head.push(kind);
        head.extend_from_slice(&name_len.to_le_bytes());
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(&len_u64(len).to_le_bytes());
    }
    let header_len = len_u64(head.len() - PRELUDE_LEN);
    head[16..24].copy_from_slice(&header_len.to_le_bytes());
    let header_crc = crc32fast::hash(&head);
    head.extend_from_slice(&header_crc.to_le_bytes());

    atomic::write_with(path, |w| {
        let mut w = CrcWriter {
            inner: w,
            hasher: crc32fast::Hasher::new(),
        };
        w.write_all(&head)?;
        let mut buf = Vec::with_capacity(4 * 8192);
        for (_, t) in &ck.tensors {
            for chunk in t.chunks(8192) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                w.write_all(&buf)?;
            }
        }
        for (_, b) in &ck.blobs {
            w.write_all(b)?;
        }
        let file_crc = w.hasher.clone().finalize();
        w.inner.write_all(&file_crc.to_le_bytes())
    })
}

/// Reads and fully verifies the checkpoint at `path`.
///
/// Wrong magic, an unsupported version, truncation, trailing bytes and checksum mismatches each
/// give their own [`ArtifactError`] naming the file. Lengths are checked against the file's size
/// before anything is allocated.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| ArtifactError::io(path, "read", e))?;
    parse(path, &bytes)
}

/// Parses a checkpoint held in memory; `path` only names it in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let truncated = |detail: String| ArtifactError::Truncated {
        path: path.to_path_buf(),
        detail,
    };
    let corrupt = |detail: String| ArtifactError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let size = bytes.len();

    let magic_len = size.min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(ArtifactError::BadMagic {
            path: path.to_path_buf(),
        });
    }
    if size < PRELUDE_LEN {
        return Err(truncated(format!(
            "the file has {size} bytes, fewer than the {PRELUDE_LEN}-byte prelude"
        )));
    }
    let mut prelude = Cursor::new(&bytes[8..PRELUDE_LEN]);
    let version = prelude.u32().unwrap_or(0);
    let flags = prelude.u32().unwrap_or(0);
    let header_len = prelude.u64().unwrap_or(u64::MAX);
    if version != FORMAT_VERSION {
        return Err(ArtifactError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if flags != 0 {
        return Err(corrupt(format!("unknown flags {flags:#x} in the prelude")));
    }
    let header_end = usize::try_from(header_len)
        .ok()
        .and_then(|h| h.checked_add(PRELUDE_LEN))
        .filter(|&end| end.checked_add(4).is_some_and(|e| e <= size))
        .ok_or_else(|| {
            truncated(format!(
                "the header announces {header_len} bytes but the file has only {size} bytes"
            ))
        })?;
    let header_crc = read_u32_at(bytes, header_end);
    if crc32fast::hash(&bytes[..header_end]) != header_crc {
        return Err(corrupt("header checksum mismatch".into()));
    }

    let entries = parse_header(&bytes[PRELUDE_LEN..header_end]).map_err(corrupt)?;
    let meta = entries.0;
    let entries = entries.1;

    // The header is trustworthy from here on; check the announced size against the file.
    let data_start = header_end + 4;
    let mut expected = Some(data_start as u128);
    for e in &entries {
        let per = if e.kind == KIND_TENSOR { 4 } else { 1 };
        expected = expected.and_then(|x| x.checked_add(u128::from(e.len) * per));
    }
    let expected = expected.and_then(|x| x.checked_add(4)).unwrap_or(u128::MAX);
    let actual = size as u128;
    if actual < expected {
        return Err(truncated(format!(
            "the file has {size} bytes but its header announces {expected}"
        )));
    }
    if actual > expected {
        let extra = u64::try_from(actual - expected).unwrap_or(u64::MAX);
        return Err(ArtifactError::TrailingBytes {
            path: path.to_path_buf(),
            extra,
        });
    }
    let crc_at = size - 4;
    if crc32fast::hash(&bytes[..crc_at]) != read_u32_at(bytes, crc_at) {
        return Err(corrupt("data checksum mismatch".into()));
    }

    // Every length now fits in the file, so the slicing below stays in bounds.
    let mut ck = Checkpoint {
        meta,
        tensors: Vec::new(),
        blobs: Vec::new(),
    };
    let mut data = Cursor::new(&bytes[data_start..crc_at]);
    for e in entries {
        let n = usize::try_from(e.len).map_err(|_| corrupt("entry too large".into()))?;
        if e.kind == KIND_TENSOR {
            let raw = data
                .take(n * 4)
                .ok_or_else(|| corrupt("data overrun".into()))?;
            let values = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            ck.tensors.push((e.name, values));
        } else {
            let raw = data.take(n).ok_or_else(|| corrupt("data overrun".into()))?;
            ck.blobs.push((e.name, raw.to_vec()));
        }
    }
    Ok(ck)
}

struct Entry {
    kind: u8,
    name: String,
    len: u64,
}

/// Parses the (checksummed) header: the metadata text and the entry table.
fn parse_header(header: &[u8]) -> std::result::Result<(String, Vec<Entry>), String> {
    let mut c = Cursor::new(header);
    let short = || "header ends early".to_string();
    let meta_len = c.u64().ok_or_else(short)?;
    let meta_len = usize::try_from(meta_len).map_err(|_| short())?;
    let meta = c.take(meta_len).ok_or_else(short)?;
    let meta = String::from_utf8(meta.to_vec()).map_err(|_| "metadata is not UTF-8".to_string())?;
    let count = c.u64().ok_or_else(short)?;
    if count > (c.remaining() / MIN_ENTRY_LEN) as u64 {
        return Err(format!(
            "the header announces {count} entries, more than it can hold"
        ));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let (mut tensor_names, mut blob_names) = (HashSet::new(), HashSet::new());
    for i in 0..count {
        let kind = c.u8().ok_or_else(short)?;
        if kind != KIND_TENSOR && kind != KIND_BLOB {
            return Err(format!("entry {i} has unknown kind {kind}"));
        }
        let name_len = c.u32().ok_or_else(short)? as usize;
        let name = c.take(name_len).ok_or_else(short)?;
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| format!("entry {i}'s name is not UTF-8"))?;
        let len = c.u64().ok_or_else(short)?;
        let names = if kind == KIND_TENSOR {
            &mut tensor_names
        } else {
            &mut blob_names
        };
        if !names.insert(name.clone()) {
            return Err(format!("duplicate entry name {name:?}"));
        }
        entries.push(Entry { kind, name, len });
    }
    if c.remaining() != 0 {
        return Err(format!(
            "{} unexplained bytes at the end of the header",
            c.remaining()
        ));
    }
    Ok((meta, entries))
}

fn check_unique<'a>(path: &Path, what: &str, names: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut seen = HashSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(ArtifactError::invalid(
                path,
                format!("two {what}s are named {n:?}"),
            ));
        }
    }
    Ok(())
}

fn len_u64(n: usize) -> u64 {
    // usize is at most 64 bits on every supported target.
    n as u64
}

/// Reads a little-endian u32 at `at`; callers have checked `at + 4 <= bytes.len()`.
fn read_u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = bytes.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Self { rest }
    }
    fn remaining(&self) -> usize {
        self.rest.len()
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
}

/// Feeds everything written through it to a CRC-32.
struct CrcWriter<W: Write> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Encodes `v` in a compact, exact binary form (postcard: variable-length integers, floats as
/// their little-endian IEEE bits, so `f32`/`f64` round-trip bit for bit).
///
/// The format is not self-describing: types that need `deserialize_any` (`serde_json::Value`,
/// untagged enums, `#[serde(flatten)]`) cannot be decoded; store those as JSON text instead.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| ArtifactError::Encode(e.to_string()))
}

/// Decodes bytes made by [`encode`]; bytes left over after the value are an error.
///
/// Lengths inside corrupt bytes cannot cause large allocations: sequences grow as elements are
/// actually read, and strings are bounded by the input.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    let (v, rest) =
        postcard::take_from_bytes(b).map_err(|e| ArtifactError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ArtifactError::Decode(format!(
            "{} trailing byte(s) after the value",
            rest.len()
        )));
    }
    Ok(v)
}

//! Metrics as JSON lines: one JSON object per line, each line written whole and flushed, so a
//! crash loses at most the line being written.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::error::{ArtifactError, Result};

/// Appends JSON objects to a `.jsonl` file, one per line.
#[derive(Debug)]
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
    line: Vec<u8>,
}

impl MetricsWriter {
    /// Opens `path` for writing, creating it and its folder when missing.
    ///
    /// With `append`, existing records are kept. A last line without its newline (left by a crash
    /// mid-write) is cut off first so that the next record starts on a line of its own;
    /// [`read_jsonl`] skips such a line anyway. Without `append`, the file is emptied.
    pub fn create(path: &Path, append: bool) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ArtifactError::io(dir, "create folder", e))?;
        }
        let mut opts = OpenOptions::new();
        if append {
            opts.read(true).append(true).create(true);
        } else {
            opts.write(true).create(true).truncate(true);
        }
        let file = opts
            .open(path)
            .map_err(|e| ArtifactError::io(path, "open", e))?;
        if append {
            drop_partial_last_line(&file).map_err(|e| ArtifactError::io(path, "repair", e))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            line: Vec::new(),
        })
    }

    /// Opens `path` (which must exist) for appending, changing nothing in it: for a caller that
    /// knows the file ends with a whole line (a history just cut back to a checkpoint's length).
    pub fn append_unchanged(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| ArtifactError::io(path, "open", e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            line: Vec::new(),
        })
    }

    /// The bytes of the last line written, newline included.
    pub fn last_line(&self) -> &[u8] {
        &self.line
    }

    /// Writes `record` (a JSON object) as one line and flushes it to the operating system.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        if !record.is_object() {
            return Err(ArtifactError::invalid(
                &self.path,
                "a metrics record must be a JSON object",
            ));
        }
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)
            .map_err(|e| ArtifactError::invalid(&self.path, e.to_string()))?;
        self.line.push(b'\n');
        // One write call per line: an O_APPEND write of the whole line lands in one piece.
        self.file
            .write_all(&self.line)
            .map_err(|e| ArtifactError::io(&self.path, "write", e))?;
        self.file
            .flush()
            .map_err(|e| ArtifactError::io(&self.path, "flush", e))
    }

    /// Forces the lines written so far to stable storage (fsync), e.g. when a checkpoint is taken.
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| ArtifactError::io(&self.path, "sync", e))
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Cuts the file after its last newline when it does not end with one.
fn drop_partial_last_line(mut file: &File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = [0u8; 8192];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep != len {
                file.set_len(keep)?;
            }
            return Ok(());
        }
        end = start;
    }
    // No newline at all: the whole content is one partial line.
    if len != 0 {
        file.set_len(0)?;
    }
    Ok(())
}

/// Reads every record of a JSON-lines file.
///
/// Blank lines are skipped. A malformed line is an error naming its 1-based line number, except
/// the last line when the file does not end with a newline: that is a write cut short by a crash,
/// and it is skipped when it does not parse.
pub fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    let bytes = std::fs::read(path).map_err(|e| ArtifactError::io(path, "read", e))?;
    parse_jsonl(path, &bytes)
}

/// The records of the JSON-lines text `bytes` (read from `path`), by the rules of
/// [`read_jsonl`].
pub fn parse_jsonl(path: &Path, bytes: &[u8]) -> Result<Vec<serde_json::Value>> {
    let complete = bytes.last().is_none_or(|&b| b == b'\n');
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // The last piece is empty after a final newline; otherwise it is a line cut short.
    let last = lines.pop();
    let partial = if complete { None } else { last };
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value = serde_json::from_slice(line).map_err(|source| ArtifactError::Jsonl {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        })?;
        out.push(value);
    }
    if let Some(Ok(value)) = partial.map(serde_json::from_slice) {
        out.push(value);
    }
    Ok(out)
}

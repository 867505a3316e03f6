//! The metrics history of a run (`metrics.jsonl`), only ever appended to.
//!
//! A checkpoint records the history it belongs to as a [`HistoryMark`]: the byte length of the
//! file when it was taken and the CRC-32 of those bytes (synced to disk before the checkpoint is
//! written). A resume cuts the file back to exactly that by writing the kept bytes to a new file
//! and renaming it over the old one ([`crate::artifacts::atomic`]), never by truncating in
//! place: a kill at any moment leaves either the old file or the cut one, and both begin with
//! the checkpoint's history. A file that does not (shorter, or other bytes) is refused.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::run_error::RunError;
use super::train_error::TrainError;
use crate::artifacts::{MetricsWriter, atomic, metrics};

/// Where a history stood when a checkpoint was taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryMark {
    /// Bytes of the file.
    pub bytes: u64,
    /// CRC-32 of those bytes (absent for marks derived from checkpoints of format 1).
    pub crc32: Option<u32>,
}

/// An open history, appended to line by line.
#[derive(Debug)]
pub struct History {
    writer: MetricsWriter,
    bytes: u64,
    crc: crc32fast::Hasher,
    lines: Vec<serde_json::Value>,
}

impl History {
    /// A new, empty history at `path`, replacing any file there (atomically).
    pub fn start(path: &Path) -> Result<History, TrainError> {
        atomic::write_bytes(path, b"")?;
        Ok(History {
            writer: MetricsWriter::append_unchanged(path)?,
            bytes: 0,
            crc: crc32fast::Hasher::new(),
            lines: Vec::new(),
        })
    }

    /// The history at `path` cut back to `mark`, whose bytes are read from `from` (`path`
    /// itself, or the history of the run a branch starts from). The file is rewritten only
    /// when it differs from those bytes.
    pub fn resume(path: &Path, mark: HistoryMark, from: &Path) -> Result<History, TrainError> {
        let kept = read_prefix(from, mark)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&kept);
        let in_place = from == path && std::fs::metadata(path).is_ok_and(|m| m.len() == mark.bytes);
        if !in_place {
            atomic::write_bytes(path, &kept)?;
        }
        Ok(History {
            lines: metrics::parse_jsonl(path, &kept)?,
            writer: MetricsWriter::append_unchanged(path)?,
            bytes: mark.bytes,
            crc,
        })
    }

    /// Appends one record (a JSON object) as a line.
    pub fn append(&mut self, record: serde_json::Value) -> Result<(), TrainError> {
        self.writer.write(&record)?;
        let line = self.writer.last_line();
        self.crc.update(line);
        self.bytes += line.len() as u64;
        self.lines.push(record);
        Ok(())
    }

    /// Syncs the file to disk and returns its mark, for a checkpoint about to be written.
    pub fn mark(&mut self) -> Result<HistoryMark, TrainError> {
        self.writer.sync()?;
        Ok(HistoryMark {
            bytes: self.bytes,
            crc32: Some(self.crc.clone().finalize()),
        })
    }

    /// Every record, in order.
    pub fn lines(&self) -> &[serde_json::Value] {
        &self.lines
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }
}

/// The mark of the first `lines` lines of the file at `path` (checkpoints of format 1 recorded
/// only a line count): their byte length, no checksum; the whole file when it has fewer lines.
pub fn mark_of_lines(path: &Path, lines: usize) -> Result<HistoryMark, TrainError> {
    if lines == 0 {
        return Ok(HistoryMark::default());
    }
    let bytes = std::fs::read(path).map_err(|e| missing(path, e, 0, None))?;
    let end = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(lines - 1)
        .map_or(bytes.len(), |(i, _)| i + 1);
    Ok(HistoryMark {
        bytes: end as u64,
        crc32: None,
    })
}

fn missing(path: &Path, e: std::io::Error, expected: u64, crc: Option<u32>) -> TrainError {
    if e.kind() == std::io::ErrorKind::NotFound {
        RunError::HistoryMismatch {
            path: path.to_path_buf(),
            expected_bytes: expected,
            expected_crc32: crc,
            found_bytes: None,
            found_crc32: None,
        }
        .into()
    } else {
        RunError::Folder {
            path: path.to_path_buf(),
            op: "read",
            source: e,
        }
        .into()
    }
}

/// The first `mark.bytes` bytes of `path`, checked against the mark.
fn read_prefix(path: &Path, mark: HistoryMark) -> Result<Vec<u8>, TrainError> {
    if mark.bytes == 0 {
        return Ok(Vec::new());
    }
    let mismatch = |found_bytes: Option<u64>, found_crc32: Option<u32>| -> TrainError {
        RunError::HistoryMismatch {
            path: path.to_path_buf(),
            expected_bytes: mark.bytes,
            expected_crc32: mark.crc32,
            found_bytes,
            found_crc32,
        }
        .into()
    };
    let file = File::open(path).map_err(|e| missing(path, e, mark.bytes, mark.crc32))?;
    let len = file
        .metadata()
        .map_err(|e| missing(path, e, mark.bytes, mark.crc32))?
        .len();
    if len < mark.bytes {
        return Err(mismatch(Some(len), None));
    }
    let name = PathBuf::from(path);
    let kept = crate::memory::read_all(file.take(mark.bytes), mark.bytes, || {
        format!("the metrics history {}", name.display())
    })?;
    if (kept.len() as u64) < mark.bytes {
        return Err(mismatch(Some(kept.len() as u64), None));
    }
    let crc = crc32fast::hash(&kept);
    if mark.crc32.is_some_and(|c| c != crc) || kept.last() != Some(&b'\n') {
        return Err(mismatch(Some(len), Some(crc)));
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ire-history-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("metrics.jsonl")
    }

    #[test]
    fn a_resume_cuts_back_to_the_mark_by_a_new_file() {
        let p = tmp("cut");
        let mut h = History::start(&p).unwrap();
        h.append(json!({"step": 1})).unwrap();
        h.append(json!({"step": 2})).unwrap();
        let mark = h.mark().unwrap();
        assert_eq!(mark.bytes, std::fs::metadata(&p).unwrap().len());
        assert_eq!(
            mark.crc32,
            Some(crc32fast::hash(&std::fs::read(&p).unwrap()))
        );
        h.append(json!({"step": 3})).unwrap();
        drop(h);
        // Another handle on the old file sees it unchanged after the cut: the cut wrote a new
        // file and renamed it over the old one.
        let old = File::open(&p).unwrap();
        let h = History::resume(&p, mark, &p).unwrap();
        assert_eq!(h.lines(), &[json!({"step": 1}), json!({"step": 2})]);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), mark.bytes);
        assert_eq!(old.metadata().unwrap().len(), mark.bytes + 11);
        // Continuing appends after the kept lines.
        let mut h = h;
        h.append(json!({"step": 9})).unwrap();
        assert_eq!(
            metrics::read_jsonl(&p).unwrap(),
            vec![json!({"step": 1}), json!({"step": 2}), json!({"step": 9})]
        );
        assert_eq!(
            h.mark().unwrap().crc32,
            Some(crc32fast::hash(&std::fs::read(&p).unwrap()))
        );
    }

    #[test]
    fn another_history_is_refused() {
        let p = tmp("other");
        let mut h = History::start(&p).unwrap();
        h.append(json!({"step": 1})).unwrap();
        let mark = h.mark().unwrap();
        drop(h);
        std::fs::write(&p, b"{\"step\":2}\n").unwrap();
        let e = History::resume(&p, mark, &p).unwrap_err();
        assert!(
            matches!(
                e,
                TrainError::Run(RunError::HistoryMismatch {
                    found_crc32: Some(_),
                    ..
                })
            ),
            "{e}"
        );
        std::fs::write(&p, b"{}\n").unwrap();
        let e = History::resume(&p, mark, &p).unwrap_err();
        assert!(e.to_string().contains("only 3 bytes"), "{e}");
        std::fs::remove_file(&p).unwrap();
        let e = History::resume(&p, mark, &p).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn line_counts_of_old_checkpoints_become_marks() {
        let p = tmp("lines");
        std::fs::write(&p, b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n").unwrap();
        assert_eq!(mark_of_lines(&p, 2).unwrap().bytes, 16);
        assert_eq!(mark_of_lines(&p, 5).unwrap().bytes, 24);
        assert_eq!(mark_of_lines(&p, 0).unwrap().bytes, 0);
    }
}

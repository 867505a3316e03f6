//! What can go wrong around a training run (its folder, its history, its checkpoints, its
//! data), each case with the values that name it; the `ire` command maps them to its
//! documented exit codes ([`RunError::exit_code`]).

use std::path::PathBuf;

/// A run-level failure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another live process holds the run folder's lock.
    #[error(
        "the run folder {} is in use by another run ({}); wait for it to end or choose another --out",
        .dir.display(),
        match .pid { Some(p) => format!("process {p}"), None => "process id unknown".to_string() }
    )]
    FolderLocked {
        /// The folder.
        dir: PathBuf,
        /// The process holding it, as written in its lock file.
        pid: Option<u32>,
    },
    /// A new run was pointed at a folder that holds another run.
    #[error(
        "{} holds another run ({}); choose another --out, continue it with --resume {}, or pass \
         --overwrite to replace it",
        .dir.display(),
        .found,
        .checkpoint.display()
    )]
    FolderHoldsRun {
        /// The folder.
        dir: PathBuf,
        /// The file that shows it (`checkpoint.irec`, `metrics.jsonl`, ...).
        found: &'static str,
        /// The checkpoint a resume of that run would read.
        checkpoint: PathBuf,
    },
    /// An operating-system call on the run folder or its lock failed.
    #[error("{}: {op} failed: {source}", .path.display())]
    Folder {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics history does not hold the history the checkpoint was taken with.
    #[error(
        "{}: the checkpoint belongs to a history of {expected_bytes} bytes{}, but {}; the history \
         of this checkpoint is lost or was replaced by another run's",
        .path.display(),
        match .expected_crc32 { Some(c) => format!(" (CRC-32 {c:08x})"), None => String::new() },
        match (.found_bytes, .found_crc32) {
            (None, _) => "the file is missing".to_string(),
            (Some(b), _) if *b < *.expected_bytes => format!("the file has only {b} bytes"),
            (Some(_), Some(c)) => format!("its first {} bytes have CRC-32 {c:08x}", .expected_bytes),
            (Some(b), None) => format!("the file has {b} bytes"),
        }
    )]
    HistoryMismatch {
        /// The metrics file.
        path: PathBuf,
        /// The length the checkpoint records.
        expected_bytes: u64,
        /// The checksum it records (absent in checkpoints of format 1).
        expected_crc32: Option<u32>,
        /// The file's length (`None`: missing).
        found_bytes: Option<u64>,
        /// The checksum of the file's first `expected_bytes` bytes.
        found_crc32: Option<u32>,
    },
    /// A value to be checkpointed is not finite.
    #[error("{tensor}[{index}] = {value} is not finite")]
    NotFinite {
        /// The tensor (`params`, `state/…`, `optimizer/…`).
        tensor: String,
        /// The element.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// Training diverged; no checkpoint was written from the diverged state.
    #[error(
        "training diverged at step {step}: {what}; {}",
        match .kept {
            Some((s, p)) => format!("the last good checkpoint (step {s}) is kept at {}", p.display()),
            None => "no checkpoint was written".to_string(),
        }
    )]
    Diverged {
        /// The step.
        step: u64,
        /// What stopped being finite.
        what: String,
        /// The last good checkpoint: its step and file.
        kept: Option<(u64, PathBuf)>,
    },
    /// The data does not match what the checkpoint was trained on.
    #[error(
        "the data at {} does not match the checkpoint: its {field} is {found}, the checkpoint's \
         {expected}; pass --data with the data the checkpoint was trained on",
        .data.display()
    )]
    DataMismatch {
        /// The data location.
        data: PathBuf,
        /// What differs (`input shape`, `class names`, `vocabulary`, ...).
        field: &'static str,
        /// The checkpoint's value.
        expected: String,
        /// The data's value.
        found: String,
    },
}

impl RunError {
    /// The exit status of the `ire` command for this error (see the README): 3 for a
    /// divergence, 5 for a folder in use by another run, 2 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Diverged { .. } => 3,
            RunError::FolderLocked { .. } => 5,
            _ => 2,
        }
    }
}

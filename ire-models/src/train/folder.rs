//! Run folders that cannot be mixed: one run per folder, held by a lock for the run's life.
//!
//! A [`RunFolder`] holds `run.lock` (an OS file lock, with the holder's process id written in
//! it) from [`RunFolder::open`] until it is dropped. A second process is refused with the first
//! one's id ([`RunError::FolderLocked`]). A lock file left by a process that was killed (the OS
//! released its lock; its id is no longer running) is taken over, and said so
//! ([`FolderNote::StaleLock`]). A new run is refused in a folder that holds another run
//! ([`RunError::FolderHoldsRun`]) unless it may overwrite it; the files of the old run are then
//! removed only when the new run starts training ([`RunFolder::clear_previous_run`]), so a run
//! that fails while loading its data leaves the old one intact. Temporary files of killed
//! writers are swept when the folder is opened.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::run_error::RunError;

/// The checkpoint of a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.irec";
/// The metrics history of a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The final weights of a run folder.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The lock file of a run folder (present while a run holds it).
pub const LOCK_FILE: &str = "run.lock";
/// Every file a run writes (what `--overwrite` replaces).
pub const RUN_FILES: &[&str] = &[
    CHECKPOINT_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    "loss.png",
    "loss.svg",
    "accuracy.png",
    "accuracy.svg",
];

/// How a run uses its folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A new run: the folder must not hold another run, unless `overwrite`.
    New {
        /// Replace a run found there.
        overwrite: bool,
    },
    /// The run whose checkpoint is in the folder continues there.
    Continue,
}

/// Something [`RunFolder::open`] did that the user should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FolderNote {
    /// The lock file of process `pid`, which no longer holds it, was taken over.
    StaleLock {
        /// The process that wrote it.
        pid: u32,
        /// Whether that process still runs (then under a reused id, or it crashed out of its
        /// lock without exiting).
        alive: bool,
    },
    /// A temporary file of a killed writer was removed.
    RemovedTemp {
        /// The file.
        path: PathBuf,
        /// The process that wrote it.
        pid: u32,
    },
}

impl std::fmt::Display for FolderNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FolderNote::StaleLock { pid, alive: false } => write!(
                f,
                "took over the lock of process {pid}, which is no longer running (it was killed)"
            ),
            FolderNote::StaleLock { pid, alive: true } => write!(
                f,
                "took over the lock file of process {pid}, which no longer holds its lock"
            ),
            FolderNote::RemovedTemp { path, pid } => write!(
                f,
                "removed {}, left by process {pid} (killed while writing)",
                path.display()
            ),
        }
    }
}

/// A run folder, held by this process until dropped.
#[derive(Debug)]
pub struct RunFolder {
    dir: PathBuf,
    /// Held until the folder is dropped.
    _lock: Lock,
    notes: Vec<FolderNote>,
}

impl RunFolder {
    /// Creates `dir` when missing, takes its lock, checks it against `claim` and sweeps the
    /// temporary files of killed writers.
    pub fn open(dir: &Path, claim: Claim) -> Result<RunFolder, RunError> {
        fs::create_dir_all(dir).map_err(|source| RunError::Folder {
            path: dir.to_path_buf(),
            op: "create folder",
            source,
        })?;
        let (lock, stale) = Lock::acquire(&dir.join(LOCK_FILE), dir)?;
        let mut notes: Vec<FolderNote> = stale.into_iter().collect();
        if claim == (Claim::New { overwrite: false })
            && let Some(found) = holds_run(dir)
        {
            return Err(RunError::FolderHoldsRun {
                dir: dir.to_path_buf(),
                found,
                checkpoint: dir.join(CHECKPOINT_FILE),
            });
        }
        notes.extend(
            crate::artifacts::atomic::remove_stale_temps(dir, None)
                .into_iter()
                .map(|(path, pid)| FolderNote::RemovedTemp { path, pid }),
        );
        Ok(RunFolder {
            dir: dir.to_path_buf(),
            _lock: lock,
            notes,
        })
    }

    /// Creates and opens a folder of a new run under `parent` named `stem` (`stem-2`, `stem-3`,
    /// ... when taken): the folder is created exclusively, so two runs never share it.
    pub fn create_unique(parent: &Path, stem: &str) -> Result<RunFolder, RunError> {
        fs::create_dir_all(parent).map_err(|source| RunError::Folder {
            path: parent.to_path_buf(),
            op: "create folder",
            source,
        })?;
        let mut last = None;
        for i in 1..=1000u32 {
            let name = if i == 1 {
                stem.to_string()
            } else {
                format!("{stem}-{i}")
            };
            let dir = parent.join(name);
            match fs::create_dir(&dir) {
                Ok(()) => return RunFolder::open(&dir, Claim::New { overwrite: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(source) => {
                    return Err(RunError::Folder {
                        path: dir,
                        op: "create folder",
                        source,
                    });
                }
            }
        }
        Err(RunError::Folder {
            path: parent.join(stem),
            op: "create a folder of a new name",
            source: last.unwrap_or_else(|| std::io::Error::other("every name is taken")),
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file of the folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// What opening the folder did (stale locks taken over, stray files removed).
    pub fn notes(&self) -> &[FolderNote] {
        &self.notes
    }

    /// Removes the files of a previous run (for a new run allowed to overwrite it).
    pub fn clear_previous_run(&self) -> Result<(), RunError> {
        for name in RUN_FILES {
            let p = self.dir.join(name);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(RunError::Folder {
                        path: p,
                        op: "remove",
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Which file shows that `dir` holds a run: a checkpoint, final weights, or a non-empty
/// history.
pub fn holds_run(dir: &Path) -> Option<&'static str> {
    let non_empty = |name: &str| {
        fs::metadata(dir.join(name))
            .is_ok_and(|m| m.is_file() && (m.len() > 0 || name != METRICS_FILE))
    };
    [CHECKPOINT_FILE, WEIGHTS_FILE, METRICS_FILE]
        .into_iter()
        .find(|n| non_empty(n))
}

/// Whether `a` and `b` name the same folder.
pub fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The default folder name of a new run: `MODEL-OPTIMIZER-YYYYMMDD-HHMMSS` (UTC).
pub fn default_name(model: &str, optimizer: &str, at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{model}-{optimizer}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The lock of a run folder: an exclusive OS lock on `run.lock`, which holds the owner's pid.
#[derive(Debug)]
struct Lock {
    path: PathBuf,
    /// Open for the lock's life: closing it releases the OS lock.
    _file: File,
    _forced_exit: crate::interrupt::Registration,
}

impl Lock {
    fn acquire(path: &Path, dir: &Path) -> Result<(Lock, Option<FolderNote>), RunError> {
        let io = |op: &'static str| {
            move |source: std::io::Error| RunError::Folder {
                path: path.to_path_buf(),
                op,
                source,
            }
        };
        // A holder that is releasing removes the file before it unlocks: whoever locked the
        // removed file retries on the new one.
        for _ in 0..100 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(io("open"))?;
            if !try_lock(&file).map_err(io("lock"))? {
                return Err(RunError::FolderLocked {
                    dir: dir.to_path_buf(),
                    pid: read_pid(&mut file),
                });
            }
            if !same_file(&file, path) {
                continue;
            }
            let me = std::process::id();
            let stale = read_pid(&mut file)
                .filter(|&p| p != me)
                .map(|pid| FolderNote::StaleLock {
                    pid,
                    alive: crate::process::is_alive(pid),
                });
            file.set_len(0).map_err(io("write"))?;
            file.seek(SeekFrom::Start(0)).map_err(io("write"))?;
            file.write_all(format!("{me}\n").as_bytes())
                .and_then(|()| file.flush())
                .map_err(io("write"))?;
            let lock = Lock {
                path: path.to_path_buf(),
                _file: file,
                _forced_exit: crate::interrupt::remove_on_forced_exit(path),
            };
            return Ok((lock, stale));
        }
        Err(RunError::FolderLocked {
            dir: dir.to_path_buf(),
            pid: None,
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Remove, then unlock (the file closes when the fields drop, right after): see `acquire`.
        let _ = fs::remove_file(&self.path);
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(64).read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Whether `path` still names the file `file` is open on.
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// Takes an exclusive lock without waiting: `Ok(false)` when another open file holds it. The
/// OS releases it when the process ends, however it ends.
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: `flock` on a descriptor this `File` owns and keeps open; no memory is passed.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// Without OS locks: the lock file's pid decides (a live process other than this one holds it).
#[cfg(not(unix))]
fn try_lock(file: &File) -> std::io::Result<bool> {
    let mut f = file.try_clone()?;
    Ok(read_pid(&mut f).is_none_or(|p| p == std::process::id() || !crate::process::is_alive(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ire-folder-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn default_names_are_dated_in_utc() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_251_199); // 2024-02-29 23:59:59
        assert_eq!(
            default_name("mlp", "sgd-ire", t),
            "mlp-sgd-ire-20240229-235959"
        );
        assert_eq!(default_name("m", "o", UNIX_EPOCH), "m-o-19700101-000000");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn a_held_folder_refuses_a_second_holder_and_is_free_after() {
        let d = tmp("held");
        let a = RunFolder::open(&d, Claim::New { overwrite: false }).unwrap();
        assert!(a.notes().is_empty());
        assert_eq!(
            fs::read_to_string(d.join(LOCK_FILE)).unwrap().trim(),
            std::process::id().to_string()
        );
        match RunFolder::open(&d, Claim::Continue) {
            Err(RunError::FolderLocked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        drop(a);
        assert!(
            !d.join(LOCK_FILE).exists(),
            "the lock file goes with the lock"
        );
        let b = RunFolder::open(&d, Claim::Continue).unwrap();
        assert!(b.notes().is_empty());
    }

    #[test]
    fn a_dead_holder_is_taken_over_with_a_note() {
        let d = tmp("stale");
        fs::create_dir_all(&d).unwrap();
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let dead = c.id();
        c.wait().unwrap();
        fs::write(d.join(LOCK_FILE), format!("{dead}\n")).unwrap();
        fs::write(
            d.join(".checkpoint.irec.{dead}.0.tmp".replace("{dead}", &dead.to_string())),
            b"x",
        )
        .unwrap();
        let mine = format!(".metrics.jsonl.{}.0.tmp", std::process::id());
        fs::write(d.join(&mine), b"x").unwrap();
        let f = RunFolder::open(&d, Claim::Continue).unwrap();
        assert_eq!(
            f.notes(),
            &[
                FolderNote::StaleLock {
                    pid: dead,
                    alive: false
                },
                FolderNote::RemovedTemp {
                    path: d.join(format!(".checkpoint.irec.{dead}.0.tmp")),
                    pid: dead
                }
            ]
        );
        assert!(
            d.join(&mine).exists(),
            "a live writer's temporary file stays"
        );
    }

    #[test]
    fn a_new_run_is_refused_where_another_run_lives() {
        let d = tmp("holds");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(METRICS_FILE), b"").unwrap();
        drop(RunFolder::open(&d, Claim::New { overwrite: false }).unwrap());
        fs::write(d.join(METRICS_FILE), b"{}\n").unwrap();
        match RunFolder::open(&d, Claim::New { overwrite: false }) {
            Err(RunError::FolderHoldsRun { found, .. }) => assert_eq!(found, METRICS_FILE),
            other => panic!("{other:?}"),
        }
        assert!(!d.join(LOCK_FILE).exists(), "a refusal releases the lock");
        let f = RunFolder::open(&d, Claim::New { overwrite: true }).unwrap();
        assert!(
            d.join(METRICS_FILE).exists(),
            "nothing is removed before training starts"
        );
        f.clear_previous_run().unwrap();
        assert!(!d.join(METRICS_FILE).exists());
    }

    #[test]
    fn unique_folders_never_collide() {
        let d = tmp("unique");
        let a = RunFolder::create_unique(&d, "m-o-t").unwrap();
        let b = RunFolder::create_unique(&d, "m-o-t").unwrap();
        assert_eq!(a.dir(), d.join("m-o-t"));
        assert_eq!(b.dir(), d.join("m-o-t-2"));
    }
}

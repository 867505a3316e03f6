//! Atomic file replacement: write a temporary file in the destination's folder, fsync it, rename
//! it over the destination, fsync the folder.
//!
//! A crash at any point leaves either the previous file or the new one, complete, at the
//! destination; at worst a stray temporary file (`.NAME.PID.N.tmp`) stays beside it, which no
//! reader looks at. The next atomic write of `NAME` removes the strays of processes that are no
//! longer running ([`remove_stale_temps`]; a run folder sweeps all of them when it is opened),
//! and a forced exit (a second Ctrl-C) removes the temporary file being written.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{ArtifactError, Result};

/// Distinguishes the temporary files of concurrent writers within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically (see the module documentation).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |w| w.write_all(bytes))
}

/// Writes `path` atomically with the bytes that `fill` writes to the buffered temporary file.
///
/// The folder is created when missing. When `fill` or any later step fails, the temporary file is
/// removed and the previous file at `path`, if any, is untouched.
pub fn write_with<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> io::Result<()>,
{
    let mut f = AtomicFile::create(path)?;
    fill(f.writer()).map_err(|e| ArtifactError::io(path, "write temporary file", e))?;
    f.commit()
}

/// A file being written atomically, for writers that stream their content: bytes go to a
/// temporary file beside `path`; [`AtomicFile::commit`] renames it over `path`. Dropped without
/// a commit (an error, an early return, a panic), it removes its temporary file and `path` keeps
/// its previous content.
#[derive(Debug)]
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    writer: BufWriter<File>,
    committed: bool,
    _forced_exit: crate::interrupt::Registration,
}

impl AtomicFile {
    /// Starts writing `path` (its folder is created when missing). A folder at `path` is an
    /// error here, before anything is written.
    pub fn create(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| ArtifactError::invalid(path, "the path has no file name"))?;
        if path.is_dir() {
            return Err(ArtifactError::invalid(
                path,
                "it is a folder; give a file name",
            ));
        }
        let dir = folder_of(path);
        fs::create_dir_all(&dir).map_err(|e| ArtifactError::io(&dir, "create folder", e))?;
        remove_stale_temps(&dir, Some(name));
        let (tmp, file) = create_temp(&dir, name, path)?;
        Ok(Self {
            dest: path.to_path_buf(),
            _forced_exit: crate::interrupt::remove_on_forced_exit(&tmp),
            tmp,
            writer: BufWriter::with_capacity(1 << 20, file),
            committed: false,
        })
    }

    /// The buffered temporary file.
    pub fn writer(&mut self) -> &mut BufWriter<File> {
        &mut self.writer
    }

    /// Flushes and syncs the temporary file, renames it over the destination and syncs the
    /// folder.
    pub fn commit(mut self) -> Result<()> {
        let path = self.dest.clone();
        self.writer
            .flush()
            .and_then(|()| self.writer.get_ref().sync_all())
            .map_err(|e| ArtifactError::io(&path, "write temporary file", e))?;
        fs::rename(&self.tmp, &path).map_err(|e| ArtifactError::io(&path, "rename over", e))?;
        self.committed = true;
        sync_folder(&folder_of(&path))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the error being reported matters more than a failed clean-up.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Removes the temporary files in `dir` (only those of `name` when given) that processes no
/// longer running left behind (killed while writing). Returns each file removed with the id of
/// the process that wrote it.
pub fn remove_stale_temps(dir: &Path, name: Option<&std::ffi::OsStr>) -> Vec<(PathBuf, u32)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some((of, pid)) = file_name.to_str().and_then(parse_temp_name) else {
            continue;
        };
        if name.is_some_and(|n| n.to_str() != Some(of)) || crate::process::is_alive(pid) {
            continue;
        }
        let p = e.path();
        if fs::remove_file(&p).is_ok() {
            removed.push((p, pid));
        }
    }
    removed.sort();
    removed
}

/// `.NAME.PID.N.tmp` → `(NAME, PID)`.
fn parse_temp_name(s: &str) -> Option<(&str, u32)> {
    let rest = s.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (rest, n) = rest.rsplit_once('.')?;
    let (name, pid) = rest.rsplit_once('.')?;
    n.parse::<u64>().ok()?;
    (!name.is_empty()).then_some(())?;
    Some((name, pid.parse().ok()?))
}

/// The folder that holds `path` (`.` for a bare file name).
pub fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates a fresh temporary file beside the destination; never reuses an existing one.
fn create_temp(dir: &Path, name: &std::ffi::OsStr, path: &Path) -> Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut last_err = None;
    for _ in 0..64 {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{pid}.{n}.tmp"));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(ArtifactError::io(&tmp, "create temporary file", e)),
        }
    }
    let e = last_err.unwrap_or_else(|| io::Error::other("no free temporary name"));
    Err(ArtifactError::io(path, "create temporary file", e))
}

/// Makes the rename durable. Folders cannot be opened for syncing on every platform or file
/// system; those refusals are not errors since the data itself is already synced.
fn sync_folder(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let synced = File::open(dir).and_then(|d| d.sync_all());
        match synced {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidInput
                        | io::ErrorKind::Unsupported
                        | io::ErrorKind::PermissionDenied
                ) => {}
            Err(e) => return Err(ArtifactError::io(dir, "sync folder", e)),
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_parse() {
        assert_eq!(
            parse_temp_name(".checkpoint.irec.123.4.tmp"),
            Some(("checkpoint.irec", 123))
        );
        assert_eq!(parse_temp_name(".a.csv.7.0.tmp"), Some(("a.csv", 7)));
        for s in [
            "checkpoint.irec",
            ".x.tmp",
            ".x.1.tmp",
            "..1.2.tmp",
            ".x.a.2.tmp",
            ".x.1.b.tmp",
        ] {
            assert_eq!(parse_temp_name(s), None, "{s}");
        }
    }
}

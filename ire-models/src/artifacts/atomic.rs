//! Atomic file replacement: write a temporary file in the destination's folder, fsync it, rename
//! it over the destination, fsync the folder.
//!
//! A crash at any point leaves either the previous file or the new one, complete, at the
//! destination; at worst a stray temporary file (`.NAME.PID.N.tmp`) stays beside it, which no
//! reader looks at.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ArtifactError, Result};

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
    let name = path
        .file_name()
        .ok_or_else(|| ArtifactError::invalid(path, "the path has no file name"))?;
    let dir = folder_of(path);
    fs::create_dir_all(&dir).map_err(|e| ArtifactError::io(&dir, "create folder", e))?;
    let (tmp, file) = create_temp(&dir, name, path)?;
    let written = fill_and_sync(file, fill)
        .map_err(|e| ArtifactError::io(path, "write temporary file", e))
        .and_then(|()| {
            fs::rename(&tmp, path).map_err(|e| ArtifactError::io(path, "rename over", e))
        });
    if let Err(e) = written {
        // Best effort: the error being reported matters more than a failed clean-up.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_folder(&dir)
}

/// The folder that holds `path` (`.` for a bare file name).
fn folder_of(path: &Path) -> PathBuf {
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

fn fill_and_sync<F>(file: File, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> io::Result<()>,
{
    let mut w = BufWriter::with_capacity(1 << 20, file);
    fill(&mut w)?;
    w.flush()?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
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

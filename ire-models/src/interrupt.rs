//! Ctrl-C and SIGTERM for long commands.
//!
//! The first signal asks the work to stop at its next safe point (a training run finishes its
//! step, writes a checkpoint and exits with code 4). A second signal exits at once with
//! [`FORCED_EXIT_CODE`], after removing the files registered with [`remove_on_forced_exit`]
//! (the run folder's lock, temporary files being written), so nothing is left behind but the
//! last complete checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Exit status after a second Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
pub const FORCED_EXIT_CODE: i32 = 130;

static STOP: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static REGISTERED: Mutex<Vec<(u64, PathBuf)>> = Mutex::new(Vec::new());

/// Installs the handler of SIGINT, SIGTERM and SIGHUP (once per process; later calls return
/// the same flag) and returns the flag the first signal sets.
pub fn install() -> Result<&'static AtomicBool, ctrlc::Error> {
    let r = INSTALLED.get_or_init(|| {
        ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::SeqCst) {
                forced_exit();
            }
        })
        .map_err(|e| e.to_string())
    });
    match r {
        Ok(()) => Ok(&STOP),
        Err(e) => Err(ctrlc::Error::System(std::io::Error::other(e.clone()))),
    }
}

/// The flag a first signal sets (false until then, and always when [`install`] was not called).
pub fn stop_flag() -> &'static AtomicBool {
    &STOP
}

fn forced_exit() -> ! {
    let paths: Vec<PathBuf> = REGISTERED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    for p in paths {
        // Best effort: the process is leaving; a file that cannot be removed is cleaned up by
        // the next run (it belongs to a dead process then).
        let _ = std::fs::remove_file(p);
    }
    eprintln!("second interrupt: exiting now, without a new checkpoint (the last one is kept)");
    std::process::exit(FORCED_EXIT_CODE)
}

/// While the returned guard lives, a forced exit removes `path`.
pub fn remove_on_forced_exit(path: &Path) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    REGISTERED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, path.to_path_buf()));
    Registration { id }
}

/// Keeps a path registered with [`remove_on_forced_exit`]; dropping it unregisters the path.
#[derive(Debug)]
pub struct Registration {
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        REGISTERED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(i, _)| *i != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(p: &str) -> bool {
        REGISTERED
            .lock()
            .unwrap()
            .iter()
            .any(|(_, q)| q == Path::new(p))
    }

    #[test]
    fn registrations_end_with_their_guard() {
        let a = remove_on_forced_exit(Path::new("interrupt-test-a"));
        let b = remove_on_forced_exit(Path::new("interrupt-test-b"));
        assert!(registered("interrupt-test-a") && registered("interrupt-test-b"));
        drop(a);
        assert!(!registered("interrupt-test-a") && registered("interrupt-test-b"));
        drop(b);
        assert!(!registered("interrupt-test-b"));
    }
}

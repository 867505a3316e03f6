//! Whether another process is still running, by its id: what a run folder's lock and the
//! clean-up of temporary files left by killed processes need to know.

/// Whether a process with id `pid` exists (running, or a zombie not yet reaped; possibly of
/// another user). On platforms without a way to ask, every process counts as alive, so nothing
/// of a live process is ever taken over or removed.
#[cfg(unix)]
pub fn is_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if p <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; `kill` only checks that the process exists and that we
    // may signal it. No memory is passed.
    let r = unsafe { libc::kill(p, 0) };
    // EPERM: it exists but belongs to someone else.
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether a process with id `pid` exists (always `true` where that cannot be asked).
#[cfg(not(unix))]
pub fn is_alive(_pid: u32) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(0));
        #[cfg(unix)]
        {
            let mut c = std::process::Command::new("true").spawn().unwrap();
            let pid = c.id();
            c.wait().unwrap();
            assert!(!is_alive(pid), "a reaped child is gone");
        }
    }
}

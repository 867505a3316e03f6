//! Memory is checked before it is taken.
//!
//! A command may use at most [`limit`]: the machine's memory (its physical memory, or the
//! container's limit when smaller), or what `--max-memory` says ([`set_max_memory`]). Requests
//! whose size follows from the arguments are estimated first and refused above the limit
//! ([`check`]); buffers whose size comes from an input file are reserved fallibly
//! ([`try_vec`], [`read_all`]), so a wrong size becomes an error naming it, never an abort in
//! the allocator or a process killed by the kernel.

use std::io::Read;
use std::sync::Mutex;
use std::sync::OnceLock;

/// Where the limit comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitSource {
    /// The machine's physical memory (or its container's limit).
    Machine,
    /// `--max-memory`.
    MaxMemory,
}

impl std::fmt::Display for LimitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitSource::Machine => "the memory of this machine",
            LimitSource::MaxMemory => "--max-memory",
        })
    }
}

/// A request the memory limit refuses, or an allocation that failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The estimate is above the limit.
    #[error("{what} needs {}, more than {source_of_limit} ({})", human(*.needed), human(u128::from(*.limit)))]
    TooLarge {
        /// What would be allocated, with the value that makes it large.
        what: String,
        /// The bytes it needs.
        needed: u128,
        /// The limit in bytes.
        limit: u64,
        /// Where the limit comes from.
        source_of_limit: LimitSource,
    },
    /// The allocator refused (the limit allowed it, the machine did not have it free).
    #[error("allocating {} for {what} failed: the memory is not free", human(*.bytes))]
    AllocationFailed {
        /// What was being allocated.
        what: String,
        /// The bytes asked for.
        bytes: u128,
    },
    /// A `--max-memory` value that is not a size.
    #[error(
        "invalid memory size `{text}`: expected a number of bytes with an optional K, M, G or T \
         suffix (powers of 1024; `KiB`, `GB`, ... accepted), e.g. 512M or 8G"
    )]
    BadSize {
        /// The text given.
        text: String,
    },
    /// An input stream that could not be read.
    #[error("cannot read {what}: {source}")]
    Read {
        /// What was being read.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

static MAX_MEMORY: Mutex<Option<u64>> = Mutex::new(None);
static MACHINE: OnceLock<Option<u64>> = OnceLock::new();

/// Caps every later request of this process at `bytes` (below the machine's memory; a larger
/// value leaves the machine's memory as the limit). `None` removes the cap.
pub fn set_max_memory(bytes: Option<u64>) {
    *MAX_MEMORY.lock().unwrap_or_else(|e| e.into_inner()) = bytes;
}

/// The memory of this machine (or of its container, when smaller), if it can be known.
pub fn machine_memory() -> Option<u64> {
    *MACHINE.get_or_init(|| {
        let physical = physical_memory();
        let container = container_limit();
        match (physical, container) {
            (Some(p), Some(c)) => Some(p.min(c)),
            (p, c) => p.or(c),
        }
    })
}

/// The limit in force and where it comes from; `None` when neither is known.
pub fn limit() -> Option<(u64, LimitSource)> {
    let flag = *MAX_MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    match (flag, machine_memory()) {
        (Some(f), Some(m)) if m < f => Some((m, LimitSource::Machine)),
        (Some(f), _) => Some((f, LimitSource::MaxMemory)),
        (None, Some(m)) => Some((m, LimitSource::Machine)),
        (None, None) => None,
    }
}

/// Refuses a request of `bytes` for `what` above the limit.
pub fn check(what: impl FnOnce() -> String, bytes: u128) -> Result<(), MemoryError> {
    match limit() {
        Some((limit, source_of_limit)) if bytes > u128::from(limit) => Err(MemoryError::TooLarge {
            what: what(),
            needed: bytes,
            limit,
            source_of_limit,
        }),
        _ => Ok(()),
    }
}

/// An empty vector with room for `n` elements, checked against the limit and reserved
/// fallibly.
pub fn try_vec<T>(n: usize, what: impl Fn() -> String) -> Result<Vec<T>, MemoryError> {
    let bytes = (n as u128).saturating_mul(std::mem::size_of::<T>() as u128);
    check(&what, bytes)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| MemoryError::AllocationFailed {
            what: what(),
            bytes,
        })?;
    Ok(v)
}

/// Reads `r` to its end (`hint`: the expected size, e.g. a file's length), growing the buffer
/// fallibly and never past the limit: a file too large, or a compressed stream that inflates
/// beyond the memory, is an error naming `what`.
pub fn read_all(
    mut r: impl Read,
    hint: u64,
    what: impl Fn() -> String,
) -> Result<Vec<u8>, MemoryError> {
    let mut out = try_vec::<u8>(usize::try_from(hint).unwrap_or(usize::MAX), &what)?;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let k = match r.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(MemoryError::Read {
                    what: what(),
                    source,
                });
            }
        };
        if out.capacity() - out.len() < k {
            let want = out
                .len()
                .saturating_add(k)
                .max(out.capacity().saturating_mul(2));
            check(&what, want as u128)?;
            out.try_reserve_exact(want - out.len())
                .map_err(|_| MemoryError::AllocationFailed {
                    what: what(),
                    bytes: want as u128,
                })?;
        }
        out.extend_from_slice(&chunk[..k]);
    }
}

/// Parses a size: bytes, or a number with a K, M, G or T suffix (powers of 1024; an optional
/// `B` or `iB` after it), e.g. `512M`, `8G`, `1.5GiB`.
pub fn parse_size(text: &str) -> Result<u64, MemoryError> {
    let bad = || MemoryError::BadSize {
        text: text.to_string(),
    };
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let scale: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(bad()),
    };
    let x: f64 = num.trim().parse().map_err(|_| bad())?;
    let bytes = x * scale as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// A byte count for people: `1.5 GiB`.
pub fn human(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = bytes as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

#[cfg(unix)]
fn physical_memory() -> Option<u64> {
    // SAFETY: `sysconf` reads a system constant; no memory is passed.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && size > 0).then(|| (pages as u64).saturating_mul(size as u64))
}

#[cfg(not(unix))]
fn physical_memory() -> Option<u64> {
    None
}

/// The memory limit of this process's control group (cgroup v2, then v1), when set.
fn container_limit() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let v2 = read("/sys/fs/cgroup/memory.max").and_then(|s| s.trim().parse::<u64>().ok());
    // cgroup v1 reports "no limit" as a huge number near i64::MAX.
    let v1 = read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&b| b < 1 << 60);
    v2.or(v1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("2TB").unwrap(), 2 << 40);
        for bad in ["", "G", "-1G", "0", "1X", "nanG", "1e30T"] {
            assert!(
                matches!(parse_size(bad), Err(MemoryError::BadSize { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_machine_has_memory_and_huge_requests_are_refused() {
        let m = machine_memory().unwrap();
        assert!(m > 1 << 26, "{m}");
        let e = check(|| "a test buffer".into(), u128::from(m) + 1).unwrap_err();
        assert!(e.to_string().contains("a test buffer"), "{e}");
        assert!(try_vec::<u64>(usize::MAX / 8, || "huge".into()).is_err());
        assert_eq!(
            try_vec::<u64>(10, || "small".into()).unwrap().capacity(),
            10
        );
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(12), "12 bytes");
    }

    #[test]
    fn read_all_reads_everything_within_the_limit() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        assert_eq!(read_all(&data[..], 10, || "bytes".into()).unwrap(), data);
        assert_eq!(read_all(&data[..], 0, || "bytes".into()).unwrap(), data);
    }
}

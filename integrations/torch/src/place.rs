//! Where a tensor's memory is, as torch names a device.

use std::fmt;

/// Where a tensor's memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Host memory.
    Cpu,
    /// The memory of CUDA device `n` (torch's `cuda:n`).
    Cuda(usize),
}

impl fmt::Display for Place {
    /// As torch prints a device (`cpu`, `cuda:0`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Cpu => f.write_str("cpu"),
            Place::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Place {
    /// Parses torch's name of a device this build reaches (`cpu`, and `cuda:N` with the
    /// feature `cuda`).
    pub fn parse(name: &str) -> Option<Place> {
        match name {
            "cpu" => Some(Place::Cpu),
            #[cfg(feature = "cuda")]
            _ => name
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Place::Cuda),
            #[cfg(not(feature = "cuda"))]
            _ => None,
        }
    }
}

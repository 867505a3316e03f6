//! The one place a backend is chosen and opened: the `ire` command, the trainer, the benches
//! and the cross-backend checks all go through [`resolve`] and [`run_on`] / [`run_if_present`].
//!
//! Code generic over the backend is written once as an [`NnTask`] (Rust has no generic
//! closures, so a task is a small trait), and runs on whichever backend the user picked.

use std::fmt;
use std::str::FromStr;

use ire_core::{Error, Result};

use crate::nn::NnOps;

/// A backend, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    /// The fastest available: CUDA, then an OpenCL GPU, then the CPU backend.
    Auto,
    /// The multi-threaded CPU backend.
    Cpu,
    /// The OpenCL runtime (feature `opencl`).
    OpenCl,
    /// The CUDA runtime (feature `cuda`).
    Cuda,
    /// `ire-core`'s sequential reference backend (the oracle).
    Reference,
}

/// A backend name that is none of [`BackendKind::NAMES`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend `{name}`: expected one of auto, cpu, opencl, cuda, reference")]
pub struct UnknownBackend {
    /// The name given.
    pub name: String,
}

impl BackendKind {
    /// Every backend name, in the order of [`BackendKind`]'s variants.
    pub const NAMES: [&'static str; 5] = ["auto", "cpu", "opencl", "cuda", "reference"];
    const ALL: [BackendKind; 5] = [
        BackendKind::Auto,
        BackendKind::Cpu,
        BackendKind::OpenCl,
        BackendKind::Cuda,
        BackendKind::Reference,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        let i = Self::ALL.iter().position(|&k| k == self).unwrap_or(0);
        Self::NAMES[i]
    }
}

impl FromStr for BackendKind {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownBackend> {
        let lower = s.trim().to_ascii_lowercase();
        Self::NAMES
            .iter()
            .position(|&n| n == lower)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| UnknownBackend { name: s.into() })
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Work that needs the neural-network ops (every backend has them); takes the backend by
/// value (a trainer owns it).
pub trait NnTask {
    /// What the task returns.
    type Output;
    /// Runs the task on `b`.
    fn run<B: NnOps + 'static>(self, b: B) -> Self::Output;
}

/// Backends compiled into this build, in `auto` preference order.
pub fn compiled_backends() -> Vec<BackendKind> {
    let mut v = Vec::new();
    if cfg!(feature = "cuda") {
        v.push(BackendKind::Cuda);
    }
    if cfg!(feature = "opencl") {
        v.push(BackendKind::OpenCl);
    }
    v.push(BackendKind::Cpu);
    v.push(BackendKind::Reference);
    v
}

/// Resolves `auto` to a concrete backend, with the reason for the choice.
pub fn resolve(kind: BackendKind) -> (BackendKind, String) {
    if kind != BackendKind::Auto {
        return (kind, "asked for".into());
    }
    #[cfg(feature = "cuda")]
    if ire_backend_cuda::probe().is_ok_and(|d| !d.is_empty()) {
        return (BackendKind::Cuda, "a CUDA device is present".into());
    }
    #[cfg(feature = "opencl")]
    if ire_backend_opencl::probe().is_ok_and(|d| d.iter().any(|d| d.is_gpu())) {
        return (BackendKind::OpenCl, "an OpenCL GPU is present".into());
    }
    (
        BackendKind::Cpu,
        "no CUDA device or OpenCL GPU: the native CPU backend is faster than OpenCL on a CPU"
            .into(),
    )
}

/// Runs `task` on the backend `kind` (resolving `auto`); returns the backend's name (with its
/// device) too. An absent device is an error.
pub fn run_on<T: NnTask>(kind: BackendKind, task: T) -> Result<(String, T::Output)> {
    let (kind, _) = resolve(kind);
    open(kind, task, true)?.ok_or_else(|| Error::Unavailable {
        backend: kind.name().into(),
        reason: "no device".into(),
    })
}

/// [`run_on`] for tests, benches and comparisons over every backend: `Ok(None)` when the
/// backend is not compiled in or its device is absent, unless `IRE_REQUIRE` names it.
pub fn run_if_present<T: NnTask>(
    kind: BackendKind,
    task: T,
) -> Result<Option<(String, T::Output)>> {
    let (kind, _) = resolve(kind);
    open(kind, task, required_by_env(kind))
}

/// Whether `IRE_REQUIRE` (comma-separated) names the backend: then its absence is an error.
pub fn required_by_env(kind: BackendKind) -> bool {
    std::env::var("IRE_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim().eq_ignore_ascii_case(kind.name()))
}

/// Opens `kind` (not `Auto`) and runs the task; `Ok(None)` for an absent backend unless
/// `required`.
fn open<T: NnTask>(
    kind: BackendKind,
    task: T,
    required: bool,
) -> Result<Option<(String, T::Output)>> {
    let absent = |e: Error| -> Result<Option<(String, T::Output)>> {
        match e {
            Error::Unavailable { .. } if !required => Ok(None),
            e => Err(e),
        }
    };
    match kind {
        BackendKind::Reference => Ok(Some(("reference".into(), task.run(ire_core::Reference)))),
        BackendKind::Cpu | BackendKind::Auto => {
            let b = ire_backend_cpu::CpuBackend::new();
            Ok(Some(("cpu".into(), task.run(b))))
        }
        #[cfg(feature = "opencl")]
        BackendKind::OpenCl => match ire_backend_opencl::open() {
            Ok(b) => {
                let name = format!("opencl ({})", b.runtime().info().name.trim());
                Ok(Some((name, task.run(b))))
            }
            Err(e) => absent(e),
        },
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => match ire_backend_cuda::from_env() {
            Ok(b) => {
                let name = format!("cuda ({})", b.runtime().info().name);
                Ok(Some((name, task.run(b))))
            }
            Err(e) => absent(e),
        },
        #[allow(unreachable_patterns)]
        other => absent(Error::Unavailable {
            backend: other.name().into(),
            reason: format!("this build has no {other} backend; rebuild with `--features {other}`"),
        }),
    }
}

/// One line per backend compiled in: its devices, or why it has none.
pub fn describe_devices() -> Vec<String> {
    let mut out = vec![format!(
        "cpu: {} worker threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )];
    #[cfg(feature = "opencl")]
    match ire_backend_opencl::probe() {
        Ok(devs) if devs.is_empty() => out.push("opencl: no device".into()),
        Ok(devs) => out.extend(devs.iter().map(|d| format!("opencl: {d}"))),
        Err(e) => out.push(format!("opencl: none ({e})")),
    }
    #[cfg(feature = "cuda")]
    match ire_backend_cuda::probe() {
        Ok(devs) if devs.is_empty() => out.push("cuda: no device".into()),
        Ok(devs) => out.extend(devs.iter().map(|d| format!("cuda: {d}"))),
        Err(e) => out.push(format!("cuda: none ({e})")),
    }
    out.push("reference: the sequential oracle backend".into());
    out
}

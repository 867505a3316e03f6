//! Run-time choice among the backends compiled into this build.
//!
//! Code generic over [`Backend`] is written once as a [`BackendTask`] and [`run_on`] calls it
//! with the backend the user picked: Rust has no generic closures, so a task is a small trait.

use std::fmt;
use std::str::FromStr;

use ire_core::{Backend, Result};

/// A backend name as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The fastest available: CUDA, then an OpenCL GPU, then the CPU backend.
    Auto,
    /// The multi-threaded CPU backend.
    Cpu,
    /// The OpenCL backend (feature `opencl`).
    OpenCl,
    /// The CUDA backend (feature `cuda`).
    Cuda,
    /// `ire-core`'s sequential reference backend (the oracle).
    Reference,
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendKind::Auto),
            "cpu" => Ok(BackendKind::Cpu),
            "opencl" => Ok(BackendKind::OpenCl),
            "cuda" => Ok(BackendKind::Cuda),
            "reference" => Ok(BackendKind::Reference),
            other => Err(format!(
                "unknown backend `{other}`: expected auto, cpu, opencl, cuda or reference"
            )),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Auto => "auto",
            BackendKind::Cpu => "cpu",
            BackendKind::OpenCl => "opencl",
            BackendKind::Cuda => "cuda",
            BackendKind::Reference => "reference",
        })
    }
}

/// Work generic over the backend.
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs the task on `b`.
    fn run<B: Backend>(self, b: &B) -> Result<Self::Output>;
}

/// Backends compiled into this build, in `auto` preference order after CUDA/OpenCL-GPU.
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

#[cfg(not(all(feature = "opencl", feature = "cuda")))]
fn not_compiled(kind: BackendKind) -> ire_core::Error {
    ire_core::Error::Unavailable {
        backend: kind.to_string(),
        reason: format!("this build has no {kind} backend; rebuild with `--features {kind}`"),
    }
}

/// Resolves `auto` to a concrete backend, with the reason for the choice.
pub fn resolve(kind: BackendKind) -> (BackendKind, String) {
    if kind != BackendKind::Auto {
        return (kind, "asked for".into());
    }
    #[cfg(feature = "cuda")]
    if ire_backend_cuda::probe()
        .map(|d| !d.is_empty())
        .unwrap_or(false)
    {
        return (BackendKind::Cuda, "a CUDA device is present".into());
    }
    #[cfg(feature = "opencl")]
    if let Ok(devs) = ire_backend_opencl::probe() {
        if devs.iter().any(|d| d.is_gpu()) {
            return (BackendKind::OpenCl, "an OpenCL GPU is present".into());
        }
    }
    (
        BackendKind::Cpu,
        "no CUDA device or OpenCL GPU: the native CPU backend is faster than OpenCL on a CPU"
            .into(),
    )
}

/// Runs `task` on the backend `kind` (resolving `auto`); returns the backend's name too.
pub fn run_on<T: BackendTask>(kind: BackendKind, task: T) -> Result<(String, T::Output)> {
    let (kind, _) = resolve(kind);
    match kind {
        BackendKind::Reference => {
            let b = ire_core::Reference;
            Ok((b.name().to_string(), task.run(&b)?))
        }
        BackendKind::Cpu | BackendKind::Auto => {
            let b = ire_backend_cpu::CpuBackend::new();
            Ok((b.name().to_string(), task.run(&b)?))
        }
        BackendKind::OpenCl => {
            #[cfg(feature = "opencl")]
            {
                let b = ire_backend_opencl::OpenClBackend::new()?;
                Ok((b.name().to_string(), task.run(&b)?))
            }
            #[cfg(not(feature = "opencl"))]
            Err(not_compiled(kind))
        }
        BackendKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let b = ire_backend_cuda::CudaBackend::new(0)?;
                Ok((b.name().to_string(), task.run(&b)?))
            }
            #[cfg(not(feature = "cuda"))]
            Err(not_compiled(kind))
        }
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

/// Work that needs the neural-network ops; takes the backend by value (a trainer owns it).
pub trait NnTask {
    /// What the task returns.
    type Output;
    /// Runs the task on `b`.
    fn run<B: crate::nn::NnOps + 'static>(self, b: B) -> Self::Output;
}

/// Runs `task` on the backend `kind` (resolving `auto` like [`resolve`]); returns the
/// backend's name too. Every backend has the neural-network ops: the host backends through
/// [`crate::nn::HostMemory`], OpenCL and CUDA through their kernels.
pub fn run_on_nn<T: NnTask>(kind: BackendKind, task: T) -> Result<(String, T::Output)> {
    let (kind, _) = resolve(kind);
    match kind {
        BackendKind::Reference => Ok(("reference".into(), task.run(ire_core::Reference))),
        BackendKind::Cpu | BackendKind::Auto => {
            let b = ire_backend_cpu::CpuBackend::new();
            Ok(("cpu".into(), task.run(b)))
        }
        BackendKind::OpenCl => {
            #[cfg(feature = "opencl")]
            {
                let b = ire_backend_opencl::OpenClBackend::new()?;
                let name = format!("opencl ({})", b.device().name);
                Ok((name, task.run(b)))
            }
            #[cfg(not(feature = "opencl"))]
            Err(not_compiled(kind))
        }
        BackendKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let b = ire_backend_cuda::CudaBackend::from_env()?;
                let name = format!("cuda ({})", b.device().name);
                Ok((name, task.run(b)))
            }
            #[cfg(not(feature = "cuda"))]
            Err(not_compiled(kind))
        }
    }
}

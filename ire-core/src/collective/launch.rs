//! How a process learns from its environment that an MPI launcher started it as one rank of
//! a job: pure functions of the environment (read through a getter, so they run anywhere,
//! `no_std` included, and can be tested on made-up environments). A program that has no MPI
//! compiled in can still tell that it was launched by one, and say so instead of running the
//! same job once per rank.

use alloc::string::String;

/// The launcher that started this process, as its environment says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// Open MPI's `mpirun` / `mpiexec` (`OMPI_COMM_WORLD_SIZE`).
    OpenMpi,
    /// A PMIx server, e.g. `srun --mpi=pmix` or `prterun` (`PMIX_RANK`).
    Pmix,
    /// A PMI-1/2 launcher: MPICH's and Intel MPI's Hydra `mpiexec` (`PMI_SIZE`, `PMI_RANK`).
    Pmi,
    /// A Slurm job step started by `srun` (`SLURM_STEP_ID` with `SLURM_NTASKS`).
    Slurm,
}

/// The launcher named by an environment (`get` returns a variable's value), checked in the
/// order of [`Launcher`]'s variants; `None` when nothing says the process was launched as a
/// rank of an MPI job.
pub fn launcher_from(get: impl Fn(&str) -> Option<String>) -> Option<Launcher> {
    let has = |name: &str| get(name).is_some_and(|v| !v.is_empty());
    if has("OMPI_COMM_WORLD_SIZE") {
        Some(Launcher::OpenMpi)
    } else if has("PMIX_RANK") {
        Some(Launcher::Pmix)
    } else if has("PMI_SIZE") || has("PMI_RANK") {
        Some(Launcher::Pmi)
    } else if has("SLURM_STEP_ID") && has("SLURM_NTASKS") {
        Some(Launcher::Slurm)
    } else {
        None
    }
}

/// The number of ranks an environment announces (`OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`,
/// `SLURM_NTASKS`, in that order), if any.
pub fn world_size_from(get: impl Fn(&str) -> Option<String>) -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"]
        .iter()
        .find_map(|name| get(name).and_then(|v| v.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
        }
    }

    #[test]
    fn launchers_are_read_from_the_environment() {
        assert_eq!(launcher_from(env(&[])), None);
        assert_eq!(launcher_from(env(&[("OMPI_COMM_WORLD_SIZE", "")])), None);
        assert_eq!(
            launcher_from(env(&[("OMPI_COMM_WORLD_SIZE", "3"), ("PMIX_RANK", "1")])),
            Some(Launcher::OpenMpi)
        );
        assert_eq!(
            launcher_from(env(&[("PMIX_RANK", "0")])),
            Some(Launcher::Pmix)
        );
        assert_eq!(
            launcher_from(env(&[("PMI_SIZE", "4")])),
            Some(Launcher::Pmi)
        );
        assert_eq!(
            launcher_from(env(&[("PMI_RANK", "2")])),
            Some(Launcher::Pmi)
        );
        // A Slurm batch script (no job step) is not a rank of an MPI job.
        assert_eq!(launcher_from(env(&[("SLURM_NTASKS", "8")])), None);
        assert_eq!(
            launcher_from(env(&[("SLURM_NTASKS", "8"), ("SLURM_STEP_ID", "0")])),
            Some(Launcher::Slurm)
        );
        assert_eq!(
            world_size_from(env(&[("OMPI_COMM_WORLD_SIZE", "3")])),
            Some(3)
        );
        assert_eq!(
            world_size_from(env(&[("PMI_SIZE", "x"), ("SLURM_NTASKS", "5")])),
            Some(5)
        );
        assert_eq!(world_size_from(env(&[])), None);
    }
}

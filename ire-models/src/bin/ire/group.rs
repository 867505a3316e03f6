//! How a run of `ire train` joins its data-parallel group: MPI when a launcher started the
//! process (or `--distributed mpi`), a single process otherwise, and a clear refusal when the
//! binary was built without MPI but a launcher started it.

use clap::ValueEnum;

/// How `ire train` chooses between one process and a data-parallel group.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Distributed {
    /// Over MPI when an MPI launcher started this process, else a single process.
    Auto,
    /// Over MPI (a process started alone is a group of one).
    Mpi,
    /// A single process.
    None,
}

/// The data-parallel group of this process: shared between the trainer and the error path,
/// which must end every rank (`MPI_Abort`) before MPI would be finalized.
#[cfg(feature = "mpi")]
pub(crate) type Group = std::rc::Rc<ire_mpi::MpiCollective>;

/// Without MPI compiled in there is no group (the type has no value).
#[cfg(not(feature = "mpi"))]
pub(crate) type Group = std::rc::Rc<Never>;

/// No value: the group of a build without MPI.
#[cfg(not(feature = "mpi"))]
pub(crate) enum Never {}

#[cfg(not(feature = "mpi"))]
impl ire_core::Collective for Never {
    fn rank(&self) -> usize {
        match *self {}
    }
    fn world_size(&self) -> usize {
        match *self {}
    }
    fn all_reduce_sum(&self, _: ire_core::collective::BufMut<'_>) -> ire_core::Result<()> {
        match *self {}
    }
    fn reduce_scatter_sum(
        &self,
        _: ire_core::collective::Buf<'_>,
        _: ire_core::collective::BufMut<'_>,
    ) -> ire_core::Result<()> {
        match *self {}
    }
    fn all_gather(
        &self,
        _: ire_core::collective::Buf<'_>,
        _: ire_core::collective::BufMut<'_>,
    ) -> ire_core::Result<()> {
        match *self {}
    }
    fn broadcast(&self, _: ire_core::collective::BufMut<'_>, _: usize) -> ire_core::Result<()> {
        match *self {}
    }
    fn barrier(&self) -> ire_core::Result<()> {
        match *self {}
    }
}

/// Joins the MPI job this process belongs to, as `d` says; `None`: a single process.
#[cfg(feature = "mpi")]
pub(crate) fn join_group(d: Distributed) -> std::result::Result<Option<Group>, String> {
    let mpi = match d {
        Distributed::None => return Ok(None),
        Distributed::Auto if !ire_mpi::launched_by_mpi() => return Ok(None),
        Distributed::Auto => ire_mpi::MpiCollective::init(),
        Distributed::Mpi if ire_mpi::launched_by_mpi() => ire_mpi::MpiCollective::init(),
        Distributed::Mpi => ire_mpi::MpiCollective::init_forced(),
    };
    // `init` installed the hook that ends every rank when one panics.
    mpi.map(|m| Some(std::rc::Rc::new(m)))
        .map_err(|e| format!("MPI could not start: {e}"))
}

/// Without MPI compiled in: a single process, or a clear refusal when MPI was asked for or a
/// launcher started this process (each rank would otherwise train a copy of its own).
#[cfg(not(feature = "mpi"))]
pub(crate) fn join_group(d: Distributed) -> std::result::Result<Option<Group>, String> {
    use ire_core::collective::launch::launcher_from;
    let launched = launcher_from(|name| std::env::var(name).ok()).is_some();
    match d {
        Distributed::None => Ok(None),
        Distributed::Auto if !launched => Ok(None),
        _ => Err(format!(
            "{}, but this `ire` was built without MPI: rebuild it with `--features mpi` \
             (needs Open MPI), or pass --distributed none to train in each process on its own",
            if launched {
                "an MPI launcher started this process"
            } else {
                "--distributed mpi asks for MPI"
            }
        )),
    }
}

/// Ends every rank of the group with status `code` (`MPI_Abort`).
#[cfg(feature = "mpi")]
pub(crate) fn abort_group(g: &Group, code: u8) -> ! {
    g.abort(i32::from(code))
}

#[cfg(not(feature = "mpi"))]
pub(crate) fn abort_group(g: &Group, _code: u8) -> ! {
    match **g {}
}

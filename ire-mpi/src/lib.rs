//! # ire-mpi
//!
//! [`ire_core::Collective`] over MPI (the `mpi` crate, rsmpi, on the system's MPI library:
//! Open MPI on Debian), for data-parallel training on CPU hosts.
//!
//! ```no_run
//! use ire_core::collective::select;
//! use ire_core::optim::ThresholdRule;
//! use ire_core::{Collective, SingleProcess};
//! use ire_mpi::{MpiCollective, launched_by_mpi};
//!
//! # fn main() -> ire_core::Result<()> {
//! let mpi = if launched_by_mpi() { Some(MpiCollective::init()?) } else { None };
//! let c: &dyn Collective = match &mpi {
//!     Some(m) => m,
//!     None => &SingleProcess,
//! };
//! let local_estimate = vec![0.5f32, 0.25, 1.0];
//! let t = select::threshold(&[&local_estimate[..]], ThresholdRule::SharpTopK, 0.5, c)?;
//! println!("rank {} of {}: τ = {:?}", c.rank(), c.world_size(), t.tau);
//! # Ok(())
//! # }
//! ```
//!
//! Every rank must make the same collective calls in the same order (the rule of MPI). A rank
//! that stops making them while the others wait would hang the job: [`MpiCollective::init`]
//! installs a panic hook that calls `MPI_Abort`, so a panicking rank ends every rank, and a
//! rank that meets an error it cannot share should end the job with [`MpiCollective::abort`]
//! rather than return from `main` (dropping the [`MpiCollective`] finalizes MPI, which waits
//! for the other ranks).

use std::sync::OnceLock;

use ire_core::collective::{
    Buf, BufMut, Collective, CollectiveFailure, CollectiveOp, check_all_gather,
    check_reduce_scatter, check_root, failure,
};
use ire_core::{Error, Result};
use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

pub use ire_core::collective::launch::{Launcher, launcher_from, world_size_from};

static LAUNCHER: OnceLock<Option<Launcher>> = OnceLock::new();

/// The launcher of this process, read from its environment on the first call and remembered
/// (MPI sets some of the same variables itself once initialized, so the first answer, taken
/// before `MPI_Init` by [`MpiCollective::init`] at the latest, is the truthful one).
pub fn detected_launcher() -> Option<Launcher> {
    *LAUNCHER.get_or_init(|| launcher_from(|name| std::env::var(name).ok()))
}

/// Whether this process was started as a rank of an MPI job (`mpirun`, `mpiexec`, `srun`);
/// see [`detected_launcher`].
pub fn launched_by_mpi() -> bool {
    detected_launcher().is_some()
}

/// Installs (once) a panic hook that, after the usual message, ends every rank of the job
/// with `MPI_Abort` while MPI is initialized: a rank that panics would otherwise leave the
/// others waiting in a collective forever. [`MpiCollective::init`] calls it.
pub fn install_abort_on_panic() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            if mpi::is_initialized() && !mpi::is_finalized() {
                eprintln!("ire-mpi: a rank panicked; aborting every rank of the job");
                // SAFETY: MPI is initialized and not finalized (checked just above);
                // MPI_Abort on the world communicator takes no pointer and does not return.
                unsafe {
                    mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 134);
                }
                std::process::abort();
            }
        }));
    });
}

/// The largest element count of one MPI call (MPI counts are C `int`s).
const MAX_COUNT: usize = i32::MAX as usize;
/// All-reduces and broadcasts longer than this are split into calls of this many elements.
const CHUNK: usize = 1 << 30;

/// The world of an MPI job as an [`ire_core::Collective`]: rank and size of
/// `MPI_COMM_WORLD`, every operation a blocking MPI collective. Dropping it finalizes MPI
/// (once per process: MPI cannot be started again afterwards).
pub struct MpiCollective {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    // Declared last: finalizes MPI after everything else is dropped.
    _universe: Universe,
}

impl std::fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCollective")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

fn unavailable(reason: &str) -> Error {
    failure(
        CollectiveOp::Init,
        CollectiveFailure::Unavailable {
            reason: reason.into(),
        },
    )
}

impl MpiCollective {
    /// Joins the MPI job this process was launched into ([`launched_by_mpi`]), and installs
    /// [`install_abort_on_panic`]. Refused with [`CollectiveFailure::Unavailable`] (never a
    /// panic) when no launcher started the process, or when MPI was already initialized in
    /// this process (one `MpiCollective` per process).
    pub fn init() -> Result<Self> {
        if !launched_by_mpi() {
            return Err(unavailable(
                "this process was not started by an MPI launcher (mpirun, mpiexec, srun); \
                 launch it with one, or use ire_core::SingleProcess",
            ));
        }
        Self::init_forced()
    }

    /// As [`MpiCollective::init`], without asking for a launcher: a process started alone
    /// becomes an MPI job of its own (Open MPI's singleton start).
    pub fn init_forced() -> Result<Self> {
        // Remember the launcher before MPI_Init adds its own variables.
        let _ = detected_launcher();
        if mpi::is_finalized() {
            return Err(unavailable(
                "MPI was already finalized in this process; it cannot start again",
            ));
        }
        let (universe, _threading) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| {
                unavailable(
                    "MPI is already initialized in this process (one MpiCollective per process)",
                )
            })?;
        install_abort_on_panic();
        let world = universe.world();
        let (rank, size) = (world.rank(), world.size());
        let to_usize = |x: i32| {
            usize::try_from(x).map_err(|_| unavailable("MPI reported a negative rank or size"))
        };
        Ok(MpiCollective {
            rank: to_usize(rank)?,
            size: to_usize(size)?,
            world,
            _universe: universe,
        })
    }

    /// Ends every rank of the job now with exit status `code` (`MPI_Abort`); for an error that
    /// the other ranks cannot learn through a collective.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn root_rank(&self, root: usize) -> Result<i32> {
        check_root(root, self.size)?;
        i32::try_from(root).map_err(|_| {
            failure(
                CollectiveOp::Broadcast,
                CollectiveFailure::RootOutOfRange {
                    root,
                    world_size: self.size,
                },
            )
        })
    }
}

fn too_large(op: CollectiveOp, len: usize) -> Error {
    failure(
        op,
        CollectiveFailure::TooLarge {
            len,
            max: MAX_COUNT,
        },
    )
}

/// In-place sum over the ranks, through a copy of each chunk (rsmpi takes separate send and
/// receive buffers).
fn all_reduce_typed<T: Equivalence + Copy + Default>(w: &SimpleCommunicator, buf: &mut [T]) {
    let mut send = vec![T::default(); buf.len().min(CHUNK)];
    for chunk in buf.chunks_mut(CHUNK) {
        let send = &mut send[..chunk.len()];
        send.copy_from_slice(chunk);
        w.all_reduce_into(&send[..], chunk, SystemOperation::sum());
    }
}

fn broadcast_typed<T: Equivalence>(w: &SimpleCommunicator, root: i32, buf: &mut [T]) {
    let root = w.process_at_rank(root);
    for chunk in buf.chunks_mut(CHUNK) {
        root.broadcast_into(chunk);
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, buf: BufMut<'_>) -> Result<()> {
        let w = &self.world;
        match buf {
            BufMut::F32(b) => all_reduce_typed(w, b),
            BufMut::F64(b) => all_reduce_typed(w, b),
            BufMut::U32(b) => all_reduce_typed(w, b),
            BufMut::U64(b) => all_reduce_typed(w, b),
        }
        Ok(())
    }

    fn reduce_scatter_sum(&self, send: Buf<'_>, recv: BufMut<'_>) -> Result<()> {
        check_reduce_scatter(&send, &recv, self.size)?;
        if send.len() > MAX_COUNT {
            return Err(too_large(CollectiveOp::ReduceScatterSum, send.len()));
        }
        let (w, sum) = (&self.world, SystemOperation::sum());
        match (send, recv) {
            (Buf::F32(s), BufMut::F32(r)) => w.reduce_scatter_block_into(s, r, sum),
            (Buf::F64(s), BufMut::F64(r)) => w.reduce_scatter_block_into(s, r, sum),
            (Buf::U32(s), BufMut::U32(r)) => w.reduce_scatter_block_into(s, r, sum),
            (Buf::U64(s), BufMut::U64(r)) => w.reduce_scatter_block_into(s, r, sum),
            // Same types: checked above.
            (s, r) => {
                return Err(failure(
                    CollectiveOp::ReduceScatterSum,
                    CollectiveFailure::TypeMismatch {
                        send: s.wire_type(),
                        recv: r.wire_type(),
                    },
                ));
            }
        }
        Ok(())
    }

    fn all_gather(&self, send: Buf<'_>, recv: BufMut<'_>) -> Result<()> {
        check_all_gather(&send, &recv, self.size)?;
        if recv.len() > MAX_COUNT {
            return Err(too_large(CollectiveOp::AllGather, recv.len()));
        }
        let w = &self.world;
        match (send, recv) {
            (Buf::F32(s), BufMut::F32(r)) => w.all_gather_into(s, r),
            (Buf::F64(s), BufMut::F64(r)) => w.all_gather_into(s, r),
            (Buf::U32(s), BufMut::U32(r)) => w.all_gather_into(s, r),
            (Buf::U64(s), BufMut::U64(r)) => w.all_gather_into(s, r),
            (s, r) => {
                return Err(failure(
                    CollectiveOp::AllGather,
                    CollectiveFailure::TypeMismatch {
                        send: s.wire_type(),
                        recv: r.wire_type(),
                    },
                ));
            }
        }
        Ok(())
    }

    fn broadcast(&self, buf: BufMut<'_>, root: usize) -> Result<()> {
        let root = self.root_rank(root)?;
        let w = &self.world;
        match buf {
            BufMut::F32(b) => broadcast_typed(w, root, b),
            BufMut::F64(b) => broadcast_typed(w, root, b),
            BufMut::U32(b) => broadcast_typed(w, root, b),
            BufMut::U64(b) => broadcast_typed(w, root, b),
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
}

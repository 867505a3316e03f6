//! NCCL (feature `nccl`): `ire-core`'s [`Collective`] across GPUs, one rank per process and
//! device, queued on the backend's own stream; and an in-place all-reduce of device buffers,
//! so a data-parallel step's gradients never leave the GPU.
//!
//! NCCL is loaded at run time like the rest of CUDA: without `libnccl` or a GPU, [`Nccl::new`]
//! returns [`Error::Unavailable`] / a collective `Unavailable` failure, never a panic. The
//! unique id that joins the ranks travels over a host collective (MPI through `ire-mpi`, or
//! `SingleProcess` for one rank): rank 0 makes it and broadcasts it.
//!
//! The [`Collective`] methods take host slices (the threshold's histograms, losses, counts):
//! they are staged through device memory and waited for, which is right for a few KiB; large
//! tensors go through [`Nccl::all_reduce_sum_buffer`] on the device.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::{result as nr, sys as ns};
use ire_core::collective::{
    Buf, BufMut, Collective, CollectiveFailure, CollectiveOp, check_all_gather,
    check_reduce_scatter, check_root, failure,
};
use ire_core::{Error, Result, Scalar};

use crate::runtime::{CudaBackend, CudaBuffer};

/// NCCL's unique id (128 bytes) as the host collective sends it: 16 `u64` words.
const ID_WORDS: usize = 16;

/// One rank of an NCCL group on one GPU.
pub struct Nccl {
    comm: ns::ncclComm_t,
    rank: usize,
    world: usize,
    stream: Arc<CudaStream>,
    backend: CudaBackend,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; `&self`
// methods only enqueue work on the one stream, which NCCL orders.
unsafe impl Send for Nccl {}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("rank", &self.rank)
            .field("world_size", &self.world)
            .finish()
    }
}

fn nccl_failure(op: CollectiveOp, e: nr::NcclError) -> Error {
    failure(
        op,
        CollectiveFailure::Transport {
            message: format!("NCCL: {e:?}"),
        },
    )
}

fn device_failure(op: CollectiveOp, what: &str, e: impl std::fmt::Debug) -> Error {
    failure(
        op,
        CollectiveFailure::Transport {
            message: format!("{what}: {e:?}"),
        },
    )
}

/// The NCCL type of an element type of the collectives.
trait NcclWire: DeviceRepr + ValidAsZeroBits + Copy + Default {
    const TYPE: ns::ncclDataType_t;
}

macro_rules! nccl_wire {
    ($($t:ty => $n:ident),*) => {$(
        impl NcclWire for $t {
            const TYPE: ns::ncclDataType_t = ns::ncclDataType_t::$n;
        }
    )*};
}

nccl_wire!(f32 => ncclFloat32, f64 => ncclFloat64, u32 => ncclUint32, u64 => ncclUint64);

impl Nccl {
    /// Whether the NCCL library can be loaded (nothing is called in it).
    pub fn library_present() -> bool {
        // SAFETY: probing only tries to dlopen candidate names.
        unsafe { ns::is_culib_present() }
    }

    /// Joins the group of `host`'s ranks on `backend`'s device and stream: rank `r` of `host`
    /// becomes rank `r` of NCCL. Every rank of `host` must call it (it broadcasts the id).
    pub fn new(backend: &CudaBackend, host: &dyn Collective) -> Result<Self> {
        let op = CollectiveOp::Init;
        if !Self::library_present() {
            return Err(failure(
                op,
                CollectiveFailure::Unavailable {
                    reason: "the NCCL library (libnccl.so) was not found".into(),
                },
            ));
        }
        let (rank, world) = (host.rank(), host.world_size());
        let mut words = [0u64; ID_WORDS];
        if rank == 0 {
            let id = nr::get_uniqueid().map_err(|e| nccl_failure(op, e))?;
            for (w, chunk) in words.iter_mut().zip(id.internal.chunks(8)) {
                let bytes: Vec<u8> = chunk.iter().map(|&c| c as u8).collect();
                *w = u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
            }
        }
        host.broadcast((&mut words[..]).into(), 0)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (dst, b) in internal
            .iter_mut()
            .zip(words.iter().flat_map(|w| w.to_le_bytes()))
        {
            *dst = b as std::ffi::c_char;
        }
        let id = ns::ncclUniqueId { internal };
        let stream = Arc::clone(backend.runtime().stream());
        // NCCL binds the communicator to the current device: the backend's context.
        backend
            .runtime()
            .cuda_context()
            .bind_to_thread()
            .map_err(|e| device_failure(op, "binding the CUDA context", e))?;
        let mut comm = std::mem::MaybeUninit::uninit();
        let (nranks, me) = (
            i32::try_from(world).map_err(|_| too_many(op, world))?,
            i32::try_from(rank).map_err(|_| too_many(op, world))?,
        );
        // SAFETY: `comm` is valid for writes; the id is the same on every rank.
        unsafe { nr::comm_init_rank(comm.as_mut_ptr(), nranks, id, me) }
            .map_err(|e| nccl_failure(op, e))?;
        // SAFETY: initialised by the successful call above.
        let comm = unsafe { comm.assume_init() };
        Ok(Nccl {
            comm,
            rank,
            world,
            stream,
            backend: backend.clone(),
        })
    }

    /// The backend whose device and stream the group runs on.
    pub fn backend(&self) -> &CudaBackend {
        &self.backend
    }

    /// Sums `buf` over the ranks, in place on the device, queued on the backend's stream
    /// (no host copy, no synchronization added).
    pub fn all_reduce_sum_buffer<T: Scalar>(&self, buf: &mut CudaBuffer<T>) -> Result<()> {
        let op = CollectiveOp::AllReduceSum;
        let n = buf.len();
        let Some(mem) = buf.mem() else {
            return Ok(()); // an empty buffer has no memory
        };
        let ty = match T::DTYPE {
            ire_core::DType::F32 => ns::ncclDataType_t::ncclFloat32,
            ire_core::DType::F64 => ns::ncclDataType_t::ncclFloat64,
            other => {
                return Err(failure(
                    op,
                    CollectiveFailure::Transport {
                        message: format!("no NCCL type for {}", other.name()),
                    },
                ));
            }
        };
        let ptr = mem.device_ptr() as *mut c_void;
        // SAFETY: `ptr` addresses `n` elements of type `T` on this communicator's device,
        // owned by `buf` (borrowed mutably) for as long as the work queued on the stream.
        unsafe {
            nr::all_reduce(
                ptr,
                ptr,
                n,
                ty,
                ns::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream.cu_stream() as ns::cudaStream_t,
            )
        }
        .map(|_| ())
        .map_err(|e| nccl_failure(op, e))
    }

    /// `host` copied into a new device allocation on the stream.
    fn stage<T: NcclWire>(&self, op: CollectiveOp, host: &[T]) -> Result<CudaSlice<T>> {
        if host.is_empty() {
            return self
                .stream
                .alloc_zeros::<T>(1)
                .map_err(|e| device_failure(op, "allocating", e));
        }
        self.stream
            .clone_htod(host)
            .map_err(|e| device_failure(op, "copying to the device", e))
    }

    /// Waits for the stream, then copies `dev` into `host`.
    fn unstage<T: NcclWire>(
        &self,
        op: CollectiveOp,
        dev: &CudaSlice<T>,
        host: &mut [T],
    ) -> Result<()> {
        if host.is_empty() {
            return Ok(());
        }
        self.stream
            .memcpy_dtoh(dev, host)
            .and_then(|()| self.stream.synchronize())
            .map_err(|e| device_failure(op, "copying to the host", e))
    }

    /// Runs `call(send, recv, stream)` on staged copies of `send` and `recv`.
    fn staged<S: NcclWire, R: NcclWire>(
        &self,
        op: CollectiveOp,
        send: &[S],
        recv: &mut [R],
        call: impl FnOnce(
            *const c_void,
            *mut c_void,
            ns::cudaStream_t,
        ) -> std::result::Result<nr::NcclStatus, nr::NcclError>,
    ) -> Result<()> {
        let s = self.stage(op, send)?;
        let mut r = self.stage(op, recv)?;
        let (sp, _s_rec) = cudarc::driver::DevicePtr::device_ptr(&s, &self.stream);
        let (rp, _r_rec) = r.device_ptr_mut(&self.stream);
        call(
            sp as *const c_void,
            rp as *mut c_void,
            self.stream.cu_stream() as ns::cudaStream_t,
        )
        .map_err(|e| nccl_failure(op, e))?;
        drop((_s_rec, _r_rec));
        self.unstage(op, &r, recv)
    }
}

fn too_many(op: CollectiveOp, world: usize) -> Error {
    failure(
        op,
        CollectiveFailure::TooLarge {
            len: world,
            max: i32::MAX as usize,
        },
    )
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: the communicator was created by `new` and is destroyed once. An error here
        // cannot be reported; the handle is gone either way.
        let _ = unsafe { nr::comm_destroy(self.comm) };
    }
}

/// Dispatches a host buffer to `f` with its element type.
macro_rules! by_type {
    ($buf:expr, |$s:ident| $body:expr) => {
        match $buf {
            BufMut::F32($s) => $body,
            BufMut::F64($s) => $body,
            BufMut::U32($s) => $body,
            BufMut::U64($s) => $body,
        }
    };
}

/// Dispatches a send and a receive buffer of one element type to `run` (the types were checked
/// to agree before).
macro_rules! by_pair {
    ($n:expr, $op:expr, $send:expr, $recv:expr, $run:ident) => {
        match ($send, $recv) {
            (Buf::F32(s), BufMut::F32(r)) => $run($n, $op, s, r),
            (Buf::F64(s), BufMut::F64(r)) => $run($n, $op, s, r),
            (Buf::U32(s), BufMut::U32(r)) => $run($n, $op, s, r),
            (Buf::U64(s), BufMut::U64(r)) => $run($n, $op, s, r),
            _ => Err(failure($op, CollectiveFailure::RanksDisagree)),
        }
    };
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, buf: BufMut<'_>) -> Result<()> {
        let op = CollectiveOp::AllReduceSum;
        fn run<T: NcclWire>(n: &Nccl, op: CollectiveOp, s: &mut [T]) -> Result<()> {
            let len = s.len();
            let send = s.to_vec();
            n.staged(op, &send, s, |a, b, st| unsafe {
                // SAFETY: both pointers address `len` staged elements of type `T`.
                nr::all_reduce(a, b, len, T::TYPE, ns::ncclRedOp_t::ncclSum, n.comm, st)
            })
        }
        by_type!(buf, |s| run(self, op, s))
    }

    fn reduce_scatter_sum(&self, send: Buf<'_>, recv: BufMut<'_>) -> Result<()> {
        let op = CollectiveOp::ReduceScatterSum;
        check_reduce_scatter(&send, &recv, self.world)?;
        fn run<T: NcclWire>(n: &Nccl, op: CollectiveOp, send: &[T], r: &mut [T]) -> Result<()> {
            let len = r.len();
            n.staged(op, send, r, |a, b, st| unsafe {
                // SAFETY: `a` holds `len · world` and `b` `len` staged elements of type `T`.
                nr::reduce_scatter(a, b, len, T::TYPE, ns::ncclRedOp_t::ncclSum, n.comm, st)
            })
        }
        by_pair!(self, op, send, recv, run)
    }

    fn all_gather(&self, send: Buf<'_>, recv: BufMut<'_>) -> Result<()> {
        let op = CollectiveOp::AllGather;
        check_all_gather(&send, &recv, self.world)?;
        fn run<T: NcclWire>(n: &Nccl, op: CollectiveOp, send: &[T], r: &mut [T]) -> Result<()> {
            let len = send.len();
            n.staged(op, send, r, |a, b, st| unsafe {
                // SAFETY: `a` holds `len` and `b` `len · world` staged elements of type `T`.
                nr::all_gather(a, b, len, T::TYPE, n.comm, st)
            })
        }
        by_pair!(self, op, send, recv, run)
    }

    fn broadcast(&self, buf: BufMut<'_>, root: usize) -> Result<()> {
        let op = CollectiveOp::Broadcast;
        check_root(root, self.world)?;
        let root = i32::try_from(root).map_err(|_| too_many(op, root))?;
        fn run<T: NcclWire>(n: &Nccl, op: CollectiveOp, s: &mut [T], root: i32) -> Result<()> {
            let len = s.len();
            let send = s.to_vec();
            n.staged(op, &send, s, |a, b, st| unsafe {
                // SAFETY: both pointers address `len` staged elements of type `T`.
                nr::broadcast(a, b, len, T::TYPE, root, n.comm, st)
            })
        }
        by_type!(buf, |s| run(self, op, s, root))
    }

    fn barrier(&self) -> Result<()> {
        // A one-word all-reduce: returns on a rank once every rank has entered it.
        let mut x = [0u32];
        self.all_reduce_sum((&mut x[..]).into())
            .map_err(|e| match e {
                Error::Collective { failure: f, .. } => failure(CollectiveOp::Barrier, f),
                other => other,
            })
    }
}

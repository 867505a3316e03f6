//! [`DeviceBackend`]: one device, its compiled programs, checked launches and scratch memory.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::args::KernelArg;
use super::buffer::DeviceBuffer;
use super::lock::SpinLock;
use super::runtime::{DeviceClass, GemmShape, Launch, ProgramSource, Runtime};
use super::scratch::{self, Scratch, ScratchPool};
use super::signature::{self, Signature};
use crate::error::{Error, Result};
use crate::kernels::{Extension, OPS_SOURCE, REDUCE_WG, extension_source, kernel_names_in};
use crate::scalar::{DType, Element, Scalar};

/// The IRE operations' own program: the portable source of `kernels/ire_ops.cl`.
pub static IRE_OPS: Extension = Extension {
    name: "ire-ops",
    source: OPS_SOURCE,
};

/// Where [`crate::Backend::kth_largest`] runs. Both paths are exact and give the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectionPath {
    /// MSB-first radix selection on the device (`select_histogram`): 4 passes for `f32`, 8 for
    /// `f64`, each reading back 256 counters.
    Device,
    /// Download every buffer and select on the host (`crate::host::kth_largest`).
    Host,
}

/// A compiled program and the parameter lists of its kernels.
struct Compiled<P> {
    program: P,
    signatures: Vec<Signature>,
}

type ProgramCache<P> = Vec<((&'static str, DType), Arc<Compiled<P>>)>;

struct Shared<R: Runtime> {
    rt: R,
    programs: SpinLock<ProgramCache<R::Program>>,
    scratch: ScratchPool<R::Mem>,
}

/// The IRE operations, and any kernel of the portable dialect, on one device of runtime `R`.
///
/// Programs are compiled on first use (per extension and dtype) and kept; every launch is
/// checked against the kernel's parameter list in the source; scratch memory comes from a
/// pool. Cloning is cheap and shares all of it.
pub struct DeviceBackend<R: Runtime> {
    shared: Arc<Shared<R>>,
    selection: SelectionPath,
    histogram_budget: u64,
}

impl<R: Runtime> Clone for DeviceBackend<R> {
    fn clone(&self) -> Self {
        DeviceBackend {
            shared: Arc::clone(&self.shared),
            selection: self.selection,
            histogram_budget: self.histogram_budget,
        }
    }
}

impl<R: Runtime> core::fmt::Debug for DeviceBackend<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceBackend")
            .field("runtime", &R::NAME)
            .field("class", &self.shared.rt.class())
            .field("selection", &self.selection)
            .finish()
    }
}

/// Work-groups that cover `n` work-items, one per element.
pub fn groups_for(n: usize) -> usize {
    n.div_ceil(REDUCE_WG)
}

impl<R: Runtime> DeviceBackend<R> {
    /// The backend on `rt`. The selection runs on the host for a CPU device (its memory is the
    /// host's, and one introselect beats several passes of atomics there) and on the device
    /// elsewhere (a download would move the whole estimate over the bus).
    pub fn new(rt: R) -> Self {
        let selection = match rt.class() {
            DeviceClass::Cpu => SelectionPath::Host,
            _ => SelectionPath::Device,
        };
        DeviceBackend {
            shared: Arc::new(Shared {
                rt,
                programs: SpinLock::new(Vec::new()),
                scratch: ScratchPool::new(),
            }),
            selection,
            histogram_budget: u64::from(u32::MAX),
        }
    }

    /// The runtime (the device, its queue or stream).
    pub fn runtime(&self) -> &R {
        &self.shared.rt
    }

    /// Where the k-th-largest selection runs.
    pub fn selection_path(&self) -> SelectionPath {
        self.selection
    }

    /// The same backend with the selection run on `path`.
    pub fn with_selection_path(mut self, path: SelectionPath) -> Self {
        self.selection = path;
        self
    }

    /// The most elements the device selection counts into its 32-bit histogram before reading
    /// it back (`u32::MAX` by default).
    pub fn histogram_budget(&self) -> u64 {
        self.histogram_budget
    }

    /// The same backend with a smaller histogram budget (at least 1): results are the same,
    /// only the read-backs are more frequent, which exercises the path large estimates take.
    pub fn with_histogram_budget(mut self, elements: u64) -> Self {
        self.histogram_budget = elements.clamp(1, u64::from(u32::MAX));
        self
    }

    /// A scratch buffer of `len` elements, contents unspecified, from the pool (returned when
    /// dropped). Scratch memory is never zeroed: write it before reading it.
    pub fn scratch<E: Element>(&self, len: usize) -> Result<Scratch<'_, R, E>> {
        scratch::take(&self.shared.rt, &self.shared.scratch, len)
    }

    /// A device error of this backend.
    pub(crate) fn error(&self, message: String) -> Error {
        Error::Device {
            backend: R::NAME.into(),
            message,
        }
    }

    /// Fails with [`Error::UnsupportedDType`] unless the device computes on `dtype`.
    pub(crate) fn require(&self, dtype: DType) -> Result<()> {
        if self.shared.rt.supports(dtype) {
            Ok(())
        } else {
            Err(Error::UnsupportedDType {
                backend: R::NAME.into(),
                dtype,
            })
        }
    }

    /// The program of `ext` for `dtype`, compiled on first use. Compiling takes seconds for a
    /// large program and happens outside the cache's lock; two threads racing here compile
    /// twice and keep one.
    fn program(&self, ext: &'static Extension, dtype: DType) -> Result<Arc<Compiled<R::Program>>> {
        self.require(dtype)?;
        let key = (ext.name, dtype);
        if let Some((_, c)) = self.shared.programs.lock().iter().find(|(k, _)| *k == key) {
            return Ok(Arc::clone(c));
        }
        let signatures = signature::parse(ext.source)
            .map_err(|e| self.error(format!("kernel program {}: {e}", ext.name)))?;
        let names: Vec<&'static str> = kernel_names_in(ext.source).collect();
        let source = extension_source(self.shared.rt.dialect(), dtype, ext);
        let program = self.shared.rt.build(&ProgramSource {
            name: ext.name,
            dtype,
            text: &source,
            kernels: &names,
        })?;
        let built = Arc::new(Compiled {
            program,
            signatures,
        });
        let mut cache = self.shared.programs.lock();
        if let Some((_, c)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(Arc::clone(c));
        }
        cache.push((key, Arc::clone(&built)));
        Ok(built)
    }

    /// Compiles `ext` for `T` now rather than at its first launch.
    pub fn prepare<T: Scalar>(&self, ext: &'static Extension) -> Result<()> {
        self.program(ext, T::DTYPE).map(|_| ())
    }

    /// Launches `kernel` of `ext`, compiled for `T`, over `groups` work-groups of
    /// [`REDUCE_WG`] work-items (`groups == 0` launches nothing). The arguments are checked
    /// against the kernel's parameter list in the source first. Launches run in order with
    /// every other operation of the backend.
    pub fn launch<T: Scalar>(
        &self,
        ext: &'static Extension,
        kernel: &'static str,
        groups: usize,
        args: &[KernelArg<'_, R::Mem>],
    ) -> Result<()> {
        self.launch_in(ext, T::DTYPE, kernel, groups, args)
    }

    /// [`DeviceBackend::launch`] in the program of `dtype` (`F32` or `F64`).
    pub(crate) fn launch_in(
        &self,
        ext: &'static Extension,
        dtype: DType,
        kernel: &'static str,
        groups: usize,
        args: &[KernelArg<'_, R::Mem>],
    ) -> Result<()> {
        if groups == 0 {
            return Ok(());
        }
        let compiled = self.program(ext, dtype)?;
        // The signatures are parsed from the source in the order `build` received the names.
        let (index, sig) = compiled
            .signatures
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == kernel)
            .ok_or_else(|| self.error(format!("kernel {kernel} is not in {}", ext.name)))?;
        signature::check(R::NAME, sig, dtype, args)?;
        let launch = Launch {
            kernel,
            index,
            dtype,
            groups,
            args,
        };
        self.shared.rt.launch(&compiled.program, &launch)
    }

    /// `C = α·op(A)·op(B) + β·C` on row-major matrices at element offsets by the runtime's
    /// vendor library (cuBLAS); `Ok(false)` where it has none, and the caller runs its own
    /// kernel. Operand extents are checked first.
    #[allow(clippy::too_many_arguments)]
    pub fn vendor_gemm<T: Scalar>(
        &self,
        g: GemmShape,
        alpha: T,
        a: &DeviceBuffer<R, T>,
        a_off: usize,
        b: &DeviceBuffer<R, T>,
        b_off: usize,
        beta: T,
        c: &mut DeviceBuffer<R, T>,
        c_off: usize,
    ) -> Result<bool> {
        for (what, len, off, need) in [
            ("gemm: A", a.len(), a_off, g.m * g.k),
            ("gemm: B", b.len(), b_off, g.k * g.n),
            ("gemm: C", c.len(), c_off, g.m * g.n),
        ] {
            if len.saturating_sub(off) < need {
                return Err(Error::SizeMismatch {
                    what: what.into(),
                    expected: need,
                    found: len.saturating_sub(off),
                });
            }
        }
        let (Some(am), Some(bm), Some(cm)) = (a.mem.as_ref(), b.mem.as_ref(), c.mem.as_mut())
        else {
            // An empty operand (k = 0 or an empty C): left to the caller's kernel.
            return Ok(false);
        };
        self.shared.rt.gemm(
            T::DTYPE,
            g,
            alpha.as_f64(),
            (am, a_off),
            (bm, b_off),
            beta.as_f64(),
            (cm, c_off),
        )
    }
}

//! [`DeviceKernels`] for the CUDA backend: extension programs compiled by NVRTC on first use,
//! and the matrix product by cuBLAS where its library loads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{CudaBlas, sys as blas_sys};
use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, DevicePtr, DevicePtrMut};
use ire_core::kernels::{Dialect, Extension, extension_source, kernel_names_in};
use ire_core::{DType, DeviceKernels, Error, GemmShape, KernelArg, Result, Scalar};

use crate::BACKEND;
use crate::backend::{
    Arg, CudaBackend, Mem, REDUCE_BLOCK, check_args_with, cuda_mem, internal, load_module,
    program_of,
};
use crate::driver::driver_error;
use crate::nvrtc;
use crate::signature::{Signature, parse};

/// One extension program, loaded, with its functions and parameter lists.
#[derive(Debug)]
pub(crate) struct ExtProgram {
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
    signatures: Vec<Signature>,
}

/// What a driver creates on first use: extension programs, cuBLAS, a stand-in pointer.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    programs: Mutex<HashMap<(&'static str, DType), Arc<ExtProgram>>>,
    /// `None` when the cuBLAS library is absent or fails to start: the caller's kernel runs.
    blas: OnceLock<Option<CudaBlas>>,
    /// Passed for an empty buffer (which holds no memory); kernels never read it.
    placeholder: OnceLock<Mem>,
}

/// Parses the parameter list of every kernel of an extension source the way a launch does,
/// and returns how many kernels it defines: an error names a parameter type launches cannot
/// pass (use `GLOBAL T*`, `GLOBAL const T*`, `T`, `INDEX`, `U32`). Needs no GPU.
pub fn check_extension_source(source: &'static str) -> Result<usize> {
    parse(source).map(|s| s.len()).map_err(|e| Error::Device {
        backend: BACKEND.into(),
        message: format!("kernel parameter lists: {e}"),
    })
}

type CompiledKey = (&'static str, DType, String);

/// Compiled extension programs are shared by every backend of the process (NVRTC takes
/// seconds on a large program; tests open many backends).
fn compile_extension(
    ext: &'static Extension,
    dtype: DType,
    target: &str,
) -> Result<Arc<nvrtc::Compiled>> {
    static CACHE: Mutex<Vec<(CompiledKey, Arc<nvrtc::Compiled>)>> = Mutex::new(Vec::new());
    let key = (ext.name, dtype, target.to_owned());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(Arc::clone(c));
    }
    let source = extension_source(Dialect::Cuda, dtype, ext);
    let compiled = Arc::new(nvrtc::compile_source(&source, Some(target))?);
    cache.push((key, Arc::clone(&compiled)));
    Ok(compiled)
}

impl CudaBackend {
    fn extension(&self, ext: &'static Extension, dtype: DType) -> Result<Arc<ExtProgram>> {
        let d = self.driver()?;
        let mut programs = d
            .extra
            .programs
            .lock()
            .map_err(|_| internal("extension program cache lock poisoned"))?;
        if let Some(p) = programs.get(&(ext.name, dtype)) {
            return Ok(Arc::clone(p));
        }
        let signatures = parse(ext.source).map_err(|e| Error::Device {
            backend: BACKEND.into(),
            message: format!("kernel program {}: {e}", ext.name),
        })?;
        let compiled = compile_extension(ext, dtype, self.target())?;
        let what = format!("the {} {} kernels", ext.name, dtype.name());
        let module = load_module(&d.ctx, &compiled, &what, self.target())?;
        let mut functions = HashMap::new();
        for name in kernel_names_in(ext.source) {
            let f = module
                .load_function(name)
                .map_err(|e| driver_error(&format!("kernel {name} of {}", ext.name), e))?;
            functions.insert(name, f);
        }
        let p = Arc::new(ExtProgram {
            _module: module,
            functions,
            signatures,
        });
        programs.insert((ext.name, dtype), Arc::clone(&p));
        Ok(p)
    }

    fn placeholder(&self) -> Result<&Mem> {
        let d = self.driver()?;
        if let Some(m) = d.extra.placeholder.get() {
            return Ok(m);
        }
        let s = d
            .stream
            .alloc_zeros::<u8>(256)
            .map_err(|e| driver_error("allocating a placeholder buffer", e))?;
        Ok(d.extra.placeholder.get_or_init(|| Mem::Cuda(s)))
    }

    fn blas(&self) -> Result<Option<&CudaBlas>> {
        let d = self.driver()?;
        Ok(d.extra
            .blas
            .get_or_init(|| {
                // SAFETY: only probes whether the shared library can be loaded.
                if !unsafe { blas_sys::is_culib_present() } {
                    return None;
                }
                CudaBlas::new(Arc::clone(&d.stream)).ok()
            })
            .as_ref())
    }
}

impl DeviceKernels for CudaBackend {
    fn launch<T: Scalar>(
        &self,
        ext: &'static Extension,
        kernel: &'static str,
        groups: usize,
        args: &[KernelArg<'_, Self, T>],
    ) -> Result<()> {
        if groups == 0 {
            return Ok(());
        }
        let (program, elem) = program_of::<T>()?;
        let prog = self.extension(ext, program)?;
        let sig = prog
            .signatures
            .iter()
            .find(|s| s.name == kernel)
            .ok_or_else(|| internal(format!("kernel {kernel} is not in {}", ext.name)))?;
        let f = prog
            .functions
            .get(kernel)
            .ok_or_else(|| internal(format!("kernel {kernel} was not loaded")))?;
        let mut converted = Vec::with_capacity(args.len());
        for a in args {
            converted.push(match a {
                KernelArg::In(b) => Arg::Buf(
                    b.mem.as_ref().map_or_else(|| self.placeholder(), Ok)?,
                    0,
                    elem,
                ),
                KernelArg::Out(b) => Arg::Buf(
                    b.mem.as_ref().map_or_else(|| self.placeholder(), Ok)?,
                    0,
                    elem,
                ),
                KernelArg::Real(x) => Arg::Real(*x),
                KernelArg::Index(i) => Arg::Index(*i as u64),
                KernelArg::U32(u) => Arg::U32(*u),
            });
        }
        check_args_with(sig, program, kernel, &converted)?;
        let grid = u32::try_from(groups)
            .ok()
            .filter(|&g| g <= i32::MAX as u32)
            .ok_or_else(|| Error::Unsupported {
                backend: BACKEND.into(),
                what: format!("a launch of {groups} blocks"),
            })?;
        self.driver()?
            .launch_function(f, program, kernel, grid, REDUCE_BLOCK, &converted)
    }

    fn vendor_gemm<T: Scalar>(
        &self,
        g: GemmShape,
        alpha: T,
        a: &Self::Buffer<T>,
        a_off: usize,
        b: &Self::Buffer<T>,
        b_off: usize,
        beta: T,
        c: &mut Self::Buffer<T>,
        c_off: usize,
    ) -> Result<bool> {
        if g.m == 0 || g.n == 0 {
            return Ok(true);
        }
        let Some(blas) = self.blas()? else {
            return Ok(false);
        };
        let dims = [g.m, g.n, g.k];
        if dims.iter().any(|&d| i32::try_from(d).is_err()) {
            return Ok(false);
        }
        let (m, n, k) = (g.m as i32, g.n as i32, g.k as i32);
        let (na, nb, nc) = (g.m * g.k, g.k * g.n, g.m * g.n);
        for (what, len, off, need) in [
            ("gemm: A", a.len(), a_off, na),
            ("gemm: B", b.len(), b_off, nb),
            ("gemm: C", c.len(), c_off, nc),
        ] {
            if len.saturating_sub(off) < need {
                return Err(Error::SizeMismatch {
                    what: what.into(),
                    expected: need,
                    found: len.saturating_sub(off),
                });
            }
        }
        let (Some(am), Some(bm)) = (a.mem.as_ref(), b.mem.as_ref()) else {
            // k = 0: C = β·C; leave it to the caller's kernel.
            return Ok(false);
        };
        let cm = match c.mem.as_mut() {
            Some(Mem::Cuda(s)) => s,
            _ => return Err(internal("gemm: C holds no device memory")),
        };
        let d = self.driver()?;
        let size = T::DTYPE.size() as u64;
        let (pa, _ga) = cuda_mem(am)?.device_ptr(&d.stream);
        let (pb, _gb) = cuda_mem(bm)?.device_ptr(&d.stream);
        let (pc, _gc) = DevicePtrMut::device_ptr_mut(cm as &mut CudaSlice<u8>, &d.stream);
        let (pa, pb, pc) = (
            pa + a_off as u64 * size,
            pb + b_off as u64 * size,
            pc + c_off as u64 * size,
        );
        // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: B first, m and n
        // exchanged, each operand's transpose flag kept.
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let ldb = if g.trans_b { k } else { n };
        let lda = if g.trans_a { m } else { k };
        let status = match T::DTYPE {
            DType::F64 => {
                let (al, be) = (alpha.as_f64(), beta.as_f64());
                // SAFETY: the pointers address device memory of at least the sizes checked
                // above, on the handle's stream; alpha and beta are host values (the default
                // pointer mode) that live across the call.
                unsafe {
                    cudarc::cublas::result::dgemm(
                        *blas.handle(),
                        op(g.trans_b),
                        op(g.trans_a),
                        n,
                        m,
                        k,
                        &al,
                        pb as *const f64,
                        ldb,
                        pa as *const f64,
                        lda,
                        &be,
                        pc as *mut f64,
                        n,
                    )
                }
            }
            _ => {
                let (al, be) = (alpha.as_f64() as f32, beta.as_f64() as f32);
                // SAFETY: as above, for f32.
                unsafe {
                    cudarc::cublas::result::sgemm(
                        *blas.handle(),
                        op(g.trans_b),
                        op(g.trans_a),
                        n,
                        m,
                        k,
                        &al,
                        pb as *const f32,
                        ldb,
                        pa as *const f32,
                        lda,
                        &be,
                        pc as *mut f32,
                        n,
                    )
                }
            }
        };
        status.map_err(|e| Error::Device {
            backend: BACKEND.into(),
            message: format!("cuBLAS gemm {m}×{n}×{k}: {e:?}"),
        })?;
        Ok(true)
    }
}

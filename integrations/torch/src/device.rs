//! From a `torch.Tensor` to the place, address, length and dtype of its memory, with the
//! checks that make using that memory in place sound.
//!
//! A tensor is read once per call ([`span_of`]): it must be a dense, contiguous tensor of a
//! supported dtype on a device this build reaches (the CPU; CUDA with the feature `cuda`),
//! with an aligned data pointer. [`crate::backends`] turns a span into a buffer of the backend
//! of its place, for the length of one call. A tensor on any other device is refused with an
//! error naming the device.
//!
//! Memory safety rests on three facts, checked or held for each call: every span comes from a
//! live tensor object the caller passed in and holds for the whole call; the call runs while
//! holding the Python interpreter (no Python code can resize or free a tensor meanwhile); and
//! no parameter written by the call overlaps any other tensor of the call ([`check_disjoint`]).
//! On CUDA the work is queued on torch's current stream, so it runs after the work torch
//! queued there and before any torch queues there later, as torch's own kernels do.

use ire_core::{DType, Scalar};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use pyo3::{Py, PyAny, intern};

use crate::error::{Result, Role, TorchError};
use crate::place::Place;

/// A tensor's memory, as read from the tensor object by [`span_of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Where the memory is.
    pub place: Place,
    /// Address of the first element (a device address on a device).
    pub ptr: usize,
    /// Number of elements.
    pub len: usize,
    /// Element type.
    pub dtype: DType,
    /// Which tensor of the call it is (for error messages).
    pub role: Role,
}

impl Span {
    /// The byte range `[start, end)` the span covers.
    fn bytes(&self) -> (usize, usize) {
        (self.ptr, self.ptr + self.len * self.dtype.size())
    }
}

/// torch objects looked up once per process.
struct Torch {
    tensor: Py<PyType>,
    float32: Py<PyAny>,
    float64: Py<PyAny>,
    uint8: Py<PyAny>,
    strided: Py<PyAny>,
}

static TORCH: PyOnceLock<Torch> = PyOnceLock::new();

fn torch(py: Python<'_>) -> PyResult<&Torch> {
    TORCH.get_or_try_init(py, || {
        let t = py.import("torch")?;
        Ok(Torch {
            tensor: t.getattr("Tensor")?.cast_into::<PyType>()?.unbind(),
            float32: t.getattr("float32")?.unbind(),
            float64: t.getattr("float64")?.unbind(),
            uint8: t.getattr("uint8")?.unbind(),
            strided: t.getattr("strided")?.unbind(),
        })
    })
}

/// The dtypes a span may have, as the error message says them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// `torch.float32` or `torch.float64` (parameters, gradients, state being loaded).
    Float,
    /// Exactly this dtype (an output the extension writes, a gradient of a known dtype).
    Exactly(DType),
}

/// Reads and checks a tensor: a `torch.Tensor`, on the CPU, dense (strided) and contiguous, of
/// an accepted dtype, with an aligned data pointer.
pub fn span_of(obj: &Bound<'_, PyAny>, role: Role, accept: Accept) -> Result<Span> {
    let py = obj.py();
    let t = torch(py)?;
    if !obj.is_instance(t.tensor.bind(py))? {
        return Err(TorchError::NotATensor {
            role,
            found: obj.get_type().name()?.to_string(),
        });
    }
    let device = obj.getattr(intern!(py, "device"))?;
    let kind: String = device.getattr(intern!(py, "type"))?.extract()?;
    let place = match kind.as_str() {
        "cpu" => Place::Cpu,
        // A CUDA tensor's device always has its index.
        #[cfg(feature = "cuda")]
        "cuda" => Place::Cuda(
            device
                .getattr(intern!(py, "index"))?
                .extract::<Option<usize>>()?
                .unwrap_or(0),
        ),
        _ => {
            return Err(TorchError::Device {
                role,
                device: device.str()?.to_string(),
            });
        }
    };
    let layout = obj.getattr(intern!(py, "layout"))?;
    if !layout.is(t.strided.bind(py)) {
        return Err(TorchError::Layout {
            role,
            found: layout.str()?.to_string(),
        });
    }
    let dt = obj.getattr(intern!(py, "dtype"))?;
    let dtype = if dt.is(t.float32.bind(py)) {
        Some(DType::F32)
    } else if dt.is(t.float64.bind(py)) {
        Some(DType::F64)
    } else if dt.is(t.uint8.bind(py)) {
        Some(DType::U8)
    } else {
        None
    };
    let dtype = match (dtype, accept) {
        (Some(d @ (DType::F32 | DType::F64)), Accept::Float) => d,
        (Some(d), Accept::Exactly(e)) if d == e => d,
        (Some(d @ (DType::F32 | DType::F64)), Accept::Exactly(e @ (DType::F32 | DType::F64))) => {
            return Err(TorchError::MixedDType {
                role,
                found: d,
                expected: e,
            });
        }
        (_, accept) => {
            return Err(TorchError::DType {
                role,
                found: dt.str()?.to_string(),
                expected: match accept {
                    Accept::Float => "torch.float32 or torch.float64",
                    Accept::Exactly(e) => crate::error::torch_name(e),
                },
            });
        }
    };
    if !obj
        .call_method0(intern!(py, "is_contiguous"))?
        .extract::<bool>()?
    {
        return Err(TorchError::NonContiguous { role });
    }
    let len: usize = obj.call_method0(intern!(py, "numel"))?.extract()?;
    let ptr: usize = obj.call_method0(intern!(py, "data_ptr"))?.extract()?;
    // Every element type here is aligned to its size (f32: 4, f64: 8, u8: 1).
    let align = dtype.size();
    if len > 0 && (ptr == 0 || !ptr.is_multiple_of(align)) {
        return Err(TorchError::Misaligned { role, address: ptr });
    }
    Ok(Span {
        place,
        ptr,
        len,
        dtype,
        role,
    })
}

/// Fails if the memory of a tensor in `written` overlaps that of any other tensor of `written`
/// or `read` (empty tensors overlap nothing). O(n log n) in the number of tensors.
pub fn check_disjoint(written: &[Span], read: &[Span]) -> Result<()> {
    // (start, end, written?, index into its list)
    let mut all: Vec<(usize, usize, bool, usize)> = Vec::with_capacity(written.len() + read.len());
    for (i, s) in written.iter().enumerate() {
        let (a, b) = s.bytes();
        if b > a {
            all.push((a, b, true, i));
        }
    }
    for (i, s) in read.iter().enumerate() {
        let (a, b) = s.bytes();
        if b > a {
            all.push((a, b, false, i));
        }
    }
    all.sort_unstable();
    // Sweep in order of start; keep the interval reaching furthest among the written ones and
    // among all, so any overlap involving a written tensor is found.
    let span = |w: bool, i: usize| if w { written[i] } else { read[i] };
    let mut far_any: Option<(usize, bool, usize)> = None;
    let mut far_written: Option<(usize, usize)> = None;
    for &(start, end, w, i) in &all {
        if w {
            if let Some((reach, ow, oi)) = far_any
                && reach > start
            {
                return Err(TorchError::Overlap {
                    written: written[i].role,
                    other: span(ow, oi).role,
                });
            }
        } else if let Some((reach, oi)) = far_written
            && reach > start
        {
            return Err(TorchError::Overlap {
                written: written[oi].role,
                other: read[i].role,
            });
        }
        if far_any.is_none_or(|(r, _, _)| end > r) {
            far_any = Some((end, w, i));
        }
        if w && far_written.is_none_or(|(r, _)| end > r) {
            far_written = Some((end, i));
        }
    }
    Ok(())
}

/// The parameter element types: `f32` and `f64` (matched against a span's dtype through
/// [`ire_core::Element::DTYPE`]).
pub trait TorchScalar: Scalar {}

impl TorchScalar for f32 {}

impl TorchScalar for f64 {}

/// Copies `src` into the memory of `out` (a CPU tensor [`span_of`] checked, of the same length).
///
/// # Safety
/// As [`crate::backends::TensorBackend::wrap_mut`] for `out`.
pub unsafe fn write_into<E: Copy>(out: &Span, src: &[E]) -> Result<()> {
    if out.place != Place::Cpu {
        return Err(TorchError::OtherDevice {
            role: out.role,
            found: out.place,
            expected: Place::Cpu,
        });
    }
    if out.len != src.len() {
        return Err(TorchError::Core(ire_core::Error::SizeMismatch {
            what: format!("{}", out.role),
            expected: src.len(),
            found: out.len,
        }));
    }
    if !src.is_empty() {
        // SAFETY: `out` is valid for `len` writes of `E` (the caller's contract; the dtype was
        // checked by `span_of` against `E`'s by the caller) and is not `src` (Rust-owned).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out.ptr as *mut E, src.len()) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RoleKind;

    fn span(ptr: usize, len: usize, kind: RoleKind, index: usize) -> Span {
        Span {
            place: Place::Cpu,
            ptr,
            len,
            dtype: DType::F32,
            role: Role { kind, index },
        }
    }

    #[test]
    fn disjoint_tensors_pass_and_overlaps_name_both() {
        let p = |ptr, len, i| span(ptr, len, RoleKind::Parameter, i);
        let g = |ptr, len, i| span(ptr, len, RoleKind::Gradient, i);
        // Back to back is fine; gradients may share memory with each other.
        assert!(
            check_disjoint(
                &[p(0x1000, 4, 0), p(0x1010, 4, 1)],
                &[g(0x2000, 4, 0), g(0x2000, 4, 1)]
            )
            .is_ok()
        );
        // Empty tensors overlap nothing.
        assert!(check_disjoint(&[p(0x1000, 0, 0), p(0x1000, 4, 1)], &[]).is_ok());
        // A gradient inside a parameter.
        match check_disjoint(&[p(0x1000, 8, 0)], &[g(0x1008, 2, 3)]) {
            Err(TorchError::Overlap { written, other }) => {
                assert_eq!(
                    written,
                    Role {
                        kind: RoleKind::Parameter,
                        index: 0
                    }
                );
                assert_eq!(
                    other,
                    Role {
                        kind: RoleKind::Gradient,
                        index: 3
                    }
                );
            }
            r => panic!("expected an overlap, got {r:?}"),
        }
        // A parameter starting inside a long gradient that started first.
        assert!(check_disjoint(&[p(0x1100, 4, 1)], &[g(0x1000, 1024, 0)]).is_err());
        // Two parameters overlapping by one element, the long one first.
        assert!(check_disjoint(&[p(0x1000, 64, 0), p(0x10fc, 4, 1)], &[]).is_err());
        // A read tensor after a long written one, with a short read one in between.
        assert!(check_disjoint(&[p(0x1000, 64, 0)], &[g(0x1004, 1, 0), g(0x1080, 4, 1)]).is_err());
    }
}

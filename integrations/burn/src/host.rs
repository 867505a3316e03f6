//! How a parameter's memory reaches the optimizer.
//!
//! On burn's ndarray backend a float tensor is an `ArcArray`: when the parameter's array is
//! uniquely owned (the usual case once backward has run and the graph is gone) it is stepped
//! where it is, with no copy; when something else still holds it (a clone of the module, a
//! live graph) ndarray copies it once on write, as any in-place op of burn's would. On any
//! other backend the tensor's memory is not reachable from the host: the parameter and its
//! gradient are read to host vectors and the parameter written back (one round trip).

use std::any::Any;
use std::borrow::Cow;

use burn::backend::ndarray::NdArrayTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use crate::element::BurnElement;
use crate::error::{Error, Result};

/// Which path the optimizer takes to a parameter's memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryAccess {
    /// In place where the backend exposes its memory (ndarray), a host round trip elsewhere.
    #[default]
    Auto,
    /// Always the host round trip (what a backend without host memory gets; for comparison).
    HostCopy,
}

/// How the parameters of the steps so far were reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessCounts {
    /// Stepped in place: no copy.
    pub in_place: u64,
    /// Stepped in place after one copy: of an array something else still shared (a clone of
    /// the module), or of one burn still kept on the bytes it was made from (a tensor made
    /// from `TensorData` or loaded from a file, until its first write).
    pub copy_on_write: u64,
    /// Read to the host and written back.
    pub host_copy: u64,
    /// Gradients that were not contiguous in row-major order and were copied to be.
    pub gradient_copies: u64,
}

/// Steps `param` with `grad` through `f(θ, g)` on host slices, in place when the memory is the
/// ndarray backend's. Returns the parameter (the same tensor, or a new one after a host round
/// trip) and how it was reached; on an error the parameter is returned unchanged.
pub(crate) fn step_tensor<IB: Backend, T: BurnElement, const D: usize>(
    param: Tensor<IB, D>,
    grad: Tensor<IB, D>,
    mode: MemoryAccess,
    index: usize,
    counts: &mut AccessCounts,
    f: impl FnOnce(&mut [T], &[T]) -> ire_core::Result<()>,
) -> (Tensor<IB, D>, Result<()>) {
    let mut prim = param.into_primitive();
    let gprim = grad.into_primitive();
    let quantized = matches!(prim, TensorPrimitive::QFloat(_));
    if quantized {
        return (
            Tensor::from_primitive(prim),
            Err(Error::Quantized { param: index }),
        );
    }
    let mut f = Some(f);
    if mode == MemoryAccess::Auto
        && let (TensorPrimitive::Float(p), TensorPrimitive::Float(g)) = (&mut prim, &gprim)
    {
        let nd = (p as &mut dyn Any).downcast_mut::<NdArrayTensor>();
        let gnd = (g as &dyn Any).downcast_ref::<NdArrayTensor>();
        if let (Some(nd), Some(gnd)) = (nd, gnd)
            && let Some(r) = ndarray_step::<T, _>(nd, gnd, counts, &mut f)
        {
            return (Tensor::from_primitive(prim), r.map_err(Error::Core));
        }
    }
    let param = Tensor::<IB, D>::from_primitive(prim);
    let grad = Tensor::<IB, D>::from_primitive(gprim);
    let Some(f) = f.take() else {
        return (param, Ok(()));
    };
    host_round_trip(param, grad, index, counts, f)
}

/// The in-place path; `None` when it does not apply (another dtype, a strided parameter).
fn ndarray_step<T: BurnElement, F: FnOnce(&mut [T], &[T]) -> ire_core::Result<()>>(
    nd: &mut NdArrayTensor,
    gnd: &NdArrayTensor,
    counts: &mut AccessCounts,
    f: &mut Option<F>,
) -> Option<ire_core::Result<()>> {
    let gview = T::view(gnd)?;
    let (arr, was_borrowed) = T::array_mut(nd)?;
    if !arr.is_standard_layout() || arr.shape() != gview.shape() {
        return None;
    }
    let unique = !was_borrowed && arr.is_unique();
    let g: Cow<'_, [T]> = match gview.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => {
            counts.gradient_copies += 1;
            Cow::Owned(gview.iter().copied().collect())
        }
    };
    // Shared: ndarray copies the array here (copy on write), then it is ours.
    let p = arr.as_slice_mut()?;
    let f = f.take()?;
    if unique {
        counts.in_place += 1;
    } else {
        counts.copy_on_write += 1;
    }
    Some(f(p, &g))
}

fn host_round_trip<IB: Backend, T: BurnElement, const D: usize>(
    param: Tensor<IB, D>,
    grad: Tensor<IB, D>,
    index: usize,
    counts: &mut AccessCounts,
    f: impl FnOnce(&mut [T], &[T]) -> ire_core::Result<()>,
) -> (Tensor<IB, D>, Result<()>) {
    let device = param.device();
    let dims = param.shape().dims.clone();
    let mut p = match read::<IB, T, D>(param.clone(), index) {
        Ok(v) => v,
        Err(e) => return (param, Err(e)),
    };
    let g = match read::<IB, T, D>(grad, index) {
        Ok(v) => v,
        Err(e) => return (param, Err(e)),
    };
    if let Err(e) = f(&mut p, &g) {
        return (param, Err(Error::Core(e)));
    }
    counts.host_copy += 1;
    (Tensor::from_data(TensorData::new(p, dims), &device), Ok(()))
}

/// A tensor's elements in row-major order on the host (a copy).
pub(crate) fn read<IB: Backend, T: BurnElement, const D: usize>(
    t: Tensor<IB, D>,
    index: usize,
) -> Result<Vec<T>> {
    let host = |reason: String| Error::HostRead {
        param: index,
        reason,
    };
    t.try_into_data()
        .map_err(|e| host(e.to_string()))?
        .into_vec::<T>()
        .map_err(|e| host(format!("{e:?}")))
}

/// A tensor read for a refresh: the ndarray backend's memory (borrowed when contiguous), or a
/// host copy.
pub(crate) enum HostTensor<IB: Backend, T> {
    /// The ndarray primitive, read in place.
    NdArray(IB::FloatTensorPrimitive),
    /// A copy on the host.
    Copied(Vec<T>),
}

impl<IB: Backend, T: BurnElement> HostTensor<IB, T> {
    /// Reads `t` (in place on ndarray, else a copy).
    pub(crate) fn of<const D: usize>(t: Tensor<IB, D>, index: usize) -> Result<Self> {
        match t.into_primitive() {
            TensorPrimitive::Float(p) => {
                let nd = (&p as &dyn Any).downcast_ref::<NdArrayTensor>();
                if nd.is_some_and(|nd| T::view(nd).is_some()) {
                    return Ok(HostTensor::NdArray(p));
                }
                let t = Tensor::<IB, D>::from_primitive(TensorPrimitive::Float(p));
                Ok(HostTensor::Copied(read::<IB, T, D>(t, index)?))
            }
            TensorPrimitive::QFloat(_) => Err(Error::Quantized { param: index }),
        }
    }

    /// Its elements in row-major order.
    pub(crate) fn elements(&self) -> Cow<'_, [T]> {
        match self {
            HostTensor::Copied(v) => Cow::Borrowed(v),
            HostTensor::NdArray(p) => {
                match (p as &dyn Any)
                    .downcast_ref::<NdArrayTensor>()
                    .and_then(T::view)
                {
                    Some(v) => match v.to_slice() {
                        Some(s) => Cow::Borrowed(s),
                        None => Cow::Owned(v.iter().copied().collect()),
                    },
                    // `of` only keeps an ndarray primitive of type `T`.
                    None => Cow::Owned(Vec::new()),
                }
            }
        }
    }
}

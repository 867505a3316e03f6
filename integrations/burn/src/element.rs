//! The element types the adapter steps: burn's `f32` and `f64`, with direct access to the
//! ndarray backend's memory.

use burn::backend::ndarray::NdArrayTensor;
use ire_core::Scalar;
use ndarray::{ArcArray, ArrayViewD, IxDyn};

/// A float type burn stores and `ire-core` optimizes: `f32` or `f64`.
pub trait BurnElement: Scalar + burn::tensor::Element {
    /// The ndarray backend's array of a tensor of this type, made owned, and whether it was
    /// borrowed (burn keeps a tensor made from `TensorData` or loaded from a file on the
    /// bytes it came from until its first write, which copies it once); `None` for another
    /// type.
    fn array_mut(t: &mut NdArrayTensor) -> Option<(&mut ArcArray<Self, IxDyn>, bool)>;
    /// A view of the ndarray backend's tensor of this type; `None` for another type.
    fn view(t: &NdArrayTensor) -> Option<ArrayViewD<'_, Self>>;
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl BurnElement for $t {
            fn array_mut(t: &mut NdArrayTensor) -> Option<(&mut ArcArray<Self, IxDyn>, bool)> {
                match t {
                    NdArrayTensor::$variant(s) => {
                        let borrowed = s.is_borrowed();
                        Some((s.ensure_owned(), borrowed))
                    }
                    _ => None,
                }
            }
            fn view(t: &NdArrayTensor) -> Option<ArrayViewD<'_, Self>> {
                match t {
                    NdArrayTensor::$variant(s) => Some(s.view()),
                    _ => None,
                }
            }
        }
    };
}
element!(f32, F32);
element!(f64, F64);

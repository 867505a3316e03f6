//! The element types the adapter steps in place: candle's `f32` and `f64` CPU storage.

use candle_core::{CpuStorage, DType, WithDType};
use ire_core::Scalar;

/// A float type candle stores and `ire-core` optimizes: `f32` or `f64`.
pub trait CandleElement: Scalar + WithDType {
    /// candle's name of the type.
    const CANDLE_DTYPE: DType;
    /// The elements of a CPU storage of this type.
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    /// The elements of a CPU storage of this type, mutably.
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl CandleElement for $t {
            const CANDLE_DTYPE: DType = DType::$variant;
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
element!(f32, F32);
element!(f64, F64);

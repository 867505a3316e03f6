//! Element types a backend buffer can hold, and the floating-point scalars of the algebra.

use core::fmt::Debug;

/// The element type of a buffer, as a tag a device backend can dispatch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum DType {
    /// IEEE-754 binary32.
    F32,
    /// IEEE-754 binary64.
    F64,
    /// Unsigned byte (IRE masks).
    U8,
}

impl DType {
    /// Short lower-case name (`f32`, `f64`, `u8`), also the kernel-name suffix.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::U8 => "u8",
        }
    }

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::U8 => 1,
        }
    }
}

/// Anything a backend buffer can hold: plain-old-data with a [`DType`] tag.
pub trait Element: Copy + Default + Debug + PartialEq + Send + Sync + 'static {
    /// The tag of this type.
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for f64 {
    const DTYPE: DType = DType::F64;
}
impl Element for u8 {
    const DTYPE: DType = DType::U8;
}

/// The floating-point scalar the algebra is generic over: `f32` or `f64`.
///
/// Only IEEE-exact operations (`+ − × ÷ sqrt`, comparisons) are used per element, so every
/// backend that follows the canonical formulas gets the same bits.
pub trait Scalar: crate::state::StateElement + num_traits::Float + PartialOrd {
    /// The unsigned integer with the same bit width (used for order-preserving radix keys).
    type Bits: Copy + Ord + Debug + Send + Sync + 'static;
    /// Lossless or nearest conversion from a host `f64` hyper-parameter.
    fn of(x: f64) -> Self;
    /// Widening conversion to `f64`.
    fn as_f64(self) -> f64;
    /// A key whose unsigned order equals the numeric order of non-NaN values
    /// (`-0.0` sorts just below `+0.0`).
    fn order_key(self) -> Self::Bits;
    /// [`Scalar::order_key`] widened to `u64` (ulp distances are differences of these).
    fn order_key_u64(self) -> u64;
    /// Machine epsilon as `f64` (for tolerances).
    const EPSILON_F64: f64;
}

impl Scalar for f32 {
    type Bits = u32;
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn order_key(self) -> u32 {
        let b = self.to_bits();
        if b >> 31 == 1 { !b } else { b | 0x8000_0000 }
    }
    #[inline(always)]
    fn order_key_u64(self) -> u64 {
        self.order_key() as u64
    }
    const EPSILON_F64: f64 = f32::EPSILON as f64;
}

impl Scalar for f64 {
    type Bits = u64;
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn order_key(self) -> u64 {
        let b = self.to_bits();
        if b >> 63 == 1 {
            !b
        } else {
            b | 0x8000_0000_0000_0000
        }
    }
    #[inline(always)]
    fn order_key_u64(self) -> u64 {
        self.order_key()
    }
    const EPSILON_F64: f64 = f64::EPSILON;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys_follow_numeric_order() {
        let xs = [-3.5f32, -1.0, -0.0, 0.0, 1e-30, 2.0, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(w[0].order_key() < w[1].order_key(), "{:?}", w);
        }
        let ys = [f64::NEG_INFINITY, -2.0, -0.0, 0.0, 5e-324, 1.0];
        for w in ys.windows(2) {
            assert!(w[0].order_key() < w[1].order_key(), "{:?}", w);
        }
    }
}

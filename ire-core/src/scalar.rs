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
    /// Unsigned 32-bit integer (device counters and histograms).
    U32,
}

impl DType {
    /// Short lower-case name (`f32`, `f64`, `u8`), also the kernel-name suffix.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::U8 => "u8",
            DType::U32 => "u32",
        }
    }

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::U8 => 1,
            DType::U32 => 4,
        }
    }
}

mod sealed {
    /// Only the plain-data types of this crate are elements (their bytes are moved raw).
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for u8 {}
    impl Sealed for u32 {}
}

/// Anything a backend buffer can hold: plain-old-data with a [`DType`] tag (sealed: `f32`,
/// `f64`, `u8`, `u32`).
pub trait Element:
    sealed::Sealed + Copy + Default + Debug + PartialEq + Send + Sync + 'static
{
    /// The tag of this type.
    const DTYPE: DType;
}

/// The native-endian bytes of a slice of any [`Element`] (every one is plain data: no padding,
/// no invalid bit pattern), for device uploads and downloads.
pub fn as_bytes<E: Element>(s: &[E]) -> &[u8] {
    // SAFETY: the Element types (f32, f64, u8, u32) have no padding and every byte is
    // initialised; u8 has alignment 1; the view covers exactly the slice's memory.
    unsafe { core::slice::from_raw_parts(s.as_ptr().cast::<u8>(), core::mem::size_of_val(s)) }
}

/// The bytes of a mutable slice of any [`Element`]; every byte pattern is a valid value.
pub fn as_bytes_mut<E: Element>(s: &mut [E]) -> &mut [u8] {
    // SAFETY: as `as_bytes`, and every byte pattern is a valid f32, f64, u8 or u32.
    unsafe {
        core::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), core::mem::size_of_val(s))
    }
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
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}

/// The floating-point scalar the algebra is generic over: `f32` or `f64`.
///
/// Only IEEE-exact operations (`+ − × ÷ sqrt`, comparisons) are used per element, so every
/// backend that follows the canonical formulas gets the same bits.
pub trait Scalar: Element + num_traits::Float + PartialOrd {
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
    /// The inverse of [`Scalar::order_key_u64`]: the value whose key is `key` (bits above the
    /// type's width are ignored). Every key of a non-NaN value maps back to that value's bits,
    /// sign of zero included.
    fn from_order_key_u64(key: u64) -> Self;
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
    #[inline(always)]
    fn from_order_key_u64(key: u64) -> f32 {
        let k = key as u32;
        f32::from_bits(if k >> 31 == 1 { k & 0x7FFF_FFFF } else { !k })
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
    #[inline(always)]
    fn from_order_key_u64(key: u64) -> f64 {
        f64::from_bits(if key >> 63 == 1 {
            key & 0x7FFF_FFFF_FFFF_FFFF
        } else {
            !key
        })
    }
    const EPSILON_F64: f64 = f64::EPSILON;
}

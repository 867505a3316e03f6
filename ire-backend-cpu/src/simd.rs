//! Run-time dispatch to kernels compiled for wider vectors.
//!
//! The default x86-64 target has SSE2 only: four `f32` lanes, which leaves AdamW's square root
//! and two divisions compute-bound. The same loops compiled with AVX2 have eight lanes. The
//! operations are the same correctly rounded IEEE ones and Rust never contracts `a*b + c` into
//! an FMA, so results are bit-identical; the tests run both paths.

/// Whether this CPU has AVX2 (cached by the standard library after the first call).
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AVX-512F (cached like [`has_avx2`]).
#[inline]
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines a kernel `fn name<T: Scalar>(wide: bool, args…) -> R` whose body is compiled three
/// times, for the base target, AVX2 and AVX-512F, and dispatched on `wide` and the CPU: the
/// widest the CPU has. Sixteen `f32` lanes halve the compute-bound part of AdamW again (its
/// square root and divisions); the results are the same bits on every path.
///
/// The body is an `#[inline(always)]` function called from a `#[target_feature]` one, so the
/// AVX2 copy never depends on the inliner's cost model (a closure would).
macro_rules! kernel {
    (
        $(#[$meta:meta])*
        fn $name:ident<$T:ident>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $name<$T: ire_core::Scalar>(wide: bool, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<$T: ire_core::Scalar>($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2<$T: ire_core::Scalar>($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512<$T: ire_core::Scalar>($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            {
                if wide && $crate::simd::has_avx512() {
                    // SAFETY: the CPU supports AVX-512F, checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if wide && $crate::simd::has_avx2() {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            let _ = wide;
            body($($arg),*)
        }
    };
}

pub(crate) use kernel;

//! The neural-network kernel program and what every device op shares: launch geometry, the
//! errors of sizes the kernels cannot index.

use ire_core::kernels::{Extension, REDUCE_WG};
use ire_core::{Error, Result, Scalar};

/// The neural-network kernel program: both kernel files, compiled as one program per dtype.
pub static NN_KERNELS: Extension = Extension {
    name: "ire-nn",
    source: concat!(
        include_str!("../../../kernels/nn_cnn.cl"),
        "\n",
        include_str!("../../../kernels/nn_tf.cl")
    ),
};

/// Work-items per work-group of every launch (the device layer's launch contract).
pub(crate) const WG: usize = REDUCE_WG;

pub(crate) fn unsupported(what: &str) -> Error {
    Error::Unsupported {
        backend: "device".into(),
        what: format!("the neural-network op `{what}` on a device backend"),
    }
}

/// A product of sizes that saturates instead of overflowing (then a size check fails).
pub(crate) fn prod(xs: &[usize]) -> usize {
    xs.iter().fold(1usize, |a, &x| a.saturating_mul(x))
}

/// Positions and classes are stored as `T`: in f32 only integers up to 2^24 are exact.
pub(crate) fn exact_index<T: Scalar>(what: &str, n: usize) -> Result<()> {
    if (n as f64) <= 2.0 / T::EPSILON_F64 {
        Ok(())
    } else {
        Err(unsupported(&format!(
            "{what} over {n} positions or classes in {}",
            std::any::type_name::<T>()
        )))
    }
}

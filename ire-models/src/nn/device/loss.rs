//! The loss, the estimator's label sampling and dropout on device backends, as launches of the
//! kernels in `kernels/nn_tf.cl`. `softmax_xent` downloads its two scalars and its validity
//! flags; nothing else leaves the device.

use ire_core::device::KernelArg::{Index, Real, U32};
use ire_core::device::{DeviceBackend, DeviceBuffer, Runtime, groups_for};
use ire_core::{Backend, Error, Result, Scalar};

use super::kernels::{NN_KERNELS, exact_index, prod};
use crate::nn::ops::{LossOps, bad_label, need};

impl<R: Runtime> LossOps for DeviceBackend<R> {
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent<T: Scalar>(
        &self,
        logits: &DeviceBuffer<R, T>,
        labels: &DeviceBuffer<R, T>,
        n: usize,
        c: usize,
        eps: f64,
        scale: f64,
        dlogits: &mut DeviceBuffer<R, T>,
    ) -> Result<(f64, usize)> {
        need(
            "softmax_xent: logits",
            self.len(logits).min(self.len(dlogits)),
            prod(&[n, c]),
        )?;
        need("softmax_xent: labels", self.len(labels), n)?;
        if n == 0 {
            return Ok((0.0, 0));
        }
        exact_index::<T>("softmax_xent", n.max(c))?;
        let mut info = self.scratch::<T>(3 * n)?;
        let mut res = self.scratch::<T>(5)?;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_xent_rows",
            n,
            &[
                logits.input(),
                labels.input(),
                Index(c),
                Real(eps / c as f64),
                Real(1.0 - eps),
                Real(scale),
                dlogits.output(),
                info.output(),
            ],
        )?;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_xent_total",
            1,
            &[info.input(), labels.input(), Index(n), res.output()],
        )?;
        // The one download of the NN ops: loss and accuracy for the progress report, and the
        // validity flags that turn into the host's errors.
        let mut r = [T::zero(); 5];
        self.download(&res, &mut r)?;
        if r[2].as_f64() > 0.0 {
            return Err(Error::NonFinite {
                what: "logits".into(),
            });
        }
        if r[4].as_f64() > 0.0 {
            return Err(bad_label(r[3].as_f64(), c));
        }
        Ok((r[0].as_f64(), r[1].as_f64().round() as usize))
    }

    fn sample_labels<T: Scalar>(
        &self,
        logits: &DeviceBuffer<R, T>,
        n: usize,
        c: usize,
        uniforms: &DeviceBuffer<R, T>,
        labels: &mut DeviceBuffer<R, T>,
    ) -> Result<()> {
        need("sample_labels: logits", self.len(logits), prod(&[n, c]))?;
        need("sample_labels", self.len(uniforms).min(self.len(labels)), n)?;
        if n == 0 {
            return Ok(());
        }
        exact_index::<T>("sample_labels", c)?;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_sample_rows",
            n,
            &[logits.input(), Index(c), uniforms.input(), labels.output()],
        )
    }

    fn dropout<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        y: &mut DeviceBuffer<R, T>,
        len: usize,
        p: f64,
        seed: u64,
    ) -> Result<()> {
        need("dropout", self.len(x).min(self.len(y)), len)?;
        // The host keeps element i iff its 24-bit hash h satisfies h ≥ p·2^24 (exact in f64);
        // for an integer h that is h ≥ ⌈p·2^24⌉, a threshold the kernel compares in integers.
        let scaled = p * (1u64 << 24) as f64;
        let thr = if scaled.is_nan() {
            1u32 << 24
        } else {
            scaled.ceil().clamp(0.0, (1u32 << 24) as f64) as u32
        };
        self.launch::<T>(
            &NN_KERNELS,
            "tf_dropout",
            groups_for(len),
            &[
                x.input(),
                y.output(),
                Real(1.0 / (1.0 - p)),
                U32(seed as u32),
                U32((seed >> 32) as u32),
                U32(thr),
                Index(len),
            ],
        )
    }

    fn dropout_backward<T: Scalar>(
        &self,
        dy: &DeviceBuffer<R, T>,
        dx: &mut DeviceBuffer<R, T>,
        len: usize,
        p: f64,
        seed: u64,
    ) -> Result<()> {
        self.dropout(dy, dx, len, p, seed)
    }
}

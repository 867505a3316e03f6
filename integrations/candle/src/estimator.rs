//! The estimator gradient `ĝ` of IRE-SPEC §2 for a model written in candle: the gradient of the
//! cross-entropy of the model's logits against labels SAMPLED from its own softmax (the Fisher /
//! Gauss-Newton diagonal estimator), one extra backward every `K` steps.
//!
//! Works for a classifier (`[batch, classes]` logits) and a language model (`[batch, seq,
//! vocab]`): every leading dimension is a row, the last one the classes. The draws are
//! `ire-core`'s ([`ire_core::sampling`]): a function of `(seed, step, row)` only, so a resumed
//! run samples the same labels.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use ire_candle::estimator::{LabelSampler, estimator_gradient};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let w = Var::from_vec(vec![0.1f32, -0.2, 0.3, 0.0, 0.5, -0.1], (2, 3), &Device::Cpu)?;
//! let x = Tensor::new(&[[1.0f32, 2.0], [0.5, -1.0]], &Device::Cpu)?;
//! let logits = x.matmul(w.as_tensor())?; // [batch 2, classes 3]
//! let g_hat = estimator_gradient(&logits, &LabelSampler::new(7), 0)?;
//! assert_eq!(g_hat.get(&w).map(|g| g.dims().to_vec()), Some(vec![2, 3]));
//! # Ok(()) }
//! ```

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use ire_core::sampling::{counter_uniform, sample_from_logits};

use crate::error::{Error, Result};

/// Draws labels from a model's softmax, reproducibly from a seed and the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelSampler {
    seed: u64,
}

impl LabelSampler {
    /// A sampler whose draws depend on `seed`.
    pub fn new(seed: u64) -> Self {
        LabelSampler { seed }
    }

    /// One label per row of `logits` (every dimension but the last), drawn from the softmax of
    /// the row, as a `u32` tensor of the leading dimensions' shape on the logits' device.
    /// Fails on logits with no class dimension or no class, and on a non-finite logit (its
    /// estimate would be refused anyway).
    pub fn sample(&self, logits: &Tensor, step: u64) -> Result<Tensor> {
        let (rows, classes) = rows_and_classes(logits)?;
        let flat = logits
            .detach()
            .reshape((rows, classes))?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        let mut labels = Vec::with_capacity(rows);
        for (r, row) in flat.iter().enumerate() {
            let u = counter_uniform(self.seed, step, r as u64);
            let label = sample_from_logits(row, u).ok_or(Error::NonFiniteLogits { row: r })?;
            labels.push(label as u32);
        }
        let lead = &logits.dims()[..logits.rank() - 1];
        Ok(Tensor::from_vec(labels, lead, logits.device())?)
    }
}

/// The mean cross-entropy of `logits` (`[..., classes]`) against `labels` (`u32`, the leading
/// shape): the loss whose gradient is `ĝ` when the labels are sampled.
pub fn sampled_label_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (rows, classes) = rows_and_classes(logits)?;
    let logits = logits.reshape((rows, classes))?;
    let labels = labels.flatten_all()?;
    Ok(candle_nn::loss::cross_entropy(&logits, &labels)?)
}

/// `ĝ`: the gradient of [`sampled_label_loss`] at labels drawn by `sampler` for `step`, for
/// every variable `logits` depends on. The logits of the training forward pass can be reused
/// (candle keeps the graph), so the estimate costs one backward.
pub fn estimator_gradient(logits: &Tensor, sampler: &LabelSampler, step: u64) -> Result<GradStore> {
    let labels = sampler.sample(logits, step)?;
    Ok(sampled_label_loss(logits, &labels)?.backward()?)
}

fn rows_and_classes(logits: &Tensor) -> Result<(usize, usize)> {
    let dims = logits.dims();
    match dims.split_last() {
        Some((&classes, lead)) if classes > 0 && !lead.is_empty() => {
            Ok((lead.iter().product(), classes))
        }
        _ => Err(Error::LogitsShape {
            shape: dims.to_vec(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn labels_depend_on_seed_step_and_row_only() -> Result<()> {
        let logits = Tensor::zeros((2, 50, 7), DType::F32, &Device::Cpu)?;
        let s = LabelSampler::new(3);
        let a = s.sample(&logits, 10)?;
        assert_eq!(a.dims(), &[2, 50]);
        let again = s.sample(&logits, 10)?.flatten_all()?.to_vec1::<u32>()?;
        assert_eq!(a.flatten_all()?.to_vec1::<u32>()?, again);
        let other = s.sample(&logits, 11)?.flatten_all()?.to_vec1::<u32>()?;
        assert_ne!(again, other);
        assert!(again.iter().all(|&l| l < 7));
        assert!(matches!(
            s.sample(&Tensor::zeros(5, DType::F32, &Device::Cpu)?, 0),
            Err(Error::LogitsShape { .. })
        ));
        let bad = Tensor::new(&[[0.0f32, f32::INFINITY]], &Device::Cpu)?;
        assert!(matches!(
            s.sample(&bad, 0),
            Err(Error::NonFiniteLogits { row: 0 })
        ));
        Ok(())
    }
}

//! The estimator gradient `ĝ` of IRE-SPEC §2 for a model written in burn: the gradient of the
//! cross-entropy of the model's logits against labels SAMPLED from its own softmax, one extra
//! backward every `K` steps. Logits are `[rows, classes]` (a language model's `[batch, seq,
//! vocab]` reshaped to `[batch·seq, vocab]`); the draws are `ire-core`'s
//! ([`ire_core::sampling`]), a function of `(seed, step, row)` only.

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use ire_core::sampling::{counter_uniform, sample_from_logits};

/// What can go wrong drawing labels.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EstimatorError {
    /// The logits could not be read to the host.
    #[error("reading the logits failed: {reason}")]
    Read {
        /// The backend's message.
        reason: String,
    },
    /// The loss reached no parameter of the module: the logits are not on a live graph (burn's
    /// backward consumes the graph, so the estimator needs its own forward pass).
    #[error("the sampled-label loss has no gradient for any parameter of the module")]
    NoGradient,
    /// A row has no class or a non-finite logit, so no label can be drawn from it.
    #[error("row {row} of the logits has no class or a non-finite value")]
    Row {
        /// The row.
        row: usize,
    },
}

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

    /// One label per row of `logits` (`[rows, classes]`), drawn from the row's softmax, on
    /// the logits' device.
    pub fn sample<B: Backend>(
        &self,
        logits: &Tensor<B, 2>,
        step: u64,
    ) -> Result<Tensor<B, 1, Int>, EstimatorError> {
        let [rows, classes] = logits.dims();
        let values = logits
            .clone()
            .try_into_data()
            .map_err(|e| EstimatorError::Read {
                reason: e.to_string(),
            })?
            .convert::<f64>()
            .into_vec::<f64>()
            .map_err(|e| EstimatorError::Read {
                reason: format!("{e:?}"),
            })?;
        let mut labels = Vec::with_capacity(rows);
        for r in 0..rows {
            let row = &values[r * classes..(r + 1) * classes];
            let u = counter_uniform(self.seed, step, r as u64);
            let l = sample_from_logits(row, u).ok_or(EstimatorError::Row { row: r })?;
            labels.push(l as i64);
        }
        Ok(Tensor::from_data(
            TensorData::new(labels, [rows]),
            &logits.device(),
        ))
    }
}

/// `ĝ`: the gradient, for every parameter of `module`, of the mean cross-entropy of `logits`
/// at labels drawn by `sampler` for `step`. `logits` must come from a forward pass whose graph
/// no backward has consumed yet (burn frees the graph in backward): one extra forward and
/// backward every `K` steps, as IRE-SPEC §2 counts it.
pub fn estimator_gradient<B: AutodiffBackend, M: AutodiffModule<B>>(
    logits: Tensor<B, 2>,
    module: &M,
    sampler: &LabelSampler,
    step: u64,
) -> Result<GradientsParams, EstimatorError> {
    let labels = sampler.sample(&logits, step)?;
    let loss = CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, labels);
    let grads = GradientsParams::from_grads(loss.backward(), module);
    if grads.is_empty() {
        return Err(EstimatorError::NoGradient);
    }
    Ok(grads)
}

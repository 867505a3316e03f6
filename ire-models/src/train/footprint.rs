//! The memory a training run takes, estimated from its arguments before any of it is taken.
//!
//! Counted: the parameters with their gradients and the optimizer's state, the host copies a
//! checkpoint makes, one batch (inputs on the host and the device, labels, logits and their
//! gradient) and the evaluation batches the trainer keeps; each in bytes, from the batch size,
//! the input shape or context, the number of classes or the vocabulary, and the parameter
//! count. The layers' own activations come on top, so the estimate is a lower bound: a run it
//! refuses could never fit.

use super::config::TrainConfig;
use super::optimizer::OptimizerKind;
use super::source::{Input, Source};
use crate::memory::{self, MemoryError};

/// One part of the estimate.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    /// What it is, with the numbers that size it.
    pub what: String,
    /// Bytes.
    pub bytes: u128,
}

/// The parts of a run of `cfg` on `data` with a model of `params` parameters, `classes`
/// outputs and `rows` logit rows per example.
pub fn training(
    cfg: &TrainConfig,
    data: &Source,
    params: usize,
    classes: usize,
    rows: usize,
) -> Vec<Part> {
    let (p, bs, c, r) = (
        params as u128,
        cfg.batch_size as u128,
        classes as u128,
        rows as u128,
    );
    let input = match data.input() {
        Input::Image { shape, .. } => (shape.0 * shape.1 * shape.2) as u128,
        Input::Tokens { context, .. } => context as u128,
    };
    // State bytes per parameter. An IRE mask counts one byte: it is one bit on the backend,
    // but a checkpoint's host copy holds a byte per coordinate (an upper bound either way).
    let base = match cfg.optimizer {
        OptimizerKind::Adamw | OptimizerKind::Admire => 8,
        _ => 4 * u128::from(cfg.opt.momentum != 0.0),
    };
    let sam = if cfg.optimizer.is_sam() { 4 } else { 0 };
    // ĝ, the estimate h, the previous parameters, the mask.
    let ire = if cfg.optimizer.is_ire() { 13 } else { 0 };
    let state = base + sam + ire;
    let eval_examples = match data {
        Source::Images { test, .. } => {
            let n = test.len() as u128;
            match cfg.eval_batches {
                0 => n,
                k => n.min(k as u128 * bs),
            }
        }
        Source::Text { val, .. } => val.tokens().len() as u128 / (val.context().max(1) as u128),
    };
    vec![
        Part {
            what: format!(
                "{params} parameters with their gradients and {} optimizer state",
                cfg.optimizer
            ),
            bytes: p * (8 + state),
        },
        Part {
            what: "the host copies of a checkpoint".into(),
            bytes: p * (4 + 2 * state),
        },
        Part {
            what: format!(
                "a batch of {} × {input} inputs (host and device) and its labels",
                cfg.batch_size
            ),
            bytes: bs * (input * 8 + r * 8),
        },
        Part {
            what: format!(
                "the logits and their gradient ({} × {rows} rows × {classes} classes)",
                cfg.batch_size
            ),
            bytes: bs * r * c * 8,
        },
        Part {
            what: format!("{eval_examples} evaluation examples"),
            bytes: eval_examples * (input * 4 + r * 4),
        },
    ]
}

/// Refuses `parts` when their sum is above the memory limit; the error names the largest part.
pub fn check(parts: &[Part]) -> Result<(), MemoryError> {
    let total = parts.iter().fold(0u128, |a, p| a.saturating_add(p.bytes));
    let largest = parts.iter().max_by_key(|p| p.bytes);
    memory::check(
        || match largest {
            Some(l) => format!(
                "this run (at least; the largest part: {}, {})",
                l.what,
                memory::human(l.bytes)
            ),
            None => "this run".into(),
        },
        total,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ImageDataset;

    fn images(n: usize) -> ImageDataset {
        ImageDataset {
            pixels: vec![0; n * 4],
            labels: vec![0; n],
            channels: 1,
            height: 2,
            width: 2,
            num_classes: 5,
            class_names: Vec::new(),
        }
    }

    #[test]
    fn parts_follow_the_arguments() {
        let cfg = TrainConfig {
            optimizer: OptimizerKind::Sgd,
            batch_size: 3,
            ..TrainConfig::default()
        };
        let src = Source::images(&cfg, images(10), images(4));
        let bytes: Vec<u128> = training(&cfg, &src, 100, 5, 1)
            .iter()
            .map(|p| p.bytes)
            .collect();
        // θ and ∇ (8 bytes) + momentum (4); host copies 4 + 2·4; a batch of 3 × (4 inputs × 8
        // + 8); logits 3 × 5 × 8; 4 test images × (4 × 4 + 4).
        assert_eq!(bytes, [1200, 1200, 120, 120, 80]);
        let admire = TrainConfig {
            optimizer: OptimizerKind::Admire,
            eval_batches: 1,
            ..cfg
        };
        let b = training(&admire, &src, 100, 5, 1);
        // Adam's two moments (8) + IRE's ĝ, h, previous θ and mask (13 quarters of 4 bytes
        // = 13); evaluation limited to one batch of 3.
        assert_eq!(b[0].bytes, 100 * (8 + 8 + 13));
        assert_eq!(b[1].bytes, 100 * (4 + 2 * (8 + 13)));
        assert_eq!(b[4].bytes, 3 * 20);
        assert!(check(&b).is_ok());
    }
}

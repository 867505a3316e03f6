//! Two trainers timed in turn, a block of steps each, the order alternating from block to
//! block, so that whatever else the machine does falls on both alike: the measurement behind
//! "IRE over its base optimizer, per training step".

use std::time::Instant;

use ire_models::nn::NnOps;
use ire_models::train::{TrainError, Trainer};

/// Per-step seconds of every timed block of each trainer, in block order.
#[derive(Clone, Debug, Default)]
pub struct BlockTimes {
    /// The first trainer's seconds per step, one entry per block.
    pub a: Vec<f64>,
    /// The second trainer's.
    pub b: Vec<f64>,
}

impl BlockTimes {
    /// The mean seconds per step of the first and of the second trainer.
    pub fn means(&self) -> (f64, f64) {
        (mean(&self.a), mean(&self.b))
    }

    /// The ratio of the mean per-step times, second over first.
    pub fn ratio_of_means(&self) -> f64 {
        let (a, b) = self.means();
        b / a
    }
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len().max(1) as f64
}

/// Runs one untimed warm-up block on each trainer (allocations, the first mask), then
/// `blocks` timed blocks of `steps` steps each, `a` first in even blocks and `b` first in odd
/// ones; `on_block(i, a_s, b_s)` sees each pair of per-step times as it is measured.
pub fn interleaved_blocks<A: NnOps + 'static, B: NnOps + 'static>(
    a: &mut Trainer<A>,
    b: &mut Trainer<B>,
    steps: u64,
    blocks: usize,
    mut on_block: impl FnMut(usize, f64, f64) -> Result<(), TrainError>,
) -> Result<BlockTimes, TrainError> {
    fn block<X: NnOps + 'static>(t: &mut Trainer<X>, steps: u64) -> Result<f64, TrainError> {
        let t0 = Instant::now();
        for _ in 0..steps {
            t.train_step()?;
        }
        Ok(t0.elapsed().as_secs_f64() / steps.max(1) as f64)
    }
    block(a, steps)?;
    block(b, steps)?;
    let mut out = BlockTimes::default();
    for i in 0..blocks {
        let (x, y) = if i % 2 == 0 {
            let x = block(a, steps)?;
            (x, block(b, steps)?)
        } else {
            let y = block(b, steps)?;
            (block(a, steps)?, y)
        };
        on_block(i, x, y)?;
        out.a.push(x);
        out.b.push(y);
    }
    Ok(out)
}

//! Context windows over a token sequence: random ones for training, sequential ones for
//! evaluation.

use super::TextError;
use crate::rng::Rng;

/// The `stream` argument of [`Rng::derive`] for [`TokenBatches::random_batch`].
pub const RANDOM_BATCH_STREAM: u64 = 0x7465_7874; // "text"

/// Windows of `context` tokens over one split, `batch` of them at a time. A window's targets
/// are its inputs shifted by one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBatches {
    tokens: Vec<u32>,
    context: usize,
    batch: usize,
    seed: u64,
}

impl TokenBatches {
    /// Windows over `tokens`; an error when `context` or `batch` is zero, or when the tokens are
    /// fewer than `context + 1` (one window and its shifted targets).
    pub fn new(
        tokens: Vec<u32>,
        context: usize,
        batch: usize,
        seed: u64,
    ) -> Result<TokenBatches, TextError> {
        if context == 0 || batch == 0 {
            return Err(TextError::Config(format!(
                "context ({context}) and batch ({batch}) must be at least 1"
            )));
        }
        let needed = context.saturating_add(1);
        if tokens.len() < needed {
            return Err(TextError::TooShort {
                tokens: tokens.len(),
                context,
                needed,
            });
        }
        Ok(TokenBatches {
            tokens,
            context,
            batch,
            seed,
        })
    }

    /// The token sequence.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Tokens per window.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Windows per batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The seed of [`TokenBatches::random_batch`].
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The start offsets of the windows of `random_batch(step)`: `batch` draws, uniform in
    /// `0..=len − context − 1` (nanoGPT's `torch.randint(len(data) − block_size)`), from
    /// `Rng::derive(seed, RANDOM_BATCH_STREAM, step)`, so a step's batch depends on nothing else.
    pub fn random_offsets(&self, step: u64) -> Vec<usize> {
        let mut rng = Rng::derive(self.seed, RANDOM_BATCH_STREAM, step);
        let span = (self.tokens.len() - self.context) as u64;
        (0..self.batch).map(|_| rng.below(span) as usize).collect()
    }

    /// `(inputs, targets)` of step `step`: `batch × context` ids each, row-major, window `b` at
    /// offset `o = random_offsets(step)[b]` being `tokens[o..o + context]` and
    /// `tokens[o + 1..o + context + 1]`.
    pub fn random_batch(&self, step: u64) -> (Vec<u32>, Vec<u32>) {
        let n = self.batch * self.context;
        let (mut inputs, mut targets) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for o in self.random_offsets(step) {
            inputs.extend_from_slice(&self.tokens[o..o + self.context]);
            targets.extend_from_slice(&self.tokens[o + 1..o + self.context + 1]);
        }
        (inputs, targets)
    }

    /// Non-overlapping windows for evaluation, in order, that predict every token after the
    /// first exactly once: `⌊(len − 1) / context⌋` full windows starting at `0, context, 2
    /// context, …`, `batch` per item (the last item may have fewer rows), then, when
    /// `(len − 1) mod context = r > 0`, one item with a single window of the last `r` targets.
    pub fn sequential_batches(&self) -> SequentialBatches<'_> {
        SequentialBatches {
            owner: self,
            next_window: 0,
            tail_done: false,
        }
    }

    /// Number of items [`TokenBatches::sequential_batches`] yields.
    pub fn num_sequential_batches(&self) -> usize {
        let targets = self.tokens.len() - 1;
        let full = targets / self.context;
        full.div_ceil(self.batch) + usize::from(!targets.is_multiple_of(self.context))
    }
}

/// One evaluation batch: `rows` windows of `len` tokens, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequentialBatch {
    /// `rows × len` input ids.
    pub inputs: Vec<u32>,
    /// `rows × len` target ids, the inputs shifted by one token.
    pub targets: Vec<u32>,
    /// Windows in this batch.
    pub rows: usize,
    /// Tokens per window: the context, or less for the final partial window.
    pub len: usize,
}

/// Iterator of [`TokenBatches::sequential_batches`].
#[derive(Debug)]
pub struct SequentialBatches<'a> {
    owner: &'a TokenBatches,
    next_window: usize,
    tail_done: bool,
}

impl Iterator for SequentialBatches<'_> {
    type Item = SequentialBatch;

    fn next(&mut self) -> Option<SequentialBatch> {
        let t = self.owner;
        let targets = t.tokens.len() - 1;
        let full = targets / t.context;
        if self.next_window < full {
            let rows = (full - self.next_window).min(t.batch);
            let mut inputs = Vec::with_capacity(rows * t.context);
            let mut tgts = Vec::with_capacity(rows * t.context);
            for w in self.next_window..self.next_window + rows {
                let o = w * t.context;
                inputs.extend_from_slice(&t.tokens[o..o + t.context]);
                tgts.extend_from_slice(&t.tokens[o + 1..o + t.context + 1]);
            }
            self.next_window += rows;
            return Some(SequentialBatch {
                inputs,
                targets: tgts,
                rows,
                len: t.context,
            });
        }
        let rest = targets % t.context;
        if self.tail_done || rest == 0 {
            return None;
        }
        self.tail_done = true;
        let o = full * t.context;
        Some(SequentialBatch {
            inputs: t.tokens[o..o + rest].to_vec(),
            targets: t.tokens[o + 1..o + rest + 1].to_vec(),
            rows: 1,
            len: rest,
        })
    }
}

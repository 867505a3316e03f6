//! The interface every network implements: a forward and a hand-written backward over one
//! parameter arena, its layout, and its non-parameter state.

use ire_core::{Result, Scalar};

use crate::nn::layers::{BatchNorm2d, Layout};
use crate::nn::{BnMode, NnOps};

/// A classifier with its parameters in one arena.
pub trait Model<B: NnOps, T: Scalar> {
    /// Preset name.
    fn name(&self) -> &str;
    /// The parameter arena layout.
    fn layout(&self) -> &Layout;
    /// Number of classes.
    fn num_classes(&self) -> usize;
    /// Forward pass of `n` examples (`x` is `n × C × H × W`); the logits stay in the model.
    fn forward(
        &mut self,
        b: &B,
        params: &B::Buffer<T>,
        x: &B::Buffer<T>,
        n: usize,
        mode: BnMode,
    ) -> Result<()>;
    /// Logits of the last forward (`n × classes`).
    fn logits(&self) -> &B::Buffer<T>;
    /// Backward of the last (training-mode) forward on input `x`: ACCUMULATES into `grads`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &mut self,
        b: &B,
        params: &B::Buffer<T>,
        grads: &mut B::Buffer<T>,
        x: &B::Buffer<T>,
        dlogits: &B::Buffer<T>,
        n: usize,
    ) -> Result<()>;
    /// Rows of logits per example (1 for classifiers, the context length for language models).
    fn rows_per_example(&self) -> usize {
        1
    }
    /// The vocabulary size when the input is token ids (language models), else `None`; the
    /// trainer checks ids against it on the host before they reach a device.
    fn token_vocab(&self) -> Option<usize> {
        None
    }
    /// Non-parameter state (batch-norm running statistics), named, for checkpoints.
    fn state(&self) -> Vec<(String, &B::Buffer<T>)>;
    /// The same, mutably (to restore a checkpoint).
    fn state_mut(&mut self) -> Vec<(String, &mut B::Buffer<T>)>;
    /// Its batch-norm layers (none by default), e.g. to synchronize their statistics over a
    /// data-parallel group.
    fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm2d<B, T>> {
        Vec::new()
    }
}

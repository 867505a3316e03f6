//! The paper's image networks over the [`NnOps`] trait, and their presets.

mod mlp;
mod resnet;

pub use mlp::Mlp;
pub use resnet::{ResNet, ResNetConfig};

use std::fmt;
use std::str::FromStr;

use ire_core::{Result, Scalar};

use crate::nn::layers::Layout;
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
    /// Non-parameter state (batch-norm running statistics), named, for checkpoints.
    fn state(&self) -> Vec<(String, &B::Buffer<T>)>;
    /// The same, mutably (to restore a checkpoint).
    fn state_mut(&mut self) -> Vec<(String, &mut B::Buffer<T>)>;
}

/// A model preset by name, as on the command line.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSpec {
    /// MLP with these hidden widths.
    Mlp(Vec<usize>),
    /// CIFAR ResNet (post-activation basic blocks) or pre-activation WideResNet.
    ResNet(ResNetConfig),
}

impl ModelSpec {
    /// Every preset name accepted by [`FromStr`].
    pub const PRESETS: &'static [&'static str] = &[
        "mlp",
        "mlp-small",
        "resnet-small",
        "resnet20",
        "resnet56",
        "wrn-small",
        "wrn-16-8",
        "wrn-28-10",
    ];

    /// Builds the model for inputs of shape `(C, H, W)` and `classes` classes.
    pub fn build<B: NnOps + 'static, T: Scalar>(
        &self,
        b: &B,
        input: (usize, usize, usize),
        classes: usize,
    ) -> Result<Box<dyn Model<B, T>>> {
        Ok(match self {
            ModelSpec::Mlp(h) => Box::new(Mlp::new(b, self.to_string(), input, h, classes)?),
            ModelSpec::ResNet(c) => Box::new(ResNet::new(b, self.to_string(), c, input, classes)?),
        })
    }
}

impl FromStr for ModelSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "mlp" => ModelSpec::Mlp(vec![512, 256]),
            "mlp-small" => ModelSpec::Mlp(vec![128]),
            "resnet-small" => ModelSpec::ResNet(ResNetConfig::resnet(8, 8)),
            "resnet20" => ModelSpec::ResNet(ResNetConfig::resnet(20, 16)),
            "resnet56" => ModelSpec::ResNet(ResNetConfig::resnet(56, 16)),
            "wrn-small" => ModelSpec::ResNet(ResNetConfig::wrn(10, 1)),
            "wrn-16-8" => ModelSpec::ResNet(ResNetConfig::wrn(16, 8)),
            "wrn-28-10" => ModelSpec::ResNet(ResNetConfig::wrn(28, 10)),
            other => {
                return Err(format!(
                    "unknown model `{other}`: expected one of {}",
                    ModelSpec::PRESETS.join(", ")
                ));
            }
        })
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSpec::Mlp(h) if *h == [512, 256] => f.write_str("mlp"),
            ModelSpec::Mlp(h) if *h == [128] => f.write_str("mlp-small"),
            ModelSpec::Mlp(h) => write!(
                f,
                "mlp-{}",
                h.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("-")
            ),
            ModelSpec::ResNet(c) => f.write_str(&c.name()),
        }
    }
}

//! The paper's image networks over the [`NnOps`] trait, and their presets.

mod mlp;
mod model;
mod resnet;
pub mod transformer;

pub use mlp::Mlp;
pub use model::Model;
pub use resnet::{ResNet, ResNetConfig};
pub use transformer::{Ffn, Positional, Transformer, TransformerConfig};

use std::fmt;
use std::str::FromStr;

use ire_core::{Result, Scalar};

use crate::nn::NnOps;

/// A model preset by name, as on the command line.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSpec {
    /// MLP with these hidden widths.
    Mlp(Vec<usize>),
    /// CIFAR ResNet (post-activation basic blocks) or pre-activation WideResNet.
    ResNet(ResNetConfig),
    /// ViT on images: (width, heads, layers, patch side).
    Vit(usize, usize, usize, usize),
    /// A language model; vocabulary and context come at build time.
    Lm(LmPreset),
}

/// Language-model presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LmPreset {
    /// The paper's 2-layer post-LN decoder (d 128, 8 heads, FFN 512, ReLU).
    Paper,
    /// The same with the official code's positional-encoding quirk.
    PaperQuirk,
    /// nanoGPT's documented CPU configuration: 4 layers, 4 heads, d 128 (GPT-style, pre-LN).
    GptNano,
    /// One GPT-2-small-shaped block (d 768, 12 heads, FFN 3072, pre-LN, GELU, learned positions,
    /// tied embeddings): the per-block cost of GPT-2 small, for benchmarks.
    Gpt2Block,
    /// A tiny Llama for tests and CPU runs: d 64, 4 heads, 2 layers, SwiGLU 172.
    LlamaTiny,
    /// The paper's WikiText-103 Llama (d 410, 10 heads, 16 layers, FFN 4d).
    Llama60m,
    /// The paper's MiniPile Llama (d 768, 12 heads, 6 layers, FFN 4d).
    Llama119m,
    /// The paper's OpenWebText Llama (d 768, 12 heads, 16 layers, FFN 4d).
    Llama229m,
}

impl LmPreset {
    /// The configuration for a vocabulary and a context length.
    pub fn config(self, vocab: usize, ctx: usize) -> TransformerConfig {
        match self {
            LmPreset::Paper => TransformerConfig::paper_lm(vocab, ctx),
            LmPreset::PaperQuirk => TransformerConfig {
                pos: Positional::SinusoidalBatchQuirk,
                ..TransformerConfig::paper_lm(vocab, ctx)
            },
            LmPreset::GptNano => TransformerConfig::gpt(vocab, 128, 4, 4, ctx),
            LmPreset::Gpt2Block => TransformerConfig::gpt(vocab, 768, 12, 1, ctx),
            LmPreset::LlamaTiny => TransformerConfig::llama(vocab, 64, 4, 2, 172, ctx),
            LmPreset::Llama60m => TransformerConfig::llama(vocab, 410, 10, 16, 4 * 410, ctx),
            LmPreset::Llama119m => TransformerConfig::llama(vocab, 768, 12, 6, 4 * 768, ctx),
            LmPreset::Llama229m => TransformerConfig::llama(vocab, 768, 12, 16, 4 * 768, ctx),
        }
    }
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
        "vit-mini",
        "vit-t",
        "vit-s",
        "lm-paper",
        "lm-paper-quirk",
        "gpt-nano",
        "gpt2-block",
        "llama-tiny",
        "llama-60m",
        "llama-119m",
        "llama-229m",
    ];

    /// Whether this is a language model (built with [`ModelSpec::build_lm`]).
    pub fn is_lm(&self) -> bool {
        matches!(self, ModelSpec::Lm(_))
    }

    /// Builds a language model over `vocab` tokens with context `ctx`.
    pub fn build_lm<B: NnOps + 'static, T: Scalar>(
        &self,
        b: &B,
        vocab: usize,
        ctx: usize,
    ) -> Result<Box<dyn Model<B, T>>> {
        match self {
            ModelSpec::Lm(p) => Ok(Box::new(Transformer::lm(
                b,
                self.to_string(),
                p.config(vocab, ctx),
            )?)),
            _ => Err(ire_core::Error::Protocol(format!(
                "`{self}` is not a language model"
            ))),
        }
    }

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
            ModelSpec::Vit(d, h, l, p) => {
                let cfg = TransformerConfig {
                    vocab: 0,
                    d: *d,
                    heads: *h,
                    layers: *l,
                    ffn: 4 * d,
                    ctx: 0,
                    act: Ffn::Gelu,
                    norm: crate::nn::NormKind::Layer,
                    pre_norm: true,
                    pos: Positional::Learned,
                    bias: true,
                    tie: false,
                };
                Box::new(Transformer::vit(
                    b,
                    self.to_string(),
                    cfg,
                    (input.0, input.1),
                    *p,
                    classes,
                )?)
            }
            ModelSpec::Lm(_) => {
                return Err(ire_core::Error::Protocol(format!(
                    "`{self}` is a language model: use build_lm"
                )));
            }
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
            "vit-mini" => ModelSpec::Vit(64, 4, 2, 4),
            "vit-t" => ModelSpec::Vit(192, 3, 12, 4),
            "vit-s" => ModelSpec::Vit(384, 6, 12, 4),
            "lm-paper" => ModelSpec::Lm(LmPreset::Paper),
            "lm-paper-quirk" => ModelSpec::Lm(LmPreset::PaperQuirk),
            "gpt-nano" => ModelSpec::Lm(LmPreset::GptNano),
            "gpt2-block" => ModelSpec::Lm(LmPreset::Gpt2Block),
            "llama-tiny" => ModelSpec::Lm(LmPreset::LlamaTiny),
            "llama-60m" => ModelSpec::Lm(LmPreset::Llama60m),
            "llama-119m" => ModelSpec::Lm(LmPreset::Llama119m),
            "llama-229m" => ModelSpec::Lm(LmPreset::Llama229m),
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
            ModelSpec::Vit(64, 4, 2, 4) => f.write_str("vit-mini"),
            ModelSpec::Vit(192, 3, 12, 4) => f.write_str("vit-t"),
            ModelSpec::Vit(384, 6, 12, 4) => f.write_str("vit-s"),
            ModelSpec::Vit(d, h, l, p) => write!(f, "vit-d{d}-h{h}-l{l}-p{p}"),
            ModelSpec::Lm(p) => f.write_str(match p {
                LmPreset::Paper => "lm-paper",
                LmPreset::PaperQuirk => "lm-paper-quirk",
                LmPreset::GptNano => "gpt-nano",
                LmPreset::Gpt2Block => "gpt2-block",
                LmPreset::LlamaTiny => "llama-tiny",
                LmPreset::Llama60m => "llama-60m",
                LmPreset::Llama119m => "llama-119m",
                LmPreset::Llama229m => "llama-229m",
            }),
        }
    }
}

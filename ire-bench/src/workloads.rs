//! Training-step workloads on synthetic data of the real shapes, for benchmarks that time one
//! [`Trainer::train_step`] of a model preset on any backend: CIFAR-shaped images for the image
//! models, random token ids over a made-up vocabulary for the language models.

use ire_models::data::ImageDataset;
use ire_models::nn::NnOps;
use ire_models::rng::Rng;
use ire_models::text::{TextError, TokenBatches, Tokenizer};
use ire_models::train::source::Source;
use ire_models::train::{
    DatasetKind, OptimizerConfig, OptimizerKind, TrainConfig, TrainError, Trainer,
};

/// A vocabulary of `n` made-up words (`w0`, `w1`, ...): a language model only needs its size.
pub struct SyntheticVocab(pub usize);

impl Tokenizer for SyntheticVocab {
    fn name(&self) -> &str {
        "synthetic"
    }
    fn vocab_size(&self) -> usize {
        self.0
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        text.split_whitespace()
            .map(|w| {
                w.strip_prefix('w')
                    .and_then(|d| d.parse::<u32>().ok())
                    .filter(|&i| (i as usize) < self.0)
                    .ok_or_else(|| TextError::Config(format!("`{w}` is not a synthetic word")))
            })
            .collect()
    }
    fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        let words = ids
            .iter()
            .map(|&i| {
                if (i as usize) < self.0 {
                    Ok(format!("w{i}"))
                } else {
                    Err(TextError::Config(format!(
                        "id {i} is outside the vocabulary"
                    )))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(words.join(" "))
    }
}

/// `count` CIFAR-shaped images of uniform random pixels, uniform random labels of 10 classes.
pub fn synthetic_images(count: usize, seed: u64) -> ImageDataset {
    let mut rng = Rng::new(seed);
    let per = 3 * 32 * 32;
    ImageDataset {
        pixels: (0..count * per).map(|_| rng.below(256) as u8).collect(),
        labels: (0..count).map(|_| rng.below(10) as u32).collect(),
        channels: 3,
        height: 32,
        width: 32,
        num_classes: 10,
        class_names: Vec::new(),
    }
}

/// Why a workload's trainer could not be built.
#[derive(Debug)]
pub enum WorkloadError {
    /// The token batches (a context or batch of zero).
    Text(TextError),
    /// The trainer (configuration, model, backend).
    Train(TrainError),
}

impl std::fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkloadError::Text(e) => write!(f, "token batches: {e}"),
            WorkloadError::Train(e) => write!(f, "trainer: {e}"),
        }
    }
}

impl std::error::Error for WorkloadError {}

impl From<TextError> for WorkloadError {
    fn from(e: TextError) -> Self {
        WorkloadError::Text(e)
    }
}

impl From<TrainError> for WorkloadError {
    fn from(e: TrainError) -> Self {
        WorkloadError::Train(e)
    }
}

/// One training-step workload: a model preset and the shape of its batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Model preset of `ire-models` (`resnet-small`, `lm-paper`, ...).
    pub model: String,
    /// Images, or sequences, per batch.
    pub batch: usize,
    /// Tokens per sequence (language models).
    pub context: usize,
    /// Vocabulary (language models).
    pub vocab: usize,
}

impl Workload {
    /// Whether the preset is a language model (token batches) rather than an image model.
    pub fn is_lm(&self) -> bool {
        ire_models::crosscheck::is_language_model(&self.model)
    }

    /// Items (images or tokens) one step processes.
    pub fn items(&self) -> usize {
        if self.is_lm() {
            self.batch * self.context
        } else {
            self.batch
        }
    }

    /// What the numbers are, in words.
    pub fn describe(&self) -> String {
        if self.is_lm() {
            format!(
                "AdamW; batch {} x context {}, vocabulary {}; synthetic tokens",
                self.batch, self.context, self.vocab
            )
        } else {
            format!(
                "SGD momentum 0.9; batch {} x 3x32x32, 10 classes; synthetic images",
                self.batch
            )
        }
    }

    /// The training configuration of this workload: the paper's recipes, AdamW (0.9, 0.95),
    /// weight decay 5e-4, eps 1e-16 for the language models; SGD, momentum 0.9, weight decay
    /// 5e-4, no augmentation for the image models. Change it before [`Workload::trainer_with`]
    /// to time another optimizer on the same data.
    pub fn config(&self) -> TrainConfig {
        let mut cfg = TrainConfig {
            // Like PyTorch's side: one parameter group, weight decay on every parameter.
            decay_all: true,
            model: self.model.clone(),
            steps: 1_000_000,
            constant_lr: true,
            log_every: 1,
            seed: 0,
            batch_size: self.batch,
            ..TrainConfig::default()
        };
        if self.is_lm() {
            cfg.dataset = DatasetKind::Text;
            cfg.optimizer = OptimizerKind::Adamw;
            cfg.lr = 6e-4;
            cfg.opt = OptimizerConfig {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-16,
                weight_decay: 5e-4,
                ..OptimizerConfig::default()
            };
            cfg.context = self.context;
        } else {
            cfg.dataset = DatasetKind::Cifar10;
            cfg.optimizer = OptimizerKind::Sgd;
            cfg.lr = 0.1;
            cfg.opt = OptimizerConfig {
                momentum: 0.9,
                weight_decay: 5e-4,
                ..OptimizerConfig::default()
            };
            cfg.crop_padding = Some(0);
            cfg.hflip = Some(false);
        }
        cfg
    }

    /// A trainer of this workload on `b` with its [`Workload::config`], seeded so that every
    /// backend starts from the same parameters and batches.
    pub fn trainer<B: NnOps + 'static>(&self, b: B) -> Result<Trainer<B>, WorkloadError> {
        self.trainer_with(b, self.config())
    }

    /// A trainer of this workload's data on `b` with the configuration `cfg`.
    pub fn trainer_with<B: NnOps + 'static>(
        &self,
        b: B,
        cfg: TrainConfig,
    ) -> Result<Trainer<B>, WorkloadError> {
        if self.is_lm() {
            let mut rng = Rng::new(7);
            let vocab = self.vocab.max(2);
            let len = 16 * self.batch * self.context + 1;
            let ids: Vec<u32> = (0..len).map(|_| rng.below(vocab as u64) as u32).collect();
            let val: Vec<u32> = ids[..self.context + 1].to_vec();
            let src = Source::Text {
                train: TokenBatches::new(ids, self.context, self.batch, 0)?,
                val: TokenBatches::new(val, self.context, self.batch, 0)?,
                tokenizer: Box::new(SyntheticVocab(vocab)),
            };
            Ok(Trainer::with_source(b, cfg, src)?)
        } else {
            let train = synthetic_images(8 * self.batch, 1);
            let test = synthetic_images(self.batch, 2);
            Ok(Trainer::with_data(b, cfg, train, test)?)
        }
    }
}

//! Where a trainer's batches come from: an image dataset or a tokenized text corpus.

use super::config::TrainConfig;
use super::train_error::TrainError;
use crate::data::{Augment, Batch, BatchLoader, ImageDataset, Normalize};
use crate::text::{self, TokenBatches, Tokenizer};

/// The data of a run.
// One per run, never moved in a hot loop: the size difference of the variants is irrelevant.
#[allow(clippy::large_enum_variant)]
pub enum Source {
    /// Images: train and test splits, normalization, augmentation, batch order.
    Images {
        /// Training split.
        train: ImageDataset,
        /// Test split.
        test: ImageDataset,
        /// Normalization.
        norm: Normalize,
        /// Training augmentation.
        aug: Augment,
        /// Batch order.
        loader: BatchLoader,
    },
    /// Text: random context windows of the training split, sequential ones of validation.
    Text {
        /// Training windows.
        train: TokenBatches,
        /// Validation windows.
        val: TokenBatches,
        /// The tokenizer (for sampling and reports).
        tokenizer: Box<dyn Tokenizer + Send + Sync>,
    },
}

fn tokens_to_batch(inputs: &[u32], targets: &[u32], ctx: usize) -> Batch {
    Batch {
        x: inputs.iter().map(|&t| t as f32).collect(),
        y: targets.to_vec(),
        n: inputs.len() / ctx.max(1),
    }
}

impl Source {
    /// Images from `cfg`'s dataset.
    pub fn images(cfg: &TrainConfig, train: ImageDataset, test: ImageDataset) -> Self {
        let norm = if train.channels == 3 && train.height == 32 {
            Normalize::cifar10()
        } else {
            Normalize::from_dataset(&train)
        };
        // A step's batch: every micro-batch of a gradient-accumulating step comes from it.
        let step_batch = cfg.step_batch();
        let drop_last = train.len() >= step_batch;
        let loader = BatchLoader::new(train.len(), step_batch, cfg.seed, true, drop_last);
        Source::Images {
            norm,
            aug: cfg.augment(),
            loader,
            train,
            test,
        }
    }

    /// A text corpus from `cfg.data`, split by `cfg.val_fraction` (the last part, at a line
    /// boundary), tokenized once with a cache in `$IRE_CACHE_DIR` (default: the system's
    /// temporary folder, `ire-token-cache`).
    pub fn text(cfg: &TrainConfig) -> Result<Self, TrainError> {
        let corpus = text::Corpus::load(&cfg.data)?;
        // At most one id (4 bytes) per byte of text, beside the text itself.
        crate::memory::check(
            || format!("the token ids of {}", cfg.data.display()),
            corpus.text.len() as u128 * 5,
        )?;
        let (train_text, val_text) = corpus.split(cfg.val_fraction);
        let kind = text::TokenizerKind::from_name(&cfg.tokenizer)?;
        // Characters are fitted on the whole text (nanoGPT's `sorted(set(data))`): a character
        // seen only in the held-out part must not make it untokenizable, and the character set
        // says nothing about the text's statistics. Words are fitted on the training part and
        // unseen ones become `<unk>`, as WikiText does.
        let fit_on = match kind {
            text::TokenizerKind::Char => corpus.text.as_str(),
            _ => train_text.as_str(),
        };
        let tokenizer = kind.build(fit_on)?;
        // The cache never goes next to the data (data folders are often read-only or shared).
        let cache = std::env::var_os("IRE_CACHE_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("ire-token-cache"));
        let (train_ids, _) = text::tokenize_text_cached(
            &train_text,
            &format!("{}-train", corpus.name),
            tokenizer.as_ref(),
            &cache,
        )?;
        let (val_ids, _) = text::tokenize_text_cached(
            &val_text,
            &format!("{}-val", corpus.name),
            tokenizer.as_ref(),
            &cache,
        )?;
        let train = TokenBatches::new(train_ids, cfg.context, cfg.step_batch(), cfg.seed)?;
        let val = TokenBatches::new(val_ids, cfg.context, cfg.batch_size, cfg.seed)?;
        Ok(Source::Text {
            train,
            val,
            tokenizer,
        })
    }

    /// Examples (images, or context windows' worth of tokens) in the training split.
    pub fn train_examples(&self) -> usize {
        match self {
            Source::Images { train, .. } => train.len(),
            Source::Text { train, .. } => train.tokens().len() / train.context().max(1),
        }
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        match self {
            Source::Images { train, test, .. } => {
                format!("{} training / {} test images", train.len(), test.len())
            }
            Source::Text {
                train,
                val,
                tokenizer,
            } => format!(
                "{} training / {} validation tokens ({} tokenizer, vocabulary {})",
                train.tokens().len(),
                val.tokens().len(),
                tokenizer.name(),
                tokenizer.vocab_size()
            ),
        }
    }

    /// Batches per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        match self {
            Source::Images { loader, .. } => loader.batches_per_epoch().max(1) as u64,
            Source::Text { train, .. } => {
                (train.tokens().len() / (train.context() * train.batch()).max(1)).max(1) as u64
            }
        }
    }

    /// The training batch of `step`.
    pub fn train_batch(&mut self, step: u64) -> Batch {
        let spe = self.steps_per_epoch();
        match self {
            Source::Images {
                train,
                norm,
                aug,
                loader,
                ..
            } => loader.batch(train, step / spe, (step % spe) as usize, norm, *aug),
            Source::Text { train, .. } => {
                let (x, y) = train.random_batch(step);
                tokens_to_batch(&x, &y, train.context())
            }
        }
    }

    /// The fixed estimator batch (the official CIFAR recipe): the first batch, unaugmented.
    pub fn fixed_batch(&mut self) -> Batch {
        match self {
            Source::Images {
                train,
                norm,
                loader,
                ..
            } => loader.batch(train, 0, 0, norm, Augment::NONE),
            Source::Text { train, .. } => {
                let (x, y) = train.random_batch(0);
                tokens_to_batch(&x, &y, train.context())
            }
        }
    }

    /// Evaluation batches (test images, or full validation windows; at most `limit` batches
    /// when `limit > 0`). A final partial text window is left out: models take full contexts.
    pub fn eval_batches(&self, batch_size: usize, limit: usize) -> Vec<Batch> {
        let lim = if limit == 0 { usize::MAX } else { limit };
        match self {
            Source::Images { test, norm, .. } => {
                let mut l = BatchLoader::new(test.len(), batch_size, 0, false, false);
                (0..l.batches_per_epoch().min(lim))
                    .map(|i| l.batch(test, 0, i, norm, Augment::NONE))
                    .collect()
            }
            Source::Text { val, .. } => windows(val, lim),
        }
    }

    /// The first `k` training batches in a fixed order, unaugmented (for loss/gradient probes).
    pub fn probe_batches(&self, batch_size: usize, k: usize) -> Vec<Batch> {
        match self {
            Source::Images { train, norm, .. } => {
                let mut l = BatchLoader::new(train.len(), batch_size, 0, false, false);
                (0..l.batches_per_epoch().min(k.max(1)))
                    .map(|i| l.batch(train, 0, i, norm, Augment::NONE))
                    .collect()
            }
            Source::Text { train, .. } => windows(train, k.max(1)),
        }
    }

    /// Shape of the model input: `(C, H, W)` images, or `(vocab, context)` for text.
    pub fn input(&self) -> Input {
        match self {
            Source::Images { train, test, .. } => Input::Image {
                shape: (train.channels, train.height, train.width),
                classes: train.num_classes.max(test.num_classes),
            },
            Source::Text {
                train, tokenizer, ..
            } => Input::Tokens {
                vocab: tokenizer.vocab_size(),
                context: train.context(),
            },
        }
    }

    /// The tokenizer of a text source.
    pub fn tokenizer(&self) -> Option<&(dyn Tokenizer + Send + Sync)> {
        match self {
            Source::Text { tokenizer, .. } => Some(tokenizer.as_ref()),
            _ => None,
        }
    }
}

/// What a model is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Images of `shape` in `classes` classes.
    Image {
        /// `(C, H, W)`.
        shape: (usize, usize, usize),
        /// Classes.
        classes: usize,
    },
    /// Token windows.
    Tokens {
        /// Vocabulary.
        vocab: usize,
        /// Context length.
        context: usize,
    },
}

fn windows(tb: &TokenBatches, limit: usize) -> Vec<Batch> {
    tb.sequential_batches()
        .filter_map(|b| {
            (b.len == tb.context()).then(|| tokens_to_batch(&b.inputs, &b.targets, b.len))
        })
        .take(limit)
        .collect()
}

//! Everything a training run is made of, as one serializable config (TOML file or flags).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::choices::{EstimatorBatch, EstimatorForward, OptimizerStateLayout};
use super::config_error::ConfigError;
use super::optimizer::{OptimizerConfig, OptimizerKind};
use crate::data::{self, Cifar100Labels, DataError, ImageDataset};

/// Where the images come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// CIFAR-10 binary: `data_batch_*.bin` and `test_batch.bin` in a folder.
    Cifar10,
    /// CIFAR-100 binary: `train.bin` and `test.bin` in a folder (fine labels).
    Cifar100,
    /// IDX files (MNIST, Fashion-MNIST): `train-images-idx3-ubyte[.gz]` etc. in a folder.
    Idx,
    /// Image folders `train/<class>/*` and `test/<class>/*` (ImageNet layout).
    Folder,
    /// scikit-learn's 8×8 digits CSV (a file); the last 297 images are the test split.
    Digits,
    /// A plain-text corpus (a file) for language models; the last `val_fraction` is validation.
    Text,
}

impl std::str::FromStr for DatasetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "cifar10" => DatasetKind::Cifar10,
            "cifar100" => DatasetKind::Cifar100,
            "idx" | "mnist" | "fashion-mnist" => DatasetKind::Idx,
            "folder" => DatasetKind::Folder,
            "digits" => DatasetKind::Digits,
            "text" => DatasetKind::Text,
            o => {
                return Err(format!(
                    "unknown dataset `{o}`: expected cifar10, cifar100, idx, folder, digits or text"
                ));
            }
        })
    }
}

/// A training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Model preset (`resnet20`, `mlp`, ...).
    pub model: String,
    /// Dataset format.
    pub dataset: DatasetKind,
    /// Dataset folder (or file, for `digits`).
    pub data: PathBuf,
    /// Use at most this many training images (0 = all).
    pub train_limit: usize,
    /// Use at most this many test images (0 = all).
    pub test_limit: usize,
    /// Resize folder images to this square size (0 = keep).
    pub image_size: u32,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Its hyper-parameters.
    pub opt: OptimizerConfig,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Cosine floor as a fraction of `lr` (0: decay to zero).
    pub lr_min_ratio: f64,
    /// Constant learning rate instead of the cosine.
    pub constant_lr: bool,
    /// Epochs (ignored when `steps > 0`).
    pub epochs: u64,
    /// Total steps (0: `epochs` × batches per epoch).
    pub steps: u64,
    /// Examples per forward/backward pass (the micro-batch when `grad_accum > 1`).
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimizer step (gradient
    /// accumulation, nanoGPT's `gradient_accumulation_steps`): a step sees
    /// `batch_size × grad_accum` examples, the same ones a run with that batch size sees.
    pub grad_accum: usize,
    /// Gradient shards: every step's batch is cut into this many fixed shards (near-equal
    /// consecutive runs of examples) whose gradients are computed separately and added in
    /// shard order, whatever the number of processes, so runs on any number of processes that
    /// divides it give the same numbers bit for bit (see [`crate::train::Trainer`]). Unset:
    /// one gradient per process, summed by the transport (faster, equal within rounding).
    /// Each shard is one forward/backward pass, so it does not combine with `grad_accum > 1`
    /// (cut a larger `batch_size` into more shards instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// Synchronized batch norm in a data-parallel group: every batch-norm layer (training
    /// mode) normalizes with the statistics of the whole batch of all processes together, and
    /// its running statistics follow those, instead of each process's own examples (the
    /// default, as PyTorch DDP). A no-op in a single process (its batch is the whole batch).
    /// Not with `shards`: each shard is a forward pass of its own, so the statistics of the
    /// whole batch would need every process's shards to advance layer by layer together.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sync_bn: bool,
    /// Where a data-parallel group keeps the optimizer state: `replicated` (default) or
    /// `sharded` (ZeRO stage 1: each process holds the moments, IRE estimate and mask of its
    /// own range of the parameters). How this invocation runs, not what it computes (the
    /// numbers are the same bit for bit): never written into a checkpoint, whose optimizer
    /// state is whole either way, so a run resumes with either.
    #[serde(skip_serializing)]
    pub optimizer_state: OptimizerStateLayout,
    /// Weight decay on every parameter (the official scripts' setting). False (the default):
    /// none on norms, biases and embeddings, as the model's layout marks them (the nanoGPT
    /// convention); the optimizer then steps the parameters in groups.
    pub decay_all: bool,
    /// Label smoothing ε.
    pub label_smoothing: f64,
    /// Clip the training gradient's global norm to this (0 = off; never applied to ĝ).
    pub clip_grad_norm: f64,
    /// The IRE estimator's batch: the current one (`current`), or a fixed first batch (`fixed`).
    pub estimator_batch: EstimatorBatch,
    /// The estimator pass on the current batch: from the training forward (`shared`, the same
    /// numbers, one forward fewer) or a forward of its own (`separate`).
    pub estimator_forward: EstimatorForward,
    /// Random crop padding; unset: 4 for CIFAR and image folders, 0 for digits and IDX.
    pub crop_padding: Option<usize>,
    /// Random horizontal flips; unset: on for CIFAR and image folders, off for digits and IDX
    /// (a flipped digit is another glyph).
    pub hflip: Option<bool>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Evaluate on the test split every this many steps (0 = at the end only).
    pub eval_every: u64,
    /// Write a checkpoint every this many steps (0 = only at the end and on Ctrl-C).
    pub checkpoint_every: u64,
    /// Log a metrics line every this many steps.
    pub log_every: u64,
    /// Text: tokenizer (`char`, `word` — the paper's WikiText-2 tokenizer —, or `gpt2`).
    pub tokenizer: String,
    /// Text: context length in tokens.
    pub context: usize,
    /// Text: fraction of the corpus (its end) held out for validation.
    pub val_fraction: f64,
    /// Evaluate on at most this many batches (0 = the whole split).
    pub eval_batches: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "resnet-small".into(),
            dataset: DatasetKind::Cifar10,
            data: PathBuf::from("../shared/data/cifar10"),
            train_limit: 0,
            test_limit: 0,
            image_size: 0,
            optimizer: OptimizerKind::SgdIre,
            opt: OptimizerConfig::default(),
            lr: 0.1,
            warmup_steps: 0,
            lr_min_ratio: 0.0,
            constant_lr: false,
            epochs: 1,
            steps: 0,
            batch_size: 128,
            grad_accum: 1,
            shards: None,
            sync_bn: false,
            optimizer_state: OptimizerStateLayout::Replicated,
            decay_all: false,
            label_smoothing: 0.0,
            clip_grad_norm: 0.0,
            estimator_batch: EstimatorBatch::Current,
            estimator_forward: EstimatorForward::Shared,
            crop_padding: None,
            hflip: None,
            seed: 0,
            eval_every: 0,
            checkpoint_every: 0,
            log_every: 10,
            tokenizer: "char".into(),
            context: 64,
            val_fraction: 0.1,
            eval_batches: 0,
        }
    }
}

/// A [`ConfigError::OutOfRange`] for `field` holding `value`.
fn bad(field: &'static str, value: impl ToString, why: &'static str) -> ConfigError {
    ConfigError::OutOfRange {
        field,
        value: value.to_string(),
        why,
    }
}

impl TrainConfig {
    /// Reads a TOML file (unknown keys, and names that are none of a field's choices, are
    /// errors).
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Toml {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Checks what the optimizers do not check themselves.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.model.parse::<crate::models::ModelSpec>().is_err() {
            return Err(ConfigError::UnknownModel {
                value: self.model.clone(),
            });
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad("lr", self.lr, "must be finite and > 0"));
        }
        if !(0.0..=1.0).contains(&self.lr_min_ratio) {
            return Err(bad("lr_min_ratio", self.lr_min_ratio, "must be in [0, 1]"));
        }
        if self.batch_size == 0 {
            return Err(bad("batch_size", self.batch_size, "must be >= 1"));
        }
        if self.grad_accum == 0 {
            return Err(bad("grad_accum", self.grad_accum, "must be >= 1"));
        }
        if self.batch_size.checked_mul(self.grad_accum).is_none() {
            return Err(bad(
                "grad_accum",
                self.grad_accum,
                "batch_size × grad_accum must fit in memory's address range",
            ));
        }
        if let Some(g) = self.shards {
            if g == 0 {
                return Err(bad("shards", g, "must be >= 1"));
            }
            if g > self.batch_size {
                return Err(bad(
                    "shards",
                    g,
                    "must be <= batch_size (every shard of a full batch holds an example)",
                ));
            }
            if self.grad_accum > 1 {
                return Err(bad(
                    "shards",
                    g,
                    "does not combine with grad_accum > 1: each shard is one forward/backward \
                     pass already (cut a larger batch_size into more shards instead)",
                ));
            }
        }
        if self.sync_bn && self.shards.is_some() {
            return Err(bad(
                "sync_bn",
                "true with shards",
                "does not combine with shards: each shard is a forward pass of its own, and \
                 statistics over the whole batch would need every process's shards to advance \
                 layer by layer together (sync_bn without shards takes them over the whole \
                 batch; shards without sync_bn, per shard, bit for bit at any world size)",
            ));
        }
        if self.steps == 0 && self.epochs == 0 {
            return Err(bad("epochs", self.epochs, "epochs or steps must be >= 1"));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(bad(
                "label_smoothing",
                self.label_smoothing,
                "must be in [0, 1)",
            ));
        }
        if !(self.clip_grad_norm >= 0.0 && self.clip_grad_norm.is_finite()) {
            return Err(bad(
                "clip_grad_norm",
                self.clip_grad_norm,
                "must be >= 0 (0 = off)",
            ));
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return Err(bad("val_fraction", self.val_fraction, "must be in (0, 1)"));
        }
        if self.context == 0 {
            return Err(bad("context", self.context, "must be >= 1"));
        }
        if self.log_every == 0 {
            return Err(bad("log_every", self.log_every, "must be >= 1"));
        }
        Ok(())
    }

    /// Examples per optimizer step: `batch_size × grad_accum` (checked by [`Self::validate`]).
    pub fn step_batch(&self) -> usize {
        self.batch_size.saturating_mul(self.grad_accum)
    }

    /// The augmentation in effect (explicit settings, else the dataset's default).
    pub fn augment(&self) -> crate::data::Augment {
        let natural = matches!(
            self.dataset,
            DatasetKind::Cifar10 | DatasetKind::Cifar100 | DatasetKind::Folder
        );
        crate::data::Augment {
            crop_padding: self.crop_padding.unwrap_or(if natural { 4 } else { 0 }),
            hflip: self.hflip.unwrap_or(natural),
        }
    }

    /// Short name of the dataset.
    pub fn dataset_name(&self) -> &'static str {
        match self.dataset {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Idx => "idx",
            DatasetKind::Folder => "folder",
            DatasetKind::Digits => "digits",
            DatasetKind::Text => "text",
        }
    }

    /// Loads the (train, test) splits.
    pub fn load_data(&self) -> Result<(ImageDataset, ImageDataset), DataError> {
        let d = &self.data;
        let (mut train, mut test) = match self.dataset {
            DatasetKind::Cifar10 => {
                let mut files: Vec<PathBuf> = (1..=5)
                    .map(|i| d.join(format!("data_batch_{i}.bin")))
                    .filter(|p| p.exists())
                    .collect();
                if files.is_empty() {
                    files.push(d.join("data_batch_1.bin"));
                }
                (
                    data::load_cifar10_bin(&files)?,
                    data::load_cifar10_bin(&[d.join("test_batch.bin")])?,
                )
            }
            DatasetKind::Cifar100 => (
                data::load_cifar100_bin(&d.join("train.bin"), Cifar100Labels::Fine)?,
                data::load_cifar100_bin(&d.join("test.bin"), Cifar100Labels::Fine)?,
            ),
            DatasetKind::Idx => {
                let pick = |stem: &str| {
                    let gz = d.join(format!("{stem}.gz"));
                    if gz.exists() { gz } else { d.join(stem) }
                };
                (
                    data::load_idx(
                        &pick("train-images-idx3-ubyte"),
                        &pick("train-labels-idx1-ubyte"),
                    )?,
                    data::load_idx(
                        &pick("t10k-images-idx3-ubyte"),
                        &pick("t10k-labels-idx1-ubyte"),
                    )?,
                )
            }
            DatasetKind::Folder => {
                let size = (self.image_size > 0).then_some((self.image_size, self.image_size));
                let train = data::load_image_folder(&d.join("train"), size)?;
                let test = data::load_image_folder_as(&d.join("test"), size, &train.class_names)?;
                (train, test)
            }
            DatasetKind::Digits => {
                let mut all = data::load_digits_csv(d)?;
                let test = all.split_off(297);
                (all, test)
            }
            DatasetKind::Text => {
                return Err(DataError::Inconsistent(
                    "a text corpus is not an image dataset".into(),
                ));
            }
        };
        if self.train_limit > 0 {
            train = train.take(self.train_limit);
        }
        if self.test_limit > 0 {
            test = test.take(self.test_limit);
        }
        test.num_classes = test.num_classes.max(train.num_classes);
        train.num_classes = test.num_classes;
        Ok((train, test))
    }
}

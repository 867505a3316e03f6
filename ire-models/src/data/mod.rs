//! Datasets through real loaders of real formats, and deterministic batching.
//!
//! Every loader checks what it reads: a wrong magic number, a truncated record or an
//! unreadable image is a [`DataError`] naming the file and the problem, never a panic.

mod cifar;
mod digits;
mod folder;
mod idx;
mod loader;

pub use cifar::{Cifar100Labels, load_cifar10_bin, load_cifar100_bin};
pub use digits::load_digits_csv;
pub use folder::{load_image_folder, load_image_folder_as};
pub use idx::load_idx;
pub use loader::{Augment, Batch, BatchLoader, Normalize};

use std::path::{Path, PathBuf};

/// What can go wrong reading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file ends early or has a partial record.
    #[error("{path} is truncated: {detail}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was expected.
        detail: String,
    },
    /// The content is not the expected format.
    #[error("{path} is not a valid {format} file: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The expected format.
        format: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Files that must agree (images and labels, several batches) do not.
    #[error("inconsistent dataset: {0}")]
    Inconsistent(String),
    /// The training and test splits of a dataset do not fit one model.
    #[error(
        "the training and test splits of {} differ: {what} {train} (training) vs {test} (test)",
        .data.display()
    )]
    SplitsDiffer {
        /// The dataset location.
        data: PathBuf,
        /// What differs.
        what: &'static str,
        /// The training split's value.
        train: String,
        /// The test split's value.
        test: String,
    },
    /// A class folder of the test split that the training split does not have (its images
    /// could not get the label the model learned for them).
    #[error(
        "{}: class `{class}` has no folder in the training split ({}); labels are numbered by \
         the training split's class folders",
        .folder.display(),
        .known.join(", ")
    )]
    ClassNotInTraining {
        /// The test split's folder.
        folder: PathBuf,
        /// The class.
        class: String,
        /// The training split's classes.
        known: Vec<String>,
    },
    /// The data would not fit in memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
}

/// Checks that a training and a test split fit one model: the same image shape (channels,
/// height, width). `data` names the dataset in the error.
pub fn check_splits(
    data: &Path,
    train: &ImageDataset,
    test: &ImageDataset,
) -> Result<(), DataError> {
    let shape = |d: &ImageDataset| format!("{}×{}×{}", d.channels, d.height, d.width);
    if (train.channels, train.height, train.width) != (test.channels, test.height, test.width) {
        return Err(DataError::SplitsDiffer {
            data: data.to_path_buf(),
            what: "image shape (C×H×W)",
            train: shape(train),
            test: shape(test),
        });
    }
    if !train.class_names.is_empty() && !test.class_names.is_empty() {
        let names = test
            .class_names
            .iter()
            .zip(&train.class_names)
            .all(|(a, b)| a == b);
        if !names || test.class_names.len() > train.class_names.len() {
            return Err(DataError::SplitsDiffer {
                data: data.to_path_buf(),
                what: "class names",
                train: train.class_names.join(", "),
                test: test.class_names.join(", "),
            });
        }
    }
    Ok(())
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Images as bytes in `N × C × H × W` order, with their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageDataset {
    /// Pixels, `len = n · channels · height · width`.
    pub pixels: Vec<u8>,
    /// One label per image, `< num_classes`.
    pub labels: Vec<u32>,
    /// Channels (1 or 3).
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Class names, if the format has them.
    pub class_names: Vec<String>,
}

impl ImageDataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image.
    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.image_size();
        &self.pixels[i * s..(i + 1) * s]
    }

    /// The first `n` images (or all).
    pub fn take(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.pixels.truncate(n * self.image_size());
        self.labels.truncate(n);
        self
    }

    /// Splits off the last `n` images (e.g. a validation split): returns them.
    pub fn split_off(&mut self, n: usize) -> Self {
        let keep = self.len().saturating_sub(n);
        let tail_pixels = self.pixels.split_off(keep * self.image_size());
        let tail_labels = self.labels.split_off(keep);
        ImageDataset {
            pixels: tail_pixels,
            labels: tail_labels,
            ..self.clone_meta()
        }
    }

    fn clone_meta(&self) -> Self {
        ImageDataset {
            pixels: Vec::new(),
            labels: Vec::new(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
        }
    }

    /// Appends another dataset of the same geometry.
    pub fn extend(&mut self, other: ImageDataset) -> Result<(), DataError> {
        if (other.channels, other.height, other.width) != (self.channels, self.height, self.width) {
            return Err(DataError::Inconsistent(format!(
                "image shapes differ: {}x{}x{} vs {}x{}x{}",
                self.channels, self.height, self.width, other.channels, other.height, other.width
            )));
        }
        self.num_classes = self.num_classes.max(other.num_classes);
        self.pixels.extend(other.pixels);
        self.labels.extend(other.labels);
        Ok(())
    }
}

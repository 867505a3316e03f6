//! Images with their labels, and the check that two splits fit one model.

use std::path::Path;

use super::error::DataError;

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

//! Datasets through real loaders of real formats, and deterministic batching.
//!
//! Every loader checks what it reads: a wrong magic number, a truncated record or an
//! unreadable image is a [`DataError`] naming the file and the problem, never a panic.

mod cifar;
mod dataset;
mod digits;
mod error;
mod folder;
mod idx;
mod loader;

pub use cifar::{Cifar100Labels, load_cifar10_bin, load_cifar100_bin};
pub use dataset::{ImageDataset, check_splits};
pub use digits::load_digits_csv;
pub use error::DataError;
pub use folder::{load_image_folder, load_image_folder_as};
pub use idx::load_idx;
pub use loader::{Augment, Batch, BatchLoader, Normalize};

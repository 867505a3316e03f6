//! CIFAR-10 and CIFAR-100 in their canonical binary formats.
//!
//! CIFAR-10: records of 3,073 bytes (label 0–9, then 1,024 red, 1,024 green, 1,024 blue bytes,
//! each 32×32 row-major). CIFAR-100: records of 3,074 bytes (coarse label 0–19, fine label 0–99,
//! then the same 3,072 pixels).

use std::path::Path;

use super::{DataError, ImageDataset, read};

const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR-100 label to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cifar100Labels {
    /// The 20 super-classes.
    Coarse,
    /// The 100 classes (the paper's setting).
    Fine,
}

fn parse(
    path: &Path,
    bytes: &[u8],
    label_bytes: usize,
    label_index: usize,
    num_classes: usize,
) -> Result<(Vec<u8>, Vec<u32>), DataError> {
    let rec = label_bytes + PIXELS;
    if bytes.is_empty() {
        return Err(DataError::Truncated {
            path: path.into(),
            detail: "the file is empty".into(),
        });
    }
    if !bytes.len().is_multiple_of(rec) {
        return Err(DataError::Truncated {
            path: path.into(),
            detail: format!(
                "{} bytes is not a whole number of {rec}-byte records ({} full records and {} bytes left over)",
                bytes.len(),
                bytes.len() / rec,
                bytes.len() % rec
            ),
        });
    }
    let n = bytes.len() / rec;
    let mut pixels = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let l = r[label_index] as usize;
        if l >= num_classes {
            return Err(DataError::Format {
                path: path.into(),
                format: "CIFAR binary",
                detail: format!("record {i} has label {l}, but there are {num_classes} classes"),
            });
        }
        labels.push(l as u32);
        pixels.extend_from_slice(&r[label_bytes..]);
    }
    Ok((pixels, labels))
}

/// Reads CIFAR-10 binary batch files (e.g. `data_batch_1.bin` … or `test_batch.bin`), in order.
/// Class names come from a `batches.meta.txt` beside the first file when it exists.
pub fn load_cifar10_bin<P: AsRef<Path>>(files: &[P]) -> Result<ImageDataset, DataError> {
    let mut ds = ImageDataset {
        pixels: Vec::new(),
        labels: Vec::new(),
        channels: 3,
        height: 32,
        width: 32,
        num_classes: 10,
        class_names: Vec::new(),
    };
    if files.is_empty() {
        return Err(DataError::Inconsistent("no CIFAR-10 file given".into()));
    }
    for f in files {
        let path = f.as_ref();
        let (p, l) = parse(path, &read(path)?, 1, 0, 10)?;
        ds.pixels.extend(p);
        ds.labels.extend(l);
    }
    if let Some(dir) = files[0].as_ref().parent()
        && let Ok(meta) = std::fs::read_to_string(dir.join("batches.meta.txt"))
    {
        let names: Vec<String> = meta
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if names.len() == 10 {
            ds.class_names = names;
        }
    }
    Ok(ds)
}

/// Reads a CIFAR-100 binary file (`train.bin` or `test.bin`).
pub fn load_cifar100_bin(path: &Path, which: Cifar100Labels) -> Result<ImageDataset, DataError> {
    let (index, classes) = match which {
        Cifar100Labels::Coarse => (0, 20),
        Cifar100Labels::Fine => (1, 100),
    };
    let bytes = read(path)?;
    // Check both labels of every record, whichever is kept.
    parse(path, &bytes, 2, 0, 20)?;
    let (pixels, labels) = parse(path, &bytes, 2, index, classes)?;
    Ok(ImageDataset {
        pixels,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        num_classes: classes,
        class_names: Vec::new(),
    })
}

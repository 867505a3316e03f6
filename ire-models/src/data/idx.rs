//! The IDX format of MNIST and Fashion-MNIST, raw or gzipped (detected by the gzip magic).
//!
//! Header: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then
//! each dimension as a big-endian u32; then the data. Images are `N × H × W`, labels `N`.

use std::path::Path;

use super::dataset::ImageDataset;
use super::error::{DataError, read};

fn bytes_of(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = read(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        // The inflated size comes from the file: grown fallibly, never past the memory limit.
        let what = || format!("the decompressed contents of {}", path.display());
        crate::memory::read_all(flate2::read::GzDecoder::new(&raw[..]), 0, what).map_err(
            |e| match e {
                crate::memory::MemoryError::Read { source, .. } => DataError::Format {
                    path: path.into(),
                    format: "gzip",
                    detail: source.to_string(),
                },
                other => other.into(),
            },
        )
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of unsigned bytes: returns the dimensions and the data.
fn parse(path: &Path, b: &[u8]) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bad = |detail: String| DataError::Format {
        path: path.into(),
        format: "IDX",
        detail,
    };
    if b.len() < 4 {
        return Err(DataError::Truncated {
            path: path.into(),
            detail: format!("{} bytes, shorter than the 4-byte magic", b.len()),
        });
    }
    if b[0] != 0 || b[1] != 0 {
        return Err(bad(format!(
            "magic starts with {:#04x} {:#04x}, not 0 0",
            b[0], b[1]
        )));
    }
    if b[2] != 0x08 {
        return Err(bad(format!(
            "element type {:#04x}; only unsigned bytes (0x08) are supported",
            b[2]
        )));
    }
    let nd = b[3] as usize;
    if nd == 0 || nd > 4 {
        return Err(bad(format!("{nd} dimensions")));
    }
    let head = 4 + 4 * nd;
    if b.len() < head {
        return Err(DataError::Truncated {
            path: path.into(),
            detail: "the header ends early".into(),
        });
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            u32::from_be_bytes([b[4 + 4 * i], b[5 + 4 * i], b[6 + 4 * i], b[7 + 4 * i]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("dimensions overflow".into()))?;
    let data = &b[head..];
    if data.len() < count {
        return Err(DataError::Truncated {
            path: path.into(),
            detail: format!(
                "header promises {count} values ({dims:?}), the file holds {}",
                data.len()
            ),
        });
    }
    if data.len() > count {
        return Err(bad(format!(
            "{} bytes after the {count} values of {dims:?}",
            data.len() - count
        )));
    }
    Ok((dims, data.to_vec()))
}

/// Reads an IDX image file (`N × H × W`) and its label file (`N`).
pub fn load_idx(images: &Path, labels: &Path) -> Result<ImageDataset, DataError> {
    let (idims, pixels) = parse(images, &bytes_of(images)?)?;
    let (ldims, lab) = parse(labels, &bytes_of(labels)?)?;
    if idims.len() != 3 {
        return Err(DataError::Format {
            path: images.into(),
            format: "IDX image",
            detail: format!("expected 3 dimensions (N, H, W), found {idims:?}"),
        });
    }
    if ldims.len() != 1 || ldims[0] != idims[0] {
        return Err(DataError::Inconsistent(format!(
            "{} has {} images but {} has labels {ldims:?}",
            images.display(),
            idims[0],
            labels.display()
        )));
    }
    let num_classes = lab
        .iter()
        .copied()
        .max()
        .map_or(0, |m| m as usize + 1)
        .max(10);
    Ok(ImageDataset {
        pixels,
        labels: lab.into_iter().map(u32::from).collect(),
        channels: 1,
        height: idims[1],
        width: idims[2],
        num_classes,
        class_names: Vec::new(),
    })
}

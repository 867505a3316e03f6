//! The 8×8 handwritten digits of scikit-learn (UCI optdigits test set, 1,797 images), as the
//! CSV it ships: one image a line, 64 pixel values in 0–16 then the label 0–9; gzipped or not.

use std::io::Read;
use std::path::Path;

use super::dataset::ImageDataset;
use super::error::{DataError, read};

/// Reads `digits.csv` or `digits.csv.gz`; pixels are scaled from 0–16 to 0–255.
pub fn load_digits_csv(path: &Path) -> Result<ImageDataset, DataError> {
    let raw = read(path)?;
    let text = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut s)
            .map_err(|e| DataError::Format {
                path: path.into(),
                format: "gzip",
                detail: e.to_string(),
            })?;
        s
    } else {
        String::from_utf8(raw).map_err(|e| DataError::Format {
            path: path.into(),
            format: "digits CSV",
            detail: e.to_string(),
        })?
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let vals: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |detail: String| DataError::Format {
            path: path.into(),
            format: "digits CSV",
            detail: format!("line {}: {detail}", i + 1),
        };
        if vals.len() != 65 {
            return Err(bad(format!(
                "{} fields, expected 65 (64 pixels and a label)",
                vals.len()
            )));
        }
        for v in &vals[..64] {
            let x: f64 = v
                .parse()
                .map_err(|_| bad(format!("pixel `{v}` is not a number")))?;
            if !(0.0..=16.0).contains(&x) {
                return Err(bad(format!("pixel {x} outside 0–16")));
            }
            pixels.push((x * 16.0).round().min(255.0) as u8);
        }
        let l: f64 = vals[64]
            .parse()
            .map_err(|_| bad(format!("label `{}` is not a number", vals[64])))?;
        if !(0.0..=9.0).contains(&l) || l.fract() != 0.0 {
            return Err(bad(format!("label {l} is not a digit")));
        }
        labels.push(l as u32);
    }
    if labels.is_empty() {
        return Err(DataError::Truncated {
            path: path.into(),
            detail: "no data line".into(),
        });
    }
    Ok(ImageDataset {
        pixels,
        labels,
        channels: 1,
        height: 8,
        width: 8,
        num_classes: 10,
        class_names: (0..10).map(|d| d.to_string()).collect(),
    })
}

//! The 8×8 digits of scikit-learn shipped in `data/digits.csv.gz`: one image a line, 64 pixel
//! values in 0–16, then the label 0–9.

use std::io::Read;
use std::path::{Path, PathBuf};

/// What can go wrong reading the digits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DigitsError {
    /// The file could not be read or decompressed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line has the wrong number of fields.
    #[error("{path}, line {line}: {fields} fields, expected 65 (64 pixels and a label)")]
    Fields {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Fields found.
        fields: usize,
    },
    /// A field is not a pixel value (0–16) or a digit label (0–9).
    #[error("{path}, line {line}: field {field} is `{value}`, expected {expected}")]
    Value {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 0-based field index.
        field: usize,
        /// The text found.
        value: String,
        /// What the field must be.
        expected: &'static str,
    },
    /// The file has no data line.
    #[error("{path}: no data line")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The digits as model inputs: pixels scaled to `[0, 1]`, row-major `n × 64`.
#[derive(Clone, Debug, PartialEq)]
pub struct Digits {
    /// `n × 64` pixel values in `[0, 1]` (the file's 0–16 divided by 16).
    pub features: Vec<f32>,
    /// `n` labels in `0..10`.
    pub labels: Vec<u32>,
}

impl Digits {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image.
    pub const FEATURES: usize = 64;

    /// Number of classes.
    pub const CLASSES: usize = 10;

    /// Images `start..start + n` (features, labels).
    pub fn batch(&self, start: usize, n: usize) -> (&[f32], &[u32]) {
        let end = (start + n).min(self.len());
        (
            &self.features[start * Self::FEATURES..end * Self::FEATURES],
            &self.labels[start..end],
        )
    }
}

/// The digits shipped in the repository's `data/` folder.
pub fn load_digits() -> Result<Digits, DigitsError> {
    load_digits_from(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits.csv.gz"))
}

/// Reads a digits CSV, gzipped or not.
pub fn load_digits_from(path: &Path) -> Result<Digits, DigitsError> {
    let io = |source| DigitsError::Io {
        path: path.into(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    let mut text = String::new();
    if raw.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut text)
            .map_err(io)?;
    } else {
        text = String::from_utf8(raw)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    }
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != 65 {
            return Err(DigitsError::Fields {
                path: path.into(),
                line: i + 1,
                fields: fields.len(),
            });
        }
        let bad = |field: usize, expected| DigitsError::Value {
            path: path.into(),
            line: i + 1,
            field,
            value: fields[field].into(),
            expected,
        };
        for (f, v) in fields[..64].iter().enumerate() {
            match v.parse::<f32>() {
                Ok(x) if (0.0..=16.0).contains(&x) => features.push(x / 16.0),
                _ => return Err(bad(f, "a pixel value in 0-16")),
            }
        }
        match fields[64].parse::<u32>() {
            Ok(l) if l < 10 => labels.push(l),
            _ => return Err(bad(64, "a digit 0-9")),
        }
    }
    if labels.is_empty() {
        return Err(DigitsError::Empty { path: path.into() });
    }
    Ok(Digits { features, labels })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_digits_load() -> Result<(), DigitsError> {
        let d = load_digits()?;
        assert_eq!(d.len(), 1797);
        assert_eq!(d.features.len(), 1797 * 64);
        assert!(d.features.iter().all(|x| (0.0..=1.0).contains(x)));
        // Every class occurs (the UCI test set has 174 to 183 images per digit).
        for c in 0..10 {
            let n = d.labels.iter().filter(|&&l| l == c).count();
            assert!((174..=183).contains(&n), "digit {c}: {n} images");
        }
        Ok(())
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() -> Result<(), std::io::Error> {
        let dir = std::env::temp_dir().join(format!("ire-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let p = dir.join("bad.csv");
        let mut line = vec!["0"; 64];
        line.push("3");
        let good = line.join(",");
        line[5] = "17";
        let bad = line.join(",");
        std::fs::write(&p, format!("{good}\n{bad}\n"))?;
        let r = load_digits_from(&p);
        assert!(
            matches!(
                r,
                Err(DigitsError::Value {
                    line: 2,
                    field: 5,
                    ..
                })
            ),
            "{r:?}"
        );
        std::fs::write(&p, "1,2,3\n")?;
        assert!(matches!(
            load_digits_from(&p),
            Err(DigitsError::Fields { fields: 3, .. })
        ));
        std::fs::write(&p, "\n")?;
        assert!(matches!(
            load_digits_from(&p),
            Err(DigitsError::Empty { .. })
        ));
        std::fs::remove_dir_all(&dir)
    }
}

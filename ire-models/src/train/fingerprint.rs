//! What a model was trained on, as stored in every checkpoint: the input shape and class names of
//! images, or the tokenizer, its vocabulary (size and hash) and the context of text. Restoring a
//! checkpoint on data that differs is refused with the field that differs, instead of decoding
//! garbage or failing later with a size mismatch.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::run_error::RunError;
use super::source::Source;

/// The identity of a run's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DataFingerprint {
    /// Images.
    Images {
        /// `(C, H, W)`.
        shape: [usize; 3],
        /// Number of classes.
        classes: usize,
        /// Class names, where the format has them (image folders), in label order.
        class_names: Vec<String>,
    },
    /// Token windows.
    Tokens {
        /// The tokenizer's name (`char`, `word`, `gpt2`).
        tokenizer: String,
        /// Vocabulary size.
        vocab: usize,
        /// [`crate::text::Tokenizer::fingerprint`] of the vocabulary.
        vocab_hash: String,
        /// Context length.
        context: usize,
    },
}

impl DataFingerprint {
    /// The fingerprint of a run's data.
    pub fn of(src: &Source) -> DataFingerprint {
        match src {
            Source::Images { train, test, .. } => DataFingerprint::Images {
                shape: [train.channels, train.height, train.width],
                // As the model is built (`Source::input`).
                classes: train.num_classes.max(test.num_classes),
                class_names: train.class_names.clone(),
            },
            Source::Text {
                train, tokenizer, ..
            } => DataFingerprint::Tokens {
                tokenizer: tokenizer.name().to_string(),
                vocab: tokenizer.vocab_size(),
                vocab_hash: tokenizer.fingerprint(),
                context: train.context(),
            },
        }
    }

    /// Checks that `found` (the data at `data`) is what this fingerprint (a checkpoint's)
    /// describes; the error names the first field that differs.
    pub fn check(&self, found: &DataFingerprint, data: &Path) -> Result<(), RunError> {
        let differ = |field: &'static str, expected: String, found: String| {
            Err(RunError::DataMismatch {
                data: data.to_path_buf(),
                field,
                expected,
                found,
            })
        };
        match (self, found) {
            (
                DataFingerprint::Images {
                    shape: s0,
                    classes: c0,
                    class_names: n0,
                },
                DataFingerprint::Images {
                    shape: s1,
                    classes: c1,
                    class_names: n1,
                },
            ) => {
                let shape = |s: &[usize; 3]| format!("{}×{}×{} (C×H×W)", s[0], s[1], s[2]);
                if s0 != s1 {
                    return differ("image shape", shape(s0), shape(s1));
                }
                if c0 != c1 {
                    return differ("number of classes", c0.to_string(), c1.to_string());
                }
                // Formats without names (CIFAR, IDX, digits) store none.
                if !n0.is_empty() && !n1.is_empty() && n0 != n1 {
                    return differ("class names", n0.join(", "), n1.join(", "));
                }
                Ok(())
            }
            (
                DataFingerprint::Tokens {
                    tokenizer: t0,
                    vocab: v0,
                    vocab_hash: h0,
                    context: x0,
                },
                DataFingerprint::Tokens {
                    tokenizer: t1,
                    vocab: v1,
                    vocab_hash: h1,
                    context: x1,
                },
            ) => {
                if t0 != t1 {
                    return differ("tokenizer", t0.clone(), t1.clone());
                }
                if v0 != v1 {
                    return differ("vocabulary size", v0.to_string(), v1.to_string());
                }
                if h0 != h1 {
                    let short = |h: &str| format!("hash {}…", &h[..h.len().min(16)]);
                    return differ(
                        "vocabulary (same size, other symbols)",
                        short(h0),
                        short(h1),
                    );
                }
                if x0 != x1 {
                    return differ("context length", x0.to_string(), x1.to_string());
                }
                Ok(())
            }
            (a, b) => differ("kind of data", a.kind().into(), b.kind().into()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            DataFingerprint::Images { .. } => "images",
            DataFingerprint::Tokens { .. } => "text",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(shape: [usize; 3], names: &[&str]) -> DataFingerprint {
        DataFingerprint::Images {
            shape,
            classes: names.len().max(10),
            class_names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn differences_are_named() {
        let d = Path::new("data/x");
        let a = images([1, 8, 8], &[]);
        assert!(a.check(&a, d).is_ok());
        let e = a
            .check(&images([1, 28, 28], &[]), d)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("image shape is 1×28×28") && e.contains("1×8×8") && e.contains("data/x"),
            "{e}"
        );
        let named = |n: &[&str]| DataFingerprint::Images {
            shape: [3, 4, 4],
            classes: 2,
            class_names: n.iter().map(|s| s.to_string()).collect(),
        };
        let e = named(&["cat", "dog"])
            .check(&named(&["ant", "bee"]), d)
            .unwrap_err();
        assert!(e.to_string().contains("class names is ant, bee"), "{e}");
        let tok = |h: &str| DataFingerprint::Tokens {
            tokenizer: "char".into(),
            vocab: 65,
            vocab_hash: h.into(),
            context: 64,
        };
        let e = tok("aaaa").check(&tok("bbbb"), d).unwrap_err().to_string();
        assert!(e.contains("vocabulary (same size, other symbols)"), "{e}");
        let e = tok("aaaa").check(&a, d).unwrap_err().to_string();
        assert!(e.contains("kind of data is images"), "{e}");
        let json = serde_json::to_value(tok("h")).unwrap();
        assert_eq!(json["kind"], "tokens");
        assert_eq!(
            serde_json::from_value::<DataFingerprint>(json).unwrap(),
            tok("h")
        );
    }
}

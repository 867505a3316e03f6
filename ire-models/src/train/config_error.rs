//! What is wrong with a run's configuration, naming the field and the value.

use std::path::PathBuf;

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value outside its range.
    #[error("invalid config `{field}`: {why} (got {value})")]
    OutOfRange {
        /// The field (`lr`, `opt.kappa`, ...).
        field: &'static str,
        /// The value given.
        value: String,
        /// What the value must be.
        why: &'static str,
    },
    /// A name that is none of the field's choices.
    #[error(
        "invalid config `{field}`: unknown value `{value}`: expected one of {}",
        .expected.join(", ")
    )]
    UnknownChoice {
        /// The field.
        field: &'static str,
        /// The name given.
        value: String,
        /// The names it may take.
        expected: &'static [&'static str],
    },
    /// A model preset this build does not have.
    #[error(
        "invalid config `model`: unknown preset `{value}`: expected one of {}",
        crate::models::ModelSpec::PRESETS.join(", ")
    )]
    UnknownModel {
        /// The name given.
        value: String,
    },
    /// The config file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for a run's configuration (an unknown key, a value of
    /// the wrong type, an unknown choice).
    #[error("{}: {source}", .path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's error (it names the key and the line).
        #[source]
        source: Box<toml::de::Error>,
    },
}

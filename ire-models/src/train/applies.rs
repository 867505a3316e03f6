//! Which settings apply to which optimizer and dataset: a flag the chosen run would silently
//! ignore (`--gamma` with plain SGD, `--rho` with AdamW, `--tokenizer` on images) is refused.

use super::config::{DatasetKind, TrainConfig};
use super::optimizer::OptimizerKind;

/// The runs a setting belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The IRE optimizers.
    Ire,
    /// SAM and SAM-IRE.
    Sam,
    /// The optimizers built on SGD.
    Sgd,
    /// The optimizers built on AdamW.
    Adam,
    /// The text dataset.
    Text,
    /// The image datasets.
    Images,
}

impl Scope {
    /// The scope of a setting (by its flag name, `kebab-case`), when it has one.
    pub fn of(flag: &str) -> Option<Scope> {
        Some(match flag {
            "kappa" | "gamma" | "refresh-every" | "ire-warmup" | "kappa-decay"
            | "threshold-rule" | "gamma-schedule" => Scope::Ire,
            "rho" | "adaptive" => Scope::Sam,
            "momentum" => Scope::Sgd,
            "beta2" => Scope::Adam,
            "tokenizer" | "context" => Scope::Text,
            "train-limit" | "test-limit" => Scope::Images,
            _ => return None,
        })
    }

    /// Whether a run of `cfg` uses settings of this scope.
    pub fn admits(self, cfg: &TrainConfig) -> bool {
        let o = cfg.optimizer;
        match self {
            Scope::Ire => o.is_ire(),
            Scope::Sam => o.is_sam(),
            Scope::Sgd => !matches!(o, OptimizerKind::Adamw | OptimizerKind::Admire),
            Scope::Adam => matches!(o, OptimizerKind::Adamw | OptimizerKind::Admire),
            Scope::Text => cfg.dataset == DatasetKind::Text,
            Scope::Images => cfg.dataset != DatasetKind::Text,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Ire => "the IRE optimizers (sgd-ire, sam-ire, admire)",
            Scope::Sam => "SAM (sam, sam-ire)",
            Scope::Sgd => "the optimizers built on SGD (sgd, sgd-ire, sam, sam-ire)",
            Scope::Adam => "the optimizers built on AdamW (adamw, admire)",
            Scope::Text => "the text dataset",
            Scope::Images => "the image datasets",
        })
    }
}

/// A flag given for a run it does not apply to.
#[derive(Debug, thiserror::Error)]
#[error("--{flag} does not apply to {chosen}: it is a setting of {scope}")]
pub struct NotApplicable {
    /// The flag, without its dashes.
    pub flag: String,
    /// Whose setting it is.
    pub scope: Scope,
    /// The choice it does not apply to (`--optimizer sgd`, `--dataset digits`).
    pub chosen: String,
}

/// Refuses `flag` (given explicitly) when a run of `cfg` would ignore it.
pub fn check(flag: &str, cfg: &TrainConfig) -> Result<(), NotApplicable> {
    match Scope::of(flag) {
        Some(scope) if !scope.admits(cfg) => Err(NotApplicable {
            flag: flag.to_string(),
            scope,
            chosen: match scope {
                Scope::Text | Scope::Images => format!("--dataset {}", cfg.dataset_name()),
                _ => format!("--optimizer {}", cfg.optimizer),
            },
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_apply_where_they_are_read() {
        let cfg = |o: OptimizerKind, d: DatasetKind| TrainConfig {
            optimizer: o,
            dataset: d,
            ..TrainConfig::default()
        };
        let sgd = cfg(OptimizerKind::Sgd, DatasetKind::Digits);
        let e = check("gamma", &sgd).unwrap_err().to_string();
        assert_eq!(
            e,
            "--gamma does not apply to --optimizer sgd: it is a setting of the IRE optimizers \
             (sgd-ire, sam-ire, admire)"
        );
        assert!(check("kappa", &sgd).is_err());
        assert!(check("momentum", &sgd).is_ok());
        assert!(check("lr", &sgd).is_ok());
        let adamw = cfg(OptimizerKind::Adamw, DatasetKind::Text);
        assert!(check("rho", &adamw).is_err());
        assert!(check("momentum", &adamw).is_err());
        assert!(check("beta2", &adamw).is_ok());
        assert!(check("tokenizer", &adamw).is_ok());
        assert!(check("train-limit", &adamw).is_err());
        let e = check("tokenizer", &sgd).unwrap_err().to_string();
        assert!(e.contains("--dataset digits"), "{e}");
        let sam_ire = cfg(OptimizerKind::SamIre, DatasetKind::Cifar10);
        for f in ["rho", "adaptive", "kappa", "momentum", "test-limit"] {
            assert!(check(f, &sam_ire).is_ok(), "{f}");
        }
        assert!(check("beta2", &sam_ire).is_err());
    }
}

//! The choices a run's configuration names by text, as enums: parsed once where the text comes
//! in (the config file, a checkpoint's config), written back as the same text.

use std::fmt;
use std::str::FromStr;

use ire_core::optim::{Estimator, GammaSchedule, ThresholdRule};
use serde::{Deserialize, Serialize};

use super::config_error::ConfigError;

/// The diagonal-curvature estimate that ranks IRE's coordinates (config `opt.estimator`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum EstimatorKind {
    /// `squared-gradient`: `ĝ²`, `ĝ` the gradient on labels sampled from the model (official).
    #[default]
    SquaredGradient,
    /// `abs-gradient`: `|ĝ|`.
    AbsGradient,
    /// `squared-training-gradient`: the step's own training gradient squared (no extra pass).
    SquaredTrainingGradient,
}

impl EstimatorKind {
    /// Every estimator, in the order of [`EstimatorKind::NAMES`].
    pub const ALL: [EstimatorKind; 3] = [
        EstimatorKind::SquaredGradient,
        EstimatorKind::AbsGradient,
        EstimatorKind::SquaredTrainingGradient,
    ];
    /// The names in a config file.
    pub const NAMES: [&'static str; 3] = [
        "squared-gradient",
        "abs-gradient",
        "squared-training-gradient",
    ];

    /// The name in a config file.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The optimizer's estimator.
    pub fn estimator(self) -> Estimator {
        match self {
            EstimatorKind::SquaredGradient => Estimator::SquaredGradient,
            EstimatorKind::AbsGradient => Estimator::AbsGradient,
            EstimatorKind::SquaredTrainingGradient => Estimator::SquaredTrainingGradient,
        }
    }
}

/// Which batch the IRE estimator pass uses (config `estimator_batch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum EstimatorBatch {
    /// `current`: the step's own training batch.
    #[default]
    Current,
    /// `fixed`: the first training batch, unaugmented, at every refresh (the official CIFAR
    /// recipe).
    Fixed,
}

impl EstimatorBatch {
    /// Every choice, in the order of [`EstimatorBatch::NAMES`].
    pub const ALL: [EstimatorBatch; 2] = [EstimatorBatch::Current, EstimatorBatch::Fixed];
    /// The names in a config file.
    pub const NAMES: [&'static str; 2] = ["current", "fixed"];

    /// The name in a config file.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Where the IRE estimator pass on the current batch gets its logits (config
/// `estimator_forward`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum EstimatorForward {
    /// `shared`: from the training step's own forward pass (labels sampled from the same
    /// logits, then two backward passes): the same numbers as `separate`, bit for bit (the
    /// models' forward passes are deterministic and their backward passes leave the saved
    /// activations intact), one forward pass fewer per refresh.
    #[default]
    Shared,
    /// `separate`: a forward pass of its own before the training pass, as the official
    /// scripts do.
    Separate,
}

impl EstimatorForward {
    /// Every choice, in the order of [`EstimatorForward::NAMES`].
    pub const ALL: [EstimatorForward; 2] = [EstimatorForward::Shared, EstimatorForward::Separate];
    /// The names in a config file.
    pub const NAMES: [&'static str; 2] = ["shared", "separate"];

    /// The name in a config file.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// How IRE's threshold follows from γ (config `opt.threshold_rule`, `--threshold-rule`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum ThresholdKind {
    /// `sharp-top-k`: `k = ⌊(1 − γ) N⌋` sharp, τ the k-th largest (the CIFAR and ImageNet
    /// scripts).
    #[default]
    SharpTopK,
    /// `flat-kth-smallest`: `m = ⌊γ N⌋` flat, τ the m-th smallest (the small language-model
    /// scripts and `ire_new.py`).
    FlatKthSmallest,
    /// `admire`: `sharp-top-k` when `1 − γ < 0.5`, else `flat-kth-smallest` (the Llama script).
    Admire,
}

impl ThresholdKind {
    /// Every rule, in the order of [`ThresholdKind::NAMES`].
    pub const ALL: [ThresholdKind; 3] = [
        ThresholdKind::SharpTopK,
        ThresholdKind::FlatKthSmallest,
        ThresholdKind::Admire,
    ];
    /// The names in a config file and on the command line.
    pub const NAMES: [&'static str; 3] = ["sharp-top-k", "flat-kth-smallest", "admire"];

    /// The name in a config file.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The optimizer's rule.
    pub fn rule(self) -> ThresholdRule {
        match self {
            ThresholdKind::SharpTopK => ThresholdRule::SharpTopK,
            ThresholdKind::FlatKthSmallest => ThresholdRule::FlatKthSmallest,
            ThresholdKind::Admire => ThresholdRule::AdmIre,
        }
    }
}

/// How γ varies over the refreshes (config `opt.gamma_schedule`, `--gamma-schedule`):
/// `constant`, or `rank-increase:H`, the official `rank_increase` schedule over a horizon of
/// `H ≥ 20` steps after the IRE warm-up (see [`GammaSchedule::RankIncrease`] for what it does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GammaChoice(pub GammaSchedule);

impl GammaChoice {
    const RANK_INCREASE: &'static str = "rank-increase:";
}

impl FromStr for GammaChoice {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let unknown = || ConfigError::UnknownChoice {
            field: "opt.gamma_schedule",
            value: s.to_string(),
            expected: &["constant", "rank-increase:H (H >= 20 steps)"],
        };
        if s == "constant" {
            return Ok(GammaChoice(GammaSchedule::Constant));
        }
        let horizon: u64 = s
            .strip_prefix(Self::RANK_INCREASE)
            .and_then(|h| h.parse().ok())
            .ok_or_else(unknown)?;
        let schedule = GammaSchedule::RankIncrease { horizon };
        schedule.validate().map_err(|_| unknown())?;
        Ok(GammaChoice(schedule))
    }
}

impl TryFrom<String> for GammaChoice {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl fmt::Display for GammaChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            GammaSchedule::Constant => f.write_str("constant"),
            GammaSchedule::RankIncrease { horizon } => {
                write!(f, "{}{horizon}", Self::RANK_INCREASE)
            }
        }
    }
}

impl From<GammaChoice> for String {
    fn from(g: GammaChoice) -> String {
        g.to_string()
    }
}

/// `FromStr`, `TryFrom<String>` (serde's way in), `Display` and `Into<&str>` (serde's way out)
/// of a choice, all through its `ALL` / `NAMES` tables.
macro_rules! text_choice {
    ($t:ty, $field:literal) => {
        impl FromStr for $t {
            type Err = ConfigError;
            fn from_str(s: &str) -> Result<Self, ConfigError> {
                <$t>::NAMES
                    .iter()
                    .position(|&n| n == s)
                    .map(|i| <$t>::ALL[i])
                    .ok_or_else(|| ConfigError::UnknownChoice {
                        field: $field,
                        value: s.to_string(),
                        expected: &<$t>::NAMES,
                    })
            }
        }

        impl TryFrom<String> for $t {
            type Error = ConfigError;
            fn try_from(s: String) -> Result<Self, ConfigError> {
                s.parse()
            }
        }

        impl From<$t> for &'static str {
            fn from(k: $t) -> &'static str {
                k.name()
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

text_choice!(EstimatorKind, "opt.estimator");
text_choice!(EstimatorBatch, "estimator_batch");
text_choice!(EstimatorForward, "estimator_forward");
text_choice!(ThresholdKind, "opt.threshold_rule");

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` is refused as an unknown choice of `field`, naming both.
    fn assert_unknown<T: FromStr<Err = ConfigError> + fmt::Debug>(text: &str, field: &str) {
        match text.parse::<T>() {
            Err(ConfigError::UnknownChoice {
                field: f, value, ..
            }) => {
                assert_eq!((f, value.as_str()), (field, text));
            }
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_named() {
        for k in EstimatorKind::ALL {
            assert_eq!(k.name().parse::<EstimatorKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        for k in EstimatorBatch::ALL {
            assert_eq!(k.name().parse::<EstimatorBatch>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        for k in ThresholdKind::ALL {
            assert_eq!(k.name().parse::<ThresholdKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        assert_eq!(ThresholdKind::default().rule(), ThresholdRule::SharpTopK);
        assert_eq!(ThresholdKind::Admire.rule(), ThresholdRule::AdmIre);
        assert_eq!(
            ThresholdKind::FlatKthSmallest.rule(),
            ThresholdRule::FlatKthSmallest
        );
        for text in ["constant", "rank-increase:20", "rank-increase:5000"] {
            let g: GammaChoice = text.parse().unwrap();
            assert_eq!(g.to_string(), text);
            assert_eq!(serde_json::to_string(&g).unwrap(), format!("\"{text}\""));
        }
        assert_eq!(
            "rank-increase:300".parse::<GammaChoice>().unwrap().0,
            GammaSchedule::RankIncrease { horizon: 300 }
        );
        for bad in [
            "rank-increase:19",
            "rank-increase:",
            "rank-increase:x",
            "cosine",
        ] {
            assert_unknown::<GammaChoice>(bad, "opt.gamma_schedule");
        }
        assert_unknown::<ThresholdKind>("kth-largest", "opt.threshold_rule");
        assert_eq!(
            serde_json::from_str::<EstimatorKind>("\"abs-gradient\"").unwrap(),
            EstimatorKind::AbsGradient
        );
        assert_unknown::<EstimatorKind>("hessian-diagonal", "opt.estimator");
        let e = serde_json::from_str::<EstimatorBatch>("\"random\"").unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid config `estimator_batch`: unknown value `random`: expected one of current, fixed"),
            "{e}"
        );
    }
}

/// Where a data-parallel group keeps the optimizer state (config `optimizer_state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerStateLayout {
    /// `replicated`: every process holds the whole state and takes the whole step.
    #[default]
    Replicated,
    /// `sharded`: ZeRO stage 1, each process holds and steps the state of its own range of the
    /// parameters (see [`crate::train::shard_state`]); the parameters are all-gathered after
    /// the step.
    Sharded,
}

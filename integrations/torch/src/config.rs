//! Options from Python (keyword dicts and strings) into ire-core's typed configurations.
//!
//! Every choice is a Rust enum; a string naming none of its values, or a key naming no option,
//! is an error that lists what is allowed. Ranges are checked by ire-core's `validate`.

use ire_core::optim::{Estimator, GammaSchedule, KappaSchedule, ThresholdRule};
use ire_core::{AdamWConfig, DType, IreConfig, SamConfig, SgdConfig};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::{Result, TorchError};

/// The base step an engine runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BaseSpec {
    /// SGD in the fused kernels.
    Sgd(SgdConfig),
    /// AdamW in the fused kernels.
    AdamW(AdamWConfig),
    /// A base step taken by torch (any `torch.optim.Optimizer`).
    External,
}

/// When mask refreshes happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cadence {
    /// Every `refresh_every` steps after the warm-up (ire-core's schedule): a step that is due
    /// needs a refresh first (or the training-gradient estimator).
    Scheduled,
    /// Only when the caller asks (the official classes' `update_mask`): no step is ever due.
    OnCall,
}

/// One of a fixed set of string choices.
pub trait Choice: Sized + Copy + 'static {
    /// The option's name in messages.
    const FIELD: &'static str;
    /// Every value, with its name.
    const VALUES: &'static [(&'static str, Self)];
    /// The names alone, for the error message.
    const NAMES: &'static [&'static str];

    /// Parses `s`, or fails listing the names.
    fn parse(s: &str) -> Result<Self> {
        Self::VALUES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|&(_, v)| v)
            .ok_or_else(|| TorchError::UnknownChoice {
                field: Self::FIELD,
                value: s.to_string(),
                allowed: Self::NAMES,
            })
    }
}

impl Choice for Estimator {
    const FIELD: &'static str = "estimator";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("squared_gradient", Estimator::SquaredGradient),
        ("abs_gradient", Estimator::AbsGradient),
        (
            "squared_training_gradient",
            Estimator::SquaredTrainingGradient,
        ),
    ];
    const NAMES: &'static [&'static str] = &[
        "squared_gradient",
        "abs_gradient",
        "squared_training_gradient",
    ];
}

impl Choice for ThresholdRule {
    const FIELD: &'static str = "threshold";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("sharp_top_k", ThresholdRule::SharpTopK),
        ("flat_kth_smallest", ThresholdRule::FlatKthSmallest),
        ("admire", ThresholdRule::AdmIre),
    ];
    const NAMES: &'static [&'static str] = &["sharp_top_k", "flat_kth_smallest", "admire"];
}

impl Choice for Cadence {
    const FIELD: &'static str = "cadence";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("scheduled", Cadence::Scheduled),
        ("on_call", Cadence::OnCall),
    ];
    const NAMES: &'static [&'static str] = &["scheduled", "on_call"];
}

/// The parameter dtypes, by torch's short names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloatDType(pub DType);

impl Choice for FloatDType {
    const FIELD: &'static str = "dtype";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("float32", FloatDType(DType::F32)),
        ("float64", FloatDType(DType::F64)),
    ];
    const NAMES: &'static [&'static str] = &["float32", "float64"];
}

/// The base kinds, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseKind {
    /// `"sgd"`.
    Sgd,
    /// `"adamw"`.
    AdamW,
    /// `"external"`.
    External,
}

impl Choice for BaseKind {
    const FIELD: &'static str = "base";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("sgd", BaseKind::Sgd),
        ("adamw", BaseKind::AdamW),
        ("external", BaseKind::External),
    ];
    const NAMES: &'static [&'static str] = &["sgd", "adamw", "external"];
}

/// Reads a keyword dict, refusing keys outside `allowed`.
struct Options<'a, 'py> {
    dict: &'a Bound<'py, PyDict>,
    what: &'static str,
}

impl<'py> Options<'_, 'py> {
    fn new<'a>(
        dict: &'a Bound<'py, PyDict>,
        what: &'static str,
        allowed: &'static [&'static str],
    ) -> Result<Options<'a, 'py>> {
        for key in dict.keys() {
            let k: String = key.extract()?;
            if !allowed.contains(&k.as_str()) {
                return Err(TorchError::UnknownChoice {
                    field: what,
                    value: k,
                    allowed,
                });
            }
        }
        Ok(Options { dict, what })
    }

    fn get_opt<T>(&self, key: &'static str) -> Result<Option<T>>
    where
        T: for<'a> FromPyObject<'a, 'py>,
        for<'a> <T as FromPyObject<'a, 'py>>::Error: Into<PyErr>,
    {
        match self.dict.get_item(key)? {
            Some(v) if !v.is_none() => {
                v.extract::<T>()
                    .map(Some)
                    .map_err(|e| TorchError::BadOption {
                        what: self.what,
                        key,
                        reason: e.into().to_string(),
                    })
            }
            _ => Ok(None),
        }
    }

    fn get<T>(&self, key: &'static str, default: T) -> Result<T>
    where
        T: for<'a> FromPyObject<'a, 'py>,
        for<'a> <T as FromPyObject<'a, 'py>>::Error: Into<PyErr>,
    {
        Ok(self.get_opt(key)?.unwrap_or(default))
    }
}

const IRE_KEYS: &[&str] = &[
    "kappa",
    "gamma",
    "refresh_every",
    "warmup_steps",
    "beta",
    "estimator",
    "threshold",
    "kappa_lr_max",
    "rank_increase_horizon",
];

/// IRE's options: `kappa`, `gamma`, `refresh_every`, `warmup_steps`, `beta`, `estimator`,
/// `threshold`, `kappa_lr_max` (set: `κ_t = κ lr_t / kappa_lr_max`), `rank_increase_horizon`
/// (set: the official `rank_increase` γ schedule over that many steps). Validated.
pub fn ire_config(d: &Bound<'_, PyDict>) -> Result<IreConfig> {
    let o = Options::new(d, "IRE option", IRE_KEYS)?;
    let def = IreConfig::default();
    let estimator: Option<String> = o.get_opt("estimator")?;
    let threshold: Option<String> = o.get_opt("threshold")?;
    let cfg = IreConfig {
        kappa: o.get("kappa", def.kappa)?,
        gamma: o.get("gamma", def.gamma)?,
        refresh_every: o.get("refresh_every", def.refresh_every)?,
        warmup_steps: o.get("warmup_steps", def.warmup_steps)?,
        beta: o.get("beta", def.beta)?,
        estimator: estimator
            .map(|s| Estimator::parse(&s))
            .transpose()?
            .unwrap_or(def.estimator),
        threshold: threshold
            .map(|s| ThresholdRule::parse(&s))
            .transpose()?
            .unwrap_or(def.threshold),
        kappa_schedule: match o.get_opt::<f64>("kappa_lr_max")? {
            Some(lr_max) => KappaSchedule::ProportionalToLr { lr_max },
            None => KappaSchedule::Constant,
        },
        gamma_schedule: match o.get_opt::<u64>("rank_increase_horizon")? {
            Some(horizon) => GammaSchedule::RankIncrease { horizon },
            None => GammaSchedule::Constant,
        },
    };
    cfg.validate()?;
    Ok(cfg)
}

const SGD_KEYS: &[&str] = &["momentum", "dampening", "nesterov", "weight_decay"];
const ADAMW_KEYS: &[&str] = &["beta1", "beta2", "eps", "weight_decay"];
const SAM_KEYS: &[&str] = &["rho", "adaptive"];

/// The base's options: SGD `momentum`, `dampening`, `nesterov`, `weight_decay`; AdamW `beta1`,
/// `beta2`, `eps`, `weight_decay` (PyTorch's defaults otherwise); none for an external base.
pub fn base_spec(kind: BaseKind, d: &Bound<'_, PyDict>) -> Result<BaseSpec> {
    Ok(match kind {
        BaseKind::Sgd => {
            let o = Options::new(d, "SGD option", SGD_KEYS)?;
            let def = SgdConfig::default();
            let cfg = SgdConfig {
                momentum: o.get("momentum", def.momentum)?,
                dampening: o.get("dampening", def.dampening)?,
                nesterov: o.get("nesterov", def.nesterov)?,
                weight_decay: o.get("weight_decay", def.weight_decay)?,
            };
            cfg.validate()?;
            BaseSpec::Sgd(cfg)
        }
        BaseKind::AdamW => {
            let o = Options::new(d, "AdamW option", ADAMW_KEYS)?;
            let def = AdamWConfig::default();
            let cfg = AdamWConfig {
                beta1: o.get("beta1", def.beta1)?,
                beta2: o.get("beta2", def.beta2)?,
                eps: o.get("eps", def.eps)?,
                weight_decay: o.get("weight_decay", def.weight_decay)?,
            };
            cfg.validate()?;
            BaseSpec::AdamW(cfg)
        }
        BaseKind::External => {
            Options::new(d, "external base option", &[])?;
            BaseSpec::External
        }
    })
}

/// SAM's options: `rho` (required), `adaptive` (ASAM; default false).
pub fn sam_config(d: &Bound<'_, PyDict>) -> Result<SamConfig> {
    let o = Options::new(d, "SAM option", SAM_KEYS)?;
    let cfg = SamConfig {
        rho: o.get("rho", SamConfig::default().rho)?,
        adaptive: o.get("adaptive", false)?,
    };
    cfg.validate()?;
    Ok(cfg)
}

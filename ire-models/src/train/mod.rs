//! Training: the six optimizers, the run configuration, and the step loop.

pub mod applies;
pub mod choices;
pub mod config;
pub mod config_error;
pub mod fingerprint;
pub mod folder;
pub mod footprint;
pub mod history;
pub mod optimizer;
pub mod run;
pub mod run_error;
pub mod shard_state;
pub mod source;
pub mod sync_bn;
pub mod train_error;
pub mod trainer;

pub use choices::{
    EstimatorBatch, EstimatorForward, EstimatorKind, GammaChoice, OptimizerStateLayout,
    ThresholdKind,
};
pub use config::{DatasetKind, TrainConfig};
pub use config_error::ConfigError;
pub use optimizer::{AnyOptimizer, MaskSummary, OptimizerConfig, OptimizerKind};
pub use run_error::RunError;
pub use train_error::TrainError;
pub use trainer::{EvalMetrics, StepMetrics, Trainer};

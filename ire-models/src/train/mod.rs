//! Training: the six optimizers, the run configuration, and the step loop.

pub mod config;
pub mod optimizer;
pub mod run;
pub mod source;
pub mod trainer;

pub use config::{DatasetKind, TrainConfig};
pub use optimizer::{AnyOptimizer, OptimizerConfig, OptimizerKind};
pub use trainer::{EvalMetrics, StepMetrics, TrainError, Trainer};

//! Run artifacts: what a training run leaves on disk.
//!
//! - [`checkpoint`]: a checksummed binary container of named `f32` tensors, byte blobs and a JSON
//!   metadata string, written atomically (temporary file, fsync, rename, folder fsync), plus a
//!   compact exact binary serde format ([`checkpoint::encode`], [`checkpoint::decode`]) for blobs.
//! - [`metrics`]: metrics as JSON lines, one object per line, flushed per line.
//! - [`plot`]: loss/accuracy curves as PNG and SVG.
//! - [`safetensors`]: weights exported to (and imported from) the `.safetensors` format.
//!
//! Every failure is an [`ArtifactError`] that names the file and the problem; nothing here
//! panics on a corrupt or truncated file.

pub mod atomic;
pub mod checkpoint;
mod error;
pub mod metrics;
pub mod plot;
pub mod safetensors;

pub use checkpoint::Checkpoint;
pub use error::{ArtifactError, Result};
pub use metrics::MetricsWriter;
pub use plot::Series;

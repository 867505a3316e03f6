//! The optimizer's state as a burn [`Record`].
//!
//! The state is `ire-core`'s [`StateDict`] as it is, whatever the recorder's precision
//! settings: a half-precision recorder would round the moments, and a resumed run would then
//! no longer equal an uninterrupted one.

use burn::record::{PrecisionSettings, Record};
use burn::tensor::backend::Backend;
use ire_core::state::StateDict;
use serde::{Deserialize, Serialize};

/// The optimizer's record: the ids of the parameters it steps (in order) and its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IreRecord {
    /// burn's ids of the trainable parameters, in the module's visiting order.
    pub param_ids: Vec<u64>,
    /// The state; `None` only if the record was taken in the middle of a step.
    pub state: Option<StateDict>,
}

impl<B: Backend> Record<B> for IreRecord {
    type Item<S: PrecisionSettings> = IreRecord;

    fn into_item<S: PrecisionSettings>(self) -> Self::Item<S> {
        self
    }

    fn from_item<S: PrecisionSettings>(item: Self::Item<S>, _device: &B::Device) -> Self {
        item
    }
}

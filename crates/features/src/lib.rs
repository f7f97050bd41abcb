//! Per-entity, event-time windowed state and the feature vector computed from it.
//!
//! Contract:
//! - Time is event time on a grid of `sampling_interval` slots. A sample lands in slot
//!   `ts / interval`; each entity keeps the last `capacity` slots (the longest window, and at
//!   least the lags and the allowed lateness).
//! - Events older than the entity's newest slot minus the allowed lateness are rejected as too
//!   late; an event with the same entity and timestamp as a retained one is a duplicate.
//! - Two different samples in one slot: the later timestamp wins, whatever the arrival order.
//! - Rolling statistics use observed values only; the current value and the lags are
//!   forward-filled (then back-filled from the current value) and flagged.
//! - The state of a partition is a function of the records it retained. Each slot remembers the
//!   smallest source offset that wrote it, so [`PartitionState::replay_floor`] tells from which
//!   offset a replay rebuilds exactly the same state (see `docs/design/featurizer-state.md`).
//!
//! The same [`PartitionState`] is used by the featurizer service, by training and by backtests,
//! so a model sees in production exactly the features it was trained on.

mod calendar;
mod config;
mod names;
mod partition;
mod prefetch;
mod state;
#[cfg(test)]
mod tests;

pub use config::{ConfigError, FeatureConfig};
pub use names::{FeatureLayout, METRICS};
pub use partition::{Outcome, PartitionState, Sample};

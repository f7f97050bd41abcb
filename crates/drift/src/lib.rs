//! Drift detection, pure and deterministic (no I/O beyond reading a manifest): what the drift
//! monitor service runs on its input, and what its tests check directly.
//!
//! * [`features::FeatureMonitor`]: live feature distributions against the serving version's
//!   reference deciles, PSI and a binned two-sample KS test per tumbling window.
//! * [`errors::ErrorMonitor`]: forecasts joined with the actuals later forecasts observe, and
//!   per entity and head a Page-Hinkley test on the error against the version's validation MAE.
//!
//! Both emit debounced episodes (OPEN, UPDATE, RESOLVED) with deterministic ids; see
//! `docs/design/drift.md`.

pub mod config;
pub mod errors;
pub mod features;
pub mod reference;
pub mod stats;

pub use config::DriftConfig;
pub use errors::{ErrorMonitor, JoinStats};
pub use features::FeatureMonitor;
pub use reference::{FeatureReference, ModelReference, ReferenceError};

#[cfg(test)]
mod tests;

//! Where telemetry comes from when no broker is involved: the synthetic fleet generator (used by
//! `loadgen`, the tests and `headroom-train`) and the CSV trace readers (used by `loadgen replay`,
//! training and backtests). Both produce [`headroom_schemas::Telemetry`] records, so every
//! consumer of a source sees exactly what a producer would have published.

pub mod generator;
pub mod trace;

pub use generator::{GenConfig, Generator, PRICE_GIB_HOUR, PRICE_VCPU_HOUR};
pub use trace::{read_bitbrains, read_generic, Mapping};

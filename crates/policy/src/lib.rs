//! The capacity policy of headroom: given what an entity runs on now (an [`Observation`]) and
//! the forecast of its utilization (p50/p90 per metric and horizon), decide whether to scale
//! out, scale in, set new CPU / memory requests, move to a cheaper cluster, or hold; with the
//! expected cost change per hour, the probability of running short after the change, a
//! confidence and a readable reason.
//!
//! Contract:
//! - Pure and deterministic: no I/O, no clock. The same ordered inputs give the same
//!   decisions, so the recommender can rebuild an entity's state by replaying its partition,
//!   and the policy backtest runs exactly the code the service runs.
//! - Required capacity = the forecast's `headroom_quantile` of demand over the horizons between
//!   the provisioning lead time and the look-ahead, divided by the target utilization, bounded
//!   by min/max and rounded up to the step. Headroom therefore comes from the forecast's own
//!   spread, not from a fixed margin. Quantiles other than p50/p90 are read off a normal
//!   shape through those two (see [`quantile`]).
//! - Changes smaller than the hysteresis band are not made; after an action, further
//!   increases wait `scale_out_cooldown` and decreases `scale_in_cooldown`; a decrease is made
//!   only as far as both the forecast and the recent actuals (the maximum demand of the last
//!   `scale_in_window`) allow.
//! - Bad input never panics: a forecast without usable points, an unknown capacity or an
//!   unknown price gives a HOLD whose [`HoldReason`] says why.

mod config;
mod decide;
pub mod quantile;
pub mod simulate;

pub use config::{
    Policy, PolicyError, PolicyFile, PolicyOverride, PolicyTable, Price, Pricing, Rebalance,
    Scaling, DEFAULTS,
};
pub use decide::{
    Action, Decision, EntityState, ForecastView, HoldReason, Horizon, Observation, Recommender,
};

#[cfg(test)]
mod tests;

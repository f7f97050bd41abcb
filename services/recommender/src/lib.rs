//! The recommender: consumes `forecasts` and publishes one decision per forecast to
//! `recommendations`, keyed by entity: scale out / in to N replicas, set CPU / memory
//! requests, move to a cheaper cluster, or hold; with the expected cost change per hour, the
//! probability of running short after the change, a confidence, the policy and model
//! versions, a readable reason, and a deterministic id.
//!
//! The policy is `headroom-policy` (the code the policy backtest runs). Capacity and actuals
//! come with each forecast (forecasts v2 carry what was observed at their event time), so the
//! recommender reads one topic. Per-entity state (recent actual demand, the last action) lives
//! per partition and is rebuilt after a restart or rebalance by replaying the partition from
//! the floor stored with each commit, as in the featurizer.
//!
//! Delivery: at least once, like every service on the runtime; replays give the same ids.
//! Recommend-only: nothing is acted upon.

mod config;
mod processor;

pub use config::{ActuationMode, Config, Publish, PublishHolds, Topics};
pub use processor::{horizons, observation, to_record, RecommenderMetrics, RecommenderStage};

use headroom_policy::Recommender;
use headroom_runtime::service::{self, ServiceHandle};
use headroom_runtime::topology::Topology;
use headroom_runtime::Shutdown;

pub const SERVICE: &str = "recommender";

/// The embedded `default.toml` (for tools and tests that build a config by hand).
pub fn config_defaults() -> &'static str {
    config::DEFAULTS
}

/// Starts the recommender with `config` until `shutdown` triggers.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<ServiceHandle> {
    config.validate()?;
    Topology::builtin().check_service(
        SERVICE,
        &["forecasts"],
        &["recommendations", "telemetry.dlq"],
    )?;
    let engine = Recommender::new(config.policy.clone(), config.pricing.clone())?;
    tracing::info!(policy = %config.policy.version, overrides = config.policy.overrides.len(), "policy loaded (recommend-only)");
    let topics = config.topics.clone();
    let holds = config.publish.holds;
    let idle = config.state.idle_expiry.as_millis() as i64;
    service::start(
        SERVICE,
        config.common(),
        vec![topics.input.clone()],
        Some(topics.dlq.clone()),
        shutdown,
        move |metrics| {
            Ok(RecommenderStage::new(
                engine,
                topics.output,
                holds,
                idle,
                RecommenderMetrics::new(metrics),
            ))
        },
    )
    .await
}

//! The featurizer: consumes `telemetry.raw`, keeps per-entity windowed state per partition
//! (see `headroom-features`), and publishes one feature vector per valid event to `features`.
//! Undecodable, invalid and too-late records go to `telemetry.dlq` with the reason; exact
//! duplicates are dropped and counted. State is rebuilt after a restart or rebalance by
//! replaying the partition from the floor stored with the committed offset.

mod config;
mod processor;

pub use config::{Config, Topics};
pub use processor::Featurizer;

use headroom_runtime::service::{self, ServiceHandle};
use headroom_runtime::topology::Topology;
use headroom_runtime::Shutdown;

pub const SERVICE: &str = "featurizer";

/// Starts the featurizer with `config` until `shutdown` triggers.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<ServiceHandle> {
    config.validate()?;
    // The wiring in code must match the declared topology (names without test prefixes).
    Topology::builtin().check_service(
        SERVICE,
        &["telemetry.raw"],
        &["features", "telemetry.dlq"],
    )?;
    let registry_url = config.schema_registry.url.clone();
    let handle = tokio::runtime::Handle::current();
    let topics = config.topics.clone();
    let features = config.features.clone();
    let limits = config.validation.clone();
    service::start(
        SERVICE,
        config.common(),
        vec![topics.input.clone()],
        Some(topics.dlq.clone()),
        shutdown,
        move |_metrics| {
            let registry = (!registry_url.is_empty())
                .then(|| headroom_runtime::registry::RegistryClient::new(&registry_url, handle));
            Ok(Featurizer::new(features, limits, topics.output, registry))
        },
    )
    .await
}

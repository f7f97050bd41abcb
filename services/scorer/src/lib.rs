//! The scorer: consumes `features`, scores each event with the serving model version in
//! micro-batches, and publishes forecasts (p50 and p90 per metric and horizon, the
//! scale-event probability, the model versions used) to `forecasts`, keyed by entity.
//!
//! At start-up it loads the version the models directory's registry names as serving for its
//! family. It follows the `models` topic (every instance reads all of it, no consumer group):
//! a PROMOTED or ROLLED_BACK event for its family is loaded in the background, checked, and
//! swapped in between two batches.

mod config;
mod processor;
mod served;

pub use config::{Config, Models, Topics};
pub use processor::{batch_schema, feature_values, to_record_batch, NextModel, Scorer, ScorerMetrics};
pub use served::{Neural, Served};

use std::sync::{Arc, Mutex};

use headroom_forecast::artifact::Registry;
use headroom_runtime::service::{self, ServiceHandle};
use headroom_runtime::topology::Topology;
use headroom_runtime::Shutdown;

pub const SERVICE: &str = "scorer";

pub use headroom_runtime::models::artifact_dir;

/// Loads the version the registry names as serving for `family`, with the neural models
/// `models.neural` names: the PostgreSQL registry when `models.registry_url` is set, the
/// models directory's registry.json otherwise.
pub async fn load_serving(models: &Models) -> anyhow::Result<Served> {
    let dir = if models.registry_url.is_empty() {
        let reg = Registry::read(&models.dir)?;
        let version = reg.serving.get(&models.family).ok_or_else(|| {
            anyhow::anyhow!(
                "no serving `{}` model in {}: train one (headroom-train train) and promote it \
                 (headroom-train promote VERSION --models-dir {})",
                models.family,
                models.dir.join(headroom_forecast::artifact::REGISTRY).display(),
                models.dir.display()
            )
        })?;
        models.dir.join(version)
    } else {
        let (version, uri) = headroom_store::registry::serving_at(&models.registry_url, &models.family).await?;
        let dir = artifact_dir(&models.dir, &uri);
        tracing::info!(version, dir = %dir.display(), "serving version named by the PostgreSQL registry");
        dir
    };
    Served::load(&dir, &models.neural)
}

/// Starts the scorer with `config` until `shutdown` triggers.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<ServiceHandle> {
    config.validate()?;
    Topology::builtin().check_service(SERVICE, &["features", "models"], &["forecasts", "telemetry.dlq"])?;
    let device = headroom_forecast::device::for_xgboost(config.models.device)
        .map_err(|e| anyhow::anyhow!("key `models.device`: {e}"))?;
    let model = load_serving(&config.models).await?;
    tracing::info!(version = %model.version(), models = ?model.families(), schema = %model.xgb.feature_schema, heads = model.xgb.heads.len(), "serving model loaded");
    let next: NextModel = Arc::new(Mutex::new(None));
    let topics = config.topics.clone();
    let models = config.models.clone();
    let kafka = config.kafka.clone();
    let current = model.version().to_owned();
    let watch_next = next.clone();
    let watch_shutdown = shutdown.clone();
    service::start(
        SERVICE,
        config.common(),
        vec![topics.input.clone()],
        Some(topics.dlq.clone()),
        shutdown,
        move |metrics| {
            let m = ScorerMetrics::new(metrics);
            if models.watch {
                let (wm, topic, wmodels) = (m.clone(), topics.models.clone(), models.clone());
                std::thread::Builder::new()
                    .name("model-watcher".into())
                    .spawn(move || watch(&kafka, &topic, &wmodels, current, watch_next, wm, watch_shutdown))?;
            }
            let idle = models.idle_expiry.as_millis() as i64;
            Scorer::new(topics.input, topics.output, model, next, models.threads, device, idle, metrics.state_entities.clone(), m)
        },
    )
    .await
}

/// Follows the models topic from its beginning (it is compacted: the latest event per model).
fn watch(
    kafka: &headroom_runtime::KafkaConfig,
    topic: &str,
    models: &Models,
    mut current: String,
    next: NextModel,
    metrics: ScorerMetrics,
    shutdown: Shutdown,
) {
    let family = models.family.as_str();
    tracing::info!(topic, family, "following model versions");
    headroom_runtime::models::follow(kafka, topic, &shutdown, |ev| {
        if !headroom_runtime::models::is_switch(&ev, family) || ev.version == current {
            return;
        }
        let dir = artifact_dir(&models.dir, &ev.artifact_uri);
        match Served::load(&dir, &models.neural) {
            Ok(m) if m.version() == ev.version => {
                tracing::info!(version = %m.version(), models = ?m.families(), dir = %dir.display(), "model version loaded; swapping at the next batch");
                current = m.version().to_owned();
                if let Ok(mut slot) = next.lock() {
                    *slot = Some(m);
                }
            }
            Ok(m) => {
                metrics.load_failures.inc();
                tracing::error!(announced = %ev.version, found = %m.version(), dir = %dir.display(), "model event names another version than its artifacts hold; ignored");
            }
            Err(e) => {
                metrics.load_failures.inc();
                tracing::error!(error = %e, version = %ev.version, "announced model version cannot be loaded; the current one keeps serving");
            }
        }
    });
}

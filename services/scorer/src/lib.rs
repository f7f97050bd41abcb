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

pub use config::{Config, Models, Topics};
pub use processor::{batch_schema, feature_values, to_record_batch, NextModel, Scorer, ScorerMetrics};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headroom_forecast::artifact::Registry;
use headroom_forecast::serving::ServingModel;
use headroom_runtime::service::{self, ServiceHandle};
use headroom_runtime::topology::Topology;
use headroom_runtime::Shutdown;
use headroom_schemas::{ModelEvent, ModelEventKind};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

pub const SERVICE: &str = "scorer";

/// Resolves an event's artifact URI (`file://…` or a path; relative paths are taken from the
/// models directory).
pub fn artifact_dir(models_dir: &Path, uri: &str) -> PathBuf {
    let p = PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
    if p.is_absolute() {
        p
    } else {
        models_dir.join(p)
    }
}

/// Loads the version the registry names as serving for `family`.
pub fn load_serving(models: &Models) -> anyhow::Result<ServingModel> {
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
    ServingModel::load(&models.dir.join(version), None)
}

/// Starts the scorer with `config` until `shutdown` triggers.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<ServiceHandle> {
    config.validate()?;
    Topology::builtin().check_service(SERVICE, &["features", "models"], &["forecasts", "telemetry.dlq"])?;
    let model = load_serving(&config.models)?;
    tracing::info!(family = %model.family, version = %model.version, schema = %model.feature_schema, heads = model.heads.len(), "serving model loaded");
    let next: NextModel = Arc::new(Mutex::new(None));
    let topics = config.topics.clone();
    let models = config.models.clone();
    let kafka = config.kafka.clone();
    let current = model.version.clone();
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
                let (wm, topic, dir, family) = (m.clone(), topics.models.clone(), models.dir.clone(), models.family.clone());
                std::thread::Builder::new()
                    .name("model-watcher".into())
                    .spawn(move || watch(&kafka, &topic, &dir, &family, current, watch_next, wm, watch_shutdown))?;
            }
            Scorer::new(topics.input, topics.output, model, next, models.threads, m)
        },
    )
    .await
}

/// Follows the models topic from its beginning (it is compacted: the latest event per model).
#[allow(clippy::too_many_arguments)]
fn watch(
    kafka: &headroom_runtime::KafkaConfig,
    topic: &str,
    models_dir: &Path,
    family: &str,
    mut current: String,
    next: NextModel,
    metrics: ScorerMetrics,
    shutdown: Shutdown,
) {
    // assign() still wants a group id; this one never joins a group nor commits.
    let group = format!(
        "{}.model-watch.{}.{}",
        kafka.group_id,
        std::process::id(),
        headroom_runtime::observe::now_ms()
    );
    let consumer: BaseConsumer = match headroom_runtime::kafka::client_config(kafka)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "model watcher: cannot create a consumer; versions will not be followed");
            return;
        }
    };
    let partitions = loop {
        if shutdown.is_triggered() {
            return;
        }
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => match md.topics().first().map(|t| t.partitions().len()) {
                Some(n) if n > 0 => break n as i32,
                _ => tracing::warn!(topic, "model watcher: topic has no partitions yet"),
            },
            Err(e) => tracing::warn!(error = %e, topic, "model watcher: metadata"),
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let _ = tpl.add_partition_offset(topic, p, Offset::Beginning);
    }
    if let Err(e) = consumer.assign(&tpl) {
        tracing::error!(error = %e, "model watcher: assign");
        return;
    }
    tracing::info!(topic, family, "following model versions");
    while !shutdown.is_triggered() {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else { continue };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "model watcher: consumer error");
                continue;
            }
        };
        let Some(payload) = msg.payload() else { continue };
        let ev = match ModelEvent::decode(payload) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, offset = msg.offset(), "model watcher: undecodable model event skipped");
                continue;
            }
        };
        if ev.model_name != family
            || !matches!(ev.kind, ModelEventKind::Promoted | ModelEventKind::RolledBack)
            || ev.version == current
        {
            continue;
        }
        let dir = artifact_dir(models_dir, &ev.artifact_uri);
        match ServingModel::load(&dir, None) {
            Ok(m) if m.version == ev.version => {
                tracing::info!(version = %m.version, dir = %dir.display(), "model version loaded; swapping at the next batch");
                current = m.version.clone();
                if let Ok(mut slot) = next.lock() {
                    *slot = Some(m);
                }
            }
            Ok(m) => {
                metrics.load_failures.inc();
                tracing::error!(announced = %ev.version, found = %m.version, dir = %dir.display(), "model event names another version than its artifacts hold; ignored");
            }
            Err(e) => {
                metrics.load_failures.inc();
                tracing::error!(error = %e, version = %ev.version, "announced model version cannot be loaded; the current one keeps serving");
            }
        }
    }
}

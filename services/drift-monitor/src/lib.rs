//! The drift monitor: consumes `features` and `forecasts` and publishes debounced drift alerts
//! to `drift.alerts`.
//!
//! * Feature distributions: every feature of the vector, over a tumbling event-time window of
//!   all this instance's partitions, against the serving version's reference deciles (PSI and a
//!   binned two-sample KS test).
//! * Model error: each forecast's p50 is joined with the actual a later forecast of the entity
//!   observed at its target time (forecasts v2 carry their observation), and a Page-Hinkley test
//!   per entity and head watches the error against the version's validation MAE.
//!
//! References come from the serving version's manifest (the version the PostgreSQL registry
//! names when `models.registry_url` is set, registry.json in the models directory otherwise); the monitor
//! follows the models topic and switches to a promoted version's references without a restart.
//! The detectors' state is kept in compacted changelogs: the model-error detectors per entity in
//! `drift.state`, the feature windows per features partition in `drift.windows`. Each batch's
//! changes are written before its offsets are committed and read back when a partition is
//! assigned, so a restart or a rebalance resumes them, open windows and episodes included (see
//! `docs/design/drift.md`).

mod config;
mod processor;

pub use config::{Config, Models, Topics};
pub use processor::{DriftMetrics, DriftStage, NextReference, StateStore};

use std::sync::{Arc, Mutex};

use headroom_drift::ModelReference;
use headroom_runtime::models::{artifact_dir, follow, is_switch};
use headroom_runtime::service::{self, ServiceHandle};
use headroom_runtime::topology::Topology;
use headroom_runtime::Shutdown;

pub const SERVICE: &str = "drift-monitor";

/// The embedded `default.toml` (for tools and tests that build a config by hand).
pub fn config_defaults() -> &'static str {
    config::DEFAULTS
}

/// The serving version's references: the PostgreSQL registry names the version when
/// `models.registry_url` is set, the models directory's registry.json otherwise.
pub async fn load_serving(models: &Models) -> anyhow::Result<ModelReference> {
    if models.registry_url.is_empty() {
        return ModelReference::load_serving(&models.dir, &models.family).map_err(|e| {
            anyhow::anyhow!("{e} (the drift monitor compares against the serving version: train and promote one with headroom-train)")
        });
    }
    let (version, uri) = headroom_store::registry::serving_at(&models.registry_url, &models.family).await?;
    let dir = artifact_dir(&models.dir, &uri);
    let reference = ModelReference::load(&dir)?;
    anyhow::ensure!(
        reference.version == version,
        "the registry names `{version}` as serving but {} holds `{}`",
        dir.display(),
        reference.version
    );
    tracing::info!(version, dir = %dir.display(), "serving version named by the PostgreSQL registry");
    Ok(reference)
}

/// Starts the drift monitor with `config` until `shutdown` triggers.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<ServiceHandle> {
    config.validate()?;
    Topology::builtin().check_service(
        SERVICE,
        &["features", "forecasts", "models", "drift.state", "drift.windows"],
        &["drift.alerts", "telemetry.dlq", "drift.state", "drift.windows"],
    )?;
    let state = config.state.enabled.then(|| StateStore {
        kafka: config.kafka.clone(),
        topic: config.topics.state.clone(),
        windows_topic: config.topics.windows.clone(),
        restore_timeout: config.state.restore_timeout,
        windows_every: config.state.windows_every,
        detectors_every: config.state.detectors_every,
        rewrite_after: config.state.rewrite_after,
    });
    if let Some(st) = &state {
        let t = &config.topics;
        let pairs = [
            (config.model_error.enabled, "topics.state", t.forecasts.clone(), st.topic.clone()),
            (config.features.enabled, "topics.windows", t.features.clone(), st.windows_topic.clone()),
        ];
        for (on, key, input, topic) in pairs {
            if !on {
                continue;
            }
            let kafka = st.kafka.clone();
            tokio::task::spawn_blocking(move || {
                headroom_runtime::changelog::check_copartitioned(&kafka, &input, &topic, std::time::Duration::from_secs(10))
            })
            .await?
            .map_err(|e| anyhow::anyhow!("key `{key}`: {e:#}"))?;
        }
    }
    let reference = Arc::new(load_serving(&config.models).await?);
    tracing::info!(
        version = %reference.version, features = reference.features.len(),
        validation_heads = reference.validation_mae.len(), "drift references loaded"
    );
    let next: NextReference = Arc::new(Mutex::new(None));
    let topics = config.topics.clone();
    let models = config.models.clone();
    let kafka = config.kafka.clone();
    let drift = config.drift();
    let watch_shutdown = shutdown.clone();
    let watch_next = next.clone();
    let current = reference.version.clone();
    service::start(
        SERVICE,
        config.common(),
        vec![topics.features.clone(), topics.forecasts.clone()],
        Some(topics.dlq.clone()),
        shutdown,
        move |metrics| {
            let m = DriftMetrics::new(metrics);
            m.references.with_label_values(&["startup"]).inc();
            if models.watch {
                let (wm, topic) = (m.clone(), topics.models.clone());
                std::thread::Builder::new().name("model-watcher".into()).spawn(move || {
                    let mut current = current;
                    follow(&kafka, &topic, &watch_shutdown, |ev| {
                        if !is_switch(&ev, &models.family) || ev.version == current {
                            return;
                        }
                        let dir = artifact_dir(&models.dir, &ev.artifact_uri);
                        match ModelReference::load(&dir) {
                            Ok(r) if r.version == ev.version => {
                                current = r.version.clone();
                                wm.references.with_label_values(&["promoted"]).inc();
                                if let Ok(mut slot) = watch_next.lock() {
                                    *slot = Some(Arc::new(r));
                                }
                            }
                            Ok(r) => {
                                wm.references.with_label_values(&["failed"]).inc();
                                tracing::error!(announced = %ev.version, found = %r.version, "model event names another version than its manifest; ignored");
                            }
                            Err(e) => {
                                wm.references.with_label_values(&["failed"]).inc();
                                tracing::error!(error = %e, version = %ev.version, "announced version's references cannot be read; the current ones stay");
                            }
                        }
                    })
                })?;
            }
            Ok(DriftStage::new(
                drift,
                reference,
                (topics.features, topics.forecasts, topics.output),
                next,
                m,
                state,
            ))
        },
    )
    .await
}

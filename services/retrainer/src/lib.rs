//! The retrainer: closes the loop from drift alerts to a new serving model.
//!
//! It consumes `drift.alerts` in its consumer group, keeps the alerts that concern the serving
//! version at `triggers.min_severity` or above, coalesces them (`triggers.coalesce`, at most one
//! run per `triggers.min_interval`), also runs on `triggers.schedule`, and a command runs one by
//! hand. A run ([`job::Retrainer::run`]) trains from the stored telemetry with the training
//! command's code, validates the candidate against the serving version on the same temporal
//! holdout, promotes it only when it is better by `promotion.margin`, announces promotions on
//! the `models` topic (scorers and the drift monitor switch without a restart), and records
//! every run in PostgreSQL's `retrain_runs`. Alert offsets are committed once the run they
//! triggered has finished, so a retrainer stopped mid-run runs again after its restart.

pub mod config;
pub mod data;
pub mod job;
pub mod mlflow;
pub mod neural;

pub use config::Config;
pub use job::{compare, Outcome, Retrainer, Trigger, TriggerKind};

use std::sync::Arc;
use std::time::{Duration, Instant};

use headroom_runtime::observe::{serve_http, Health};
use headroom_runtime::service::ServiceHandle;
use headroom_runtime::{Metrics, Shutdown};
use headroom_schemas::{AlertState, DriftAlert};
use prometheus::{IntCounterVec, Opts};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::Message;

pub const SERVICE: &str = "retrainer";

/// The embedded `default.toml`.
pub fn config_defaults() -> &'static str {
    config::DEFAULTS
}

#[derive(Clone)]
pub struct RetrainMetrics {
    /// Alerts by what was done with them (trigger, below_severity, resolved, unknown_model, stale_version, undecodable).
    pub alerts: IntCounterVec,
    /// Runs by trigger and outcome.
    pub runs: IntCounterVec,
    /// MLflow requests that failed, by operation.
    pub mlflow_errors: IntCounterVec,
}

impl RetrainMetrics {
    pub fn new(m: &Metrics) -> RetrainMetrics {
        let alerts = IntCounterVec::new(Opts::new("retrain_alerts_total", "Drift alerts consumed, by what was done with them."), &["outcome"]).expect("metric");
        let runs = IntCounterVec::new(Opts::new("retrain_runs_total", "Retrain runs, by trigger and outcome."), &["trigger", "outcome"]).expect("metric");
        let _ = m.registry.register(Box::new(alerts.clone()));
        let _ = m.registry.register(Box::new(runs.clone()));
        let mlflow_errors = mlflow::errors_counter();
        let _ = m.registry.register(Box::new(mlflow_errors.clone()));
        for o in ["trigger", "below_severity", "resolved", "unknown_model", "stale_version", "undecodable"] {
            let _ = alerts.with_label_values(&[o]);
        }
        RetrainMetrics { alerts, runs, mlflow_errors }
    }
}

/// What to do with one alert, given the serving version and the known versions.
pub fn classify(a: &DriftAlert, serving: Option<&str>, known: &dyn Fn(&str) -> bool, min: config::MinSeverity) -> &'static str {
    let sev = match a.severity {
        headroom_schemas::Severity::Info => config::MinSeverity::Info,
        headroom_schemas::Severity::Warning => config::MinSeverity::Warning,
        headroom_schemas::Severity::Critical => config::MinSeverity::Critical,
    };
    if a.state == AlertState::Resolved {
        return "resolved";
    }
    match a.model_version.as_deref() {
        Some(v) if Some(v) == serving => {}
        Some(v) if known(v) => return "stale_version",
        _ => return "unknown_model",
    }
    if sev < min {
        return "below_severity";
    }
    "trigger"
}

/// Starts the retrainer service until `shutdown` triggers.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<ServiceHandle> {
    config.validate()?;
    headroom_runtime::topology::Topology::builtin().check_service(SERVICE, &["drift.alerts"], &["models"])?;
    let metrics = Metrics::new(SERVICE);
    let health = Arc::new(Health::default());
    let http_addr = serve_http(&config.http.listen, metrics.clone(), health.clone()).await?;
    let m = RetrainMetrics::new(&metrics);
    let rt = tokio::runtime::Handle::current();
    let stop = shutdown.clone();
    let lag = LagCtx(metrics.clone());
    let join = tokio::task::spawn_blocking(move || serve(config, rt, m, lag, health, stop));
    tracing::info!(service = SERVICE, metrics = %format!("http://{http_addr}/metrics"), "service started");
    Ok(ServiceHandle::from_parts(http_addr, metrics, shutdown, join))
}

/// The consumer's context: exports the lag on the alerts topic (`headroom_consumer_lag_records`)
/// from librdkafka's statistics, as every service does.
struct LagCtx(Metrics);

impl rdkafka::ClientContext for LagCtx {
    fn stats(&self, stats: rdkafka::statistics::Statistics) {
        headroom_runtime::kafka::export_lag(&self.0, &stats);
    }
}

impl rdkafka::consumer::ConsumerContext for LagCtx {}

fn serve(cfg: Config, rt: tokio::runtime::Handle, m: RetrainMetrics, lag: LagCtx, health: Arc<Health>, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut retrainer = Retrainer::connect(cfg.clone(), rt)?;
    retrainer.mlflow_errors = m.mlflow_errors.clone();
    if let Err(e) = retrainer.reannounce() {
        tracing::warn!(error = %e, "the serving version could not be re-announced");
    }
    let mut cc = headroom_runtime::kafka::client_config(&cfg.kafka);
    cc.set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // A run blocks the poll loop; the group must not evict the retrainer meanwhile.
        .set("max.poll.interval.ms", "3600000");
    if cc.get("statistics.interval.ms").is_none() {
        cc.set("statistics.interval.ms", headroom_runtime::kafka::STATISTICS_INTERVAL_MS);
    }
    let consumer: BaseConsumer<LagCtx> = cc.create_with_context(lag)?;
    consumer.subscribe(&[cfg.topics.alerts.as_str()])?;
    health.set_ready(true);
    let mut pending: Option<(Instant, Trigger)> = None;
    let mut last_run: Option<Instant> = None;
    let started = Instant::now();
    let mut last_commit = Instant::now();
    let root = cfg.models.dir.clone();
    let known = move |v: &str| root.join(v).join(headroom_forecast::artifact::MANIFEST).exists();
    tracing::info!(topic = %cfg.topics.alerts, "waiting for drift alerts");
    while !shutdown.is_triggered() {
        health.beat();
        if let Some(msg) = consumer.poll(Duration::from_millis(250)) {
            match msg {
                Err(e) => tracing::warn!(error = %e, "consumer error"),
                Ok(msg) => match msg.payload().map(DriftAlert::decode) {
                    Some(Ok(a)) => {
                        let serving = retrainer.serving().ok().flatten();
                        let what = classify(&a, serving.as_deref(), &known, cfg.triggers.min_severity);
                        m.alerts.with_label_values(&[what]).inc();
                        if what == "unknown_model" {
                            tracing::warn!(alert = %a.alert_id, version = ?a.model_version, "drift alert for a model version this registry does not know; ignored");
                        }
                        if what == "trigger" {
                            let (_, t) = pending.get_or_insert_with(|| {
                                (Instant::now(), Trigger { kind: TriggerKind::Drift, reason: String::new(), alert_ids: Vec::new() })
                            });
                            if t.alert_ids.len() < 1000 && !t.alert_ids.contains(&a.alert_id) {
                                t.alert_ids.push(a.alert_id.clone());
                            }
                            t.reason = format!("{} drift alert(s), latest {} on {} ({})", t.alert_ids.len(), a.kind.as_str(), a.subject, a.entity_id.as_deref().unwrap_or("fleet"));
                        }
                    }
                    _ => {
                        m.alerts.with_label_values(&["undecodable"]).inc();
                        tracing::warn!(offset = msg.offset(), "undecodable drift alert skipped");
                    }
                },
            }
        }
        let since_last = last_run.map_or(started.elapsed() + cfg.triggers.min_interval, |t| t.elapsed());
        if pending.is_none() && !cfg.triggers.schedule.is_zero() && last_run.map_or(started.elapsed(), |t| t.elapsed()) >= cfg.triggers.schedule {
            pending = Some((Instant::now() - cfg.triggers.coalesce, Trigger { kind: TriggerKind::Schedule, reason: "scheduled".into(), alert_ids: Vec::new() }));
        }
        let due = pending.as_ref().is_some_and(|(at, _)| at.elapsed() >= cfg.triggers.coalesce) && since_last >= cfg.triggers.min_interval;
        if due {
            let (_, trigger) = pending.take().expect("pending");
            tracing::info!(trigger = trigger.kind.as_str(), reason = %trigger.reason, "retrain run starting");
            // The run blocks this loop: keep the liveness beat going meanwhile.
            let done = std::sync::atomic::AtomicBool::new(false);
            let outcome = std::thread::scope(|s| {
                s.spawn(|| {
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        health.beat();
                        std::thread::sleep(Duration::from_secs(1));
                    }
                });
                let o = retrainer.run(&trigger);
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                o
            });
            m.runs.with_label_values(&[trigger.kind.as_str(), outcome.label()]).inc();
            if outcome == Outcome::Busy {
                // Another run (a manual one, another retrainer) holds the lock: try again later,
                // with the alerts kept, and without committing them.
                tracing::info!("another retrain run is in progress; this trigger waits");
                pending = Some((Instant::now(), trigger));
                continue;
            }
            last_run = Some(Instant::now());
            // The alerts that led here are handled: commit what was consumed up to now.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "nothing to commit");
            }
        } else if pending.is_none() && last_commit.elapsed() >= Duration::from_secs(5) {
            // Nothing waits for a run: what was consumed needs no replay.
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    health.set_ready(false);
    Ok(())
}

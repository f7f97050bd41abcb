//! The retrainer: closes the loop from drift alerts to a new serving model.
//!
//! It consumes `drift.alerts` in its consumer group, keeps the alerts that concern the serving
//! version at `triggers.min_severity` or above, coalesces them (`triggers.coalesce`, at most one
//! run per `triggers.min_interval`), also runs on `triggers.schedule`, and a command runs one by
//! hand. A run ([`job::Retrainer::run`]) trains from the stored telemetry with the training
//! command's code, validates the candidate against the serving version on the same temporal
//! holdout, promotes it only when it is better by `promotion.margin`, announces promotions on
//! the `models` topic (scorers and the drift monitor switch without a restart), and records
//! every run in PostgreSQL's `retrain_runs`.
//!
//! A run goes on a thread of its own while the consumer keeps polling (the group never evicts
//! the retrainer for a long run). The alerts' positions at the start of a run are committed
//! once it has finished; a stop request ends a run within a boosting round or a neural batch
//! (recorded `interrupted`, nothing committed), so a retrainer stopped mid-run runs again
//! after its restart.

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

/// A retrain run in progress on its own thread.
struct Running<'s> {
    thread: std::thread::ScopedJoinHandle<'s, Outcome>,
    trigger: Trigger,
    /// The alerts' consumer positions when the run started: committed once it has finished.
    positions: Option<rdkafka::TopicPartitionList>,
    /// The version serving when it started.
    serving: Option<String>,
}

fn serve(cfg: Config, rt: tokio::runtime::Handle, m: RetrainMetrics, lag: LagCtx, health: Arc<Health>, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut retrainer = Retrainer::connect(cfg.clone(), rt)?;
    retrainer.mlflow_errors = m.mlflow_errors.clone();
    if let Err(e) = retrainer.reannounce() {
        tracing::warn!(error = %e, "the serving version could not be re-announced");
    }
    let mut cc = headroom_runtime::kafka::client_config(&cfg.kafka);
    headroom_runtime::kafka::membership(&mut cc, &cfg.kafka);
    cc.set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // Runs go on their own thread and this loop keeps polling: the group's default bound on
        // the time between polls holds however long a run takes.
        .set("max.poll.interval.ms", "300000");
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
    let retrainer = &retrainer;
    let stop = || shutdown.is_triggered();
    // Set when a run is stopped by the shutdown: its alerts must run again after a restart.
    let mut stopped_run_alerts: Option<usize> = None;
    tracing::info!(topic = %cfg.topics.alerts, "waiting for drift alerts");
    std::thread::scope(|s| {
        // The run in progress, on its own thread: this loop keeps polling meanwhile (the group
        // keeps the retrainer however long the run takes, and a stop request reaches the run).
        let mut running: Option<Running<'_>> = None;
        loop {
            if shutdown.is_triggered() && running.is_none() {
                break;
            }
            health.beat();
            if let Some(msg) = consumer.poll(Duration::from_millis(250)) {
                match msg {
                    Err(e) => tracing::warn!(error = %e, "consumer error"),
                    Ok(msg) => match msg.payload().map(DriftAlert::decode) {
                        Some(Ok(a)) => {
                            // During a run, alerts are judged against the version serving when it
                            // started (the run may be promoting another one).
                            let serving = match &running {
                                Some(r) => r.serving.clone(),
                                None => retrainer.serving().ok().flatten(),
                            };
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
            if running.as_ref().is_some_and(|r| r.thread.is_finished()) {
                let r = running.take().expect("running");
                let outcome = r.thread.join().unwrap_or_else(|_| Outcome::Failed { reason: "the run's thread panicked".into() });
                m.runs.with_label_values(&[r.trigger.kind.as_str(), outcome.label()]).inc();
                match outcome {
                    Outcome::Busy => {
                        // Another run (a manual one, another retrainer) holds the lock: try again
                        // later, with the alerts kept, and without committing them.
                        tracing::info!("another retrain run is in progress; this trigger waits");
                        match &mut pending {
                            Some((_, t)) => {
                                let mut ids = r.trigger.alert_ids;
                                ids.retain(|id| !t.alert_ids.contains(id));
                                t.alert_ids.extend(ids);
                            }
                            None => pending = Some((Instant::now(), r.trigger)),
                        }
                    }
                    Outcome::Stopped => {
                        // Nothing committed: the alerts that led to this run trigger it again
                        // after a restart.
                        stopped_run_alerts = Some(r.trigger.alert_ids.len());
                        tracing::info!("the retrain run was stopped; its alerts stay uncommitted");
                    }
                    outcome => {
                        last_run = Some(Instant::now());
                        // The alerts that led here are handled: commit what was consumed when
                        // the run started (what came in since waits for the next run).
                        if let Some(at) = &r.positions {
                            if let Err(e) = consumer.commit(at, CommitMode::Sync) {
                                tracing::warn!(error = %e, "the alerts of the finished run could not be committed; they may trigger another run");
                            }
                        }
                        if matches!(outcome, Outcome::Promoted { .. }) {
                            // Alerts that came in during the run concern the version just retired.
                            if let Some((_, t)) = pending.take_if(|(_, t)| t.kind == TriggerKind::Drift) {
                                tracing::info!(alerts = t.alert_ids.len(), "alerts on the replaced version dropped");
                            }
                        }
                    }
                }
            }
            if running.is_none() && !shutdown.is_triggered() {
                let since_last = last_run.map_or(started.elapsed() + cfg.triggers.min_interval, |t| t.elapsed());
                if pending.is_none() && !cfg.triggers.schedule.is_zero() && last_run.map_or(started.elapsed(), |t| t.elapsed()) >= cfg.triggers.schedule {
                    pending = Some((Instant::now() - cfg.triggers.coalesce, Trigger { kind: TriggerKind::Schedule, reason: "scheduled".into(), alert_ids: Vec::new() }));
                }
                let due = pending.as_ref().is_some_and(|(at, _)| at.elapsed() >= cfg.triggers.coalesce) && since_last >= cfg.triggers.min_interval;
                if due {
                    let (_, trigger) = pending.take().expect("pending");
                    tracing::info!(trigger = trigger.kind.as_str(), reason = %trigger.reason, "retrain run starting");
                    let positions = match consumer.position() {
                        // Only partitions something was read from (no position: nothing to commit).
                        Ok(p) => {
                            let mut at = rdkafka::TopicPartitionList::new();
                            for e in p.elements() {
                                if let rdkafka::Offset::Offset(o) = e.offset() {
                                    let _ = at.add_partition_offset(e.topic(), e.partition(), rdkafka::Offset::Offset(o));
                                }
                            }
                            (at.count() > 0).then_some(at)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the alerts' positions are unknown; they are not committed after this run");
                            None
                        }
                    };
                    let serving = retrainer.serving().ok().flatten();
                    let t = trigger.clone();
                    let stop = &stop;
                    let thread = s.spawn(move || retrainer.run_stoppable(&t, stop));
                    running = Some(Running { thread, trigger, positions, serving });
                } else if pending.is_none() && last_commit.elapsed() >= Duration::from_secs(5) {
                    // Nothing waits for a run: what was consumed needs no replay.
                    let _ = consumer.commit_consumer_state(CommitMode::Async);
                    last_commit = Instant::now();
                }
            }
        }
    });
    health.set_ready(false);
    // What was consumed needs no replay unless it waits for a run: the alerts of a pending
    // trigger, or of a run the shutdown stopped, stay uncommitted and trigger it again after a
    // restart.
    let waiting = pending.as_ref().map_or(0, |(_, t)| t.alert_ids.len()) + stopped_run_alerts.unwrap_or(0);
    if pending.is_none() && stopped_run_alerts.is_none() {
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit skipped");
        }
    }
    tracing::info!(service = "retrainer", alerts_waiting = waiting, "stopped cleanly");
    Ok(())
}

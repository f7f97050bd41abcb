//! The sink: lands every topic of the pipeline in PostgreSQL, exactly once.
//!
//! - **Batches are transactions.** Records are decoded and validated as they are polled, and
//!   turned into binary `COPY` rows (raw telemetry, forecasts, recommendations, drift alerts,
//!   dead letters) and in-memory partial rollups (1-minute and 1-hour telemetry, hourly
//!   feature summaries). Every `batch.max_rows` records or `batch.max_wait`, one transaction
//!   writes them all, merges the rollups on conflict, and stores the consumed offsets.
//! - **Offsets live in PostgreSQL.** On assignment the sink reads `sink_offsets` and starts each
//!   partition exactly there (a partition never written starts at the beginning of what the
//!   topic retains). The broker's committed offsets are not used (the stored ones are mirrored
//!   to the group after each transaction, for lag monitoring only). Each commit is fenced: it
//!   checks the stored offsets are still the ones this instance resumed from, so two instances
//!   that briefly both own a partition cannot both write it.
//! - **PostgreSQL outages pause, never drop.** A connection error pauses consumption, keeps
//!   the batch, and retries with exponential backoff until it lands; the consumer keeps polling
//!   so the instance stays in its group. `headroom_sink_postgres_up` shows the outage.
//! - **Bad records are dead-lettered** to `telemetry.dlq` with the reason (they are acknowledged
//!   by the broker before the batch that skips them commits). Records of the DLQ itself are
//!   stored, never dead-lettered again.
//! - **Partitions and retention:** the batch creates the partitions its rows need; a
//!   maintenance pass every `maintenance.interval` creates them ahead and drops whole
//!   partitions past each table's retention (on the table's data clock).

pub mod anomalies;
pub mod archive;
mod config;
pub mod positions;
pub mod rows;
pub mod writer;

pub use config::{Config, MinuteRollup, Topics};

/// The built-in defaults (`default.toml`), for tools and tests that build a config.
pub fn config_defaults() -> &'static str {
    config::DEFAULTS
}

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headroom_runtime::metrics::Metrics;
use headroom_runtime::observe::{now_ms, serve_http, Health};
use headroom_runtime::processor::dead_letter_record;
use headroom_runtime::registry::RegistryClient;
use headroom_runtime::service::ServiceHandle;
use headroom_runtime::topology::Topology;
use headroom_runtime::Shutdown;
use headroom_schemas::{DecodeError, DlqReason, FeaturesRecord, Forecast, ModelEvent, TelemetryDecoder};
use headroom_store::offsets::{Advance, TopicPartition};
use headroom_store::TableSpec;
use prometheus::{CounterVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::archive::Archiver;
use crate::rows::Batch;
use crate::writer::{WriteError, Writer};

pub const SERVICE: &str = "sink";

/// The sink's own metrics, beside the standard ones.
#[derive(Clone)]
pub struct SinkMetrics {
    pub rows_written: IntCounterVec,
    pub rows_expired: IntCounterVec,
    pub write_seconds: CounterVec,
    pub batch_seconds: Histogram,
    pub batch_records: Histogram,
    pub postgres_up: IntGauge,
    pub postgres_errors: IntCounterVec,
    pub paused: IntGauge,
    pub partitions_created: IntGauge,
    pub partitions_dropped: IntCounterVec,
    pub offset_gaps: IntCounterVec,
    pub offset_resets: IntCounterVec,
    pub archive_hours: IntCounter,
    pub archive_rows: IntCounter,
    pub archive_errors: IntCounter,
    pub archive_pending: IntGauge,
    pub baseline_entities: IntGauge,
}

impl SinkMetrics {
    fn new(m: &Metrics) -> anyhow::Result<SinkMetrics> {
        let r = &m.registry;
        let counter = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> anyhow::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let plain = |name: &str, help: &str| -> anyhow::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let hist = |name: &str, help: &str, b: Vec<f64>| -> anyhow::Result<Histogram> {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(b))?;
            r.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let m = SinkMetrics {
            rows_written: counter("sink_rows_written_total", "Rows committed to PostgreSQL, by table (rollup rows merged count once per batch).", &["table"])?,
            rows_expired: counter("sink_rows_expired_total", "Rows not written to a table because their day is past its retention.", &["table"])?,
            write_seconds: {
                let c = CounterVec::new(
                    Opts::new("sink_write_seconds_total", "Time spent in each table's statements of committed batches (COPY, and the merge for rollups)."),
                    &["table"],
                )?;
                r.register(Box::new(c.clone()))?;
                c
            },
            batch_seconds: hist("sink_batch_seconds", "Time to write one batch (one transaction).", prometheus::exponential_buckets(0.005, 2.0, 14)?)?,
            batch_records: hist("sink_batch_records", "Records per committed batch.", prometheus::exponential_buckets(1.0, 4.0, 10)?)?,
            postgres_up: gauge("sink_postgres_up", "1 while the last PostgreSQL operation succeeded, 0 during an outage.")?,
            postgres_errors: counter("sink_postgres_errors_total", "Failed batch writes, by kind (unavailable, fenced, refused).", &["kind"])?,
            paused: gauge("sink_paused", "1 while consumption is paused for a PostgreSQL outage.")?,
            partitions_created: gauge("sink_partitions_created", "Partitions created by this instance since it started.")?,
            partitions_dropped: counter("sink_partitions_dropped_total", "Partitions dropped past retention.", &["table"])?,
            archive_hours: plain("sink_archive_cuts_total", "Hour files cut into the Parquet archive (a re-cut after late rows counts again).")?,
            archive_rows: plain("sink_archive_rows_total", "Rows written to Parquet archive files.")?,
            archive_errors: plain("sink_archive_errors_total", "Failed archive passes (retried at the next maintenance pass).")?,
            archive_pending: gauge("sink_archive_pending", "Hours with raw rows not yet cut into the Parquet archive.")?,
            baseline_entities: gauge("sink_anomaly_baseline_entities", "Entities whose last day of hourly CPU moments the writer keeps for scoring anomalies (about 1 KB each).")?,
            offset_gaps: counter("sink_offset_gaps_total", "Jumps over offsets that were never delivered (normal on the compacted models topic only), by topic.", &["topic"])?,
            offset_resets: counter("sink_offset_resets_total", "Stored positions past the end of their partition's log (a topic created again, a broker whose data was reset), forgotten so that the partition starts at its beginning, by topic.", &["topic"])?,
        };
        // Every series of a bounded label set starts at zero, so rate() and increase() see the
        // first event (and dashboards show a flat line instead of no data).
        for t in headroom_store::TABLES {
            let _ = m.rows_written.with_label_values(&[t.name]);
            let _ = m.rows_expired.with_label_values(&[t.name]);
            let _ = m.write_seconds.with_label_values(&[t.name]);
            let _ = m.partitions_dropped.with_label_values(&[t.name]);
        }
        for k in ["unavailable", "fenced", "refused"] {
            let _ = m.postgres_errors.with_label_values(&[k]);
        }
        Ok(m)
    }
}

/// Counts DLQ deliveries that failed (the batch is then not committed).
struct DlqCtx {
    failures: AtomicU64,
    delivered: AtomicU64,
}

impl ClientContext for DlqCtx {}

impl ProducerContext for DlqCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::SeqCst);
            }
            Err((e, _)) => {
                tracing::error!(error = %e, "dead letter delivery failed");
                self.failures.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// What the rebalance callback tells the loop.
#[derive(Debug)]
enum Assignment {
    /// Assigned, each with the next offset stored in PostgreSQL (None: never written).
    Assigned(Vec<(TopicPartition, Option<i64>)>),
    Revoked,
}

/// The consumer's context: assigns partitions at the offsets stored in PostgreSQL.
struct SinkCtx {
    runtime: tokio::runtime::Handle,
    url: String,
    group: String,
    connect_timeout: Duration,
    retry: config::Retry,
    shutdown: Shutdown,
    events: Mutex<Vec<Assignment>>,
    metrics: Metrics,
    sink_metrics: SinkMetrics,
    /// Bumped at every rebalance: the writer's anomaly baselines are valid within one.
    ownership: Arc<AtomicU64>,
    /// The client configuration (brokers, security) the stored positions are checked with.
    probe: rdkafka::ClientConfig,
}

impl ClientContext for SinkCtx {
    fn stats(&self, stats: rdkafka::statistics::Statistics) {
        headroom_runtime::kafka::export_lag(&self.metrics, &stats);
    }
}

impl SinkCtx {
    /// Reads the stored offsets, retrying through an outage (the consumer cannot start the
    /// partitions anywhere else without breaking exactly-once).
    fn stored_offsets(&self, parts: &[TopicPartition]) -> Option<HashMap<TopicPartition, i64>> {
        let mut backoff = self.retry.initial_backoff;
        loop {
            let res = self.runtime.block_on(async {
                let mut c = headroom_store::connect(&self.url, self.connect_timeout).await?;
                let r = headroom_store::offsets::load(&mut c, &self.group, parts).await;
                let _ = sqlx::Connection::close(c).await;
                r.map_err(anyhow::Error::from)
            });
            match res {
                Ok(m) => {
                    self.sink_metrics.postgres_up.set(1);
                    return Some(m);
                }
                Err(e) => {
                    self.sink_metrics.postgres_up.set(0);
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "cannot read stored offsets; assignment waits for PostgreSQL");
                    if self.shutdown.is_triggered() {
                        return None;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
            }
        }
    }

    /// Forgets the stored positions past the end of their partition's log (`positions`), so
    /// that those partitions start at their beginning. A position that cannot be checked, or
    /// that another instance moved meanwhile, is kept.
    fn forget_lost(&self, stored: &mut HashMap<TopicPartition, i64>) {
        let lost = match positions::lost_positions(&self.probe, stored, positions::PROBE_TIMEOUT) {
            Ok(l) if l.is_empty() => return,
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot check the stored positions against the broker; they are used unchecked");
                return;
            }
        };
        let keys: Vec<(TopicPartition, i64)> = lost.iter().map(|l| ((l.topic.clone(), l.partition), l.stored)).collect();
        let res = self.runtime.block_on(async {
            let mut c = headroom_store::connect(&self.url, self.connect_timeout).await?;
            let r = headroom_store::offsets::forget(&mut c, &self.group, &keys).await;
            let _ = sqlx::Connection::close(c).await;
            r.map_err(anyhow::Error::from)
        });
        let forgotten = match res {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot forget the stored positions the broker no longer holds; they are used as stored");
                return;
            }
        };
        for l in &lost {
            let key = (l.topic.clone(), l.partition);
            if forgotten.contains(&key) {
                stored.remove(&key);
                self.sink_metrics.offset_resets.with_label_values(&[l.topic.as_str()]).inc();
                tracing::warn!(
                    topic = %l.topic, partition = l.partition, stored = l.stored, high_watermark = l.high,
                    "the stored position is past the end of the partition (the topic was created again or the broker's data was reset): starting from its beginning"
                );
            }
        }
    }
}

impl ConsumerContext for SinkCtx {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.ownership.fetch_add(1, Ordering::SeqCst);
                let parts: Vec<TopicPartition> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                let Some(mut stored) = self.stored_offsets(&parts) else {
                    return;
                };
                self.forget_lost(&mut stored);
                let mut assigned = Vec::with_capacity(parts.len());
                for (t, p) in parts {
                    let s = stored.get(&(t.clone(), p)).copied();
                    let off = s.map_or(Offset::Beginning, Offset::Offset);
                    if let Err(e) = tpl.set_partition_offset(&t, p, off) {
                        tracing::error!(topic = %t, partition = p, error = %e, "cannot set start offset");
                    }
                    assigned.push(((t, p), s));
                }
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "assign failed");
                    return;
                }
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                self.metrics.assigned_partitions.set(assigned.len() as i64);
                tracing::info!(partitions = assigned.len(), "partitions assigned at the offsets stored in PostgreSQL");
                if let Ok(mut ev) = self.events.lock() {
                    ev.push(Assignment::Assigned(assigned));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.ownership.fetch_add(1, Ordering::SeqCst);
                // The batch in memory is dropped: its offsets were never stored, so the next
                // owner reads those records again.
                if let Ok(mut ev) = self.events.lock() {
                    ev.push(Assignment::Revoked);
                }
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                self.metrics.assigned_partitions.set(0);
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
            }
            other => {
                self.ownership.fetch_add(1, Ordering::SeqCst);
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
                if let Ok(mut ev) = self.events.lock() {
                    ev.push(Assignment::Revoked);
                }
            }
        }
    }
}

/// Starts the sink with `config` until `shutdown` triggers.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<ServiceHandle> {
    config.validate()?;
    let t = &config.topics;
    let declared = ["telemetry.raw", "features", "forecasts", "recommendations", "drift.alerts", "models", "telemetry.dlq"];
    Topology::builtin().check_service(SERVICE, &declared, &["telemetry.dlq"])?;
    let metrics = Metrics::new(SERVICE);
    let sink_metrics = SinkMetrics::new(&metrics)?;
    let health = Arc::new(Health::default());
    let http_addr = serve_http(&config.http.listen, metrics.clone(), health.clone()).await?;
    if config.postgres.migrate {
        let pool = headroom_store::pool(&config.postgres.url, 1, config.postgres.connect_timeout).await?;
        headroom_store::migrate(&pool).await?;
        pool.close().await;
        tracing::info!("migrations applied");
    }
    tracing::info!(
        service = SERVICE,
        metrics = %format!("http://{http_addr}/metrics"),
        topics = ?t.all(),
        postgres = %headroom_store::redact(&config.postgres.url),
        "sink started"
    );
    let runtime = tokio::runtime::Handle::current();
    let (m, sm, sd) = (metrics.clone(), sink_metrics.clone(), shutdown.clone());
    let join = tokio::task::spawn_blocking(move || run(config, runtime, m, sm, health, sd));
    Ok(ServiceHandle::from_parts(http_addr, metrics, shutdown, join))
}

/// What a topic holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Telemetry,
    Features,
    Forecasts,
    Recommendations,
    Drift,
    Models,
    Dlq,
}

/// Per partition: the offset stored in PostgreSQL, and the next offset of the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Position {
    /// The next offset PostgreSQL holds (stored with the rows).
    stored: Option<i64>,
    /// The next offset after the batch being built.
    batch_next: Option<i64>,
    /// The offset PostgreSQL must hold when the batch being built is written: the position its
    /// first record of the partition followed (set with that record).
    batch_from: Option<i64>,
    /// The next offset after the batch in flight.
    inflight_next: Option<i64>,
}

/// What [`Position::take`] makes of a record.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Taken {
    /// Into the batch.
    Batched,
    /// Into the batch, after a gap from the expected offset.
    AfterGap { expected: i64 },
    /// Below the stored offset: already in PostgreSQL.
    Duplicate,
}

impl Position {
    /// A partition assigned (or re-read) at the offset PostgreSQL holds.
    fn resumed(stored: Option<i64>) -> Position {
        Position { stored, batch_next: None, batch_from: None, inflight_next: None }
    }

    /// A record of the partition at `offset`.
    fn take(&mut self, offset: i64) -> Taken {
        if self.stored.is_some_and(|s| offset < s) {
            return Taken::Duplicate;
        }
        let expected = self.batch_next.or(self.inflight_next).or(self.stored);
        if self.batch_next.is_none() {
            // The batch's first record of the partition: PostgreSQL will hold this when the
            // batch is written (the batch in flight, if it has the partition, commits first).
            self.batch_from = self.inflight_next.or(self.stored);
        }
        self.batch_next = Some(offset + 1);
        match expected {
            Some(x) if offset > x => Taken::AfterGap { expected: x },
            _ => Taken::Batched,
        }
    }

    /// The batch being built leaves for PostgreSQL: `(expected, next)` of its advance (the
    /// offset the transaction checks PostgreSQL still holds, and the one it stores).
    fn start_flush(&mut self) -> Option<(Option<i64>, i64)> {
        let next = self.batch_next.take()?;
        self.inflight_next = Some(next);
        Some((self.batch_from.take(), next))
    }

    /// A batch that advanced the partition to `next` was committed.
    fn committed(&mut self, next: i64) {
        self.stored = Some(next);
        if self.inflight_next == Some(next) {
            self.inflight_next = None;
        }
    }
}

/// The batch being written while the loop consumes the next one.
struct Inflight {
    task: tokio::task::JoinHandle<(Writer, Batch, Result<crate::writer::Written, WriteError>)>,
    advances: Vec<Advance>,
    started: Instant,
    records: usize,
}

struct Loop {
    config: Config,
    runtime: tokio::runtime::Handle,
    consumer: Arc<BaseConsumer<SinkCtx>>,
    producer: ThreadedProducer<DlqCtx>,
    writer: Writer,
    retention: Vec<(TableSpec, Duration)>,
    metrics: Metrics,
    sm: SinkMetrics,
    health: Arc<Health>,
    shutdown: Shutdown,
    positions: HashMap<TopicPartition, Position>,
    batch: Batch,
    batch_started: Option<Instant>,
    decoder: TelemetryDecoder,
    registry: Option<RegistryClient>,
    in_counters: HashMap<String, prometheus::IntCounter>,
    raw_floor_ms: i64,
    paused: bool,
    archiver: Option<Archiver>,
    inflight: Option<Inflight>,
}

fn run(
    config: Config,
    runtime: tokio::runtime::Handle,
    metrics: Metrics,
    sm: SinkMetrics,
    health: Arc<Health>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let ownership = Arc::new(AtomicU64::new(0));
    let ctx = SinkCtx {
        ownership: ownership.clone(),
        runtime: runtime.clone(),
        url: config.postgres.url.clone(),
        group: config.offsets_group().to_owned(),
        connect_timeout: config.postgres.connect_timeout,
        retry: config.retry.clone(),
        shutdown: shutdown.clone(),
        events: Mutex::new(Vec::new()),
        metrics: metrics.clone(),
        sink_metrics: sm.clone(),
        probe: headroom_runtime::kafka::client_config(&config.kafka),
    };
    // The services' consumer defaults (fetch wait, fetch queue backoff, statistics for the lag
    // gauge), then the sink's own: a stored offset the topic no longer retains restarts at the
    // earliest record whatever the configuration says (skipping would lose rows), and eager
    // range assignment.
    let mut cc = headroom_runtime::kafka::consumer_config(&config.kafka);
    cc.set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range");
    if cc.get("session.timeout.ms").is_none() {
        cc.set("session.timeout.ms", "10000");
    }
    let consumer: BaseConsumer<SinkCtx> = cc.create_with_context(ctx)?;
    let topics: Vec<&str> = config.topics.all().to_vec();
    consumer.subscribe(&topics)?;
    let mut pc = headroom_runtime::kafka::client_config(&config.kafka);
    pc.set("enable.idempotence", "true").set("linger.ms", "5");
    let producer: ThreadedProducer<DlqCtx> = pc.create_with_context(DlqCtx {
        failures: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
    })?;
    let registry = (!config.schema_registry.url.is_empty())
        .then(|| RegistryClient::new(&config.schema_registry.url, runtime.clone()));
    let retention = config.retentions()?;
    let writer =
        Writer::new(&config.postgres.url, config.postgres.connect_timeout, config.offsets_group()).with_ownership(ownership);
    let sample_interval = config.rollups.sample_interval;
    let minute = config.rollups.minute_enabled();
    let archiver = (!config.archive.root.is_empty())
        .then(|| Archiver::new(config.archive.root.clone().into(), config.archive.grace, config.archive.max_hours_per_pass));
    let mut l = Loop {
        config,
        runtime,
        consumer: Arc::new(consumer),
        producer,
        writer,
        retention,
        metrics,
        sm,
        health,
        shutdown,
        positions: HashMap::new(),
        batch: Batch::new(sample_interval).minute_rollup(minute),
        batch_started: None,
        decoder: TelemetryDecoder::new(),
        registry,
        in_counters: HashMap::new(),
        raw_floor_ms: i64::MIN,
        paused: false,
        archiver,
        inflight: None,
    };
    l.sm.postgres_up.set(1);
    l.health.set_ready(true);
    let res = l.main();
    l.health.set_ready(false);
    res
}

impl Loop {
    fn new_batch(&self) -> Batch {
        Batch::new(self.config.rollups.sample_interval).minute_rollup(self.config.rollups.minute_enabled())
    }

    fn main(&mut self) -> anyhow::Result<()> {
        let mut next_maintenance = Instant::now();
        while !self.shutdown.is_triggered() {
            self.health.beat();
            if Instant::now() >= next_maintenance {
                // Maintenance uses the writer: the batch in flight lands first.
                self.settle(None)?;
                self.maintain();
                next_maintenance = Instant::now() + self.config.maintenance.interval;
            }
            let wait = match self.batch_started {
                Some(s) => self.config.batch.max_wait.saturating_sub(s.elapsed()).min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            self.poll_one(wait);
            if self.inflight_done() {
                self.settle(None)?;
            }
            let full = self.batch.records >= self.config.batch.max_rows;
            let due = self.batch_started.is_some_and(|s| s.elapsed() >= self.config.batch.max_wait);
            if full || due {
                self.flush(None)?;
            }
        }
        // Drain: land what is in memory, then leave the group.
        let deadline = Instant::now() + self.config.retry.drain_deadline;
        if let Err(e) = self.flush(Some(deadline)).and_then(|()| self.settle(Some(deadline))) {
            tracing::warn!(error = %format!("{e:#}"), "last batch not written; it is read again on restart");
        }
        self.consumer.unsubscribe();
        tracing::info!("sink stopped");
        Ok(())
    }

    /// Polls once and handles what comes back (a record, or an assignment change).
    fn poll_one(&mut self, wait: Duration) {
        let consumer = self.consumer.clone();
        let msg = consumer.poll(wait);
        self.apply_assignment_events();
        match msg {
            None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            Some(Ok(m)) => {
                // Safety of the borrow: the message is processed before the next poll.
                let m: BorrowedMessage<'_> = m;
                self.take(&m);
            }
        }
    }

    fn apply_assignment_events(&mut self) {
        let events: Vec<Assignment> = match self.consumer.context().events.lock() {
            Ok(mut ev) => std::mem::take(&mut *ev),
            Err(_) => return,
        };
        for e in events {
            match e {
                Assignment::Revoked => {
                    if !self.batch.is_empty() {
                        tracing::info!(records = self.batch.records, "partitions revoked: the unwritten batch is dropped (its offsets were not stored; the next owner reads it again)");
                    }
                    self.batch = self.new_batch();
                    self.batch_started = None;
                    self.positions.clear();
                    self.paused = false;
                    self.sm.paused.set(0);
                }
                Assignment::Assigned(parts) => {
                    for (tp, stored) in parts {
                        self.positions.insert(tp, Position::resumed(stored));
                    }
                }
            }
        }
    }

    fn count_in(&mut self, topic: &str) {
        if let Some(c) = self.in_counters.get(topic) {
            c.inc();
            return;
        }
        let c = self.metrics.records_in.with_label_values(&[topic]);
        c.inc();
        self.in_counters.insert(topic.to_owned(), c);
    }

    /// Adds one record to the batch (or dead-letters it).
    fn take(&mut self, m: &BorrowedMessage<'_>) {
        let topic = m.topic();
        let tp = (topic.to_owned(), m.partition());
        let Some(pos) = self.positions.get_mut(&tp) else {
            // Not (or no longer) ours: a message fetched before a revoke.
            return;
        };
        match pos.take(m.offset()) {
            Taken::Batched => {}
            Taken::Duplicate => {
                // Already in PostgreSQL (fetched before a seek took effect).
                self.metrics.duplicates.inc();
                return;
            }
            Taken::AfterGap { expected } => {
                // Normal on the compacted models topic; elsewhere the records in between are
                // gone from the broker (retention ran while the sink was behind).
                self.sm.offset_gaps.with_label_values(&[topic]).inc();
                tracing::warn!(topic, partition = m.partition(), expected, got = m.offset(), "offset gap");
            }
        }
        self.count_in(topic);
        if self.batch_started.is_none() {
            self.batch_started = Some(Instant::now());
        }
        let now = now_ms();
        let (partition, offset) = (m.partition(), m.offset());
        let payload = m.payload();
        let kind = self.kind(topic);
        let limits = self.config.validation.clone();
        let limits = &limits;
        let result: Result<(), rows::Reject> = match (kind, payload) {
            (Some(Kind::Dlq), _) => {
                let ts = m.timestamp().to_millis().unwrap_or(now);
                self.batch.add_dead_letter(payload, m.key(), partition, offset, ts, now, limits);
                Ok(())
            }
            // A tombstone on the compacted models topic: nothing to store.
            (Some(Kind::Models), None) => Ok(()),
            (_, None) => Err((DlqReason::Truncated, "record without a payload".to_owned())),
            (None, Some(_)) => Ok(()),
            (Some(Kind::Telemetry), Some(p)) => match self.decode_telemetry(p) {
                Ok(tel) => match tel.validate(now, limits) {
                    Ok(()) => self.batch.add_telemetry(&tel, partition, offset, self.raw_floor_ms),
                    Err(r) => Err(r),
                },
                Err(e) => Err((e.reason(), e.to_string())),
            },
            (Some(Kind::Features), Some(p)) => FeaturesRecord::decode(p)
                .map_err(|e| (e.reason(), e.to_string()))
                .and_then(|f| self.batch.add_features(&f, now, limits)),
            (Some(Kind::Forecasts), Some(p)) => Forecast::decode(p)
                .map_err(|e| (e.reason(), e.to_string()))
                .and_then(|f| self.batch.add_forecast(&f, partition, offset, now, limits)),
            (Some(Kind::Recommendations), Some(p)) => {
                self.batch.add_recommendation(p, partition, offset, now, limits)
            }
            (Some(Kind::Drift), Some(p)) => self.batch.add_drift(p, partition, offset, now, limits),
            (Some(Kind::Models), Some(p)) => ModelEvent::decode(p)
                .map_err(|e| (e.reason(), e.to_string()))
                .and_then(|e| self.batch.add_model_event(e, partition, offset, now, limits)),
        };
        if let Err((reason, detail)) = result {
            self.dead_letter(m, reason, &detail);
        }
    }

    fn kind(&self, topic: &str) -> Option<Kind> {
        let t = &self.config.topics;
        [
            (&t.telemetry, Kind::Telemetry),
            (&t.features, Kind::Features),
            (&t.forecasts, Kind::Forecasts),
            (&t.recommendations, Kind::Recommendations),
            (&t.drift, Kind::Drift),
            (&t.models, Kind::Models),
            (&t.dlq, Kind::Dlq),
        ]
        .into_iter()
        .find_map(|(name, k)| (name == topic).then_some(k))
    }

    fn decode_telemetry(&mut self, payload: &[u8]) -> Result<headroom_schemas::Telemetry, DecodeError> {
        match self.decoder.decode(payload) {
            Err(DecodeError::UnknownSchemaId(id)) if self.registry.is_some() => {
                let registry = self.registry.as_mut().expect("checked");
                match registry.fetch(id) {
                    Ok(schema) => {
                        self.decoder.add_writer_schema(id, &schema)?;
                        self.decoder.decode(payload)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "schema lookup failed");
                        Err(DecodeError::UnknownSchemaId(id))
                    }
                }
            }
            r => r,
        }
    }

    fn dead_letter(&mut self, m: &BorrowedMessage<'_>, reason: DlqReason, detail: &str) {
        self.metrics.dlq_records.with_label_values(&[reason.as_str()]).inc();
        self.batch.records += 1;
        let (buf, mut headers) = dead_letter_record(
            reason,
            detail,
            SERVICE,
            m.topic(),
            m.partition(),
            m.offset(),
            m.key(),
            m.payload(),
        );
        if let Some(h) = m.headers() {
            if let Some(tp) = h.iter().find(|h| h.key == headroom_runtime::trace::TRACEPARENT) {
                headers = headers.insert(rdkafka::message::Header { key: tp.key, value: tp.value });
            }
        }
        let mut rec: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(&self.config.topics.dlq)
            .payload(buf.as_slice())
            .headers(headers);
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        loop {
            match self.producer.send(rec) {
                Ok(()) => break,
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    self.producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    tracing::error!(error = %e, "dead letter not sent");
                    self.producer.context().failures.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
        }
    }

    /// Writes the batch: retries through PostgreSQL outages (pausing consumption), drops it
    /// when fenced, stops the service when PostgreSQL refuses it. With a deadline (shutdown),
    /// gives up when it passes.
    /// Hands the batch to the writer, which writes it on the runtime while the loop goes on
    /// consuming into the next one (one batch in flight at most: the previous one is settled
    /// first, so a batch's offsets always advance from what PostgreSQL holds).
    fn flush(&mut self, deadline: Option<Instant>) -> anyhow::Result<()> {
        self.settle(deadline)?;
        if self.batch.is_empty() {
            self.batch_started = None;
            return Ok(());
        }
        // Dead letters first: a record is skipped only once its dead letter is durable.
        let failures_before = self.producer.context().failures.load(Ordering::SeqCst);
        self.producer.flush(Duration::from_secs(30))?;
        let failures = self.producer.context().failures.load(Ordering::SeqCst);
        anyhow::ensure!(
            failures == failures_before && failures == 0,
            "{failures} dead letters could not be delivered; stopping without storing offsets"
        );
        let mut advances = Vec::new();
        for ((t, p), pos) in self.positions.iter_mut() {
            if let Some((expected, next)) = pos.start_flush() {
                advances.push(Advance { topic: t.clone(), partition: *p, expected, next });
            }
        }
        let fresh = self.new_batch();
        let batch = std::mem::replace(&mut self.batch, fresh);
        self.batch_started = None;
        if advances.is_empty() {
            // Nothing of it is ours any more (revoked while it was built).
            return Ok(());
        }
        let records = batch.records;
        let idle = self.idle_writer();
        let mut writer = std::mem::replace(&mut self.writer, idle);
        let adv = advances.clone();
        let task = self.runtime.spawn(async move {
            let mut batch = batch;
            let res = writer.write(&mut batch, &adv).await;
            (writer, batch, res)
        });
        self.inflight = Some(Inflight { task, advances, started: Instant::now(), records });
        Ok(())
    }

    /// A writer without a connection, standing in while the real one is in flight (never used:
    /// everything that needs the writer settles first).
    fn idle_writer(&self) -> Writer {
        Writer::new(&self.config.postgres.url, self.config.postgres.connect_timeout, self.config.offsets_group())
    }

    /// Commits the offsets a batch just stored in PostgreSQL to the consumer group as well, for
    /// monitoring only: lag tools (KEDA's Kafka scaler, `kafka-consumer-groups`, librdkafka's
    /// `consumer_lag` behind `headroom_consumer_lag_records`) read the group's committed offsets.
    /// The sink never reads them back (it resumes from PostgreSQL), so a failed or stale commit
    /// (a partition revoked meanwhile) only delays the figure.
    fn mirror_offsets(&self, advances: &[Advance]) {
        let mut tpl = TopicPartitionList::new();
        for a in advances {
            if let Err(e) = tpl.add_partition_offset(&a.topic, a.partition, Offset::Offset(a.next)) {
                tracing::debug!(topic = %a.topic, partition = a.partition, error = %e, "offset not mirrored");
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async) {
            tracing::debug!(error = %e, "offsets not mirrored to the group");
        }
    }

    /// Whether the batch in flight has finished (settle it without waiting).
    fn inflight_done(&self) -> bool {
        self.inflight.as_ref().is_some_and(|i| i.task.is_finished())
    }

    /// Waits for the batch in flight and completes it: offsets and metrics on success; on an
    /// outage, consumption pauses and the same batch is written again with backoff (until
    /// `deadline`, when draining); fenced, both it and the batch being built are dropped and
    /// the positions re-read; refused, the sink stops.
    fn settle(&mut self, deadline: Option<Instant>) -> anyhow::Result<()> {
        let Some(Inflight { task, mut advances, started, records }) = self.inflight.take() else {
            return Ok(());
        };
        let (writer, mut batch, mut res) = match self.runtime.block_on(task) {
            Ok(x) => x,
            Err(e) => anyhow::bail!("the batch writer task failed: {e}"),
        };
        self.writer = writer;
        let mut backoff = self.config.retry.initial_backoff;
        loop {
            match res {
                Ok(written) => {
                    self.sm.postgres_up.set(1);
                    self.sm.batch_seconds.observe(started.elapsed().as_secs_f64());
                    self.sm.batch_records.observe(records as f64);
                    for (t, n, secs) in written {
                        self.sm.rows_written.with_label_values(&[t]).inc_by(n);
                        self.sm.write_seconds.with_label_values(&[t]).inc_by(secs);
                    }
                    for (t, n) in &batch.expired {
                        self.sm.rows_expired.with_label_values(&[t]).inc_by(*n);
                    }
                    self.sm.baseline_entities.set(self.writer.baseline_entities() as i64);
                    if let Some(a) = self.archiver.as_mut() {
                        a.committed(&batch.raw_hours);
                        self.sm.archive_pending.set(a.pending() as i64);
                    }
                    self.mirror_offsets(&advances);
                    for a in advances {
                        if let Some(p) = self.positions.get_mut(&(a.topic, a.partition)) {
                            p.committed(a.next);
                        }
                    }
                    self.update_raw_floor();
                    self.resume();
                    return Ok(());
                }
                Err(WriteError::Unavailable(e)) => {
                    self.sm.postgres_up.set(0);
                    self.sm.postgres_errors.with_label_values(&["unavailable"]).inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, records, "PostgreSQL unavailable; consumption paused, batch kept");
                    self.pause();
                    if deadline.is_some_and(|d| Instant::now() + backoff > d) {
                        anyhow::bail!("PostgreSQL unavailable until the drain deadline: {e}");
                    }
                    // Keep serving the group while waiting.
                    let until = Instant::now() + backoff;
                    while Instant::now() < until {
                        self.poll_one(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
                        if self.shutdown.is_triggered() && deadline.is_none() {
                            break;
                        }
                    }
                    backoff = (backoff * 2).min(self.config.retry.max_backoff);
                    // Partitions revoked meanwhile: their part of the batch went with them
                    // (the next owner reads it again).
                    advances.retain(|a| self.positions.contains_key(&(a.topic.clone(), a.partition)));
                    if advances.is_empty() {
                        self.resume();
                        return Ok(());
                    }
                    let t0 = Instant::now();
                    res = self.runtime.block_on(self.writer.write(&mut batch, &advances));
                    self.sm.batch_seconds.observe(t0.elapsed().as_secs_f64());
                }
                Err(WriteError::Fenced(e)) => {
                    self.sm.postgres_errors.with_label_values(&["fenced"]).inc();
                    tracing::warn!(error = %e, records, "fenced: another instance wrote these partitions; dropping the batch and re-reading positions");
                    self.batch = self.new_batch();
                    self.batch_started = None;
                    self.reseek()?;
                    self.resume();
                    return Ok(());
                }
                Err(WriteError::Refused(e)) => {
                    self.sm.postgres_errors.with_label_values(&["refused"]).inc();
                    anyhow::bail!("PostgreSQL refused a batch (nothing of it was stored, offsets not advanced): {e}");
                }
            }
        }
    }

    /// Re-reads the stored offsets of every assigned partition and seeks there.
    fn reseek(&mut self) -> anyhow::Result<()> {
        let parts: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        let stored = match self.runtime.block_on(self.writer.load_offsets(&parts)) {
            Ok(s) => s,
            Err(e) => anyhow::bail!("re-reading offsets after being fenced: {e}"),
        };
        for tp in parts {
            let s = stored.get(&tp).copied();
            let off = s.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = self.consumer.seek(&tp.0, tp.1, off, Duration::from_secs(10)) {
                tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "seek failed");
            }
            self.positions.insert(tp, Position::resumed(s));
        }
        Ok(())
    }

    fn pause(&mut self) {
        if self.paused {
            return;
        }
        if let Ok(a) = self.consumer.assignment() {
            if let Err(e) = self.consumer.pause(&a) {
                tracing::warn!(error = %e, "pause failed");
            }
        }
        self.paused = true;
        self.sm.paused.set(1);
    }

    fn resume(&mut self) {
        if !self.paused {
            return;
        }
        if let Ok(a) = self.consumer.assignment() {
            if let Err(e) = self.consumer.resume(&a) {
                tracing::warn!(error = %e, "resume failed");
            }
        }
        self.paused = false;
        self.sm.paused.set(0);
    }

    /// Raw rows of days entirely past the raw table's retention are not written.
    fn update_raw_floor(&mut self) {
        let Some((_, keep)) = self.retention.iter().find(|(t, _)| t.name == "telemetry_raw") else { return };
        if keep.is_zero() || self.archiver.is_some() {
            // With the archive, every sample goes through the raw table (a late one makes its hour
            // be cut again; its partition is dropped only once the archive has it).
            return;
        }
        if let Some(c) = self.writer.clocks.get("telemetry_raw") {
            let clock = (*c).min(now_ms());
            self.raw_floor_ms = clock - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX / 2);
        }
    }

    fn maintain(&mut self) {
        // Archive first: the raw partitions it still needs are then held back from retention.
        self.archive();
        let hold = self.archiver.as_ref().and_then(Archiver::oldest_pending);
        let res = self.runtime.block_on(self.writer.maintain(&self.retention, self.config.maintenance.ahead_days, now_ms(), hold));
        match res {
            Ok((dropped, created)) => {
                self.sm.partitions_created.add(created as i64);
                if dropped > 0 {
                    self.sm.partitions_dropped.with_label_values(&["all"]).inc_by(dropped as u64);
                }
            }
            Err(e) => {
                self.writer.disconnect();
                tracing::warn!(error = %e, "maintenance failed; retried at the next interval");
            }
        }
    }

    /// Cuts the closed hours of the raw table into the Parquet archive.
    fn archive(&mut self) {
        let Some(a) = self.archiver.as_mut() else {
            return;
        };
        // The data clock of what this instance wrote; nothing written yet: nothing closes.
        let Some(clock) = self.writer.clocks.get("telemetry_raw").map(|c| (*c).min(now_ms())) else {
            return;
        };
        let writer = &mut self.writer;
        let res = self.runtime.block_on(async {
            let c = writer.conn().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            a.pass(c, clock).await
        });
        match res {
            Ok(p) => {
                self.sm.archive_hours.inc_by(p.hours);
                self.sm.archive_rows.inc_by(p.rows);
                self.sm.archive_pending.set(a.pending() as i64);
            }
            Err(e) => {
                self.writer.disconnect();
                self.sm.archive_errors.inc();
                tracing::warn!(error = %format!("{e:#}"), "archiving failed; retried at the next maintenance pass");
            }
        }
    }
}

/// The set of topics the sink reads (for tests and tools).
pub fn input_topics(t: &Topics) -> HashSet<String> {
    t.all().iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::{Position, Taken};

    /// Takes offsets `from..to` into the batch being built.
    fn take(p: &mut Position, from: i64, to: i64) {
        for o in from..to {
            assert_eq!(p.take(o), Taken::Batched, "offset {o}");
        }
    }

    /// Batches follow each other: each one's transaction expects what the one before stored.
    #[test]
    fn a_batch_expects_what_the_batch_before_it_stores() {
        let mut p = Position::resumed(Some(100));
        take(&mut p, 100, 150);
        assert_eq!(p.start_flush(), Some((Some(100), 150)));
        // The next batch is built while that one is in flight.
        take(&mut p, 150, 170);
        p.committed(150);
        assert_eq!(p.start_flush(), Some((Some(150), 170)));
        assert_eq!(p.start_flush(), None, "nothing taken since");
        p.committed(170);
        assert_eq!(p.take(120), Taken::Duplicate, "below what PostgreSQL holds");
        assert_eq!(p.take(175), Taken::AfterGap { expected: 170 });
        // A partition never written: the first batch expects no row.
        let mut fresh = Position::resumed(None);
        take(&mut fresh, 0, 10);
        assert_eq!(fresh.start_flush(), Some((None, 10)));
    }

    /// The race CI found (a second instance joining and leaving: 24,046 rows for 24,000): a
    /// batch in flight when the partition is revoked and assigned back to the same instance,
    /// which read the stored offset before that batch committed and so re-reads its records.
    /// Once the batch commits, the batch built from the stale offset must still expect the
    /// stale offset, so that PostgreSQL's fence refuses it; expecting the offset just committed
    /// (what the position held by then) wrote those records twice.
    #[test]
    fn a_batch_built_from_a_stale_offset_expects_that_offset() {
        let mut p = Position::resumed(Some(100));
        take(&mut p, 100, 150);
        let (_, next) = p.start_flush().expect("in flight");
        // Revoked and assigned back; PostgreSQL still said 100 (the transaction had not
        // committed), and the consumer seeks there.
        let mut again = Position::resumed(Some(100));
        take(&mut again, 100, 130);
        // The batch in flight commits.
        again.committed(next);
        assert_eq!(again.start_flush(), Some((Some(100), 130)), "fenced by PostgreSQL's 150, not written again");
        // After the fence the position is read again: records below it are skipped.
        let mut reread = Position::resumed(Some(150));
        assert_eq!(reread.take(140), Taken::Duplicate);
    }
}

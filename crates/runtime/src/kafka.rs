//! The consumer–processor–producer loop. See the crate documentation for the delivery
//! semantics it implements.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::observe::{now_ms, Health};
use crate::processor::{Emitter, InputRecord, Processor};
use crate::{CommonConfig, Metrics, Shutdown};

const REPLAY_KEY: &str = "replay_from=";

/// Everything [`run`] needs besides the processor.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub service: String,
    pub input_topics: Vec<String>,
    pub dlq_topic: Option<String>,
    pub config: CommonConfig,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub shutdown: Shutdown,
    /// Span export (`log.otlp_endpoint`); flushed when the run ends.
    pub spans: Option<Arc<crate::trace::Spans>>,
}

/// Builds a librdkafka client configuration with the pass-through properties.
pub fn client_config(cfg: &crate::KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// `fetch.queue.backoff.ms` for every headroom consumer unless configured: how long librdkafka
/// postpones the next fetch of a partition once its local queue holds `queued.min.messages`
/// (100,000) records. Its default, 1 s, caps a consumer catching up on a backlog (a restart, a
/// state replay, a burst): it drains the queue, then idles until the second is over (librdkafka
/// issue #2879). 10 ms re-checks the queue as often as a fetch waits; the queue limits still
/// bound the memory.
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// How often a consumer's statistics arrive, and with them `headroom_consumer_lag_records`
/// ([`export_lag`]).
pub const STATISTICS_INTERVAL_MS: &str = "5000";

/// A group member's identity: `group.id`, and `group.instance.id` when `kafka.instance_id` is
/// set. Only the clients that join the group take them; the shadow-group and changelog
/// clients commit as non-members.
pub fn membership(c: &mut ClientConfig, cfg: &crate::KafkaConfig) {
    c.set("group.id", &cfg.group_id);
    if !cfg.instance_id.is_empty() {
        c.set("group.instance.id", &cfg.instance_id);
    }
}

/// The services' consumer configuration: the pass-through properties, manual offset handling
/// (the loop stores and commits what is durable), and defaults that a configured property
/// overrides.
pub fn consumer_config(cfg: &crate::KafkaConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    membership(&mut c, cfg);
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    let defaults = [
        ("auto.offset.reset", "earliest"),
        ("statistics.interval.ms", STATISTICS_INTERVAL_MS),
        // Bounds how long a fetch may wait for data. Brokers that hold a fetch for the whole
        // wait even when data arrives (tansu 0.6 does) would otherwise add up to 500 ms per hop.
        ("fetch.wait.max.ms", "10"),
        ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
    ];
    for (key, value) in defaults {
        if !cfg.properties.contains_key(key) {
            c.set(key, value);
        }
    }
    c
}

/// Producer side: counts acknowledgements per topic, failures, and record latency.
pub struct ProducerCtx {
    metrics: Metrics,
    failures: AtomicU64,
    last_failure: Mutex<Option<String>>,
    out_counters: Mutex<Vec<(String, prometheus::IntCounter)>>,
    outstanding: Arc<Outstanding>,
    /// Offsets of the acknowledged first records of changelog rewrites, with their epoch,
    /// until the epoch is promoted ([`promote_complete`]).
    rewrites: Mutex<Vec<RewriteAck>>,
}

/// The acknowledged first record of a changelog rewrite ([`crate::processor::Flush::rewrote`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RewriteAck {
    epoch: u64,
    topic: String,
    partition: i32,
    offset: i64,
}

impl ProducerCtx {
    pub(crate) fn record_failure(&self, detail: &str) {
        self.failures.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut l) = self.last_failure.lock() {
            *l = Some(detail.to_owned());
        }
    }

    fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    fn counter(&self, topic: &str) -> Option<prometheus::IntCounter> {
        let mut v = self.out_counters.lock().ok()?;
        if let Some((_, c)) = v.iter().find(|(t, _)| t == topic) {
            return Some(c.clone());
        }
        let c = self.metrics.records_out.with_label_values(&[topic]);
        v.push((topic.to_owned(), c.clone()));
        Some(c)
    }
}

impl ClientContext for ProducerCtx {}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (slot, input_ts_ms) = unpack_opaque(opaque);
        // Noted before the epoch's counter drops: the loop promotes an epoch whose counter
        // reached zero, and takes its rewrites with it.
        if let (Some(epoch), Ok(msg)) = (rewrite_epoch(opaque), result) {
            if let Ok(mut r) = self.rewrites.lock() {
                r.push(RewriteAck { epoch, topic: msg.topic().to_owned(), partition: msg.partition(), offset: msg.offset() });
            }
        }
        self.outstanding.done(slot);
        match result {
            Ok(msg) => {
                if let Some(c) = self.counter(msg.topic()) {
                    c.inc();
                }
                if input_ts_ms > 0 {
                    let lat = (now_ms() - input_ts_ms).max(0) as f64 / 1000.0;
                    self.metrics.record_latency.observe(lat);
                }
            }
            Err((err, msg)) => {
                tracing::error!(topic = msg.topic(), error = %err, "delivery failed");
                self.record_failure(&err.to_string());
            }
        }
    }
}

#[derive(Debug)]
enum Event {
    Assign {
        topic: String,
        partition: i32,
        replay_until: Option<i64>,
    },
    Revoke {
        topic: String,
        partition: i32,
    },
}

#[derive(Debug, Default)]
struct Durable {
    /// (topic, partition) -> (next offset, replay floor)
    positions: HashMap<(String, i32), (i64, Option<i64>)>,
    /// Changelog (topic, partition) -> the first offset of its latest complete, acknowledged
    /// rewrite, not stored yet.
    starts: BTreeMap<(String, i32), i64>,
}

/// Outputs are tracked by epoch (a slice of `max_batch_wait` or `max_batch` records): each
/// output increments its epoch's counter when sent and the delivery callback decrements it. An
/// epoch whose counter is back at zero is acknowledged; the positions sealed with it become
/// committable once every earlier epoch is too. The loop never waits for acknowledgements.
pub(crate) const EPOCH_RING: usize = 4096;

pub(crate) struct Outstanding(Box<[std::sync::atomic::AtomicI64]>);

impl Outstanding {
    fn new() -> Outstanding {
        Outstanding(
            (0..EPOCH_RING)
                .map(|_| std::sync::atomic::AtomicI64::new(0))
                .collect(),
        )
    }

    pub(crate) fn add(&self, slot: usize) {
        self.0[slot].fetch_add(1, Ordering::AcqRel);
    }

    fn done(&self, slot: usize) {
        self.0[slot].fetch_sub(1, Ordering::AcqRel);
    }

    fn get(&self, slot: usize) -> i64 {
        self.0[slot].load(Ordering::Acquire)
    }
}

/// Packs an output's epoch slot and its input's timestamp into the delivery opaque.
pub(crate) fn pack_opaque(slot: usize, input_ts_ms: i64) -> usize {
    ((input_ts_ms.max(0) as usize) << 12) | (slot & (EPOCH_RING - 1))
}

fn unpack_opaque(v: usize) -> (usize, i64) {
    if v & REWRITE_FLAG != 0 {
        return (v & (EPOCH_RING - 1), 0);
    }
    (v & (EPOCH_RING - 1), (v >> 12) as i64)
}

/// Marks the opaque of a changelog rewrite's first record: it carries its epoch's number
/// instead of an input timestamp (changelog records have none).
const REWRITE_FLAG: usize = 1 << (usize::BITS - 1);

/// The delivery opaque of a changelog rewrite's first record, sent in the `epoch`-th epoch.
pub(crate) fn pack_rewrite_opaque(slot: usize, epoch: u64) -> usize {
    let epoch_bits = (epoch as usize) & ((REWRITE_FLAG - 1) >> 12);
    REWRITE_FLAG | (epoch_bits << 12) | (slot & (EPOCH_RING - 1))
}

fn rewrite_epoch(v: usize) -> Option<u64> {
    (v & REWRITE_FLAG != 0).then_some(((v & !REWRITE_FLAG) >> 12) as u64)
}

#[derive(Debug)]
struct Sealed {
    slot: usize,
    /// The epoch's number (its slot is this modulo [`EPOCH_RING`]).
    epoch: u64,
    positions: Vec<((String, i32), i64, Option<i64>)>,
    /// Changelog records written by the batch's flush, held until the outputs of this epoch and
    /// of every earlier one are acknowledged.
    state: Vec<crate::processor::StateRecord>,
    /// The outputs were acknowledged and the state records (if any) sent.
    state_sent: bool,
}

/// Consumer side: replays on assignment, flushes and commits on revoke, exports lag.
pub struct ConsumerCtx {
    metrics: Metrics,
    floors: FloorStore,
    starts: crate::changelog::StartStore,
    producer: Arc<ThreadedProducer<ProducerCtx>>,
    durable: Arc<Mutex<Durable>>,
    sealed: Arc<Mutex<VecDeque<Sealed>>>,
    outstanding: Arc<Outstanding>,
    events: Arc<Mutex<Vec<Event>>>,
    timeout: Duration,
    /// Held by whoever commits (the committer thread, the revoke callback).
    commits: Mutex<()>,
    /// Revocations so far: a commit requested before a revocation is not sent after it
    /// ([`Committer`]).
    revocations: AtomicU64,
}

impl ClientContext for ConsumerCtx {
    fn stats(&self, stats: Statistics) {
        export_lag(&self.metrics, &stats);
    }
}

/// Sets `headroom_consumer_lag_records` from a consumer's statistics (emitted every
/// `statistics.interval.ms`): per partition assigned to this consumer, the records between the
/// partition's high watermark and the group's committed offset. Partitions without a committed
/// offset report no lag (librdkafka gives -1).
pub fn export_lag(metrics: &Metrics, stats: &Statistics) {
    let mut lag = Vec::new();
    for (topic, t) in &stats.topics {
        for (p, part) in &t.partitions {
            if *p >= 0 && part.desired && part.consumer_lag >= 0 {
                lag.push((topic.as_str(), *p, part.consumer_lag));
            }
        }
    }
    set_lag(metrics, &lag);
}

/// Replaces the lag series with `lag` (topic, partition, records). A partition that is no longer
/// listed (revoked, now another instance's) loses its series: a gauge left at its last value
/// would be counted twice by every sum over the group's instances, and alert forever.
pub fn set_lag(metrics: &Metrics, lag: &[(&str, i32, i64)]) {
    use prometheus::core::Collector;
    let current: HashSet<(String, String)> = lag
        .iter()
        .map(|(t, p, _)| ((*t).to_owned(), p.to_string()))
        .collect();
    for family in metrics.consumer_lag.collect() {
        for m in family.get_metric() {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_owned())
            };
            if let (Some(t), Some(p)) = (label("topic"), label("partition")) {
                if !current.contains(&(t.clone(), p.clone())) {
                    let _ = metrics.consumer_lag.remove_label_values(&[&t, &p]);
                }
            }
        }
    }
    for (t, p, n) in lag {
        metrics
            .consumer_lag
            .with_label_values(&[*t, p.to_string().as_str()])
            .set(*n);
    }
}

impl ConsumerContext for ConsumerCtx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                let mut events = Vec::new();
                match consumer.committed_offsets(tpl.clone(), self.timeout) {
                    Ok(committed) => {
                        let shadow = self.floors.read(&committed, self.timeout);
                        for elem in committed.elements() {
                            let floor = parse_floor(elem.metadata()).or_else(|| {
                                shadow
                                    .get(&(elem.topic().to_owned(), elem.partition()))
                                    .copied()
                            });
                            let mut replay_until = None;
                            if let (Offset::Offset(at), Some(floor)) = (elem.offset(), floor) {
                                if floor < at {
                                    let _ = tpl.set_partition_offset(
                                        elem.topic(),
                                        elem.partition(),
                                        Offset::Offset(floor),
                                    );
                                    replay_until = Some(at);
                                }
                            }
                            tracing::info!(topic = elem.topic(), partition = elem.partition(), committed = ?elem.offset(), replay_from = ?floor, "partition assigned");
                            events.push(Event::Assign {
                                topic: elem.topic().into(),
                                partition: elem.partition(),
                                replay_until,
                            });
                        }
                    }
                    Err(e) => {
                        // Without the committed offsets we cannot know where state starts; let
                        // the consumer start from the committed offsets with empty state and
                        // say so loudly (outputs stay correct for stateless processors).
                        tracing::error!(error = %e, "cannot read committed offsets; state will not be replayed");
                        for elem in tpl.elements() {
                            events.push(Event::Assign {
                                topic: elem.topic().into(),
                                partition: elem.partition(),
                                replay_until: None,
                            });
                        }
                    }
                }
                if let Ok(mut q) = self.events.lock() {
                    q.extend(events);
                }
                let res = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = res {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                // Finish the in-flight batch: everything processed so far becomes durable, and
                // its offsets are committed before the partitions go to another member.
                // Changelog records wait for their batch's outputs: flush, send them, flush again.
                let lost = consumer.assignment_lost();
                let flushed = if lost {
                    // Another member owns these partitions already and may be writing their
                    // changelog: state records not sent yet would land after its own.
                    if let Ok(mut s) = self.sealed.lock() {
                        for e in s.iter_mut() {
                            e.state.clear();
                        }
                    }
                    self.producer.flush(self.timeout).is_ok() && self.producer.context().failures() == 0
                } else {
                    flush_and_promote(&self.sealed, &self.outstanding, &self.durable, &self.producer, self.timeout)
                };
                let revoked: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                // Wait for a commit in flight on the committer thread, and void the one it may
                // have queued: its positions of these partitions must not land after ours.
                let commits = self.commits.lock().unwrap_or_else(|p| p.into_inner());
                self.revocations.fetch_add(1, Ordering::SeqCst);
                if flushed && !lost {
                    if let Ok(durable) = self.durable.lock() {
                        if let Some(list) = commit_list(&durable, Some(&revoked)) {
                            match consumer.commit(&list, CommitMode::Sync) {
                                Ok(()) => self.floors.write_confirmed(&list),
                                Err(e) => {
                                    self.metrics.commit_failures.inc();
                                    tracing::warn!(error = %e, "commit on revoke failed");
                                }
                            }
                        }
                    }
                } else {
                    tracing::warn!("partitions revoked before their outputs were flushed; they will be reprocessed");
                }
                // No later commit may carry these partitions: another member owns them now.
                forget(&self.durable, &self.sealed, &revoked);
                drop(commits);
                if let Ok(mut q) = self.events.lock() {
                    for (topic, partition) in revoked {
                        q.push(Event::Revoke { topic, partition });
                    }
                }
                let res = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = res {
                    tracing::error!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Replay floors, stored twice: in the offset commit's metadata (atomic with the offset, kept by
/// Apache Kafka and Redpanda) and as the committed offsets of a shadow group
/// `<group>.replay-floor`, for brokers that drop commit metadata (tansu 0.6 does). The shadow
/// is written after the main commit, so a crash between the two leaves an older, lower floor,
/// from which a replay is still exact (only longer).
pub struct FloorStore {
    shadow: ShadowGroup,
}

/// The shadow group of the replay floors: `<group>.replay-floor`.
pub const REPLAY_FLOOR_SUFFIX: &str = "replay-floor";

/// The groups a service on the runtime loop commits to besides its own `group`: the replay
/// floors' and the changelog restore starts'. On a secured cluster its principal needs them too
/// (`headroom topology acls`).
pub fn shadow_groups(group: &str) -> [String; 2] {
    [
        format!("{group}.{REPLAY_FLOOR_SUFFIX}"),
        crate::changelog::start_group(group),
    ]
}

/// A group no consumer joins, `<group>.<suffix>`: its committed offsets hold what the runtime
/// keeps beside the service's own group (the replay floors, the changelogs' restore starts).
pub(crate) struct ShadowGroup {
    client: BaseConsumer,
    what: &'static str,
}

impl ShadowGroup {
    pub(crate) fn new(kafka: &crate::KafkaConfig, suffix: &str, what: &'static str) -> anyhow::Result<ShadowGroup> {
        let client = client_config(kafka)
            .set("group.id", format!("{}.{suffix}", kafka.group_id))
            .set("enable.auto.commit", "false")
            .create()
            .with_context(|| format!("creating the {what} client"))?;
        Ok(ShadowGroup { client, what })
    }

    /// Commits `tpl` (nothing when it is empty), synchronously: librdkafka would report an
    /// asynchronous commit's failure to nobody. A failure leaves the earlier offsets in force,
    /// which every reader of a shadow group takes as safe: a lower floor replays more, an
    /// earlier restore start reads more.
    pub(crate) fn store(&self, tpl: &TopicPartitionList) {
        if tpl.count() > 0 {
            if let Err(e) = self.client.commit(tpl, CommitMode::Sync) {
                tracing::warn!(error = %e, "storing {} failed; the earlier ones stay in force", self.what);
            }
        }
    }
}

impl FloorStore {
    fn new(kafka: &crate::KafkaConfig) -> anyhow::Result<FloorStore> {
        Ok(FloorStore {
            shadow: ShadowGroup::new(kafka, REPLAY_FLOOR_SUFFIX, "replay floors")?,
        })
    }

    /// Stores the floors carried in the metadata of a commit the broker just confirmed.
    fn write_confirmed(&self, committed: &TopicPartitionList) {
        let mut tpl = TopicPartitionList::new();
        for e in committed.elements() {
            if let Some(f) = parse_floor(e.metadata()) {
                let _ = tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(f));
            }
        }
        self.shadow.store(&tpl);
    }

    fn read(&self, tpl: &TopicPartitionList, timeout: Duration) -> HashMap<(String, i32), i64> {
        let mut q = TopicPartitionList::new();
        for e in tpl.elements() {
            q.add_partition(e.topic(), e.partition());
        }
        match self.shadow.client.committed_offsets(q, timeout) {
            Ok(list) => list
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read replay floors");
                HashMap::new()
            }
        }
    }
}

fn parse_floor(metadata: &str) -> Option<i64> {
    metadata
        .strip_prefix(REPLAY_KEY)
        .and_then(|s| s.parse().ok())
}

fn commit_list(durable: &Durable, only: Option<&[(String, i32)]>) -> Option<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), (next, floor)) in &durable.positions {
        if let Some(only) = only {
            if !only.iter().any(|(t, p)| t == topic && p == partition) {
                continue;
            }
        }
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*next))
            .is_ok()
        {
            if let (Some(f), Some(mut e)) = (floor, tpl.find_partition(topic, *partition)) {
                e.set_metadata(format!("{REPLAY_KEY}{f}"));
            }
        }
    }
    (tpl.count() > 0).then_some(tpl)
}

/// Runs the loop until shutdown. Blocking: run it on its own thread.
pub fn run<P: Processor>(opts: RunOptions, mut processor: P) -> anyhow::Result<()> {
    let cfg = &opts.config;
    let rt = &cfg.runtime;
    let outstanding = Arc::new(Outstanding::new());
    let mut pcfg = client_config(&cfg.kafka);
    pcfg.set("enable.idempotence", "true");
    if !cfg.kafka.properties.contains_key("linger.ms") {
        pcfg.set("linger.ms", "2");
    }
    let producer_ctx = ProducerCtx {
        metrics: opts.metrics.clone(),
        failures: AtomicU64::new(0),
        last_failure: Mutex::new(None),
        out_counters: Mutex::new(Vec::new()),
        outstanding: outstanding.clone(),
        rewrites: Mutex::new(Vec::new()),
    };
    let producer: Arc<ThreadedProducer<ProducerCtx>> = Arc::new(
        pcfg.create_with_context(producer_ctx)
            .context("creating the kafka producer")?,
    );

    let durable = Arc::new(Mutex::new(Durable::default()));
    let sealed = Arc::new(Mutex::new(VecDeque::new()));
    let events = Arc::new(Mutex::new(Vec::new()));
    let cctx = ConsumerCtx {
        metrics: opts.metrics.clone(),
        floors: FloorStore::new(&cfg.kafka)?,
        starts: crate::changelog::StartStore::new(&cfg.kafka)?,
        producer: producer.clone(),
        durable: durable.clone(),
        sealed: sealed.clone(),
        outstanding: outstanding.clone(),
        events: events.clone(),
        timeout: rt.drain_deadline,
        commits: Mutex::new(()),
        revocations: AtomicU64::new(0),
    };
    let ccfg = consumer_config(&cfg.kafka);
    let consumer: Arc<BaseConsumer<ConsumerCtx>> = Arc::new(
        ccfg.create_with_context(cctx)
            .context("creating the kafka consumer")?,
    );
    let topics: Vec<&str> = opts.input_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .with_context(|| format!("subscribing to {topics:?}"))?;
    tracing::info!(service = %opts.service, topics = ?topics, group = %cfg.kafka.group_id, "consuming");

    let flush_ctx = FlushCtx {
        metrics: &opts.metrics,
        service: &opts.service,
        dlq_topic: opts.dlq_topic.as_deref(),
        max_output_bytes: rt.max_output_bytes,
        spans: opts.spans.as_deref(),
    };
    let mut st = LoopState::default();
    let mut epoch_started = Instant::now();
    let mut last_commit = Instant::now();
    let mut in_counters: Vec<(String, prometheus::IntCounter)> = Vec::new();
    let mut committer = Committer::start(consumer.clone(), durable.clone(), opts.metrics.clone())?;
    opts.health.beat();

    // The clock is read once per iteration; the wall clock handed to processors and the
    // liveness beat are refreshed every 64 iterations (clock reads showed up in profiles).
    let mut iteration = 0u64;
    let mut wall_ms = now_ms();
    let result: anyhow::Result<()> = loop {
        iteration += 1;
        if iteration.is_multiple_of(64) {
            wall_ms = now_ms();
            opts.health.beat();
        }
        if opts.shutdown.is_triggered() {
            break Ok(());
        }
        if let Some(e) = delivery_failure(&producer) {
            break Err(e);
        }
        st.apply_events(&events, &mut processor, &durable, &sealed, &opts.metrics);
        opts.health.set_ready(true);
        let now = Instant::now();
        let timeout = if st.in_epoch > 0 {
            rt.max_batch_wait
                .saturating_sub(now.saturating_duration_since(epoch_started))
        } else {
            Duration::from_millis(100)
        };
        let polled = consumer.poll(timeout);
        if polled.is_none() {
            wall_ms = now_ms();
            opts.health.beat();
        }
        if let Some(polled) = polled {
            match polled {
                Err(e) => tracing::warn!(error = %e, "consumer error"),
                Ok(msg) => {
                    // Rebalance callbacks ran inside poll: apply them before touching the record.
                    st.apply_events(&events, &mut processor, &durable, &sealed, &opts.metrics);
                    let partition = msg.partition();
                    let epoch_slot = st.epoch_slot();
                    let topic = msg.topic();
                    if let Some(part) = st
                        .assigned
                        .iter_mut()
                        .find(|a| a.1 == partition && a.0 == topic)
                        .map(|a| &mut a.2)
                    {
                        let suppressed = part.replay_until.is_some_and(|u| msg.offset() < u);
                        if !suppressed {
                            part.replay_until = None;
                        }
                        let traceparent = msg.headers().and_then(|h| {
                            h.iter()
                                .find(|h| h.key == crate::trace::TRACEPARENT)
                                .and_then(|h| h.value)
                                .and_then(|v| std::str::from_utf8(v).ok())
                        });
                        let record = InputRecord {
                            topic: msg.topic(),
                            partition,
                            offset: msg.offset(),
                            key: msg.key(),
                            payload: msg.payload(),
                            timestamp_ms: msg.timestamp().to_millis(),
                            traceparent,
                            now_ms: wall_ms,
                        };
                        let mut emitter = Emitter {
                            producer: &producer,
                            metrics: &opts.metrics,
                            service: &opts.service,
                            dlq_topic: opts.dlq_topic.as_deref(),
                            record: &record,
                            suppressed,
                            max_output_bytes: rt.max_output_bytes,
                            emitted: 0,
                            outstanding: &outstanding,
                            epoch_slot,
                            spans: opts.spans.as_deref(),
                        };
                        processor.process(&record, &mut emitter);
                        if suppressed {
                            opts.metrics.replayed.inc();
                        } else {
                            counter(&mut in_counters, &opts.metrics, msg.topic()).inc();
                            part.next = Some(msg.offset() + 1);
                            part.touched = true;
                            if st.in_epoch == 0 {
                                epoch_started = now;
                            }
                            st.in_epoch += 1;
                        }
                    }
                }
            }
        }
        let epoch_age = now.saturating_duration_since(epoch_started);
        if st.in_epoch >= rt.max_batch || (st.in_epoch > 0 && epoch_age >= rt.max_batch_wait) {
            opts.metrics.batch_size.observe(st.in_epoch as f64);
            opts.metrics.batch_seconds.observe(epoch_age.as_secs_f64());
            st.seal(&mut processor, &sealed, &outstanding, &producer, &flush_ctx);
        }
        if now.saturating_duration_since(last_commit) >= rt.commit_interval {
            promote_complete(&sealed, &outstanding, &durable, &producer);
            committer.request();
            processor.on_commit(&opts.metrics);
            st.refresh_floors(&mut processor);
            last_commit = now;
        }
    };

    opts.health.set_ready(false);
    match &result {
        Ok(()) => {
            // Drain: seal what was processed, wait for its outputs, commit, leave the group.
            let deadline = Instant::now() + rt.drain_deadline;
            st.draining = true;
            st.seal(&mut processor, &sealed, &outstanding, &producer, &flush_ctx);
            if flush_and_promote(&sealed, &outstanding, &durable, &producer, rt.drain_deadline)
                && delivery_failure(&producer).is_none()
            {
                committer.finish(deadline);
            } else {
                tracing::error!("outputs not acknowledged within the drain deadline; uncommitted records will be reprocessed");
            }
            consumer.unsubscribe();
            // Serve the final revoke callback so the group rebalances promptly.
            while Instant::now() < deadline {
                if consumer.poll(Duration::from_millis(50)).is_none()
                    && consumer
                        .assignment()
                        .map(|a| a.count() == 0)
                        .unwrap_or(true)
                {
                    break;
                }
            }
            tracing::info!(service = %opts.service, "stopped cleanly");
        }
        Err(e) => tracing::error!(error = %e, "processing loop stopped"),
    }
    result
}

/// Drops the positions of `partitions` from what is durable and what is sealed, so that no
/// commit carries them any more.
fn forget(durable: &Mutex<Durable>, sealed: &Mutex<VecDeque<Sealed>>, partitions: &[(String, i32)]) {
    if let Ok(mut d) = durable.lock() {
        for tp in partitions {
            d.positions.remove(tp);
        }
    }
    if let Ok(mut s) = sealed.lock() {
        for e in s.iter_mut() {
            e.positions.retain(|(t, _, _)| !partitions.contains(t));
        }
    }
}

fn delivery_failure(producer: &ThreadedProducer<ProducerCtx>) -> Option<anyhow::Error> {
    let failures = producer.context().failures();
    (failures > 0).then(|| {
        let last = producer.context().last_failure.lock().ok().and_then(|l| l.clone()).unwrap_or_default();
        anyhow::anyhow!("{failures} output records were not delivered (last error: {last}); stopping without committing")
    })
}

fn counter<'a>(
    cache: &'a mut Vec<(String, prometheus::IntCounter)>,
    m: &Metrics,
    topic: &str,
) -> &'a prometheus::IntCounter {
    if let Some(i) = cache.iter().position(|(t, _)| t == topic) {
        return &cache[i].1;
    }
    cache.push((topic.to_owned(), m.records_in.with_label_values(&[topic])));
    &cache[cache.len() - 1].1
}

/// Per assigned partition, as the loop sees it.
#[derive(Debug, Default)]
struct PartitionPos {
    /// Outputs are suppressed below this offset (state replay).
    replay_until: Option<i64>,
    /// Next offset after the last processed record.
    next: Option<i64>,
    /// Processed records since the last seal.
    touched: bool,
    /// The replay floor computed at some earlier position (at the last commit). Floors never
    /// decrease along a partition, so an older floor is a safe (lower) floor for any later
    /// position; computing it once per commit interval keeps the per-seal cost constant.
    floor: Option<Option<i64>>,
}

/// What [`LoopState::seal`] needs to let the processor flush a micro-batch.
struct FlushCtx<'a> {
    metrics: &'a Metrics,
    service: &'a str,
    dlq_topic: Option<&'a str>,
    max_output_bytes: usize,
    spans: Option<&'a crate::trace::Spans>,
}

#[derive(Debug, Default)]
struct LoopState {
    /// (topic, partition, position); a handful of entries, searched linearly per record.
    assigned: Vec<(String, i32, PartitionPos)>,
    epoch: u64,
    in_epoch: usize,
    /// The service is stopping: the next seal is the last ([`crate::processor::Flush::is_last`]).
    draining: bool,
}

impl LoopState {
    /// Recomputes every partition's floor at the current position, for the seals to come.
    fn refresh_floors<P: Processor>(&mut self, processor: &mut P) {
        for (topic, partition, part) in self.assigned.iter_mut() {
            if part.next.is_some() {
                part.floor = Some(processor.replay_floor(topic, *partition));
            }
        }
    }

    fn epoch_slot(&self) -> usize {
        (self.epoch % EPOCH_RING as u64) as usize
    }

    fn apply_events<P: Processor>(
        &mut self,
        events: &Mutex<Vec<Event>>,
        processor: &mut P,
        durable: &Mutex<Durable>,
        sealed: &Mutex<VecDeque<Sealed>>,
        metrics: &Metrics,
    ) {
        let drained: Vec<Event> = match events.lock() {
            Ok(mut q) if !q.is_empty() => q.drain(..).collect(),
            _ => return,
        };
        let mut assigned = false;
        for ev in drained {
            match ev {
                Event::Assign {
                    topic,
                    partition,
                    replay_until,
                } => {
                    processor.on_revoke(&topic, partition);
                    processor.on_assign(&topic, partition);
                    assigned = true;
                    self.assigned
                        .retain(|a| !(a.0 == topic && a.1 == partition));
                    self.assigned.push((
                        topic,
                        partition,
                        PartitionPos {
                            replay_until,
                            ..PartitionPos::default()
                        },
                    ));
                }
                Event::Revoke { topic, partition } => {
                    processor.on_revoke(&topic, partition);
                    self.assigned
                        .retain(|a| !(a.0 == topic && a.1 == partition));
                    forget(durable, sealed, &[(topic, partition)]);
                }
            }
        }
        if assigned {
            processor.on_assigned();
        }
        metrics.assigned_partitions.set(self.assigned.len() as i64);
    }

    /// Closes the current epoch: records the processed positions of the partitions it touched,
    /// with their replay floors computed now (exactly at those positions).
    fn seal<P: Processor>(
        &mut self,
        processor: &mut P,
        sealed: &Mutex<VecDeque<Sealed>>,
        outstanding: &Outstanding,
        producer: &ThreadedProducer<ProducerCtx>,
        ctx: &FlushCtx<'_>,
    ) {
        let mut flush = crate::processor::Flush {
            producer,
            metrics: ctx.metrics,
            service: ctx.service,
            dlq_topic: ctx.dlq_topic,
            max_output_bytes: ctx.max_output_bytes,
            outstanding,
            epoch_slot: self.epoch_slot(),
            spans: ctx.spans,
            state: Vec::new(),
            last: self.draining,
        };
        processor.flush(&mut flush);
        let state = std::mem::take(&mut flush.state);
        let mut positions = Vec::new();
        for (topic, partition, part) in self.assigned.iter_mut() {
            if part.touched {
                part.touched = false;
                if let Some(next) = part.next {
                    // A floor read at an earlier commit is still safe (floors only grow), but
                    // "no state" is not: state may have appeared since, so it is read again.
                    let floor = match part.floor {
                        Some(Some(f)) => Some(f),
                        _ => *part.floor.insert(processor.replay_floor(topic, *partition)),
                    };
                    positions.push(((topic.clone(), *partition), next, floor));
                }
            }
        }
        if let Ok(mut s) = sealed.lock() {
            s.push_back(Sealed {
                slot: self.epoch_slot(),
                epoch: self.epoch,
                positions,
                state,
                state_sent: false,
            });
            send_ready_state(&mut s, outstanding, producer);
        }
        self.epoch += 1;
        self.in_epoch = 0;
        // The ring slot about to be reused must belong to an acknowledged epoch.
        let slot = self.epoch_slot();
        while outstanding.get(slot) != 0 {
            tracing::warn!(
                "{EPOCH_RING} epochs of outputs unacknowledged; waiting for the producer"
            );
            let _ = producer.flush(Duration::from_secs(1));
        }
    }
}

/// Sends the held changelog records of the sealed epochs whose outputs, and every earlier
/// epoch's, are acknowledged, in epoch order. True when it sent any.
fn send_ready_state(
    sealed: &mut VecDeque<Sealed>,
    outstanding: &Outstanding,
    producer: &ThreadedProducer<ProducerCtx>,
) -> bool {
    let mut sent = false;
    // Whether every earlier epoch is acknowledged whole, its state records included.
    let mut earlier_acked = true;
    for e in sealed.iter_mut() {
        if e.state_sent {
            // Only its own state records can still be in flight.
            earlier_acked &= outstanding.get(e.slot) == 0;
            continue;
        }
        if outstanding.get(e.slot) != 0 {
            break;
        }
        // A rewrite waits until no earlier changelog record is in flight, so that its first
        // record opens a new record batch on its partition: its offset is then a batch's base
        // offset, where every broker can start a fetch (tansu 0.6 skips the rest of a batch
        // fetched from its middle).
        if !earlier_acked && e.state.iter().any(|r| r.rewrite) {
            break;
        }
        for r in e.state.drain(..) {
            r.send(producer, outstanding, e.slot, e.epoch);
            sent = true;
        }
        e.state_sent = true;
        earlier_acked &= outstanding.get(e.slot) == 0;
    }
    sent
}

/// Sends the changelog records that became ready, then moves every leading sealed epoch whose
/// outputs and changelog records are all acknowledged into the durable positions (the ones
/// commits use). True when it sent changelog records (not acknowledged yet).
fn promote_complete(
    sealed: &Mutex<VecDeque<Sealed>>,
    outstanding: &Outstanding,
    durable: &Mutex<Durable>,
    producer: &ThreadedProducer<ProducerCtx>,
) -> bool {
    let (Ok(mut s), Ok(mut d)) = (sealed.lock(), durable.lock()) else {
        return false;
    };
    let sent = send_ready_state(&mut s, outstanding, producer);
    while let Some(front) = s.front() {
        if !front.state_sent || outstanding.get(front.slot) != 0 {
            break;
        }
        let e = s.pop_front().expect("front exists");
        for (tp, next, floor) in e.positions {
            d.positions.insert(tp, (next, floor));
        }
        // Every record of the epoch is acknowledged: its rewrites are complete.
        let ctx = producer.context();
        if let Ok(mut acks) = ctx.rewrites.lock() {
            acks.retain(|a| {
                if a.epoch != e.epoch {
                    return true;
                }
                ctx.metrics.changelog_rewrites.with_label_values(&[a.topic.as_str()]).inc();
                let start = d.starts.entry((a.topic.clone(), a.partition)).or_insert(a.offset);
                *start = (*start).max(a.offset);
                false
            });
        }
    }
    sent
}

/// Flushes the producer and promotes, again while that sent changelog records (each round
/// waits for the records the previous one sent). False when the flush failed or timed out.
fn flush_and_promote(
    sealed: &Mutex<VecDeque<Sealed>>,
    outstanding: &Outstanding,
    durable: &Mutex<Durable>,
    producer: &ThreadedProducer<ProducerCtx>,
    timeout: Duration,
) -> bool {
    loop {
        if producer.flush(timeout).is_err() || producer.context().failures() > 0 {
            return false;
        }
        if !promote_complete(sealed, outstanding, durable, producer) {
            return true;
        }
    }
}

/// Commits off the loop thread. librdkafka reports the result of a manual asynchronous commit
/// to nobody (rust-rdkafka sets no `offset_commit_cb`, and `rd_kafka_commit` gives such a
/// commit no reply queue), so an asynchronous commit cannot be followed by what must wait for
/// its confirmation: the replay floors in the shadow group, the commit latency, the failure
/// count. The loop asks for a commit every `commit_interval` without waiting; this thread takes
/// the durable positions at that moment, commits them synchronously, and then stores their
/// floors. A request made while a commit is in flight is merged into the next one. The revoke
/// callback commits under the same lock; a request made up before a revocation is dropped
/// ([`ConsumerCtx::commits`]).
struct Committer {
    consumer: Arc<BaseConsumer<ConsumerCtx>>,
    durable: Arc<Mutex<Durable>>,
    metrics: Metrics,
    /// The generation of the pending request; `None` once the loop is stopping.
    requests: Option<std::sync::mpsc::SyncSender<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn start(
        consumer: Arc<BaseConsumer<ConsumerCtx>>,
        durable: Arc<Mutex<Durable>>,
        metrics: Metrics,
    ) -> anyhow::Result<Committer> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(1);
        let (c, d, m) = (consumer.clone(), durable.clone(), metrics.clone());
        let thread = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                while let Ok(generation) = rx.recv() {
                    commit(&c, &d, Some(generation), &m);
                }
            })
            .context("starting the committer thread")?;
        Ok(Committer {
            consumer,
            durable,
            metrics,
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    /// Asks for a commit of what is durable now; never waits.
    fn request(&self) {
        let generation = self.consumer.context().revocations.load(Ordering::SeqCst);
        if let Some(tx) = &self.requests {
            // Full: a request is already waiting, and it will take the positions as they are
            // when it runs.
            let _ = tx.try_send(generation);
        }
    }

    /// The last commit, on stopping: lets a commit in flight end (until `deadline`), then
    /// commits what is durable now on the calling thread. A commit still in flight at the
    /// deadline (a broker that does not answer) leaves the last one out rather than hanging
    /// the stop: the records since the last commit are reprocessed by the next owner.
    fn finish(&mut self, deadline: Instant) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !t.is_finished() {
                self.metrics.commit_failures.inc();
                tracing::error!("an offset commit is still in flight at the drain deadline; stopping without the last commit");
                return;
            }
        }
        commit(&self.consumer, &self.durable, None, &self.metrics);
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Ends the thread once its current commit returns. Waited for a little, so that the
        // loop, not this thread, closes the consumer; a commit to a broker that does not answer
        // must not hold the service's exit.
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Commits the durable positions, then stores the replay floors the broker has just confirmed
/// and the changelog restore starts. `generation`: the revocation count the request was made
/// at; the commit is skipped if a revocation came since (`None`: commit anyway).
fn commit(
    consumer: &BaseConsumer<ConsumerCtx>,
    durable: &Mutex<Durable>,
    generation: Option<u64>,
    metrics: &Metrics,
) {
    let ctx = consumer.context();
    let _commits = ctx.commits.lock().unwrap_or_else(|p| p.into_inner());
    if generation.is_some_and(|g| g != ctx.revocations.load(Ordering::SeqCst)) {
        return;
    }
    let (list, starts) = match durable.lock() {
        Ok(mut d) => (commit_list(&d, None), std::mem::take(&mut d.starts)),
        Err(_) => (None, BTreeMap::new()),
    };
    // Independent of the input offsets: a start is stored once its whole rewrite is
    // acknowledged, and an older start (a failed store) only makes a restore read more.
    if !starts.is_empty() {
        ctx.starts.write(&starts);
    }
    let Some(list) = list else { return };
    let started = Instant::now();
    match consumer.commit(&list, CommitMode::Sync) {
        Ok(()) => {
            metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
            // Only after the broker confirmed the offsets may their floors be stored: a floor
            // newer than the committed offset would make a replay start too late.
            ctx.floors.write_confirmed(&list);
        }
        Err(e) => {
            metrics.commit_failures.inc();
            tracing::warn!(error = %e, "offset commit failed; will retry at the next interval");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag_series(m: &Metrics) -> Vec<String> {
        m.render()
            .lines()
            .filter(|l| l.starts_with("headroom_consumer_lag_records{"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn lag_of_a_revoked_partition_is_dropped_not_left_at_its_last_value() {
        let m = Metrics::new("featurizer");
        set_lag(&m, &[("telemetry.raw", 0, 5), ("telemetry.raw", 1, 7)]);
        let s = lag_series(&m);
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s.iter().any(|l| l.contains("partition=\"0\"") && l.ends_with(" 5")), "{s:?}");
        // Partition 0 went to another instance: only partition 1 remains, with its new value.
        set_lag(&m, &[("telemetry.raw", 1, 3)]);
        let s = lag_series(&m);
        assert_eq!(s.len(), 1, "{s:?}");
        assert!(s[0].contains("partition=\"1\"") && s[0].ends_with(" 3"), "{s:?}");
        set_lag(&m, &[]);
        assert!(lag_series(&m).is_empty());
    }

    /// A producer pointed at a closed port: records queue, and acknowledgements are played by
    /// hand on the epoch counters.
    fn closed_port_producer(outstanding: &Arc<Outstanding>) -> ThreadedProducer<ProducerCtx> {
        let ctx = ProducerCtx {
            metrics: Metrics::new("test"),
            failures: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            out_counters: Mutex::new(Vec::new()),
            outstanding: outstanding.clone(),
            rewrites: Mutex::new(Vec::new()),
        };
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create_with_context(ctx)
            .expect("producer")
    }

    fn state_record(key: &str) -> crate::processor::StateRecord {
        crate::processor::StateRecord {
            topic: "drift.state".into(),
            partition: 0,
            key: key.as_bytes().to_vec(),
            payload: Some(b"s".to_vec()),
            rewrite: false,
        }
    }

    /// A rewrite's first record carries its epoch in the delivery opaque, and its offset
    /// becomes the partition's restore start only when that epoch is promoted (every record of
    /// it acknowledged), not with an earlier epoch that shares nothing with it.
    #[test]
    fn a_rewrite_start_becomes_durable_only_with_its_whole_epoch() {
        use rdkafka::producer::{PurgeConfig, Producer};
        let o = pack_rewrite_opaque(5, 123_456);
        assert_eq!((unpack_opaque(o), rewrite_epoch(o)), ((5, 0), Some(123_456)));
        let plain = pack_opaque(5, 1_700_000_000_000);
        assert_eq!((unpack_opaque(plain), rewrite_epoch(plain)), ((5, 1_700_000_000_000), None));

        let outstanding = Arc::new(Outstanding::new());
        let producer = closed_port_producer(&outstanding);
        let tp = ("forecasts".to_owned(), 0);
        let durable = Mutex::new(Durable::default());
        let starts = || durable.lock().unwrap().starts.clone();
        // Epoch 7 (slot 7) still has an output in flight; epoch 8's rewrite (two records)
        // is sent, its first record acknowledged at offset 40, the second not yet.
        outstanding.add(7);
        outstanding.add(8);
        let sealed = Mutex::new(VecDeque::from([
            Sealed { slot: 7, epoch: 7, positions: vec![(tp.clone(), 10, None)], state: vec![], state_sent: true },
            Sealed { slot: 8, epoch: 8, positions: vec![(tp.clone(), 20, None)], state: vec![], state_sent: true },
        ]));
        let ack = RewriteAck { epoch: 8, topic: "drift.state".into(), partition: 0, offset: 40 };
        producer.context().rewrites.lock().unwrap().push(ack.clone());
        promote_complete(&sealed, &outstanding, &durable, &producer);
        assert!(starts().is_empty());
        outstanding.done(7);
        promote_complete(&sealed, &outstanding, &durable, &producer);
        assert!(starts().is_empty(), "epoch 7 promoted, epoch 8's rewrite is not complete");
        assert_eq!(*producer.context().rewrites.lock().unwrap(), vec![ack]);
        outstanding.done(8);
        promote_complete(&sealed, &outstanding, &durable, &producer);
        assert_eq!(starts(), BTreeMap::from([(("drift.state".to_owned(), 0), 40)]));
        assert!(producer.context().rewrites.lock().unwrap().is_empty());
        let rewrites = producer.context().metrics.changelog_rewrites.with_label_values(&["drift.state"]).get();
        assert_eq!(rewrites, 1);
        producer.purge(PurgeConfig::default().queue().inflight());
    }

    /// A rewrite is sent only once no earlier changelog record is in flight (its first record
    /// then opens a record batch); plain changelog records do not wait for earlier ones.
    #[test]
    fn a_rewrite_waits_for_the_earlier_changelog_records_to_be_acknowledged() {
        use rdkafka::producer::{PurgeConfig, Producer};
        let outstanding = Arc::new(Outstanding::new());
        let producer = closed_port_producer(&outstanding);
        let rewrite = crate::processor::StateRecord { rewrite: true, ..state_record("r") };
        let mut sealed = VecDeque::from([
            Sealed { slot: 0, epoch: 0, positions: vec![], state: vec![state_record("a")], state_sent: false },
            Sealed { slot: 1, epoch: 1, positions: vec![], state: vec![state_record("b")], state_sent: false },
            Sealed { slot: 2, epoch: 2, positions: vec![], state: vec![rewrite], state_sent: false },
        ]);
        assert!(send_ready_state(&mut sealed, &outstanding, &producer));
        let sent = |s: &VecDeque<Sealed>| s.iter().map(|e| e.state_sent).collect::<Vec<_>>();
        assert_eq!(sent(&sealed), [true, true, false], "the rewrite waits for a and b");
        outstanding.done(0);
        assert!(!send_ready_state(&mut sealed, &outstanding, &producer));
        assert_eq!(sent(&sealed), [true, true, false], "b is still in flight");
        outstanding.done(1);
        assert!(send_ready_state(&mut sealed, &outstanding, &producer));
        assert_eq!((sent(&sealed), outstanding.get(2)), (vec![true, true, true], 1));
        producer.purge(PurgeConfig::default().queue().inflight());
    }

    /// A changelog record is sent only once the outputs of its batch and of every earlier batch
    /// are acknowledged, and its batch's offsets become committable only once it is
    /// acknowledged as well.
    #[test]
    fn changelog_records_wait_for_the_outputs_of_their_batch_and_every_earlier_one() {
        use rdkafka::producer::{PurgeConfig, Producer};
        let outstanding = Arc::new(Outstanding::new());
        let producer = closed_port_producer(&outstanding);
        let state = state_record;
        let tp = ("forecasts".to_owned(), 0);
        let durable = Mutex::new(Durable::default());
        let committable = || durable.lock().unwrap().positions.get(&tp).map(|p| p.0);
        // Epoch 0 (slot 0): two outputs in flight and a state record; epoch 1 (slot 1): its
        // outputs acknowledged, and a state record.
        outstanding.add(0);
        outstanding.add(0);
        let sealed = Mutex::new(VecDeque::from([
            Sealed { slot: 0, epoch: 0, positions: vec![(tp.clone(), 10, None)], state: vec![state("a")], state_sent: false },
            Sealed { slot: 1, epoch: 1, positions: vec![(tp.clone(), 20, None)], state: vec![state("b")], state_sent: false },
        ]));
        // Every record sent counts in its epoch's slot (the producer's own queue length also
        // counts the closed port's error events, so it is not what is checked).
        assert!(!promote_complete(&sealed, &outstanding, &durable, &producer), "nothing may go yet");
        assert_eq!((outstanding.get(0), outstanding.get(1)), (2, 0));
        assert_eq!(committable(), None);

        // Epoch 0's outputs acknowledged: both state records go, in epoch order; neither
        // epoch is committable before its record is acknowledged.
        outstanding.done(0);
        outstanding.done(0);
        assert!(promote_complete(&sealed, &outstanding, &durable, &producer));
        assert_eq!((outstanding.get(0), outstanding.get(1)), (1, 1));
        assert_eq!(committable(), None);
        assert!(!promote_complete(&sealed, &outstanding, &durable, &producer), "sent once");
        assert_eq!((outstanding.get(0), outstanding.get(1)), (1, 1));

        outstanding.done(0);
        promote_complete(&sealed, &outstanding, &durable, &producer);
        assert_eq!(committable(), Some(10));
        outstanding.done(1);
        promote_complete(&sealed, &outstanding, &durable, &producer);
        assert_eq!(committable(), Some(20));
        assert!(sealed.lock().unwrap().is_empty());
        producer.purge(PurgeConfig::default().queue().inflight());
    }

    #[test]
    fn consumer_defaults_yield_to_configured_properties() {
        let mut k = crate::KafkaConfig {
            instance_id: String::new(),
            brokers: "127.0.0.1:1".into(),
            group_id: "g".into(),
            properties: Default::default(),
        };
        let c = consumer_config(&k);
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("group.instance.id"), None, "dynamic membership unless configured");
        k.instance_id = "featurizer-0".into();
        assert_eq!(consumer_config(&k).get("group.instance.id"), Some("featurizer-0"));
        // Only the member: the shadow-group and changelog clients commit as non-members.
        assert_eq!(client_config(&k).get("group.instance.id"), None);
        k.properties.insert("fetch.queue.backoff.ms".into(), "250".into());
        k.properties.insert("auto.offset.reset".into(), "latest".into());
        let c = consumer_config(&k);
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("250"));
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
        // librdkafka accepts the whole configuration (an unknown key fails at creation).
        c.create::<BaseConsumer>().expect("librdkafka takes the consumer configuration");
    }

    #[test]
    fn floor_metadata_round_trips() {
        let mut d = Durable::default();
        d.positions.insert(("t".into(), 0), (42, Some(7)));
        d.positions.insert(("t".into(), 1), (9, None));
        let tpl = commit_list(&d, None).expect("list");
        let p0 = tpl.find_partition("t", 0).expect("p0");
        assert_eq!(p0.offset(), Offset::Offset(42));
        assert_eq!(parse_floor(p0.metadata()), Some(7));
        assert_eq!(
            parse_floor(tpl.find_partition("t", 1).expect("p1").metadata()),
            None
        );
        let only = commit_list(&d, Some(&[("t".into(), 1)])).expect("only");
        assert_eq!(only.count(), 1);
    }
}

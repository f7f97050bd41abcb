//! Producing and consuming for the load generator (plain rdkafka clients, no group).

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

pub fn producer(brokers: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", env_or("HEADROOM_BENCH_LINGER_MS", "5"))
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

/// Sends, waiting for queue space instead of failing.
pub fn send(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) -> anyhow::Result<()> {
    send_traced(p, topic, key, payload, None)
}

/// [`send`], with a `traceparent` header when the record starts a trace.
pub fn send_traced(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    traceparent: Option<&str>,
) -> anyhow::Result<()> {
    let mut rec = BaseRecord::to(topic).key(key).payload(payload);
    if let Some(tp) = traceparent {
        rec = rec.headers(rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: headroom_runtime::trace::TRACEPARENT,
            value: Some(tp),
        }));
    }
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => anyhow::bail!("produce to {topic}: {e}"),
        }
    }
}

pub fn flush(p: &ThreadedProducer<DefaultProducerContext>) -> anyhow::Result<()> {
    p.flush(Duration::from_secs(60))?;
    Ok(())
}

/// A consumer assigned to every partition of `topic`, at the end (`from_end`) or beginning.
///
/// The end is the broker's high watermark. tansu 0.6 reports watermarks that can lag what it
/// has stored (docs/benchmarks.md), so a reader "at the end" may start a little before it and
/// see older records: callers must not count on seeing only new ones. The one caller (the
/// latency run) reads a fresh topic and ignores every record whose entity is not one of its
/// own, which covers the warm-up records written before it.
pub fn reader(brokers: &str, topic: &str, from_end: bool) -> anyhow::Result<BaseConsumer> {
    let fetch_wait = env_or("HEADROOM_BENCH_FETCH_WAIT_MS", "5");
    assigned(brokers, topic, &fetch_wait, |c, p| {
        Ok(if from_end {
            let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            Offset::Offset(high)
        } else {
            Offset::Beginning
        })
    })?
    .ok_or_else(|| anyhow::anyhow!("topic {topic} has no partitions"))
}

/// A consumer of its own (no commits) assigned to every partition of `topic`, each at the
/// offset `start` gives it; `None` when the topic has no partitions (it does not exist).
fn assigned(
    brokers: &str,
    topic: &str,
    fetch_wait_ms: &str,
    start: impl Fn(&BaseConsumer, i32) -> anyhow::Result<Offset>,
) -> anyhow::Result<Option<BaseConsumer>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("loadgen-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms)
        .set("fetch.queue.backoff.ms", headroom_runtime::kafka::FETCH_QUEUE_BACKOFF_MS)
        .create()?;
    let meta = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), start(&c, p.id())?)?;
        }
    }
    if tpl.count() == 0 {
        return Ok(None);
    }
    c.assign(&tpl)?;
    Ok(Some(c))
}

/// The newest event time (`ts_ms`) among the last `tail` records of each partition of
/// `topic`, or `None` when it holds no decodable telemetry or does not exist. Reads on past the
/// high watermark until nothing arrives for half a second (tansu's watermarks can lag what it
/// stored; two seconds before the first record), at most `timeout`; records that do not decode
/// are skipped.
pub fn newest_event_ms(brokers: &str, topic: &str, tail: i64, timeout: Duration) -> anyhow::Result<Option<i64>> {
    let Some(c) = assigned(brokers, topic, "100", |c, p| {
        let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        Ok(Offset::Offset(low.max(high - tail)))
    })?
    else {
        // Not created yet: nothing to resume after (the producer creates it or fails).
        return Ok(None);
    };
    let decoder = headroom_schemas::TelemetryDecoder::new();
    let deadline = Instant::now() + timeout;
    let (mut last_arrival, mut idle) = (Instant::now(), Duration::from_secs(2));
    let mut newest = None;
    while Instant::now() < deadline && last_arrival.elapsed() < idle {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                (last_arrival, idle) = (Instant::now(), Duration::from_millis(500));
                if let Some(t) = m.payload().and_then(|p| decoder.decode(p).ok()) {
                    newest = newest.max(Some(t.ts_ms));
                }
            }
            Some(Err(e)) => anyhow::bail!("reading the end of {topic}: {e}"),
            None => {}
        }
    }
    Ok(newest)
}

/// Open-loop pacing: record `k` is due at `start + k / rate`.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    pub start: Instant,
    pub rate: f64,
}

impl Pacer {
    pub fn due(&self, k: u64) -> Instant {
        if self.rate <= 0.0 {
            self.start
        } else {
            self.start + Duration::from_secs_f64(k as f64 / self.rate)
        }
    }

    pub fn wait(&self, k: u64) {
        let due = self.due(k);
        let now = Instant::now();
        if due > now + Duration::from_micros(200) {
            std::thread::sleep(due - now);
        }
    }
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

//! Producing and consuming for the load generator (plain rdkafka clients, no group).

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

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
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("loadgen-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", env_or("HEADROOM_BENCH_FETCH_WAIT_MS", "5"))
        .set("fetch.queue.backoff.ms", headroom_runtime::kafka::FETCH_QUEUE_BACKOFF_MS)
        .create()?;
    let meta = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            let off = if from_end {
                let (_, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                Offset::Offset(high)
            } else {
                Offset::Beginning
            };
            tpl.add_partition_offset(topic, p.id(), off)?;
        }
    }
    anyhow::ensure!(tpl.count() > 0, "topic {topic} has no partitions");
    c.assign(&tpl)?;
    Ok(c)
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

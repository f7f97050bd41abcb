//! Reading back a processor's state changelog: a compacted topic, keyed like the input and
//! written to the input's partition numbers ([`crate::processor::Flush::emit_state`]). When a
//! processor is assigned an input partition it reads the changelog partition of the same number
//! from its beginning to its end, newest record per key last, and rebuilds its state from it.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::KafkaConfig;

/// What a restore read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Records read (values and tombstones).
    pub records: u64,
    /// The partition's end offset when the read finished.
    pub end: i64,
}

/// Reads `topic`'s `partition` from its beginning to its end offset, calling `apply(key, value,
/// offset)` for every record in offset order (`None` for a tombstone). Blocking. The end is the
/// high watermark, asked again once reached (a broker whose watermark lags what it stored, as
/// tansu 0.6's can, is read until two asks agree); an end not reached within `timeout` is an
/// error naming what was read.
pub fn restore(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    timeout: Duration,
    mut apply: impl FnMut(&[u8], Option<&[u8]>, i64),
) -> anyhow::Result<Restored> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    // assign() still wants a group id; this one never joins a group nor commits.
    let group = format!("{}.restore.{}.{}", kafka.group_id, std::process::id(), crate::observe::now_ms());
    let consumer: BaseConsumer = crate::kafka::client_config(kafka)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .context("creating the changelog reader")?;
    let watermark = || {
        consumer
            .fetch_watermarks(topic, partition, left())
            .with_context(|| format!("changelog {topic}[{partition}]: watermarks"))
    };
    let (low, mut high) = watermark()?;
    let mut done = Restored { records: 0, end: high };
    if high <= low {
        return Ok(done);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .with_context(|| format!("changelog {topic}[{partition}]"))?;
    consumer.assign(&tpl).with_context(|| format!("changelog {topic}[{partition}]: assign"))?;
    let mut next = low;
    loop {
        while next < high {
            anyhow::ensure!(
                Instant::now() < deadline,
                "changelog {topic}[{partition}]: read {} records up to offset {next} of {high} in {timeout:?}",
                done.records
            );
            let Some(msg) = consumer.poll(Duration::from_millis(100)) else { continue };
            let msg = msg.with_context(|| format!("changelog {topic}[{partition}]: fetch"))?;
            apply(msg.key().unwrap_or_default(), msg.payload(), msg.offset());
            done.records += 1;
            next = msg.offset() + 1;
        }
        let (_, again) = watermark()?;
        if again <= high {
            break;
        }
        high = again;
    }
    done.end = high;
    Ok(done)
}

/// Checks that `changelog` has a partition for every partition of `input` (a state record is
/// written to its input partition's number), naming both topics when it does not.
pub fn check_copartitioned(kafka: &KafkaConfig, input: &str, changelog: &str, timeout: Duration) -> anyhow::Result<()> {
    let consumer: BaseConsumer = crate::kafka::client_config(kafka)
        .create()
        .context("creating a metadata client")?;
    let count = |topic: &str| -> anyhow::Result<usize> {
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .with_context(|| format!("metadata of {topic}"))?;
        let t = md.topics().first().with_context(|| format!("no metadata for {topic}"))?;
        anyhow::ensure!(
            t.error().is_none() && !t.partitions().is_empty(),
            "topic {topic} does not exist (create the topics with `headroom topology apply`)"
        );
        Ok(t.partitions().len())
    };
    let (n_in, n_log) = (count(input)?, count(changelog)?);
    anyhow::ensure!(
        n_log >= n_in,
        "the changelog {changelog} has {n_log} partitions, fewer than the {n_in} of {input}: its state records go to their input partition's number; give it as many partitions"
    );
    Ok(())
}

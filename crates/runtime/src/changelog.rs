//! Reading back a processor's state changelog: a compacted topic, keyed like the input and
//! written to the input's partition numbers ([`crate::processor::Flush::emit_state`]). When a
//! processor is assigned input partitions it reads the changelog partitions of the same numbers
//! to their end, newest record per key last, and rebuilds its state from them: all the
//! partitions of one assignment with one reader, whose fetches cover them together.
//!
//! A partition is read from its **restore start** when one is stored: the first offset of the
//! latest complete rewrite of the partition ([`crate::processor::Flush::rewrote`]), kept as the
//! committed offset of the changelog partition in the shadow group `<group>.changelog-start`
//! once every record of the rewrite is acknowledged. Everything before it is older than a
//! record at or after it (of the same key, or a tombstone). Without a start, from its
//! beginning. So what a restore reads is bounded by the rewrites, not by the age of the topic,
//! on a broker that never compacts (tansu 0.6) as on one that compacts only closed segments.

use std::collections::BTreeMap;
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
    /// Partitions read to their end (empty ones included).
    pub partitions: usize,
    /// Partitions read from a stored restore start.
    pub from_start: usize,
    /// Records before those starts, not read.
    pub skipped: u64,
}

const START_SUFFIX: &str = "changelog-start";

/// The shadow group whose committed offsets on a changelog's partitions are their restore
/// starts.
pub fn start_group(group_id: &str) -> String {
    format!("{group_id}.{START_SUFFIX}")
}

/// Stores restore starts (written by the runtime's commits).
pub(crate) struct StartStore(crate::kafka::ShadowGroup);

impl StartStore {
    pub(crate) fn new(kafka: &KafkaConfig) -> anyhow::Result<StartStore> {
        Ok(StartStore(crate::kafka::ShadowGroup::new(kafka, START_SUFFIX, "changelog restore starts")?))
    }

    /// Commits `starts` ((changelog topic, partition) -> first offset of its latest rewrite).
    /// A failure keeps the earlier starts, from which a restore reads more but still all.
    pub(crate) fn write(&self, starts: &BTreeMap<(String, i32), i64>) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in starts {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        self.0.store(&tpl);
    }
}

/// Reads `topic`'s `partitions` from their restore starts (or beginnings) to their end offsets with one reader,
/// calling `apply(partition, key, value, offset)` for every record, in offset order within a
/// partition (`None` for a tombstone). Blocking. A partition's end is its high watermark;
/// once every partition reached its end the reader goes on until nothing arrives for
/// `TRAILING_QUIET` and the watermarks, asked again, have not grown (tansu 0.6's watermark can
/// lag the records it stored). Ends not reached within `timeout` are an error naming the
/// partitions left and what was read.
pub fn restore(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
    mut apply: impl FnMut(i32, &[u8], Option<&[u8]>, i64),
) -> anyhow::Result<Restored> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    // The group whose committed offsets are the restore starts; the reader never joins it
    // (assign(), not subscribe()) nor commits.
    let consumer: BaseConsumer = crate::kafka::client_config(kafka)
        .set("group.id", start_group(&kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .context("creating the changelog reader")?;
    let watermark = |p: i32| {
        consumer
            .fetch_watermarks(topic, p, left())
            .with_context(|| format!("changelog {topic}[{p}]: watermarks"))
    };
    let mut done = Restored { partitions: partitions.len(), ..Restored::default() };
    let starts = stored_starts(&consumer, topic, partitions, left())?;
    // partition -> (next offset to read, end offset)
    let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        let (low, high) = watermark(p)?;
        // A start past the end belongs to an earlier topic of the same name (deleted and
        // created again): the partition is read whole.
        let from = match starts.get(&p) {
            Some(&s) if s > low && s <= high => {
                done.from_start += 1;
                done.skipped += (s - low) as u64;
                s
            }
            _ => low,
        };
        // A partition read from its start is assigned even when its (lagging) watermark says
        // there is nothing left: the trailing read below picks up what the broker stored.
        if high > low {
            ranges.insert(p, (from, high));
            let at = if from > low { Offset::Offset(from) } else { Offset::Beginning };
            tpl.add_partition_offset(topic, p, at)
                .with_context(|| format!("changelog {topic}[{p}]"))?;
        }
    }
    if ranges.is_empty() {
        return Ok(done);
    }
    consumer.assign(&tpl).with_context(|| format!("changelog {topic}: assign"))?;
    // Records past the ends (a broker whose watermark lags what it stored) arrive within a
    // quiet period after the last record, or not at all.
    let mut last_record = Instant::now();
    loop {
        let at_ends = ranges.values().all(|(next, end)| next >= end);
        if at_ends && (last_record.elapsed() >= TRAILING_QUIET || Instant::now() >= deadline) {
            let mut grew = false;
            for (&p, (_, end)) in ranges.iter_mut() {
                let (_, again) = watermark(p)?;
                if again > *end {
                    *end = again;
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        if !at_ends && Instant::now() >= deadline {
            let open: Vec<String> = ranges
                .iter()
                .filter(|(_, (next, end))| next < end)
                .map(|(p, (next, end))| format!("[{p}] at {next} of {end}"))
                .collect();
            anyhow::bail!(
                "changelog {topic}: read {} records in {timeout:?}; not at their end: {}",
                done.records,
                open.join(", ")
            );
        }
        let wait = if at_ends { 20 } else { 100 };
        let Some(msg) = consumer.poll(Duration::from_millis(wait)) else { continue };
        let msg = msg.with_context(|| format!("changelog {topic}: fetch"))?;
        apply(msg.partition(), msg.key().unwrap_or_default(), msg.payload(), msg.offset());
        done.records += 1;
        if let Some((next, end)) = ranges.get_mut(&msg.partition()) {
            *next = msg.offset() + 1;
            *end = (*end).max(*next);
        }
        last_record = Instant::now();
    }
    Ok(done)
}

/// The restore starts stored for `topic`'s `partitions` (none: read from the beginning).
fn stored_starts(consumer: &BaseConsumer, topic: &str, partitions: &[i32], timeout: Duration) -> anyhow::Result<BTreeMap<i32, i64>> {
    let mut q = TopicPartitionList::new();
    for &p in partitions {
        q.add_partition(topic, p);
    }
    let list = consumer
        .committed_offsets(q, timeout)
        .with_context(|| format!("changelog {topic}: restore starts"))?;
    Ok(list
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// How long a restore keeps reading after every partition reached its high watermark. tansu
/// 0.6 reports a watermark behind the records of a partition's last batch, and a fetch at the
/// watermark still returns them; a broker with exact watermarks sends nothing more.
const TRAILING_QUIET: Duration = Duration::from_millis(250);

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

//! Stored positions the broker no longer holds.
//!
//! The sink's positions live in PostgreSQL, so they outlive the topics they point into: a topic
//! deleted and created again, or a broker whose data was reset (the local stack's in-memory
//! tansu after `stack.sh broker-down`), leaves `sink_offsets` pointing past the end of a log
//! that starts again at 0. Assigned there, the sink would wait for the new log to grow past the
//! old position and then skip everything before it: the new records below it look like rows
//! already stored.
//!
//! So on assignment every stored position is checked against the partition's high watermark.
//! A position at or below it is valid. One above it is read once more: the log must hold the
//! record just before it (the last one the sink stored). On Kafka and Redpanda a position past
//! the watermark is always lost, but tansu 0.6 reports as its high watermark the first offset of
//! the partition's latest record batch plus one, so a valid position is usually past it there,
//! and tansu answers a fetch inside a batch with the batches that *start* after it only. The
//! read therefore starts at the last record below the watermark, which on tansu is a batch's
//! first record, and reads on until it meets the record before the position. When no such
//! record arrives within [`PROBE_TIMEOUT`], the broker no longer holds the position: it is
//! forgotten (deleted from `sink_offsets`, fenced on its old value) and the partition starts at
//! the beginning of what the topic holds.
//!
//! Not detected: a recreated topic that has already grown past the old position before the sink
//! is assigned (the stored offset is then inside the new log). Kafka has no record identity to
//! compare against; the warning in `docs/design/sink.md` says to reset the sink's positions by
//! hand (`DELETE FROM sink_offsets WHERE topic = …`) when a topic is recreated.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use headroom_store::offsets::TopicPartition;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// How long the record before a position past the watermark may take to arrive.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A stored position the broker does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub topic: String,
    pub partition: i32,
    /// The next offset stored in PostgreSQL.
    pub stored: i64,
    /// The partition's high watermark as the broker reported it.
    pub high: i64,
}

/// The positions of `stored` past the end of their partition's log. `base` is the sink's client
/// configuration (brokers, security); the check uses a consumer of its own that joins no group.
/// A partition whose watermark cannot be read is kept as it is (and warned about): forgetting a
/// valid position would store its rows twice.
pub fn lost_positions(base: &ClientConfig, stored: &HashMap<TopicPartition, i64>, timeout: Duration) -> anyhow::Result<Vec<Lost>> {
    if stored.is_empty() {
        return Ok(Vec::new());
    }
    let mut cc = base.clone();
    cc.set("group.id", "headroom-sink-position-check")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A fetch past the end of a Kafka log fails instead of moving elsewhere.
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", "100");
    let c: BaseConsumer = cc.create()?;
    // Per suspect partition: the stored position, the high watermark and where to read from.
    let mut suspect: HashMap<TopicPartition, (i64, i64, i64)> = HashMap::new();
    for ((t, p), &s) in stored {
        match c.fetch_watermarks(t, *p, Duration::from_secs(10)) {
            Ok((low, high)) if s > high => {
                suspect.insert((t.clone(), *p), (s, high, (high - 1).max(low).max(0)));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(topic = %t, partition = p, error = %e, "cannot read the partition's watermarks; its stored position is kept unchecked"),
        }
    }
    if suspect.is_empty() {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, p), (_, _, from)) in &suspect {
        tpl.add_partition_offset(t, *p, Offset::Offset(*from))?;
    }
    c.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    while !suspect.is_empty() && Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let key = (m.topic().to_owned(), m.partition());
                if suspect.get(&key).is_some_and(|(s, _, _)| m.offset() >= s - 1) {
                    suspect.remove(&key);
                }
            }
            // Out of range on Kafka: the position is past the end; the deadline decides.
            Some(Err(e)) => tracing::debug!(error = %e, "position check fetch"),
            None => {}
        }
    }
    let mut lost: Vec<Lost> = suspect
        .into_iter()
        .map(|((topic, partition), (stored, high, _))| Lost { topic, partition, stored, high })
        .collect();
    lost.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(lost)
}

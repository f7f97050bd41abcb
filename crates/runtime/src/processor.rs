//! The stage trait a service implements, and the handle it writes outputs through.

use headroom_schemas::{DeadLetter, DlqReason};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::ProducerCtx;
use crate::observe::now_ms;
use crate::{trace, Metrics};

/// One consumed record, borrowed from the consumer.
#[derive(Debug, Clone, Copy)]
pub struct InputRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// The record's Kafka timestamp (producer create time) in ms, when set.
    pub timestamp_ms: Option<i64>,
    pub traceparent: Option<&'a str>,
    /// Wall clock (ms since the epoch) when the record was polled, give or take a few ms:
    /// read once per handful of records, so processors need not read the clock themselves.
    pub now_ms: i64,
}

/// A processing stage. Called from one thread, in offset order per partition.
pub trait Processor: Send + 'static {
    /// Handles one record: emit outputs, dead-letter it, or count it as a duplicate.
    fn process(&mut self, record: &InputRecord<'_>, out: &mut Emitter<'_>);

    /// A partition was assigned; a replay of its recent records may follow.
    fn on_assign(&mut self, _topic: &str, _partition: i32) {}

    /// Called once after the partitions of one rebalance were handed to
    /// [`Processor::on_assign`], before any of their records: a processor that restores state
    /// for them (a changelog) reads them all here, in one pass.
    fn on_assigned(&mut self) {}

    /// A partition was revoked: drop its state.
    fn on_revoke(&mut self, _topic: &str, _partition: i32) {}

    /// The smallest input offset this partition's state depends on, or `None` when the
    /// processor keeps no state for it. Stored with each commit and used to replay. It must
    /// not decrease while the partition stays assigned: the runtime reads it at a commit and
    /// keeps it for the batches sealed until the next one (a `None` is read again at each).
    fn replay_floor(&mut self, _topic: &str, _partition: i32) -> Option<i64> {
        None
    }

    /// Called at each commit, for housekeeping such as expiring idle state and updating gauges.
    fn on_commit(&mut self, _metrics: &Metrics) {}

    /// Called when the current batch (epoch) closes, before its positions are sealed: a
    /// processor that buffers records to work on them together (micro-batches) emits their
    /// outputs here. They count towards this batch, so its offsets are committed only once
    /// they are acknowledged. Records buffered for a partition that is then revoked must be
    /// dropped in [`Processor::on_revoke`] (their offsets are not committed: the next owner
    /// processes them).
    fn flush(&mut self, _out: &mut Flush<'_>) {}
}

/// Emits the outputs of buffered records at the end of a batch.
pub struct Flush<'a> {
    pub(crate) producer: &'a ThreadedProducer<ProducerCtx>,
    pub(crate) metrics: &'a Metrics,
    pub(crate) service: &'a str,
    pub(crate) dlq_topic: Option<&'a str>,
    pub(crate) max_output_bytes: usize,
    pub(crate) outstanding: &'a crate::kafka::Outstanding,
    pub(crate) epoch_slot: usize,
    pub(crate) spans: Option<&'a trace::Spans>,
    /// Changelog records of this batch, sent once its outputs are acknowledged.
    pub(crate) state: Vec<StateRecord>,
    pub(crate) last: bool,
}

impl<'a> Flush<'a> {
    /// An emitter for one buffered record (rebuilt by the processor from what it kept).
    pub fn emitter<'r>(&'r self, record: &'r InputRecord<'r>) -> Emitter<'r>
    where
        'a: 'r,
    {
        Emitter {
            producer: self.producer,
            metrics: self.metrics,
            service: self.service,
            dlq_topic: self.dlq_topic,
            record,
            suppressed: false,
            max_output_bytes: self.max_output_bytes,
            emitted: 0,
            outstanding: self.outstanding,
            epoch_slot: self.epoch_slot,
            spans: self.spans,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        self.metrics
    }

    /// The service is stopping and this is its last batch: a processor that writes its
    /// changelog less often than every batch writes all of it now, so that a clean restart
    /// replays nothing.
    pub fn is_last(&self) -> bool {
        self.last
    }

    /// Writes a record of the processor's own state changelog (a compacted topic) to an explicit
    /// `partition`, the input partition whose state it is; `None` is a tombstone that forgets
    /// `key`. The record is held back until every output of this batch and of the batches
    /// before it is acknowledged, then sent; the batch's offsets are committed once it is
    /// acknowledged too. So the changelog always holds at least the state of what was
    /// committed, and never the state of an output that was not delivered: a restore that
    /// skips the inputs its state already holds loses none of their outputs. No trace headers
    /// and no latency sample: it is not a result of one input record.
    pub fn emit_state(&mut self, topic: &str, partition: i32, key: &[u8], payload: Option<&[u8]>) {
        self.state.push(StateRecord {
            topic: topic.to_owned(),
            partition,
            key: key.to_vec(),
            payload: payload.map(<[u8]>::to_vec),
            rewrite: false,
        });
    }

    /// Says that the records this batch emitted to changelog `topic`'s `partition` rewrite the
    /// partition's whole state (every live key, plus the tombstones of this batch): its
    /// earlier records are then no longer needed. Once all of them are acknowledged, the
    /// offset of the first is kept as the partition's **restore start**
    /// ([`crate::changelog::restore`] reads from there), in the committed offsets of the shadow
    /// group `<group>.changelog-start`. It bounds what a restore reads on a broker that does not
    /// compact (tansu), and on one that does, the uncompacted head. Nothing happens when the
    /// batch emitted no record to the partition.
    pub fn rewrote(&mut self, topic: &str, partition: i32) {
        if let Some(first) = self.state.iter_mut().find(|r| r.partition == partition && r.topic == topic) {
            first.rewrite = true;
        }
    }
}

/// A changelog record held until its batch's outputs are acknowledged.
#[derive(Debug)]
pub(crate) struct StateRecord {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) key: Vec<u8>,
    pub(crate) payload: Option<Vec<u8>>,
    /// The first record of a rewrite of its partition ([`Flush::rewrote`]).
    pub(crate) rewrite: bool,
}

impl StateRecord {
    /// Sends it, counted in the epoch `slot` (its batch's, the `epoch`-th); the delivery report
    /// of a rewrite's first record notes its offset for that epoch.
    pub(crate) fn send(&self, producer: &ThreadedProducer<ProducerCtx>, outstanding: &crate::kafka::Outstanding, slot: usize, epoch: u64) {
        let opaque = if self.rewrite {
            crate::kafka::pack_rewrite_opaque(slot, epoch)
        } else {
            crate::kafka::pack_opaque(slot, 0)
        };
        let mut rec = BaseRecord::with_opaque_to(self.topic.as_str(), opaque)
            .key(self.key.as_slice())
            .partition(self.partition);
        if let Some(p) = &self.payload {
            rec = rec.payload(p.as_slice());
        }
        outstanding.add(slot);
        send(producer, rec);
    }
}

/// Where a processor's outputs go. In replay mode everything is suppressed.
pub struct Emitter<'a> {
    pub(crate) producer: &'a ThreadedProducer<ProducerCtx>,
    pub(crate) metrics: &'a Metrics,
    pub(crate) service: &'a str,
    pub(crate) dlq_topic: Option<&'a str>,
    pub(crate) record: &'a InputRecord<'a>,
    pub(crate) suppressed: bool,
    pub(crate) max_output_bytes: usize,
    pub(crate) emitted: usize,
    pub(crate) outstanding: &'a crate::kafka::Outstanding,
    pub(crate) epoch_slot: usize,
    /// The OTLP exporter, when `log.otlp_endpoint` is set.
    pub(crate) spans: Option<&'a trace::Spans>,
}

impl Emitter<'_> {
    /// True while the record is being replayed to rebuild state: outputs are dropped.
    pub fn is_replay(&self) -> bool {
        self.suppressed
    }

    /// Sends one output record keyed by `key`, continuing the input's trace.
    pub fn emit(&mut self, topic: &str, key: &[u8], payload: &[u8]) {
        if self.suppressed {
            return;
        }
        if payload.len() > self.max_output_bytes {
            let detail = format!(
                "output of {} bytes exceeds runtime.max_output_bytes",
                payload.len()
            );
            self.dead_letter(DlqReason::OutputTooLarge, &detail);
            return;
        }
        let record = self.record;
        let headers = record
            .traceparent
            .and_then(|input| match self.spans {
                Some(spans) => spans.hop(
                    input,
                    &trace::Hop {
                        input_topic: record.topic,
                        partition: record.partition,
                        offset: record.offset,
                        output_topic: topic,
                        start_ms: record.timestamp_ms,
                    },
                ),
                None => trace::child_traceparent(input),
            })
            .map(|tp| {
                OwnedHeaders::new().insert(Header {
                    key: trace::TRACEPARENT,
                    value: Some(tp.as_str()),
                })
            });
        let opaque =
            crate::kafka::pack_opaque(self.epoch_slot, self.record.timestamp_ms.unwrap_or(0));
        let mut rec = BaseRecord::with_opaque_to(topic, opaque)
            .key(key)
            .payload(payload);
        if let Some(h) = headers {
            rec = rec.headers(h);
        }
        self.outstanding.add(self.epoch_slot);
        send(self.producer, rec);
        self.emitted += 1;
    }

    /// Sends the input record to the DLQ with `reason`, and counts it.
    pub fn dead_letter(&mut self, reason: DlqReason, detail: &str) {
        if self.suppressed {
            return;
        }
        self.metrics
            .dlq_records
            .with_label_values(&[reason.as_str()])
            .inc();
        tracing::trace!(
            reason = reason.as_str(),
            detail,
            partition = self.record.partition,
            offset = self.record.offset,
            "dead-lettered"
        );
        let Some(dlq) = self.dlq_topic else { return };
        let r = self.record;
        let (buf, headers) = dead_letter_record(
            reason,
            detail,
            self.service,
            r.topic,
            r.partition,
            r.offset,
            r.key,
            r.payload,
        );
        let opaque = crate::kafka::pack_opaque(self.epoch_slot, 0);
        let mut rec = BaseRecord::with_opaque_to(dlq, opaque)
            .payload(buf.as_slice())
            .headers(headers);
        if let Some(k) = r.key {
            rec = rec.key(k);
        }
        self.outstanding.add(self.epoch_slot);
        send(self.producer, rec);
    }

    /// Counts an exact duplicate that was dropped.
    pub fn duplicate(&mut self) {
        if !self.suppressed {
            self.metrics.duplicates.inc();
        }
    }
}

/// The DLQ record of a rejected input: the framed `DeadLetter` envelope (original key and
/// payload inside) and the `dlq.*` headers that let tools route on the reason without decoding.
#[allow(clippy::too_many_arguments)]
pub fn dead_letter_record(
    reason: DlqReason,
    detail: &str,
    service: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> (Vec<u8>, OwnedHeaders) {
    let envelope = DeadLetter {
        reason,
        detail,
        service,
        source_topic: topic,
        source_partition: partition,
        source_offset: offset,
        failed_at_ms: now_ms(),
        key,
        payload,
    };
    let mut buf = Vec::with_capacity(64 + payload.map_or(0, <[u8]>::len));
    envelope.encode_framed(&mut buf);
    let partition = partition.to_string();
    let offset = offset.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "dlq.reason",
            value: Some(reason.as_str()),
        })
        .insert(Header {
            key: "dlq.detail",
            value: Some(detail),
        })
        .insert(Header {
            key: "dlq.service",
            value: Some(service),
        })
        .insert(Header {
            key: "dlq.source.topic",
            value: Some(topic),
        })
        .insert(Header {
            key: "dlq.source.partition",
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: "dlq.source.offset",
            value: Some(offset.as_str()),
        });
    (buf, headers)
}

fn send<'a>(producer: &ThreadedProducer<ProducerCtx>, mut rec: BaseRecord<'a, [u8], [u8], usize>) {
    loop {
        match producer.send(rec) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                producer.poll(std::time::Duration::from_millis(5));
            }
            Err((err, _)) => {
                // Not retriable here (for example an unknown topic): count it as a delivery
                // failure so the batch is not committed.
                producer.context().record_failure(&err.to_string());
                return;
            }
        }
    }
}

//! The streaming runtime shared by every headroom service.
//!
//! # Delivery semantics
//!
//! - **At least once, in partition order.** A service's [`Processor`] sees each input record of
//!   its assigned partitions in offset order. Outputs are handed to an idempotent producer as
//!   they are made, and the loop never waits for them inline. Processed positions are sealed
//!   into an *epoch* every `max_batch` records or `max_batch_wait`; each output counts against
//!   its epoch until its delivery report arrives. Every `commit_interval` the positions of the
//!   leading fully acknowledged epochs are committed (sync, on a committer thread: the loop
//!   does not wait), and on revoke and shutdown the producer is flushed first. A crash replays at most the records since the last commit;
//!   outputs carry deterministic ids so consumers can de-duplicate.
//! - **Delivery failures stop the service.** librdkafka retries inside `message.timeout.ms`;
//!   a record that still fails makes [`run`] return an error without committing, so the
//!   restarted service reprocesses from the last commit. Nothing is skipped.
//! - **Bad input never blocks a partition.** The processor dead-letters it through the
//!   [`Emitter`]; the DLQ record keeps the original key and payload and carries the reason and
//!   the source coordinates in headers (`dlq.reason`, `dlq.detail`, `dlq.source.*`).
//! - **State is rebuilt by replay.** With each commit the runtime stores, in the offset
//!   metadata, the processor's [`Processor::replay_floor`]: the smallest input offset its state
//!   still depends on. On assignment the partition is consumed from that floor with outputs
//!   suppressed up to the committed offset, which rebuilds exactly the state an uninterrupted
//!   run would hold. Revoke flushes the producer and commits synchronously before the
//!   partition is released.
//! - **Or restored from a changelog.** State that depends on more history than a replay can
//!   cover (the drift monitor's detectors) is written, per key, to a compacted changelog topic
//!   at the end of each batch ([`Flush::emit_state`]): sent once the outputs of the batch and
//!   of every earlier one are acknowledged, and acknowledged before the batch's offsets are
//!   committed. So the changelog holds at least what was committed and never the state of an
//!   undelivered output. It is read back from the same partition numbers on assignment
//!   ([`Processor::on_assigned`], [`changelog::restore`]: every partition of a rebalance in one
//!   read), from the partition's latest complete rewrite ([`Flush::rewrote`]) when the
//!   processor writes its state whole from time to time: its first offset is stored once the
//!   rewrite is acknowledged, so a restore reads a bounded tail, not the topic's history.

pub mod changelog;
pub mod config;
pub mod kafka;
pub mod metrics;
pub mod models;
pub mod observe;
pub mod processor;
pub mod registry;
pub mod service;
pub mod shutdown;
pub mod topology;
pub mod trace;

pub use config::{load_config, CommonConfig, ConfigError, KafkaConfig};
pub use kafka::run;
pub use metrics::Metrics;
pub use processor::{Emitter, Flush, InputRecord, Processor};
pub use shutdown::Shutdown;

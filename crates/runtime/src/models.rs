//! Following the compacted `models` topic: every instance of a service that serves or watches a
//! model family (the scorer, the drift monitor) reads the whole topic without a consumer group,
//! from its beginning, and reacts to the versions announced there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use headroom_schemas::{ModelEvent, ModelEventKind};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::{KafkaConfig, Shutdown};

/// Resolves an event's artifact URI (`file://…` or a path; relative paths are taken from the
/// models directory).
pub fn artifact_dir(models_dir: &Path, uri: &str) -> PathBuf {
    let p = PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
    if p.is_absolute() {
        p
    } else {
        models_dir.join(p)
    }
}

/// True for the events that change which version of `family` serves.
pub fn is_switch(ev: &ModelEvent, family: &str) -> bool {
    ev.model_name == family && matches!(ev.kind, ModelEventKind::Promoted | ModelEventKind::RolledBack)
}

/// Reads `topic` from its beginning until `shutdown`, calling `on_event` with every decodable
/// model event (undecodable ones are logged and skipped). Blocking: run it on its own thread.
pub fn follow(kafka: &KafkaConfig, topic: &str, shutdown: &Shutdown, mut on_event: impl FnMut(ModelEvent)) {
    // assign() still wants a group id; this one never joins a group nor commits.
    let group = format!(
        "{}.model-watch.{}.{}",
        kafka.group_id,
        std::process::id(),
        crate::observe::now_ms()
    );
    let consumer: BaseConsumer = match crate::kafka::client_config(kafka)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "model watcher: cannot create a consumer; versions will not be followed");
            return;
        }
    };
    let partitions = loop {
        if shutdown.is_triggered() {
            return;
        }
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => match md.topics().first().map(|t| t.partitions().len()) {
                Some(n) if n > 0 => break n as i32,
                _ => tracing::warn!(topic, "model watcher: topic has no partitions yet"),
            },
            Err(e) => tracing::warn!(error = %e, topic, "model watcher: metadata"),
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let _ = tpl.add_partition_offset(topic, p, Offset::Beginning);
    }
    if let Err(e) = consumer.assign(&tpl) {
        tracing::error!(error = %e, "model watcher: assign");
        return;
    }
    tracing::info!(topic, "following model versions");
    while !shutdown.is_triggered() {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else { continue };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "model watcher: consumer error");
                continue;
            }
        };
        let Some(payload) = msg.payload() else { continue };
        match ModelEvent::decode(payload) {
            Ok(ev) => on_event(ev),
            Err(e) => tracing::warn!(error = %e, offset = msg.offset(), "model watcher: undecodable model event skipped"),
        }
    }
}

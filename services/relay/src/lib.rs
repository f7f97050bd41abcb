//! The relay: the measuring reference for the featurizer. Same runtime, same decoding and
//! framing, no state and no features: decode, re-encode, publish.

use std::path::Path;

use headroom_runtime::config::{HttpConfig, LogConfig, RegistryConfig, RuntimeConfig};
use headroom_runtime::service::{self, ServiceHandle};
use headroom_runtime::{
    load_config, CommonConfig, ConfigError, Emitter, InputRecord, KafkaConfig, Processor, Shutdown,
};
use headroom_schemas::TelemetryDecoder;
use serde::{Deserialize, Serialize};

pub const SERVICE: &str = "relay";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub input: String,
    pub output: String,
    pub dlq: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    pub schema_registry: RegistryConfig,
    pub topics: Topics,
}

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        load_config(include_str!("../default.toml"), file, "HEADROOM_RELAY__")
    }

    pub fn common(&self) -> CommonConfig {
        CommonConfig {
            kafka: self.kafka.clone(),
            http: self.http.clone(),
            log: self.log.clone(),
            runtime: self.runtime.clone(),
            schema_registry: self.schema_registry.clone(),
        }
    }
}

struct Relay {
    decoder: TelemetryDecoder,
    output: String,
    buf: Vec<u8>,
}

impl Processor for Relay {
    fn process(&mut self, record: &InputRecord<'_>, out: &mut Emitter<'_>) {
        match record.payload.map(|p| self.decoder.decode(p)) {
            Some(Ok(t)) => {
                t.encode_framed(&mut self.buf);
                out.emit(&self.output, t.entity_id.as_bytes(), &self.buf);
            }
            Some(Err(e)) => out.dead_letter(e.reason(), &e.to_string()),
            None => out.dead_letter(
                headroom_schemas::DlqReason::Truncated,
                "record has no value",
            ),
        }
    }
}

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<ServiceHandle> {
    let output = config.topics.output.clone();
    service::start(
        SERVICE,
        config.common(),
        vec![config.topics.input.clone()],
        Some(config.topics.dlq.clone()),
        shutdown,
        move |_| {
            Ok(Relay {
                decoder: TelemetryDecoder::new(),
                output,
                buf: Vec::with_capacity(512),
            })
        },
    )
    .await
}

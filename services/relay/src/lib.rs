//! The relay: the measuring reference for the featurizer. Same runtime, same decoding and
//! framing, no state and no features: decode, re-encode, publish.

use std::path::Path;

use headroom_runtime::config::{HttpConfig, LogConfig, RegistryConfig, RuntimeConfig};
use headroom_runtime::service::{self, ServiceHandle};
use headroom_runtime::{
    load_config, CommonConfig, ConfigError, Emitter, InputRecord, KafkaConfig, Processor, Shutdown,
};
use headroom_schemas::{Telemetry, TelemetryDecoder};
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
    pub output: Output,
}

/// What the relay re-publishes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Adds a label `relay.pad` of this many bytes to every re-published record (0: none). For
    /// benchmarks only: a reference that publishes records as large as the featurizer's
    /// vectors, so that the cost of moving bytes can be told from the cost of computing them.
    pub pad_bytes: usize,
}

impl Config {
    /// Defaults, then `file`, then `HEADROOM_RELAY__*` variables; validated.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let c: Config = load_config(include_str!("../default.toml"), file, "HEADROOM_RELAY__")?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.common().validate()?;
        // The padding is allocated once at start: a value no output could carry is a mistake,
        // not a reason to allocate it.
        if self.output.pad_bytes > self.runtime.max_output_bytes {
            return Err(ConfigError::Invalid(format!(
                "key `output.pad_bytes`: {} is more than runtime.max_output_bytes ({})",
                self.output.pad_bytes, self.runtime.max_output_bytes
            )));
        }
        Ok(())
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

/// The label [`Output::pad_bytes`] adds.
pub const PAD_LABEL: &str = "relay.pad";

struct Relay {
    decoder: TelemetryDecoder,
    output: String,
    buf: Vec<u8>,
    /// The padding label (an empty value: no label).
    pad: (String, String),
}

impl Relay {
    fn new(output: String, pad_bytes: usize) -> Relay {
        Relay {
            decoder: TelemetryDecoder::new(),
            output,
            buf: Vec::with_capacity(512 + pad_bytes),
            pad: (PAD_LABEL.to_owned(), "x".repeat(pad_bytes)),
        }
    }

    /// Re-encodes `t` into `self.buf`, with the padding label when configured. The label is
    /// lent to the record and taken back, so padding allocates nothing per record.
    fn encode(&mut self, t: &mut Telemetry) {
        if self.pad.1.is_empty() {
            t.encode_framed(&mut self.buf);
            return;
        }
        t.labels.push(std::mem::take(&mut self.pad));
        t.encode_framed(&mut self.buf);
        if let Some(pad) = t.labels.pop() {
            self.pad = pad;
        }
    }
}

impl Processor for Relay {
    fn process(&mut self, record: &InputRecord<'_>, out: &mut Emitter<'_>) {
        match record.payload.map(|p| self.decoder.decode(p)) {
            Some(Ok(mut t)) => {
                self.encode(&mut t);
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
    config.validate()?;
    let output = config.topics.output.clone();
    let pad_bytes = config.output.pad_bytes;
    service::start(
        SERVICE,
        config.common(),
        vec![config.topics.input.clone()],
        Some(config.topics.dlq.clone()),
        shutdown,
        move |_| Ok(Relay::new(output, pad_bytes)),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry() -> Telemetry {
        Telemetry {
            entity_id: "svc-01.cluster-1.vm-0001".into(),
            ts_ms: 1_700_000_000_000,
            cpu_util: Some(0.42),
            mem_util: Some(0.6),
            labels: vec![("zone".into(), "a".into())],
            ..Telemetry::default()
        }
    }

    #[test]
    fn defaults_load_without_padding() {
        let c = Config::load(None).expect("defaults");
        assert_eq!(c.output.pad_bytes, 0);
    }

    #[test]
    fn padding_beyond_the_largest_output_is_refused_naming_the_key() {
        let mut c = Config::load(None).expect("defaults");
        c.output.pad_bytes = c.runtime.max_output_bytes;
        c.validate().expect("as large as an output may be");
        c.output.pad_bytes = 1 << 40;
        let err = c.validate().expect_err("a terabyte of padding").to_string();
        assert!(err.contains("output.pad_bytes"), "{err}");
        std::env::set_var("HEADROOM_RELAY__OUTPUT__PAD_BYTES", "-1");
        let err = Config::load(None).expect_err("negative").to_string();
        std::env::remove_var("HEADROOM_RELAY__OUTPUT__PAD_BYTES");
        assert!(err.contains("pad_bytes"), "{err}");
    }

    #[test]
    fn unpadded_output_is_the_input_re_encoded() {
        let mut relay = Relay::new("out".into(), 0);
        let mut t = telemetry();
        relay.encode(&mut t);
        let mut plain = Vec::new();
        telemetry().encode_framed(&mut plain);
        assert_eq!(relay.buf, plain);
    }

    #[test]
    fn padded_output_decodes_with_the_label_and_grows_by_the_padding() {
        let mut plain = Vec::new();
        telemetry().encode_framed(&mut plain);
        let mut relay = Relay::new("out".into(), 700);
        for _ in 0..2 {
            // Twice: the label's value must come back for the next record.
            let mut t = telemetry();
            relay.encode(&mut t);
            assert_eq!(t.labels, telemetry().labels, "the record is left as it was");
            let back = TelemetryDecoder::new().decode(&relay.buf).expect("decodes");
            let pad = back
                .labels
                .iter()
                .find(|(k, _)| k == PAD_LABEL)
                .map(|(_, v)| v.len());
            assert_eq!(pad, Some(700));
            assert_eq!(back.cpu_util, Some(0.42));
            let grown = relay.buf.len() - plain.len();
            assert!((700..720).contains(&grown), "grew by {grown} bytes");
        }
    }
}

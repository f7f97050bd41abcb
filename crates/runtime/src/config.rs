//! Typed, layered configuration: embedded defaults, then an optional TOML file, then
//! environment variables `HEADROOM_<SERVICE>__SECTION__KEY` (double underscore between levels).
//! Unknown keys are errors; errors name the key.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
    #[error("configuration file {path}: {detail}")]
    File { path: String, detail: String },
}

/// Loads `T` from the layers. `defaults` is the service's embedded `default.toml`.
pub fn load_config<T: DeserializeOwned>(
    defaults: &str,
    file: Option<&Path>,
    env_prefix: &str,
) -> Result<T, ConfigError> {
    let mut fig = Figment::from(Toml::string(defaults));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                detail: "no such file".into(),
            });
        }
        fig = fig.merge(Toml::file(path));
    }
    fig = fig.merge(Env::prefixed(env_prefix).split("__").lowercase(true));
    fig.extract::<T>().map_err(|e| {
        let mut msgs = Vec::new();
        for err in e {
            let key = err.path.join(".");
            if key.is_empty() {
                msgs.push(err.kind.to_string());
            } else {
                msgs.push(format!("key `{key}`: {}", err.kind));
            }
        }
        ConfigError::Invalid(msgs.join("; "))
    })
}

/// Settings every service shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonConfig {
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub schema_registry: RegistryConfig,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    /// Static group membership (`group.instance.id`, KIP-345): a name stable across restarts of
    /// one replica (a pod's name, a container's host name). An instance that crashed and comes
    /// back under the same name takes its partitions back as it joins, instead of waiting for
    /// the crashed member's session to expire (tansu 0.6 never expires it). A static member that
    /// stops keeps its partitions until its session times out: set it only where replicas
    /// restart in place. Empty: dynamic membership.
    #[serde(default)]
    pub instance_id: String,
    /// librdkafka properties passed through as they are (security.protocol, sasl.*, ssl.*, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConfig {
    // Properties can hold credentials (sasl.password, ssl.key.password): never print values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("instance_id", &self.instance_id)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of /metrics and /health; port 0 picks a free port.
    pub listen: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info,headroom_runtime=debug`.
    pub level: String,
    /// Base URL of an OTLP/HTTP receiver (an OpenTelemetry collector, for example
    /// `http://otel-collector:4318`): the spans of traced records are exported to its
    /// `/v1/traces`. Empty: no export (trace context is still carried in the headers).
    #[serde(default)]
    pub otlp_endpoint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Records per epoch: processed positions are sealed (made committable once their outputs
    /// are acknowledged) at least this often.
    pub max_batch: usize,
    /// Longest epoch while records arrive.
    #[serde(with = "humantime_serde")]
    pub max_batch_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How long shutdown may take to flush and commit.
    #[serde(with = "humantime_serde")]
    pub drain_deadline: Duration,
    /// Largest output record; larger ones are dead-lettered.
    pub max_output_bytes: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// A Confluent-compatible schema registry. Empty: the built-in catalogue only.
    #[serde(default)]
    pub url: String,
}

impl CommonConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("key `{key}`: {why}")));
        if self.kafka.brokers.trim().is_empty() {
            return bad("kafka.brokers", "must not be empty");
        }
        if self.kafka.group_id.trim().is_empty() {
            return bad("kafka.group_id", "must not be empty");
        }
        let id = &self.kafka.instance_id;
        if !id.is_empty()
            && (id.len() > 249 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return bad(
                "kafka.instance_id",
                "must be at most 249 letters, digits, '.', '_' or '-' (or empty)",
            );
        }
        if self.kafka.properties.contains_key("group.instance.id") {
            // Passed through, it would reach the runtime's shadow-group clients too, whose
            // commits the broker would then refuse as coming from an unknown static member.
            return bad(
                "kafka.properties.group.instance.id",
                "is set by the runtime from kafka.instance_id; set that instead",
            );
        }
        for reserved in [
            "enable.auto.commit",
            "group.id",
            "bootstrap.servers",
            "enable.auto.offset.store",
        ] {
            if self.kafka.properties.contains_key(reserved) {
                return bad(
                    &format!("kafka.properties.{reserved}"),
                    "is managed by the runtime and cannot be overridden",
                );
            }
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("http.listen", "must be an address such as 127.0.0.1:9464");
        }
        if self.runtime.max_batch == 0 || self.runtime.max_batch > 1_000_000 {
            return bad("runtime.max_batch", "must be between 1 and 1000000");
        }
        if self.runtime.max_batch_wait.is_zero() {
            return bad("runtime.max_batch_wait", "must be positive");
        }
        if self.runtime.max_output_bytes < 1024 {
            return bad("runtime.max_output_bytes", "must be at least 1024");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return bad("log.level", "is not a valid filter directive");
        }
        if let Err(why) = crate::trace::check_endpoint(&self.log.otlp_endpoint) {
            return bad("log.otlp_endpoint", &why);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
group_id = "g"
[http]
listen = "127.0.0.1:0"
[log]
format = "text"
level = "info"
[runtime]
max_batch = 100
max_batch_wait = "20ms"
commit_interval = "1s"
drain_deadline = "10s"
max_output_bytes = 1000000
"#;

    #[test]
    fn layers_file_then_env() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[runtime]\nmax_batch = 7\n").expect("write");
        let c: CommonConfig =
            load_config(DEFAULTS, Some(&path), "HEADROOM_RTTEST1__").expect("load");
        assert_eq!(c.runtime.max_batch, 7);
        assert_eq!(c.runtime.max_batch_wait, Duration::from_millis(20));
        std::env::set_var("HEADROOM_RTTEST2__RUNTIME__MAX_BATCH", "9");
        let c: CommonConfig =
            load_config(DEFAULTS, Some(&path), "HEADROOM_RTTEST2__").expect("load");
        assert_eq!(c.runtime.max_batch, 9);
        c.validate().expect("valid");
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[runtime]\nmax_batch_wait = \"soon\"\n").expect("write");
        let err =
            load_config::<CommonConfig>(DEFAULTS, Some(&path), "HEADROOM_RTTEST3__").unwrap_err();
        assert!(err.to_string().contains("runtime.max_batch_wait"), "{err}");
        std::fs::write(&path, "[runtime]\nmax_bath = 3\n").expect("write");
        let err =
            load_config::<CommonConfig>(DEFAULTS, Some(&path), "HEADROOM_RTTEST3__").unwrap_err();
        assert!(err.to_string().contains("max_bath"), "{err}");
        let mut c: CommonConfig = load_config(DEFAULTS, None, "HEADROOM_RTTEST3__").expect("load");
        c.kafka
            .properties
            .insert("enable.auto.commit".into(), "true".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("kafka.properties.enable.auto.commit"));
        let mut c: CommonConfig = load_config(DEFAULTS, None, "HEADROOM_RTTEST3__").expect("load");
        c.kafka.properties.insert("group.instance.id".into(), "a".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.properties.group.instance.id") && err.contains("kafka.instance_id"), "{err}");
        c.kafka.properties.clear();
        for bad in ["has space", "x/y", &"a".repeat(250)] {
            c.kafka.instance_id = bad.to_owned();
            assert!(c.validate().unwrap_err().to_string().contains("kafka.instance_id"), "{bad}");
        }
        c.kafka.instance_id = "featurizer-7f9c.a_b".into();
        c.validate().expect("a pod name is a valid instance id");
        let missing =
            load_config::<CommonConfig>(DEFAULTS, Some(Path::new("/nonexistent.toml")), "X__");
        assert!(missing.unwrap_err().to_string().contains("no such file"));
    }

    #[test]
    fn debug_hides_property_values() {
        let mut c: CommonConfig = load_config(DEFAULTS, None, "HEADROOM_RTTEST4__").expect("load");
        c.kafka
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

use std::path::{Path, PathBuf};
use std::time::Duration;

use headroom_drift::config::{FeatureDrift, ModelError};
use headroom_drift::DriftConfig;
use headroom_runtime::config::{HttpConfig, LogConfig, RegistryConfig, RuntimeConfig};
use headroom_runtime::{load_config, CommonConfig, ConfigError, KafkaConfig};
use serde::{Deserialize, Serialize};

pub const DEFAULTS: &str = include_str!("../default.toml");
pub const ENV_PREFIX: &str = "HEADROOM_DRIFT__";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub features: String,
    pub forecasts: String,
    pub output: String,
    pub models: String,
    pub dlq: String,
    /// The model-error detectors' changelog (compacted, as many partitions as `forecasts`).
    pub state: String,
    /// The feature windows' changelog (compacted, as many partitions as `features`).
    pub windows: String,
}

/// Where the model-error detectors' state lives across restarts and rebalances.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Write each changed entity's detectors to `topics.state` (`detectors_every`), and each
    /// changed features partition's share of the open windows to `topics.windows`
    /// (`windows_every`), at the end of a batch, and read them back when partitions are assigned. Off: in memory only, and a restarted monitor
    /// warms up again (a day before it can alarm) and starts its feature windows afresh.
    pub enabled: bool,
    /// How long reading the changelog back at one rebalance may take (all its partitions).
    #[serde(with = "humantime_serde")]
    pub restore_timeout: Duration,
    /// A features partition's windows record is written at most this often (wall clock; 0s:
    /// at the end of every batch that changed it). What a partition counted since its last
    /// record is replayed from the features topic after a restart or a rebalance (its replay
    /// floor is committed with the offsets), so the windows stay exact either way; the interval
    /// bounds the changelog's volume (a record is about 6 KB with the default vector).
    #[serde(with = "humantime_serde")]
    pub windows_every: Duration,
    /// A forecasts partition's changed entities are written to `topics.state` at most this often
    /// (wall clock; 0s: at the end of every batch). What they saw since is replayed from the
    /// forecasts topic after a restart or a rebalance (the partition's replay floor is committed
    /// with the offsets); the interval bounds the changelog to one record per changed entity
    /// per interval instead of one per forecast.
    #[serde(with = "humantime_serde")]
    pub detectors_every: Duration,
    /// Bounds what a restore reads of each changelog partition, whatever the topic's age: once
    /// a partition's records since its last complete rewrite reach this many times that
    /// rewrite's size, it is written whole again (every live entity; a windows record is whole
    /// by itself, so every `rewrite_after`-th one), and restores start at the latest rewrite
    /// (its first offset, stored by the runtime once the rewrite is acknowledged). About
    /// `1 / rewrite_after` more records written. 0: never, and restores read the whole
    /// (compacted) topic. At most 1,000.
    pub rewrite_after: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    pub dir: PathBuf,
    pub family: String,
    pub watch: bool,
    /// PostgreSQL URL of the model registry; when set, it names the serving version at
    /// start-up (otherwise the models directory's registry.json does).
    #[serde(default)]
    pub registry_url: String,
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
    pub models: Models,
    pub features: FeatureDrift,
    pub model_error: ModelError,
    pub state: StateConfig,
}

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let c: Config = load_config(DEFAULTS, file, ENV_PREFIX)?;
        c.validate()?;
        Ok(c)
    }

    pub fn drift(&self) -> DriftConfig {
        DriftConfig {
            features: self.features.clone(),
            model_error: self.model_error.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.common().validate()?;
        let t = &self.topics;
        let all = [&t.features, &t.forecasts, &t.output, &t.models, &t.dlq, &t.state, &t.windows];
        for (i, a) in all.iter().enumerate() {
            if all[i + 1..].contains(a) {
                return Err(ConfigError::Invalid(format!(
                    "key `topics`: `{a}` is named twice; features, forecasts, output, models, dlq, state and windows must be different topics"
                )));
            }
        }
        if self.state.enabled && t.state.is_empty() {
            return Err(ConfigError::Invalid("key `topics.state` must name the changelog topic while `state.enabled` is true".into()));
        }
        if self.state.enabled && t.windows.is_empty() {
            return Err(ConfigError::Invalid(
                "key `topics.windows` must name the feature windows' changelog topic while `state.enabled` is true".into(),
            ));
        }
        if self.state.restore_timeout.is_zero() {
            return Err(ConfigError::Invalid("key `state.restore_timeout` must be above 0".into()));
        }
        // Replayed after a restart: more than the features topic's retention would lose counts.
        if self.state.windows_every > Duration::from_secs(3_600) {
            return Err(ConfigError::Invalid(
                "key `state.windows_every` must be at most 1h (what it leaves unsaved is replayed from the features topic)".into(),
            ));
        }
        if self.state.detectors_every > Duration::from_secs(3_600) {
            return Err(ConfigError::Invalid(
                "key `state.detectors_every` must be at most 1h (what it leaves unsaved is replayed from the forecasts topic)".into(),
            ));
        }
        if self.state.rewrite_after > 1_000 {
            return Err(ConfigError::Invalid(
                "key `state.rewrite_after` must be at most 1000 (0: never rewrite, restores read the whole changelog)".into(),
            ));
        }
        if self.models.family.is_empty() {
            return Err(ConfigError::Invalid("key `models.family` must not be empty".into()));
        }
        if !self.features.enabled && !self.model_error.enabled {
            return Err(ConfigError::Invalid(
                "keys `features.enabled` and `model_error.enabled`: enable at least one detector".into(),
            ));
        }
        self.drift().validate().map_err(ConfigError::Invalid)
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

#[cfg(test)]
mod tests {
    use super::*;


    /// The configuration the Kubernetes manifests mount (k8s/base/config/drift-monitor.toml) loads and
    /// validates over the defaults; cli/tests/deploy.rs checks its port against the Deployment's.
    #[test]
    fn the_kubernetes_config_map_is_a_valid_configuration() {
        let path = headroom_testkit::repo_root().join("k8s/base/config/drift-monitor.toml");
        let c: Config = load_config(DEFAULTS, Some(&path), "HEADROOM_DRIFT_K8S__").expect("k8s/base/config/drift-monitor.toml");
        c.validate().expect("k8s/base/config/drift-monitor.toml is valid");
        assert_eq!(c.kafka.brokers, "kafka:9092");
        assert_eq!(c.http.listen, "0.0.0.0:9468");
        assert!(matches!(c.log.format, headroom_runtime::config::LogFormat::Json));
    }

    /// The message a configuration with `key` (in environment form) set to `value` is refused
    /// with, at loading or validation. `n` keeps each case's environment prefix of its own.
    fn refused(n: u32, key: &str, value: &str) -> String {
        let prefix = format!("HEADROOM_DRIFT_TEST{n}__");
        std::env::set_var(format!("{prefix}{key}"), value);
        match load_config::<Config>(DEFAULTS, None, &prefix) {
            Ok(c) => c.validate().expect_err("refused").to_string(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_load_and_bad_values_name_the_key() {
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_DRIFT_TEST1__").unwrap();
        c.validate().expect("defaults are valid");
        assert_eq!(c.drift(), DriftConfig::default(), "default.toml and the crate's defaults agree");
        assert!(c.state.enabled, "the changelog is on by default");
        assert_eq!(c.state.windows_every, Duration::from_secs(10), "the default interval");
        assert_eq!(c.state.detectors_every, Duration::from_secs(10), "the default interval");
        assert_eq!(c.state.rewrite_after, 4, "restores read from the latest rewrite by default");
        for (n, key, value, named) in [
            (2, "MODEL_ERROR__PH_LAMBDA", "-1", "model_error.ph_lambda"),
            (3, "FEATURES__WINDOW", "hourly", "features.window"),
            (4, "TOPICS__OUTPUT", "features", "topics"),
            (5, "STATE__RESTORE_TIMEOUT", "0s", "state.restore_timeout"),
            (6, "TOPICS__STATE", "drift.alerts", "named twice"),
            (7, "TOPICS__WINDOWS", "drift.state", "named twice"),
            (8, "TOPICS__WINDOWS", "", "topics.windows"),
            (9, "STATE__WINDOWS_EVERY", "2h", "state.windows_every"),
            (11, "STATE__DETECTORS_EVERY", "90m", "state.detectors_every"),
            (12, "STATE__DETECTORS_EVERY", "often", "state.detectors_every"),
            (13, "STATE__REWRITE_AFTER", "1001", "state.rewrite_after"),
            (14, "STATE__REWRITE_AFTER", "-1", "state.rewrite_after"),
        ] {
            let e = refused(n, key, value);
            assert!(e.contains(named), "{key}={value:?}: {e}");
        }
    }
}

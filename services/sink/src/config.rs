use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use headroom_runtime::config::{HttpConfig, LogConfig, RegistryConfig};
use headroom_runtime::{load_config, ConfigError, KafkaConfig};
use headroom_schemas::ValidationLimits;
use serde::{Deserialize, Serialize};

pub const DEFAULTS: &str = include_str!("../default.toml");
pub const ENV_PREFIX: &str = "HEADROOM_SINK__";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    pub url: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub migrate: bool,
    /// The key of this sink's rows in `sink_offsets`; empty: the Kafka group id. Positions
    /// belong to the deployment: renaming the consumer group (or moving to another cluster
    /// with the same topics) keeps them when this is set.
    #[serde(default)]
    pub offsets_group: String,
    /// A file holding the password (a mounted secret); it is put into the URL at start-up.
    #[serde(default)]
    pub password_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub max_rows: usize,
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_deadline: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub telemetry: String,
    pub features: String,
    pub forecasts: String,
    pub recommendations: String,
    pub drift: String,
    pub models: String,
    pub dlq: String,
}

impl Topics {
    pub fn all(&self) -> [&str; 7] {
        [
            &self.telemetry,
            &self.features,
            &self.forecasts,
            &self.recommendations,
            &self.drift,
            &self.models,
            &self.dlq,
        ]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub ahead_days: u32,
}

/// The Parquet archive of raw telemetry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    /// Directory of the archive; empty: no archive.
    pub root: String,
    /// An hour is cut once the raw table's data clock is this far past its end (late samples
    /// after that make the hour be cut again).
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Hours cut per maintenance pass at most (a replayed trace closes many at once; the rest
    /// wait for the next pass, so that ingestion is not held up).
    pub max_hours_per_pass: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollups {
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
    /// The 1-minute rollup: `auto` writes it only when samples come more often than once a
    /// minute (otherwise each of its rows would be one raw row again, at 2.5 times the raw
    /// row's write cost; the raw table and the Parquet archive hold those samples).
    pub minute: MinuteRollup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MinuteRollup {
    Auto,
    On,
    Off,
}

impl Rollups {
    /// Whether telemetry_1m is written.
    pub fn minute_enabled(&self) -> bool {
        match self.minute {
            MinuteRollup::On => true,
            MinuteRollup::Off => false,
            MinuteRollup::Auto => self.sample_interval < Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub schema_registry: RegistryConfig,
    pub postgres: Postgres,
    pub batch: Batch,
    pub retry: Retry,
    pub topics: Topics,
    /// Table name -> retention (humantime).
    pub retention: BTreeMap<String, String>,
    pub rollups: Rollups,
    pub maintenance: Maintenance,
    pub archive: Archive,
    pub validation: ValidationLimits,
}

impl Config {
    /// Defaults, then `file`, then `HEADROOM_SINK__*` variables; validated.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let c: Config = load_config(DEFAULTS, file, ENV_PREFIX)?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.kafka.brokers.trim().is_empty() {
            return bad("key `kafka.brokers` must not be empty".into());
        }
        if self.kafka.group_id.trim().is_empty() {
            return bad("key `kafka.group_id` must not be empty: the stored offsets are per group".into());
        }
        if self.batch.max_rows == 0 || self.batch.max_rows > 1_000_000 {
            return bad(format!(
                "key `batch.max_rows` must be between 1 and 1000000, got {}",
                self.batch.max_rows
            ));
        }
        if self.batch.max_wait.is_zero() {
            return bad("key `batch.max_wait` must be positive".into());
        }
        if self.retry.initial_backoff.is_zero() || self.retry.max_backoff < self.retry.initial_backoff {
            return bad("key `retry`: initial_backoff must be positive and at most max_backoff".into());
        }
        if self.rollups.sample_interval.is_zero() || self.rollups.sample_interval > Duration::from_secs(86_400) {
            return bad("key `rollups.sample_interval` must be between 1s and 1d".into());
        }
        if self.maintenance.interval < Duration::from_secs(1) {
            return bad("key `maintenance.interval` must be at least 1s".into());
        }
        let mut topics: Vec<&str> = self.topics.all().to_vec();
        topics.sort_unstable();
        topics.dedup();
        if topics.len() != 7 || topics.iter().any(|t| t.is_empty()) {
            return bad("key `topics`: the seven topics must be distinct and non-empty".into());
        }
        if self.archive.max_hours_per_pass == 0 {
            return bad("key `archive.max_hours_per_pass` must be at least 1".into());
        }
        if self.archive.grace > Duration::from_secs(86_400) {
            return bad("key `archive.grace` must be at most 1d (the raw table keeps only days)".into());
        }
        url_ok(&self.postgres.url)?;
        self.retentions()?;
        Ok(())
    }

    /// Reads `postgres.password_file` (when set) into the URL.
    pub fn resolve_password(&mut self) -> Result<(), ConfigError> {
        if self.postgres.password_file.is_empty() {
            return Ok(());
        }
        let pw = std::fs::read_to_string(&self.postgres.password_file).map_err(|e| {
            ConfigError::Invalid(format!(
                "key `postgres.password_file`: {}: {e}",
                self.postgres.password_file
            ))
        })?;
        self.postgres.url = with_password(&self.postgres.url, pw.trim_end_matches(['\n', '\r']))?;
        Ok(())
    }

    /// The key of the stored offsets.
    pub fn offsets_group(&self) -> &str {
        if self.postgres.offsets_group.is_empty() {
            &self.kafka.group_id
        } else {
            &self.postgres.offsets_group
        }
    }

    /// The retention of every partitioned table (each must be configured).
    pub fn retentions(&self) -> Result<Vec<(headroom_store::TableSpec, Duration)>, ConfigError> {
        for k in self.retention.keys() {
            if headroom_store::partitions::spec(k).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "key `retention.{k}`: no such table (known: {})",
                    headroom_store::TABLES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        headroom_store::TABLES
            .iter()
            .map(|t| {
                let v = self.retention.get(t.name).ok_or_else(|| {
                    ConfigError::Invalid(format!("key `retention.{}` is missing", t.name))
                })?;
                let d = humantime::parse_duration(v).map_err(|e| {
                    ConfigError::Invalid(format!("key `retention.{}`: `{v}`: {e}", t.name))
                })?;
                Ok((*t, d))
            })
            .collect()
    }
}

/// `url` with `password` (percent-encoded) in its user info.
pub fn with_password(url: &str, password: &str) -> Result<String, ConfigError> {
    headroom_store::with_password(url, password).map_err(ConfigError::Invalid)
}

fn url_ok(url: &str) -> Result<(), ConfigError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "key `postgres.url`: `{}` is not a postgres:// URL",
            headroom_store::redact(url)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;


    /// The configuration the Kubernetes manifests mount (k8s/base/config/sink.toml) loads and
    /// validates over the defaults; cli/tests/deploy.rs checks its port against the Deployment's.
    #[test]
    fn the_kubernetes_config_map_is_a_valid_configuration() {
        let path = headroom_testkit::repo_root().join("k8s/base/config/sink.toml");
        let c: Config = load_config(DEFAULTS, Some(&path), "HEADROOM_SINK_K8S__").expect("k8s/base/config/sink.toml");
        c.validate().expect("k8s/base/config/sink.toml is valid");
        assert_eq!(c.kafka.brokers, "kafka:9092");
        assert_eq!(c.http.listen, "0.0.0.0:9466");
        assert!(matches!(c.log.format, headroom_runtime::config::LogFormat::Json));
        assert_eq!(c.postgres.password_file, "/secrets/postgres/password");
        assert_eq!(c.archive.root, "/var/lib/headroom/archive", "the archive volume's mount");
    }

    #[test]
    fn the_minute_rollup_follows_the_sampling_interval_under_auto() {
        let mut c: Config = load_config(DEFAULTS, None, "HEADROOM_SINK_TEST3__").expect("defaults");
        assert_eq!(c.rollups.minute, MinuteRollup::Auto);
        assert!(!c.rollups.minute_enabled(), "5-minute samples: no minute rollup");
        c.rollups.sample_interval = Duration::from_secs(10);
        assert!(c.rollups.minute_enabled(), "10-second samples: minute rollup");
        c.rollups.minute = MinuteRollup::Off;
        assert!(!c.rollups.minute_enabled());
        c.rollups.sample_interval = Duration::from_secs(300);
        c.rollups.minute = MinuteRollup::On;
        assert!(c.rollups.minute_enabled());
        let bad = load_config::<Config>(DEFAULTS, None, "HEADROOM_SINK_TEST4__").map(|mut c| {
            c.archive.max_hours_per_pass = 0;
            c.validate()
        });
        assert!(bad.expect("loads").expect_err("zero").to_string().contains("archive.max_hours_per_pass"));
    }

    #[test]
    fn defaults_load_and_cover_every_table() {
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_SINK_TEST1__").expect("defaults");
        c.validate().expect("valid");
        assert_eq!(c.retentions().expect("ret").len(), headroom_store::TABLES.len());
    }

    #[test]
    fn password_goes_into_the_url_encoded() {
        let u = with_password("postgres://headroom@db:5432/headroom", "p@ss:w/rd").expect("url");
        assert_eq!(u, "postgres://headroom:p%40ss%3Aw%2Frd@db:5432/headroom");
        let u = with_password("postgres://headroom:old@db/h", "new").expect("url");
        assert_eq!(u, "postgres://headroom:new@db/h");
        assert!(with_password("postgres://db/h", "x").is_err());
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut c: Config = load_config(DEFAULTS, None, "HEADROOM_SINK_TEST2__").expect("defaults");
        c.retention.insert("telemetry_raw".into(), "three days".into());
        let e = c.validate().expect_err("bad retention").to_string();
        assert!(e.contains("retention.telemetry_raw"), "{e}");
        c.retention.insert("telemetry_raw".into(), "3d".into());
        c.retention.insert("nope".into(), "1d".into());
        assert!(c.validate().expect_err("unknown").to_string().contains("retention.nope"));
        c.retention.remove("nope");
        c.postgres.url = "mysql://x".into();
        assert!(c.validate().expect_err("url").to_string().contains("postgres.url"));
        c.postgres.url = "postgres://h/db".into();
        c.topics.dlq = c.topics.telemetry.clone();
        assert!(c.validate().expect_err("topics").to_string().contains("topics"));
    }
}

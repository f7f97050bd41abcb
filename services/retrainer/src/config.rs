use std::path::{Path, PathBuf};
use std::time::Duration;

use headroom_features::FeatureConfig;
use headroom_forecast::DeviceChoice;
use headroom_runtime::config::{HttpConfig, LogConfig};
use headroom_runtime::{load_config, ConfigError, KafkaConfig};
use serde::{Deserialize, Serialize};

pub const DEFAULTS: &str = include_str!("../default.toml");
pub const ENV_PREFIX: &str = "HEADROOM_RETRAIN__";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub alerts: String,
    pub models: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    pub url: String,
    /// A file holding the password (a mounted secret); it is put into the URL at start-up.
    #[serde(default)]
    pub password_file: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    pub dir: PathBuf,
    pub family: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MinSeverity {
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    pub min_severity: MinSeverity,
    #[serde(with = "humantime_serde")]
    pub coalesce: Duration,
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub schedule: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub holdout: f64,
    pub min_train_rows: usize,
    pub min_holdout_rows: usize,
    /// The Parquet archive the sink cuts (its `archive.root`); empty: PostgreSQL only.
    pub archive_root: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    pub horizons: Vec<String>,
    pub targets: Vec<String>,
    pub rounds: u32,
    pub max_depth: u32,
    pub eta: f64,
    pub min_child_weight: f64,
    pub early_stopping_rounds: u32,
    pub threads: u32,
    pub train_stride: usize,
    pub classifier: bool,
    pub classifier_eta: f64,
    pub device: DeviceChoice,
    pub neural: crate::neural::NeuralTraining,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    pub margin: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub topics: Topics,
    pub postgres: Postgres,
    pub models: Models,
    pub triggers: Triggers,
    pub data: Data,
    pub training: Training,
    pub promotion: Promotion,
    pub mlflow: crate::mlflow::MlflowConfig,
    pub features: FeatureConfig,
}

impl Config {
    /// Loads the configuration and reads `postgres.password_file` into the URL.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut c: Config = load_config(DEFAULTS, file, ENV_PREFIX)?;
        c.validate()?;
        if !c.postgres.password_file.is_empty() {
            let pw = std::fs::read_to_string(&c.postgres.password_file)
                .map_err(|e| ConfigError::Invalid(format!("key `postgres.password_file`: {}: {e}", c.postgres.password_file)))?;
            c.postgres.url = headroom_store::with_password(&c.postgres.url, pw.trim_end_matches(['\n', '\r'])).map_err(ConfigError::Invalid)?;
        }
        Ok(c)
    }

    /// The horizons in slots of the sampling interval.
    pub fn horizon_slots(&self) -> Result<Vec<usize>, ConfigError> {
        let step = self.features.sampling_interval.as_millis().max(1);
        self.training
            .horizons
            .iter()
            .map(|h| {
                let d = humantime::parse_duration(h)
                    .map_err(|e| ConfigError::Invalid(format!("key `training.horizons`: `{h}`: {e}")))?;
                let n = d.as_millis() / step;
                if n == 0 || d.as_millis() % step != 0 {
                    return Err(ConfigError::Invalid(format!(
                        "key `training.horizons`: `{h}` is not a positive multiple of `features.sampling_interval`"
                    )));
                }
                Ok(n as usize)
            })
            .collect()
    }

    /// Indices of the targets into the forecast crate's target list.
    pub fn target_indices(&self) -> Result<Vec<usize>, ConfigError> {
        self.training
            .targets
            .iter()
            .map(|t| {
                headroom_forecast::TARGETS.iter().position(|x| x == t).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "key `training.targets`: unknown target `{t}` (known: {})",
                        headroom_forecast::TARGETS.join(", ")
                    ))
                })
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::Invalid(s));
        self.features
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("key `features`: {e}")))?;
        self.horizon_slots()?;
        self.target_indices()?;
        if self.training.targets.is_empty() {
            return bad("key `training.targets` must name at least one target".into());
        }
        if !(self.data.holdout > 0.0 && self.data.holdout < 0.9) {
            return bad(format!("key `data.holdout` must be in (0, 0.9), got {}", self.data.holdout));
        }
        if self.data.window < Duration::from_secs(3600) {
            return bad("key `data.window` must be at least 1h".into());
        }
        if !(self.promotion.margin.is_finite() && self.promotion.margin > -1.0 && self.promotion.margin < 1.0) {
            return bad(format!("key `promotion.margin` must be in (-1, 1), got {}", self.promotion.margin));
        }
        if self.training.rounds == 0 || self.training.rounds > 100_000 {
            return bad(format!("key `training.rounds` must be in 1..=100000, got {}", self.training.rounds));
        }
        if !(self.training.eta > 0.0 && self.training.eta <= 1.0) {
            return bad(format!("key `training.eta` must be in (0, 1], got {}", self.training.eta));
        }
        if !(self.training.classifier_eta > 0.0 && self.training.classifier_eta <= 1.0) {
            return bad(format!(
                "key `training.classifier_eta` must be in (0, 1], got {}",
                self.training.classifier_eta
            ));
        }
        if self.training.train_stride == 0 {
            return bad("key `training.train_stride` must be at least 1".into());
        }
        if self.models.family.is_empty() {
            return bad("key `models.family` must not be empty".into());
        }
        self.mlflow.validate().map_err(ConfigError::Invalid)?;
        self.training.neural.validate().map_err(ConfigError::Invalid)?;
        if self.topics.alerts == self.topics.models {
            return bad("key `topics`: alerts and models must be different topics".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;


    /// The configuration the Kubernetes manifests mount (k8s/base/config/retrainer.toml) loads and
    /// validates over the defaults; cli/tests/deploy.rs checks its port against the Deployment's.
    #[test]
    fn the_kubernetes_config_map_is_a_valid_configuration() {
        let path = headroom_testkit::repo_root().join("k8s/base/config/retrainer.toml");
        let c: Config = load_config(DEFAULTS, Some(&path), "HEADROOM_RETRAIN_K8S__").expect("k8s/base/config/retrainer.toml");
        c.validate().expect("k8s/base/config/retrainer.toml is valid");
        assert_eq!(c.kafka.brokers, "kafka:9092");
        assert_eq!(c.http.listen, "0.0.0.0:9469");
        assert!(matches!(c.log.format, headroom_runtime::config::LogFormat::Json));
        assert_eq!(c.postgres.password_file, "/secrets/postgres/password");
        assert_eq!(c.data.archive_root, "/var/lib/headroom/archive", "the archive volume's mount");
    }

    #[test]
    fn defaults_load_and_bad_values_name_the_key() {
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_RETRAIN_TEST1__").unwrap();
        c.validate().unwrap();
        assert_eq!(c.horizon_slots().unwrap(), vec![1, 3, 6]);
        assert_eq!(c.features, FeatureConfig::default(), "the featurizer's defaults");
        std::env::set_var("HEADROOM_RETRAIN_TEST2__DATA__HOLDOUT", "1.5");
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_RETRAIN_TEST2__").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("data.holdout"));
        std::env::set_var("HEADROOM_RETRAIN_TEST3__TRIGGERS__MIN_SEVERITY", "LOUD");
        let e = load_config::<Config>(DEFAULTS, None, "HEADROOM_RETRAIN_TEST3__").unwrap_err();
        assert!(e.to_string().contains("triggers.min_severity"), "{e}");
        std::env::set_var("HEADROOM_RETRAIN_TEST4__TRAINING__TARGETS", "[\"cpu\",\"gpu\"]");
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_RETRAIN_TEST4__").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("training.targets"));
        std::env::set_var("HEADROOM_RETRAIN_TEST5__TRAINING__CLASSIFIER_ETA", "0");
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_RETRAIN_TEST5__").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("training.classifier_eta"));
        // The neural refit's time budget: 30 minutes by default, none with "0s", never a blink.
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_RETRAIN_TEST6__").unwrap();
        assert_eq!(c.training.neural.max_duration, std::time::Duration::from_secs(1800));
        assert_eq!(c.training.neural.options(headroom_neural::Cell::Lstm, &[0], headroom_forecast::DeviceChoice::Cpu).max_seconds, 1800);
        std::env::set_var("HEADROOM_RETRAIN_TEST7__TRAINING__NEURAL__MAX_DURATION", "500ms");
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_RETRAIN_TEST7__").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("training.neural.max_duration"));
        std::env::set_var("HEADROOM_RETRAIN_TEST8__TRAINING__NEURAL__MAX_DURATION", "0s");
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_RETRAIN_TEST8__").unwrap();
        c.validate().unwrap();
    }
}

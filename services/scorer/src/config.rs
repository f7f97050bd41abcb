use std::path::{Path, PathBuf};

use headroom_runtime::config::{HttpConfig, LogConfig, RegistryConfig, RuntimeConfig};
use headroom_runtime::{load_config, CommonConfig, ConfigError, KafkaConfig};
use serde::{Deserialize, Serialize};

pub const DEFAULTS: &str = include_str!("../default.toml");
pub const ENV_PREFIX: &str = "HEADROOM_SCORER__";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub input: String,
    pub output: String,
    pub models: String,
    pub dlq: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    pub dir: PathBuf,
    pub family: String,
    /// The version's neural models to serve beside XGBoost (`lstm`, `gru`), when it has them.
    #[serde(default = "default_neural")]
    pub neural: Vec<String>,
    pub threads: usize,
    /// Where XGBoost predicts: auto (a GPU when there is one and the library has CUDA), cpu,
    /// or cuda (refused at start-up without both). The LSTM/GRU run on the CPU.
    #[serde(default)]
    pub device: headroom_forecast::device::DeviceChoice,
    /// An entity with no event for this long (in its partition's event time) has its LSTM/GRU
    /// missing flags forgotten: the featurizer's `features.idle_expiry`, after which both treat
    /// it as new.
    #[serde(with = "humantime_serde", default = "default_idle_expiry")]
    pub idle_expiry: std::time::Duration,
    pub watch: bool,
    /// The PostgreSQL model registry to read the serving version from at start-up (empty:
    /// the models directory's registry.json).
    #[serde(default)]
    pub registry_url: String,
}

fn default_idle_expiry() -> std::time::Duration {
    std::time::Duration::from_secs(48 * 3600)
}

fn default_neural() -> Vec<String> {
    vec!["lstm".into(), "gru".into()]
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
}

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let c: Config = load_config(DEFAULTS, file, ENV_PREFIX)?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.common().validate()?;
        let t = &self.topics;
        if t.input == t.output || t.output == t.dlq || t.models == t.input || t.models == t.output {
            return Err(ConfigError::Invalid(
                "key `topics`: input, output, models and dlq must be different topics".into(),
            ));
        }
        if self.models.threads == 0 || self.models.threads > 256 {
            return Err(ConfigError::Invalid(format!(
                "key `models.threads` must be between 1 and 256, got {}",
                self.models.threads
            )));
        }
        for (i, n) in self.models.neural.iter().enumerate() {
            if !["lstm", "gru"].contains(&n.as_str()) || self.models.neural[..i].contains(n) {
                return Err(ConfigError::Invalid(format!(
                    "key `models.neural`: `{n}` is not one of lstm, gru or is listed twice"
                )));
            }
        }
        if self.models.family.is_empty() {
            return Err(ConfigError::Invalid("key `models.family` must not be empty".into()));
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

#[cfg(test)]
mod tests {
    use super::*;


    /// The configuration the Kubernetes manifests mount (k8s/base/config/scorer.toml) loads and
    /// validates over the defaults; cli/tests/deploy.rs checks its port against the Deployment's.
    #[test]
    fn the_kubernetes_config_map_is_a_valid_configuration() {
        let path = headroom_testkit::repo_root().join("k8s/base/config/scorer.toml");
        let c: Config = load_config(DEFAULTS, Some(&path), "HEADROOM_SCORER_K8S__").expect("k8s/base/config/scorer.toml");
        c.validate().expect("k8s/base/config/scorer.toml is valid");
        assert_eq!(c.kafka.brokers, "kafka:9092");
        assert_eq!(c.http.listen, "0.0.0.0:9465");
        assert!(matches!(c.log.format, headroom_runtime::config::LogFormat::Json));
        assert_eq!(c.models.dir, std::path::PathBuf::from("/models"));
    }

    #[test]
    fn defaults_load_and_bad_values_name_the_key() {
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_SCORER_TEST1__").unwrap();
        c.validate().unwrap();
        std::env::set_var("HEADROOM_SCORER_TEST2__MODELS__THREADS", "0");
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_SCORER_TEST2__").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("models.threads"));
        std::env::set_var("HEADROOM_SCORER_TEST3__MODELS__WATCH", "sometimes");
        let e = load_config::<Config>(DEFAULTS, None, "HEADROOM_SCORER_TEST3__").unwrap_err();
        assert!(e.to_string().contains("models.watch"), "{e}");
        std::env::set_var("HEADROOM_SCORER_TEST4__MODELS__NEURAL", "[\"lstm\",\"transformer\"]");
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_SCORER_TEST4__").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("models.neural"));
    }
}

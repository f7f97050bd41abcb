use std::path::Path;

use headroom_features::FeatureConfig;
use headroom_runtime::config::{HttpConfig, LogConfig, RegistryConfig, RuntimeConfig};
use headroom_runtime::{load_config, CommonConfig, ConfigError, KafkaConfig};
use headroom_schemas::ValidationLimits;
use serde::{Deserialize, Serialize};

pub const DEFAULTS: &str = include_str!("../default.toml");
pub const ENV_PREFIX: &str = "HEADROOM_FEATURIZER__";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub input: String,
    pub output: String,
    pub dlq: String,
}

/// The featurizer's configuration: the common sections plus its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    pub schema_registry: RegistryConfig,
    pub topics: Topics,
    pub features: FeatureConfig,
    pub validation: ValidationLimits,
}

impl Config {
    /// Defaults, then `file`, then `HEADROOM_FEATURIZER__*` variables; validated.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let c: Config = load_config(DEFAULTS, file, ENV_PREFIX)?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.common().validate()?;
        self.features
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.topics.input == self.topics.output || self.topics.output == self.topics.dlq {
            return Err(ConfigError::Invalid(
                "key `topics`: input, output and dlq must be different topics".into(),
            ));
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


    /// The configuration the Kubernetes manifests mount (k8s/base/config/featurizer.toml) loads and
    /// validates over the defaults; cli/tests/deploy.rs checks its port against the Deployment's.
    #[test]
    fn the_kubernetes_config_map_is_a_valid_configuration() {
        let path = headroom_testkit::repo_root().join("k8s/base/config/featurizer.toml");
        let c: Config = load_config(DEFAULTS, Some(&path), "HEADROOM_FEATURIZER_K8S__").expect("k8s/base/config/featurizer.toml");
        c.validate().expect("k8s/base/config/featurizer.toml is valid");
        assert_eq!(c.kafka.brokers, "kafka:9092");
        assert_eq!(c.http.listen, "0.0.0.0:9464");
        assert!(matches!(c.log.format, headroom_runtime::config::LogFormat::Json));
    }

    #[test]
    fn defaults_load() {
        let c: Config =
            load_config(DEFAULTS, None, "HEADROOM_FEATURIZER_TEST1__").expect("defaults");
        c.validate().expect("valid");
        assert_eq!(c.features, FeatureConfig::default());
        assert_eq!(c.validation, ValidationLimits::default());
    }

    #[test]
    fn bad_config_names_the_key() {
        std::env::set_var("HEADROOM_FEATURIZER_TEST2__FEATURES__LAGS", "0");
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_FEATURIZER_TEST2__").expect("parses");
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("features.lags"));
        std::env::set_var(
            "HEADROOM_FEATURIZER_TEST3__FEATURES__SAMPLING_INTERVAL",
            "often",
        );
        let err = load_config::<Config>(DEFAULTS, None, "HEADROOM_FEATURIZER_TEST3__").unwrap_err();
        assert!(
            err.to_string().contains("features.sampling_interval"),
            "{err}"
        );
    }
}

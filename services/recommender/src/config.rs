use std::path::Path;
use std::time::Duration;

use headroom_policy::{PolicyTable, Pricing};
use headroom_runtime::config::{HttpConfig, LogConfig, RegistryConfig, RuntimeConfig};
use headroom_runtime::{load_config, CommonConfig, ConfigError, KafkaConfig};
use serde::{Deserialize, Serialize};

/// The service's own defaults, then the policy's (one source for the service and the backtest).
pub const DEFAULTS: &str = concat!(
    include_str!("../default.toml"),
    "\n",
    include_str!("../../../crates/policy/default.toml")
);
pub const ENV_PREFIX: &str = "HEADROOM_RECOMMENDER__";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub input: String,
    pub output: String,
    pub dlq: String,
}

/// Which HOLD decisions are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishHolds {
    All,
    BadInput,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    pub holds: PublishHolds,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(with = "humantime_serde")]
    pub idle_expiry: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActuationMode {
    RecommendOnly,
    Kubernetes,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actuation {
    pub mode: ActuationMode,
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
    pub publish: Publish,
    pub state: State,
    pub actuation: Actuation,
    pub policy: PolicyTable,
    pub pricing: Pricing,
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
        if t.input == t.output || t.output == t.dlq || t.input == t.dlq {
            return Err(ConfigError::Invalid(
                "key `topics`: input, output and dlq must be different topics".into(),
            ));
        }
        if self.state.idle_expiry < Duration::from_secs(60) {
            return Err(ConfigError::Invalid(
                "key `state.idle_expiry` must be at least 1m".into(),
            ));
        }
        if self.actuation.mode == ActuationMode::Kubernetes {
            return Err(ConfigError::Invalid(
                "key `actuation.mode`: \"kubernetes\" is not implemented in this version; use \"recommend_only\"".into(),
            ));
        }
        self.policy
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.pricing
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
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


    /// The configuration the Kubernetes manifests mount (k8s/base/config/recommender.toml) loads and
    /// validates over the defaults; cli/tests/deploy.rs checks its port against the Deployment's.
    #[test]
    fn the_kubernetes_config_map_is_a_valid_configuration() {
        let path = headroom_testkit::repo_root().join("k8s/base/config/recommender.toml");
        let c: Config = load_config(DEFAULTS, Some(&path), "HEADROOM_RECOMMENDER_K8S__").expect("k8s/base/config/recommender.toml");
        c.validate().expect("k8s/base/config/recommender.toml is valid");
        assert_eq!(c.kafka.brokers, "kafka:9092");
        assert_eq!(c.http.listen, "0.0.0.0:9467");
        assert!(matches!(c.log.format, headroom_runtime::config::LogFormat::Json));
    }

    #[test]
    fn defaults_load_and_bad_values_name_the_key() {
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_RECOMMENDER_TEST1__").unwrap();
        c.validate().unwrap();
        assert_eq!(c.policy.default.target_utilization, 0.7);
        assert!(c.pricing.default.is_some());

        std::env::set_var(
            "HEADROOM_RECOMMENDER_TEST2__POLICY__DEFAULT__TARGET_UTILIZATION",
            "1.7",
        );
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_RECOMMENDER_TEST2__").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("policy.default.target_utilization"), "{e}");

        std::env::set_var("HEADROOM_RECOMMENDER_TEST3__PUBLISH__HOLDS", "some");
        let e = load_config::<Config>(DEFAULTS, None, "HEADROOM_RECOMMENDER_TEST3__")
            .unwrap_err()
            .to_string();
        assert!(e.contains("publish.holds"), "{e}");

        std::env::set_var(
            "HEADROOM_RECOMMENDER_TEST4__POLICY__DEFAULT__SCALE_IN_COOLDOWN",
            "soon",
        );
        let e = load_config::<Config>(DEFAULTS, None, "HEADROOM_RECOMMENDER_TEST4__")
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy.default.scale_in_cooldown"), "{e}");

        std::env::set_var("HEADROOM_RECOMMENDER_TEST5__ACTUATION__MODE", "kubernetes");
        let c: Config = load_config(DEFAULTS, None, "HEADROOM_RECOMMENDER_TEST5__").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("actuation.mode"));
    }
}

//! The policy's settings: one default, overrides per service and/or cluster, and the pricing
//! table. Durations are strings like `"5m"`; unknown keys are refused by the services' loaders.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("key `{key}`: {detail}")]
    Invalid { key: String, detail: String },
}

fn invalid(key: impl Into<String>, detail: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        key: key.into(),
        detail: detail.into(),
    }
}

/// Which kind of change the policy recommends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    /// Replicas when the entity reports them, requests otherwise.
    Auto,
    /// Change the replica count; per-replica size stays.
    Horizontal,
    /// Change CPU / memory requests (a VM's or a container's size).
    Vertical,
}

/// The resolved policy for one entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Utilization the provisioned CPU should run at, at the headroom quantile.
    pub target_utilization: f64,
    /// The same for memory.
    pub mem_target_utilization: f64,
    /// Quantile of the forecast demand that is provisioned for (0.5 ..= 0.999).
    pub headroom_quantile: f64,
    /// How long a change takes to be in effect: horizons shorter than this are ignored.
    #[serde(with = "humantime_serde")]
    pub lead_time: Duration,
    /// The longest horizon provisioned for.
    #[serde(with = "humantime_serde")]
    pub lookahead: Duration,
    pub scaling: Scaling,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub min_cpu_cores: f64,
    pub max_cpu_cores: f64,
    /// Requests are rounded up to a multiple of this.
    pub cpu_step: f64,
    pub min_mem_gib: f64,
    pub max_mem_gib: f64,
    pub mem_step_gib: f64,
    /// Relative change below which capacity is left as it is (0.1 = 10 %).
    pub hysteresis: f64,
    #[serde(with = "humantime_serde")]
    pub scale_out_cooldown: Duration,
    #[serde(with = "humantime_serde")]
    pub scale_in_cooldown: Duration,
    /// Scale-in never goes below the peak demand of this trailing window (÷ target).
    #[serde(with = "humantime_serde")]
    pub scale_in_window: Duration,
    /// Clusters this entity may move to when they are cheaper (empty: never rebalance).
    #[serde(default)]
    pub rebalance_to: Vec<String>,
    /// Least relative saving worth a move (0.15 = 15 %).
    #[serde(default = "default_min_saving")]
    pub rebalance_min_saving: f64,
    /// A move is proposed at most once per entity per window of this length (aligned on
    /// event time, so a replay proposes the same moves).
    #[serde(default = "default_rebalance_interval", with = "humantime_serde")]
    pub rebalance_interval: Duration,
}

fn default_min_saving() -> f64 {
    0.15
}
fn default_rebalance_interval() -> Duration {
    Duration::from_secs(6 * 3600)
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            target_utilization: 0.7,
            mem_target_utilization: 0.85,
            headroom_quantile: 0.9,
            lead_time: Duration::from_secs(300),
            lookahead: Duration::from_secs(1800),
            scaling: Scaling::Auto,
            min_replicas: 1,
            max_replicas: 100,
            min_cpu_cores: 0.25,
            max_cpu_cores: 64.0,
            cpu_step: 0.25,
            min_mem_gib: 0.25,
            max_mem_gib: 512.0,
            mem_step_gib: 0.25,
            hysteresis: 0.1,
            scale_out_cooldown: Duration::from_secs(300),
            scale_in_cooldown: Duration::from_secs(1800),
            scale_in_window: Duration::from_secs(3600),
            rebalance_to: Vec::new(),
            rebalance_min_saving: default_min_saving(),
            rebalance_interval: default_rebalance_interval(),
        }
    }
}

impl Policy {
    pub fn validate(&self, at: &str) -> Result<(), PolicyError> {
        let k = |name: &str| format!("{at}.{name}");
        let frac = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(invalid(k(name), format!("must be in (0, 1], got {v}")))
            }
        };
        frac("target_utilization", self.target_utilization)?;
        frac("mem_target_utilization", self.mem_target_utilization)?;
        if !(0.5..=0.999).contains(&self.headroom_quantile) {
            return Err(invalid(
                k("headroom_quantile"),
                format!("must be in [0.5, 0.999], got {}", self.headroom_quantile),
            ));
        }
        if self.lead_time > self.lookahead {
            return Err(invalid(
                k("lead_time"),
                "must not be longer than `lookahead`",
            ));
        }
        if self.min_replicas == 0 || self.min_replicas > self.max_replicas {
            return Err(invalid(
                k("min_replicas"),
                "must be at least 1 and at most `max_replicas`",
            ));
        }
        for (name, lo, hi, step) in [
            (
                "min_cpu_cores",
                self.min_cpu_cores,
                self.max_cpu_cores,
                self.cpu_step,
            ),
            (
                "min_mem_gib",
                self.min_mem_gib,
                self.max_mem_gib,
                self.mem_step_gib,
            ),
        ] {
            if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
                return Err(invalid(
                    k(name),
                    format!("must be positive and at most the maximum, got {lo} (max {hi})"),
                ));
            }
            if !(step.is_finite() && step > 0.0) {
                return Err(invalid(
                    k(name),
                    format!("its step must be positive, got {step}"),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.hysteresis) {
            return Err(invalid(
                k("hysteresis"),
                format!("must be in [0, 1), got {}", self.hysteresis),
            ));
        }
        if !(0.0..1.0).contains(&self.rebalance_min_saving) {
            return Err(invalid(k("rebalance_min_saving"), "must be in [0, 1)"));
        }
        if self.rebalance_interval.is_zero() {
            return Err(invalid(k("rebalance_interval"), "must be positive"));
        }
        Ok(())
    }
}

/// Settings that differ for a service, a cluster, or one service in one cluster. Every field
/// but the match is optional; the most specific matching override wins per field
/// (service+cluster over service over cluster over the default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    pub service: Option<String>,
    pub cluster: Option<String>,
    pub target_utilization: Option<f64>,
    pub mem_target_utilization: Option<f64>,
    pub headroom_quantile: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub lead_time: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub lookahead: Option<Duration>,
    pub scaling: Option<Scaling>,
    pub min_replicas: Option<u32>,
    pub max_replicas: Option<u32>,
    pub min_cpu_cores: Option<f64>,
    pub max_cpu_cores: Option<f64>,
    pub min_mem_gib: Option<f64>,
    pub max_mem_gib: Option<f64>,
    pub hysteresis: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub scale_out_cooldown: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub scale_in_cooldown: Option<Duration>,
    pub rebalance_to: Option<Vec<String>>,
}

impl PolicyOverride {
    fn specificity(&self) -> u8 {
        u8::from(self.service.is_some()) * 2 + u8::from(self.cluster.is_some())
    }

    fn matches(&self, service: Option<&str>, cluster: Option<&str>) -> bool {
        let ok = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == have)
        };
        ok(&self.service, service) && ok(&self.cluster, cluster)
    }

    fn apply(&self, p: &mut Policy) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { p.$f = v.clone(); } )* };
        }
        set!(
            target_utilization,
            mem_target_utilization,
            headroom_quantile,
            lead_time,
            lookahead,
            scaling,
            min_replicas,
            max_replicas,
            min_cpu_cores,
            max_cpu_cores,
            min_mem_gib,
            max_mem_gib,
            hysteresis,
            scale_out_cooldown,
            scale_in_cooldown,
            rebalance_to
        );
    }
}

/// The default policy and its overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyTable {
    /// Named in every recommendation (`policy_version`), with the settings' fingerprint.
    pub version: String,
    pub default: Policy,
    #[serde(default, rename = "override")]
    pub overrides: Vec<PolicyOverride>,
}

impl PolicyTable {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.version.is_empty() {
            return Err(invalid("policy.version", "must not be empty"));
        }
        self.default.validate("policy.default")?;
        for (i, o) in self.overrides.iter().enumerate() {
            if o.service.is_none() && o.cluster.is_none() {
                return Err(invalid(
                    format!("policy.override[{i}]"),
                    "needs `service`, `cluster` or both",
                ));
            }
            let mut p = self.default.clone();
            o.apply(&mut p);
            p.validate(&format!("policy.override[{i}]"))?;
        }
        Ok(())
    }

    /// The policy of an entity of `service` in `cluster`.
    pub fn resolve(&self, service: Option<&str>, cluster: Option<&str>) -> Policy {
        let mut p = self.default.clone();
        let mut matching: Vec<&PolicyOverride> = self
            .overrides
            .iter()
            .filter(|o| o.matches(service, cluster))
            .collect();
        // Least specific first, so that more specific ones overwrite.
        matching.sort_by_key(|o| o.specificity());
        for o in matching {
            o.apply(&mut p);
        }
        p
    }
}

/// Prices of provisioned capacity, USD per hour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub vcpu_hour: f64,
    pub gib_hour: f64,
}

impl Price {
    pub fn per_hour(&self, cpu_cores: f64, mem_gib: f64) -> f64 {
        cpu_cores * self.vcpu_hour + mem_gib * self.gib_hour
    }
}

/// The pricing table: per cluster, with a default for clusters it does not list. Without a
/// default, an entity of an unlisted cluster is priced from its own reported `cost_per_hour`
/// when it has one, and held with `unknown_pricing` otherwise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    pub default: Option<Price>,
    #[serde(default)]
    pub clusters: BTreeMap<String, Price>,
}

impl Pricing {
    pub fn validate(&self) -> Result<(), PolicyError> {
        let check = |key: String, p: &Price| {
            if [p.vcpu_hour, p.gib_hour]
                .iter()
                .all(|v| v.is_finite() && *v >= 0.0)
            {
                Ok(())
            } else {
                Err(invalid(key, "prices must be finite and not negative"))
            }
        };
        if let Some(p) = &self.default {
            check("pricing.default".into(), p)?;
        }
        for (c, p) in &self.clusters {
            check(format!("pricing.clusters.{c}"), p)?;
        }
        Ok(())
    }

    pub fn for_cluster(&self, cluster: Option<&str>) -> Option<Price> {
        cluster
            .and_then(|c| self.clusters.get(c).copied())
            .or(self.default)
    }
}

/// What a rebalance proposal needs: the candidate clusters and their prices.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebalance {
    pub to_cluster: String,
    pub saving_per_hour: f64,
}

/// The embedded defaults of `[policy]` and `[pricing]`.
pub const DEFAULTS: &str = include_str!("../default.toml");

/// A policy file: `[policy]` (the table) and `[pricing]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub policy: PolicyTable,
    pub pricing: Pricing,
}

impl PolicyFile {
    /// The defaults, with `overlay` (the text of a TOML file of the same shape) merged over
    /// them key by key.
    pub fn load(overlay: Option<&str>) -> Result<PolicyFile, PolicyError> {
        let mut base: toml::Table = DEFAULTS
            .parse()
            .map_err(|e: toml::de::Error| invalid("defaults", e.to_string()))?;
        if let Some(text) = overlay {
            let over: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| invalid("policy file", e.to_string()))?;
            merge(&mut base, over);
        }
        let f: PolicyFile = toml::Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| invalid("policy file", e.to_string()))?;
        f.policy.validate()?;
        f.pricing.validate()?;
        Ok(f)
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

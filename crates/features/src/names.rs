//! The ordered list of feature names and its identity.

use crate::FeatureConfig;

/// The metrics that get the full set of window and lag features, in vector order.
pub const METRICS: [&str; 4] = ["cpu", "mem", "net", "disk"];

pub(crate) const TIME_FEATURES: [&str; 7] = [
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "month_sin",
    "month_cos",
    "is_weekend",
];
pub(crate) const EXTRA_FEATURES: [&str; 7] = [
    "mem_cpu_ratio",
    "cost_per_used_core",
    "net_per_replica",
    "cpu_cores",
    "mem_gib",
    "replicas",
    "cost_per_hour",
];

/// Where each feature sits in the vector for a given configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureLayout {
    names: Vec<String>,
    id: String,
    pub(crate) windows: usize,
    pub(crate) lags: usize,
}

impl FeatureLayout {
    pub fn new(cfg: &FeatureConfig) -> FeatureLayout {
        let mut names = Vec::new();
        for m in METRICS {
            names.push(format!("{m}_now"));
            for w in &cfg.windows {
                let w = humantime::format_duration(*w).to_string().replace(' ', "");
                for stat in ["mean", "std", "min", "max"] {
                    names.push(format!("{m}_{stat}_{w}"));
                }
            }
            for k in 1..=cfg.lags {
                names.push(format!("{m}_lag_{k}"));
            }
            names.push(format!("{m}_imputed"));
        }
        names.extend(TIME_FEATURES.iter().map(|s| (*s).to_owned()));
        names.extend(EXTRA_FEATURES.iter().map(|s| (*s).to_owned()));
        let mut hashed = names.join(",");
        hashed.push_str(&format!("|interval={}ms", cfg.interval_ms()));
        let id = format!("fs1-{:016x}", xxhash_rust::xxh3::xxh3_64(hashed.as_bytes()));
        FeatureLayout {
            names,
            id,
            windows: cfg.windows.len(),
            lags: cfg.lags as usize,
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Identity of the ordered names and the grid: models refuse vectors of another id.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    pub(crate) fn per_metric(&self) -> usize {
        2 + 4 * self.windows + self.lags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout() {
        let l = FeatureLayout::new(&FeatureConfig::default());
        assert_eq!(l.len(), 4 * (2 + 16 + 24) + 7 + 7);
        assert_eq!(l.names()[0], "cpu_now");
        assert_eq!(l.names()[1], "cpu_mean_15m");
        assert_eq!(l.index_of("mem_lag_24"), Some(l.per_metric() + 1 + 16 + 23));
        assert!(l.id().starts_with("fs1-"));
        let other = FeatureLayout::new(&FeatureConfig {
            lags: 12,
            ..FeatureConfig::default()
        });
        assert_ne!(l.id(), other.id());
    }
}

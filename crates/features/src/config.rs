use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Configuration of the feature computation. Part of the feature set identity: two
/// configurations that produce different vectors have different [`crate::FeatureLayout::id`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureConfig {
    /// Slot width of the event-time grid (the entities' sampling interval).
    #[serde(with = "humantime_serde")]
    pub sampling_interval: Duration,
    /// Rolling windows (mean, std, min, max of each metric).
    #[serde(with = "duration_list")]
    pub windows: Vec<Duration>,
    /// Lags 1..=lags (in slots) of each metric.
    pub lags: u32,
    /// How far behind an entity's newest event another event may arrive and still count.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// An entity with no event for this long (in partition event time) is dropped from memory.
    #[serde(with = "humantime_serde")]
    pub idle_expiry: Duration,
}

mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| humantime::format_duration(*d).to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let raw: Vec<String> = Vec::deserialize(d)?;
        raw.iter()
            .map(|s| {
                humantime::parse_duration(s)
                    .map_err(|e| serde::de::Error::custom(format!("window `{s}`: {e}")))
            })
            .collect()
    }
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            sampling_interval: Duration::from_secs(300),
            windows: vec![
                Duration::from_secs(15 * 60),
                Duration::from_secs(3600),
                Duration::from_secs(6 * 3600),
                Duration::from_secs(24 * 3600),
            ],
            lags: 24,
            allowed_lateness: Duration::from_secs(30 * 60),
            idle_expiry: Duration::from_secs(48 * 3600),
        }
    }
}

/// A configuration that cannot work, naming the offending key.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("features.sampling_interval must be between 1s and 1d, got {0:?}")]
    Interval(Duration),
    #[error("features.windows: window {0:?} is not a positive multiple of sampling_interval")]
    Window(Duration),
    #[error("features.windows must list 1 to 8 windows")]
    WindowCount,
    #[error("features.lags must be between 1 and 512, got {0}")]
    Lags(u32),
    #[error("features.allowed_lateness {0:?} must be shorter than the longest window")]
    Lateness(Duration),
    #[error(
        "features.idle_expiry {0:?} must be at least the longest window plus the allowed lateness"
    )]
    IdleExpiry(Duration),
}

impl FeatureConfig {
    pub fn interval_ms(&self) -> i64 {
        self.sampling_interval.as_millis() as i64
    }

    pub fn window_slots(&self) -> Vec<usize> {
        let iv = self.sampling_interval.as_millis();
        self.windows
            .iter()
            .map(|w| (w.as_millis() / iv) as usize)
            .collect()
    }

    pub fn lateness_slots(&self) -> i64 {
        (self.allowed_lateness.as_millis() / self.sampling_interval.as_millis()) as i64
    }

    /// Ring capacity in slots: the longest window, the lags plus the current slot, and the
    /// lateness, rounded so that the ring never needs more.
    pub fn capacity(&self) -> usize {
        let longest = self.window_slots().into_iter().max().unwrap_or(1);
        let need = longest
            .max(self.lags as usize + 1)
            .max(self.lateness_slots() as usize + 1);
        need.div_ceil(crate::state::BLOCK) * crate::state::BLOCK
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let iv = self.sampling_interval;
        if iv < Duration::from_secs(1) || iv > Duration::from_secs(86_400) {
            return Err(ConfigError::Interval(iv));
        }
        if self.windows.is_empty() || self.windows.len() > 8 {
            return Err(ConfigError::WindowCount);
        }
        for w in &self.windows {
            if w.is_zero()
                || w.as_millis() % iv.as_millis() != 0
                || w.as_millis() / iv.as_millis() > 4096
            {
                return Err(ConfigError::Window(*w));
            }
        }
        if self.lags == 0 || self.lags > 512 {
            return Err(ConfigError::Lags(self.lags));
        }
        let longest = self.windows.iter().max().copied().unwrap_or_default();
        if self.allowed_lateness >= longest {
            return Err(ConfigError::Lateness(self.allowed_lateness));
        }
        if self.idle_expiry < longest + self.allowed_lateness {
            return Err(ConfigError::IdleExpiry(self.idle_expiry));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = FeatureConfig::default();
        c.validate().expect("valid");
        assert_eq!(c.window_slots(), vec![3, 12, 72, 288]);
        assert_eq!(c.capacity(), 288);
        assert_eq!(c.lateness_slots(), 6);
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut c = FeatureConfig {
            lags: 0,
            ..FeatureConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("features.lags"));
        c.lags = 24;
        c.windows.push(Duration::from_secs(7 * 60));
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("features.windows"));
    }

    #[test]
    fn parses_duration_strings() {
        let c: FeatureConfig = toml::from_str(
            "sampling_interval = \"1m\"\nwindows = [\"5m\", \"1h\"]\nallowed_lateness = \"2m\"",
        )
        .expect("toml");
        assert_eq!(c.window_slots(), vec![5, 60]);
        assert_eq!(c.lateness_slots(), 2);
    }
}

//! Detector settings (the drift monitor's `[features]` and `[model_error]` sections).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeatureDrift {
    pub enabled: bool,
    /// Tumbling event-time window over which live distributions are collected.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Windows with fewer finite values of a feature are not judged.
    pub min_samples: u64,
    /// PSI at or above which a window breaches (with the KS test agreeing)…
    pub psi_warning: f64,
    /// …and at or above which the alert is CRITICAL.
    pub psi_critical: f64,
    /// The KS test's p-value must be below this too (guards small windows).
    pub ks_alpha: f64,
    /// Features to watch; empty watches every feature of the vector.
    pub features: Vec<String>,
    /// Wall-clock time after which a partition that delivers nothing stops holding windows
    /// open (see [`crate::FeatureMonitor`]).
    #[serde(with = "humantime_serde")]
    pub idle_partition_grace: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelError {
    pub enabled: bool,
    /// Errors per entity and head before the detector may fire (and, for versions without
    /// validation errors, over which the entity's reference error is measured).
    pub warmup: u64,
    /// Errors after the warm-up over which the entity's own baseline error is measured. The
    /// reference error of a head is the larger of the version's validation MAE and this
    /// baseline, so that an entity whose errors are naturally larger than the fleet's (a big
    /// network talker, a spiky service) is judged against itself.
    pub baseline: u64,
    /// A Page-Hinkley alarm counts for this many errors: the alert opens when the live ratio
    /// reaches `ratio_warning` within them (the live mean lags the change point).
    pub alarm_memory: u64,
    /// Page-Hinkley δ and λ, on the error in units of the reference error.
    pub ph_delta: f64,
    pub ph_lambda: f64,
    /// Half-life (in errors) of the live mean absolute error.
    pub ewma_half_life: f64,
    /// An alarm opens an alert when live MAE / reference MAE is at least this…
    pub ratio_warning: f64,
    /// …CRITICAL from this ratio…
    pub ratio_critical: f64,
    /// …and the alert resolves when the ratio falls below this.
    pub resolve_ratio: f64,
    /// While an alert is open, an UPDATE at most this often (event time).
    #[serde(with = "humantime_serde")]
    pub update_interval: Duration,
    /// Forecasts awaiting their actuals, per entity.
    pub max_pending: usize,
    /// Entities without a forecast for this long (event time) are forgotten.
    #[serde(with = "humantime_serde")]
    pub idle_expiry: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    pub features: FeatureDrift,
    pub model_error: ModelError,
}

impl DriftConfig {
    /// Checks every value; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        let f = &self.features;
        let m = &self.model_error;
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("key `{key}` must be a positive number, got {v}"))
            }
        };
        if f.window < Duration::from_secs(60) {
            return Err("key `features.window` must be at least 1m".into());
        }
        positive("features.psi_warning", f.psi_warning)?;
        positive("features.psi_critical", f.psi_critical)?;
        if f.psi_critical < f.psi_warning {
            return Err("key `features.psi_critical` must be at least `features.psi_warning`".into());
        }
        if !(f.ks_alpha > 0.0 && f.ks_alpha <= 1.0) {
            return Err(format!("key `features.ks_alpha` must be in (0, 1], got {}", f.ks_alpha));
        }
        if f.min_samples == 0 {
            return Err("key `features.min_samples` must be at least 1".into());
        }
        if !(m.ph_delta.is_finite() && m.ph_delta >= 0.0) {
            return Err(format!("key `model_error.ph_delta` must be a number >= 0, got {}", m.ph_delta));
        }
        positive("model_error.ph_lambda", m.ph_lambda)?;
        positive("model_error.ewma_half_life", m.ewma_half_life)?;
        positive("model_error.ratio_warning", m.ratio_warning)?;
        positive("model_error.resolve_ratio", m.resolve_ratio)?;
        if m.ratio_critical < m.ratio_warning {
            return Err("key `model_error.ratio_critical` must be at least `model_error.ratio_warning`".into());
        }
        if m.resolve_ratio > m.ratio_warning {
            return Err("key `model_error.resolve_ratio` must not exceed `model_error.ratio_warning`".into());
        }
        if m.max_pending == 0 || m.max_pending > 10_000 {
            return Err(format!("key `model_error.max_pending` must be in 1..=10000, got {}", m.max_pending));
        }
        if m.update_interval < Duration::from_secs(1) {
            return Err("key `model_error.update_interval` must be at least 1s".into());
        }
        if m.idle_expiry < Duration::from_secs(60) {
            return Err("key `model_error.idle_expiry` must be at least 1m".into());
        }
        Ok(())
    }
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            features: FeatureDrift {
                enabled: true,
                window: Duration::from_secs(3600),
                min_samples: 200,
                psi_warning: 0.25,
                psi_critical: 0.5,
                ks_alpha: 0.001,
                features: Vec::new(),
                idle_partition_grace: Duration::from_secs(30),
            },
            model_error: ModelError {
                enabled: true,
                warmup: 72,
                baseline: 288,
                alarm_memory: 288,
                ph_delta: 0.5,
                ph_lambda: 20.0,
                ewma_half_life: 36.0,
                ratio_warning: 3.5,
                ratio_critical: 8.0,
                resolve_ratio: 2.0,
                update_interval: Duration::from_secs(900),
                max_pending: 256,
                idle_expiry: Duration::from_secs(48 * 3600),
            },
        }
    }
}

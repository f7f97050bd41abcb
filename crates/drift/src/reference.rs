//! What the drift monitor compares against, read from a model version's manifest (the file
//! `headroom-train` writes; only the fields needed here, so this crate does not link XGBoost).

use std::path::Path;

use rustc_hash::FxHashMap;
use serde::Deserialize;

/// One feature's training distribution: decile edges and the share of rows in each bin.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct FeatureReference {
    pub feature: String,
    pub edges: Vec<f32>,
    pub shares: Vec<f32>,
    #[serde(default)]
    pub missing_share: f32,
}

impl FeatureReference {
    /// The bin of `x` (bins are `(-inf, e0], (e0, e1], …, (e_last, inf)`).
    pub fn bin(&self, x: f32) -> usize {
        self.edges.partition_point(|e| *e < x)
    }
}

#[derive(Debug, Deserialize)]
struct ManifestHead {
    version: String,
    family: String,
    feature_schema: String,
    #[serde(default)]
    feature_names: Vec<String>,
    interval_ms: i64,
    #[serde(default)]
    training_rows: usize,
    #[serde(default)]
    reference: Vec<FeatureReference>,
    #[serde(default)]
    metrics: Option<MetricsHead>,
}

#[derive(Debug, Deserialize)]
struct MetricsHead {
    #[serde(default)]
    rows: Vec<RowHead>,
}

#[derive(Debug, Deserialize)]
struct RowHead {
    model: String,
    target: String,
    horizon_slots: usize,
    #[serde(default)]
    mae: Option<f64>,
}

/// A serving version's references: feature distributions and validation errors.
#[derive(Debug, Clone)]
pub struct ModelReference {
    pub version: String,
    pub family: String,
    /// The feature set (`features.feature_set`) the version was trained on.
    pub feature_schema: String,
    /// The model inputs in order: the featurizer's vector, then the derived inputs.
    pub feature_names: Vec<String>,
    pub interval_ms: i64,
    /// Rows the feature references were computed from (at most 100,000: a sample).
    pub reference_rows: u64,
    pub features: Vec<FeatureReference>,
    /// Validation (backtest) MAE of this version per `(target, horizon_slots)`, when the version
    /// was backtested.
    pub validation_mae: FxHashMap<(String, usize), f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("model version {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("model version {dir}: manifest.json: {source}")]
    Manifest {
        dir: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("model version {dir}: {detail}")]
    Invalid { dir: String, detail: String },
}

impl ModelReference {
    pub fn from_manifest_json(bytes: &[u8], dir: &str) -> Result<ModelReference, ReferenceError> {
        let m: ManifestHead = serde_json::from_slice(bytes).map_err(|source| ReferenceError::Manifest {
            dir: dir.to_owned(),
            source,
        })?;
        if m.interval_ms <= 0 {
            return Err(ReferenceError::Invalid {
                dir: dir.to_owned(),
                detail: format!("interval_ms {} is not positive", m.interval_ms),
            });
        }
        for f in &m.reference {
            if f.shares.len() != f.edges.len() + 1 {
                return Err(ReferenceError::Invalid {
                    dir: dir.to_owned(),
                    detail: format!("reference of {}: {} shares for {} edges", f.feature, f.shares.len(), f.edges.len()),
                });
            }
        }
        let validation_mae = m
            .metrics
            .map(|x| x.rows)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.model == m.family)
            .filter_map(|r| r.mae.filter(|v| v.is_finite() && *v > 0.0).map(|v| ((r.target, r.horizon_slots), v)))
            .collect();
        Ok(ModelReference {
            version: m.version,
            family: m.family,
            feature_schema: m.feature_schema,
            feature_names: m.feature_names,
            interval_ms: m.interval_ms,
            reference_rows: m.training_rows.clamp(1, 100_000) as u64,
            features: m.reference,
            validation_mae,
        })
    }

    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<ModelReference, ReferenceError> {
        let d = dir.display().to_string();
        let bytes = std::fs::read(dir.join("manifest.json")).map_err(|source| ReferenceError::Io { dir: d.clone(), source })?;
        Self::from_manifest_json(&bytes, &d)
    }

    /// Reads the version `registry.json` under `models_dir` names as serving for `family`.
    pub fn load_serving(models_dir: &Path, family: &str) -> Result<ModelReference, ReferenceError> {
        #[derive(Deserialize)]
        struct Registry {
            #[serde(default)]
            serving: std::collections::BTreeMap<String, String>,
        }
        let path = models_dir.join("registry.json");
        let d = models_dir.display().to_string();
        let bytes = std::fs::read(&path).map_err(|source| ReferenceError::Io { dir: d.clone(), source })?;
        let reg: Registry = serde_json::from_slice(&bytes).map_err(|source| ReferenceError::Manifest { dir: d.clone(), source })?;
        let version = reg.serving.get(family).ok_or_else(|| ReferenceError::Invalid {
            dir: d.clone(),
            detail: format!("registry.json names no serving `{family}` version: train and promote one first"),
        })?;
        Self::load(&models_dir.join(version))
    }
}

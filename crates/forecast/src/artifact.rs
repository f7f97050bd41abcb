//! Versioned model artifacts on the local filesystem.
//!
//! ```text
//! <root>/<version>/manifest.json      what the version is: feature schema, targets, horizons,
//!                                     quantiles, training window, metrics, reference
//!                                     feature distributions, status
//! <root>/<version>/xgb-cpu-h3.ubj     XGBoost's own serialisation, one file per model
//! <root>/<version>/peak-classifier.ubj
//! <root>/<version>/lstm.json, lstm.mpk  a neural model (headroom-neural): its description and
//!                                     burn's record of its weights; gru.json, gru.mpk likewise
//! ```
//!
//! A version is immutable once written (the directory is written under a temporary name and
//! renamed). Loading checks that every file is present and that the feature schema is the one
//! the caller computes: a model is never fed vectors of another layout.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backtest::{Backtest, ModelSet};
use crate::dataset::{Dataset, Rows};
use crate::xgb::ffi::InplaceBooster;

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: u32 = 1;

/// Lifecycle of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Candidate,
    Serving,
    Retired,
}

/// One feature's reference distribution on the training rows: decile edges and the share of
/// rows between consecutive edges (for PSI drift detection against live features).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reference {
    pub feature: String,
    pub edges: Vec<f32>,
    pub shares: Vec<f32>,
    pub missing_share: f32,
}

/// One model file of a version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelFile {
    /// `regressor` or `classifier`.
    pub kind: String,
    pub target: Option<String>,
    pub horizon_slots: usize,
    pub quantiles: Vec<f32>,
    pub file: String,
    pub rounds: u32,
    pub best_iteration: u32,
    #[serde(deserialize_with = "crate::metrics::f64_or_nan")]
    pub best_validation_loss: f64,
    pub validation_metric: String,
}

/// One neural model of a version. This crate only lists it; `headroom-neural` reads it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NeuralFile {
    /// `lstm` or `gru`.
    pub family: String,
    pub meta_file: String,
    pub weights_file: String,
    pub targets: Vec<String>,
    pub input_len: usize,
    pub hidden: usize,
    pub layers: usize,
    pub bidirectional: bool,
    pub epochs: usize,
    pub best_epoch: usize,
    #[serde(deserialize_with = "crate::metrics::f64_or_nan")]
    pub best_validation_loss: f64,
    #[serde(deserialize_with = "crate::metrics::f64_or_nan")]
    pub seconds: f64,
    /// The version it was trained for, when it was carried into this one unchanged (a
    /// retrain that refits XGBoost only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried_from: Option<String>,
}

/// A neural model to write into a version: its entry and its files' bytes.
#[derive(Debug, Clone)]
pub struct NeuralArtifact {
    pub entry: NeuralFile,
    pub files: Vec<(String, Vec<u8>)>,
}

/// The neural models of the version in `dir`, to be written unchanged into a new version on
/// a grid of `interval_ms` (none when the version has another grid: they could not serve it).
pub fn carry_neural(dir: &Path, interval_ms: i64) -> anyhow::Result<Vec<NeuralArtifact>> {
    let raw = fs::read(dir.join(MANIFEST))?;
    let m: Manifest = serde_json::from_slice(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(MANIFEST).display()))?;
    if m.interval_ms != interval_ms {
        return Ok(Vec::new());
    }
    m.neural
        .iter()
        .map(|n| {
            let files = [&n.meta_file, &n.weights_file]
                .into_iter()
                .map(|f| Ok((f.clone(), fs::read(dir.join(f))?)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let entry = NeuralFile {
                carried_from: Some(n.carried_from.clone().unwrap_or_else(|| m.version.clone())),
                ..n.clone()
            };
            Ok(NeuralArtifact { entry, files })
        })
        .collect()
}

/// What a version is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub version: String,
    pub family: String,
    pub status: Status,
    pub created_ms: i64,
    pub feature_schema: String,
    /// The model inputs: the featurizer's features, then the derived ones.
    pub feature_names: Vec<String>,
    /// How the derived inputs are computed ([`crate::derived::DERIVED_VERSION`]) and over how
    /// many slots.
    pub derived: String,
    pub anchor_window: usize,
    pub interval_ms: i64,
    pub horizons_slots: Vec<usize>,
    pub training_from_ms: i64,
    pub training_to_ms: i64,
    pub training_rows: usize,
    pub entities: usize,
    pub device: String,
    pub xgboost_version: String,
    pub models: Vec<ModelFile>,
    /// The neural models (absent in versions written before they existed).
    #[serde(default)]
    pub neural: Vec<NeuralFile>,
    /// Test-period scores when the version was backtested.
    pub metrics: Option<Backtest>,
    pub reference: Vec<Reference>,
}

/// A loaded version, ready to predict.
#[derive(Debug)]
pub struct Loaded {
    pub manifest: Manifest,
    pub dir: PathBuf,
    pub boosters: Vec<(ModelFile, InplaceBooster)>,
}

/// A new version name: UTC time to the second plus a short random suffix (sortable, unique).
pub fn new_version(now_ms: i64) -> String {
    let secs = now_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let rem = secs.rem_euclid(86_400);
    format!(
        "v{y:04}{mo:02}{d:02}T{:02}{:02}{:02}Z-{:04x}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        rand::random::<u16>()
    )
}

// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Reference distributions of every feature over (a sample of) the rows.
pub fn reference(names: &[String], rows: &Rows, max_rows: usize) -> Vec<Reference> {
    let step = (rows.len() / max_rows.max(1)).max(1);
    let picked: Vec<usize> = (0..rows.len()).step_by(step).collect();
    names
        .iter()
        .enumerate()
        .map(|(f, name)| {
            let mut v: Vec<f32> = picked.iter().map(|&i| rows.row(i)[f]).collect();
            let n = v.len().max(1);
            v.retain(|x| x.is_finite());
            let missing_share = 1.0 - v.len() as f32 / n as f32;
            v.sort_unstable_by(|a, b| a.total_cmp(b));
            let mut edges: Vec<f32> = (1..10)
                .filter_map(|k| v.get((v.len().saturating_sub(1)) * k / 10).copied())
                .collect();
            edges.dedup();
            let mut counts = vec![0usize; edges.len() + 1];
            for x in &v {
                counts[edges.partition_point(|e| e < x)] += 1;
            }
            let total = v.len().max(1) as f32;
            Reference {
                feature: name.clone(),
                edges,
                shares: counts.iter().map(|c| *c as f32 / total).collect(),
                missing_share,
            }
        })
        .collect()
}

fn file_name(kind: &str, target: Option<&str>, h: usize) -> String {
    match target {
        Some(t) => format!("xgb-{t}-h{h}.ubj"),
        None => format!("{kind}-h{h}.ubj"),
    }
}

/// Writes `models` as a new candidate version under `root`; returns its directory.
pub fn write(
    root: &Path,
    ds: &Dataset,
    models: &ModelSet,
    metrics: Option<&Backtest>,
    now_ms: i64,
) -> anyhow::Result<(Manifest, PathBuf)> {
    write_with(root, ds, models, &[], metrics, now_ms)
}

/// [`write`], with neural models beside the XGBoost ones.
pub fn write_with(
    root: &Path,
    ds: &Dataset,
    models: &ModelSet,
    neural: &[NeuralArtifact],
    metrics: Option<&Backtest>,
    now_ms: i64,
) -> anyhow::Result<(Manifest, PathBuf)> {
    let version = new_version(now_ms);
    let tmp = root.join(format!(".{version}.tmp"));
    fs::create_dir_all(&tmp)?;
    for n in neural {
        for (name, bytes) in &n.files {
            anyhow::ensure!(!name.contains('/') && !name.starts_with('.'), "bad model file name {name}");
            fs::write(tmp.join(name), bytes)?;
        }
    }
    let mut files = Vec::new();
    for r in &models.regressors {
        let file = file_name("regressor", Some(&r.target), r.horizon);
        fs::write(tmp.join(&file), &r.trained.model)?;
        files.push(ModelFile {
            kind: "regressor".into(),
            target: Some(r.target.clone()),
            horizon_slots: r.horizon,
            quantiles: r.quantiles.clone(),
            file,
            rounds: r.trained.rounds,
            best_iteration: r.trained.best_iteration,
            best_validation_loss: r.trained.best_validation_loss,
            validation_metric: r.trained.metric.clone(),
        });
    }
    if let Some(c) = &models.classifier {
        let file = file_name("peak-classifier", None, c.horizon);
        fs::write(tmp.join(&file), &c.trained.model)?;
        files.push(ModelFile {
            kind: "classifier".into(),
            target: None,
            horizon_slots: c.horizon,
            quantiles: Vec::new(),
            file,
            rounds: c.trained.rounds,
            best_iteration: c.trained.best_iteration,
            best_validation_loss: c.trained.best_validation_loss,
            validation_metric: c.trained.metric.clone(),
        });
    }
    let train_end = ds.split_slot.min(ds.last_slot + 1);
    let manifest = Manifest {
        format: FORMAT,
        version: version.clone(),
        family: "xgboost".into(),
        status: Status::Candidate,
        created_ms: now_ms,
        feature_schema: ds.layout.id().to_owned(),
        feature_names: ds.input_names(),
        derived: crate::derived::DERIVED_VERSION.into(),
        anchor_window: ds.derivation.window(),
        interval_ms: ds.interval_ms,
        horizons_slots: ds.horizons.clone(),
        training_from_ms: ds.first_slot * ds.interval_ms,
        training_to_ms: train_end * ds.interval_ms,
        training_rows: ds.train.len(),
        entities: ds.series.len(),
        device: models.device.to_string(),
        xgboost_version: crate::xgb::ffi::version(),
        models: files,
        neural: neural.iter().map(|n| n.entry.clone()).collect(),
        metrics: metrics.cloned(),
        reference: reference(&ds.input_names(), &ds.train, 100_000),
    };
    fs::write(tmp.join(MANIFEST), serde_json::to_vec_pretty(&manifest)?)?;
    let dir = root.join(&version);
    fs::rename(&tmp, &dir)?;
    Ok((manifest, dir))
}

/// Errors of loading a version, each naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model version {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("model version {dir}: manifest.json is not a valid manifest: {source}")]
    Manifest {
        dir: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("model version {dir}: manifest format {found} is not supported (this build reads {FORMAT})")]
    Format { dir: String, found: u32 },
    #[error(
        "model version {version} was trained on feature schema {model} but the features are {live}: \
         retrain it on this feature configuration, or configure the featurizer as it was"
    )]
    SchemaMismatch {
        version: String,
        model: String,
        live: String,
    },
    #[error("model version {dir}: {file}: {source}")]
    Model {
        dir: String,
        file: String,
        #[source]
        source: crate::xgb::ffi::XgbError,
    },
}

/// Loads the version in `dir`, refusing it unless its feature schema is `expected_schema`
/// (when one is given).
pub fn load(dir: &Path, expected_schema: Option<&str>) -> Result<Loaded, LoadError> {
    let d = dir.display().to_string();
    let io = |source| LoadError::Io {
        dir: d.clone(),
        source,
    };
    let raw = fs::read(dir.join(MANIFEST)).map_err(io)?;
    let manifest: Manifest = serde_json::from_slice(&raw).map_err(|source| LoadError::Manifest {
        dir: d.clone(),
        source,
    })?;
    if manifest.format != FORMAT {
        return Err(LoadError::Format {
            dir: d,
            found: manifest.format,
        });
    }
    if let Some(expected) = expected_schema {
        if manifest.feature_schema != expected {
            return Err(LoadError::SchemaMismatch {
                version: manifest.version,
                model: manifest.feature_schema,
                live: expected.to_owned(),
            });
        }
    }
    let mut boosters = Vec::new();
    for f in &manifest.models {
        let bytes = fs::read(dir.join(&f.file)).map_err(io)?;
        let b = InplaceBooster::from_bytes(&bytes).map_err(|source| LoadError::Model {
            dir: d.clone(),
            file: f.file.clone(),
            source,
        })?;
        boosters.push((f.clone(), b));
    }
    Ok(Loaded {
        manifest,
        dir: dir.to_owned(),
        boosters,
    })
}

/// The registry file of a models directory: which version of each family serves.
pub const REGISTRY: &str = "registry.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Registry {
    /// family -> serving version
    pub serving: std::collections::BTreeMap<String, String>,
    /// version -> status (versions absent here are candidates)
    #[serde(default)]
    pub status: std::collections::BTreeMap<String, Status>,
    /// family -> the versions that served before the current one, oldest first (what a
    /// rollback returns to).
    #[serde(default)]
    pub history: std::collections::BTreeMap<String, Vec<String>>,
}

impl Registry {
    pub fn read(root: &Path) -> anyhow::Result<Registry> {
        match fs::read(root.join(REGISTRY)) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| anyhow::anyhow!("{}: {e}", root.join(REGISTRY).display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Marks `version` serving for its family (the previous one retired), atomically.
    pub fn promote(root: &Path, version: &str) -> anyhow::Result<Registry> {
        let dir = root.join(version);
        // Only what promotion needs: a version whose metrics this build cannot read can still
        // be promoted (the scorer checks it fully when it loads it).
        #[derive(Deserialize)]
        struct Head {
            family: String,
        }
        let manifest: Head = serde_json::from_slice(&fs::read(dir.join(MANIFEST)).map_err(
            |e| anyhow::anyhow!("model version {version} not found in {}: {e}", root.display()),
        )?)?;
        let mut reg = Registry::read(root)?;
        if let Some(prev) = reg.serving.insert(manifest.family.clone(), version.to_owned()) {
            if prev != version {
                reg.status.insert(prev.clone(), Status::Retired);
                reg.history.entry(manifest.family.clone()).or_default().push(prev);
            }
        }
        reg.status.insert(version.to_owned(), Status::Serving);
        reg.write(root)?;
        Ok(reg)
    }

    /// Writes the registry atomically (temporary file, then rename).
    pub fn write(&self, root: &Path) -> anyhow::Result<()> {
        let tmp = root.join(".registry.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        fs::rename(&tmp, root.join(REGISTRY))?;
        Ok(())
    }

    /// Makes `to` (by default the version that served before the current one) serving for
    /// `family` again; the current one is retired. Returns (from, to).
    pub fn rollback(root: &Path, family: &str, to: Option<&str>) -> anyhow::Result<(String, String)> {
        let mut reg = Registry::read(root)?;
        let current = reg
            .serving
            .get(family)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no serving `{family}` version in {}: nothing to roll back", root.display()))?;
        let history = reg.history.entry(family.to_owned()).or_default();
        let target = match to {
            Some(v) => {
                anyhow::ensure!(v != current, "{v} is already serving");
                anyhow::ensure!(root.join(v).join(MANIFEST).exists(), "model version {v} not found in {}", root.display());
                history.retain(|h| h != v);
                v.to_owned()
            }
            None => history
                .pop()
                .ok_or_else(|| anyhow::anyhow!("`{family}` has no earlier serving version to roll back to"))?,
        };
        reg.status.insert(current.clone(), Status::Retired);
        reg.status.insert(target.clone(), Status::Serving);
        reg.serving.insert(family.to_owned(), target.clone());
        reg.write(root)?;
        Ok((current, target))
    }
}

/// The versions under `root`, oldest first.
pub fn list(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut v: Vec<String> = match fs::read_dir(root) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(MANIFEST).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    v.sort();
    Ok(v)
}

/// The regressors and classifier of a version as a [`ModelSet`] (for backtests that reuse a
/// fitted version instead of fitting again). Refuses another feature schema than `expected`.
pub fn read_model_set(dir: &Path, expected_schema: &str) -> Result<ModelSet, LoadError> {
    let loaded = load(dir, Some(expected_schema))?;
    let d = dir.display().to_string();
    let mut set = ModelSet {
        device: crate::Device::Cpu,
        regressors: Vec::new(),
        classifier: None,
    };
    for f in &loaded.manifest.models {
        let model = fs::read(dir.join(&f.file)).map_err(|source| LoadError::Io { dir: d.clone(), source })?;
        let trained = crate::xgb::Trained {
            model,
            rounds: f.rounds,
            best_iteration: f.best_iteration,
            best_validation_loss: f.best_validation_loss,
            metric: f.validation_metric.clone(),
        };
        match (f.kind.as_str(), &f.target) {
            ("regressor", Some(t)) => set.regressors.push(crate::backtest::Regressor {
                target: t.clone(),
                horizon: f.horizon_slots,
                quantiles: f.quantiles.clone(),
                trained,
                train_rows: loaded.manifest.training_rows,
                seconds: f64::NAN,
            }),
            ("classifier", _) => {
                set.classifier = Some(crate::backtest::Classifier {
                    horizon: f.horizon_slots,
                    pos_weight: 1.0,
                    train_base_rate: f64::NAN,
                    trained,
                    seconds: f64::NAN,
                })
            }
            _ => {}
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_sort_by_time() {
        let a = new_version(1_700_000_000_000);
        assert!(a.starts_with("v20231114T221320Z-"), "{a}");
        let b = new_version(1_700_000_001_000);
        assert!(a < b);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn promotions_keep_history_and_rollback_returns_to_it() {
        let root = std::env::temp_dir().join(format!("headroom-reg-{}", rand::random::<u32>()));
        for v in ["v1", "v2", "v3"] {
            fs::create_dir_all(root.join(v)).unwrap();
            fs::write(root.join(v).join(MANIFEST), br#"{"family":"xgboost"}"#).unwrap();
        }
        for v in ["v1", "v2", "v3"] {
            Registry::promote(&root, v).unwrap();
        }
        assert_eq!(Registry::rollback(&root, "xgboost", None).unwrap(), ("v3".into(), "v2".into()));
        let reg = Registry::read(&root).unwrap();
        assert_eq!(reg.serving["xgboost"], "v2");
        assert_eq!(reg.status["v3"], Status::Retired);
        assert_eq!(Registry::rollback(&root, "xgboost", Some("v3")).unwrap(), ("v2".into(), "v3".into()));
        assert!(Registry::rollback(&root, "xgboost", Some("v3")).is_err(), "already serving");
        assert!(Registry::rollback(&root, "xgboost", Some("nope")).is_err());
        assert_eq!(Registry::rollback(&root, "xgboost", None).unwrap().1, "v1");
        assert!(Registry::rollback(&root, "other", None).is_err());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn reference_shares_sum_to_one() {
        let rows = Rows {
            n_features: 2,
            x: (0..200).flat_map(|i| [i as f32, if i % 4 == 0 { f32::NAN } else { 1.0 }]).collect(),
            entity: vec![0; 200],
            slot: (0..200).collect(),
        };
        let r = reference(&["a".into(), "b".into()], &rows, 1000);
        assert_eq!(r[0].edges.len(), 9);
        assert!((r[0].shares.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!((r[1].missing_share - 0.25).abs() < 1e-6);
        assert_eq!(r[1].edges, vec![1.0]);
    }
}

//! A model version loaded for serving: what the scorer holds, and swaps atomically.

use std::path::Path;

use headroom_features::FeatureLayout;

use crate::artifact::{self, Loaded};
use crate::dataset::TARGETS;
use crate::derived::{Derivation, DERIVED_VERSION};
use crate::xgb::ffi::InplaceBooster;

/// One regressor of the version.
#[derive(Debug)]
pub struct Head {
    /// Index into [`TARGETS`].
    pub target: usize,
    pub horizon_slots: usize,
    pub horizon_min: i32,
    pub booster: InplaceBooster,
    pub quantiles: usize,
}

/// A version ready to score feature vectors of its schema.
#[derive(Debug)]
pub struct ServingModel {
    pub family: String,
    pub version: String,
    pub feature_schema: String,
    pub dir: std::path::PathBuf,
    /// The featurizer's feature names (the vectors this version scores).
    pub base_names: Vec<String>,
    pub interval_ms: i64,
    /// The version's neural models (their files are read by `headroom-neural`).
    pub neural: Vec<artifact::NeuralFile>,
    derivation: Derivation,
    pub heads: Vec<Head>,
    pub classifier: Option<InplaceBooster>,
}

/// Predictions of one batch: per head, `(p50, p90)` per row; the peak probability per row.
#[derive(Debug, Default)]
pub struct Scores {
    pub rows: usize,
    pub heads: Vec<Vec<(f32, f32)>>,
    pub peak: Vec<f32>,
    /// Per row, each target's anchor (its trailing median): what the neural models add
    /// their predicted change to.
    pub anchors: Vec<[f32; crate::dataset::N_TARGETS]>,
    inputs: Vec<f32>,
    buf: Vec<f32>,
}

impl ServingModel {
    /// Loads the version in `dir` for vectors of `layout`; refuses another feature schema or
    /// another derivation, naming both.
    pub fn load(dir: &Path, layout: Option<&FeatureLayout>) -> anyhow::Result<ServingModel> {
        let loaded = artifact::load(dir, layout.map(|l| l.id()))?;
        ServingModel::from_loaded(loaded)
    }

    pub fn from_loaded(l: Loaded) -> anyhow::Result<ServingModel> {
        let m = &l.manifest;
        anyhow::ensure!(
            m.derived == DERIVED_VERSION,
            "model version {} uses derived inputs `{}`; this build computes `{DERIVED_VERSION}`",
            m.version,
            m.derived
        );
        let extra = 2 * TARGETS.len();
        anyhow::ensure!(
            m.feature_names.len() > extra,
            "model version {}: manifest lists {} inputs",
            m.version,
            m.feature_names.len()
        );
        let base = &m.feature_names[..m.feature_names.len() - extra];
        let derivation = Derivation::from_names(base, m.anchor_window)?;
        let minutes = |h: usize| (h as i64 * m.interval_ms / 60_000) as i32;
        let mut heads = Vec::new();
        let mut classifier = None;
        for (f, b) in l.boosters {
            match (f.kind.as_str(), f.target.as_deref()) {
                ("regressor", Some(t)) => {
                    let target = TARGETS.iter().position(|x| *x == t).ok_or_else(|| {
                        anyhow::anyhow!("model version {}: unknown target `{t}`", m.version)
                    })?;
                    heads.push(Head {
                        target,
                        horizon_slots: f.horizon_slots,
                        horizon_min: minutes(f.horizon_slots),
                        booster: b,
                        quantiles: f.quantiles.len(),
                    });
                }
                ("classifier", _) => classifier = Some(b),
                (k, _) => anyhow::bail!("model version {}: unknown model kind `{k}`", m.version),
            }
        }
        Ok(ServingModel {
            family: m.family.clone(),
            version: m.version.clone(),
            feature_schema: m.feature_schema.clone(),
            dir: l.dir,
            base_names: base.to_vec(),
            interval_ms: m.interval_ms,
            neural: m.neural.clone(),
            derivation,
            heads,
            classifier,
        })
    }

    /// Length of the feature vectors this version scores.
    pub fn input_len(&self) -> usize {
        self.derivation.base_len()
    }

    /// Where XGBoost predicts (`cuda` needs the CUDA build of its library and a GPU; resolve
    /// it with [`crate::device::for_xgboost`]).
    pub fn set_device(&mut self, device: crate::device::Device) -> anyhow::Result<()> {
        let d = device.to_string();
        for h in &mut self.heads {
            h.booster.set_param("device", &d)?;
        }
        if let Some(c) = &mut self.classifier {
            c.set_param("device", &d)?;
        }
        Ok(())
    }

    /// Sets the threads XGBoost uses per prediction call.
    pub fn set_threads(&mut self, n: usize) -> anyhow::Result<()> {
        let n = n.to_string();
        for h in &mut self.heads {
            h.booster.set_param("nthread", &n)?;
        }
        if let Some(c) = &mut self.classifier {
            c.set_param("nthread", &n)?;
        }
        Ok(())
    }

    /// Scores `n` featurizer vectors (row-major) into `out`.
    pub fn score(&self, base: &[f32], n: usize, out: &mut Scores) -> anyhow::Result<()> {
        let w = self.derivation.base_len();
        anyhow::ensure!(base.len() == n * w, "{} values are not {n} vectors of {w}", base.len());
        if n == 0 {
            out.rows = 0;
            return Ok(());
        }
        out.rows = n;
        out.inputs.clear();
        out.inputs.reserve(n * self.derivation.width());
        out.anchors.clear();
        let mut row = Vec::with_capacity(self.derivation.width());
        for r in base.chunks_exact(w) {
            row.clear();
            row.extend_from_slice(r);
            self.derivation.extend(&mut row);
            out.inputs.extend_from_slice(&row);
            out.anchors.push(std::array::from_fn(|m| row[self.derivation.anchor_index(m)]));
        }
        out.heads.resize_with(self.heads.len(), Vec::new);
        let width = self.derivation.width();
        for (h, preds) in self.heads.iter().zip(out.heads.iter_mut()) {
            let k = h.booster.predict(&out.inputs, n, &mut out.buf)?;
            anyhow::ensure!(k == h.quantiles, "model gave {k} outputs, expected {}", h.quantiles);
            let a = self.derivation.anchor_index(h.target);
            preds.clear();
            for (j, x) in out.inputs.chunks_exact(width).enumerate() {
                let anchor = x[a];
                let p50 = (anchor + out.buf[j * k]).max(0.0);
                let p90 = if k > 1 { anchor + out.buf[j * k + 1] } else { p50 };
                preds.push((p50, p90.max(p50)));
            }
        }
        out.peak.clear();
        if let Some(c) = &self.classifier {
            c.predict(&out.inputs, n, &mut out.peak)?;
        }
        Ok(())
    }
}

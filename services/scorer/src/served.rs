//! A model version as the scorer serves it: the XGBoost heads and classifier, and the
//! version's LSTM / GRU models that the configuration asks for.

use std::path::Path;

use headroom_forecast::serving::ServingModel;
use headroom_forecast::TARGETS;
use headroom_neural::NeuralServing;
use headroom_schemas::Metric;

/// One neural model and the (metric, horizon) of each of its output pairs.
#[derive(Debug)]
pub struct Neural {
    pub model: NeuralServing,
    pub heads: Vec<(Metric, i32)>,
    /// `<family>/<version>`, the tag of its points.
    pub tag: String,
}

/// What one batch is scored with; swapped as a whole between batches.
#[derive(Debug)]
pub struct Served {
    pub xgb: ServingModel,
    pub neural: Vec<Neural>,
    /// `<family>/<version>` of the XGBoost points.
    pub tag: String,
}

impl Served {
    /// Loads the version in `dir` with the neural `families` it holds (`lstm`, `gru`). A
    /// family the version does not have is logged and left out; one it has but cannot load
    /// fails the whole version (the scorer keeps the one it serves).
    pub fn load(dir: &Path, families: &[String]) -> anyhow::Result<Served> {
        let xgb = ServingModel::load(dir, None)?;
        let mut neural = Vec::new();
        for family in families {
            let Some(entry) = xgb.neural.iter().find(|n| &n.family == family) else {
                tracing::warn!(version = %xgb.version, family = %family, "the version has no such neural model; serving without it");
                continue;
            };
            let model = NeuralServing::load(&xgb.dir, entry, &xgb.base_names, xgb.interval_ms)
                .map_err(|e| anyhow::anyhow!("model version {}: {e}", xgb.version))?;
            let minutes = |h: usize| (h as i64 * xgb.interval_ms / 60_000) as i32;
            let heads = model
                .heads()
                .into_iter()
                .map(|(t, h)| (Metric::from_short(TARGETS[t]).unwrap_or(Metric::Cpu), minutes(h)))
                .collect();
            let tag = format!("{family}/{}", xgb.version);
            neural.push(Neural { model, heads, tag });
        }
        let tag = format!("{}/{}", xgb.family, xgb.version);
        Ok(Served { xgb, neural, tag })
    }

    pub fn version(&self) -> &str {
        &self.xgb.version
    }

    /// Slots of history each entity's flags must keep (the longest window plus one).
    pub fn history_slots(&self) -> usize {
        self.neural.iter().map(|n| n.model.input_len() + 1).max().unwrap_or(0)
    }

    /// The families served, primary first.
    pub fn families(&self) -> Vec<&str> {
        std::iter::once(self.xgb.family.as_str()).chain(self.neural.iter().map(|n| n.model.family())).collect()
    }
}

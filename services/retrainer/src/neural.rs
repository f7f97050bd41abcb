//! The LSTM / GRU models of a candidate: refitted with the training command's code
//! (`headroom_neural::fit`) on the run's training rows, and kept only when they are no worse
//! than the serving version's model of the same family on the same holdout. A family the
//! serving version has and `training.neural.families` does not list is carried over unchanged;
//! a refit that fails or scores non-finite is replaced by the carried model (the run goes on:
//! the XGBoost gate decides the promotion).

use std::time::{Duration, Instant};

use headroom_forecast::artifact::NeuralArtifact;
use headroom_forecast::backtest::{is_stopped, StopWhen, Stopped};
use headroom_forecast::{Dataset, DeviceChoice};
use headroom_neural::{Cell, Fitted, NeuralMeta, NeuralOptions, Predictor};
use serde::{Deserialize, Serialize};

/// The `[training.neural]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeuralTraining {
    /// Families refitted with each candidate (`lstm`, `gru`); empty: carried over unchanged.
    pub families: Vec<Cell>,
    pub hidden: usize,
    pub layers: usize,
    pub dropout: f64,
    pub bidirectional: bool,
    pub input_len: usize,
    pub max_epochs: usize,
    pub patience: usize,
    pub samples_per_epoch: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub seed: u64,
    /// Each family's time budget ("0s": none): no epoch starts once it is spent, and the best
    /// epoch so far is kept. Bounds a run on a busy machine.
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
}

impl NeuralTraining {
    pub fn options(&self, cell: Cell, targets: &[usize], device: DeviceChoice) -> NeuralOptions {
        NeuralOptions {
            cell,
            hidden: self.hidden,
            layers: self.layers,
            dropout: self.dropout,
            bidirectional: self.bidirectional,
            input_len: self.input_len,
            targets: targets.to_vec(),
            max_epochs: self.max_epochs,
            patience: self.patience,
            samples_per_epoch: self.samples_per_epoch,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            seed: self.seed,
            device,
            max_seconds: self.max_duration.as_secs(),
            ..NeuralOptions::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut seen = Vec::new();
        for f in &self.families {
            if seen.contains(f) {
                return Err(format!("key `training.neural.families` names {} twice", f.name()));
            }
            seen.push(*f);
        }
        if !self.max_duration.is_zero() && self.max_duration < Duration::from_secs(1) {
            return Err("key `training.neural.max_duration` must be 0s (no budget) or at least 1s".into());
        }
        self.options(Cell::Lstm, &[0], DeviceChoice::Cpu)
            .validate()
            .map_err(|e| format!("key `training.neural`: {e}"))
    }
}

/// What happened to one family.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyOutcome {
    pub family: String,
    /// `refit` (the new model goes into the candidate), `kept` (the serving version's was
    /// better; carried), `carried` (not refitted), `failed` (carried, or none).
    pub outcome: &'static str,
    /// Mean holdout MASE over the family's heads (full-window scoring).
    pub candidate_mase: Option<f64>,
    pub serving_mase: Option<f64>,
    pub seconds: f64,
    pub detail: Option<String>,
}

fn mean_mase(ds: &Dataset, f: &Fitted) -> anyhow::Result<f64> {
    let p = Predictor::new(f)?;
    let rows = headroom_neural::score(ds, &p)?;
    let v: Vec<f64> = rows.iter().filter(|r| r.model == f.meta.family).map(|r| r.scores.mase).collect();
    anyhow::ensure!(!v.is_empty(), "{} scored no head on the holdout", f.meta.family);
    let m = v.iter().sum::<f64>() / v.len() as f64;
    anyhow::ensure!(m.is_finite(), "{} has a non-finite holdout MASE", f.meta.family);
    Ok(m)
}

/// The serving version's model of a carried artifact, when it can be read.
fn carried_fitted(a: &NeuralArtifact) -> Option<Fitted> {
    let meta_bytes = &a.files.iter().find(|(n, _)| *n == a.entry.meta_file)?.1;
    let weights = a.files.iter().find(|(n, _)| *n == a.entry.weights_file)?.1.clone();
    let meta: NeuralMeta = serde_json::from_slice(meta_bytes).ok()?;
    Some(Fitted { meta, weights })
}

/// The candidate's neural artifacts: refitted families where the refit is no worse than the
/// serving one, the serving version's (`carried`) otherwise; and what happened per family.
/// `stop` returning true ends the fits within a batch, and the refit with [`Stopped`].
pub fn refit(
    ds: &Dataset,
    cfg: &NeuralTraining,
    targets: &[usize],
    device: DeviceChoice,
    carried: Vec<NeuralArtifact>,
    stop: &(dyn Fn() -> bool + Sync),
) -> anyhow::Result<(Vec<NeuralArtifact>, Vec<FamilyOutcome>)> {
    let fits: Vec<(Cell, f64, anyhow::Result<Fitted>)> = std::thread::scope(|s| {
        let handles: Vec<_> = cfg
            .families
            .iter()
            .map(|&cell| {
                let opts = cfg.options(cell, targets, device);
                s.spawn(move || {
                    let t = Instant::now();
                    let r = headroom_neural::fit(ds, &opts, None, &mut StopWhen(stop));
                    (cell, t.elapsed().as_secs_f64(), r)
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&cfg.families)
            .map(|(h, &cell)| h.join().unwrap_or_else(|_| (cell, 0.0, Err(anyhow::anyhow!("the {} training thread panicked", cell.name())))))
            .collect()
    });
    if fits.iter().any(|(_, _, r)| r.as_ref().is_err_and(is_stopped)) {
        return Err(Stopped.into());
    }
    let mut out = Vec::new();
    let mut report = Vec::new();
    let mut carried: Vec<Option<NeuralArtifact>> = carried.into_iter().map(Some).collect();
    for (cell, seconds, fit) in fits {
        let fam = cell.name();
        let serving_slot = carried.iter().position(|a| a.as_ref().is_some_and(|a| a.entry.family == fam));
        let serving = serving_slot.and_then(|i| carried[i].take());
        let serving_mase = serving.as_ref().and_then(carried_fitted).and_then(|f| mean_mase(ds, &f).ok());
        let scored = fit.and_then(|f| mean_mase(ds, &f).map(|m| (f, m)));
        let (outcome, candidate_mase, detail) = match scored {
            Ok((f, m)) if serving_mase.is_none_or(|s| m <= s) => match headroom_neural::artifact(&f) {
                Ok(a) => {
                    out.push(a);
                    ("refit", Some(m), None)
                }
                Err(e) => {
                    out.extend(serving);
                    ("failed", Some(m), Some(format!("{e:#}")))
                }
            },
            Ok((_, m)) => {
                out.extend(serving);
                ("kept", Some(m), None)
            }
            Err(e) => {
                tracing::warn!(family = fam, error = %format!("{e:#}"), "neural refit failed; the serving version's model (if any) is carried over");
                out.extend(serving);
                ("failed", None, Some(format!("{e:#}")))
            }
        };
        tracing::info!(family = fam, outcome, candidate_mase = ?candidate_mase, serving_mase = ?serving_mase, seconds, budget_s = cfg.max_duration.as_secs(), "neural model refitted");
        report.push(FamilyOutcome { family: fam.to_owned(), outcome, candidate_mase, serving_mase, seconds, detail });
    }
    // Families not refitted: carried unchanged.
    for a in carried.into_iter().flatten() {
        report.push(FamilyOutcome { family: a.entry.family.clone(), outcome: "carried", candidate_mase: None, serving_mase: None, seconds: 0.0, detail: None });
        out.push(a);
    }
    Ok((out, report))
}

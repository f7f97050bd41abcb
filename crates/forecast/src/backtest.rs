//! Fitting the XGBoost models on a dataset's training rows, and the backtest on its test rows
//! against the baselines.
//!
//! Regression models learn the *change* from an anchor, the target's trailing median
//! (`y[t+h] - median(y[t-11..=t])`, see [`crate::derived`]): trees cannot extrapolate levels
//! they have not seen, but changes transfer across entities. The forecast is the anchor plus
//! the predicted change, for each quantile.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::baselines::{self, Baseline, BaselineOptions, OriginModel};
use crate::dataset::{Dataset, Rows, N_TARGETS, TARGETS};
use crate::device::{self, Device, DeviceChoice};
use crate::metrics::{self, Accumulator, ClassScores, PerSeries, Scores};
use crate::oracle;
use crate::xgb::{self, ffi::InplaceBooster, Labels, Objective, Trained, XgbParams};

/// Options of fitting and backtesting.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub quantiles: Vec<f32>,
    pub xgb: XgbParams,
    pub device: DeviceChoice,
    /// The last part of the training period held out for early stopping.
    pub valid_fraction: f64,
    /// Targets to model (indices into [`TARGETS`]).
    pub targets: Vec<usize>,
    /// Whether to train the peak classifier.
    pub classifier: bool,
    /// The peak classifier's learning rate (its other parameters are `xgb`'s). The regressors'
    /// 0.4 overfits it: test PR-AUC 0.372 against 0.457 at 0.1 on the Bitbrains backtest.
    pub classifier_eta: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            quantiles: vec![0.5, 0.9],
            xgb: XgbParams::default(),
            device: DeviceChoice::Auto,
            valid_fraction: 0.1,
            targets: (0..N_TARGETS).collect(),
            classifier: true,
            classifier_eta: 0.1,
        }
    }
}

/// One regression model: target, horizon (slots) and the trained booster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Regressor {
    pub target: String,
    pub horizon: usize,
    pub quantiles: Vec<f32>,
    #[serde(flatten)]
    pub trained: Trained,
    pub train_rows: usize,
    #[serde(deserialize_with = "crate::metrics::f64_or_nan")]
    pub seconds: f64,
}

/// The peak / scale-event classifier: probability of an event within `horizon` slots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Classifier {
    pub horizon: usize,
    pub pos_weight: f32,
    #[serde(deserialize_with = "crate::metrics::f64_or_nan")]
    pub train_base_rate: f64,
    #[serde(flatten)]
    pub trained: Trained,
    pub seconds: f64,
}

/// Everything one fit produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSet {
    pub device: Device,
    pub regressors: Vec<Regressor>,
    pub classifier: Option<Classifier>,
}

/// Progress of a fit, for a progress bar, and the way to stop one.
pub trait Progress {
    fn model_started(&mut self, name: &str, rounds: u32);
    fn round(&mut self, round: u32, validation_loss: Option<f64>);
    fn model_done(&mut self, name: &str, seconds: f64);
    /// Asked after every boosting round and every neural training batch: `true` ends the fit
    /// with a [`Stopped`] error (a service shutting down does not wait for a long fit).
    fn should_stop(&self) -> bool {
        false
    }
}

/// The error of a fit ended by [`Progress::should_stop`] (find it with `downcast_ref`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the fit was stopped before it finished")]
pub struct Stopped;

/// Whether `e` is (or wraps) a [`Stopped`] fit.
pub fn is_stopped(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<Stopped>().is_some())
}

/// No progress output.
#[derive(Debug)]
pub struct Quiet;
impl Progress for Quiet {
    fn model_started(&mut self, _: &str, _: u32) {}
    fn round(&mut self, _: u32, _: Option<f64>) {}
    fn model_done(&mut self, _: &str, _: f64) {}
}

/// No progress output; the fit stops once the closure returns true (a service's shutdown).
pub struct StopWhen<'a>(pub &'a (dyn Fn() -> bool + Sync));
impl Progress for StopWhen<'_> {
    fn model_started(&mut self, _: &str, _: u32) {}
    fn round(&mut self, _: u32, _: Option<f64>) {}
    fn model_done(&mut self, _: &str, _: f64) {}
    fn should_stop(&self) -> bool {
        (self.0)()
    }
}

/// The training rows split in time into a fit part and an early-stopping part.
struct FitData {
    fit: Rows,
    valid: Option<Rows>,
}

/// The training rows of `ds` split in time: the rows fitted on (whose targets fall before the
/// hold-out) and the last `valid_fraction` of the training period, held out for early
/// stopping (empty when the fraction is 0). The neural models use the same split.
pub fn validation_split(ds: &Dataset, valid_fraction: f64) -> (Rows, Rows) {
    if valid_fraction <= 0.0 {
        return (ds.train.clone(), Rows::default());
    }
    let end = ds.split_slot.min(ds.last_slot + 1);
    let max_h = *ds.horizons.iter().max().unwrap_or(&1) as i64;
    let valid_slot = end - ((end - ds.first_slot) as f64 * valid_fraction) as i64;
    (ds.train.filter(|s| s + max_h < valid_slot), ds.train.filter(|s| s >= valid_slot))
}

fn split_for_validation(ds: &Dataset, valid_fraction: f64) -> FitData {
    let (fit, valid) = validation_split(ds, valid_fraction);
    FitData {
        fit,
        valid: (valid_fraction > 0.0).then_some(valid),
    }
}

fn delta_labels(ds: &Dataset, rows: &Rows, m: usize, h: usize) -> (Vec<f32>, Vec<f32>) {
    let mut y = Vec::with_capacity(rows.len());
    let mut w = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let d = ds.target(rows, i, m, h) - ds.anchor(rows, i, m);
        if d.is_finite() {
            y.push(d);
            w.push(1.0);
        } else {
            y.push(0.0);
            w.push(0.0);
        }
    }
    (y, w)
}

fn peak_labels(ds: &Dataset, rows: &Rows, h: usize) -> (Vec<f32>, Vec<f32>) {
    let mut y = Vec::with_capacity(rows.len());
    let mut w = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        match ds.series[rows.entity[i] as usize].peak_within(rows.slot[i], h) {
            Some(p) => {
                y.push(if p { 1.0 } else { 0.0 });
                w.push(1.0);
            }
            None => {
                y.push(0.0);
                w.push(0.0);
            }
        }
    }
    (y, w)
}

/// Fits one multi-quantile regressor per target and horizon, and the peak classifier.
pub fn fit(ds: &Dataset, opts: &FitOptions, progress: &mut dyn Progress) -> anyhow::Result<ModelSet> {
    anyhow::ensure!(!ds.train.is_empty(), "no training rows (is the trace long enough?)");
    let device = device::for_xgboost(opts.device)?;
    let data = split_for_validation(ds, opts.valid_fraction);
    anyhow::ensure!(!data.fit.is_empty(), "no rows left to fit after the validation hold-out");
    let mut dfit = xgb::matrix(&data.fit.x, data.fit.len())?;
    let mut dvalid = match &data.valid {
        Some(v) if !v.is_empty() => Some(xgb::matrix(&v.x, v.len())?),
        _ => None,
    };
    let mut regressors = Vec::new();
    for &m in &opts.targets {
        for &h in &ds.horizons {
            let name = format!("{}_h{h}", TARGETS[m]);
            progress.model_started(&name, opts.xgb.rounds);
            let started = Instant::now();
            let (y, w) = delta_labels(ds, &data.fit, m, h);
            let vl = data.valid.as_ref().map(|v| delta_labels(ds, v, m, h));
            let valid = match (dvalid.as_mut(), vl.as_ref()) {
                (Some(d), Some((y, w))) => Some((d, Labels { y, w })),
                _ => None,
            };
            let trained = xgb::train(
                &mut dfit,
                Labels { y: &y, w: &w },
                valid,
                &Objective::Quantiles(opts.quantiles.clone()),
                &opts.xgb,
                device,
                &mut |r, l| {
                    progress.round(r, l);
                    if progress.should_stop() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                },
            )?;
            let seconds = started.elapsed().as_secs_f64();
            progress.model_done(&name, seconds);
            regressors.push(Regressor {
                target: TARGETS[m].to_owned(),
                horizon: h,
                quantiles: opts.quantiles.clone(),
                trained,
                train_rows: w.iter().filter(|w| **w > 0.0).count(),
                seconds,
            });
        }
    }
    let classifier = if opts.classifier {
        let h = *ds.horizons.iter().max().unwrap_or(&1);
        progress.model_started("peak_classifier", opts.xgb.rounds);
        let started = Instant::now();
        let (y, w) = peak_labels(ds, &data.fit, h);
        let pos = y.iter().zip(&w).filter(|(y, w)| **y > 0.5 && **w > 0.0).count() as f64;
        let all = w.iter().filter(|w| **w > 0.0).count().max(1) as f64;
        let pos_weight = if pos > 0.0 { ((all - pos) / pos) as f32 } else { 1.0 };
        let vl = data.valid.as_ref().map(|v| peak_labels(ds, v, h));
        let valid = match (dvalid.as_mut(), vl.as_ref()) {
            (Some(d), Some((y, w))) => Some((d, Labels { y, w })),
            _ => None,
        };
        let trained = xgb::train(
            &mut dfit,
            Labels { y: &y, w: &w },
            valid,
            &Objective::Binary { pos_weight },
            &XgbParams {
                eta: opts.classifier_eta,
                ..opts.xgb.clone()
            },
            device,
            &mut |r, l| {
                progress.round(r, l);
                if progress.should_stop() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            },
        )?;
        let seconds = started.elapsed().as_secs_f64();
        progress.model_done("peak_classifier", seconds);
        Some(Classifier {
            horizon: h,
            pos_weight,
            train_base_rate: pos / all,
            trained,
            seconds,
        })
    } else {
        None
    };
    Ok(ModelSet {
        device,
        regressors,
        classifier,
    })
}

/// The scores of one forecaster on one target and horizon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub model: String,
    pub target: String,
    pub horizon_slots: usize,
    #[serde(deserialize_with = "crate::metrics::f64_or_nan")]
    pub horizon_minutes: f64,
    #[serde(flatten)]
    pub scores: Scores,
}

/// One entity's test-period forecasts, for the plots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    pub entity: String,
    pub target: String,
    pub horizon_slots: usize,
    pub slots: Vec<i64>,
    pub actual: Vec<f32>,
    pub p50: Vec<f32>,
    pub p90: Vec<f32>,
    pub seasonal_naive: Vec<f32>,
}

/// One statistical baseline's fits for one target at the sampled origins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OriginFit {
    pub model: String,
    pub target: String,
    pub origins: usize,
    /// Fits that failed and were scored as the naive forecast.
    pub failed: usize,
    pub secs: f64,
}

/// The result of a backtest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backtest {
    pub rows: Vec<Row>,
    pub classifier: Option<ClassScores>,
    /// MASE denominators (pooled in-sample one-step naive MAE) per target.
    #[serde(deserialize_with = "crate::metrics::map_f64_or_nan")]
    pub naive_scale: BTreeMap<String, f64>,
    /// Same-horizon MASE denominators per `target/h<slots>`.
    #[serde(default, deserialize_with = "crate::metrics::map_f64_or_nan")]
    pub naive_scale_h: BTreeMap<String, f64>,
    pub test_rows: usize,
    /// The statistical baselines' fits at the sampled origins (count, failures, time).
    #[serde(default)]
    pub origin_fits: Vec<OriginFit>,
    /// Plot data; not part of manifests.
    #[serde(skip)]
    pub traces: Vec<Trace>,
}

/// Predictions of a regressor for all `rows`: `(p50, p90)` levels (current value + change).
fn predict_levels(
    ds: &Dataset,
    rows: &Rows,
    m: usize,
    model: &InplaceBooster,
    nq: usize,
) -> anyhow::Result<Vec<(f32, f32)>> {
    const BATCH: usize = 65_536;
    let mut out = Vec::with_capacity(rows.len());
    let mut buf = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let end = (start + BATCH).min(rows.len());
        let x = &rows.x[start * rows.n_features..end * rows.n_features];
        let k = model.predict(x, end - start, &mut buf)?;
        anyhow::ensure!(k == nq, "model has {k} outputs, expected {nq}");
        for (j, i) in (start..end).enumerate() {
            let anchor = ds.anchor(rows, i, m);
            // Utilisation and rates are never negative.
            let p50 = (anchor + buf[j * k]).max(0.0);
            let p90 = if k > 1 { anchor + buf[j * k + 1] } else { p50 };
            // Quantile crossing (rare): keep p90 at or above p50.
            out.push((p50, p90.max(p50)));
        }
        start = end;
    }
    Ok(out)
}

/// The regressor's (p50, p90) levels for every row of `rows`, for target `m` at horizon `h`
/// slots; `None` when the set has no such regressor. The policy backtest reads these.
pub fn predict(ds: &Dataset, rows: &Rows, models: &ModelSet, m: usize, h: usize) -> anyhow::Result<Option<Vec<(f32, f32)>>> {
    let Some(r) = models.regressors.iter().find(|r| r.target == TARGETS[m] && r.horizon == h) else {
        return Ok(None);
    };
    let booster = InplaceBooster::from_bytes(&r.trained.model)?;
    predict_levels(ds, rows, m, &booster, r.quantiles.len()).map(Some)
}

/// MAPE's floor: 1 % of the mean |actual| of the rows.
fn mape_floor(ds: &Dataset, rows: &Rows, m: usize) -> f64 {
    let (s, n) = (0..rows.len())
        .map(|i| ds.now(rows, i, m))
        .filter(|v| v.is_finite())
        .fold((0.0f64, 0u64), |(s, n), v| (s + f64::from(v.abs()), n + 1));
    0.01 * s / n.max(1) as f64
}

/// The backtest row of another forecaster's `(p50, p90)` levels for every test row, target `m`
/// and horizon `h` slots, scored exactly as the XGBoost and baseline rows are.
pub fn score_row(ds: &Dataset, model: &str, m: usize, h: usize, pred: &[(f32, f32)]) -> anyhow::Result<Row> {
    let rows = &ds.test;
    anyhow::ensure!(pred.len() == rows.len(), "{model}: {} forecasts for {} test rows", pred.len(), rows.len());
    let mut acc = Accumulator::new(mape_floor(ds, rows, m));
    let mut per = PerSeries::new(ds.series.len());
    for (i, (p50, p90)) in pred.iter().enumerate() {
        let a = ds.target(rows, i, m, h);
        if a.is_finite() {
            acc.add(*p50, a);
            acc.add_p90(*p90, a);
            per.add(rows.entity[i] as usize, *p50, a);
        }
    }
    Ok(Row {
        model: model.into(),
        target: TARGETS[m].into(),
        horizon_slots: h,
        horizon_minutes: h as f64 * ds.interval_ms as f64 / 60_000.0,
        scores: with_series(
            acc.scores_with(ds.naive_scale(m, 1), ds.naive_scale(m, h)),
            &per,
            &ds.naive_scale_series(m, 1),
            &ds.naive_scale_series(m, h),
        ),
    })
}

/// `scores` with the per-series MASEs of `per`: over each entity's one-step scale and over its
/// same-horizon scale.
fn with_series(mut scores: Scores, per: &PerSeries, scales: &[f64], scales_h: &[f64]) -> Scores {
    (scores.mase_series, scores.mase_series_median) = per.mase(scales);
    (scores.mase_h_series, scores.mase_h_series_median) = per.mase(scales_h);
    scores
}

/// Scores the models and the baselines on the test rows. `plot_entities` picks entities whose
/// CPU forecasts are kept for the plots.
pub fn backtest(
    ds: &Dataset,
    models: &ModelSet,
    baseline_opts: &BaselineOptions,
    plot_entities: &[u32],
) -> anyhow::Result<Backtest> {
    let ets = baselines::Ets { window_slots: baseline_opts.ets_window_slots };
    backtest_with(ds, models, baseline_opts, plot_entities, &[&ets])
}

/// [`backtest`] with the given statistical baselines at the sampled origins (every
/// `origin_every_slots`-th test slot; none when that is 0 or the list is empty). Each is
/// scored on those origins only, next to XGBoost and naive on the same origins
/// (`<name>@origins`, `xgboost@origins`, `naive@origins`).
pub fn backtest_with(
    ds: &Dataset,
    models: &ModelSet,
    baseline_opts: &BaselineOptions,
    plot_entities: &[u32],
    origin_models: &[&dyn OriginModel],
) -> anyhow::Result<Backtest> {
    anyhow::ensure!(!ds.test.is_empty(), "no test rows: the split leaves no test period");
    let rows = &ds.test;
    let minutes = |h: usize| h as f64 * ds.interval_ms as f64 / 60_000.0;
    let mut naive_scale = BTreeMap::new();
    let mut naive_scale_h = BTreeMap::new();
    let mut out = Vec::new();
    let mut traces = Vec::new();
    let mut scratch = Vec::new();
    let mut origin_fits = Vec::new();
    let max_h = *ds.horizons.iter().max().unwrap_or(&1);
    // Origins of the statistical baselines: every `origin_every_slots`-th test slot of each entity.
    let ets_origins: Vec<usize> = if baseline_opts.origin_every_slots > 0 && !origin_models.is_empty() {
        (0..rows.len())
            .filter(|&i| (rows.slot[i] - ds.split_slot).rem_euclid(baseline_opts.origin_every_slots as i64) == 0)
            .collect()
    } else {
        Vec::new()
    };
    for m in 0..N_TARGETS {
        let scale = ds.naive_scale(m, 1);
        let scales_e = ds.naive_scale_series(m, 1);
        let mut xgb_at: BTreeMap<usize, Vec<(f32, f32)>> = BTreeMap::new();
        naive_scale.insert(TARGETS[m].to_owned(), scale);
        let floor = mape_floor(ds, rows, m);
        for &h in &ds.horizons {
            let scale_h = ds.naive_scale(m, h);
            naive_scale_h.insert(format!("{}/h{h}", TARGETS[m]), scale_h);
            let scales_eh = ds.naive_scale_series(m, h);
            let actual: Vec<f32> = (0..rows.len()).map(|i| ds.target(rows, i, m, h)).collect();
            if let Some(r) = models
                .regressors
                .iter()
                .find(|r| r.target == TARGETS[m] && r.horizon == h)
            {
                let booster = InplaceBooster::from_bytes(&r.trained.model)?;
                let pred = predict_levels(ds, rows, m, &booster, r.quantiles.len())?;
                if !ets_origins.is_empty() {
                    xgb_at.insert(h, ets_origins.iter().map(|&i| pred[i]).collect());
                }
                let mut acc = Accumulator::new(floor);
                let mut per = PerSeries::new(ds.series.len());
                for (i, (p50, p90)) in pred.iter().enumerate() {
                    if actual[i].is_finite() {
                        acc.add(*p50, actual[i]);
                        acc.add_p90(*p90, actual[i]);
                        per.add(rows.entity[i] as usize, *p50, actual[i]);
                    }
                }
                out.push(Row {
                    model: "xgboost".into(),
                    target: TARGETS[m].into(),
                    horizon_slots: h,
                    horizon_minutes: minutes(h),
                    scores: with_series(acc.scores_with(scale, scale_h), &per, &scales_e, &scales_eh),
                });
                for &e in plot_entities {
                    let idx: Vec<usize> = (0..rows.len()).filter(|&i| rows.entity[i] == e).collect();
                    traces.push(Trace {
                        entity: ds.series[e as usize].id.clone(),
                        target: TARGETS[m].into(),
                        horizon_slots: h,
                        slots: idx.iter().map(|&i| rows.slot[i] + h as i64).collect(),
                        actual: idx.iter().map(|&i| actual[i]).collect(),
                        p50: idx.iter().map(|&i| pred[i].0).collect(),
                        p90: idx.iter().map(|&i| pred[i].1).collect(),
                        seasonal_naive: idx
                            .iter()
                            .map(|&i| {
                                baselines::forecast(
                                    Baseline::SeasonalNaive,
                                    ds,
                                    rows,
                                    i,
                                    m,
                                    h,
                                    baseline_opts,
                                    &mut scratch,
                                )
                                .0
                            })
                            .collect(),
                    });
                }
            }
            for b in Baseline::ALL {
                let mut acc = Accumulator::new(floor);
                let mut per = PerSeries::new(ds.series.len());
                for (i, a) in actual.iter().enumerate() {
                    if !a.is_finite() {
                        continue;
                    }
                    let (p50, p90) =
                        baselines::forecast(b, ds, rows, i, m, h, baseline_opts, &mut scratch);
                    acc.add(p50, *a);
                    per.add(rows.entity[i] as usize, p50, *a);
                    if let Some(p90) = p90 {
                        acc.add_p90(p90, *a);
                    }
                }
                out.push(Row {
                    model: b.name().into(),
                    target: TARGETS[m].into(),
                    horizon_slots: h,
                    horizon_minutes: minutes(h),
                    scores: with_series(acc.scores_with(scale, scale_h), &per, &scales_e, &scales_eh),
                });
            }
            // Not a forecast: the median of the target's neighbours on both sides (it reads the
            // future), to show how much of every model's error is noise at this horizon.
            let mut acc = Accumulator::new(floor);
            let mut per = PerSeries::new(ds.series.len());
            for (i, a) in actual.iter().enumerate() {
                if !a.is_finite() {
                    continue;
                }
                if let Some(v) = oracle::interpolation(ds, rows, i, m, h, &mut scratch) {
                    acc.add(v, *a);
                    per.add(rows.entity[i] as usize, v, *a);
                }
            }
            out.push(Row {
                model: oracle::NAME.into(),
                target: TARGETS[m].into(),
                horizon_slots: h,
                horizon_minutes: minutes(h),
                scores: with_series(acc.scores_with(scale, scale_h), &per, &scales_e, &scales_eh),
            });
        }
        if !ets_origins.is_empty() {
            // The statistical baselines and, on the same origins, XGBoost and the naive forecast.
            let n = ds.horizons.len();
            let mut accs: Vec<(String, Vec<Accumulator>)> = Vec::new();
            let step_s = ds.interval_ms / 1000;
            for om in origin_models {
                let t0 = std::time::Instant::now();
                let w = om.window_slots().max(2) as i64;
                let fcs = par_map(&ets_origins, |&i| {
                    let s = &ds.series[rows.entity[i] as usize];
                    let t = rows.slot[i];
                    let hist: Vec<f32> = (t + 1 - w..=t).map(|x| s.at(m, x)).collect();
                    om.forecast(&hist, t * ds.interval_ms / 1000, step_s, max_h)
                });
                let mut acc = vec![Accumulator::new(floor); n];
                let mut failed = 0usize;
                for (k, &i) in ets_origins.iter().enumerate() {
                    let fc = &fcs[k];
                    failed += usize::from(fc.is_none());
                    for (j, &h) in ds.horizons.iter().enumerate() {
                        let a = ds.target(rows, i, m, h);
                        if !a.is_finite() {
                            continue;
                        }
                        match fc {
                            Some((p, up)) if p.len() >= h && up.len() >= h => {
                                acc[j].add((p[h - 1] as f32).max(0.0), a);
                                acc[j].add_p90(up[h - 1] as f32, a);
                            }
                            // A failed fit counts as the naive forecast (never dropped).
                            _ => acc[j].add(ds.now(rows, i, m), a),
                        }
                    }
                }
                origin_fits.push(OriginFit {
                    model: om.name().into(),
                    target: TARGETS[m].into(),
                    origins: ets_origins.len(),
                    failed,
                    secs: t0.elapsed().as_secs_f64(),
                });
                accs.push((format!("{}@origins", om.name()), acc));
            }
            let mut acc_xgb = vec![Accumulator::new(floor); n];
            let mut acc_naive = vec![Accumulator::new(floor); n];
            for (k, &i) in ets_origins.iter().enumerate() {
                for (j, &h) in ds.horizons.iter().enumerate() {
                    let a = ds.target(rows, i, m, h);
                    if !a.is_finite() {
                        continue;
                    }
                    if let Some(x) = xgb_at.get(&h) {
                        acc_xgb[j].add(x[k].0, a);
                        acc_xgb[j].add_p90(x[k].1, a);
                    }
                    acc_naive[j].add(ds.now(rows, i, m), a);
                }
            }
            accs.push(("xgboost@origins".into(), acc_xgb));
            accs.push(("naive@origins".into(), acc_naive));
            for (j, &h) in ds.horizons.iter().enumerate() {
                let scale_h = ds.naive_scale(m, h);
                for (name, acc) in &accs {
                    if name == "xgboost@origins" && !xgb_at.contains_key(&h) {
                        continue;
                    }
                    out.push(Row {
                        model: name.clone(),
                        target: TARGETS[m].into(),
                        horizon_slots: h,
                        horizon_minutes: minutes(h),
                        scores: acc[j].scores_with(scale, scale_h),
                    });
                }
            }
        }
    }
    let classifier = match &models.classifier {
        Some(c) => {
            let booster = InplaceBooster::from_bytes(&c.trained.model)?;
            let mut probs = Vec::new();
            booster.predict(&rows.x, rows.len(), &mut probs)?;
            let mut pairs: Vec<(f32, bool)> = (0..rows.len())
                .filter_map(|i| {
                    ds.series[rows.entity[i] as usize]
                        .peak_within(rows.slot[i], c.horizon)
                        .map(|p| (probs[i], p))
                })
                .collect();
            Some(metrics::classification(&mut pairs, 0.5))
        }
        None => None,
    };
    Ok(Backtest {
        rows: out,
        classifier,
        naive_scale,
        naive_scale_h,
        test_rows: rows.len(),
        origin_fits,
        traces,
    })
}

/// `f` over `items` on every core (scoped threads, contiguous chunks), results in order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len().max(1));
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|sc| {
        let handles: Vec<_> = items.chunks(chunk).map(|c| sc.spawn(|| c.iter().map(&f).collect::<Vec<R>>())).collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a statistical baseline's fit panicked"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{DatasetOptions, Split};
    use headroom_sources::{GenConfig, Generator};

    #[test]
    fn the_classifier_has_its_own_learning_rate_and_the_regressors_ignore_it() {
        let mut g = Generator::new(GenConfig {
            entities: Some(4),
            ..GenConfig::default()
        });
        let start = 1_700_000_000_000 / 300_000 * 300_000;
        let mut records = Vec::new();
        for r in 0..2 * 288 {
            for i in 0..g.entity_count() {
                records.push(g.sample(i, start + r * 300_000));
            }
        }
        let ds = Dataset::build(
            records,
            &DatasetOptions {
                split: Split::None,
                ..DatasetOptions::default()
            },
        )
        .unwrap();
        let fit_with = |classifier_eta: f64| {
            let opts = FitOptions {
                xgb: XgbParams {
                    rounds: 6,
                    max_depth: 3,
                    early_stopping_rounds: 0,
                    nthread: 2,
                    ..XgbParams::default()
                },
                device: DeviceChoice::Cpu,
                targets: vec![0],
                classifier_eta,
                ..FitOptions::default()
            };
            fit(&ds, &opts, &mut Quiet).unwrap()
        };
        let (slow, fast) = (fit_with(0.05), fit_with(0.9));
        assert_eq!(slow.regressors.len(), fast.regressors.len());
        for (a, b) in slow.regressors.iter().zip(&fast.regressors) {
            assert_eq!(a.trained.model, b.trained.model, "{} h{}", a.target, a.horizon);
        }
        let (a, b) = (slow.classifier.unwrap(), fast.classifier.unwrap());
        assert_ne!(a.trained.model, b.trained.model, "the classifier ignored its learning rate");
    }
}

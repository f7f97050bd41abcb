//! Supervised datasets from telemetry, built with the featurizer's own feature code.
//!
//! Every record goes through [`headroom_features::PartitionState::process`] in event-time order,
//! exactly as the featurizer would see it, so a row's features use only data up to its own
//! event time (no leakage by construction). Targets are the raw metric values `h` slots later.
//! The split is temporal: training rows are those whose *targets* fall before the split time,
//! test rows those whose event time is at or after it.

use std::sync::Arc;

use headroom_features::{FeatureConfig, FeatureLayout, Outcome, PartitionState, Sample};
use headroom_schemas::Telemetry;
use rustc_hash::FxHashMap;

use crate::derived::Derivation;

/// The forecast targets, in order; their values come from [`Sample::metrics`] (cpu, mem, net).
pub const TARGETS: [&str; 3] = ["cpu", "mem", "net"];
pub const N_TARGETS: usize = TARGETS.len();

/// Where the split between training and test falls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    /// Fraction of the trace's time span used for training (0 < f < 1).
    Fraction(f64),
    /// Training is the first `n` days of the trace.
    TrainDays(f64),
    /// Everything is training (the `train` command fits on the whole trace).
    None,
}

/// Options of dataset construction.
#[derive(Debug, Clone)]
pub struct DatasetOptions {
    pub features: FeatureConfig,
    /// Forecast horizons in slots of the sampling interval.
    pub horizons: Vec<usize>,
    pub split: Split,
    /// Keep every `n`-th training slot (test rows are never thinned).
    pub train_stride: usize,
    /// Rows of an entity's first `warmup` slots are not used (their windows are mostly empty).
    pub warmup_slots: usize,
    /// The peak label when the data carries no scale-event flag: the value exceeds this
    /// quantile of the entity's own training-period CPU.
    pub peak_quantile: f64,
    /// Trailing window (slots) of the derived median / p90 features and the forecast anchor.
    pub anchor_window: usize,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        DatasetOptions {
            features: FeatureConfig::default(),
            horizons: vec![1, 3, 6],
            split: Split::Fraction(0.75),
            train_stride: 1,
            warmup_slots: 12,
            peak_quantile: 0.97,
            anchor_window: 12,
        }
    }
}

/// One entity's raw series on the slot grid (NaN where no sample landed).
#[derive(Debug, Clone)]
pub struct EntitySeries {
    pub id: String,
    pub first_slot: i64,
    /// cpu, mem, net values by `slot - first_slot`.
    pub values: [Vec<f32>; N_TARGETS],
    /// Scale-event flags as published (`None` when the source carries none).
    pub events: Option<Vec<bool>>,
    /// The peak threshold (training-period quantile of CPU) used when `events` is `None`.
    pub peak_threshold: f32,
    /// Provisioned vCPUs and memory bytes by slot (NaN where the source reports none): what
    /// the policy backtest turns utilization into demand with.
    pub cpu_cores: Vec<f32>,
    pub mem_bytes: Vec<f32>,
}

impl EntitySeries {
    pub fn len(&self) -> usize {
        self.values[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw value of target `m` at `slot` (NaN when absent or outside the series).
    pub fn at(&self, m: usize, slot: i64) -> f32 {
        let i = slot - self.first_slot;
        if i < 0 {
            return f32::NAN;
        }
        self.values[m].get(i as usize).copied().unwrap_or(f32::NAN)
    }

    /// Whether a scale event / peak happens in `(slot, slot + h]`; `None` past the series' end.
    pub fn peak_within(&self, slot: i64, h: usize) -> Option<bool> {
        let i = (slot - self.first_slot) as usize;
        if i + h >= self.len() {
            return None;
        }
        let r = i + 1..=i + h;
        Some(match &self.events {
            Some(ev) => ev[r].iter().any(|e| *e),
            None => self.values[0][r]
                .iter()
                .any(|v| v.is_finite() && *v > self.peak_threshold),
        })
    }
}

/// Feature rows, row-major, with the entity and slot of each row.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub n_features: usize,
    pub x: Vec<f32>,
    pub entity: Vec<u32>,
    pub slot: Vec<i64>,
}

impl Rows {
    fn new(n_features: usize) -> Rows {
        Rows {
            n_features,
            ..Rows::default()
        }
    }

    pub fn len(&self) -> usize {
        self.entity.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entity.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.n_features..(i + 1) * self.n_features]
    }

    fn push(&mut self, entity: u32, slot: i64, x: &[f32]) {
        self.x.extend_from_slice(x);
        self.entity.push(entity);
        self.slot.push(slot);
    }

    /// The rows whose slot satisfies `keep`, in order.
    pub fn filter(&self, keep: impl Fn(i64) -> bool) -> Rows {
        let mut out = Rows::new(self.n_features);
        for i in 0..self.len() {
            if keep(self.slot[i]) {
                out.push(self.entity[i], self.slot[i], self.row(i));
            }
        }
        out
    }
}

/// A dataset ready for training and backtesting.
#[derive(Debug)]
pub struct Dataset {
    pub layout: Arc<FeatureLayout>,
    pub interval_ms: i64,
    pub horizons: Vec<usize>,
    pub series: Vec<EntitySeries>,
    pub train: Rows,
    pub test: Rows,
    /// First slot of the test period (`i64::MAX` without a split).
    pub split_slot: i64,
    pub first_slot: i64,
    pub last_slot: i64,
    /// Index of `{target}_now` in the feature vector, per target.
    pub now_index: [usize; N_TARGETS],
    /// Model-side derived features (appended to every row) and the anchors.
    pub derivation: Derivation,
    /// Records the feature code dropped (duplicates, too late) and records without an entity.
    pub dropped: u64,
}

impl Dataset {
    /// Builds the dataset. `records` may be in any order; they are processed in event-time
    /// order per entity.
    pub fn build(records: Vec<Telemetry>, opts: &DatasetOptions) -> anyhow::Result<Dataset> {
        opts.features
            .validate()
            .map_err(|e| anyhow::anyhow!("feature configuration: {e}"))?;
        anyhow::ensure!(!opts.horizons.is_empty(), "at least one horizon is needed");
        anyhow::ensure!(opts.train_stride >= 1, "train stride must be at least 1");
        anyhow::ensure!(!records.is_empty(), "the trace holds no records");
        let interval_ms = opts.features.interval_ms();
        let max_h = *opts.horizons.iter().max().unwrap_or(&1) as i64;

        let mut by_entity: FxHashMap<String, Vec<Telemetry>> = FxHashMap::default();
        for r in records {
            by_entity.entry(r.entity_id.clone()).or_default().push(r);
        }
        let mut entities: Vec<(String, Vec<Telemetry>)> = by_entity.into_iter().collect();
        entities.sort_by(|a, b| a.0.cmp(&b.0));

        let (mut first_slot, mut last_slot) = (i64::MAX, i64::MIN);
        for (_, recs) in &mut entities {
            recs.sort_by_key(|r| r.ts_ms);
            first_slot = first_slot.min(recs[0].ts_ms.div_euclid(interval_ms));
            last_slot = last_slot.max(recs[recs.len() - 1].ts_ms.div_euclid(interval_ms));
        }
        let span = (last_slot - first_slot + 1) as f64;
        let split_slot = match opts.split {
            Split::None => i64::MAX,
            Split::Fraction(f) => {
                anyhow::ensure!(f > 0.0 && f < 1.0, "split fraction must be in (0, 1), got {f}");
                first_slot + (span * f) as i64
            }
            Split::TrainDays(d) => {
                let slots = (d * 86_400_000.0 / interval_ms as f64) as i64;
                anyhow::ensure!(
                    slots > 0 && slots < span as i64,
                    "--train-days {d} leaves no test period (the trace spans {:.1} days)",
                    span * interval_ms as f64 / 86_400_000.0
                );
                first_slot + slots
            }
        };

        let layout = Arc::new(FeatureLayout::new(&opts.features));
        let now_index = std::array::from_fn(|m| {
            layout
                .index_of(&format!("{}_now", TARGETS[m]))
                .expect("every target has a _now feature")
        });
        let derivation = Derivation::new(&layout, opts.anchor_window.max(1));
        let mut train = Rows::new(derivation.width());
        let mut test = Rows::new(derivation.width());
        let mut series = Vec::with_capacity(entities.len());
        let mut dropped = 0u64;
        let mut out = Vec::new();
        for (e, (id, recs)) in entities.into_iter().enumerate() {
            // One state per entity: entities never interact in the feature code.
            let mut state = PartitionState::with_layout(opts.features.clone(), layout.clone());
            let e_first = recs[0].ts_ms.div_euclid(interval_ms);
            let e_last = recs[recs.len() - 1].ts_ms.div_euclid(interval_ms);
            let n = (e_last - e_first + 1) as usize;
            let mut values: [Vec<f32>; N_TARGETS] = std::array::from_fn(|_| vec![f32::NAN; n]);
            let has_events = recs.iter().any(|r| r.scale_event.is_some());
            let mut events = has_events.then(|| vec![false; n]);
            let mut cpu_cores = vec![f32::NAN; n];
            let mut mem_bytes = vec![f32::NAN; n];
            for (offset, r) in recs.iter().enumerate() {
                let sample = Sample::from(r);
                let slot = r.ts_ms.div_euclid(interval_ms);
                match state.process(&r.entity_id, &sample, offset as u64, &mut out) {
                    Outcome::Emitted { .. } => {}
                    Outcome::Duplicate | Outcome::TooLate { .. } => {
                        dropped += 1;
                        continue;
                    }
                }
                let i = (slot - e_first) as usize;
                for (m, v) in values.iter_mut().enumerate() {
                    v[i] = sample.metrics[m].map_or(f32::NAN, |x| x as f32);
                }
                cpu_cores[i] = r.cpu_cores.map_or(f32::NAN, |x| x as f32);
                mem_bytes[i] = r.mem_bytes.map_or(f32::NAN, |x| x as f32);
                if let (Some(ev), Some(true)) = (events.as_mut(), r.scale_event) {
                    ev[i] = true;
                }
                if i < opts.warmup_slots {
                    continue;
                }
                derivation.extend(&mut out);
                if slot >= split_slot {
                    test.push(e as u32, slot, &out);
                } else if slot + max_h < split_slot && slot.rem_euclid(opts.train_stride as i64) == 0
                {
                    train.push(e as u32, slot, &out);
                }
            }
            let train_end = ((split_slot.min(e_last + 1) - e_first).max(0) as usize).min(n);
            let peak_threshold = quantile_finite(&values[0][..train_end], opts.peak_quantile)
                .unwrap_or(f32::INFINITY);
            if let Some(ev) = &mut events {
                ev.shrink_to_fit();
            }
            series.push(EntitySeries {
                id,
                first_slot: e_first,
                values,
                events,
                peak_threshold,
                cpu_cores,
                mem_bytes,
            });
        }
        Ok(Dataset {
            layout,
            interval_ms,
            horizons: opts.horizons.clone(),
            series,
            train,
            test,
            split_slot,
            first_slot,
            last_slot,
            now_index,
            derivation,
            dropped,
        })
    }

    /// The target of row `i` of `rows` for target `m` at horizon `h` (NaN when unknown).
    pub fn target(&self, rows: &Rows, i: usize, m: usize, h: usize) -> f32 {
        self.series[rows.entity[i] as usize].at(m, rows.slot[i] + h as i64)
    }

    /// The current (forward-filled) value of target `m` in row `i`: the naive forecast.
    pub fn now(&self, rows: &Rows, i: usize, m: usize) -> f32 {
        rows.row(i)[self.now_index[m]]
    }

    /// The anchor of target `m` in row `i` (trailing median): models predict the change from it.
    pub fn anchor(&self, rows: &Rows, i: usize, m: usize) -> f32 {
        rows.row(i)[self.derivation.anchor_index(m)]
    }

    /// Names of the model inputs: the featurizer's, then the derived ones.
    pub fn input_names(&self) -> Vec<String> {
        let mut v = self.layout.names().to_vec();
        v.extend(self.derivation.names());
        v
    }

    /// Sum and count of one series' in-sample absolute naive errors `lag` slots ahead, over
    /// its part of the training period.
    fn naive_errors(&self, s: &EntitySeries, m: usize, lag: usize) -> (f64, u64) {
        let end = ((self.split_slot.min(s.first_slot + s.len() as i64) - s.first_slot).max(0)
            as usize)
            .min(s.len());
        let v = &s.values[m][..end];
        let (mut sum, mut n) = (0.0f64, 0u64);
        for i in lag..v.len() {
            let (a, b) = (v[i], v[i - lag]);
            if a.is_finite() && b.is_finite() {
                sum += f64::from((a - b).abs());
                n += 1;
            }
        }
        (sum, n)
    }

    /// Each series' own in-sample mean absolute error of the naive forecast `lag` slots
    /// ahead over the training period (NaN for a series with no pair): the per-series MASE
    /// scales, indexed like `series`.
    pub fn naive_scale_series(&self, m: usize, lag: usize) -> Vec<f64> {
        self.series
            .iter()
            .map(|s| match self.naive_errors(s, m, lag) {
                (_, 0) => f64::NAN,
                (sum, n) => sum / n as f64,
            })
            .collect()
    }

    /// Pooled in-sample mean absolute error of the naive forecast `lag` slots ahead over the
    /// training period: the MASE scale.
    pub fn naive_scale(&self, m: usize, lag: usize) -> f64 {
        let (sum, n) = self
            .series
            .iter()
            .map(|s| self.naive_errors(s, m, lag))
            .fold((0.0, 0), |(a, b), (c, d)| (a + c, b + d));
        if n == 0 {
            f64::NAN
        } else {
            sum / n as f64
        }
    }
}

/// The `q` quantile of the finite values of `v` (nearest rank), `None` when there are none.
pub fn quantile_finite(v: &[f32], q: f64) -> Option<f32> {
    let mut f: Vec<f32> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        return None;
    }
    let k = ((f.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    let (_, x, _) = f.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    Some(*x)
}

/// Test fixture shared by the baselines' and the oracle's tests: one entity, 3 days of
/// 5-minute slots from slot `base` (returned), split after 2 days, `cpu_util` per slot index `k`.
#[cfg(test)]
pub(crate) fn three_day_cpu_dataset(values: impl Fn(i64) -> Option<f64>) -> (Dataset, i64) {
    let base = 5_000_000;
    let recs: Vec<headroom_schemas::Telemetry> = (0..3 * 288)
        .map(|k| headroom_schemas::Telemetry {
            entity_id: "e".into(),
            ts_ms: (base + k) * 300_000,
            cpu_util: values(k),
            mem_util: Some(0.5),
            ..headroom_schemas::Telemetry::default()
        })
        .collect();
    let opts = DatasetOptions {
        split: Split::TrainDays(2.0),
        ..DatasetOptions::default()
    };
    (Dataset::build(recs, &opts).expect("fixture builds"), base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use headroom_sources::{GenConfig, Generator};

    fn generated(entities: u32, days: i64) -> Vec<Telemetry> {
        let mut g = Generator::new(GenConfig {
            entities: Some(entities),
            ..GenConfig::default()
        });
        let start = 1_700_000_000_000 / 300_000 * 300_000;
        let mut out = Vec::new();
        for r in 0..days * 288 {
            for i in 0..g.entity_count() {
                out.push(g.sample(i, start + r * 300_000));
            }
        }
        out
    }

    #[test]
    fn split_has_no_label_leakage_and_targets_line_up() {
        let recs = generated(3, 4);
        let opts = DatasetOptions {
            split: Split::TrainDays(3.0),
            ..DatasetOptions::default()
        };
        let ds = Dataset::build(recs.clone(), &opts).unwrap();
        let max_h = 6;
        assert!(!ds.train.is_empty() && !ds.test.is_empty());
        assert!(ds.train.slot.iter().all(|s| s + max_h < ds.split_slot));
        assert!(ds.test.slot.iter().all(|s| *s >= ds.split_slot));
        assert_eq!(ds.split_slot - ds.first_slot, 3 * 288);
        // The target 3 slots ahead is the raw CPU of that record.
        let i = ds.test.len() / 2;
        let (e, slot) = (ds.test.entity[i] as usize, ds.test.slot[i]);
        let id = &ds.series[e].id;
        let rec = recs
            .iter()
            .find(|r| &r.entity_id == id && r.ts_ms == (slot + 3) * 300_000)
            .unwrap();
        let t = ds.target(&ds.test, i, 0, 3);
        match rec.cpu_util {
            Some(c) => assert_eq!(t, c as f32),
            None => assert!(t.is_nan()),
        }
        // Generated data carries scale-event labels, and about 3 % of slots are events.
        let ev = ds.series[0].events.as_ref().unwrap();
        let rate = ev.iter().filter(|x| **x).count() as f64 / ev.len() as f64;
        assert!((0.005..0.08).contains(&rate), "event rate {rate}");
    }

    #[test]
    fn features_of_a_row_do_not_depend_on_the_future() {
        // Build on 4 days, then on the same data cut right after a test row: that row's features
        // must be identical (they can only use data up to its own time).
        let recs = generated(2, 4);
        let opts = DatasetOptions {
            split: Split::TrainDays(3.0),
            ..DatasetOptions::default()
        };
        let full = Dataset::build(recs.clone(), &opts).unwrap();
        let i = 100;
        let cut_ms = full.test.slot[i] * 300_000;
        let cut: Vec<Telemetry> = recs.into_iter().filter(|r| r.ts_ms <= cut_ms).collect();
        let part = Dataset::build(cut, &opts).unwrap();
        let j = (0..part.test.len())
            .find(|&j| part.test.entity[j] == full.test.entity[i] && part.test.slot[j] == full.test.slot[i])
            .unwrap();
        assert_eq!(part.test.row(j), full.test.row(i));
        assert_eq!(full.test.n_features, full.layout.len() + 6);
    }

    #[test]
    fn bad_options_are_refused_with_a_reason() {
        let recs = generated(1, 2);
        let e = Dataset::build(
            recs.clone(),
            &DatasetOptions {
                split: Split::TrainDays(5.0),
                ..DatasetOptions::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("leaves no test period"), "{e}");
        let e = Dataset::build(Vec::new(), &DatasetOptions::default()).unwrap_err();
        assert!(e.to_string().contains("no records"), "{e}");
    }
}

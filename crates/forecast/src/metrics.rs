//! Forecast accuracy metrics, accumulated in one pass over (forecast, actual) pairs.

use serde::{Deserialize, Deserializer, Serialize};

/// JSON has no NaN: serde_json writes it as `null`. Reads `null` back as NaN.
pub fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// [`f64_or_nan`] for the values of a map.
pub fn map_f64_or_nan<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, f64>, D::Error> {
    let m = std::collections::BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(m.into_iter().map(|(k, v)| (k, v.unwrap_or(f64::NAN))).collect())
}

fn nan() -> f64 {
    f64::NAN
}

/// Running sums for MAE, RMSE, MAPE, sMAPE, MASE and R² (and pinball loss of a p90).
#[derive(Debug, Clone, Default)]
pub struct Accumulator {
    n: u64,
    abs: f64,
    sq: f64,
    ape: f64,
    ape_n: u64,
    sape: f64,
    sum_y: f64,
    sum_y2: f64,
    /// Below this |actual|, MAPE ignores the point (relative error is undefined near zero).
    mape_floor: f64,
    pinball90: f64,
    covered90: u64,
    n90: u64,
}

/// The metrics of one model on one target and horizon.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Scores {
    pub n: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub mae: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub rmse: f64,
    /// Mean absolute percentage error in %, over points with |actual| ≥ the floor.
    #[serde(deserialize_with = "f64_or_nan")]
    pub mape: f64,
    /// Share of points MAPE left out (|actual| below the floor).
    #[serde(deserialize_with = "f64_or_nan")]
    pub mape_excluded: f64,
    /// Symmetric MAPE in % (0 where forecast and actual are both 0).
    #[serde(deserialize_with = "f64_or_nan")]
    pub smape: f64,
    /// MAE over the in-sample one-step naive MAE of the training period (pooled).
    #[serde(deserialize_with = "f64_or_nan")]
    pub mase: f64,
    /// MAE over the in-sample naive MAE at the same horizon (the naive forecast `h` steps
    /// ahead on the training period, pooled): 1 is "as good as naive at this horizon".
    #[serde(default, deserialize_with = "f64_or_nan")]
    pub mase_h: f64,
    /// The textbook, per-series MASE: each entity's MAE over its own in-sample one-step naive
    /// MAE, averaged over entities (as the M4 competition aggregates it). Entities whose
    /// training period has no naive error (constant, or too short) are left out. NaN where
    /// the rows carry no entity (the sampled-origin rows).
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub mase_series: f64,
    /// The median over entities of the same ratio.
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub mase_series_median: f64,
    /// Per-series MASE with each entity's in-sample naive MAE at the same horizon as the scale:
    /// below 1 for an entity means better than that entity's naive forecast `h` steps ahead.
    /// Mean over entities, then the median.
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub mase_h_series: f64,
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub mase_h_series_median: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub r2: f64,
    /// Pinball loss of the p90 forecast, when the model has one.
    pub pinball90: Option<f64>,
    /// Share of actuals at or below the p90 forecast (0.9 when calibrated).
    pub coverage90: Option<f64>,
}

impl Accumulator {
    pub fn new(mape_floor: f64) -> Accumulator {
        Accumulator {
            mape_floor,
            ..Accumulator::default()
        }
    }

    /// Adds one point; pairs with a non-finite forecast or actual are ignored.
    pub fn add(&mut self, forecast: f32, actual: f32) {
        if !forecast.is_finite() || !actual.is_finite() {
            return;
        }
        let (f, y) = (f64::from(forecast), f64::from(actual));
        let e = f - y;
        self.n += 1;
        self.abs += e.abs();
        self.sq += e * e;
        if y.abs() >= self.mape_floor {
            self.ape += (e / y).abs();
            self.ape_n += 1;
        }
        let d = f.abs() + y.abs();
        if d > 0.0 {
            self.sape += 2.0 * e.abs() / d;
        }
        self.sum_y += y;
        self.sum_y2 += y * y;
    }

    /// Adds the p90 forecast of a point already added with [`Accumulator::add`].
    pub fn add_p90(&mut self, p90: f32, actual: f32) {
        if !p90.is_finite() || !actual.is_finite() {
            return;
        }
        let (q, y) = (f64::from(p90), f64::from(actual));
        self.pinball90 += if y >= q { 0.9 * (y - q) } else { 0.1 * (q - y) };
        self.covered90 += u64::from(y <= q);
        self.n90 += 1;
    }

    pub fn merge(&mut self, o: &Accumulator) {
        self.n += o.n;
        self.abs += o.abs;
        self.sq += o.sq;
        self.ape += o.ape;
        self.ape_n += o.ape_n;
        self.sape += o.sape;
        self.sum_y += o.sum_y;
        self.sum_y2 += o.sum_y2;
        self.pinball90 += o.pinball90;
        self.covered90 += o.covered90;
        self.n90 += o.n90;
    }

    /// The metrics, with `naive_scale` the one-step MASE denominator (and `mase_h` unset).
    pub fn scores(&self, naive_scale: f64) -> Scores {
        self.scores_with(naive_scale, f64::NAN)
    }

    /// The metrics with both MASE denominators: one-step and same-horizon naive.
    pub fn scores_with(&self, naive_scale: f64, naive_scale_h: f64) -> Scores {
        let n = self.n.max(1) as f64;
        let mae = self.abs / n;
        let sst = self.sum_y2 - self.sum_y * self.sum_y / n;
        Scores {
            n: self.n,
            mae,
            rmse: (self.sq / n).sqrt(),
            mape: if self.ape_n == 0 {
                f64::NAN
            } else {
                100.0 * self.ape / self.ape_n as f64
            },
            mape_excluded: 1.0 - self.ape_n as f64 / n,
            smape: 100.0 * self.sape / n,
            mase: if naive_scale > 0.0 {
                mae / naive_scale
            } else {
                f64::NAN
            },
            mase_h: if naive_scale_h > 0.0 {
                mae / naive_scale_h
            } else {
                f64::NAN
            },
            r2: if sst > 0.0 { 1.0 - self.sq / sst } else { f64::NAN },
            mase_series: f64::NAN,
            mase_series_median: f64::NAN,
            mase_h_series: f64::NAN,
            mase_h_series_median: f64::NAN,
            pinball90: (self.n90 > 0).then(|| self.pinball90 / self.n90 as f64),
            coverage90: (self.n90 > 0).then(|| self.covered90 as f64 / self.n90 as f64),
        }
    }
}

/// Absolute errors per entity, for the per-series MASE.
#[derive(Debug, Clone)]
pub struct PerSeries {
    abs: Vec<f64>,
    n: Vec<u64>,
}

impl PerSeries {
    pub fn new(entities: usize) -> PerSeries {
        PerSeries {
            abs: vec![0.0; entities],
            n: vec![0; entities],
        }
    }

    /// Adds one point of `entity`; non-finite pairs are ignored, as by [`Accumulator::add`].
    pub fn add(&mut self, entity: usize, forecast: f32, actual: f32) {
        if forecast.is_finite() && actual.is_finite() {
            self.abs[entity] += f64::from(forecast - actual).abs();
            self.n[entity] += 1;
        }
    }

    /// (mean, median) over entities of MAE / `scales[entity]`, over the entities with points
    /// and a positive finite scale; NaN when there are none.
    pub fn mase(&self, scales: &[f64]) -> (f64, f64) {
        let mut r: Vec<f64> = (0..self.n.len())
            .filter(|&e| self.n[e] > 0 && scales.get(e).is_some_and(|s| s.is_finite() && *s > 0.0))
            .map(|e| self.abs[e] / self.n[e] as f64 / scales[e])
            .collect();
        if r.is_empty() {
            return (f64::NAN, f64::NAN);
        }
        let mean = r.iter().sum::<f64>() / r.len() as f64;
        r.sort_unstable_by(f64::total_cmp);
        let k = r.len() / 2;
        let median = if r.len() % 2 == 1 { r[k] } else { 0.5 * (r[k - 1] + r[k]) };
        (mean, median)
    }
}

/// Precision, recall, false-positive rate and PR-AUC of a probabilistic classifier.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ClassScores {
    pub n: u64,
    pub positives: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub base_rate: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub threshold: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub precision: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub recall: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub false_positive_rate: f64,
    /// Area under the precision-recall curve (average precision); a random classifier scores
    /// the base rate.
    #[serde(deserialize_with = "f64_or_nan")]
    pub pr_auc: f64,
}

/// Scores `(probability, label)` pairs at `threshold`.
pub fn classification(pairs: &mut [(f32, bool)], threshold: f64) -> ClassScores {
    let n = pairs.len() as u64;
    let positives = pairs.iter().filter(|p| p.1).count() as u64;
    let (mut tp, mut fp) = (0u64, 0u64);
    for (p, y) in pairs.iter() {
        if f64::from(*p) >= threshold {
            if *y {
                tp += 1
            } else {
                fp += 1
            }
        }
    }
    let negatives = n - positives;
    // Average precision: sort by descending score, sum precision at each positive.
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut seen_tp, mut ap) = (0u64, 0.0f64);
    for (k, (_, y)) in pairs.iter().enumerate() {
        if *y {
            seen_tp += 1;
            ap += seen_tp as f64 / (k + 1) as f64;
        }
    }
    ClassScores {
        n,
        positives,
        base_rate: positives as f64 / n.max(1) as f64,
        threshold,
        precision: if tp + fp == 0 {
            f64::NAN
        } else {
            tp as f64 / (tp + fp) as f64
        },
        recall: if positives == 0 {
            f64::NAN
        } else {
            tp as f64 / positives as f64
        },
        false_positive_rate: if negatives == 0 {
            f64::NAN
        } else {
            fp as f64 / negatives as f64
        },
        pr_auc: if positives == 0 {
            f64::NAN
        } else {
            ap / positives as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_series_mase_is_each_entitys_own_ratio() {
        let mut p = PerSeries::new(4);
        // Entity 0: MAE 1 over scale 2; entity 1: MAE 3 over scale 1; entity 2: no scale;
        // entity 3: no points.
        p.add(0, 1.0, 0.0);
        p.add(0, 0.0, 1.0);
        p.add(1, 3.0, 0.0);
        p.add(2, 5.0, 0.0);
        p.add(1, f32::NAN, 0.0);
        let (mean, median) = p.mase(&[2.0, 1.0, 0.0, 1.0]);
        assert!((mean - 1.75).abs() < 1e-12, "{mean}");
        assert!((median - 1.75).abs() < 1e-12, "{median}");
        assert!(PerSeries::new(2).mase(&[1.0, 1.0]).0.is_nan());
    }

    #[test]
    fn metrics_match_hand_computed_values() {
        let mut a = Accumulator::new(0.01);
        for (f, y) in [(1.0, 2.0), (3.0, 3.0), (5.0, 4.0), (0.5, 0.0)] {
            a.add(f, y);
        }
        a.add(f32::NAN, 1.0);
        let s = a.scores(0.5);
        assert_eq!(s.n, 4);
        assert!((s.mae - 2.5 / 4.0).abs() < 1e-12);
        assert!((s.rmse - (2.25f64 / 4.0).sqrt()).abs() < 1e-12);
        // MAPE over the three points with |y| >= 0.01: (1/2 + 0 + 1/4) / 3
        assert!((s.mape - 100.0 * 0.75 / 3.0).abs() < 1e-9);
        assert!((s.mape_excluded - 0.25).abs() < 1e-12);
        // sMAPE: 2*1/3, 0, 2*1/9, 2*0.5/0.5
        let smape = 100.0 * (2.0 / 3.0 + 2.0 / 9.0 + 2.0) / 4.0;
        assert!((s.smape - smape).abs() < 1e-9);
        assert!((s.mase - 0.625 / 0.5).abs() < 1e-12);
        // R²: mean y = 2.25, SST = 0.0625+0.5625+3.0625+5.0625 = 8.75, SSE = 2.25
        assert!((s.r2 - (1.0 - 2.25 / 8.75)).abs() < 1e-9);
    }

    #[test]
    fn a_perfect_forecast_scores_perfectly_and_merge_adds_up() {
        let mut a = Accumulator::new(0.0);
        let mut b = Accumulator::new(0.0);
        for i in 0..10 {
            a.add(i as f32, i as f32);
            b.add(i as f32 + 1.0, i as f32);
        }
        let s = a.scores(1.0);
        assert_eq!((s.mae, s.rmse, s.r2), (0.0, 0.0, 1.0));
        a.merge(&b);
        assert_eq!(a.scores(1.0).n, 20);
        assert!((a.scores(1.0).mae - 0.5).abs() < 1e-12);
    }

    #[test]
    fn pinball_and_coverage_of_p90() {
        let mut a = Accumulator::new(0.0);
        for y in 0..100 {
            a.add(50.0, y as f32);
            a.add_p90(89.5, y as f32);
        }
        let s = a.scores(1.0);
        assert!((s.coverage90.unwrap() - 0.9).abs() < 1e-12);
        assert!(s.pinball90.unwrap() > 0.0);
    }

    #[test]
    fn undefined_scores_survive_a_json_round_trip() {
        // An empty accumulator: MAPE, MASE and R² are undefined (NaN), written as null.
        let s = Accumulator::new(0.0).scores(0.0);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("null"), "{json}");
        let back: Scores = serde_json::from_str(&json).unwrap();
        assert!(back.mape.is_nan() && back.mase.is_nan() && back.r2.is_nan());
        assert_eq!(back.n, 0);
    }

    #[test]
    fn classification_scores() {
        let mut pairs = vec![(0.9, true), (0.8, false), (0.7, true), (0.1, false), (0.05, false)];
        let c = classification(&mut pairs, 0.5);
        assert_eq!((c.n, c.positives), (5, 2));
        assert!((c.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.recall - 1.0).abs() < 1e-12);
        assert!((c.false_positive_rate - 1.0 / 3.0).abs() < 1e-12);
        // AP = (1/1 + 2/3) / 2
        assert!((c.pr_auc - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }
}

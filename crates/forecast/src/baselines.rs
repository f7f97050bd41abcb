//! The baselines every report shows beside the models. They read the raw series only up to the
//! forecast origin (the row's own slot), like the models.

use crate::dataset::{Dataset, Rows};

/// A baseline forecaster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// The last observed value (forward-filled), for every horizon.
    Naive,
    /// The value one season (a day) before the target time; the naive value where it is missing.
    SeasonalNaive,
    /// Median (p50) and p90 of the trailing window of raw values.
    WindowPercentile,
}

impl Baseline {
    pub const ALL: [Baseline; 3] = [
        Baseline::Naive,
        Baseline::SeasonalNaive,
        Baseline::WindowPercentile,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Baseline::Naive => "naive",
            Baseline::SeasonalNaive => "seasonal_naive",
            Baseline::WindowPercentile => "window_percentile",
        }
    }
}

/// Baseline settings in slots.
#[derive(Debug, Clone, Copy)]
pub struct BaselineOptions {
    pub season_slots: usize,
    pub window_slots: usize,
    /// The statistical baselines ([`OriginModel`]s: ETS, and Prophet in the trainer) are refitted
    /// at every `origin_every_slots`-th test slot (0: none)…
    pub origin_every_slots: usize,
    /// …ETS on this many trailing slots.
    pub ets_window_slots: usize,
}

/// The baseline's (p50, p90) forecast of target `m` at horizon `h` for row `i`.
pub fn forecast(
    b: Baseline,
    ds: &Dataset,
    rows: &Rows,
    i: usize,
    m: usize,
    h: usize,
    opts: &BaselineOptions,
    scratch: &mut Vec<f32>,
) -> (f32, Option<f32>) {
    let now = ds.now(rows, i, m);
    let s = &ds.series[rows.entity[i] as usize];
    let origin = rows.slot[i];
    match b {
        Baseline::Naive => (now, None),
        Baseline::SeasonalNaive => {
            let at = origin + h as i64 - opts.season_slots as i64;
            let v = s.at(m, at);
            (if v.is_finite() { v } else { now }, None)
        }
        Baseline::WindowPercentile => {
            scratch.clear();
            let lo = origin + 1 - opts.window_slots as i64;
            scratch.extend(
                (lo..=origin)
                    .map(|t| s.at(m, t))
                    .filter(|v| v.is_finite()),
            );
            if scratch.is_empty() {
                return (now, None);
            }
            scratch.sort_unstable_by(|a, b| a.total_cmp(b));
            let q = |p: f64| scratch[((scratch.len() - 1) as f64 * p).round() as usize];
            (q(0.5), Some(q(0.9)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_read_only_the_past() {
        // cpu = slot index / 1000 over 3 days, so every value identifies its slot.
        let (ds, base) = crate::dataset::three_day_cpu_dataset(|k| Some(k as f64 / 1000.0));
        let opts = BaselineOptions {
            season_slots: 288,
            window_slots: 12,
            origin_every_slots: 0,
            ets_window_slots: 0,
        };
        let mut scratch = Vec::new();
        let i = 10;
        let k = (ds.test.slot[i] - base) as f32;
        let f = |b| forecast(b, &ds, &ds.test, i, 0, 3, &opts, &mut scratch.clone());
        assert_eq!(f(Baseline::Naive).0, k / 1000.0);
        assert_eq!(f(Baseline::SeasonalNaive).0, (k + 3.0 - 288.0) / 1000.0);
        let (p50, p90) = forecast(Baseline::WindowPercentile, &ds, &ds.test, i, 0, 3, &opts, &mut scratch);
        assert!((p50 - (k - 5.5) / 1000.0).abs() < 0.0011, "{p50} {k}");
        assert!(p90.unwrap() <= k / 1000.0 + 1e-6);
    }
}

/// The statistical baseline: exponential smoothing with automatic model selection
/// (`augurs-ets` AutoETS over error/trend components, "ZZN"), refitted at each sampled origin on
/// the trailing window of the raw series (forward-filled). Returns the point forecasts and the
/// upper bound of the 80 % interval (the p90) for steps `1..=max_h`, or `None` when the window
/// is too short or the fit fails.
pub fn ets(history: &[f32], max_h: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    use augurs_core::{Fit, Predict};
    let mut last = None;
    let mut y = Vec::with_capacity(history.len());
    for v in history {
        if v.is_finite() {
            last = Some(f64::from(*v));
        }
        if let Some(l) = last {
            y.push(l);
        }
    }
    if y.len() < 24 {
        return None;
    }
    let model = augurs_ets::AutoETS::new(1, "ZZN").ok()?;
    let fitted = model.fit(&y).ok()?;
    let f = fitted.predict(max_h, 0.8).ok()?;
    let upper = f.intervals.map(|i| i.upper).unwrap_or_else(|| f.point.clone());
    Some((f.point, upper))
}

/// A statistical model refitted at each sampled test origin on the trailing raw window of the
/// series, such as ETS or Prophet. Implementations must be usable from several threads: the
/// backtest fits the origins in parallel.
pub trait OriginModel: Sync {
    /// The name in the report (`@origins` is appended).
    fn name(&self) -> &str;
    /// Trailing slots it is fitted on.
    fn window_slots(&self) -> usize;
    /// Fits on `history` (raw values on the slot grid, NaN where missing; the last one is the
    /// origin, at `end_s` Unix seconds, `step_s` seconds apart) and returns the point forecasts
    /// and the p90 for steps `1..=max_h`, or `None` when it cannot fit (scored as naive).
    fn forecast(&self, history: &[f32], end_s: i64, step_s: i64, max_h: usize) -> Option<(Vec<f64>, Vec<f64>)>;
}

/// [`ets`] as an [`OriginModel`].
#[derive(Debug, Clone, Copy)]
pub struct Ets {
    pub window_slots: usize,
}

impl OriginModel for Ets {
    fn name(&self) -> &str {
        "ets"
    }
    fn window_slots(&self) -> usize {
        self.window_slots.max(24)
    }
    fn forecast(&self, history: &[f32], _end_s: i64, _step_s: i64, max_h: usize) -> Option<(Vec<f64>, Vec<f64>)> {
        ets(history, max_h)
    }
}

#[cfg(test)]
mod ets_tests {
    #[test]
    fn ets_follows_a_level_and_a_trend() {
        let flat: Vec<f32> = (0..200).map(|i| 0.5 + if i % 2 == 0 { 0.01 } else { -0.01 }).collect();
        let (p, up) = super::ets(&flat, 6).unwrap();
        assert!((p[5] - 0.5).abs() < 0.02, "{p:?}");
        assert!(up[5] > p[5]);
        let trend: Vec<f32> = (0..200).map(|i| i as f32 * 0.01).collect();
        let (p, _) = super::ets(&trend, 3).unwrap();
        assert!((p[2] - 2.02).abs() < 0.05, "{p:?}");
        assert!(super::ets(&[f32::NAN; 10], 3).is_none());
    }
}

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
    use crate::dataset::{DatasetOptions, Split};
    use headroom_schemas::Telemetry;

    fn record(slot: i64, cpu: f64) -> Telemetry {
        Telemetry {
            entity_id: "e".into(),
            ts_ms: slot * 300_000,
            service: None,
            cluster: None,
            cpu_util: Some(cpu),
            mem_util: Some(0.5),
            net_in_bps: None,
            net_out_bps: None,
            disk_read_bps: None,
            disk_write_bps: None,
            cpu_cores: None,
            mem_bytes: None,
            replicas: None,
            cost_per_hour: None,
            scale_event: None,
            labels: Vec::new(),
        }
    }

    #[test]
    fn baselines_read_only_the_past() {
        // cpu = slot index / 1000 over 3 days, so every value identifies its slot.
        let base = 5_000_000;
        let recs: Vec<Telemetry> = (0..3 * 288)
            .map(|k| record(base + k, k as f64 / 1000.0))
            .collect();
        let ds = Dataset::build(
            recs,
            &DatasetOptions {
                split: Split::TrainDays(2.0),
                ..DatasetOptions::default()
            },
        )
        .unwrap();
        let opts = BaselineOptions {
            season_slots: 288,
            window_slots: 12,
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

//! A reference that is **not** a forecast: it reads the future. Reports show it beside the
//! models to say how much of their error no forecaster could remove.
//!
//! The interpolation oracle "predicts" the value at `origin + h` as the median of the series'
//! own values within `h` slots on both sides of it, the value itself left out: the slots
//! `origin ..= origin + 2h` except `origin + h`. It knows the level around the target, before
//! and after it; what it misses is the target's own deviation from that level, the noise of
//! the series at that time scale. A forecast made `h` slots before the target knows only the
//! first half of that window (and the older past), so on series that are mostly noise around a
//! shifting level it should not be expected to beat the oracle by much, if at all. It is an
//! estimate, not a bound: the median of the neighbours is not the best interpolator, and the
//! forecaster's older past is information the oracle does not use.
//!
//! Its row in a backtest is named [`NAME`]; it is never a candidate for "best model".

use crate::dataset::{Dataset, Rows};

/// The report's name for the oracle's rows.
pub const NAME: &str = "oracle_interp";

/// The interpolation oracle's value for target `m` of row `i` at horizon `h` slots: the median
/// of the finite values in `origin ..= origin + 2h` except the target's own slot. `None` when
/// none of them is finite (the row is then left out of the oracle's scores).
pub fn interpolation(
    ds: &Dataset,
    rows: &Rows,
    i: usize,
    m: usize,
    h: usize,
    scratch: &mut Vec<f32>,
) -> Option<f32> {
    let s = &ds.series[rows.entity[i] as usize];
    let target = rows.slot[i] + h as i64;
    let (lo, hi) = (target - h as i64, target + h as i64);
    scratch.clear();
    scratch.extend(
        (lo..=hi)
            .filter(|&t| t != target)
            .map(|t| s.at(m, t))
            .filter(|v| v.is_finite()),
    );
    let n = scratch.len();
    if n == 0 {
        return None;
    }
    scratch.sort_unstable_by(|a, b| a.total_cmp(b));
    Some(if n % 2 == 1 {
        scratch[n / 2]
    } else {
        (scratch[n / 2 - 1] + scratch[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::dataset::three_day_cpu_dataset as dataset;

    #[test]
    fn the_oracle_reads_both_sides_of_the_target_but_never_the_target() {
        // cpu = slot index / 1000 except a spike (0.95) at every slot divisible by 7: the median of a
        // linear series' symmetric neighbourhood is the target's own (unseen) value.
        let spike = |k: i64| k % 7 == 0;
        let (ds, base) = dataset(|k| Some(if spike(k) { 0.95 } else { k as f64 / 1000.0 }));
        let rows = &ds.test;
        let mut scratch = Vec::new();
        let mut checked = 0;
        for i in 0..200 {
            let k = rows.slot[i] - base;
            for h in [1usize, 3, 6] {
                let target = k + h as i64;
                let got = interpolation(&ds, rows, i, 0, h, &mut scratch).unwrap();
                let neighbours: Vec<i64> = (target - h as i64..=target + h as i64).filter(|&t| t != target).collect();
                if neighbours.iter().any(|&t| spike(t)) || spike(target) {
                    continue;
                }
                assert!((got - target as f32 / 1000.0).abs() < 1e-6, "h {h}: {got} for slot {target}");
                checked += 1;
            }
        }
        assert!(checked > 100, "{checked}");
        // A spike at the target is invisible to it: at h 1 the oracle is the mean of the two
        // neighbours (with the target among the values it would be the upper neighbour).
        let i = (0..rows.len()).find(|&i| spike(rows.slot[i] - base + 1)).unwrap();
        let target = rows.slot[i] - base + 1;
        let got = interpolation(&ds, rows, i, 0, 1, &mut scratch).unwrap();
        assert!((got - target as f32 / 1000.0).abs() < 1e-6, "{got} around slot {target}");
    }

    #[test]
    fn missing_neighbours_are_skipped_and_none_is_none() {
        // Only every 10th slot has a CPU value (slot index / 1000).
        let (ds, base) = dataset(|k| (k % 10 == 0).then_some(k as f64 / 1000.0));
        let rows = &ds.test;
        let mut scratch = Vec::new();
        let at = |k: i64| (0..rows.len()).find(|&i| rows.slot[i] - base == k).unwrap();
        // Origin 581, h 1: the neighbours 581 and 583 are both missing.
        let i = at(2 * 288 + 5);
        assert_eq!(interpolation(&ds, rows, i, 0, 1, &mut scratch), None);
        // Origin 590, h 6: the window 590..=602 holds 590 and 600 (its target 596 is missing
        // anyway); the median of an even count is the mean of the middle two.
        let i = at(2 * 288 + 14);
        let got = interpolation(&ds, rows, i, 0, 6, &mut scratch).unwrap();
        assert!((got - 0.595).abs() < 1e-6, "{got}");
    }
}

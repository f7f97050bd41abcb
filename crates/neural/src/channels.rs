//! The per-step inputs of the recurrent models, computed the same way in training and serving.
//!
//! A step is one slot of an entity's series. Its channels, for each target metric `m` (cpu,
//! mem, net):
//!
//! * level: the forward-filled value ÷ the metric's level scale;
//! * change: the forward-filled value minus the previous slot's ÷ the metric's step scale;
//! * missing: 1 when no sample landed in the slot (the value was carried forward);
//!
//! then the time of day and the day of week as sine/cosine pairs. Both scales are fitted on
//! the training period only ([`Scales::fit`]). Before an entity's first sample every channel
//! is 0 except the missing flags, which are 1: the padding a short history gets, in training
//! as in serving.
//!
//! [`StepEncoder`] is the streaming form (one slot after the other, what the scorer runs per
//! event); [`encode_series`] runs it over a whole series for training and backtests.

use headroom_forecast::dataset::{Dataset, EntitySeries, N_TARGETS};
use serde::{Deserialize, Serialize};

/// Version of the channel definition; a model records it and refuses another.
pub const CHANNELS_VERSION: &str = "seq-v1";
/// Channels per step.
pub const N_CHANNELS: usize = 3 * N_TARGETS + 4;

const DAY_MS: f64 = 86_400_000.0;
const WEEK_MS: f64 = 7.0 * DAY_MS;

/// Scales of the inputs and outputs, fitted on the training period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scales {
    /// Mean absolute value per metric (the level channel's divisor and the head's anchor
    /// input's).
    pub level: [f32; N_TARGETS],
    /// Pooled one-step naive MAE per metric (the change channel's divisor and the unit the
    /// heads predict in).
    pub step: [f32; N_TARGETS],
}

impl Scales {
    /// Fits the scales on the training period of `ds` (slots before its split).
    pub fn fit(ds: &Dataset) -> Scales {
        let mut level = [1.0f32; N_TARGETS];
        let mut step = [1.0f32; N_TARGETS];
        for m in 0..N_TARGETS {
            let (mut sum, mut n) = (0.0f64, 0u64);
            for s in &ds.series {
                let end = ((ds.split_slot.min(s.first_slot + s.len() as i64) - s.first_slot).max(0) as usize)
                    .min(s.len());
                for v in &s.values[m][..end] {
                    if v.is_finite() {
                        sum += f64::from(v.abs());
                        n += 1;
                    }
                }
            }
            let l = if n > 0 { (sum / n as f64) as f32 } else { 1.0 };
            level[m] = if l.is_finite() && l > 1e-6 { l } else { 1.0 };
            let d = ds.naive_scale(m, 1) as f32;
            step[m] = if d.is_finite() && d > 1e-6 { d } else { level[m] };
        }
        Scales { level, step }
    }
}

/// Streaming encoder of one entity's steps.
#[derive(Debug, Clone)]
pub struct StepEncoder {
    scales: Scales,
    last: [f32; N_TARGETS],
}

impl StepEncoder {
    pub fn new(scales: Scales) -> StepEncoder {
        StepEncoder {
            scales,
            last: [f32::NAN; N_TARGETS],
        }
    }

    /// The channels of the slot starting at `slot_start_ms` whose raw values are `raw` (NaN
    /// where absent), written to `out` (length [`N_CHANNELS`]).
    pub fn step(&mut self, slot_start_ms: i64, raw: [f32; N_TARGETS], out: &mut [f32]) {
        debug_assert_eq!(out.len(), N_CHANNELS);
        for m in 0..N_TARGETS {
            let prev = self.last[m];
            let missing = !raw[m].is_finite();
            let now = if missing { prev } else { raw[m] };
            out[3 * m] = if now.is_finite() { now / self.scales.level[m] } else { 0.0 };
            out[3 * m + 1] = if now.is_finite() && prev.is_finite() {
                ((now - prev) / self.scales.step[m]).clamp(-50.0, 50.0)
            } else {
                0.0
            };
            out[3 * m + 2] = if missing { 1.0 } else { 0.0 };
            self.last[m] = now;
        }
        time_channels(slot_start_ms, &mut out[3 * N_TARGETS..]);
    }
}

/// Time of day and day of week as sine/cosine pairs.
pub(crate) fn time_channels(ms: i64, out: &mut [f32]) {
    let day = (ms as f64).rem_euclid(DAY_MS) / DAY_MS * std::f64::consts::TAU;
    let week = (ms as f64).rem_euclid(WEEK_MS) / WEEK_MS * std::f64::consts::TAU;
    out[0] = day.sin() as f32;
    out[1] = day.cos() as f32;
    out[2] = week.sin() as f32;
    out[3] = week.cos() as f32;
}

/// The padding step (before an entity's first sample).
pub fn padding(out: &mut [f32]) {
    out.fill(0.0);
    for m in 0..N_TARGETS {
        out[3 * m + 2] = 1.0;
    }
}

/// All steps of a series, row-major (`len × N_CHANNELS`).
pub fn encode_series(s: &EntitySeries, interval_ms: i64, scales: Scales) -> Vec<f32> {
    let mut enc = StepEncoder::new(scales);
    let mut out = vec![0.0f32; s.len() * N_CHANNELS];
    for i in 0..s.len() {
        let raw = std::array::from_fn(|m| s.values[m][i]);
        enc.step((s.first_slot + i as i64) * interval_ms, raw, &mut out[i * N_CHANNELS..(i + 1) * N_CHANNELS]);
    }
    out
}

/// Every series of a dataset encoded, and the gathering of input windows from them.
#[derive(Debug)]
pub struct Encoded {
    pub input_len: usize,
    series: Vec<(i64, Vec<f32>)>,
}

impl Encoded {
    pub fn new(ds: &Dataset, scales: Scales, input_len: usize) -> Encoded {
        Encoded {
            input_len,
            series: ds
                .series
                .iter()
                .map(|s| (s.first_slot, encode_series(s, ds.interval_ms, scales)))
                .collect(),
        }
    }

    /// Entity `e`'s first slot and its encoded steps (`len × N_CHANNELS`).
    pub fn steps(&self, e: usize) -> (i64, &[f32]) {
        let (first, steps) = &self.series[e];
        (*first, steps)
    }

    /// Appends the window of `input_len` steps ending at `slot` (inclusive) of entity `e` to
    /// `out`, padded at the front where the series starts later.
    pub fn window(&self, e: usize, slot: i64, out: &mut Vec<f32>) {
        let (first, steps) = &self.series[e];
        let n = (steps.len() / N_CHANNELS) as i64;
        let mut pad = [0.0f32; N_CHANNELS];
        padding(&mut pad);
        for k in (0..self.input_len as i64).rev() {
            let i = slot - k - first;
            if i < 0 || i >= n {
                out.extend_from_slice(&pad);
            } else {
                let i = i as usize;
                out.extend_from_slice(&steps[i * N_CHANNELS..(i + 1) * N_CHANNELS]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_carry_values_forward_and_flag_them() {
        let scales = Scales {
            level: [50.0, 40.0, 1000.0],
            step: [5.0, 2.0, 100.0],
        };
        let mut enc = StepEncoder::new(scales);
        let mut a = [0.0; N_CHANNELS];
        enc.step(0, [10.0, f32::NAN, 500.0], &mut a);
        assert_eq!(&a[..9], &[0.2, 0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.0, 0.0]);
        // Midnight: time of day at angle 0.
        assert!((a[9]).abs() < 1e-6 && (a[10] - 1.0).abs() < 1e-6);
        let mut b = [0.0; N_CHANNELS];
        enc.step(300_000, [20.0, 8.0, f32::NAN], &mut b);
        // cpu: level 0.4, change (20-10)/5; mem first seen (no change yet); net carried.
        assert_eq!(&b[..9], &[0.4, 2.0, 0.0, 0.2, 0.0, 0.0, 0.5, 0.0, 1.0]);
        let mut p = [9.0; N_CHANNELS];
        padding(&mut p);
        assert_eq!(p.iter().sum::<f32>(), 3.0);
    }
}

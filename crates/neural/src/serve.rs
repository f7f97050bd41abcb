//! Serving from the featurizer's vectors: what the scorer runs on every features event.
//!
//! A model reads the last `input_len` slots of the entity. The featurizer's vector already
//! carries them: `<metric>_now` and `<metric>_lag_1 … _lag_L`, forward-filled exactly as the
//! [`StepEncoder`](crate::channels::StepEncoder) forward-fills the series in training, so the
//! level and change channels of every step of the window, and the change of its first step
//! (from `lag_L`), are computed from the vector alone. One thing the vector does not carry is
//! which of the lagged slots had no sample (it carries the current slot's `<metric>_imputed`
//! flag only): [`SlotFlags`] keeps that per entity, a few bytes per slot, from the events the
//! scorer has seen. Slots older than the first event seen since the scorer started are taken
//! as observed (the common case; the vector still gives their forward-filled values).
//!
//! With that, a window built here equals the training window of the same row bit for bit,
//! except in an entity's first `input_len` slots, where training pads before the first sample
//! and the featurizer back-fills the lags from the current value (tested in `tests.rs`).
//!
//! The model needs `input_len ≤` the featurizer's lags; [`NeuralServing::load`] refuses a
//! model that reads further back, naming both.

use std::collections::VecDeque;
use std::path::Path;

use headroom_forecast::artifact::NeuralFile;
use headroom_forecast::dataset::{N_TARGETS, TARGETS};

use crate::channels::{time_channels, N_CHANNELS};
use crate::model::{to_levels, Predictor};

/// Which slots of an entity's recent past had a sample of each metric: bit `m` of a slot's
/// byte is set when metric `m` was observed. Newest slot first.
#[derive(Debug, Clone, Default)]
pub struct SlotFlags {
    newest: i64,
    bits: VecDeque<u8>,
}

impl SlotFlags {
    /// Records an event of `slot` that observed the metrics in `observed`; keeps `keep`
    /// slots. Slots skipped since the previous event are recorded as unobserved. An event for
    /// an older slot still held (a late one) overwrites that slot; one older than that is
    /// ignored.
    pub fn record(&mut self, slot: i64, observed: u8, keep: usize) {
        if self.bits.is_empty() {
            self.newest = slot;
            self.bits.push_front(observed);
        } else if slot > self.newest {
            let gap = (slot - self.newest).min(keep as i64 + 1) as usize;
            for _ in 1..gap {
                self.bits.push_front(0);
            }
            self.bits.push_front(observed);
            self.newest = slot;
        } else if let Some(b) = usize::try_from(self.newest - slot).ok().and_then(|k| self.bits.get_mut(k)) {
            *b = observed;
        }
        self.bits.truncate(keep.max(1));
    }

    /// The newest slot recorded.
    pub fn newest(&self) -> i64 {
        self.newest
    }

    /// The observed bits of `slot`, when this entity's history covers it.
    pub fn observed(&self, slot: i64) -> Option<u8> {
        let k = usize::try_from(self.newest.checked_sub(slot)?).ok()?;
        self.bits.get(k).copied()
    }

    /// The observed bits of an event's raw values (NaN or absent = not observed).
    pub fn bits(raw: [f32; N_TARGETS]) -> u8 {
        raw.iter().enumerate().fold(0u8, |b, (m, v)| if v.is_finite() { b | (1 << m) } else { b })
    }
}

/// Forgets the flags of entities with no event in the `idle_slots` before `clock` (a
/// partition's newest slot), as the featurizer forgets their state after its `idle_expiry`:
/// an entity that comes back after that starts afresh in both. Returns how many were dropped.
pub fn evict_idle(entities: &mut std::collections::HashMap<String, SlotFlags>, clock: i64, idle_slots: i64) -> usize {
    let before = entities.len();
    entities.retain(|_, f| f.newest >= clock - idle_slots);
    before - entities.len()
}

/// Where a model's window sits in the featurizer's vector.
#[derive(Debug, Clone)]
struct VectorWindow {
    input_len: usize,
    /// Per metric: `now`, then `lag_1 … lag_input_len`.
    levels: [Vec<usize>; N_TARGETS],
    imputed: [usize; N_TARGETS],
}

impl VectorWindow {
    fn new(names: &[String], input_len: usize) -> anyhow::Result<VectorWindow> {
        let index_of = |n: &str| names.iter().position(|x| x == n);
        let mut levels: [Vec<usize>; N_TARGETS] = Default::default();
        let mut imputed = [0; N_TARGETS];
        for (m, t) in TARGETS.iter().enumerate() {
            let now = index_of(&format!("{t}_now")).ok_or_else(|| anyhow::anyhow!("the features have no `{t}_now`"))?;
            levels[m].push(now);
            for k in 1..=input_len {
                let lag = index_of(&format!("{t}_lag_{k}")).ok_or_else(|| {
                    let have = (1..).take_while(|k| index_of(&format!("{t}_lag_{k}")).is_some()).count();
                    anyhow::anyhow!(
                        "the model reads {input_len} slots back but the features carry {have} lags of {t}: \
                         configure the featurizer with features.lags ≥ {input_len}, or train with --input-len ≤ {have}"
                    )
                })?;
                levels[m].push(lag);
            }
            imputed[m] = index_of(&format!("{t}_imputed")).ok_or_else(|| anyhow::anyhow!("the features have no `{t}_imputed`"))?;
        }
        Ok(VectorWindow {
            input_len,
            levels,
            imputed,
        })
    }
}

/// A neural model of a version, ready to score featurizer vectors.
#[derive(Debug)]
pub struct NeuralServing {
    pub predictor: Predictor,
    window: VectorWindow,
    q50: usize,
    q90: usize,
}

impl NeuralServing {
    /// Loads the model `entry` of the version in `dir`, for vectors with `feature_names` on a
    /// grid of `interval_ms`.
    pub fn load(dir: &Path, entry: &NeuralFile, feature_names: &[String], interval_ms: i64) -> anyhow::Result<NeuralServing> {
        let stem = entry.meta_file.strip_suffix(".json").unwrap_or(&entry.meta_file);
        let predictor = Predictor::load(dir, stem)?;
        NeuralServing::new(predictor, feature_names, interval_ms)
    }

    pub fn new(predictor: Predictor, feature_names: &[String], interval_ms: i64) -> anyhow::Result<NeuralServing> {
        let meta = &predictor.meta;
        anyhow::ensure!(
            meta.interval_ms == interval_ms,
            "the {} model was trained on a {} ms grid, the features are on a {interval_ms} ms grid",
            meta.family,
            meta.interval_ms
        );
        let window = VectorWindow::new(feature_names, meta.input_len).map_err(|e| anyhow::anyhow!("{} model: {e}", meta.family))?;
        let q50 = meta.quantiles.iter().position(|q| (*q - 0.5).abs() < 1e-6).unwrap_or(0);
        let q90 = meta.quantiles.len() - 1;
        Ok(NeuralServing {
            predictor,
            window,
            q50,
            q90,
        })
    }

    pub fn family(&self) -> &str {
        &self.predictor.meta.family
    }

    pub fn input_len(&self) -> usize {
        self.window.input_len
    }

    /// The `(target index into TARGETS, horizon in slots)` of each output pair, in order.
    pub fn heads(&self) -> Vec<(usize, usize)> {
        let m = &self.predictor.meta;
        m.targets
            .iter()
            .filter_map(|t| TARGETS.iter().position(|x| x == t))
            .flat_map(|t| m.horizons_slots.iter().map(move |&h| (t, h)))
            .collect()
    }

    /// Which metrics the vector's own slot observed (from its `<metric>_imputed` flags): what
    /// [`SlotFlags::record`] takes.
    pub fn observed_bits(&self, v: &[f32]) -> u8 {
        (0..N_TARGETS).fold(0u8, |b, m| if v[self.window.imputed[m]] > 0.5 { b } else { b | (1 << m) })
    }

    /// The vector's current (forward-filled) values: the level a forecast starts from when
    /// the anchor is unknown.
    pub fn nows(&self, v: &[f32]) -> [f32; N_TARGETS] {
        std::array::from_fn(|m| v[self.window.levels[m][0]])
    }

    /// Appends the window of the event at `slot` whose vector is `v` to `x` (`input_len ×
    /// N_CHANNELS` values). `flags` is the entity's history, this event included.
    pub fn push_window(&self, v: &[f32], slot: i64, flags: &SlotFlags, x: &mut Vec<f32>) {
        let w = &self.window;
        let scales = &self.predictor.meta.scales;
        let interval = self.predictor.meta.interval_ms;
        let start = x.len();
        x.resize(start + w.input_len * N_CHANNELS, 0.0);
        for (j, step) in x[start..].chunks_exact_mut(N_CHANNELS).enumerate() {
            // Step j is `k` slots back: the oldest first.
            let k = w.input_len - 1 - j;
            let t = slot - k as i64;
            let observed = if k == 0 {
                None
            } else {
                flags.observed(t)
            };
            for m in 0..N_TARGETS {
                let now = v[w.levels[m][k]];
                let prev = v[w.levels[m][k + 1]];
                step[3 * m] = if now.is_finite() { now / scales.level[m] } else { 0.0 };
                step[3 * m + 1] = if now.is_finite() && prev.is_finite() {
                    ((now - prev) / scales.step[m]).clamp(-50.0, 50.0)
                } else {
                    0.0
                };
                let missing = match (k, observed) {
                    (0, _) => v[w.imputed[m]] > 0.5,
                    (_, Some(b)) => b & (1 << m) == 0,
                    (_, None) => false,
                };
                step[3 * m + 2] = if missing { 1.0 } else { 0.0 };
            }
            time_channels(t * interval, &mut step[3 * N_TARGETS..]);
        }
    }

    /// The static inputs of a row from its anchors (the version's trailing medians).
    pub fn push_statics(&self, anchors: [f32; N_TARGETS], statics: &mut Vec<f32>) {
        let level = &self.predictor.meta.scales.level;
        statics.extend((0..N_TARGETS).map(|m| if anchors[m].is_finite() { anchors[m] / level[m] } else { 0.0 }));
    }

    /// Predicts `n` rows: `x` and `statics` as [`push_window`](Self::push_window) and
    /// [`push_statics`](Self::push_statics) built them, `anchors` and `nows` per row. Writes
    /// `n × heads` `(p50, p90)` levels, row-major, to `out`, splitting the rows over `threads`.
    pub fn predict(
        &self,
        x: &[f32],
        statics: &[f32],
        anchors: &[[f32; N_TARGETS]],
        nows: &[[f32; N_TARGETS]],
        threads: usize,
        out: &mut Vec<(f32, f32)>,
    ) {
        let n = anchors.len();
        let per_x = self.window.input_len * N_CHANNELS;
        let heads = self.heads();
        let outputs = heads.len() * self.predictor.meta.quantiles.len();
        out.clear();
        out.resize(n * heads.len(), (0.0, 0.0));
        let threads = threads.clamp(1, n.div_ceil(128).max(1));
        let rows = n.div_ceil(threads);
        let run = |lo: usize, hi: usize, out: &mut [(f32, f32)]| {
            let raw = self.predictor.raw(&x[lo * per_x..hi * per_x], &statics[lo * N_TARGETS..hi * N_TARGETS], hi - lo);
            for (r, i) in (lo..hi).enumerate() {
                let o = &raw[r * outputs..(r + 1) * outputs];
                for (j, &(m, _)) in heads.iter().enumerate() {
                    out[r * heads.len() + j] = self.level(m, anchors[i][m], nows[i][m], o, j);
                }
            }
        };
        if threads == 1 {
            run(0, n, out);
            return;
        }
        std::thread::scope(|s| {
            for (c, chunk) in out.chunks_mut(rows * heads.len()).enumerate() {
                let lo = c * rows;
                let hi = (lo + rows).min(n);
                s.spawn(move || run(lo, hi, chunk));
            }
        });
    }

    /// Output pair `j` of target `m` as levels (the backtests' conversion).
    fn level(&self, m: usize, anchor: f32, now: f32, raw: &[f32], j: usize) -> (f32, f32) {
        let nq = self.predictor.meta.quantiles.len();
        let a = if anchor.is_finite() { anchor } else { now };
        to_levels(a, raw[j * nq + self.q50], raw[j * nq + self.q90], self.predictor.meta.scales.step[m])
    }
}

//! The state of one input partition: every entity seen on it, and the feature computation.

use std::sync::Arc;

use headroom_schemas::Telemetry;
use rustc_hash::FxHashMap;

use crate::calendar;
use crate::names::{FeatureLayout, METRICS};
use crate::state::{BlockStat, EntityState, Write};
use crate::FeatureConfig;

const N: usize = METRICS.len();

/// The inputs of one event, taken from a telemetry record.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub ts_ms: i64,
    /// cpu, mem, net (in + out), disk (read + write)
    pub metrics: [Option<f64>; N],
    pub cpu_cores: Option<f64>,
    pub mem_bytes: Option<f64>,
    pub replicas: Option<f64>,
    pub cost_per_hour: Option<f64>,
}

fn sum_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
    }
}

impl From<&Telemetry> for Sample {
    fn from(t: &Telemetry) -> Sample {
        Sample {
            ts_ms: t.ts_ms,
            metrics: [
                t.cpu_util,
                t.mem_util,
                sum_opt(t.net_in_bps, t.net_out_bps),
                sum_opt(t.disk_read_bps, t.disk_write_bps),
            ],
            cpu_cores: t.cpu_cores,
            mem_bytes: t.mem_bytes,
            replicas: t.replicas.map(f64::from),
            cost_per_hour: t.cost_per_hour,
        }
    }
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The feature vector was written; bit `m` of the mask is set when metric `m` was imputed.
    Emitted { imputed_mask: u8 },
    /// Same entity and event time as a retained event: dropped and counted.
    Duplicate,
    /// Older than the entity's newest slot minus the allowed lateness.
    TooLate { behind_ms: i64 },
}

/// Per-partition feature state. Not shared between threads: one per assigned partition.
#[derive(Debug)]
pub struct PartitionState {
    cfg: FeatureConfig,
    layout: Arc<FeatureLayout>,
    cap: usize,
    interval_ms: i64,
    lateness_slots: i64,
    /// (window length in slots, index in the configured order), shortest first.
    windows_sorted: Vec<(usize, usize)>,
    entities: FxHashMap<Box<str>, EntityState>,
    max_ts: i64,
    /// Precomputed sin/cos for each minute of the day, the 7 days and the 12 months.
    trig: Trig,
}

impl PartitionState {
    pub fn new(cfg: FeatureConfig) -> PartitionState {
        let layout = Arc::new(FeatureLayout::new(&cfg));
        PartitionState::with_layout(cfg, layout)
    }

    /// Shares one layout between the partitions of a service.
    pub fn with_layout(cfg: FeatureConfig, layout: Arc<FeatureLayout>) -> PartitionState {
        let mut windows_sorted: Vec<(usize, usize)> = cfg
            .window_slots()
            .into_iter()
            .enumerate()
            .map(|(i, w)| (w, i))
            .collect();
        windows_sorted.sort_unstable();
        let tau = std::f64::consts::TAU;
        let dow_trig = std::array::from_fn(|d| {
            let a = tau * d as f64 / 7.0;
            (a.sin() as f32, a.cos() as f32)
        });
        let month_trig = std::array::from_fn(|m| {
            let a = tau * m as f64 / 12.0;
            (a.sin() as f32, a.cos() as f32)
        });
        let minute_trig = (0..1440)
            .map(|m| {
                let a = tau * m as f64 / 1440.0;
                (a.sin() as f32, a.cos() as f32)
            })
            .collect();
        PartitionState {
            trig: Trig {
                minute: minute_trig,
                dow: dow_trig,
                month: month_trig,
            },
            cap: cfg.capacity(),
            interval_ms: cfg.interval_ms(),
            lateness_slots: cfg.lateness_slots(),
            windows_sorted,
            layout,
            cfg,
            entities: FxHashMap::default(),
            max_ts: i64::MIN,
        }
    }

    pub fn layout(&self) -> &Arc<FeatureLayout> {
        &self.layout
    }

    pub fn entity_count(&self) -> usize {
        self.entities.len()
    }

    /// Heap bytes held by entity state (rings, keys and map overhead), for the state-size gauge.
    pub fn state_bytes(&self) -> usize {
        let per = EntityState::heap_bytes(self.cap) + std::mem::size_of::<EntityState>() + 16;
        self.entities.keys().map(|k| k.len() + per).sum::<usize>()
    }

    /// Updates the entity's state with `sample` and, unless it is a duplicate or too late,
    /// writes its feature vector into `out` (resized to the layout's length).
    pub fn process(
        &mut self,
        entity: &str,
        sample: &Sample,
        offset: u64,
        out: &mut Vec<f32>,
    ) -> Outcome {
        let slot = sample.ts_ms.div_euclid(self.interval_ms);
        let within = sample.ts_ms.rem_euclid(self.interval_ms) as u32;
        let cap = self.cap;
        let state = match self.entities.get_mut(entity) {
            Some(s) => s,
            None => self
                .entities
                .entry(entity.into())
                .or_insert_with(|| EntityState::new(cap, slot)),
        };
        state.prefetch(
            slot,
            self.windows_sorted.iter().map(|&(w, _)| w),
            self.layout.lags,
        );
        match state.write(
            slot,
            within,
            sample.ts_ms,
            &sample.metrics,
            offset,
            self.lateness_slots,
        ) {
            Write::Duplicate => return Outcome::Duplicate,
            Write::TooLate { behind_slots } => {
                return Outcome::TooLate {
                    behind_ms: behind_slots * self.interval_ms,
                }
            }
            Write::Written => {}
        }
        let ctx = [
            sample.cpu_cores,
            sample.mem_bytes,
            sample.replicas,
            sample.cost_per_hour,
        ];
        for (c, v) in state.context.iter_mut().zip(ctx) {
            c.offer(v, sample.ts_ms, offset);
        }
        self.max_ts = self.max_ts.max(sample.ts_ms);
        out.clear();
        out.resize(self.layout.len(), 0.0);
        // One map lookup per event: `state` stays borrowed from the map; the other fields are
        // borrowed separately.
        let state: &EntityState = state;
        compute(
            state,
            &self.windows_sorted,
            self.layout.lags,
            self.layout.per_metric(),
            slot,
            out,
        );
        let mask = out_imputed_mask(out, self.layout.per_metric());
        time_and_extras(
            &self.trig,
            &self.layout,
            self.interval_ms,
            state,
            sample.ts_ms,
            out,
        );
        Outcome::Emitted { imputed_mask: mask }
    }
}

/// Sine/cosine tables for the time features.
#[derive(Debug)]
struct Trig {
    minute: Box<[(f32, f32)]>,
    dow: [(f32, f32); 7],
    month: [(f32, f32); 12],
}

fn time_and_extras(
    trig: &Trig,
    layout: &FeatureLayout,
    interval_ms: i64,
    state: &EntityState,
    ts_ms: i64,
    out: &mut [f32],
) {
    let base = N * layout.per_metric();
    let (hour, dow, month) = calendar::fields(ts_ms);
    let (hs, hc) = trig.minute[((hour * 60.0) as usize).min(1439)];
    out[base] = hs;
    out[base + 1] = hc;
    out[base + 2] = trig.dow[dow as usize].0;
    out[base + 3] = trig.dow[dow as usize].1;
    out[base + 4] = trig.month[(month - 1) as usize].0;
    out[base + 5] = trig.month[(month - 1) as usize].1;
    out[base + 6] = if dow >= 5 { 1.0 } else { 0.0 };
    let lowest_ms = state.lowest_slot() * interval_ms;
    let ctx = |i: usize| {
        let c = &state.context[i];
        (c.set && c.ts_ms >= lowest_ms).then_some(c.value)
    };
    let per = layout.per_metric();
    let cpu = f64::from(out[0]);
    let mem = f64::from(out[per]);
    let net = f64::from(out[2 * per]);
    let (cores, mem_bytes, replicas, cost) = (ctx(0), ctx(1), ctx(2), ctx(3));
    let e = base + 7;
    out[e] = if cpu > 1e-3 {
        (mem / cpu).min(1000.0) as f32
    } else {
        0.0
    };
    out[e + 1] = match (cost, cores) {
        (Some(cost), Some(cores)) if cpu * cores > 1e-3 => (cost / (cpu * cores)) as f32,
        _ => 0.0,
    };
    out[e + 2] = match replicas {
        Some(r) if r >= 1.0 => (net / r) as f32,
        _ => net as f32,
    };
    out[e + 3] = cores.unwrap_or(0.0) as f32;
    out[e + 4] = (mem_bytes.unwrap_or(0.0) / (1u64 << 30) as f64) as f32;
    out[e + 5] = replicas.unwrap_or(0.0) as f32;
    out[e + 6] = cost.unwrap_or(0.0) as f32;
}

impl PartitionState {
    /// The smallest input offset still retained by any entity of this partition: replaying
    /// the partition from it (with outputs suppressed) rebuilds exactly this state.
    pub fn replay_floor(&mut self) -> Option<u64> {
        let iv = self.interval_ms;
        let floor = self.entities.values_mut().map(|e| e.floor(iv)).min()?;
        (floor != u64::MAX).then_some(floor)
    }

    /// Drops entities idle for longer than `idle_expiry` in partition event time. Returns how
    /// many were dropped.
    pub fn expire_idle(&mut self) -> usize {
        let horizon = self
            .max_ts
            .saturating_sub(self.cfg.idle_expiry.as_millis() as i64);
        let before = self.entities.len();
        self.entities.retain(|_, e| e.newest_ts >= horizon);
        before - self.entities.len()
    }
}

fn out_imputed_mask(out: &[f32], per: usize) -> u8 {
    let mut mask = 0u8;
    for m in 0..N {
        if out[m * per + per - 1] > 0.5 {
            mask |= 1 << m;
        }
    }
    mask
}

/// Writes the per-metric block (now, windows, lags, imputed) for every metric.
fn compute(
    state: &EntityState,
    windows: &[(usize, usize)],
    lags: usize,
    per: usize,
    slot: i64,
    out: &mut [f32],
) {
    let cap = state.cap();
    let lowest = state.lowest_slot();
    for m in 0..N {
        let ring = &state.values[m * cap..(m + 1) * cap];
        let block = &mut out[m * per..(m + 1) * per];
        let observed = ring[state.pos(slot)];
        let (now, imputed) = if observed.is_nan() {
            (state.ffill(m, slot - 1).unwrap_or(0.0), true)
        } else {
            (observed, false)
        };
        block[0] = now;
        // Windows shortest first: each one extends the previous by the older slots it adds,
        // so the longest window is read once in all.
        let mut st = BlockStat::EMPTY;
        let mut covered_lo = slot + 1;
        for &(w, idx) in windows {
            // Slots (slot - w, slot], clamped to what the ring still holds.
            let lo = (slot - w as i64 + 1).max(lowest);
            if lo < covered_lo {
                st.merge(&state.window(m, lo, covered_lo - 1));
                covered_lo = lo;
            }
            let o = 1 + 4 * idx;
            if st.n == 0 {
                block[o] = now;
                block[o + 1] = 0.0;
                block[o + 2] = now;
                block[o + 3] = now;
            } else {
                let n = f64::from(st.n);
                let mean = st.sum / n;
                let var = (st.sumsq / n - mean * mean).max(0.0);
                block[o] = mean as f32;
                block[o + 1] = var.sqrt() as f32;
                block[o + 2] = st.min;
                block[o + 3] = st.max;
            }
        }
        // Lags: forward-filled from older slots, back-filled from the current value.
        let lag_base = 1 + 4 * windows.len();
        let oldest_lag = slot - lags as i64;
        let mut carry = if oldest_lag > lowest {
            state.ffill(m, oldest_lag - 1)
        } else {
            None
        };
        let mut p = state.pos(oldest_lag);
        for k in (1..=lags).rev() {
            let s = slot - k as i64;
            if s >= lowest {
                let v = ring[p];
                if !v.is_nan() {
                    carry = Some(v);
                }
            }
            block[lag_base + k - 1] = carry.unwrap_or(now);
            p += 1;
            if p == cap {
                p = 0;
            }
        }
        block[per - 1] = if imputed { 1.0 } else { 0.0 };
    }
}

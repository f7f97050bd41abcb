//! The policy backtest's engine: replays one entity's demand through a policy, applying each
//! change after the provisioning lead time, and accounts for slack, shortfall, actions and
//! cost. The predictive policy is the [`Recommender`] itself; the simple policies operators use
//! today are here beside it, on the same capacity grid, bounds and lead time:
//!
//! - [`Reactive`]: the threshold autoscaler of the second seed document. Above 0.8 utilization
//!   it scales up, below 0.3 down, in both cases to the capacity that puts the current demand
//!   at the middle of the band (0.55), with the predictive policy's cooldowns.
//! - [`Rightsizer`]: p90 of the trailing 24 h of demand plus 15 %, with the same hysteresis.
//! - [`StaticPeak`]: the peak demand of the history before the test, provisioned throughout.
//! - [`AsTraced`]: the capacity the trace itself had (what the operators provisioned).

use std::collections::VecDeque;

use crate::config::{Policy, Price};
use crate::decide::{Action, EntityState, ForecastView, Horizon, Observation, Recommender};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// One entity's test period: per slot, demand (NaN when missing), the trace's provisioned
/// capacity, and the forecasts made at that slot (utilization of the trace's capacity).
#[derive(Debug, Clone, Default)]
pub struct EntitySeries {
    pub entity: String,
    pub ts_ms: Vec<i64>,
    pub cpu_demand: Vec<f64>,
    pub mem_demand: Vec<f64>,
    pub cpu_cores: Vec<f64>,
    pub mem_bytes: Vec<f64>,
    /// Demand of the history before the test period (for the static and trailing policies).
    pub history_cpu: Vec<f64>,
    pub history_mem: Vec<f64>,
    /// Forecast points per slot: CPU and memory horizons.
    pub cpu_forecast: Vec<Vec<Horizon>>,
    pub mem_forecast: Vec<Vec<Horizon>>,
}

/// Capacity in effect: CPU cores and memory bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub cpu: f64,
    pub mem: f64,
}

/// What a policy sees at a slot.
#[derive(Debug)]
pub struct Slot<'a> {
    pub series: &'a EntitySeries,
    pub t: usize,
    pub capacity: Capacity,
}

/// A capacity policy in the simulation: a new capacity, or `None` to keep it.
pub trait SimPolicy {
    fn decide(&mut self, slot: &Slot<'_>) -> Option<Capacity>;

    /// True when changes apply at once rather than after the lead time (the trace's own
    /// capacity is a record of what was in effect, not a decision).
    fn immediate(&self) -> bool {
        false
    }
}

/// The capacity grid, bounds and lead time every simulated policy shares.
#[derive(Debug, Clone)]
pub struct Grid {
    pub policy: Policy,
    pub interval_ms: i64,
}

impl Grid {
    pub fn quantize_cpu(&self, cores: f64) -> f64 {
        let p = &self.policy;
        (((cores / p.cpu_step) - 1e-9).ceil().max(0.0) * p.cpu_step)
            .clamp(p.min_cpu_cores, p.max_cpu_cores)
    }

    pub fn quantize_mem(&self, bytes: f64) -> f64 {
        let p = &self.policy;
        (((bytes / GIB / p.mem_step_gib) - 1e-9).ceil().max(0.0) * p.mem_step_gib)
            .clamp(p.min_mem_gib, p.max_mem_gib)
            * GIB
    }

    pub fn lead_slots(&self) -> usize {
        ((self.policy.lead_time.as_millis() as i64 + self.interval_ms - 1)
            / self.interval_ms.max(1)) as usize
    }
}

/// Totals of one policy over one or more entities.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub samples: u64,
    pub cpu_provisioned: f64,
    pub cpu_unused: f64,
    pub cpu_short_samples: u64,
    pub mem_provisioned: f64,
    pub mem_unused: f64,
    pub mem_short_samples: u64,
    pub actions: u64,
    pub cost_usd: f64,
}

impl Outcome {
    pub fn add(&mut self, o: &Outcome) {
        self.samples += o.samples;
        self.cpu_provisioned += o.cpu_provisioned;
        self.cpu_unused += o.cpu_unused;
        self.cpu_short_samples += o.cpu_short_samples;
        self.mem_provisioned += o.mem_provisioned;
        self.mem_unused += o.mem_unused;
        self.mem_short_samples += o.mem_short_samples;
        self.actions += o.actions;
        self.cost_usd += o.cost_usd;
    }

    /// Unused share of the provisioned CPU (core-slots).
    pub fn cpu_slack(&self) -> f64 {
        self.cpu_unused / self.cpu_provisioned.max(f64::MIN_POSITIVE)
    }
    pub fn mem_slack(&self) -> f64 {
        self.mem_unused / self.mem_provisioned.max(f64::MIN_POSITIVE)
    }
    /// Share of samples whose CPU demand was above the capacity in effect.
    pub fn cpu_shortfall(&self) -> f64 {
        self.cpu_short_samples as f64 / self.samples.max(1) as f64
    }
    pub fn mem_shortfall(&self) -> f64 {
        self.mem_short_samples as f64 / self.samples.max(1) as f64
    }
}

/// Capacity over time, for the charts.
#[derive(Debug, Clone, Default)]
pub struct Path {
    pub cpu: Vec<f64>,
}

/// Runs `policy` over the series. Changes take effect `grid.lead_slots()` slots after the
/// decision; a decision while one is pending replaces it. Slots without demand are skipped.
pub fn run(
    series: &EntitySeries,
    grid: &Grid,
    price: Price,
    initial: Capacity,
    policy: &mut dyn SimPolicy,
    keep_path: bool,
) -> (Outcome, Path) {
    let mut o = Outcome::default();
    let mut path = Path::default();
    let mut cap = initial;
    let mut pending: VecDeque<(usize, Capacity)> = VecDeque::new();
    let lead = if policy.immediate() {
        0
    } else {
        grid.lead_slots()
    };
    let hours = grid.interval_ms as f64 / 3_600_000.0;
    let mut latest_target = cap;
    for t in 0..series.ts_ms.len() {
        while pending.front().is_some_and(|(at, _)| *at <= t) {
            if let Some((_, c)) = pending.pop_front() {
                cap = c;
            }
        }
        if keep_path {
            path.cpu.push(cap.cpu);
        }
        let (dc, dm) = (series.cpu_demand[t], series.mem_demand[t]);
        if !dc.is_finite() {
            continue;
        }
        o.samples += 1;
        o.cpu_provisioned += cap.cpu;
        o.cpu_unused += (cap.cpu - dc).max(0.0);
        if dc > cap.cpu * (1.0 + 1e-9) {
            o.cpu_short_samples += 1;
        }
        if dm.is_finite() {
            o.mem_provisioned += cap.mem;
            o.mem_unused += (cap.mem - dm).max(0.0);
            if dm > cap.mem * (1.0 + 1e-9) {
                o.mem_short_samples += 1;
            }
        }
        o.cost_usd += price.per_hour(cap.cpu, cap.mem / GIB) * hours;
        if let Some(next) = policy.decide(&Slot {
            series,
            t,
            capacity: cap,
        }) {
            if next != latest_target {
                o.actions += 1;
                latest_target = next;
                if lead == 0 {
                    cap = next;
                } else {
                    pending.retain(|(at, _)| *at < t + lead);
                    pending.push_back((t + lead, next));
                }
            }
        }
    }
    (o, path)
}

/// The predictive policy: the recommender's own decisions, on forecasts re-expressed as
/// utilization of the simulated capacity.
pub struct Predictive<'r> {
    pub recommender: &'r mut Recommender,
    pub state: EntityState,
    pub service: Option<String>,
    pub cluster: Option<String>,
    cpu: Vec<Horizon>,
    mem: Vec<Horizon>,
}

impl<'r> Predictive<'r> {
    pub fn new(recommender: &'r mut Recommender) -> Self {
        Predictive {
            recommender,
            state: EntityState::default(),
            service: None,
            cluster: None,
            cpu: Vec::new(),
            mem: Vec::new(),
        }
    }
}

impl SimPolicy for Predictive<'_> {
    fn decide(&mut self, s: &Slot<'_>) -> Option<Capacity> {
        let x = s.series;
        let t = s.t;
        let (tc, tm) = (x.cpu_cores[t], x.mem_bytes[t]);
        let rescale = |src: &[Horizon], trace_cap: f64, cap: f64, out: &mut Vec<Horizon>| {
            out.clear();
            out.extend(src.iter().map(|h| Horizon {
                minutes: h.minutes,
                p50: h.p50 * trace_cap / cap,
                p90: h.p90 * trace_cap / cap,
            }));
        };
        rescale(&x.cpu_forecast[t], tc, s.capacity.cpu, &mut self.cpu);
        let mem_known = x.mem_demand[t].is_finite() && tm.is_finite() && s.capacity.mem > 0.0;
        if mem_known {
            rescale(&x.mem_forecast[t], tm, s.capacity.mem, &mut self.mem);
        } else {
            self.mem.clear();
        }
        let obs = Observation {
            ts_ms: x.ts_ms[t],
            service: self.service.as_deref(),
            cluster: self.cluster.as_deref(),
            cpu_util: Some(x.cpu_demand[t] / s.capacity.cpu),
            mem_util: mem_known.then(|| x.mem_demand[t] / s.capacity.mem),
            cpu_cores: Some(s.capacity.cpu),
            mem_bytes: mem_known.then_some(s.capacity.mem),
            replicas: None,
            cost_per_hour: None,
        };
        let view = ForecastView {
            cpu: &self.cpu,
            mem: &self.mem,
        };
        let d = self
            .recommender
            .decide(&mut self.state, &obs, &view, t as i64);
        match d.action {
            Action::SetRequests | Action::ScaleOut | Action::ScaleIn => Some(Capacity {
                cpu: d.target_cpu_cores.unwrap_or(s.capacity.cpu),
                mem: d.target_mem_bytes.unwrap_or(s.capacity.mem),
            }),
            _ => None,
        }
    }
}

/// Threshold autoscaler: out of [low, high] utilization, resize to put demand at the band's
/// middle; cooldowns after each action.
pub struct Reactive {
    pub grid: Grid,
    pub low: f64,
    pub high: f64,
    last_action: Option<i64>,
}

impl Reactive {
    pub fn new(grid: Grid) -> Self {
        Reactive {
            grid,
            low: 0.3,
            high: 0.8,
            last_action: None,
        }
    }
}

impl Reactive {
    /// The new capacity of one resource, and whether it grows (`Some(true)`) or shrinks.
    fn resize(&self, demand: f64, cap: f64, quantize: impl Fn(f64) -> f64) -> (f64, Option<bool>) {
        if !demand.is_finite() || cap <= 0.0 {
            return (cap, None);
        }
        let mid = 0.5 * (self.low + self.high);
        let util = demand / cap;
        if util > self.high {
            let n = quantize(demand / mid).max(cap);
            (n, (n > cap).then_some(true))
        } else if util < self.low {
            let n = quantize(demand / mid).min(cap);
            (n, (n < cap).then_some(false))
        } else {
            (cap, None)
        }
    }
}

impl SimPolicy for Reactive {
    fn decide(&mut self, s: &Slot<'_>) -> Option<Capacity> {
        let x = s.series;
        let ts = x.ts_ms[s.t];
        let p = &self.grid.policy;
        let since = self.last_action.map(|t| ts - t);
        let (cpu, dc) = self.resize(x.cpu_demand[s.t], s.capacity.cpu, |v| {
            self.grid.quantize_cpu(v)
        });
        let (mem, dm) = self.resize(x.mem_demand[s.t], s.capacity.mem, |v| {
            self.grid.quantize_mem(v)
        });
        let up = dc == Some(true) || dm == Some(true);
        let down = dc == Some(false) || dm == Some(false);
        let ok_up = since.is_none_or(|d| d >= p.scale_out_cooldown.as_millis() as i64);
        let ok_down = since.is_none_or(|d| d >= p.scale_in_cooldown.as_millis() as i64);
        let mut next = Capacity { cpu, mem };
        if up && ok_up {
            // Growth now; a shrink of the other resource waits for its own cooldown.
            if !ok_down {
                next.cpu = next.cpu.max(s.capacity.cpu);
                next.mem = next.mem.max(s.capacity.mem);
            }
        } else if down && ok_down {
            next.cpu = next.cpu.min(s.capacity.cpu);
            next.mem = next.mem.min(s.capacity.mem);
        } else {
            return None;
        }
        if next == s.capacity {
            return None;
        }
        self.last_action = Some(ts);
        Some(next)
    }
}

/// Percentile-plus-margin rightsizer over a trailing window.
pub struct Rightsizer {
    pub grid: Grid,
    pub quantile: f64,
    pub margin: f64,
    pub window_slots: usize,
    cpu: VecDeque<f64>,
    mem: VecDeque<f64>,
    started: bool,
    scratch: Vec<f64>,
}

impl Rightsizer {
    pub fn new(grid: Grid) -> Self {
        let window_slots = (24 * 3_600_000 / grid.interval_ms.max(1)) as usize;
        Rightsizer {
            grid,
            quantile: 0.9,
            margin: 0.15,
            window_slots,
            cpu: VecDeque::new(),
            mem: VecDeque::new(),
            started: false,
            scratch: Vec::new(),
        }
    }

    fn pct(&mut self, which: bool) -> Option<f64> {
        let src = if which { &self.cpu } else { &self.mem };
        self.scratch.clear();
        self.scratch
            .extend(src.iter().copied().filter(|v| v.is_finite()));
        if self.scratch.is_empty() {
            return None;
        }
        self.scratch.sort_by(f64::total_cmp);
        let i = ((self.scratch.len() - 1) as f64 * self.quantile).round() as usize;
        Some(self.scratch[i])
    }
}

impl SimPolicy for Rightsizer {
    fn decide(&mut self, s: &Slot<'_>) -> Option<Capacity> {
        let x = s.series;
        if !self.started {
            // The trailing window starts full with the history before the test.
            let n = self.window_slots;
            self.cpu.extend(x.history_cpu.iter().rev().take(n).rev());
            self.mem.extend(x.history_mem.iter().rev().take(n).rev());
            self.started = true;
        }
        self.cpu.push_back(x.cpu_demand[s.t]);
        self.mem.push_back(x.mem_demand[s.t]);
        while self.cpu.len() > self.window_slots {
            self.cpu.pop_front();
        }
        while self.mem.len() > self.window_slots {
            self.mem.pop_front();
        }
        let h = self.grid.policy.hysteresis;
        let mut next = s.capacity;
        if let Some(c) = self.pct(true) {
            let want = self.grid.quantize_cpu(c * (1.0 + self.margin));
            if (want - s.capacity.cpu).abs() >= h * s.capacity.cpu {
                next.cpu = want;
            }
        }
        if let Some(m) = self.pct(false) {
            let want = self.grid.quantize_mem(m * (1.0 + self.margin));
            if (want - s.capacity.mem).abs() >= h * s.capacity.mem {
                next.mem = want;
            }
        }
        (next != s.capacity).then_some(next)
    }
}

/// The history's peak, provisioned from the start and never changed.
pub struct StaticPeak;

impl StaticPeak {
    pub fn capacity(grid: &Grid, x: &EntitySeries) -> Capacity {
        let peak = |v: &[f64]| {
            v.iter()
                .copied()
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max)
        };
        Capacity {
            cpu: grid.quantize_cpu(peak(&x.history_cpu)),
            mem: grid.quantize_mem(peak(&x.history_mem)),
        }
    }
}

impl SimPolicy for StaticPeak {
    fn decide(&mut self, _: &Slot<'_>) -> Option<Capacity> {
        None
    }
}

/// The trace's own provisioned capacity, slot by slot.
pub struct AsTraced;

impl SimPolicy for AsTraced {
    fn decide(&mut self, s: &Slot<'_>) -> Option<Capacity> {
        let x = s.series;
        let c = Capacity {
            cpu: x.cpu_cores[s.t],
            mem: x.mem_bytes[s.t],
        };
        (c.cpu.is_finite() && c.mem.is_finite() && c != s.capacity).then_some(c)
    }

    fn immediate(&self) -> bool {
        true
    }
}

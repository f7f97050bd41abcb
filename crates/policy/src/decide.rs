//! One decision per forecast: the state an entity needs (recent actuals, the last action) and
//! the rules that turn a forecast into an action.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::config::{Policy, PolicyTable, Price, Pricing, Scaling};
use crate::quantile;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// What an entity runs on and how busy it is, at the forecast's event time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observation<'a> {
    pub ts_ms: i64,
    pub service: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub cpu_util: Option<f64>,
    pub mem_util: Option<f64>,
    /// Provisioned vCPUs across replicas.
    pub cpu_cores: Option<f64>,
    /// Provisioned memory in bytes across replicas.
    pub mem_bytes: Option<f64>,
    pub replicas: Option<i32>,
    pub cost_per_hour: Option<f64>,
}

/// One forecast horizon of one metric: utilization of the capacity observed at the origin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Horizon {
    pub minutes: i32,
    pub p50: f64,
    pub p90: f64,
}

/// The forecast the policy reads: CPU and memory points.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForecastView<'a> {
    pub cpu: &'a [Horizon],
    pub mem: &'a [Horizon],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Hold,
    ScaleOut,
    ScaleIn,
    SetRequests,
    Rebalance,
}

impl Action {
    /// The schema's `Action` symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Hold => "HOLD",
            Action::ScaleOut => "SCALE_OUT",
            Action::ScaleIn => "SCALE_IN",
            Action::SetRequests => "SET_REQUESTS",
            Action::Rebalance => "REBALANCE",
        }
    }

    /// Index in the schema's enum.
    pub fn index(self) -> i32 {
        self as i32
    }
}

/// Why a decision is HOLD: a closed set, used as a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldReason {
    /// Capacity fits the forecast.
    Steady,
    /// A change was called for but smaller than the hysteresis band.
    WithinHysteresis,
    /// A change was called for but the last action is too recent.
    Cooldown,
    /// The forecast allows a scale-in but recent actuals do not.
    RecentActuals,
    /// The change is held at a configured minimum or maximum.
    AtBounds,
    /// No usable point between the lead time and the look-ahead.
    MissingForecast,
    /// NaN, negative, or p90 below p50.
    InvalidForecast,
    /// The forecast carries no usable provisioned capacity or utilization.
    UnknownCapacity,
    /// No price for the entity's cluster and no reported cost to price from.
    UnknownPricing,
}

impl HoldReason {
    pub const ALL: [HoldReason; 9] = [
        HoldReason::Steady,
        HoldReason::WithinHysteresis,
        HoldReason::Cooldown,
        HoldReason::RecentActuals,
        HoldReason::AtBounds,
        HoldReason::MissingForecast,
        HoldReason::InvalidForecast,
        HoldReason::UnknownCapacity,
        HoldReason::UnknownPricing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::Steady => "steady",
            HoldReason::WithinHysteresis => "within_hysteresis",
            HoldReason::Cooldown => "cooldown",
            HoldReason::RecentActuals => "recent_actuals",
            HoldReason::AtBounds => "at_bounds",
            HoldReason::MissingForecast => "missing_forecast",
            HoldReason::InvalidForecast => "invalid_forecast",
            HoldReason::UnknownCapacity => "unknown_capacity",
            HoldReason::UnknownPricing => "unknown_pricing",
        }
    }

    /// Reasons that come from bad input rather than from the policy.
    pub fn is_bad_input(self) -> bool {
        matches!(
            self,
            HoldReason::MissingForecast
                | HoldReason::InvalidForecast
                | HoldReason::UnknownCapacity
                | HoldReason::UnknownPricing
        )
    }
}

/// What to do with one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub action: Action,
    pub target_replicas: Option<i32>,
    pub target_cpu_cores: Option<f64>,
    pub target_mem_bytes: Option<f64>,
    pub from_cluster: Option<String>,
    pub to_cluster: Option<String>,
    /// USD per hour; negative saves money.
    pub cost_change_per_hour: f64,
    /// P(demand above the capacity after the change) at some horizon in the window.
    pub shortfall_prob: f64,
    /// For an increase: P(demand above the current capacity at target); for a decrease:
    /// P(demand within the new capacity at target); for a hold: P(the current capacity is
    /// enough at target).
    pub confidence: f64,
    pub reason: String,
    pub hold: Option<HoldReason>,
    /// For a rebalance: the start of its `rebalance_interval` window (event time), so that a
    /// proposal repeated within the window (once, after a restart) can keep its id.
    pub window_start_ms: Option<i64>,
}

impl Decision {
    fn hold(reason: HoldReason, detail: String) -> Decision {
        Decision {
            action: Action::Hold,
            target_replicas: None,
            target_cpu_cores: None,
            target_mem_bytes: None,
            from_cluster: None,
            to_cluster: None,
            cost_change_per_hour: 0.0,
            shortfall_prob: 0.0,
            confidence: 0.0,
            reason: detail,
            hold: Some(reason),
            window_start_ms: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Recent {
    ts_ms: i64,
    seq: i64,
    cpu: f64,
    mem: Option<f64>,
}

/// Per-entity state: recent actual demand (for the scale-in rule) and the last action (for
/// cooldowns). Rebuilt exactly by replaying the input from [`EntityState::floor`]: the last
/// action keeps the floor its own decision depended on, so the replay makes it again.
#[derive(Debug, Clone, Default)]
pub struct EntityState {
    recent: VecDeque<Recent>,
    last_action: Option<LastAction>,
    /// The last action whose cooldown ended: `(depends_on, seq)`, `seq` the input at which it
    /// ended. Inputs before `seq` were decided under its cooldown, so a replay that covers
    /// any of them must make that action again: the floor keeps its `depends_on` while
    /// `recent` reaches back before `seq`.
    expired: Option<(i64, i64)>,
    /// Decisions, within the longest cooldown, whose outcome the recent-actuals window decided
    /// (a decrease it held or limited): `(the window's first seq, event time)`. Re-made in a
    /// replay with a shorter window, such a decision could act where the uninterrupted run
    /// held, and that action would cool the decisions after it; so the floor keeps each one's
    /// window for as long as an action made there would still be cooling.
    window_uses: VecDeque<(i64, i64)>,
    last_ts: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct LastAction {
    ts_ms: i64,
    /// The smallest input position the decision that made this action depended on.
    depends_on: i64,
}

impl EntityState {
    /// The smallest input sequence number (offset) this state depends on.
    pub fn floor(&self) -> Option<i64> {
        let r = self.recent.iter().map(|r| r.seq).min();
        let a = self.last_action.map(|a| a.depends_on);
        let e = self
            .expired
            .filter(|&(_, at)| r.is_some_and(|r| at > r))
            .map(|(dep, _)| dep);
        let w = self.window_uses.iter().map(|&(w, _)| w).min();
        [r, a, e, w].into_iter().flatten().min()
    }

    /// Event time of the latest observation.
    pub fn last_ts(&self) -> Option<i64> {
        self.last_ts
    }

    /// Approximate heap bytes held (for the state-size gauge).
    pub fn heap_bytes(&self) -> usize {
        self.recent.capacity() * std::mem::size_of::<Recent>()
            + self.window_uses.capacity() * std::mem::size_of::<(i64, i64)>()
    }

    fn observe(&mut self, ts_ms: i64, seq: i64, cpu: f64, mem: Option<f64>, p: &Policy) {
        // Out-of-order forecasts (rare: the scorer keeps partition order) still count.
        self.recent.push_back(Recent {
            ts_ms,
            seq,
            cpu,
            mem,
        });
        let newest = self.last_ts.map_or(ts_ms, |t| t.max(ts_ms));
        let window = p.scale_in_window.as_millis() as i64;
        while self.recent.len() > 1
            && self
                .recent
                .front()
                .is_some_and(|r| r.ts_ms < newest - window)
        {
            self.recent.pop_front();
        }
        let cooldown = p.scale_in_cooldown.max(p.scale_out_cooldown).as_millis() as i64;
        self.window_uses.retain(|&(_, ts)| ts >= newest - cooldown);
        if let Some(a) = self.last_action.filter(|a| a.ts_ms < newest - cooldown) {
            self.expired = Some((a.depends_on, seq));
            self.last_action = None;
        }
        self.last_ts = Some(newest);
    }

    /// The decision being made depends on the whole recent window (see `window_uses`).
    fn record_window_use(&mut self, ts_ms: i64) {
        if let Some(first) = self.recent.iter().map(|r| r.seq).min() {
            self.window_uses.push_back((first, ts_ms));
        }
    }

    fn record_action(&mut self, ts_ms: i64) {
        // Called after `observe`, so the floor covers everything this decision read.
        let depends_on = self.floor().unwrap_or(i64::MAX);
        self.last_action = Some(LastAction { ts_ms, depends_on });
    }

    fn recent_max(&self) -> (f64, Option<f64>) {
        let cpu = self.recent.iter().map(|r| r.cpu).fold(0.0, f64::max);
        let mem = self.recent.iter().filter_map(|r| r.mem).reduce(f64::max);
        (cpu, mem)
    }
}

/// A resolved policy with its precomputed quantile multiple.
#[derive(Debug)]
struct Resolved {
    policy: Policy,
    spread: f64,
}

/// The policy engine: the table, the prices, and a cache of resolved policies.
#[derive(Debug)]
pub struct Recommender {
    table: PolicyTable,
    pricing: Pricing,
    cache: HashMap<(Option<String>, Option<String>), Arc<Resolved>>,
}

/// One resource's view in a decision.
#[derive(Debug, Clone, Copy)]
struct Need {
    current: f64,
    /// The quantile demand, the horizon it peaks at, and that horizon's (p50, p90) in units.
    demand_q: f64,
    p50: f64,
    p90: f64,
    target: f64,
    /// Unrounded capacity wanted (after the recent-actuals rule for decreases).
    want: f64,
    /// True when the forecast alone would allow going below the band but recent actuals do not.
    held_by_recent: bool,
    /// True when recent actuals raised `want` above what the forecast asks for (a decrease they
    /// limited or held): the decision depends on the whole recent window.
    limited_by_recent: bool,
    /// Demand now, in units.
    now: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
    Same,
}

fn finite_nonneg(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite() && *v >= 0.0)
}

fn ceil_step(x: f64, step: f64) -> f64 {
    // The epsilon keeps 1.0000000001 steps from rounding up one more step.
    ((x / step) - 1e-9).ceil().max(0.0) * step
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

impl Recommender {
    pub fn new(table: PolicyTable, pricing: Pricing) -> Result<Recommender, crate::PolicyError> {
        table.validate()?;
        pricing.validate()?;
        Ok(Recommender {
            table,
            pricing,
            cache: HashMap::new(),
        })
    }

    pub fn version(&self) -> &str {
        &self.table.version
    }

    /// The policy that applies to an entity of `service` in `cluster`.
    pub fn policy_for(&mut self, service: Option<&str>, cluster: Option<&str>) -> Policy {
        self.resolved(service, cluster).policy.clone()
    }

    fn resolved(&mut self, service: Option<&str>, cluster: Option<&str>) -> Arc<Resolved> {
        let key = (service.map(str::to_owned), cluster.map(str::to_owned));
        if let Some(r) = self.cache.get(&key) {
            return r.clone();
        }
        let policy = self.table.resolve(service, cluster);
        let spread = quantile::spread_multiple(policy.headroom_quantile);
        let r = Arc::new(Resolved { policy, spread });
        // Bounded by the number of service × cluster pairs; a flood of distinct names is cut.
        if self.cache.len() < 100_000 {
            self.cache.insert(key, r.clone());
        }
        r
    }

    /// Decides for one forecast. `seq` is the input's position (its offset), kept for replay.
    pub fn decide(
        &mut self,
        state: &mut EntityState,
        obs: &Observation<'_>,
        fc: &ForecastView<'_>,
        seq: i64,
    ) -> Decision {
        let r = self.resolved(obs.service, obs.cluster);
        let p = &r.policy;
        let previous_ts = state.last_ts;
        // Capacity and utilization now.
        let (Some(cpu_cores), Some(cpu_util)) =
            (finite_nonneg(obs.cpu_cores), finite_nonneg(obs.cpu_util))
        else {
            return Decision::hold(
                HoldReason::UnknownCapacity,
                "hold: the forecast carries no usable provisioned cpu_cores and cpu_util".into(),
            );
        };
        if cpu_cores <= 0.0 {
            return Decision::hold(
                HoldReason::UnknownCapacity,
                "hold: provisioned cpu_cores is 0".into(),
            );
        }
        let mem = match (finite_nonneg(obs.mem_bytes), finite_nonneg(obs.mem_util)) {
            (Some(b), Some(u)) if b > 0.0 => Some((b, u)),
            _ => None,
        };
        state.observe(
            obs.ts_ms,
            seq,
            cpu_util * cpu_cores,
            mem.map(|(b, u)| b * u),
            p,
        );

        // The usable forecast window.
        let lo = (p.lead_time.as_secs() / 60) as i32;
        let hi = (p.lookahead.as_secs() / 60) as i32;
        let in_window = |h: &&Horizon| h.minutes >= lo && h.minutes <= hi;
        for h in fc.cpu.iter().chain(fc.mem.iter()).filter(in_window) {
            if !(h.p50.is_finite() && h.p90.is_finite() && h.p50 >= 0.0 && h.p90 >= h.p50 - 1e-9) {
                return Decision::hold(
                    HoldReason::InvalidForecast,
                    format!(
                        "hold: invalid forecast at {} min (p50 {}, p90 {})",
                        h.minutes, h.p50, h.p90
                    ),
                );
            }
        }
        let (recent_cpu, recent_mem) = state.recent_max();
        let need = |points: &[Horizon],
                    current: f64,
                    util_now: f64,
                    target: f64,
                    recent: f64|
         -> Option<Need> {
            let best = points
                .iter()
                .filter(in_window)
                .map(|h| (quantile::at(h.p50, h.p90, r.spread) * current, h))
                .max_by(|a, b| a.0.total_cmp(&b.0))?;
            let (demand_q, h) = best;
            let required = demand_q / target;
            let floor = recent / target;
            let (want, held_by_recent, limited_by_recent) = if required >= current {
                (required, false, false)
            } else {
                // Recent actuals only ever limit a decrease.
                let w = required.max(floor).min(current);
                (w, floor > required && w > current * (1.0 - p.hysteresis), floor > required)
            };
            Some(Need {
                current,
                demand_q,
                p50: h.p50 * current,
                p90: h.p90 * current,
                target,
                want,
                held_by_recent,
                limited_by_recent,
                now: util_now * current,
            })
        };
        let Some(cpu) = need(
            fc.cpu,
            cpu_cores,
            cpu_util,
            p.target_utilization,
            recent_cpu,
        ) else {
            return Decision::hold(
                HoldReason::MissingForecast,
                format!("hold: no cpu forecast between {lo} and {hi} min"),
            );
        };
        let memn = mem.and_then(|(b, u)| {
            need(
                fc.mem,
                b,
                u,
                p.mem_target_utilization,
                recent_mem.unwrap_or(0.0),
            )
        });
        if cpu.limited_by_recent || memn.is_some_and(|m| m.limited_by_recent) {
            state.record_window_use(obs.ts_ms);
        }
        let horizontal = match p.scaling {
            Scaling::Horizontal => obs.replicas.is_some_and(|r| r > 0),
            Scaling::Vertical => false,
            Scaling::Auto => obs.replicas.is_some_and(|r| r > 0),
        };
        let since_action = state.last_action.map(|a| obs.ts_ms - a.ts_ms);
        let cooling = |d: Dir| match (d, since_action) {
            (Dir::Up, Some(s)) => s < p.scale_out_cooldown.as_millis() as i64,
            (Dir::Down, Some(s)) => s < p.scale_in_cooldown.as_millis() as i64,
            _ => false,
        };
        let direction = |n: &Need, new: f64| -> Dir {
            if new > n.current && (new >= n.current * (1.0 + p.hysteresis) || n.now > n.current) {
                Dir::Up
            } else if new < n.current && new <= n.current * (1.0 - p.hysteresis) {
                Dir::Down
            } else {
                Dir::Same
            }
        };

        // New capacity per resource (and replicas when horizontal).
        let (mut new_cpu, mut new_mem, mut new_replicas) =
            (cpu.current, memn.map(|m| m.current), None);
        let dir_cpu;
        let mut dir_mem = Dir::Same;
        let mut at_bounds = false;
        if horizontal {
            let replicas = obs.replicas.unwrap_or(1).max(1);
            let per_cpu = cpu.current / f64::from(replicas);
            let want_r_cpu = (cpu.want / per_cpu - 1e-9).ceil();
            let want_r_mem = memn.map_or(0.0, |m| {
                (m.want / (m.current / f64::from(replicas)) - 1e-9).ceil()
            });
            let raw = want_r_cpu.max(want_r_mem).max(1.0);
            let n = raw.clamp(f64::from(p.min_replicas), f64::from(p.max_replicas)) as i32;
            at_bounds = (raw as i32) != n;
            let cap = f64::from(n) * per_cpu;
            dir_cpu = if n > replicas
                && (cpu.want >= cpu.current * (1.0 + p.hysteresis)
                    || cpu.now > cpu.current
                    || memn.is_some_and(|m| m.want >= m.current * (1.0 + p.hysteresis)))
            {
                Dir::Up
            } else if n < replicas && cap <= cpu.current * (1.0 - p.hysteresis) {
                Dir::Down
            } else {
                Dir::Same
            };
            if dir_cpu != Dir::Same && !cooling(dir_cpu) {
                new_replicas = Some(n);
                new_cpu = cap;
                new_mem = memn.map(|m| m.current / f64::from(replicas) * f64::from(n));
            }
        } else {
            let c = ceil_step(cpu.want, p.cpu_step);
            let c_b = c.clamp(p.min_cpu_cores, p.max_cpu_cores);
            at_bounds |= (c_b - c).abs() > 1e-9 && (c_b - cpu.current).abs() < 1e-9;
            dir_cpu = direction(&cpu, c_b);
            if dir_cpu != Dir::Same && !cooling(dir_cpu) {
                new_cpu = c_b;
            }
            if let Some(m) = memn {
                let g = ceil_step(m.want / GIB, p.mem_step_gib);
                let g_b = g.clamp(p.min_mem_gib, p.max_mem_gib) * GIB;
                dir_mem = direction(&m, g_b);
                if dir_mem != Dir::Same && !cooling(dir_mem) {
                    new_mem = Some(g_b);
                }
            }
        }
        let changed_cpu = (new_cpu - cpu.current).abs() > 1e-9;
        let changed_mem = match (new_mem, memn) {
            (Some(n), Some(m)) => (n - m.current).abs() > 1e-6,
            _ => false,
        };

        // Shortfall probability after the decision, at the worst horizon of the window.
        let shortfall = |points: &[Horizon], current: f64, cap: f64| {
            points
                .iter()
                .filter(in_window)
                .map(|h| quantile::exceed_prob(h.p50 * current, h.p90 * current, cap))
                .fold(0.0, f64::max)
        };
        let mut shortfall_prob = shortfall(fc.cpu, cpu.current, new_cpu);
        if let (Some(m), Some(nm)) = (memn, new_mem) {
            shortfall_prob = shortfall_prob.max(shortfall(fc.mem, m.current, nm));
        }
        let need_at_target =
            |n: &Need, cap: f64| quantile::exceed_prob(n.p50, n.p90, cap * n.target);

        if !changed_cpu && !changed_mem {
            let blocked = [(dir_cpu, true), (dir_mem, memn.is_some())]
                .iter()
                .any(|(d, present)| *present && *d != Dir::Same && cooling(*d));
            let small = cpu.want > cpu.current * 1.0001 || cpu.want < cpu.current * 0.9999;
            let reason = if blocked {
                HoldReason::Cooldown
            } else if cpu.held_by_recent || memn.is_some_and(|m| m.held_by_recent) {
                HoldReason::RecentActuals
            } else if at_bounds {
                HoldReason::AtBounds
            } else if small {
                HoldReason::WithinHysteresis
            } else {
                HoldReason::Steady
            };
            let mut d = Decision::hold(
                reason,
                format!(
                    "hold ({}): p{:.0} cpu demand within {hi} min is {:.2} of {:.2} cores (target {}, needs {:.2})",
                    reason.as_str().replace('_', " "),
                    p.headroom_quantile * 100.0,
                    cpu.demand_q,
                    cpu.current,
                    pct(cpu.target),
                    cpu.want
                ),
            );
            d.shortfall_prob = shortfall_prob;
            d.confidence = (1.0 - need_at_target(&cpu, cpu.current)).clamp(0.0, 1.0);
            if let Some(rb) =
                self.rebalance(p, obs, cpu.current, memn.map(|m| m.current), previous_ts)
            {
                d.action = Action::Rebalance;
                d.hold = None;
                d.from_cluster = obs.cluster.map(str::to_owned);
                d.cost_change_per_hour = -rb.saving_per_hour;
                d.reason = format!(
                    "move to cluster {}: the same capacity costs {:.4} USD/h less there ({} cheaper)",
                    rb.to_cluster,
                    rb.saving_per_hour,
                    pct(rb.saving_per_hour / self.cost(obs, cpu.current, memn.map(|m| m.current)).unwrap_or(f64::INFINITY))
                );
                d.to_cluster = Some(rb.to_cluster);
                d.target_cpu_cores = Some(cpu.current);
                d.target_mem_bytes = memn.map(|m| m.current);
                d.target_replicas = obs.replicas;
                let interval = p.rebalance_interval.as_millis() as i64;
                d.window_start_ms = Some(obs.ts_ms.div_euclid(interval) * interval);
                // A move does not change capacity: it starts no cooldown.
            }
            return d;
        }

        // The change's price.
        let Some(cost_change) = self.cost_change(
            obs,
            (cpu.current, new_cpu),
            memn.map(|m| m.current).zip(new_mem),
        ) else {
            return Decision::hold(
                HoldReason::UnknownPricing,
                format!(
                    "hold: would change cpu {:.2} -> {:.2} cores, but cluster {} has no price and the entity reports no cost_per_hour",
                    cpu.current,
                    new_cpu,
                    obs.cluster.unwrap_or("(none)")
                ),
            );
        };
        let up = new_cpu > cpu.current + 1e-9
            || new_mem.zip(memn).is_some_and(|(n, m)| n > m.current + 1e-6);
        let action = match (horizontal, up) {
            (true, true) => Action::ScaleOut,
            (true, false) => Action::ScaleIn,
            (false, _) => Action::SetRequests,
        };
        // Confidence: of the resource that drives the change.
        let confidence = if up {
            let c = if new_cpu > cpu.current {
                need_at_target(&cpu, cpu.current)
            } else {
                0.0
            };
            let m = match (memn, new_mem) {
                (Some(m), Some(n)) if n > m.current => need_at_target(&m, m.current),
                _ => 0.0,
            };
            c.max(m)
        } else {
            let c = 1.0 - need_at_target(&cpu, new_cpu);
            match (memn, new_mem) {
                (Some(m), Some(n)) if n < m.current => c.min(1.0 - need_at_target(&m, n)),
                _ => c,
            }
        };
        let what = match (action, new_replicas) {
            (Action::ScaleOut, Some(n)) => format!("scale out to {n} replicas"),
            (Action::ScaleIn, Some(n)) => format!("scale in to {n} replicas"),
            _ => {
                let mut s = format!("set cpu to {new_cpu:.2} cores");
                if let (Some(n), true) = (new_mem, changed_mem) {
                    s.push_str(&format!(", memory to {:.2} GiB", n / GIB));
                }
                s
            }
        };
        let mut reason = format!(
            "{what}: p{:.0} cpu demand within {hi} min is {:.2} cores; at target {} that needs {:.2} (provisioned {:.2})",
            p.headroom_quantile * 100.0,
            cpu.demand_q,
            pct(cpu.target),
            cpu.want,
            cpu.current
        );
        if let (Some(m), true) = (memn, changed_mem) {
            reason.push_str(&format!(
                "; memory demand {:.2} GiB needs {:.2} GiB (provisioned {:.2})",
                m.demand_q / GIB,
                m.want / GIB,
                m.current / GIB
            ));
        }
        if !up {
            reason.push_str("; recent actuals allow it");
        }
        reason.push_str(&format!("; {:+.4} USD/h", cost_change));
        state.record_action(obs.ts_ms);
        Decision {
            action,
            target_replicas: new_replicas.or(if horizontal { obs.replicas } else { None }),
            target_cpu_cores: Some(new_cpu),
            target_mem_bytes: new_mem,
            from_cluster: None,
            to_cluster: None,
            cost_change_per_hour: cost_change,
            shortfall_prob: shortfall_prob.clamp(0.0, 1.0),
            confidence: confidence.clamp(0.0, 1.0),
            reason,
            hold: None,
            window_start_ms: None,
        }
    }

    /// Cost per hour of a capacity in the entity's cluster.
    fn cost(&self, obs: &Observation<'_>, cpu: f64, mem: Option<f64>) -> Option<f64> {
        if let Some(price) = self.pricing.for_cluster(obs.cluster) {
            return Some(price.per_hour(cpu, mem.unwrap_or(0.0) / GIB));
        }
        obs.cost_per_hour.filter(|c| c.is_finite() && *c >= 0.0)
    }

    /// The change in USD/h. With a price: from the table. Without: the reported cost scaled by
    /// the change of capacity (CPU and memory weighted equally when both are known).
    fn cost_change(
        &self,
        obs: &Observation<'_>,
        cpu: (f64, f64),
        mem: Option<(f64, f64)>,
    ) -> Option<f64> {
        if let Some(price) = self.pricing.for_cluster(obs.cluster) {
            let dm = mem.map_or(0.0, |(a, b)| (b - a) / GIB);
            return Some(price.per_hour(cpu.1 - cpu.0, dm));
        }
        let cost = obs.cost_per_hour.filter(|c| c.is_finite() && *c >= 0.0)?;
        let ratio = match mem {
            Some((a, b)) if a > 0.0 => 0.5 * (cpu.1 / cpu.0) + 0.5 * (b / a),
            _ => cpu.1 / cpu.0,
        };
        Some(cost * (ratio - 1.0))
    }

    fn rebalance(
        &self,
        p: &Policy,
        obs: &Observation<'_>,
        cpu: f64,
        mem: Option<f64>,
        previous_ts: Option<i64>,
    ) -> Option<crate::Rebalance> {
        if p.rebalance_to.is_empty() {
            return None;
        }
        let from = obs.cluster?;
        let interval = p.rebalance_interval.as_millis() as i64;
        let window = obs.ts_ms.div_euclid(interval);
        if previous_ts.is_some_and(|t| t.div_euclid(interval) == window) {
            return None;
        }
        let here: Price = self.pricing.for_cluster(Some(from))?;
        let gib = mem.unwrap_or(0.0) / GIB;
        let cost_here = here.per_hour(cpu, gib);
        if cost_here <= 0.0 {
            return None;
        }
        let best = p
            .rebalance_to
            .iter()
            .filter(|c| c.as_str() != from)
            .filter_map(|c| {
                self.pricing
                    .clusters
                    .get(c)
                    .map(|pr| (c, cost_here - pr.per_hour(cpu, gib)))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        (best.1 / cost_here >= p.rebalance_min_saving && best.1 > 0.0).then(|| crate::Rebalance {
            to_cluster: best.0.clone(),
            saving_per_hour: best.1,
        })
    }
}

//! `headroom-train policy-backtest`: the trace's last days replayed through the featurizer's
//! features, the fitted models and the capacity policy (the recommender's own code), against
//! the simple policies operators use today, on the same demand, capacity grid, lead time and
//! prices. Writes `policy.md`, `policy.json` and PNG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use headroom_forecast::backtest::{self, ModelSet};
use headroom_forecast::Dataset;
use headroom_policy::simulate::{
    self, AsTraced, Capacity, EntitySeries, Grid, Outcome, Predictive, Reactive, Rightsizer,
    SimPolicy, StaticPeak,
};
use headroom_policy::{Horizon, PolicyFile, PolicyTable, Recommender};
use serde::Serialize;

/// One policy's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRow {
    pub policy: String,
    pub cpu_slack: f64,
    pub cpu_shortfall: f64,
    pub mem_slack: f64,
    pub mem_shortfall: f64,
    pub actions: u64,
    pub cost_usd: f64,
    pub outcome: Outcome,
}

impl PolicyRow {
    fn new(policy: &str, o: &Outcome) -> PolicyRow {
        PolicyRow {
            policy: policy.to_owned(),
            cpu_slack: o.cpu_slack(),
            cpu_shortfall: o.cpu_shortfall(),
            mem_slack: o.mem_slack(),
            mem_shortfall: o.mem_shortfall(),
            actions: o.actions,
            cost_usd: o.cost_usd,
            outcome: o.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    pub command: String,
    pub entities: usize,
    pub days: f64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub policy_version: String,
    pub headroom_quantile: f64,
    pub rows: Vec<PolicyRow>,
    /// The predictive policy at each headroom quantile.
    pub curve: Vec<(f64, PolicyRow)>,
    /// The predictive policy at each target CPU utilization (at the configured quantile).
    pub target_curve: Vec<(f64, PolicyRow)>,
    pub checks: BTreeMap<String, bool>,
    pub plots: Vec<String>,
}

/// Demand and capacities of one entity over the window, for a chart.
struct ChartData {
    entity: String,
    demand: Vec<f64>,
    capacities: Vec<(&'static str, Vec<f64>)>,
}

/// The window's series of every entity that reports its provisioned CPU.
fn series(
    ds: &Dataset,
    models: &ModelSet,
    start: i64,
    end: i64,
) -> anyhow::Result<Vec<EntitySeries>> {
    let rows = &ds.test;
    let minutes: Vec<i32> = ds
        .horizons
        .iter()
        .map(|h| (*h as i64 * ds.interval_ms / 60_000) as i32)
        .collect();
    let mut preds: [Vec<Option<Vec<(f32, f32)>>>; 2] = [Vec::new(), Vec::new()];
    for (m, p) in preds.iter_mut().enumerate() {
        for &h in &ds.horizons {
            p.push(backtest::predict(ds, rows, models, m, h)?);
        }
    }
    anyhow::ensure!(
        preds[0].iter().any(Option::is_some),
        "the model set has no cpu regressor"
    );
    let n = (end - start) as usize;
    let mut out: Vec<EntitySeries> = Vec::new();
    let mut index: Vec<Option<usize>> = vec![None; ds.series.len()];
    for (e, s) in ds.series.iter().enumerate() {
        let at = |v: &[f32], slot: i64| -> f64 {
            let i = slot - s.first_slot;
            if i < 0 {
                f64::NAN
            } else {
                v.get(i as usize).map_or(f64::NAN, |x| f64::from(*x))
            }
        };
        // Capacity forward-filled (a sample without it keeps the last known one).
        let ffill = |v: &[f32]| -> Vec<f64> {
            let mut last = f64::NAN;
            let mut outv = Vec::with_capacity(n);
            for slot in s.first_slot.min(start)..end {
                let x = at(v, slot);
                if x.is_finite() && x > 0.0 {
                    last = x;
                }
                if slot >= start {
                    outv.push(last);
                }
            }
            outv
        };
        let cores = ffill(&s.cpu_cores);
        let mem = ffill(&s.mem_bytes);
        if !cores.iter().any(|c| c.is_finite()) {
            continue;
        }
        let first_cap = cores.iter().copied().find(|c| c.is_finite()).unwrap_or(1.0);
        let first_mem = mem
            .iter()
            .copied()
            .find(|c| c.is_finite())
            .unwrap_or(f64::NAN);
        let cores: Vec<f64> = cores
            .iter()
            .map(|c| if c.is_finite() { *c } else { first_cap })
            .collect();
        let mem: Vec<f64> = mem
            .iter()
            .map(|c| if c.is_finite() { *c } else { first_mem })
            .collect();
        let demand = |m: usize, cap: &[f64], slots: std::ops::Range<i64>| -> Vec<f64> {
            slots
                .map(|slot| {
                    let u = f64::from(s.at(m, slot));
                    let c = if slot >= start {
                        cap[(slot - start) as usize]
                    } else {
                        at(if m == 0 { &s.cpu_cores } else { &s.mem_bytes }, slot)
                    };
                    u * c
                })
                .collect()
        };
        let hist_from = s.first_slot;
        let x = EntitySeries {
            entity: s.id.clone(),
            ts_ms: (start..end).map(|slot| slot * ds.interval_ms).collect(),
            cpu_demand: demand(0, &cores, start..end),
            mem_demand: demand(1, &mem, start..end),
            history_cpu: demand(0, &cores, hist_from..start),
            history_mem: demand(1, &mem, hist_from..start),
            cpu_cores: cores,
            mem_bytes: mem,
            cpu_forecast: vec![Vec::new(); n],
            mem_forecast: vec![Vec::new(); n],
        };
        if !x.cpu_demand.iter().any(|d| d.is_finite()) {
            continue;
        }
        index[e] = Some(out.len());
        out.push(x);
    }
    for i in 0..rows.len() {
        let slot = rows.slot[i];
        if slot < start || slot >= end {
            continue;
        }
        let Some(k) = index[rows.entity[i] as usize] else {
            continue;
        };
        let t = (slot - start) as usize;
        for (m, p) in preds.iter().enumerate() {
            let dst = if m == 0 {
                &mut out[k].cpu_forecast[t]
            } else {
                &mut out[k].mem_forecast[t]
            };
            for (j, pr) in p.iter().enumerate() {
                if let Some(v) = pr {
                    let (p50, p90) = v[i];
                    dst.push(Horizon {
                        minutes: minutes[j],
                        p50: f64::from(p50),
                        p90: f64::from(p90),
                    });
                }
            }
        }
    }
    Ok(out)
}

fn with_quantile(table: &PolicyTable, q: f64) -> PolicyTable {
    let mut t = table.clone();
    t.default.headroom_quantile = q;
    t
}

fn with_target(table: &PolicyTable, u: f64) -> PolicyTable {
    let mut t = table.clone();
    t.default.target_utilization = u;
    t
}

/// Runs every policy over every entity; returns the report.
#[allow(clippy::too_many_arguments)]
pub fn run(
    ds: &Dataset,
    models: &ModelSet,
    pf: &PolicyFile,
    last_days: f64,
    quantiles: &[f64],
    targets: &[f64],
    out: &Path,
    command: &str,
) -> anyhow::Result<PolicyReport> {
    anyhow::ensure!(
        ds.split_slot != i64::MAX && !ds.test.is_empty(),
        "the policy backtest needs a test period (use --train-days or --split)"
    );
    let price = pf.pricing.default.ok_or_else(|| {
        anyhow::anyhow!(
            "the policy backtest needs `pricing.default` (trace entities have no cluster)"
        )
    })?;
    let end = ds.last_slot + 1;
    let per_day = 86_400_000 / ds.interval_ms;
    let start = ds.split_slot.max(end - (last_days * per_day as f64) as i64);
    let all = series(ds, models, start, end)?;
    anyhow::ensure!(
        !all.is_empty(),
        "no entity in the window reports its provisioned cpu (cpu_cores)"
    );
    let grid = Grid {
        policy: pf.policy.default.clone(),
        interval_ms: ds.interval_ms,
    };
    let chart_entities = most_variable(&all, 3);

    let mut totals: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut curve: Vec<(f64, Outcome)> =
        quantiles.iter().map(|q| (*q, Outcome::default())).collect();
    let mut charts: Vec<ChartData> = Vec::new();
    let mut engine = Recommender::new(pf.policy.clone(), pf.pricing.clone())?;
    let mut engines: Vec<Recommender> = quantiles
        .iter()
        .map(|q| Recommender::new(with_quantile(&pf.policy, *q), pf.pricing.clone()))
        .collect::<Result<_, _>>()?;
    let mut target_curve: Vec<(f64, Outcome)> =
        targets.iter().map(|u| (*u, Outcome::default())).collect();
    let mut target_engines: Vec<Recommender> = targets
        .iter()
        .map(|u| Recommender::new(with_target(&pf.policy, *u), pf.pricing.clone()))
        .collect::<Result<_, _>>()?;
    for (k, x) in all.iter().enumerate() {
        let keep = chart_entities.contains(&k);
        let initial = Capacity {
            cpu: x.cpu_cores[0],
            mem: x.mem_bytes[0],
        };
        let mut chart = ChartData {
            entity: x.entity.clone(),
            demand: x.cpu_demand.clone(),
            capacities: Vec::new(),
        };
        let mut go = |name: &'static str,
                      policy: &mut dyn SimPolicy,
                      init: Capacity,
                      totals: &mut BTreeMap<String, Outcome>| {
            let (o, path) = simulate::run(x, &grid, price, init, policy, keep);
            totals.entry(name.to_owned()).or_default().add(&o);
            if keep {
                chart.capacities.push((name, path.cpu));
            }
        };
        go(
            "predictive",
            &mut Predictive::new(&mut engine),
            initial,
            &mut totals,
        );
        go(
            "reactive threshold",
            &mut Reactive::new(grid.clone()),
            initial,
            &mut totals,
        );
        go(
            "p90 + 15 % rightsizer",
            &mut Rightsizer::new(grid.clone()),
            initial,
            &mut totals,
        );
        go(
            "static peak",
            &mut StaticPeak,
            StaticPeak::capacity(&grid, x),
            &mut totals,
        );
        go(
            "as provisioned (trace)",
            &mut AsTraced,
            initial,
            &mut totals,
        );
        for (j, e) in engines.iter_mut().enumerate() {
            let (o, _) = simulate::run(x, &grid, price, initial, &mut Predictive::new(e), false);
            curve[j].1.add(&o);
        }
        for (j, e) in target_engines.iter_mut().enumerate() {
            let (o, _) = simulate::run(x, &grid, price, initial, &mut Predictive::new(e), false);
            target_curve[j].1.add(&o);
        }
        if keep {
            charts.push(chart);
        }
    }
    let order = [
        "predictive",
        "reactive threshold",
        "p90 + 15 % rightsizer",
        "static peak",
        "as provisioned (trace)",
    ];
    let rows: Vec<PolicyRow> = order
        .iter()
        .map(|n| PolicyRow::new(n, &totals[*n]))
        .collect();
    let curve: Vec<(f64, PolicyRow)> = curve
        .iter()
        .map(|(q, o)| (*q, PolicyRow::new(&format!("predictive q={q}"), o)))
        .collect();
    let target_curve: Vec<(f64, PolicyRow)> = target_curve
        .iter()
        .map(|(u, o)| (*u, PolicyRow::new(&format!("predictive target={u}"), o)))
        .collect();
    let (pred, rs, st) = (&rows[0], &rows[2], &rows[3]);
    let mut checks = BTreeMap::new();
    checks.insert(
        "cpu shortfall <= rightsizer's".to_owned(),
        pred.cpu_shortfall <= rs.cpu_shortfall,
    );
    checks.insert(
        "cpu slack < rightsizer's".to_owned(),
        pred.cpu_slack < rs.cpu_slack,
    );
    checks.insert(
        "cost < rightsizer's".to_owned(),
        pred.cost_usd < rs.cost_usd,
    );
    checks.insert(
        "cost >= 20 % below static peak".to_owned(),
        pred.cost_usd <= 0.8 * st.cost_usd,
    );
    std::fs::create_dir_all(out)?;
    let plots = crate::plot::policy_charts(
        out,
        &charts
            .iter()
            .map(|c| {
                (
                    c.entity.as_str(),
                    c.demand.as_slice(),
                    c.capacities.as_slice(),
                )
            })
            .collect::<Vec<_>>(),
        ds.interval_ms,
        &rows,
        &curve,
    )?;
    let report = PolicyReport {
        command: command.to_owned(),
        entities: all.len(),
        days: (end - start) as f64 / per_day as f64,
        window_start_ms: start * ds.interval_ms,
        window_end_ms: end * ds.interval_ms,
        policy_version: pf.policy.version.clone(),
        headroom_quantile: pf.policy.default.headroom_quantile,
        rows,
        curve,
        target_curve,
        checks,
        plots,
    };
    std::fs::write(
        out.join("policy.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(
        out.join("policy.md"),
        markdown(&report, &pf.policy.default, price),
    )?;
    Ok(report)
}

fn most_variable(all: &[EntitySeries], n: usize) -> Vec<usize> {
    let mut v: Vec<(f64, usize)> = all
        .iter()
        .enumerate()
        .map(|(k, x)| {
            let d: Vec<f64> = x
                .cpu_demand
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            let m = d.iter().sum::<f64>() / d.len().max(1) as f64;
            let var = d.iter().map(|v| (v - m).powi(2)).sum::<f64>() / d.len().max(1) as f64;
            // Absolute variability: the entities whose capacity decisions matter most.
            (var.sqrt(), k)
        })
        .collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    v.into_iter().take(n).map(|x| x.1).collect()
}

fn pct(x: f64) -> String {
    format!("{:.2} %", 100.0 * x)
}

/// The report as markdown.
pub fn markdown(
    r: &PolicyReport,
    p: &headroom_policy::Policy,
    price: headroom_policy::Price,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Policy backtest\n");
    let _ = writeln!(s, "Command: `{}`\n", r.command);
    let _ = writeln!(
        s,
        "{} entities, the last {:.1} days of the test period. Policy `{}`: headroom quantile {}, target CPU utilization {}, memory {}, lead time {}, look-ahead {}, hysteresis {}, cooldowns {} out / {} in, scale-in floor over {}. Capacity grid: {} cores, {} GiB steps, bounds {}–{} cores, {}–{} GiB. Prices: {} USD per vCPU-hour, {} per GiB-hour. Every policy acts after the same lead time on the same grid.\n",
        r.entities, r.days, r.policy_version, p.headroom_quantile, p.target_utilization, p.mem_target_utilization,
        humantime::format_duration(p.lead_time), humantime::format_duration(p.lookahead), p.hysteresis,
        humantime::format_duration(p.scale_out_cooldown), humantime::format_duration(p.scale_in_cooldown),
        humantime::format_duration(p.scale_in_window), p.cpu_step, p.mem_step_gib, p.min_cpu_cores, p.max_cpu_cores,
        p.min_mem_gib, p.max_mem_gib, price.vcpu_hour, price.gib_hour
    );
    let static_cost = r
        .rows
        .iter()
        .find(|x| x.policy == "static peak")
        .map_or(f64::NAN, |x| x.cost_usd);
    let _ = writeln!(s, "| policy | CPU slack | CPU short (share of samples) | memory slack | memory short | actions | cost USD | cost vs static peak |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for row in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:+.1} % |",
            row.policy,
            pct(row.cpu_slack),
            pct(row.cpu_shortfall),
            pct(row.mem_slack),
            pct(row.mem_shortfall),
            row.actions,
            row.cost_usd,
            100.0 * (row.cost_usd / static_cost - 1.0)
        );
    }
    let _ = writeln!(s, "\nSlack: unused share of the provisioned capacity (core-slots). Short: share of samples whose demand was above the capacity in effect.\n");
    curve_table(&mut s, "headroom quantiles", "quantile", &r.curve);
    curve_table(&mut s, "target CPU utilizations", "target", &r.target_curve);
    let _ = writeln!(
        s,
        "\n## Checks (the predictive policy at its configured quantile)\n"
    );
    for (k, v) in &r.checks {
        let _ = writeln!(s, "- {}: {k}", if *v { "met" } else { "**not met**" });
    }
    for p in &r.plots {
        let _ = writeln!(s, "\n![{p}]({p})");
    }
    s
}

/// One trade-off curve as a markdown table.
fn curve_table(s: &mut String, what: &str, knob: &str, curve: &[(f64, PolicyRow)]) {
    let _ = writeln!(s, "\n## Trade-off: the predictive policy at other {what}\n");
    let _ = writeln!(
        s,
        "| {knob} | CPU slack | CPU short | memory slack | memory short | actions | cost USD |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for (x, row) in curve {
        let _ = writeln!(
            s,
            "| {x} | {} | {} | {} | {} | {} | {:.2} |",
            pct(row.cpu_slack),
            pct(row.cpu_shortfall),
            pct(row.mem_slack),
            pct(row.mem_shortfall),
            row.actions,
            row.cost_usd
        );
    }
}

/// The summary line.
pub fn result_line(r: &PolicyReport) -> String {
    let get = |n: &str| r.rows.iter().find(|x| x.policy == n).cloned();
    let (Some(p), Some(rs), Some(st), Some(re)) = (
        get("predictive"),
        get("p90 + 15 % rightsizer"),
        get("static peak"),
        get("reactive threshold"),
    ) else {
        return "RESULT policy-backtest incomplete=1".into();
    };
    format!(
        "RESULT policy-backtest entities={} days={:.1} quantile={} predictive_slack={:.4} predictive_short={:.4} predictive_cost={:.2} rightsizer_slack={:.4} rightsizer_short={:.4} rightsizer_cost={:.2} reactive_slack={:.4} reactive_short={:.4} reactive_cost={:.2} static_cost={:.2} cost_vs_static={:.3} cost_vs_rightsizer={:.3}",
        r.entities, r.days, r.headroom_quantile, p.cpu_slack, p.cpu_shortfall, p.cost_usd, rs.cpu_slack, rs.cpu_shortfall, rs.cost_usd,
        re.cpu_slack, re.cpu_shortfall, re.cost_usd, st.cost_usd, p.cost_usd / st.cost_usd, p.cost_usd / rs.cost_usd
    )
}

//! PNG plots of forecast (p50, p90) against actual and the seasonal-naive baseline.

use std::path::Path;

use headroom_forecast::backtest::Trace;
use plotters::prelude::*;

const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a system font for the labels (Debian's fonts-dejavu-core, installed by
/// scripts/setup.sh). Without one, plots are skipped and the report says why.
fn font() -> bool {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ONCE.get_or_init(|| {
        FONT_PATHS.iter().any(|p| match std::fs::read(p) {
            Ok(bytes) => {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            }
            Err(_) => false,
        })
    })
}

/// Plots CPU at the middle horizon for each plotted entity; returns the file names.
pub fn write_all(out: &Path, traces: &[Trace], interval_ms: i64) -> anyhow::Result<Vec<String>> {
    if traces.is_empty() {
        return Ok(Vec::new());
    }
    if !font() {
        eprintln!("no font found ({}): plots skipped", FONT_PATHS.join(", "));
        return Ok(Vec::new());
    }
    let mut horizons: Vec<usize> = traces.iter().map(|t| t.horizon_slots).collect();
    horizons.sort_unstable();
    horizons.dedup();
    let h = horizons[horizons.len() / 2];
    let mut files = Vec::new();
    for (k, t) in traces.iter().filter(|t| t.target == "cpu" && t.horizon_slots == h).enumerate() {
        let name = format!("forecast-{k}-cpu-h{h}.png");
        plot(&out.join(&name), t, interval_ms).map_err(|e| anyhow::anyhow!("plot {name}: {e}"))?;
        files.push(name);
    }
    Ok(files)
}

fn plot(path: &Path, t: &Trace, interval_ms: i64) -> Result<(), Box<dyn std::error::Error>> {
    let Some(&t0) = t.slots.first() else {
        return Ok(());
    };
    let hours = |s: i64| (s - t0) as f64 * interval_ms as f64 / 3_600_000.0;
    let x1 = hours(*t.slots.last().unwrap_or(&t0)).max(1.0);
    let ymax = t
        .actual
        .iter()
        .chain(&t.p90)
        .filter(|v| v.is_finite())
        .fold(0.0f32, |a, b| a.max(*b))
        .max(0.01) as f64
        * 1.05;
    let root = BitMapBackend::new(path, (1400, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let minutes = t.horizon_slots as f64 * interval_ms as f64 / 60_000.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{} — {} {minutes} min ahead (test period)", t.entity, t.target),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x1, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("hours into the test period")
        .y_desc(format!("{} utilisation", t.target))
        .light_line_style(WHITE)
        .draw()?;
    let series = |v: &[f32]| -> Vec<(f64, f64)> {
        t.slots
            .iter()
            .zip(v)
            .filter(|(_, y)| y.is_finite())
            .map(|(s, y)| (hours(*s), f64::from(*y)))
            .collect()
    };
    let grey = RGBColor(150, 150, 150);
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    chart
        .draw_series(LineSeries::new(series(&t.actual), grey.stroke_width(1)))?
        .label("actual")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
    chart
        .draw_series(LineSeries::new(series(&t.seasonal_naive), orange.mix(0.6).stroke_width(1)))?
        .label("seasonal naive")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], orange));
    chart
        .draw_series(LineSeries::new(series(&t.p50), blue.stroke_width(2)))?
        .label("xgboost p50")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue));
    chart
        .draw_series(LineSeries::new(series(&t.p90), blue.mix(0.4).stroke_width(1)))?
        .label("xgboost p90")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.mix(0.4)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One entity's demand and the capacity each policy provisioned.
pub type CapacityChart<'a> = (&'a str, &'a [f64], &'a [(&'static str, Vec<f64>)]);

/// The policy backtest's charts: capacity against demand for a few entities, and the slack /
/// shortfall trade-off of the predictive policy over its headroom quantile, with the simple
/// policies as points.
pub fn policy_charts(
    out: &Path,
    charts: &[CapacityChart<'_>],
    interval_ms: i64,
    rows: &[crate::policy_backtest::PolicyRow],
    curve: &[(f64, crate::policy_backtest::PolicyRow)],
) -> anyhow::Result<Vec<String>> {
    if !font() {
        eprintln!("no font found ({}): plots skipped", FONT_PATHS.join(", "));
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for (k, (entity, demand, caps)) in charts.iter().enumerate() {
        let name = format!("capacity-{k}.png");
        capacity(&out.join(&name), entity, demand, caps, interval_ms).map_err(|e| anyhow::anyhow!("plot {name}: {e}"))?;
        files.push(name);
    }
    let name = "tradeoff.png".to_owned();
    tradeoff(&out.join(&name), rows, curve).map_err(|e| anyhow::anyhow!("plot {name}: {e}"))?;
    files.push(name);
    Ok(files)
}

const PALETTE: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

fn capacity(path: &Path, entity: &str, demand: &[f64], caps: &[(&'static str, Vec<f64>)], interval_ms: i64) -> Result<(), Box<dyn std::error::Error>> {
    let hours = |i: usize| i as f64 * interval_ms as f64 / 3_600_000.0;
    let x1 = hours(demand.len()).max(1.0);
    let ymax = demand
        .iter()
        .chain(caps.iter().flat_map(|(_, v)| v.iter()))
        .filter(|v| v.is_finite())
        .fold(0.0f64, |a, b| a.max(*b))
        .max(0.01)
        * 1.05;
    let root = BitMapBackend::new(path, (1400, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{entity}: CPU demand and provisioned capacity by policy"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x1, 0.0..ymax)?;
    chart.configure_mesh().x_desc("hours into the window").y_desc("vCPUs").light_line_style(WHITE).draw()?;
    let grey = RGBColor(120, 120, 120);
    let pts = |v: &[f64]| -> Vec<(f64, f64)> { v.iter().enumerate().filter(|(_, y)| y.is_finite()).map(|(i, y)| (hours(i), *y)).collect() };
    chart
        .draw_series(LineSeries::new(pts(demand), grey.stroke_width(1)))?
        .label("demand")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
    for (k, (name, v)) in caps.iter().enumerate().filter(|(_, (n, _))| !n.starts_with("as provisioned")) {
        let c = PALETTE[k % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(pts(v), c.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

fn tradeoff(path: &Path, rows: &[crate::policy_backtest::PolicyRow], curve: &[(f64, crate::policy_backtest::PolicyRow)]) -> Result<(), Box<dyn std::error::Error>> {
    let xs = rows.iter().map(|r| r.cpu_shortfall).chain(curve.iter().map(|(_, r)| r.cpu_shortfall));
    let ys = rows.iter().map(|r| r.cpu_slack).chain(curve.iter().map(|(_, r)| r.cpu_slack));
    let xmax = xs.fold(0.0f64, f64::max).max(0.01) * 100.0 * 1.1;
    let ymax = ys.fold(0.0f64, f64::max).clamp(0.01, 1.0) * 100.0 * 1.05;
    let root = BitMapBackend::new(path, (900, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("CPU slack against shortfall (predictive policy over its headroom quantile)", ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
    chart.configure_mesh().x_desc("samples short of CPU (%)").y_desc("unused provisioned CPU (%)").draw()?;
    let blue = PALETTE[0];
    let line: Vec<(f64, f64)> = curve.iter().map(|(_, r)| (100.0 * r.cpu_shortfall, 100.0 * r.cpu_slack)).collect();
    chart
        .draw_series(LineSeries::new(line.clone(), blue.stroke_width(2)))?
        .label("predictive (quantile varied)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue));
    chart.draw_series(line.iter().map(|p| Circle::new(*p, 4, blue.filled())))?;
    for (q, r) in curve {
        chart.draw_series(std::iter::once(Text::new(format!("q={q}"), (100.0 * r.cpu_shortfall, 100.0 * r.cpu_slack), ("sans-serif", 13))))?;
    }
    for (k, r) in rows.iter().enumerate().skip(1) {
        let c = PALETTE[(k + 1) % PALETTE.len()];
        let p = (100.0 * r.cpu_shortfall, 100.0 * r.cpu_slack);
        chart
            .draw_series(std::iter::once(TriangleMarker::new(p, 8, c.filled())))?
            .label(r.policy.clone())
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, c.filled()));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

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

//! The Prophet-class statistical baseline: `augurs-prophet`, with Prophet's own Stan model
//! (MAP fit, L-BFGS) run as the WebAssembly component the crate embeds (`wasmstan`), so no
//! cmdstan install is needed. It is refitted at the sampled test origins like ETS.

use augurs_prophet::wasmstan::WasmstanOptimizer;
use augurs_prophet::{IntervalWidth, PredictionData, Prophet, ProphetOptions, SeasonalityOption, TrainingData};
use headroom_forecast::baselines::OriginModel;

/// Prophet refitted on the trailing `window_slots` of the raw series at each origin: linear
/// trend with automatic changepoints, daily seasonality (and weekly when the window spans two
/// weeks, Prophet's own rule), the 80 % interval's upper bound as the p90.
pub struct ProphetBaseline {
    optimizer: WasmstanOptimizer,
    window_slots: usize,
    uncertainty_samples: u32,
}

impl ProphetBaseline {
    /// Compiles the embedded Stan component once; fits reuse it.
    pub fn new(window_slots: usize, uncertainty_samples: u32) -> Self {
        ProphetBaseline { optimizer: WasmstanOptimizer::new(), window_slots, uncertainty_samples }
    }

    fn fit(&self, history: &[f32], end_s: i64, step_s: i64, max_h: usize) -> Result<(Vec<f64>, Vec<f64>), augurs_prophet::Error> {
        let n = history.len() as i64;
        let (ds, y): (Vec<i64>, Vec<f64>) = history
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, v)| (end_s - (n - 1 - k as i64) * step_s, f64::from(*v)))
            .unzip();
        let opts = ProphetOptions {
            yearly_seasonality: SeasonalityOption::Manual(false),
            interval_width: IntervalWidth::try_new(0.8)?,
            uncertainty_samples: self.uncertainty_samples,
            ..ProphetOptions::default()
        };
        let mut model = Prophet::new(opts, self.optimizer.clone());
        model.fit(TrainingData::new(ds, y)?, Default::default())?;
        let future: Vec<i64> = (1..=max_h as i64).map(|h| end_s + h * step_s).collect();
        let p = model.predict(PredictionData::new(future))?;
        let upper = p.yhat.upper.unwrap_or_else(|| p.yhat.point.clone());
        Ok((p.yhat.point, upper))
    }
}

impl OriginModel for ProphetBaseline {
    fn name(&self) -> &str {
        "prophet"
    }
    fn window_slots(&self) -> usize {
        self.window_slots
    }
    fn forecast(&self, history: &[f32], end_s: i64, step_s: i64, max_h: usize) -> Option<(Vec<f64>, Vec<f64>)> {
        // Prophet needs a few points, and a constant series has nothing to fit.
        let finite: Vec<f32> = history.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.len() < 24 {
            return None;
        }
        match self.fit(history, end_s, step_s, max_h) {
            Ok((p, up)) if p.iter().chain(&up).all(|v| v.is_finite()) => Some((p, up)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily cycle plus noise: Prophet's forecast follows the cycle (it beats the last value
    /// half a day later), and its p90 lies above its p50.
    #[test]
    fn prophet_follows_a_daily_cycle() {
        let step = 300i64;
        let per_day = 288usize;
        let n = 3 * per_day;
        let day = |k: usize| 50.0 + 30.0 * (2.0 * std::f64::consts::PI * k as f64 / per_day as f64).sin();
        let mut rng = 7u64;
        let hist: Vec<f32> = (0..n)
            .map(|k| {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let noise = ((rng >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 4.0;
                (day(k) + noise) as f32
            })
            .collect();
        let end_s = 1_700_000_000 / step * step;
        let pb = ProphetBaseline::new(n, 200);
        let h = per_day / 2;
        let (p, up) = pb.forecast(&hist, end_s, step, h).expect("prophet fits a clean cycle");
        assert_eq!(p.len(), h);
        let truth: Vec<f64> = (n..n + h).map(day).collect();
        let mae = p.iter().zip(&truth).map(|(a, b)| (a - b).abs()).sum::<f64>() / h as f64;
        let last = f64::from(hist[n - 1]);
        let naive = truth.iter().map(|b| (last - b).abs()).sum::<f64>() / h as f64;
        assert!(mae < naive / 3.0, "prophet MAE {mae:.2} vs naive {naive:.2}");
        assert!(p.iter().zip(&up).all(|(a, b)| b > a), "p90 above p50");
        // Too little data: no fit, scored as naive by the backtest.
        assert!(pb.forecast(&hist[..10], end_s, step, 3).is_none());
    }
}

//! The report of a fit or a backtest: `report.md` (tables), `report.json` (everything), and
//! PNG plots of forecast against actual.

use std::fmt::Write as _;
use std::path::Path;

use headroom_forecast::artifact::Manifest;
use headroom_forecast::backtest::{Backtest, ModelSet};
use headroom_forecast::{oracle, Dataset};

/// The `n` entities with the most CPU variance in the test period (the interesting plots).
pub fn most_variable(ds: &Dataset, n: usize) -> Vec<u32> {
    let mut v: Vec<(f64, u32)> = ds
        .series
        .iter()
        .enumerate()
        .map(|(e, s)| {
            let from = (ds.split_slot - s.first_slot).max(0) as usize;
            let xs: Vec<f64> = s.values[0]
                .iter()
                .skip(from)
                .filter(|x| x.is_finite())
                .map(|x| f64::from(*x))
                .collect();
            let n = xs.len().max(1) as f64;
            let mean = xs.iter().sum::<f64>() / n;
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n, e as u32)
        })
        .collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    v.into_iter().take(n).map(|x| x.1).collect()
}

fn f(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x.abs() >= 1e5 {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

/// The accuracy table of a backtest, markdown.
pub fn table(b: &Backtest) -> String {
    let mut s = String::new();
    let mut targets: Vec<&str> = b.rows.iter().map(|r| r.target.as_str()).collect();
    targets.dedup();
    for t in targets {
        let _ = writeln!(s, "\n### {t}\n");
        let _ = writeln!(
            s,
            "| horizon | model | MAE | RMSE | MAPE % | sMAPE % | MASE | MASE (h) | MASE per series, mean (median) | MASE (h) per series, mean (median) | R² | p90 pinball | p90 coverage | n |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in b.rows.iter().filter(|r| r.target == t) {
            let sc = &r.scores;
            let _ = writeln!(
                s,
                "| {} min | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} | {} | {} |",
                r.horizon_minutes,
                r.model,
                f(sc.mae),
                f(sc.rmse),
                f(sc.mape),
                f(sc.smape),
                f(sc.mase),
                f(sc.mase_h),
                f(sc.mase_series),
                f(sc.mase_series_median),
                f(sc.mase_h_series),
                f(sc.mase_h_series_median),
                f(sc.r2),
                sc.pinball90.map_or("–".into(), f),
                sc.coverage90.map_or("–".into(), f),
                sc.n
            );
        }
    }
    s
}

/// A few lines for the terminal: best model per target and horizon by MASE.
pub fn summary(b: &Backtest) -> String {
    let mut s = String::from("\nMASE, one-step scale (same-horizon scale), test period:\n");
    let mut keys: Vec<(String, usize)> = b.rows.iter().map(|r| (r.target.clone(), r.horizon_slots)).collect();
    keys.sort();
    keys.dedup();
    for (t, h) in &keys {
        let (t, h) = (t.as_str(), *h);
        let rows: Vec<_> = b.rows.iter().filter(|r| r.target == t && r.horizon_slots == h).collect();
        let get = |m: &str| {
            rows.iter()
                .find(|r| r.model == m)
                .map_or("–".to_string(), |r| format!("{:.3} ({:.3})", r.scores.mase, r.scores.mase_h))
        };
        let best = rows
            .iter()
            .filter(|r| !r.model.contains('@') && r.model != oracle::NAME)
            .min_by(|a, b| a.scores.mase.total_cmp(&b.scores.mase))
            .map(|r| r.model.as_str())
            .unwrap_or("-");
        let models: Vec<String> = ["xgboost", "lstm", "gru", "window_percentile", "seasonal_naive", "naive"]
            .iter()
            .filter(|m| rows.iter().any(|r| r.model == **m))
            .map(|m| format!("{m} {}", get(m)))
            .collect();
        let _ = writeln!(
            s,
            "  {t:4} {:>4} min: {}  -> best {best}  [{} {}: reads the future]",
            rows[0].horizon_minutes,
            models.join("  "),
            oracle::NAME,
            get(oracle::NAME)
        );
    }
    let _ = writeln!(
        s,
        "MASE per series (each entity over its own in-sample one-step naive error; same-horizon scale in brackets), mean (median):"
    );
    for (t, h) in keys {
        let rows: Vec<_> = b.rows.iter().filter(|r| r.target == t && r.horizon_slots == h && r.scores.mase_series.is_finite()).collect();
        let cells: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {:.3} ({:.3}) [{:.3} ({:.3})]",
                    r.model,
                    r.scores.mase_series,
                    r.scores.mase_series_median,
                    r.scores.mase_h_series,
                    r.scores.mase_h_series_median
                )
            })
            .collect();
        if let Some(r) = rows.first() {
            let _ = writeln!(s, "  {t:4} {:>4} min: {}", r.horizon_minutes, cells.join("  "));
        }
    }
    let at: Vec<_> = b.rows.iter().filter(|r| r.model.ends_with("@origins")).collect();
    if !at.is_empty() {
        let _ = writeln!(s, "on the statistical baselines' origins (MASE): ");
        let mut keys: Vec<(&str, usize, f64)> = Vec::new();
        for r in &at {
            if !keys.iter().any(|k| k.0 == r.target && k.1 == r.horizon_slots) {
                keys.push((&r.target, r.horizon_slots, r.horizon_minutes));
            }
        }
        for (target, h, minutes) in keys {
            let here: Vec<_> = at.iter().filter(|r| r.target == target && r.horizon_slots == h).collect();
            let cells: Vec<String> = here
                .iter()
                .map(|r| format!("{} {:.3}", r.model.trim_end_matches("@origins"), r.scores.mase))
                .collect();
            let n = here.first().map_or(0, |r| r.scores.n);
            let _ = writeln!(s, "  {target:4} {minutes:>4} min: {}  (n={n})", cells.join("  "));
        }
    }
    if let Some(c) = &b.classifier {
        let _ = writeln!(
            s,
            "  peak classifier: PR-AUC {:.3} (base rate {:.3}), precision {:.3}, recall {:.3}, FPR {:.4}",
            c.pr_auc, c.base_rate, c.precision, c.recall, c.false_positive_rate
        );
    }
    s
}

pub fn write(
    out: &Path,
    ds: &Dataset,
    models: &ModelSet,
    backtest: Option<&Backtest>,
    manifest: &Manifest,
    command: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut md = String::new();
    let _ = writeln!(md, "# headroom forecast report\n");
    let _ = writeln!(md, "Command: `{command}`\n");
    let minutes = ds.interval_ms as f64 / 60_000.0;
    let _ = writeln!(
        md,
        "- data: {} entities, slots of {minutes} min, {} training rows, {} test rows\n\
         - feature schema: `{}` ({} features), computed by the featurizer's own code\n\
         - model version: `{}` on {} (XGBoost {})\n\
         - training window: {} to {} (epoch ms); test period from slot {}\n\
         - MASE: MAE over the pooled in-sample one-step naive MAE of the training period \
         ({}); MASE (h): over the in-sample naive MAE at the same horizon\n",
        ds.series.len(),
        ds.train.len(),
        ds.test.len(),
        manifest.feature_schema,
        manifest.feature_names.len(),
        manifest.version,
        models.device,
        manifest.xgboost_version,
        manifest.training_from_ms,
        manifest.training_to_ms,
        if ds.split_slot == i64::MAX { "none".to_string() } else { ds.split_slot.to_string() },
        backtest
            .map(|b| b
                .naive_scale
                .iter()
                .map(|(k, v)| format!("{k} {}", f(*v)))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_else(|| "no test period".into()),
    );
    let _ = writeln!(md, "## Models\n");
    let _ = writeln!(md, "| model | rounds | best iteration | validation | seconds |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for r in &models.regressors {
        let _ = writeln!(
            md,
            "| xgboost {} h{} (quantiles {:?}) | {} | {} | {} {} | {:.1} |",
            r.target, r.horizon, r.quantiles, r.trained.rounds, r.trained.best_iteration,
            r.trained.metric, f(r.trained.best_validation_loss), r.seconds
        );
    }
    for n in &manifest.neural {
        let _ = writeln!(
            md,
            "| {} {} (hidden {}, {} layers{}, input {} steps) | {} epochs | {} | pinball {} | {:.1} |",
            n.family, n.targets.join("+"), n.hidden, n.layers, if n.bidirectional { ", bidirectional" } else { "" },
            n.input_len, n.epochs, n.best_epoch, f(n.best_validation_loss), n.seconds
        );
    }
    if let Some(c) = &models.classifier {
        let _ = writeln!(
            md,
            "| peak classifier h{} (pos weight {:.1}) | {} | {} | {} {} | {:.1} |",
            c.horizon, c.pos_weight, c.trained.rounds, c.trained.best_iteration, c.trained.metric,
            f(c.trained.best_validation_loss), c.seconds
        );
    }
    if let Some(b) = backtest {
        let _ = writeln!(
            md,
            "\n## Accuracy on the test period\n\n`{}` is not a forecast: it is the median of the \
             target's own values within the horizon on both sides of it (the target left out), \
             so it reads the future. Its error estimates the noise no forecaster can remove at \
             that horizon.\n{}",
            oracle::NAME,
            table(b)
        );
        if let Some(c) = &b.classifier {
            let _ = writeln!(
                md,
                "\n## Peak / scale-event classifier (event within {} slots)\n\n\
                 | n | positives | base rate | threshold | precision | recall | FPR | PR-AUC |\n\
                 |---|---|---|---|---|---|---|---|\n\
                 | {} | {} | {} | {} | {} | {} | {} | {} |",
                models.classifier.as_ref().map_or(0, |c| c.horizon),
                c.n, c.positives, f(c.base_rate), c.threshold, f(c.precision), f(c.recall),
                f(c.false_positive_rate), f(c.pr_auc)
            );
        }
        let plots = crate::plot::write_all(out, &b.traces, ds.interval_ms)?;
        if !plots.is_empty() {
            let _ = writeln!(md, "\n## Forecast against actual\n");
            for p in plots {
                let _ = writeln!(md, "![{p}]({p})");
            }
        }
        std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&serde_json::json!({
            "command": command,
            "model_version": manifest.version,
            "feature_schema": manifest.feature_schema,
            "models": models,
            "backtest": {
                "rows": b.rows,
                "classifier": b.classifier,
                "naive_scale": b.naive_scale,
                "test_rows": b.test_rows,
            },
        }))?)?;
    } else {
        std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&serde_json::json!({
            "command": command,
            "model_version": manifest.version,
            "feature_schema": manifest.feature_schema,
            "models": models,
        }))?)?;
    }
    std::fs::write(out.join("report.md"), md)?;
    Ok(())
}

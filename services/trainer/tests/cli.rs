//! `headroom-train` end to end on generated telemetry: the report (markdown, JSON, plots) and a
//! model version that loads, predicts, and refuses another feature schema.

use std::path::Path;
use std::process::Command;

use headroom_features::{FeatureConfig, FeatureLayout};
use headroom_forecast::artifact;

fn train(dir: &Path, cmd: &str, extra: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_headroom-train"))
        .current_dir(dir)
        .args([cmd, "--generate-entities", "6", "--generate-days", "5", "--rounds", "30", "--threads", "2"])
        .args(extra)
        .output()
        .expect("run headroom-train");
    assert!(
        out.status.success(),
        "headroom-train {cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn evaluate_writes_a_report_and_a_loadable_model_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = train(
        dir.path(),
        "evaluate",
        &["--train-days", "4", "--nn-epochs", "6", "--nn-samples-per-epoch", "4000", "--nn-hidden", "24", "--nn-batch", "64", "--nn-max-duration", "10m"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("MASE, one-step scale"), "{stdout}");

    let report = dir.path().join("reports/latest");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    for needle in ["### cpu", "### mem", "### net", "seasonal_naive", "window_percentile", "PR-AUC", ".png"] {
        assert!(md.contains(needle), "report.md lacks {needle}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    let rows = json["backtest"]["rows"].as_array().unwrap();
    // 3 targets × 3 horizons × (xgboost, lstm, gru, lstm and gru with carried state, 3
    // baselines, the interpolation oracle, ETS, XGBoost and naive on the ETS origins)
    assert_eq!(rows.len(), 108);
    assert!(rows.iter().any(|r| r["model"] == "gru@carried"));
    assert!(md.contains("| lstm cpu+mem+net (hidden 24, 2 layers, input 24 steps)"), "{md}");
    assert!(rows.iter().any(|r| r["model"] == "ets@origins" && r["n"].as_u64().unwrap() > 10));
    for r in rows {
        for k in ["mase", "mase_h"] {
            let mase = r[k].as_f64().unwrap();
            assert!(mase.is_finite() && mase > 0.0, "{r}");
        }
        // Per-series MASE on every row that has entities (not on the sampled origins).
        if !r["model"].as_str().unwrap().ends_with("@origins") {
            for k in ["mase_series", "mase_h_series"] {
                let (mean, median) = (r[k].as_f64().unwrap(), r[&format!("{k}_median")].as_f64().unwrap());
                assert!(mean.is_finite() && mean > 0.0 && median.is_finite() && median > 0.0, "{k}: {r}");
            }
            // At one step both scales are the same.
            if r["horizon_slots"] == 1 {
                assert_eq!(r["mase_series"], r["mase_h_series"], "{r}");
            }
        } else {
            assert!(r["mase_series"].is_null() && r["mase_h_series"].is_null(), "{r}");
        }
    }
    // On the generator's daily pattern XGBoost beats the naive forecast at 30 minutes.
    let mase = |model: &str| {
        rows.iter()
            .find(|r| r["model"] == model && r["target"] == "cpu" && r["horizon_slots"] == 6)
            .unwrap()["mase"]
            .as_f64()
            .unwrap()
    };
    assert!(mase("xgboost") < mase("naive"), "xgboost {} naive {}", mase("xgboost"), mase("naive"));
    // So do the recurrent models, trained on the same rows for a few epochs.
    for m in ["lstm", "gru"] {
        assert!(mase(m) < mase("naive"), "{m} {} naive {}", mase(m), mase("naive"));
    }
    // The interpolation oracle sees both sides of the target: on a smooth daily pattern with
    // noise it is better than naive, and it is shown but never named the best model.
    assert!(mase("oracle_interp") < mase("naive"), "oracle {} naive {}", mase("oracle_interp"), mase("naive"));
    assert!(md.contains("`oracle_interp` is not a forecast"), "{md}");
    assert!(stdout.contains("[oracle_interp "), "{stdout}");
    assert!(!stdout.contains("-> best oracle_interp"), "{stdout}");
    let png = std::fs::read(report.join("forecast-0-cpu-h3.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    let versions = artifact::list(&dir.path().join("models")).unwrap();
    assert_eq!(versions.len(), 1);
    let vdir = dir.path().join("models").join(&versions[0]);
    let layout = FeatureLayout::new(&FeatureConfig::default());
    let loaded = artifact::load(&vdir, Some(layout.id())).unwrap();
    assert_eq!(loaded.boosters.len(), 10);
    assert_eq!(loaded.manifest.feature_names.len(), layout.len() + 6);
    assert_eq!(loaded.manifest.reference.len(), layout.len() + 6);
    assert!(loaded.manifest.metrics.is_some());
    // The neural models are part of the version and load from it.
    let fams: Vec<&str> = loaded.manifest.neural.iter().map(|n| n.family.as_str()).collect();
    assert_eq!(fams, ["lstm", "gru"]);
    for n in &loaded.manifest.neural {
        let p = headroom_neural::Predictor::load(&vdir, &n.family).unwrap();
        assert_eq!(p.meta.horizons_slots, [1, 3, 6]);
        assert!(n.epochs >= 1 && n.best_validation_loss.is_finite());
    }
    // One model predicts a row of the right width.
    let mut out = Vec::new();
    let row = vec![0.3f32; layout.len() + 6];
    assert_eq!(loaded.boosters[0].1.predict(&row, 1, &mut out).unwrap(), 2);

    // Another feature configuration has another schema: the version is refused, by name.
    let other = FeatureLayout::new(&FeatureConfig { lags: 12, ..FeatureConfig::default() });
    let e = artifact::load(&vdir, Some(other.id())).unwrap_err().to_string();
    assert!(e.contains("feature schema") && e.contains(other.id()), "{e}");
}

#[test]
fn train_fits_on_everything_and_bad_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), "train", &["--targets", "cpu", "--no-classifier", "--models", "xgboost"]);
    let versions = artifact::list(&dir.path().join("models")).unwrap();
    assert_eq!(versions.len(), 1);
    let md = std::fs::read_to_string(dir.path().join("reports/latest/report.md")).unwrap();
    assert!(md.contains("xgboost cpu h6") && !md.contains("## Accuracy"), "{md}");

    for (args, needle) in [
        (vec!["evaluate", "--generate-entities", "2", "--generate-days", "2", "--horizons", "7m"], "not a positive multiple"),
        (vec!["evaluate", "--generate-entities", "2", "--generate-days", "2", "--targets", "gpu"], "unknown target `gpu`"),
        (vec!["evaluate", "--generate-entities", "2", "--generate-days", "2", "--train-days", "3"], "leaves no test period"),
        (vec!["evaluate", "--trace", "/nonexistent/trace.csv", "--trace-format", "generic"], "nonexistent"),
        (vec!["evaluate", "--generate-entities", "2", "--device", "gpu"], "auto, cpu or cuda"),
        (vec!["evaluate", "--generate-entities", "2", "--generate-days", "2", "--models", "xgboost,transformer"], "unknown model family `transformer`"),
        (vec!["evaluate", "--generate-entities", "2", "--nn-max-duration", "500ms"], "under a second"),
        (vec!["evaluate", "--generate-entities", "2", "--nn-max-duration", "soon"], "--nn-max-duration"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_headroom-train"))
            .current_dir(dir.path())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn policy_backtest_compares_the_policies_on_the_same_demand() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[policy.default]\nheadroom_quantile = 0.95\n").unwrap();
    let out = train(
        dir.path(),
        "policy-backtest",
        &["--train-days", "4", "--last-days", "1", "--policy", policy.to_str().unwrap(), "--quantiles", "0.6,0.9,0.99"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("RESULT policy-backtest entities=6 "), "{stdout}");
    assert!(last.contains("quantile=0.95"), "the file's quantile is used: {last}");

    let report = dir.path().join("reports/latest");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(report.join("policy.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["predictive", "reactive threshold", "p90 + 15 % rightsizer", "static peak", "as provisioned (trace)"]);
    let get = |name: &str, k: &str| rows.iter().find(|r| r["policy"] == name).unwrap()[k].as_f64().unwrap();
    // Same demand for every policy: the same samples counted.
    let samples: Vec<u64> = rows.iter().map(|r| r["outcome"]["samples"].as_u64().unwrap()).collect();
    assert!(samples[0] >= 6 * 250 && samples.iter().all(|s| *s == samples[0]), "{samples:?}");
    assert_eq!(get("static peak", "actions"), 0.0);
    assert!(get("predictive", "actions") > 0.0);
    for r in rows {
        for k in ["cpu_slack", "cpu_shortfall", "mem_slack", "mem_shortfall"] {
            let v = r[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{k} of {r}");
        }
        assert!(r["cost_usd"].as_f64().unwrap() > 0.0);
    }
    // A higher headroom quantile never provisions less: slack up, shortfall down.
    let curve = json["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 3);
    let (lo, hi) = (&curve[0][1], &curve[2][1]);
    assert!(hi["cpu_slack"].as_f64().unwrap() >= lo["cpu_slack"].as_f64().unwrap(), "{curve:?}");
    assert!(hi["cpu_shortfall"].as_f64().unwrap() <= lo["cpu_shortfall"].as_f64().unwrap(), "{curve:?}");
    assert!(hi["cost_usd"].as_f64().unwrap() >= lo["cost_usd"].as_f64().unwrap(), "{curve:?}");
    let md = std::fs::read_to_string(report.join("policy.md")).unwrap();
    assert!(md.contains("| p90 + 15 % rightsizer |") && md.contains("## Checks"), "{md}");
    let png = std::fs::read(report.join("tradeoff.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(report.join("capacity-0.png").exists());
}

#[test]
fn bench_train_matches_python_xgboost_on_the_same_rows() {
    // The Python side needs the project venv (scripts/test.sh sets HEADROOM_PYTHON); no skip.
    assert!(
        std::env::var("HEADROOM_PYTHON").is_ok_and(|p| !p.is_empty()),
        "HEADROOM_PYTHON is not set: run the suite through scripts/test.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = train(dir.path(), "bench-train", &["--horizon", "3", "--train-stride", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = stdout.lines().last().unwrap_or_default();
    assert!(result.starts_with("RESULT xgb_train "), "{stdout}");
    let field = |k: &str| {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{k} missing in {result}"))
    };
    // The same library, rows, labels and parameters give the same model.
    assert!(field("prediction_rel_diff") < 1e-6, "{result}");
    assert!(field("rust_train_s") > 0.0 && field("python_train_s") > 0.0);
    assert_eq!(field("rounds"), 30.0);
}

#[test]
fn bench_rnn_runs_the_same_network_in_onnx_runtime_and_agrees() {
    assert!(
        std::env::var("HEADROOM_PYTHON").is_ok_and(|p| !p.is_empty()),
        "HEADROOM_PYTHON is not set: run the suite through scripts/test.sh"
    );
    for cell in ["lstm", "gru"] {
        let out = Command::new(env!("CARGO_BIN_EXE_headroom-train"))
            .args(["bench-rnn", "--cell", cell, "--hidden", "16", "--input-lens", "8", "--batch", "64", "--reps", "1"])
            .output()
            .expect("run headroom-train bench-rnn");
        // The command itself fails when ONNX Runtime's outputs differ from burn's by 1e-3.
        assert!(out.status.success(), "bench-rnn {cell}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let result = stdout.lines().last().unwrap_or_default();
        assert!(result.starts_with(&format!("RESULT bench_rnn cell={cell} ")), "{stdout}");
        for k in ["len8_kernel_seq_s", "len8_burn_seq_s", "len8_ort_seq_s", "carried_events_s"] {
            let v: f64 = result
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} missing in {result}"));
            assert!(v > 0.0, "{k} in {result}");
        }
    }
}

/// With `--registry-url` (here through `HEADROOM_REGISTRY_URL`), `train` registers each version
/// as a candidate in PostgreSQL and `promote` makes it serve there, retiring the one before.
#[test]
fn train_and_promote_keep_the_postgres_registry() {
    let base = headroom_testkit::pg_url();
    let schema = headroom_testkit::unique("reg").replace('-', "_");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&base).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut c).await.unwrap();
    });
    let url = headroom_testkit::pg_url_in_schema(&base, &schema);
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_headroom-train"))
            .current_dir(dir.path())
            .env("HEADROOM_REGISTRY_URL", &url)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let quick = ["--generate-entities", "3", "--generate-days", "3", "--rounds", "5", "--threads", "2", "--targets", "cpu", "--no-classifier", "--models", "xgboost"];
    for _ in 0..2 {
        run(&[&["train"][..], &quick[..]].concat());
        std::thread::sleep(std::time::Duration::from_millis(1100)); // version names are per second
    }
    let versions = artifact::list(&dir.path().join("models")).unwrap();
    assert_eq!(versions.len(), 2);
    let status = |listing: &str, v: &str| {
        listing.lines().find(|l| l.starts_with(v)).and_then(|l| l.split('\t').nth(1)).map(str::to_owned)
    };
    let listing = run(&["versions"]);
    assert_eq!(status(&listing, &versions[0]).as_deref(), Some("candidate"), "{listing}");
    run(&["promote", &versions[0]]);
    run(&["promote", &versions[1]]);
    let listing = run(&["versions"]);
    assert_eq!(status(&listing, &versions[0]).as_deref(), Some("retired"), "{listing}");
    assert_eq!(status(&listing, &versions[1]).as_deref(), Some("serving"), "{listing}");
    assert!(listing.contains("file:///"), "{listing}");
    // The file registry agrees.
    assert_eq!(artifact::Registry::read(&dir.path().join("models")).unwrap().serving["xgboost"], versions[1]);

    // A version that does not exist is refused, and nothing changes.
    let out = Command::new(env!("CARGO_BIN_EXE_headroom-train"))
        .current_dir(dir.path())
        .env("HEADROOM_REGISTRY_URL", &url)
        .args(["promote", "v-nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(status(&run(&["versions"]), &versions[1]).as_deref(), Some("serving"));
}

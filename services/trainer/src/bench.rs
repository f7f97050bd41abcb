//! `headroom-train bench-predict`: XGBoost batched and single-row prediction through
//! headroom's in-place path, against the Python `xgboost` package's `inplace_predict` on the
//! same model file and rows, in the same run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use clap::Args;
use headroom_forecast::xgb::ffi::InplaceBooster;
use headroom_forecast::xgb::{self, Labels, Objective, XgbParams};
use headroom_forecast::Device;
use rand::{Rng, SeedableRng};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 300)]
    trees: u32,
    #[arg(long, default_value_t = 8)]
    depth: u32,
    /// Width of the input vector (the default featurizer vector plus the derived inputs).
    #[arg(long, default_value_t = 188)]
    features: usize,
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    #[arg(long, default_value_t = 50)]
    reps: usize,
    /// Prediction threads on both sides.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The Python with xgboost and numpy (scripts/setup.sh installs it in the project venv).
    #[arg(long, env = "HEADROOM_PYTHON")]
    python: PathBuf,
}

/// The best mean time per call of `f` over three rounds of `n` calls, after one warm-up call.
pub(crate) fn best_of(mut f: impl FnMut(), n: usize) -> f64 {
    f();
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_secs_f64() / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    let w = a.features;
    let n_train = 20_000;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let x: Vec<f32> = (0..n_train * w).map(|_| rng.random_range(0.0..1.0)).collect();
    // A target with interactions, so that trees grow to full depth.
    let y: Vec<f32> = x
        .chunks_exact(w)
        .map(|r| r[0] * r[1] + (r[2] - 0.5).abs() + if r[3] > 0.7 { r[4] } else { -r[5] } + 0.1 * r[6..16].iter().sum::<f32>())
        .collect();
    let wts = vec![1.0; n_train];
    let mut d = xgb::matrix(&x, n_train)?;
    eprintln!("training {} trees of depth {} on {n_train} x {w} …", a.trees, a.depth);
    let t = xgb::train(
        &mut d,
        Labels { y: &y, w: &wts },
        None,
        &Objective::Quantiles(vec![0.5]),
        &XgbParams {
            rounds: a.trees,
            max_depth: a.depth,
            eta: 0.1,
            subsample: 1.0,
            colsample_bytree: 1.0,
            min_child_weight: 1.0,
            early_stopping_rounds: 0,
            ..XgbParams::default()
        },
        Device::Cpu,
        &mut |_, _| std::ops::ControlFlow::Continue(()),
    )?;
    let dir = tempfile::tempdir()?;
    let model_path = dir.path().join("model.ubj");
    std::fs::write(&model_path, &t.model)?;
    let rows: Vec<f32> = (0..a.batch * w).map(|_| rng.random_range(0.0..1.0)).collect();
    let rows_path = dir.path().join("rows.f32");
    std::fs::write(&rows_path, rows.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;

    let mut b = InplaceBooster::from_bytes(&t.model)?;
    b.set_param("nthread", &a.threads.to_string())?;
    let mut out = Vec::new();
    let batch_s = best_of(|| { b.predict(&rows, a.batch, &mut out).expect("predict"); }, a.reps);
    let checksum: f64 = out.iter().map(|v| f64::from(*v)).sum();
    let single_s = best_of(|| { b.predict(&rows[..w], 1, &mut out).expect("predict"); }, a.reps * 20);
    let rust_batch = batch_s * 1e6 / a.batch as f64;
    let rust_single = single_s * 1e6;

    let script = &python_reference("xgb_predict.py");
    let o = Command::new(&a.python)
        .args([script, &model_path.display().to_string(), &rows_path.display().to_string()])
        .args([w.to_string(), a.batch.to_string(), a.reps.to_string(), a.threads.to_string()])
        .output()?;
    anyhow::ensure!(o.status.success(), "python reference failed: {}", String::from_utf8_lossy(&o.stderr));
    let py: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let py_batch = py["us_per_row_batch"].as_f64().unwrap_or(f64::NAN);
    let py_single = py["us_single_row"].as_f64().unwrap_or(f64::NAN);
    let py_sum = py["checksum"].as_f64().unwrap_or(f64::NAN);
    anyhow::ensure!(
        (py_sum - checksum).abs() <= 1e-3 * checksum.abs().max(1.0),
        "predictions differ from Python's: checksum {checksum} vs {py_sum}"
    );
    println!("rows {} x {w}, {} trees depth {}, {} thread(s), XGBoost {} (python package {})",
        a.batch, a.trees, a.depth, a.threads, headroom_forecast::xgb::ffi::version(), py["xgboost"]);
    println!("batch {}: headroom {rust_batch:.3} µs/row, python inplace_predict {py_batch:.3} µs/row", a.batch);
    println!("single row: headroom {rust_single:.1} µs, python inplace_predict {py_single:.1} µs");
    println!(
        "RESULT xgb_predict batch={} trees={} depth={} threads={} rust_us_per_row={rust_batch:.3} python_us_per_row={py_batch:.3} ratio_batch={:.3} rust_single_us={rust_single:.1} python_single_us={py_single:.1} ratio_single={:.3}",
        a.batch, a.trees, a.depth, a.threads, rust_batch / py_batch, rust_single / py_single
    );
    Ok(())
}

/// `headroom-train bench-train`: one head's training (the retrainer's and `train`'s code path:
/// DMatrix from the dataset's rows, multi-quantile `reg:quantileerror` on the change from the
/// anchor) against the Python `xgboost` package's `xgb.train` on the same rows, labels, weights
/// and parameters, in the same run.
#[derive(Args, Debug)]
pub struct TrainBenchArgs {
    #[command(flatten)]
    pub source: crate::source::SourceArgs,
    /// Use every N-th slot.
    #[arg(long, default_value_t = 4)]
    pub train_stride: usize,
    /// The head: target (cpu, mem, net) and horizon in slots.
    #[arg(long, default_value = "cpu")]
    pub target: String,
    #[arg(long, default_value_t = 3)]
    pub horizon: usize,
    /// Boosting rounds, all of them on both sides (no early stopping).
    #[arg(long, default_value_t = 100)]
    pub rounds: u32,
    #[arg(long, default_value_t = 8)]
    pub max_depth: u32,
    /// Threads on both sides (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: u32,
    #[arg(long, env = "HEADROOM_PYTHON")]
    pub python: PathBuf,
}

pub fn train(a: &TrainBenchArgs) -> anyhow::Result<()> {
    use headroom_forecast::{Dataset, DatasetOptions, Split, TARGETS};
    let m = TARGETS
        .iter()
        .position(|t| *t == a.target)
        .ok_or_else(|| anyhow::anyhow!("unknown --target {} (known: {})", a.target, TARGETS.join(", ")))?;
    let t = Instant::now();
    let records = a.source.read()?;
    let n_records = records.len();
    let ds = Dataset::build(
        records,
        &DatasetOptions { horizons: vec![a.horizon], split: Split::None, train_stride: a.train_stride, ..DatasetOptions::default() },
    )?;
    let rows = &ds.train;
    eprintln!("{n_records} records -> {} rows x {} inputs, {} entities, {:.1} s", rows.len(), rows.n_features, ds.series.len(), t.elapsed().as_secs_f64());
    let (mut y, mut w) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
    for i in 0..rows.len() {
        let d = ds.target(rows, i, m, a.horizon) - ds.anchor(rows, i, m);
        y.push(if d.is_finite() { d } else { 0.0 });
        w.push(if d.is_finite() { 1.0 } else { 0.0 });
    }
    let params = XgbParams { rounds: a.rounds, max_depth: a.max_depth, early_stopping_rounds: 0, nthread: a.threads, ..XgbParams::default() };
    let quantiles = vec![0.5f32, 0.9];

    let t = Instant::now();
    let mut d = xgb::matrix(&rows.x, rows.len())?;
    let rust_dmatrix = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let trained = xgb::train(&mut d, Labels { y: &y, w: &w }, None, &Objective::Quantiles(quantiles.clone()), &params, Device::Cpu, &mut |_, _| std::ops::ControlFlow::Continue(()))?;
    let rust_train = t.elapsed().as_secs_f64();
    drop(d);

    let n_check = rows.len().min(10_000);
    let check = &rows.x[..n_check * rows.n_features];
    let b = InplaceBooster::from_bytes(&trained.model)?;
    let mut out = Vec::new();
    b.predict(check, n_check, &mut out)?;
    let checksum: f64 = out.iter().map(|v| f64::from(*v)).sum();

    let dir = tempfile::tempdir()?;
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.path().join("x.f32"), f32s(&rows.x))?;
    std::fs::write(dir.path().join("y.f32"), f32s(&y))?;
    std::fs::write(dir.path().join("w.f32"), f32s(&w))?;
    std::fs::write(dir.path().join("check.f32"), f32s(check))?;
    let p = serde_json::json!({
        "n_cols": rows.n_features, "rounds": a.rounds,
        "booster": "gbtree", "tree_method": "hist", "device": "cpu", "verbosity": 0,
        "max_depth": params.max_depth, "eta": params.eta, "subsample": params.subsample,
        "colsample_bytree": params.colsample_bytree, "min_child_weight": params.min_child_weight,
        "lambda": params.lambda, "max_bin": params.max_bin, "seed": params.seed,
        "nthread": if a.threads == 0 { -1 } else { a.threads as i64 },
        "objective": "reg:quantileerror", "quantile_alpha": quantiles, "base_score": 0.0,
    });
    std::fs::write(dir.path().join("params.json"), serde_json::to_vec(&p)?)?;
    let script = &python_reference("xgb_train.py");
    let o = Command::new(&a.python).arg(script).arg(dir.path()).output()?;
    anyhow::ensure!(o.status.success(), "python reference failed: {}", String::from_utf8_lossy(&o.stderr));
    let py: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let py_dmatrix = py["dmatrix_s"].as_f64().unwrap_or(f64::NAN);
    let py_train = py["train_s"].as_f64().unwrap_or(f64::NAN);
    let py_sum = py["checksum"].as_f64().unwrap_or(f64::NAN);
    let rel = (py_sum - checksum).abs() / checksum.abs().max(1.0);
    println!(
        "{} rows x {} inputs, {} rounds depth {}, quantiles 0.5/0.9, XGBoost {} (python package {})",
        rows.len(), rows.n_features, a.rounds, a.max_depth, headroom_forecast::xgb::ffi::version(), py["xgboost"]
    );
    println!("headroom: DMatrix {rust_dmatrix:.1} s, train {rust_train:.1} s; python: DMatrix {py_dmatrix:.1} s, train {py_train:.1} s; prediction sums differ by {rel:.2e} (relative)");
    println!(
        "RESULT xgb_train rows={} inputs={} rounds={} depth={} threads={} rust_dmatrix_s={rust_dmatrix:.2} rust_train_s={rust_train:.2} python_dmatrix_s={py_dmatrix:.2} python_train_s={py_train:.2} ratio_train={:.3} ratio_total={:.3} prediction_rel_diff={rel:.2e}",
        rows.len(), rows.n_features, a.rounds, a.max_depth, a.threads, rust_train / py_train, (rust_dmatrix + rust_train) / (py_dmatrix + py_train)
    );
    Ok(())
}

/// A Python reference script of `load-tests/python/`. The manifest directory is read at run time
/// first (under cargo; a target directory shared between checkouts holds binaries built in
/// another one), then the one this binary was built in.
pub(crate) fn python_reference(name: &str) -> String {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    format!("{dir}/../../load-tests/python/{name}")
}

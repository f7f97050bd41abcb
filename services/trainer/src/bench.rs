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

fn best_of(mut f: impl FnMut(), n: usize) -> f64 {
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
        &mut |_, _| {},
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

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../load-tests/python/xgb_predict.py");
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

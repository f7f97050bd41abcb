//! XGBoost models: multi-quantile regression (`reg:quantileerror`, one output per quantile) and
//! the peak classifier (`binary:logistic` with class weighting), trained through the `xgb`
//! crate and served through [`ffi::InplaceBooster`] (in-place prediction, as Python's
//! `inplace_predict`).

pub mod ffi;

use serde::{Deserialize, Serialize};
use xgb::{Booster, DMatrix};

use crate::device::Device;

/// Training hyper-parameters (XGBoost's names where they exist).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XgbParams {
    pub rounds: u32,
    pub max_depth: u32,
    pub eta: f64,
    pub subsample: f64,
    pub colsample_bytree: f64,
    pub min_child_weight: f64,
    pub lambda: f64,
    pub max_bin: u32,
    /// Stop when the validation loss has not improved for this many rounds (0: never).
    pub early_stopping_rounds: u32,
    /// 0: all cores.
    pub nthread: u32,
    pub seed: u64,
}

impl Default for XgbParams {
    fn default() -> Self {
        XgbParams {
            rounds: 300,
            max_depth: 8,
            eta: 0.4,
            subsample: 0.8,
            colsample_bytree: 0.8,
            min_child_weight: 5.0,
            lambda: 1.0,
            max_bin: 256,
            early_stopping_rounds: 25,
            nthread: 0,
            seed: 7,
        }
    }
}

/// What the model learns.
#[derive(Debug, Clone, PartialEq)]
pub enum Objective {
    /// One output per quantile, in order.
    Quantiles(Vec<f32>),
    /// Probability of the positive class; `pos_weight` scales positive examples (class weighting).
    Binary { pos_weight: f32 },
}

/// A trained model: XGBoost's own serialisation (UBJSON) and how training went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trained {
    #[serde(skip)]
    pub model: Vec<u8>,
    pub rounds: u32,
    pub best_iteration: u32,
    #[serde(deserialize_with = "crate::metrics::f64_or_nan")]
    pub best_validation_loss: f64,
    pub metric: String,
}

/// Labels and weights of one training run; rows with weight 0 (unknown target) are ignored.
#[derive(Debug)]
pub struct Labels<'a> {
    pub y: &'a [f32],
    pub w: &'a [f32],
}

fn xerr(e: xgb::XGBError) -> anyhow::Error {
    anyhow::anyhow!("XGBoost: {e}")
}

/// A dense matrix for training or validation.
pub fn matrix(x: &[f32], n_rows: usize) -> anyhow::Result<DMatrix> {
    DMatrix::from_dense(x, n_rows).map_err(xerr)
}

/// Trains one model. `on_round(round, validation_loss)` reports progress after every round;
/// `ControlFlow::Break` ends the training with a [`crate::backtest::Stopped`] error.
pub fn train(
    dtrain: &mut DMatrix,
    train: Labels<'_>,
    mut valid: Option<(&mut DMatrix, Labels<'_>)>,
    objective: &Objective,
    params: &XgbParams,
    device: Device,
    on_round: &mut dyn FnMut(u32, Option<f64>) -> std::ops::ControlFlow<()>,
) -> anyhow::Result<Trained> {
    dtrain.set_labels(train.y).map_err(xerr)?;
    dtrain.set_weights(train.w).map_err(xerr)?;
    if let Some((d, l)) = valid.as_mut() {
        d.set_labels(l.y).map_err(xerr)?;
        d.set_weights(l.w).map_err(xerr)?;
    }
    let mut booster = {
        let mut cached: Vec<&DMatrix> = vec![&*dtrain];
        if let Some((d, _)) = valid.as_ref() {
            cached.push(&**d);
        }
        Booster::new_with_cached_dmats(&Default::default(), &cached).map_err(xerr)?
    };
    let mut set = |k: &str, v: String| booster.set_param(k, &v).map_err(xerr);
    set("verbosity", "0".into())?;
    set("booster", "gbtree".into())?;
    set("tree_method", "hist".into())?;
    set("device", device.to_string())?;
    set("max_depth", params.max_depth.to_string())?;
    set("eta", params.eta.to_string())?;
    set("subsample", params.subsample.to_string())?;
    set("colsample_bytree", params.colsample_bytree.to_string())?;
    set("min_child_weight", params.min_child_weight.to_string())?;
    set("lambda", params.lambda.to_string())?;
    set("max_bin", params.max_bin.to_string())?;
    set("seed", params.seed.to_string())?;
    if params.nthread > 0 {
        set("nthread", params.nthread.to_string())?;
    }
    let metric = match objective {
        Objective::Quantiles(qs) => {
            let list: Vec<String> = qs.iter().map(|q| q.to_string()).collect();
            set("objective", "reg:quantileerror".into())?;
            set("quantile_alpha", format!("[{}]", list.join(",")))?;
            set("eval_metric", "quantile".into())?;
            // The labels are changes from an anchor: start every quantile at 0. (Left to
            // itself XGBoost fits one intercept shared by all quantiles, which biases the p50
            // towards the p90 until enough rounds have undone it.)
            set("base_score", "0".into())?;
            "quantile"
        }
        Objective::Binary { pos_weight } => {
            set("objective", "binary:logistic".into())?;
            set("scale_pos_weight", pos_weight.to_string())?;
            set("eval_metric", "aucpr".into())?;
            "aucpr"
        }
    };
    // aucpr improves upwards, quantile loss downwards.
    let higher_is_better = metric == "aucpr";
    let (mut best, mut best_it, mut rounds) = (f64::NAN, 0u32, 0u32);
    for it in 0..params.rounds {
        booster.update(dtrain, it as i32).map_err(xerr)?;
        rounds = it + 1;
        let loss = match valid.as_ref() {
            Some((d, _)) => booster
                .evaluate(d)
                .map_err(xerr)?
                .get(metric)
                .map(|v| f64::from(*v)),
            None => None,
        };
        if on_round(it, loss).is_break() {
            return Err(crate::backtest::Stopped.into());
        }
        if let Some(l) = loss {
            let better = best.is_nan() || if higher_is_better { l > best } else { l < best };
            if better {
                best = l;
                best_it = it;
            } else if params.early_stopping_rounds > 0
                && it - best_it >= params.early_stopping_rounds
            {
                break;
            }
        } else {
            best_it = it;
        }
    }
    let keep = if best.is_nan() { rounds } else { best_it + 1 };
    let model = if keep < rounds {
        booster.slice(0, keep as i32).map_err(xerr)?
    } else {
        booster
    };
    Ok(Trained {
        model: model.save_buffer(true).map_err(xerr)?,
        rounds,
        best_iteration: best_it,
        best_validation_loss: best,
        metric: metric.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// y = 2·x0 + noise with a known spread: the p50 and p90 outputs must bracket it, and the
    /// in-place predictor must return exactly what the trainer's model predicts.
    #[test]
    fn quantile_model_learns_and_inplace_prediction_matches() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let n = 4000;
        let mut x = Vec::with_capacity(n * 3);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let a: f32 = rng.random_range(0.0..1.0);
            let b: f32 = rng.random_range(0.0..1.0);
            x.extend([a, b, if rng.random_bool(0.1) { f32::NAN } else { a * b }]);
            y.push(2.0 * a + rng.random_range(-0.5..0.5));
        }
        let w = vec![1.0; n];
        let mut d = matrix(&x, n).unwrap();
        let params = XgbParams {
            rounds: 150,
            eta: 0.3,
            max_depth: 4,
            nthread: 1,
            early_stopping_rounds: 0,
            ..XgbParams::default()
        };
        let mut seen = 0;
        let t = train(
            &mut d,
            Labels { y: &y, w: &w },
            None,
            &Objective::Quantiles(vec![0.5, 0.9]),
            &params,
            Device::Cpu,
            &mut |_, _| {
                seen += 1;
                std::ops::ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert_eq!((seen, t.rounds), (150, 150));
        let b = ffi::InplaceBooster::from_bytes(&t.model).unwrap();
        let probe = [0.5f32, 0.5, 0.25, 0.1, 0.9, f32::NAN];
        let mut out = Vec::new();
        assert_eq!(b.predict(&probe, 2, &mut out).unwrap(), 2);
        // Row 0: x0 = 0.5, y ~ U(0.5, 1.5): p50 ≈ 1.0, p90 ≈ 1.4.
        assert!((out[0] - 1.0).abs() < 0.15, "p50 {}", out[0]);
        assert!((out[1] - 1.4).abs() < 0.15, "p90 {}", out[1]);
        assert!(out[1] > out[0] && out[3] > out[2]);
        // The same model through the xgb crate's DMatrix prediction gives the same numbers.
        let booster = Booster::load_buffer(&t.model).unwrap();
        let via_dmatrix = booster.predict(&matrix(&probe, 2).unwrap()).unwrap();
        assert_eq!(via_dmatrix, out);
    }

    #[test]
    fn early_stopping_keeps_the_best_round_and_classifier_ranks() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        let n = 3000;
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let a: f32 = rng.random_range(0.0..1.0);
            x.extend([a, rng.random_range(0.0..1.0)]);
            y.push(if a > 0.95 { 1.0 } else { 0.0 });
        }
        let w = vec![1.0; n];
        let (tr, va) = (2000, 1000);
        let mut dtr = matrix(&x[..tr * 2], tr).unwrap();
        let mut dva = matrix(&x[tr * 2..], va).unwrap();
        let params = XgbParams {
            rounds: 200,
            max_depth: 3,
            nthread: 1,
            early_stopping_rounds: 5,
            ..XgbParams::default()
        };
        let t = train(
            &mut dtr,
            Labels { y: &y[..tr], w: &w[..tr] },
            Some((&mut dva, Labels { y: &y[tr..], w: &w[tr..] })),
            &Objective::Binary { pos_weight: 19.0 },
            &params,
            Device::Cpu,
            &mut |_, _| std::ops::ControlFlow::Continue(()),
        )
        .unwrap();
        assert!(t.rounds < 200, "early stopping never fired");
        assert!(t.best_validation_loss > 0.8, "aucpr {}", t.best_validation_loss);
        let b = ffi::InplaceBooster::from_bytes(&t.model).unwrap();
        let mut out = Vec::new();
        b.predict(&[0.99, 0.5, 0.2, 0.5], 2, &mut out).unwrap();
        assert!(out[0] > 0.5 && out[1] < 0.5, "{out:?}");
    }

    /// A stop asked for after round 4 ends the training there with `Stopped`, not with a model.
    #[test]
    fn a_stop_between_rounds_ends_the_training_with_stopped() {
        let n = 500;
        let x: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
        let y: Vec<f32> = x.iter().map(|v| 3.0 * v).collect();
        let w = vec![1.0; n];
        let mut d = matrix(&x, n).unwrap();
        let mut rounds = Vec::new();
        let e = train(
            &mut d,
            Labels { y: &y, w: &w },
            None,
            &Objective::Quantiles(vec![0.5]),
            &XgbParams { rounds: 100, max_depth: 2, nthread: 1, early_stopping_rounds: 0, ..XgbParams::default() },
            Device::Cpu,
            &mut |r, _| {
                rounds.push(r);
                if r == 4 {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            },
        )
        .unwrap_err();
        assert_eq!(rounds, vec![0, 1, 2, 3, 4]);
        assert!(crate::backtest::is_stopped(&e), "{e:#}");
    }

    #[test]
    fn garbage_model_bytes_are_an_error_not_a_crash() {
        let e = ffi::InplaceBooster::from_bytes(b"not a model").unwrap_err();
        assert!(e.to_string().starts_with("XGBoost:"), "{e}");
        assert!(ffi::version().starts_with("3."));
    }
}

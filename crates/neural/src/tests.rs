use burn::tensor::{Tensor, TensorData};
use headroom_forecast::backtest::Quiet;
use headroom_forecast::dataset::{Dataset, DatasetOptions, Split};
use headroom_forecast::device::DeviceChoice;
use headroom_sources::{GenConfig, Generator};

use crate::backend::{self, Cpu};
use crate::channels::{Encoded, N_CHANNELS};
use crate::model::{fit, save, NeuralOptions, Predictor};
use crate::net::Cell;

fn dataset(entities: u32, days: i64, train_days: f64) -> Dataset {
    let mut g = Generator::new(GenConfig {
        entities: Some(entities),
        ..GenConfig::default()
    });
    let start = 1_700_000_000_000 / 300_000 * 300_000;
    let mut recs = Vec::new();
    for r in 0..days * 288 {
        for i in 0..g.entity_count() {
            recs.push(g.sample(i, start + r * 300_000));
        }
    }
    Dataset::build(
        recs,
        &DatasetOptions {
            split: Split::TrainDays(train_days),
            ..DatasetOptions::default()
        },
    )
    .unwrap()
}

fn small(cell: Cell) -> NeuralOptions {
    NeuralOptions {
        cell,
        hidden: 24,
        layers: 2,
        input_len: 24,
        max_epochs: 6,
        samples_per_epoch: 4_000,
        batch_size: 64,
        device: DeviceChoice::Cpu,
        ..NeuralOptions::default()
    }
}

fn mae(pred: &[(f32, f32)], ds: &Dataset, m: usize, h: usize) -> f64 {
    let (mut s, mut n) = (0.0, 0.0);
    for (i, p) in pred.iter().enumerate() {
        let a = ds.target(&ds.test, i, m, h);
        if a.is_finite() {
            s += f64::from((p.0 - a).abs());
            n += 1.0;
        }
    }
    s / n
}

#[test]
fn an_lstm_learns_the_daily_pattern_and_beats_the_naive_forecast() {
    let ds = dataset(6, 6, 5.0);
    let f = fit(&ds, &small(Cell::Lstm), None, &mut Quiet).unwrap();
    let h = &f.meta.history;
    assert!(h.len() >= 2 && h.iter().all(|v| v.is_finite()), "{h:?}");
    assert!(f.meta.best_validation_loss < h[0], "validation loss never improved: {h:?}");
    let p = Predictor::new(&f).unwrap();
    let pred = p.predict_rows(&ds, &ds.test).unwrap();
    assert_eq!(pred.len(), 3 * 3);
    // CPU at 30 minutes (6 slots): index (target 0, horizon 2).
    let naive: Vec<(f32, f32)> = (0..ds.test.len()).map(|i| (ds.now(&ds.test, i, 0), 0.0)).collect();
    let (model, base) = (mae(&pred[2], &ds, 0, 6), mae(&naive, &ds, 0, 6));
    assert!(model < base, "LSTM MAE {model:.3} is not below the naive {base:.3}");
    // p90 never below p50, both finite.
    assert!(pred.iter().flatten().all(|(a, b)| a.is_finite() && b >= a));
}

#[test]
fn a_saved_model_predicts_exactly_what_the_fitted_one_did() {
    let ds = dataset(3, 4, 3.0);
    let opts = NeuralOptions {
        max_epochs: 1,
        samples_per_epoch: 512,
        ..small(Cell::Gru)
    };
    let dir = tempfile::tempdir().unwrap();
    let f = fit(&ds, &opts, Some(dir.path()), &mut Quiet).unwrap();
    assert!(dir.path().join("gru-best.mpk").exists() && dir.path().join("gru-progress.json").exists());
    let (json, weights) = save(dir.path(), &f).unwrap();
    assert_eq!((json.as_str(), weights.as_str()), ("gru.json", "gru.mpk"));
    let a = Predictor::new(&f).unwrap().predict_rows(&ds, &ds.test).unwrap();
    let b = Predictor::load(dir.path(), "gru").unwrap().predict_rows(&ds, &ds.test).unwrap();
    assert_eq!(a, b);
    // A model whose channels are another version is refused with the reason.
    let mut meta = f.meta.clone();
    meta.channels = "seq-v0".into();
    let e = Predictor::from_parts(meta, f.weights.clone()).unwrap_err();
    assert!(e.to_string().contains("retrain"), "{e}");
}

#[test]
fn bidirectional_and_single_layer_variants_train_and_predict() {
    let ds = dataset(3, 4, 3.0);
    for (cell, layers, bi) in [(Cell::Lstm, 1, true), (Cell::Gru, 3, true), (Cell::Gru, 1, false)] {
        let opts = NeuralOptions {
            layers,
            bidirectional: bi,
            max_epochs: 1,
            samples_per_epoch: 256,
            targets: vec![0],
            ..small(cell)
        };
        let f = fit(&ds, &opts, None, &mut Quiet).unwrap();
        let pred = Predictor::new(&f).unwrap().predict_rows(&ds, &ds.test).unwrap();
        assert_eq!(pred.len(), 3, "{cell:?}: one target × three horizons");
        assert!(pred.iter().all(|p| p.len() == ds.test.len()));
    }
}

#[test]
fn carrying_the_state_step_by_step_equals_the_full_window() {
    // A window that starts at the series' first slot: stepping from a zero state through it
    // must give the forward pass's result (same weights, same arithmetic).
    let ds = dataset(2, 3, 2.0);
    let opts = NeuralOptions {
        max_epochs: 1,
        samples_per_epoch: 256,
        ..small(Cell::Lstm)
    };
    for cell in [Cell::Lstm, Cell::Gru] {
        let f = fit(&ds, &NeuralOptions { cell, ..opts.clone() }, None, &mut Quiet).unwrap();
        let p = Predictor::new(&f).unwrap();
        let enc = Encoded::new(&ds, f.meta.scales, opts.input_len);
        let slot = ds.series[0].first_slot + opts.input_len as i64 - 1;
        let mut x = Vec::new();
        enc.window(0, slot, &mut x);
        let statics = vec![0.5f32, 0.4, 0.3];
        let full = p.raw(x.clone(), statics.clone(), 1);
        let net = p.network();
        let device = Default::default();
        let mut st = net.zero_states(1, &device);
        for t in 0..opts.input_len {
            let xt = Tensor::<Cpu, 2>::from_data(TensorData::new(x[t * N_CHANNELS..(t + 1) * N_CHANNELS].to_vec(), [1, N_CHANNELS]), &device);
            st = net.step(xt, st);
        }
        let s = Tensor::<Cpu, 2>::from_data(TensorData::new(statics, [1, 3]), &device);
        let stepped = net.predict_from_state(&st, s).into_data().into_vec::<f32>().unwrap();
        for (a, b) in full.iter().zip(&stepped) {
            assert!((a - b).abs() < 1e-5, "{cell:?}: {a} vs {b}");
        }
    }
}

#[test]
fn bad_options_and_an_absent_gpu_are_refused_with_a_reason() {
    let ds = dataset(2, 3, 2.0);
    for (opts, needle) in [
        (NeuralOptions { hidden: 0, ..small(Cell::Lstm) }, "hidden"),
        (NeuralOptions { dropout: 1.5, ..small(Cell::Lstm) }, "dropout"),
        (NeuralOptions { quantiles: vec![0.9, 0.5], ..small(Cell::Lstm) }, "increasing"),
        (NeuralOptions { input_len: 1, ..small(Cell::Lstm) }, "input length"),
        (NeuralOptions { targets: vec![7], ..small(Cell::Lstm) }, "targets"),
    ] {
        let e = fit(&ds, &opts, None, &mut Quiet).unwrap_err();
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
    if !headroom_forecast::device::nvidia_gpu_present() {
        assert_eq!(backend::resolve(DeviceChoice::Auto).unwrap(), headroom_forecast::device::Device::Cpu);
        let e = backend::resolve(DeviceChoice::Cuda).unwrap_err();
        assert!(e.to_string().contains("no usable NVIDIA GPU"), "{e}");
    }
}

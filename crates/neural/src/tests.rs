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
    dataset_with_gaps(entities, days, train_days, 0)
}

/// Like [`dataset`], with about one sample in `gap_every` dropped and as many missing their
/// memory reading (0: none).
fn dataset_with_gaps(entities: u32, days: i64, train_days: f64, gap_every: u64) -> Dataset {
    let mut g = Generator::new(GenConfig {
        entities: Some(entities),
        ..GenConfig::default()
    });
    let start = 1_700_000_000_000 / 300_000 * 300_000;
    let mut recs = Vec::new();
    for r in 0..days * 288 {
        for i in 0..g.entity_count() {
            let mut rec = g.sample(i, start + r * 300_000);
            if gap_every > 0 {
                let h = (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(i as u32).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                match (h >> 17) % gap_every {
                    0 => continue,
                    1 => rec.mem_util = None,
                    _ => {}
                }
            }
            recs.push(rec);
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
    // Weights that are not the described architecture, or not weights at all: errors, no panic.
    let mut meta = f.meta.clone();
    meta.architecture.hidden += 1;
    let e = Predictor::from_parts(meta, f.weights.clone()).unwrap_err();
    assert!(e.to_string().contains("weights"), "{e}");
    let e = Predictor::from_parts(f.meta.clone(), b"not a record".to_vec()).unwrap_err();
    assert!(e.to_string().contains("gru weights"), "{e}");
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
        let full = p.raw(&x, &statics, 1);
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

#[test]
fn the_fused_kernel_matches_burns_forward_pass_and_its_own_carried_state() {
    use crate::fast::{FastNet, Scratch};
    use crate::net::Architecture;
    use burn::tensor::backend::Backend;
    use rand::{Rng, SeedableRng};
    let device = Default::default();
    for (cell, layers, hidden, steps) in [(Cell::Lstm, 2, 32, 24), (Cell::Gru, 2, 16, 12), (Cell::Lstm, 1, 8, 60), (Cell::Gru, 3, 8, 5)] {
        let arch = Architecture {
            cell,
            inputs: N_CHANNELS,
            statics: 3,
            hidden,
            layers,
            bidirectional: false,
            dropout: 0.0,
            outputs: 18,
            quantiles: 2,
        };
        Cpu::seed(&device, 1);
        let net: crate::net::Network<Cpu> = arch.init(&device);
        let fast = FastNet::from_network(&net).unwrap();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
        let n = 37;
        let x: Vec<f32> = (0..n * steps * N_CHANNELS).map(|_| rng.random_range(-2.0..2.0)).collect();
        let s: Vec<f32> = (0..n * 3).map(|_| rng.random_range(0.0..1.5)).collect();
        let reference = net
            .forward(
                Tensor::<Cpu, 3>::from_data(TensorData::new(x.clone(), [n, steps, N_CHANNELS]), &device),
                Tensor::<Cpu, 2>::from_data(TensorData::new(s.clone(), [n, 3]), &device),
            )
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let mut scratch = Scratch::default();
        let mut out = Vec::new();
        fast.forward(&x, &s, n, steps, &mut scratch, &mut out);
        let worst = reference.iter().zip(&out).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 2e-5, "{cell:?} {layers}x{hidden}: kernel and burn differ by {worst}");
        // Carried state: stepping each entity through its window equals the window pass.
        let mut states: Vec<Vec<_>> = (0..n).map(|_| fast.zero_state()).collect();
        let mut stepped = Vec::new();
        for t in 0..steps {
            let xt: Vec<f32> = (0..n).flat_map(|b| x[(b * steps + t) * N_CHANNELS..(b * steps + t + 1) * N_CHANNELS].to_vec()).collect();
            let mut refs: Vec<&mut Vec<_>> = states.iter_mut().collect();
            fast.step(&xt, &s, &mut refs, &mut scratch, &mut stepped);
        }
        let worst = out.iter().zip(&stepped).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{cell:?}: carried state differs from the window by {worst}");
    }
    // A bidirectional network stays on the burn path.
    let bi = Architecture {
        cell: Cell::Lstm,
        inputs: N_CHANNELS,
        statics: 3,
        hidden: 4,
        layers: 1,
        bidirectional: true,
        dropout: 0.0,
        outputs: 2,
        quantiles: 2,
    };
    assert!(FastNet::from_network(&bi.init::<Cpu>(&device)).is_err());
}

/// The scorer's windows, built from the featurizer's vectors and the entity's slot flags,
/// are the training windows, and its predictions the backtest's, on a trace with gaps.
#[test]
fn serving_windows_from_feature_vectors_equal_the_training_windows() {
    use crate::serve::{NeuralServing, SlotFlags};
    use headroom_forecast::dataset::N_TARGETS;
    let ds = dataset_with_gaps(6, 4, 3.0, 12);
    let opts = NeuralOptions {
        max_epochs: 1,
        samples_per_epoch: 512,
        ..small(Cell::Lstm)
    };
    let p = Predictor::new(&fit(&ds, &opts, None, &mut Quiet).unwrap()).unwrap();
    let names = ds.layout.names().to_vec();
    let base = names.len();
    let expected = p.predict_rows(&ds, &ds.test).unwrap();
    let serving = NeuralServing::new(p, &names, ds.interval_ms).unwrap();
    let len = serving.input_len();
    let enc = Encoded::new(&ds, serving.predictor.meta.scales, len);

    let (mut x, mut statics, mut anchors, mut nows, mut picked) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut compared, mut with_gaps) = (0, 0);
    for (e, s) in ds.series.iter().enumerate() {
        // Replay the entity's events in slot order, as the scorer sees them.
        let rows: Vec<usize> = (0..ds.test.len()).filter(|&i| ds.test.entity[i] as usize == e).collect();
        let mut next = rows.iter().peekable();
        let mut flags = SlotFlags::default();
        for i in 0..s.len() {
            let slot = s.first_slot + i as i64;
            let raw: [f32; N_TARGETS] = std::array::from_fn(|m| s.values[m][i]);
            if raw.iter().any(|v| v.is_finite()) {
                flags.record(slot, SlotFlags::bits(raw), len + 1);
            }
            let Some(&&r) = next.peek() else { break };
            if ds.test.slot[r] != slot {
                continue;
            }
            next.next();
            // The scorer reads the same bits from the vector's imputed flags.
            assert_eq!(serving.observed_bits(ds.test.row(r)), SlotFlags::bits(raw), "slot {slot}");
            if slot <= s.first_slot + len as i64 {
                continue; // training pads there, the featurizer back-fills
            }
            let row = ds.test.row(r);
            let from = x.len();
            serving.push_window(&row[..base], slot, &flags, &mut x);
            let mut want = Vec::new();
            enc.window(e, slot, &mut want);
            assert_eq!(x[from..], want[..], "window of entity {e} at slot {slot}");
            with_gaps += usize::from(want.chunks(N_CHANNELS).any(|c| (0..N_TARGETS).any(|m| c[3 * m + 2] > 0.5)));
            compared += 1;
            let a: [f32; N_TARGETS] = std::array::from_fn(|m| ds.anchor(&ds.test, r, m));
            serving.push_statics(a, &mut statics);
            anchors.push(a);
            nows.push(serving.nows(row));
            assert_eq!(nows.last().unwrap(), &std::array::from_fn::<f32, N_TARGETS, _>(|m| ds.now(&ds.test, r, m)));
            picked.push(r);
        }
    }
    assert!(compared > 1000 && with_gaps > compared / 4, "{compared} windows compared, {with_gaps} with gaps");
    let mut out = Vec::new();
    serving.predict(&x, &statics, &anchors, &nows, 2, &mut out);
    let heads = serving.heads().len();
    for (j, &r) in picked.iter().enumerate() {
        for k in 0..heads {
            let (a, b) = (out[j * heads + k], expected[k][r]);
            assert!((a.0 - b.0).abs() <= 1e-4 * (1.0 + b.0.abs()) && (a.1 - b.1).abs() <= 1e-4 * (1.0 + b.1.abs()), "row {r} head {k}: {a:?} vs {b:?}");
        }
    }

    // A model that reads further back than the features' lags is refused, naming the fix.
    let short: Vec<String> = names.iter().filter(|n| !n.contains("_lag_2")).cloned().collect();
    let e = NeuralServing::new(serving.predictor, &short, ds.interval_ms).unwrap_err().to_string();
    assert!(e.contains("features.lags") && e.contains("--input-len"), "{e}");
}

#[test]
fn idle_entities_are_forgotten_and_active_ones_kept() {
    use crate::serve::{evict_idle, SlotFlags};
    let mut m = std::collections::HashMap::new();
    for (e, slot) in [("a", 99), ("b", 400), ("c", 676)] {
        let mut f = SlotFlags::default();
        f.record(slot, 0b111, 25);
        m.insert(e.to_owned(), f);
    }
    // Clock 676, 576 idle slots (48 h of 5 min): `a` (577 behind) goes, `b` and `c` stay.
    assert_eq!(evict_idle(&mut m, 676, 576), 1);
    assert!(!m.contains_key("a") && m.contains_key("b") && m.contains_key("c"));
    assert_eq!(evict_idle(&mut m, 676, 576), 0);
    assert_eq!(m["c"].newest(), 676);
    // Exactly at the edge it stays.
    assert_eq!(evict_idle(&mut m, 976, 576), 0);
    assert_eq!(evict_idle(&mut m, 977, 576), 1);
}

#[test]
fn slot_flags_mark_skipped_slots_and_take_late_events() {
    use crate::serve::SlotFlags;
    let mut f = SlotFlags::default();
    assert_eq!(f.observed(10), None);
    f.record(10, 0b111, 4);
    f.record(13, 0b101, 4);
    assert_eq!((f.observed(13), f.observed(12), f.observed(11), f.observed(10)), (Some(0b101), Some(0), Some(0), Some(0b111)));
    f.record(12, 0b011, 4); // late, still held
    assert_eq!(f.observed(12), Some(0b011));
    f.record(40, 0b111, 4); // a long gap keeps only what is asked
    assert_eq!((f.observed(40), f.observed(39), f.observed(13)), (Some(0b111), Some(0), None));
    assert_eq!(SlotFlags::bits([1.0, f32::NAN, 0.0]), 0b101);
}

/// A retrain that refits XGBoost only carries the serving version's networks into the new
/// version unchanged, marked with where they came from; they load and serve from there.
#[test]
fn neural_models_carry_into_a_new_version_unchanged() {
    use headroom_forecast::artifact;
    use headroom_forecast::backtest::ModelSet;
    let ds = dataset(3, 3, 2.0);
    let opts = NeuralOptions {
        max_epochs: 1,
        samples_per_epoch: 256,
        ..small(Cell::Gru)
    };
    let f = fit(&ds, &opts, None, &mut Quiet).unwrap();
    let none = ModelSet {
        device: headroom_forecast::Device::Cpu,
        regressors: Vec::new(),
        classifier: None,
    };
    let root = tempfile::tempdir().unwrap();
    let (v1, d1) = artifact::write_with(root.path(), &ds, &none, &[crate::artifact(&f).unwrap()], None, 1_700_000_000_000).unwrap();
    let carried = artifact::carry_neural(&d1, ds.interval_ms).unwrap();
    assert_eq!(carried.len(), 1);
    assert_eq!(carried[0].entry.carried_from.as_deref(), Some(v1.version.as_str()));
    assert_eq!(carried[0].files[1].1, f.weights);
    let (v2, d2) = artifact::write_with(root.path(), &ds, &none, &carried, None, 1_700_000_100_000).unwrap();
    assert_eq!(v2.neural[0].carried_from.as_deref(), Some(v1.version.as_str()));
    let names = ds.layout.names().to_vec();
    let served = crate::NeuralServing::load(&d2, &v2.neural[0], &names, ds.interval_ms).unwrap();
    assert_eq!(served.predictor.meta.best_validation_loss.to_bits(), f.meta.best_validation_loss.to_bits());
    // Carried again, it still names the version it was trained for; another grid takes none.
    assert_eq!(artifact::carry_neural(&d2, ds.interval_ms).unwrap()[0].entry.carried_from.as_deref(), Some(v1.version.as_str()));
    assert!(artifact::carry_neural(&d2, 2 * ds.interval_ms).unwrap().is_empty());
}

/// Stops after `after` questions; counts the batches it was asked about.
struct StopAfter {
    asked: std::cell::Cell<usize>,
    after: usize,
}

impl headroom_forecast::backtest::Progress for StopAfter {
    fn model_started(&mut self, _: &str, _: u32) {}
    fn round(&mut self, _: u32, _: Option<f64>) {}
    fn model_done(&mut self, _: &str, _: f64) {}
    fn should_stop(&self) -> bool {
        self.asked.set(self.asked.get() + 1);
        self.asked.get() > self.after
    }
}

/// A stop asked for mid-epoch ends the fit within a batch, as `Stopped`; a time budget ends it
/// after the epoch that spends it, with the best epoch so far and far fewer epochs than allowed.
#[test]
fn a_stop_ends_the_fit_within_a_batch_and_a_time_budget_keeps_the_best_epoch() {
    let ds = dataset(3, 4, 3.0);
    // 4,000 samples in batches of 64: 63 batches an epoch; stop in the second epoch.
    let mut stop = StopAfter { asked: std::cell::Cell::new(0), after: 70 };
    let e = fit(&ds, &small(Cell::Gru), None, &mut stop).unwrap_err();
    assert!(headroom_forecast::backtest::is_stopped(&e), "{e:#}");
    assert_eq!(stop.asked.get(), 71, "no batch after the stop");

    let opts = NeuralOptions {
        max_epochs: 1_000_000,
        patience: 1_000_000,
        samples_per_epoch: 256,
        max_seconds: 1,
        ..small(Cell::Gru)
    };
    let t = std::time::Instant::now();
    let f = fit(&ds, &opts, None, &mut Quiet).unwrap();
    let took = t.elapsed().as_secs_f64();
    assert!(took >= 1.0, "ended before its budget: {took} s");
    assert!(f.meta.epochs >= 1 && f.meta.epochs < 1_000_000, "{} epochs", f.meta.epochs);
    assert!(f.meta.best_epoch >= 1 && f.meta.best_epoch <= f.meta.epochs);
    assert!(f.meta.best_validation_loss.is_finite());
    // The budget's overshoot is at most one epoch of 4 batches.
    assert!(took < 30.0, "{took} s");
}

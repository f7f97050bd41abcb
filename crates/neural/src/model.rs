//! Fitting a recurrent forecaster on a dataset, saving and loading it, and predicting.
//!
//! A sample is one dataset row `(entity, slot)`: the input is the window of the last
//! `input_len` steps up to and including `slot` ([`crate::channels`]), the static inputs are
//! the row's anchors (the trailing medians the XGBoost models predict the change from, ÷ the
//! level scales), and the labels are, per target and horizon, the change from the anchor ÷
//! the target's step scale. Training rows, the temporal hold-out for early stopping and the
//! test rows are the dataset's own, so the neural models and XGBoost are fitted and scored on
//! exactly the same samples.

use std::path::Path;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use headroom_forecast::backtest::Progress;
use headroom_forecast::dataset::{Dataset, Rows, N_TARGETS, TARGETS};
use headroom_forecast::device::{Device, DeviceChoice};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::backend;
use crate::channels::{Encoded, Scales, CHANNELS_VERSION, N_CHANNELS};
use crate::net::{pinball, Architecture, Cell, Network};

/// Options of a recurrent model and its training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NeuralOptions {
    pub cell: Cell,
    pub hidden: usize,
    pub layers: usize,
    pub dropout: f64,
    pub bidirectional: bool,
    /// Steps (slots) of history the model reads.
    pub input_len: usize,
    pub quantiles: Vec<f32>,
    /// Targets modelled (indices into [`TARGETS`]).
    pub targets: Vec<usize>,
    pub max_epochs: usize,
    /// Training samples drawn (without replacement) per epoch; 0 = all.
    pub samples_per_epoch: usize,
    /// Validation samples (an evenly spaced subset of the hold-out, the same every epoch).
    pub max_valid_samples: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Epochs without a better validation loss before stopping (the learning rate is halved
    /// at each such epoch).
    pub patience: usize,
    /// The last part of the training period held out for early stopping.
    pub valid_fraction: f64,
    pub seed: u64,
    pub device: DeviceChoice,
    /// A time budget in seconds (0: none): no epoch starts once it is spent, and the fit keeps
    /// its best epoch so far, as early stopping does. At least one epoch always runs.
    pub max_seconds: u64,
}

impl Default for NeuralOptions {
    fn default() -> Self {
        NeuralOptions {
            cell: Cell::Lstm,
            hidden: 64,
            layers: 2,
            dropout: 0.1,
            bidirectional: false,
            input_len: 24,
            quantiles: vec![0.5, 0.9],
            targets: (0..N_TARGETS).collect(),
            max_epochs: 20,
            samples_per_epoch: 100_000,
            max_valid_samples: 20_000,
            batch_size: 256,
            learning_rate: 2e-3,
            patience: 3,
            valid_fraction: 0.1,
            seed: 7,
            device: DeviceChoice::Auto,
            max_seconds: 0,
        }
    }
}

impl NeuralOptions {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.hidden >= 1 && self.hidden <= 4096, "hidden size {} is outside 1..=4096", self.hidden);
        anyhow::ensure!(self.layers >= 1 && self.layers <= 8, "layers {} is outside 1..=8", self.layers);
        anyhow::ensure!((0.0..1.0).contains(&self.dropout), "dropout {} is outside [0, 1)", self.dropout);
        anyhow::ensure!(self.input_len >= 2 && self.input_len <= 2016, "input length {} is outside 2..=2016", self.input_len);
        anyhow::ensure!(!self.quantiles.is_empty(), "at least one quantile is needed");
        anyhow::ensure!(
            self.quantiles.windows(2).all(|w| w[0] < w[1]) && self.quantiles.iter().all(|q| *q > 0.0 && *q < 1.0),
            "quantiles must be increasing and inside (0, 1), got {:?}",
            self.quantiles
        );
        anyhow::ensure!(!self.targets.is_empty() && self.targets.iter().all(|t| *t < N_TARGETS), "targets must be a non-empty subset of {TARGETS:?}");
        anyhow::ensure!(self.max_epochs >= 1, "at least one epoch");
        anyhow::ensure!(self.batch_size >= 1, "batch size must be at least 1");
        anyhow::ensure!(self.learning_rate > 0.0 && self.learning_rate.is_finite(), "learning rate must be positive");
        anyhow::ensure!((0.0..0.9).contains(&self.valid_fraction), "validation fraction must be in [0, 0.9)");
        Ok(())
    }
}

/// What a fitted model is: everything needed to rebuild it and feed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeuralMeta {
    pub family: String,
    pub channels: String,
    pub architecture: Architecture,
    pub input_len: usize,
    pub quantiles: Vec<f32>,
    pub targets: Vec<String>,
    pub horizons_slots: Vec<usize>,
    pub interval_ms: i64,
    pub scales: Scales,
    pub device: Device,
    pub epochs: usize,
    pub best_epoch: usize,
    pub best_validation_loss: f64,
    /// Validation loss after each epoch.
    pub history: Vec<f64>,
    pub train_samples: usize,
    pub seconds: f64,
    pub options: NeuralOptions,
}

/// A fitted model: its description and its weights (burn's named MessagePack record).
#[derive(Debug, Clone)]
pub struct Fitted {
    pub meta: NeuralMeta,
    pub weights: Vec<u8>,
}

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
}

/// Samples of a set of rows: the windows, statics, labels and masks of a batch.
struct Batch {
    x: Vec<f32>,
    statics: Vec<f32>,
    y: Vec<f32>,
    mask: Vec<f32>,
    n: usize,
}

struct Sampler<'a> {
    ds: &'a Dataset,
    enc: &'a Encoded,
    scales: Scales,
    targets: &'a [usize],
    nq: usize,
}

impl Sampler<'_> {
    fn outputs(&self) -> usize {
        self.targets.len() * self.ds.horizons.len() * self.nq
    }

    fn statics(&self, rows: &Rows, i: usize, out: &mut Vec<f32>) {
        for m in 0..N_TARGETS {
            let a = self.ds.anchor(rows, i, m);
            out.push(if a.is_finite() { a / self.scales.level[m] } else { 0.0 });
        }
    }

    fn batch(&self, rows: &Rows, idx: &[usize], labels: bool) -> Batch {
        let mut b = Batch {
            x: Vec::with_capacity(idx.len() * self.enc.input_len * N_CHANNELS),
            statics: Vec::with_capacity(idx.len() * N_TARGETS),
            y: Vec::with_capacity(if labels { idx.len() * self.outputs() } else { 0 }),
            mask: Vec::with_capacity(if labels { idx.len() * self.outputs() } else { 0 }),
            n: idx.len(),
        };
        for &i in idx {
            self.enc.window(rows.entity[i] as usize, rows.slot[i], &mut b.x);
            self.statics(rows, i, &mut b.statics);
            if !labels {
                continue;
            }
            for &m in self.targets {
                let a = self.ds.anchor(rows, i, m);
                for &h in &self.ds.horizons {
                    let d = (self.ds.target(rows, i, m, h) - a) / self.scales.step[m];
                    let ok = d.is_finite();
                    for _ in 0..self.nq {
                        b.y.push(if ok { d.clamp(-1e3, 1e3) } else { 0.0 });
                        b.mask.push(if ok { 1.0 } else { 0.0 });
                    }
                }
            }
        }
        b
    }
}

fn tensors<B: Backend>(b: &Batch, input_len: usize, device: &B::Device) -> (Tensor<B, 3>, Tensor<B, 2>) {
    (
        Tensor::from_data(TensorData::new(b.x.clone(), [b.n, input_len, N_CHANNELS]), device),
        Tensor::from_data(TensorData::new(b.statics.clone(), [b.n, N_TARGETS]), device),
    )
}

/// Labels, mask and each output's quantile level of a batch, `[n, outputs]` each.
fn label_tensors<B: Backend>(b: Batch, taus_row: &[f32], device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    let shape = [b.n, taus_row.len()];
    let taus: Vec<f32> = taus_row.iter().copied().cycle().take(b.n * taus_row.len()).collect();
    (
        Tensor::from_data(TensorData::new(b.y, shape), device),
        Tensor::from_data(TensorData::new(b.mask, shape), device),
        Tensor::from_data(TensorData::new(taus, shape), device),
    )
}

/// Fits a model of `opts` on the training rows of `ds`. `checkpoints`, when given, receives
/// `<family>-best.mpk` (the best weights so far) and `<family>-progress.json` after every
/// epoch, so a long run that is interrupted keeps its best model.
pub fn fit(ds: &Dataset, opts: &NeuralOptions, checkpoints: Option<&Path>, progress: &mut dyn Progress) -> anyhow::Result<Fitted> {
    opts.validate()?;
    let device = backend::resolve(opts.device)?;
    match device {
        Device::Cpu => fit_on::<backend::CpuTrain>(ds, opts, checkpoints, progress, &Default::default(), device),
        Device::Cuda => backend::fit_cuda(ds, opts, checkpoints, progress),
    }
}

pub(crate) fn fit_on<B: AutodiffBackend>(
    ds: &Dataset,
    opts: &NeuralOptions,
    checkpoints: Option<&Path>,
    progress: &mut dyn Progress,
    device: &B::Device,
    dev: Device,
) -> anyhow::Result<Fitted> {
    let started = Instant::now();
    anyhow::ensure!(!ds.train.is_empty(), "no training rows (is the trace long enough?)");
    let scales = Scales::fit(ds);
    let enc = Encoded::new(ds, scales, opts.input_len);
    let (fit_rows, valid_rows) = headroom_forecast::backtest::validation_split(ds, opts.valid_fraction);
    anyhow::ensure!(!fit_rows.is_empty(), "no rows left to fit after the validation hold-out");
    let nq = opts.quantiles.len();
    let sampler = Sampler {
        ds,
        enc: &enc,
        scales,
        targets: &opts.targets,
        nq,
    };
    let arch = Architecture {
        cell: opts.cell,
        inputs: N_CHANNELS,
        statics: N_TARGETS,
        hidden: opts.hidden,
        layers: opts.layers,
        bidirectional: opts.bidirectional,
        dropout: opts.dropout,
        outputs: sampler.outputs(),
        quantiles: nq,
    };
    B::seed(device, opts.seed);
    let mut model: Network<B> = arch.init(device);
    let mut optim = AdamConfig::new()
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init::<B, Network<B>>();
    let taus_row: Vec<f32> = (0..sampler.outputs()).map(|k| opts.quantiles[k % nq]).collect();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut order: Vec<usize> = (0..fit_rows.len()).collect();
    // The hold-out: evenly spaced, the same rows every epoch (falls back to a slice of the
    // fit rows when the training period is too short for one).
    let (vrows, vidx): (&Rows, Vec<usize>) = if valid_rows.is_empty() {
        let step = (fit_rows.len() / opts.max_valid_samples.max(1)).max(1);
        (&fit_rows, (0..fit_rows.len()).step_by(step * 10).collect())
    } else {
        let step = (valid_rows.len() / opts.max_valid_samples.max(1)).max(1);
        (&valid_rows, (0..valid_rows.len()).step_by(step).collect())
    };
    let per_epoch = if opts.samples_per_epoch == 0 { order.len() } else { opts.samples_per_epoch.min(order.len()) };
    let name = opts.cell.name();
    let mut lr = opts.learning_rate;
    let mut best = (f64::INFINITY, 0usize, None::<Vec<u8>>);
    let mut history = Vec::new();
    let mut stale = 0;
    progress.model_started(name, opts.max_epochs as u32);
    for epoch in 0..opts.max_epochs {
        order.shuffle(&mut rng);
        for chunk in order[..per_epoch].chunks(opts.batch_size) {
            if progress.should_stop() {
                return Err(headroom_forecast::backtest::Stopped.into());
            }
            let b = sampler.batch(&fit_rows, chunk, true);
            let (x, s) = tensors::<B>(&b, opts.input_len, device);
            let (y, mask, taus) = label_tensors::<B>(b, &taus_row, device);
            let loss = pinball(model.forward(x, s), y, mask, taus);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
        }
        let valid = validation_loss(&model.valid(), &sampler, vrows, &vidx, &taus_row, opts, device);
        history.push(valid);
        progress.round(epoch as u32, Some(valid));
        anyhow::ensure!(valid.is_finite(), "{name}: the validation loss is not finite after epoch {} (diverged; lower the learning rate)", epoch + 1);
        if valid < best.0 - 1e-6 {
            let bytes = recorder()
                .record(model.clone().into_record(), ())
                .map_err(|e| anyhow::anyhow!("recording the {name} weights: {e}"))?;
            if let Some(dir) = checkpoints {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join(format!("{name}-best.mpk")), &bytes)?;
            }
            best = (valid, epoch + 1, Some(bytes));
            stale = 0;
        } else {
            stale += 1;
            lr *= 0.5;
        }
        if let Some(dir) = checkpoints {
            let p = serde_json::json!({"family": name, "epoch": epoch + 1, "validation_loss": history, "best_epoch": best.1});
            std::fs::write(dir.join(format!("{name}-progress.json")), serde_json::to_vec_pretty(&p)?)?;
        }
        if stale >= opts.patience {
            break;
        }
        if opts.max_seconds > 0 && started.elapsed().as_secs() >= opts.max_seconds {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.model_done(name, seconds);
    let (best_loss, best_epoch, weights) = best;
    let weights = weights.ok_or_else(|| anyhow::anyhow!("{name}: no epoch produced a model"))?;
    Ok(Fitted {
        meta: NeuralMeta {
            family: name.into(),
            channels: CHANNELS_VERSION.into(),
            architecture: arch,
            input_len: opts.input_len,
            quantiles: opts.quantiles.clone(),
            targets: opts.targets.iter().map(|&m| TARGETS[m].to_owned()).collect(),
            horizons_slots: ds.horizons.clone(),
            interval_ms: ds.interval_ms,
            scales,
            device: dev,
            epochs: history.len(),
            best_epoch,
            best_validation_loss: best_loss,
            history,
            train_samples: fit_rows.len(),
            seconds,
            options: opts.clone(),
        },
        weights,
    })
}

fn validation_loss<B: Backend>(
    model: &Network<B>,
    sampler: &Sampler<'_>,
    rows: &Rows,
    idx: &[usize],
    taus_row: &[f32],
    opts: &NeuralOptions,
    device: &B::Device,
) -> f64 {
    let (mut sum, mut n) = (0.0f64, 0.0f64);
    for chunk in idx.chunks(1024) {
        let b = sampler.batch(rows, chunk, true);
        let known: f64 = b.mask.iter().map(|v| f64::from(*v)).sum();
        if known == 0.0 {
            continue;
        }
        let (x, s) = tensors::<B>(&b, opts.input_len, device);
        let (y, mask, taus) = label_tensors::<B>(b, taus_row, device);
        let l: f32 = pinball(model.forward(x, s), y, mask, taus).into_scalar().elem();
        sum += f64::from(l) * known;
        n += known;
    }
    if n == 0.0 {
        f64::NAN
    } else {
        sum / n
    }
}

/// Refuses weights whose shapes are not the architecture's (a weights file of another model, or
/// a description edited by hand), before any forward pass could fail on them.
fn check_shapes(meta: &NeuralMeta, net: &Network<backend::Cpu>) -> anyhow::Result<()> {
    let a = &meta.architecture;
    let gates = match a.cell {
        Cell::Lstm => 4,
        Cell::Gru => 3,
    };
    let dirs = if a.bidirectional { 2 } else { 1 };
    anyhow::ensure!(
        net.forward.len() == a.layers && net.backward.len() == if a.bidirectional { a.layers } else { 0 },
        "{}: the weights have {} layers, the description {}",
        meta.family,
        net.forward.len(),
        a.layers
    );
    for (k, l) in net.forward.iter().chain(&net.backward).enumerate() {
        let k = k % a.layers;
        let inputs = if k == 0 { a.inputs } else { dirs * a.hidden };
        let (wx, wh) = (l.wx.weight.dims(), l.wh.weight.dims());
        anyhow::ensure!(
            wx == [inputs, gates * a.hidden] && wh == [a.hidden, gates * a.hidden] && l.hidden == a.hidden,
            "{}: layer {k} weights are {wx:?} and {wh:?}, the description says inputs {inputs}, hidden {}",
            meta.family,
            a.hidden
        );
    }
    let (h1, h2) = (net.head1.weight.dims(), net.head2.weight.dims());
    anyhow::ensure!(
        h1 == [dirs * a.hidden + a.statics, a.hidden] && h2 == [a.hidden, a.outputs],
        "{}: head weights are {h1:?} and {h2:?}, not what the description says",
        meta.family
    );
    Ok(())
}

/// Raw p50 / p90 outputs (step-scale units) as levels: anchor + prediction × step scale,
/// floored at 0, p90 kept at or above p50. Backtests and serving share it.
pub(crate) fn to_levels(anchor: f32, raw50: f32, raw90: f32, step: f32) -> (f32, f32) {
    let p50 = (anchor + raw50 * step).max(0.0);
    (p50, (anchor + raw90 * step).max(p50))
}

/// `(p50, p90)` levels per (model target, horizon), each a vector over the rows.
pub type Levels = Vec<Vec<(f32, f32)>>;

/// A model ready to predict on the CPU backend.
#[derive(Debug)]
pub struct Predictor {
    pub meta: NeuralMeta,
    net: Network<backend::Cpu>,
    /// The fused kernel's copy of the weights (unidirectional networks).
    fast: Option<crate::fast::FastNet>,
    target_index: Vec<usize>,
}

impl Predictor {
    pub fn new(f: &Fitted) -> anyhow::Result<Predictor> {
        Predictor::from_parts(f.meta.clone(), f.weights.clone())
    }

    pub fn from_parts(meta: NeuralMeta, weights: Vec<u8>) -> anyhow::Result<Predictor> {
        anyhow::ensure!(
            meta.channels == CHANNELS_VERSION,
            "{} model uses input channels {} but this build computes {CHANNELS_VERSION}: retrain it",
            meta.family,
            meta.channels
        );
        anyhow::ensure!(meta.architecture.inputs == N_CHANNELS, "{} model expects {} inputs per step, this build has {N_CHANNELS}", meta.family, meta.architecture.inputs);
        let device = Default::default();
        let record = recorder()
            .load(weights, &device)
            .map_err(|e| anyhow::anyhow!("{} weights: {e}", meta.family))?;
        let net = meta.architecture.init::<backend::Cpu>(&device).load_record(record);
        check_shapes(&meta, &net)?;
        let target_index = meta
            .targets
            .iter()
            .map(|t| TARGETS.iter().position(|x| x == t).ok_or_else(|| anyhow::anyhow!("unknown target {t}")))
            .collect::<anyhow::Result<_>>()?;
        let fast = crate::fast::FastNet::from_network(&net).ok();
        Ok(Predictor {
            meta,
            net,
            fast,
            target_index,
        })
    }

    /// Reads `<dir>/<file>.json` and `<dir>/<file>.mpk`.
    pub fn load(dir: &Path, stem: &str) -> anyhow::Result<Predictor> {
        let meta: NeuralMeta = serde_json::from_slice(&std::fs::read(dir.join(format!("{stem}.json")))?)
            .map_err(|e| anyhow::anyhow!("{}/{stem}.json: {e}", dir.display()))?;
        let weights = std::fs::read(dir.join(format!("{stem}.mpk")))?;
        Predictor::from_parts(meta, weights)
    }

    pub fn network(&self) -> &Network<backend::Cpu> {
        &self.net
    }

    /// The fused kernel, when the network is unidirectional.
    pub fn fast(&self) -> Option<&crate::fast::FastNet> {
        self.fast.as_ref()
    }

    /// Raw outputs for windows `x` (`[n, input_len, N_CHANNELS]` row-major) and statics
    /// (`[n, N_TARGETS]`): `n × outputs` values in step-scale units.
    /// Runs the fused kernel when there is one, burn's forward pass otherwise.
    pub fn raw(&self, x: &[f32], statics: &[f32], n: usize) -> Vec<f32> {
        if let Some(f) = &self.fast {
            let mut out = Vec::new();
            f.forward(x, statics, n, self.meta.input_len, &mut crate::fast::Scratch::default(), &mut out);
            return out;
        }
        self.raw_burn(x.to_vec(), statics.to_vec(), n)
    }

    /// burn's forward pass (the reference the kernel is tested against).
    pub fn raw_burn(&self, x: Vec<f32>, statics: Vec<f32>, n: usize) -> Vec<f32> {
        let device = Default::default();
        let x = Tensor::<backend::Cpu, 3>::from_data(TensorData::new(x, [n, self.meta.input_len, N_CHANNELS]), &device);
        let s = Tensor::<backend::Cpu, 2>::from_data(TensorData::new(statics, [n, N_TARGETS]), &device);
        self.net.forward(x, s).into_data().into_vec::<f32>().expect("f32 outputs")
    }

    /// The `(p50, p90)` levels of row `i` from its raw outputs (one row of the network's
    /// output): anchor + prediction × step scale, floored at 0, p90 kept at or above p50.
    /// `put(k, levels)` receives them per (model target, horizon) index `k`.
    fn levels(&self, ds: &Dataset, rows: &Rows, i: usize, raw: &[f32], mut put: impl FnMut(usize, (f32, f32))) {
        let nh = ds.horizons.len();
        let nq = self.meta.quantiles.len();
        let q50 = self.meta.quantiles.iter().position(|q| (*q - 0.5).abs() < 1e-6).unwrap_or(0);
        let q90 = nq - 1;
        for (t, &m) in self.target_index.iter().enumerate() {
            let a = ds.anchor(rows, i, m);
            let a = if a.is_finite() { a } else { ds.now(rows, i, m) };
            for k in 0..nh {
                let o = (t * nh + k) * nq;
                put(t * nh + k, to_levels(a, raw[o + q50], raw[o + q90], self.meta.scales.step[m]));
            }
        }
    }

    /// `(p50, p90)` levels of every row of `rows`, per (model target, horizon) in the order of
    /// `meta.targets` × `meta.horizons_slots`.
    pub fn predict_rows(&self, ds: &Dataset, rows: &Rows) -> anyhow::Result<Levels> {
        anyhow::ensure!(ds.horizons == self.meta.horizons_slots, "the {} model forecasts horizons {:?}, the dataset has {:?}", self.meta.family, self.meta.horizons_slots, ds.horizons);
        anyhow::ensure!(ds.interval_ms == self.meta.interval_ms, "the {} model was trained at a {} ms interval, the dataset has {} ms", self.meta.family, self.meta.interval_ms, ds.interval_ms);
        let enc = Encoded::new(ds, self.meta.scales, self.meta.input_len);
        let sampler = Sampler {
            ds,
            enc: &enc,
            scales: self.meta.scales,
            targets: &self.target_index,
            nq: self.meta.quantiles.len(),
        };
        let nh = ds.horizons.len();
        let mut out = vec![Vec::with_capacity(rows.len()); self.target_index.len() * nh];
        let idx: Vec<usize> = (0..rows.len()).collect();
        for chunk in idx.chunks(2048) {
            let b = sampler.batch(rows, chunk, false);
            let raw = self.raw(&b.x, &b.statics, b.n);
            let width = sampler.outputs();
            for (j, &i) in chunk.iter().enumerate() {
                self.levels(ds, rows, i, &raw[j * width..(j + 1) * width], |k, l| out[k].push(l));
            }
        }
        Ok(out)
    }
}

impl Predictor {
    /// Like [`Predictor::predict_rows`], in the carried-state mode: each entity's state runs
    /// through its whole series from its first slot, one step per slot (what a scorer that
    /// keeps the state between events computes), and is read at the rows' slots. `None` for a
    /// network the kernel cannot step (bidirectional).
    pub fn predict_rows_carried(&self, ds: &Dataset, rows: &Rows) -> anyhow::Result<Option<Levels>> {
        let Some(fast) = &self.fast else { return Ok(None) };
        let enc = Encoded::new(ds, self.meta.scales, self.meta.input_len);
        let nh = ds.horizons.len();
        let mut out = vec![vec![(f32::NAN, f32::NAN); rows.len()]; self.target_index.len() * nh];
        // The rows of each entity, in slot order.
        let mut by_entity: Vec<Vec<usize>> = vec![Vec::new(); ds.series.len()];
        for i in 0..rows.len() {
            by_entity[rows.entity[i] as usize].push(i);
        }
        let mut scratch = crate::fast::Scratch::default();
        let mut raw = Vec::new();
        for (e, idx) in by_entity.iter_mut().enumerate() {
            if idx.is_empty() {
                continue;
            }
            idx.sort_by_key(|&i| rows.slot[i]);
            let (first, steps) = enc.steps(e);
            let mut state = [fast.zero_state()];
            let mut next = idx.iter().peekable();
            let mut statics = Vec::with_capacity(N_TARGETS);
            for (k, x) in steps.chunks_exact(N_CHANNELS).enumerate() {
                let slot = first + k as i64;
                statics.clear();
                let i = next.peek().copied().copied().filter(|&i| rows.slot[i] == slot);
                match i {
                    Some(i) => {
                        for m in 0..N_TARGETS {
                            let a = ds.anchor(rows, i, m);
                            statics.push(if a.is_finite() { a / self.meta.scales.level[m] } else { 0.0 });
                        }
                    }
                    None => statics.resize(N_TARGETS, 0.0),
                }
                let mut refs: Vec<&mut Vec<_>> = state.iter_mut().collect();
                fast.step(x, &statics, &mut refs, &mut scratch, &mut raw);
                let Some(i) = i else { continue };
                next.next();
                self.levels(ds, rows, i, &raw, |k, l| out[k][i] = l);
            }
        }
        Ok(Some(out))
    }
}

/// Writes `<dir>/<family>.json` and `<dir>/<family>.mpk`; returns the file names.
pub fn save(dir: &Path, f: &Fitted) -> anyhow::Result<(String, String)> {
    let (j, w) = (format!("{}.json", f.meta.family), format!("{}.mpk", f.meta.family));
    std::fs::write(dir.join(&j), serde_json::to_vec_pretty(&f.meta)?)?;
    std::fs::write(dir.join(&w), &f.weights)?;
    Ok((j, w))
}

use burn::tensor::ElementConversion;

/// The entry and files of a fitted model, for a model version.
pub fn artifact(f: &Fitted) -> anyhow::Result<headroom_forecast::artifact::NeuralArtifact> {
    let fam = &f.meta.family;
    let (meta_file, weights_file) = (format!("{fam}.json"), format!("{fam}.mpk"));
    Ok(headroom_forecast::artifact::NeuralArtifact {
        entry: headroom_forecast::artifact::NeuralFile {
            family: fam.clone(),
            meta_file: meta_file.clone(),
            weights_file: weights_file.clone(),
            targets: f.meta.targets.clone(),
            input_len: f.meta.input_len,
            hidden: f.meta.architecture.hidden,
            layers: f.meta.architecture.layers,
            bidirectional: f.meta.architecture.bidirectional,
            epochs: f.meta.epochs,
            best_epoch: f.meta.best_epoch,
            best_validation_loss: f.meta.best_validation_loss,
            seconds: f.meta.seconds,
            carried_from: None,
        },
        files: vec![(meta_file, serde_json::to_vec_pretty(&f.meta)?), (weights_file, f.weights.clone())],
    })
}

/// The backtest rows of a model on the dataset's test rows: `<family>` for full-window
/// scoring and, for networks the kernel can step, `<family>@carried` for the carried-state
/// mode on the same rows.
pub fn score(ds: &Dataset, p: &Predictor) -> anyhow::Result<Vec<headroom_forecast::backtest::Row>> {
    let nh = ds.horizons.len();
    let mut rows = Vec::new();
    let full = p.predict_rows(ds, &ds.test)?;
    let carried = p.predict_rows_carried(ds, &ds.test)?;
    for (name, pred) in [(p.meta.family.clone(), Some(full)), (format!("{}@carried", p.meta.family), carried)] {
        let Some(pred) = pred else { continue };
        for (t, &m) in p.target_index.iter().enumerate() {
            for (k, &h) in ds.horizons.iter().enumerate() {
                rows.push(headroom_forecast::backtest::score_row(ds, &name, m, h, &pred[t * nh + k])?);
            }
        }
    }
    Ok(rows)
}

//! The recurrent networks, as burn modules.
//!
//! The cells are written here rather than taken from `burn::nn`: burn's LSTM runs eight small
//! matrix products per step (one per gate and input), while these project the whole input
//! sequence in one product and run one recurrent product per step with the gates fused, the
//! way cuDNN and ONNX Runtime do. The gate layouts are ONNX's (LSTM: input, output, forget,
//! cell; GRU: update, reset, candidate, with the reset applied after the recurrent product,
//! `linear_before_reset = 1`), so that a model's weights can be run by ONNX Runtime unchanged
//! (the inference benchmark does that).
//!
//! A network is a stack of layers (optionally bidirectional), dropout between layers, and a
//! two-layer head on the last hidden state concatenated with the static inputs (the anchors).
//! The head predicts, per target and horizon, the lowest quantile and then non-negative
//! increments (softplus) for the higher ones, so quantiles never cross.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::{relu, sigmoid, tanh};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Which recurrent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cell {
    Lstm,
    Gru,
}

impl Cell {
    pub fn name(self) -> &'static str {
        match self {
            Cell::Lstm => "lstm",
            Cell::Gru => "gru",
        }
    }

    fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }
}

/// The architecture (what the weights file needs to be read back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    pub cell: Cell,
    pub inputs: usize,
    pub statics: usize,
    pub hidden: usize,
    pub layers: usize,
    pub bidirectional: bool,
    pub dropout: f64,
    /// Outputs = targets × horizons × quantiles, in that nesting order.
    pub outputs: usize,
    pub quantiles: usize,
}

/// One direction of one layer.
#[derive(Module, Debug)]
pub struct RnnLayer<B: Backend> {
    /// Input projection, `[inputs, gates × hidden]`, with the input bias (ONNX `W`, `Wb`).
    pub wx: Linear<B>,
    /// Recurrent projection, `[hidden, gates × hidden]`, with the recurrent bias (`R`, `Rb`).
    pub wh: Linear<B>,
    pub hidden: usize,
    pub gru: bool,
}

/// A layer's recurrent state for a batch: hidden and, for an LSTM, cell.
#[derive(Debug, Clone)]
pub struct State<B: Backend> {
    pub h: Tensor<B, 2>,
    pub c: Option<Tensor<B, 2>>,
}

impl<B: Backend> RnnLayer<B> {
    fn new(cell: Cell, inputs: usize, hidden: usize, device: &B::Device) -> Self {
        let g = cell.gates();
        let bound = 1.0 / (hidden as f64).sqrt();
        let init = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        RnnLayer {
            wx: LinearConfig::new(inputs, g * hidden)
                .with_initializer(init.clone())
                .init(device),
            wh: LinearConfig::new(hidden, g * hidden)
                .with_initializer(init)
                .init(device),
            hidden,
            gru: cell == Cell::Gru,
        }
    }

    pub fn zero_state(&self, batch: usize, device: &B::Device) -> State<B> {
        State {
            h: Tensor::zeros([batch, self.hidden], device),
            c: (!self.gru).then(|| Tensor::zeros([batch, self.hidden], device)),
        }
    }

    /// One step from an already projected input `gx` (`[batch, gates × hidden]`).
    fn step_projected(&self, gx: Tensor<B, 2>, state: State<B>) -> State<B> {
        let gh = self.wh.forward(state.h.clone());
        let hd = self.hidden;
        if self.gru {
            let [b, _] = gx.dims();
            let zr = sigmoid(gx.clone().slice([0..b, 0..2 * hd]) + gh.clone().slice([0..b, 0..2 * hd]));
            let z = zr.clone().slice([0..b, 0..hd]);
            let r = zr.slice([0..b, hd..2 * hd]);
            let n = tanh(gx.slice([0..b, 2 * hd..3 * hd]) + r * gh.slice([0..b, 2 * hd..3 * hd]));
            // h' = (1 - z) ⊙ n + z ⊙ h = n + z ⊙ (h - n)
            let h = n.clone() + z * (state.h - n);
            State { h, c: None }
        } else {
            let g = gx + gh;
            let [b, _] = g.dims();
            let sig = sigmoid(g.clone().slice([0..b, 0..3 * hd]));
            let i = sig.clone().slice([0..b, 0..hd]);
            let o = sig.clone().slice([0..b, hd..2 * hd]);
            let f = sig.slice([0..b, 2 * hd..3 * hd]);
            let cand = tanh(g.slice([0..b, 3 * hd..4 * hd]));
            let c = f * state.c.expect("an LSTM state has a cell") + i * cand;
            let h = o * tanh(c.clone());
            State { h, c: Some(c) }
        }
    }

    /// Runs over `x` (`[batch, steps, inputs]`); returns every step's hidden state when
    /// `sequence`, and the last state.
    fn run(&self, x: Tensor<B, 3>, sequence: bool) -> (Option<Tensor<B, 3>>, State<B>) {
        let [b, l, _] = x.dims();
        let gx = self.wx.forward(x);
        let gw = gx.dims()[2];
        let mut state = self.zero_state(b, &gx.device());
        let mut hs = Vec::with_capacity(if sequence { l } else { 0 });
        for t in 0..l {
            let g = gx.clone().slice([0..b, t..t + 1, 0..gw]).reshape([b, gw]);
            state = self.step_projected(g, state);
            if sequence {
                hs.push(state.h.clone());
            }
        }
        let seq = sequence.then(|| Tensor::stack(hs, 1));
        (seq, state)
    }

    /// One step of raw input `x` (`[batch, inputs]`).
    pub fn step(&self, x: Tensor<B, 2>, state: State<B>) -> State<B> {
        self.step_projected(self.wx.forward(x), state)
    }
}

/// The whole network.
#[derive(Module, Debug)]
pub struct Network<B: Backend> {
    pub forward: Vec<RnnLayer<B>>,
    /// Reverse-direction layers (empty unless bidirectional).
    pub backward: Vec<RnnLayer<B>>,
    pub dropout: Dropout,
    pub head1: Linear<B>,
    pub head2: Linear<B>,
    pub quantiles: usize,
}

impl Architecture {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Network<B> {
        let dirs = if self.bidirectional { 2 } else { 1 };
        let layer_inputs = |k: usize| if k == 0 { self.inputs } else { dirs * self.hidden };
        let forward = (0..self.layers)
            .map(|k| RnnLayer::new(self.cell, layer_inputs(k), self.hidden, device))
            .collect();
        let backward = if self.bidirectional {
            (0..self.layers)
                .map(|k| RnnLayer::new(self.cell, layer_inputs(k), self.hidden, device))
                .collect()
        } else {
            Vec::new()
        };
        Network {
            forward,
            backward,
            dropout: DropoutConfig::new(self.dropout).init(),
            head1: LinearConfig::new(dirs * self.hidden + self.statics, self.hidden).init(device),
            head2: LinearConfig::new(self.hidden, self.outputs).init(device),
            quantiles: self.quantiles,
        }
    }
}

impl<B: Backend> Network<B> {
    /// `x`: `[batch, steps, inputs]`, `statics`: `[batch, statics]`; returns the quantile
    /// predictions `[batch, outputs]` (non-decreasing within each target and horizon).
    pub fn forward(&self, x: Tensor<B, 3>, statics: Tensor<B, 2>) -> Tensor<B, 2> {
        let layers = self.forward.len();
        let mut input = x;
        let mut last = None;
        for k in 0..layers {
            let top = k + 1 == layers;
            let (seq_f, st_f) = self.forward[k].run(input.clone(), !top);
            if self.backward.is_empty() {
                last = Some(st_f.h);
                if let Some(s) = seq_f {
                    input = self.dropout.forward(s);
                }
                continue;
            }
            // The reverse direction reads the window backwards; its outputs are flipped back
            // so that step t of both directions lines up.
            let (seq_b, st_b) = self.backward[k].run(input.clone().flip([1]), !top);
            last = Some(Tensor::cat(vec![st_f.h, st_b.h], 1));
            if let (Some(f), Some(b)) = (seq_f, seq_b) {
                input = self.dropout.forward(Tensor::cat(vec![f, b.flip([1])], 2));
            }
        }
        let h = last.expect("at least one layer");
        self.head(h, statics)
    }

    fn head(&self, h: Tensor<B, 2>, statics: Tensor<B, 2>) -> Tensor<B, 2> {
        let z = self.dropout.forward(Tensor::cat(vec![h, statics], 1));
        let raw = self.head2.forward(relu(self.head1.forward(z)));
        monotone(raw, self.quantiles)
    }

    /// The carried-state path (unidirectional networks only): advances every layer by one
    /// step of `x` (`[batch, inputs]`).
    pub fn step(&self, x: Tensor<B, 2>, states: Vec<State<B>>) -> Vec<State<B>> {
        let mut input = x;
        let mut out = Vec::with_capacity(states.len());
        for (layer, st) in self.forward.iter().zip(states) {
            let s = layer.step(input, st);
            input = s.h.clone();
            out.push(s);
        }
        out
    }

    /// The predictions from carried states.
    pub fn predict_from_state(&self, states: &[State<B>], statics: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = states.last().expect("at least one layer").h.clone();
        self.head(h, statics)
    }

    pub fn zero_states(&self, batch: usize, device: &B::Device) -> Vec<State<B>> {
        self.forward.iter().map(|l| l.zero_state(batch, device)).collect()
    }
}

/// Quantile outputs from raw outputs: per group of `q`, the first as is, then cumulative
/// softplus increments.
fn monotone<B: Backend>(raw: Tensor<B, 2>, q: usize) -> Tensor<B, 2> {
    if q <= 1 {
        return raw;
    }
    let [b, n] = raw.dims();
    let groups = n / q;
    let r = raw.reshape([b, groups, q]);
    let base = r.clone().slice([0..b, 0..groups, 0..1]);
    let inc = stable_softplus(r.slice([0..b, 0..groups, 1..q])).cumsum(2);
    let rest = inc + base.clone();
    Tensor::cat(vec![base, rest], 2).reshape([b, n])
}

/// `ln(1 + eˣ)` as `max(x, 0) + ln(1 + e^-|x|)`: burn's `softplus` computes `eˣ` directly,
/// which overflows to infinity (and the gradient to NaN) for outputs above about 88, and
/// heavy-tailed metrics (network bytes) do produce such outputs early in training.
pub fn stable_softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    relu(x.clone()) + x.abs().neg().exp().log1p()
}

/// The pinball (quantile) loss of `pred` (`[batch, outputs]`) against `target` where `mask`
/// is 1 (0 where the target is unknown), averaged over the known entries. `taus` gives each
/// output's quantile level.
pub fn pinball<B: Backend>(pred: Tensor<B, 2>, target: Tensor<B, 2>, mask: Tensor<B, 2>, taus: Tensor<B, 2>) -> Tensor<B, 1> {
    let diff = target - pred; // y - ŷ
    // max(τ·d, (τ − 1)·d)
    let a = diff.clone() * taus.clone();
    let b = diff * taus.sub_scalar(1.0);
    let loss = a.max_pair(b) * mask.clone();
    loss.sum() / mask.sum().clamp_min(1.0)
}

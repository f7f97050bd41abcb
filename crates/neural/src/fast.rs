//! The fused CPU inference kernel: the same networks as [`crate::net`], run from their burn
//! weights without burn's per-operation tensors.
//!
//! Training, checkpoints and the reference forward pass are burn's. Serving runs here: burn's
//! ndarray backend allocates a tensor per operation and runs about fifteen of them per step,
//! which is several times slower than a fused recurrent kernel (ONNX Runtime's, say) on the same
//! weights (`headroom-train bench-rnn` measures both). This kernel projects every step's
//! input with one matrix product per layer, accumulates the recurrent product straight into
//! each step's gate rows, and applies the gates in one pass with a vectorisable exponential.
//! It agrees with burn's forward pass to about 1e-6 (tested).
//!
//! It also runs the carried-state mode: an entity's hidden (and cell) state is kept between
//! events and advanced by one step per event, so scoring costs one step, not a window.

use crate::backend::Cpu;
use crate::gemm::gemm;
use crate::net::Network;

/// Gate rows projected ahead of the recurrent pass: about 2 MB of floats.
const CHUNK_FLOATS: usize = 512 * 1024;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `eˣ` to about 2e-7 relative error, branch-free so that loops over it vectorise.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest through the float adder; the integer lands in the low mantissa bits,
    // so 2ᵏ is built with integer operations only (no float-to-int conversion).
    let kb = x * LOG2E + MAGIC;
    let k = kb - MAGIC;
    let ki = kb.to_bits().wrapping_sub(MAGIC.to_bits());
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(ki.wrapping_add(127) << 23)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp(2.0 * x))
}

#[inline(always)]
fn softplus(x: f32) -> f32 {
    x.max(0.0) + (1.0 + exp(-x.abs())).ln()
}

#[derive(Debug, Clone)]
struct Layer {
    gru: bool,
    inputs: usize,
    hidden: usize,
    /// `[inputs, gates × hidden]`
    wx: Vec<f32>,
    /// Input bias, plus (LSTM) the recurrent bias folded in.
    bx: Vec<f32>,
    /// `[hidden, gates × hidden]`
    wh: Vec<f32>,
    /// Recurrent bias (GRU only: its candidate part is multiplied by the reset gate).
    bh: Vec<f32>,
}

impl Layer {
    fn gates(&self) -> usize {
        if self.gru {
            3
        } else {
            4
        }
    }
}

/// A network's weights, laid out for the kernel.
#[derive(Debug, Clone)]
pub struct FastNet {
    layers: Vec<Layer>,
    head1_w: Vec<f32>,
    head1_b: Vec<f32>,
    head2_w: Vec<f32>,
    head2_b: Vec<f32>,
    head_in: usize,
    head_hidden: usize,
    pub outputs: usize,
    pub statics: usize,
    quantiles: usize,
}

/// Reusable buffers of the kernel (one per scoring thread).
#[derive(Debug, Default)]
pub struct Scratch {
    gx: Vec<f32>,
    gh: Vec<f32>,
    seq: Vec<f32>,
    next: Vec<f32>,
    h: Vec<f32>,
    c: Vec<f32>,
    z: Vec<f32>,
    z1: Vec<f32>,
}

fn values<const D: usize>(t: burn::tensor::Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().expect("f32 weights")
}

fn linear(l: &burn::nn::Linear<Cpu>) -> (Vec<f32>, Vec<f32>, usize, usize) {
    let [i, o] = l.weight.dims();
    let b = l.bias.as_ref().map_or_else(|| vec![0.0; o], |b| values(b.val()));
    (values(l.weight.val()), b, i, o)
}

/// Stores the state of a step: the hidden (and cell) rows of one layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerState {
    pub h: Vec<f32>,
    pub c: Vec<f32>,
}

impl FastNet {
    /// The kernel's copy of a burn network's weights. Bidirectional networks read their
    /// window backwards and have no carried state: they stay on the burn path.
    pub fn from_network(net: &Network<Cpu>) -> anyhow::Result<FastNet> {
        anyhow::ensure!(net.backward.is_empty(), "the fused kernel runs unidirectional networks only");
        let mut layers = Vec::new();
        for l in &net.forward {
            let (wx, mut bx, inputs, gh) = linear(&l.wx);
            let (wh, bh, hidden, _) = linear(&l.wh);
            let gru = l.gru;
            if !gru {
                for (a, b) in bx.iter_mut().zip(&bh) {
                    *a += b;
                }
            }
            anyhow::ensure!(gh == hidden * if gru { 3 } else { 4 }, "unexpected gate width {gh} for hidden {hidden}");
            layers.push(Layer {
                gru,
                inputs,
                hidden,
                wx,
                bx,
                wh,
                bh,
            });
        }
        let (head1_w, head1_b, head_in, head_hidden) = linear(&net.head1);
        let (head2_w, head2_b, _, outputs) = linear(&net.head2);
        let top = layers.last().map_or(0, |l| l.hidden);
        Ok(FastNet {
            layers,
            head1_w,
            head1_b,
            head2_w,
            head2_b,
            head_in,
            head_hidden,
            outputs,
            statics: head_in - top,
            quantiles: net.quantiles,
        })
    }

    pub fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    /// The full-window forward pass: `x` is `[n, steps, inputs]`, `statics` `[n, statics]`;
    /// writes `[n, outputs]` to `out`.
    ///
    /// Internally time-major (`[steps, n, …]`): each step's gate rows are one contiguous block,
    /// and every layer's input projection is a single product over all steps.
    pub fn forward(&self, x: &[f32], statics: &[f32], n: usize, steps: usize, s: &mut Scratch, out: &mut Vec<f32>) {
        let inputs = self.inputs();
        assert_eq!(x.len(), n * steps * inputs, "window shape");
        assert_eq!(statics.len(), n * self.statics, "statics shape");
        let top = self.layers.len() - 1;
        s.seq.clear();
        s.seq.resize(n * steps * inputs, 0.0);
        for b in 0..n {
            for t in 0..steps {
                let src = (b * steps + t) * inputs;
                let dst = (t * n + b) * inputs;
                s.seq[dst..dst + inputs].copy_from_slice(&x[src..src + inputs]);
            }
        }
        for (k, l) in self.layers.iter().enumerate() {
            let (hd, gw) = (l.hidden, l.gates() * l.hidden);
            // The input projection of a chunk of steps in one product, the chunk sized so that
            // its gate rows stay in cache until the recurrent pass reads them (the biases are
            // added in the gate pass, which reads every element anyway).
            let chunk = (CHUNK_FLOATS / (n * gw).max(1)).clamp(1, steps);
            s.h.clear();
            s.h.resize(n * hd, 0.0);
            s.c.clear();
            s.c.resize(n * hd, 0.0);
            let keep = k < top;
            if keep {
                s.next.clear();
                s.next.resize(n * steps * hd, 0.0);
            }
            for start in (0..steps).step_by(chunk) {
                let len = chunk.min(steps - start);
                s.gx.clear();
                s.gx.resize(len * n * gw, 0.0);
                let rows = &s.seq[start * n * l.inputs..(start + len) * n * l.inputs];
                gemm(len * n, l.inputs, gw, rows, l.inputs, &l.wx, gw, 0.0, &mut s.gx, gw);
                for t in start..start + len {
                    self.step_rows(l, (t - start) * n * gw, gw, n, s);
                    if keep {
                        s.next[t * n * hd..(t + 1) * n * hd].copy_from_slice(&s.h);
                    }
                }
            }
            if keep {
                std::mem::swap(&mut s.seq, &mut s.next);
            }
        }
        let h = std::mem::take(&mut s.h);
        self.head(&h, statics, n, s, out);
        s.h = h;
    }

    /// Advances the gates of one step for all `n` rows: the step's projected inputs are the
    /// `n` rows of `s.gx` from `base`, `row_stride` apart; `s.h` / `s.c` hold the state and are
    /// updated in place.
    fn step_rows(&self, l: &Layer, base: usize, row_stride: usize, n: usize, s: &mut Scratch) {
        let (hd, gw) = (l.hidden, l.gates() * l.hidden);
        let gx = &mut s.gx[base..];
        if l.gru {
            s.gh.clear();
            s.gh.resize(n * gw, 0.0);
            gemm(n, hd, gw, &s.h, hd, &l.wh, gw, 0.0, &mut s.gh, gw);
            let (bx, bh) = (&l.bx[..gw], &l.bh[..gw]);
            for b in 0..n {
                let g = &mut gx[b * row_stride..b * row_stride + gw];
                let r_h = &s.gh[b * gw..(b + 1) * gw];
                let h = &mut s.h[b * hd..(b + 1) * hd];
                for j in 0..2 * hd {
                    g[j] = sigmoid(g[j] + bx[j] + r_h[j] + bh[j]);
                }
                let (zr, cand) = g.split_at_mut(2 * hd);
                for j in 0..hd {
                    let nv = tanh(cand[j] + bx[2 * hd + j] + zr[hd + j] * (r_h[2 * hd + j] + bh[2 * hd + j]));
                    h[j] = nv + zr[j] * (h[j] - nv);
                }
            }
        } else {
            // The recurrent product lands on top of the projected inputs of step t.
            gemm(n, hd, gw, &s.h, hd, &l.wh, gw, 1.0, gx, row_stride);
            let bias = &l.bx[..gw];
            for b in 0..n {
                let g = &mut gx[b * row_stride..b * row_stride + gw];
                for (v, bv) in g[..3 * hd].iter_mut().zip(&bias[..3 * hd]) {
                    *v = sigmoid(*v + bv);
                }
                for (v, bv) in g[3 * hd..].iter_mut().zip(&bias[3 * hd..]) {
                    *v = tanh(*v + bv);
                }
                let c = &mut s.c[b * hd..(b + 1) * hd];
                let h = &mut s.h[b * hd..(b + 1) * hd];
                for j in 0..hd {
                    let cj = g[2 * hd + j] * c[j] + g[j] * g[3 * hd + j];
                    c[j] = cj;
                    h[j] = g[hd + j] * tanh(cj);
                }
            }
        }
    }

    fn head(&self, h: &[f32], statics: &[f32], n: usize, s: &mut Scratch, out: &mut Vec<f32>) {
        let top = self.head_in - self.statics;
        s.z.clear();
        for b in 0..n {
            s.z.extend_from_slice(&h[b * top..(b + 1) * top]);
            s.z.extend_from_slice(&statics[b * self.statics..(b + 1) * self.statics]);
        }
        s.z1.clear();
        for _ in 0..n {
            s.z1.extend_from_slice(&self.head1_b);
        }
        gemm(n, self.head_in, self.head_hidden, &s.z, self.head_in, &self.head1_w, self.head_hidden, 1.0, &mut s.z1, self.head_hidden);
        for v in &mut s.z1 {
            *v = v.max(0.0);
        }
        out.clear();
        for _ in 0..n {
            out.extend_from_slice(&self.head2_b);
        }
        gemm(n, self.head_hidden, self.outputs, &s.z1, self.head_hidden, &self.head2_w, self.outputs, 1.0, out, self.outputs);
        let q = self.quantiles;
        if q > 1 {
            for g in out.chunks_exact_mut(q) {
                let mut acc = g[0];
                for v in &mut g[1..] {
                    acc += softplus(*v);
                    *v = acc;
                }
            }
        }
    }

    /// A zero state for one entity.
    pub fn zero_state(&self) -> Vec<LayerState> {
        self.layers
            .iter()
            .map(|l| LayerState {
                h: vec![0.0; l.hidden],
                c: if l.gru { Vec::new() } else { vec![0.0; l.hidden] },
            })
            .collect()
    }

    /// Carried-state scoring: advances each of the `n` entities' states by one step of its
    /// input (`x`: `[n, inputs]`) and writes its predictions (`[n, outputs]`) to `out`.
    pub fn step(&self, x: &[f32], statics: &[f32], states: &mut [&mut Vec<LayerState>], s: &mut Scratch, out: &mut Vec<f32>) {
        let n = states.len();
        assert_eq!(x.len(), n * self.inputs(), "step input shape");
        s.seq.clear();
        s.seq.extend_from_slice(x);
        for (k, l) in self.layers.iter().enumerate() {
            let (hd, gw) = (l.hidden, l.gates() * l.hidden);
            s.gx.clear();
            s.gx.resize(n * gw, 0.0);
            gemm(n, l.inputs, gw, &s.seq, l.inputs, &l.wx, gw, 0.0, &mut s.gx, gw);
            s.h.clear();
            s.c.clear();
            for st in states.iter() {
                s.h.extend_from_slice(&st[k].h);
                s.c.extend_from_slice(&st[k].c);
            }
            if l.gru {
                s.c.resize(n * hd, 0.0);
            }
            self.step_rows(l, 0, gw, n, s);
            for (b, st) in states.iter_mut().enumerate() {
                st[k].h.copy_from_slice(&s.h[b * hd..(b + 1) * hd]);
                if !l.gru {
                    st[k].c.copy_from_slice(&s.c[b * hd..(b + 1) * hd]);
                }
            }
            s.seq.clear();
            s.seq.extend_from_slice(&s.h);
        }
        let h = std::mem::take(&mut s.h);
        self.head(&h, statics, n, s, out);
        s.h = h;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vectorisable_exponential_is_accurate() {
        let mut worst = 0.0f32;
        let mut x = -80.0f32;
        while x < 80.0 {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.037;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(-200.0), exp(-87.0));
        assert!(exp(-200.0) > 0.0 && exp(200.0).is_finite());
        assert!(tanh(20.0) == 1.0 && tanh(-20.0) == -1.0 && tanh(0.0).abs() < 1e-7);
        assert!((softplus(100.0) - 100.0).abs() < 1e-4 && softplus(-100.0) >= 0.0);
    }
}

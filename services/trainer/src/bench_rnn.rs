//! `headroom-train bench-rnn`: LSTM / GRU inference on burn's ndarray backend (one core)
//! against ONNX Runtime (one thread) running the same architecture and weights on the same
//! input windows, in the same run; and the carried-state mode, which advances an entity's
//! state by one step per event instead of re-reading its whole window.

use std::path::PathBuf;
use std::process::Command;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use headroom_neural::backend::Cpu;
use headroom_neural::channels::N_CHANNELS;
use headroom_neural::fast::{FastNet, Scratch};
use headroom_neural::net::{Architecture, Network};
use headroom_neural::Cell;
use rand::{Rng, SeedableRng};

use crate::bench::best_of;

#[derive(Args, Debug)]
pub struct RnnBenchArgs {
    /// lstm or gru
    #[arg(long, default_value = "lstm")]
    cell: String,
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Window lengths (steps) to measure.
    #[arg(long, value_delimiter = ',', default_value = "24,60")]
    input_lens: Vec<usize>,
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// The Python with onnx and onnxruntime (scripts/setup.sh installs them in the venv).
    #[arg(long, env = "HEADROOM_PYTHON")]
    python: PathBuf,
}

fn values<const D: usize>(t: &Tensor<Cpu, D>) -> Vec<f32> {
    t.to_data().into_vec::<f32>().expect("f32")
}

fn weights_json(net: &Network<Cpu>, cell: Cell, hidden: usize, steps: usize, arch: &Architecture) -> serde_json::Value {
    let layers: Vec<serde_json::Value> = net
        .forward
        .iter()
        .map(|l| {
            serde_json::json!({
                "wx": values(&l.wx.weight.val()),
                "bx": values(&l.wx.bias.as_ref().expect("bias").val()),
                "wh": values(&l.wh.weight.val()),
                "bh": values(&l.wh.bias.as_ref().expect("bias").val()),
            })
        })
        .collect();
    let d1 = net.head1.weight.dims();
    let d2 = net.head2.weight.dims();
    let mat = |v: Vec<f32>, [r, c]: [usize; 2]| -> Vec<Vec<f32>> { v.chunks(c).take(r).map(|x| x.to_vec()).collect() };
    serde_json::json!({
        "cell": cell.name(),
        "hidden": hidden,
        "steps": steps,
        "inputs": arch.inputs,
        "statics": arch.statics,
        "outputs": arch.outputs,
        "quantiles": arch.quantiles,
        "layers": layers,
        "head1_w": mat(values(&net.head1.weight.val()), d1),
        "head1_b": values(&net.head1.bias.as_ref().expect("bias").val()),
        "head2_w": mat(values(&net.head2.weight.val()), d2),
        "head2_b": values(&net.head2.bias.as_ref().expect("bias").val()),
    })
}

fn f32_file(path: &std::path::Path, v: &[f32]) -> anyhow::Result<()> {
    let mut b = Vec::with_capacity(v.len() * 4);
    for x in v {
        b.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, b)?;
    Ok(())
}

/// The benchmarked network: the models' inputs and heads (3 targets × 3 horizons × 2 quantiles).
fn architecture(cell: Cell, a: &RnnBenchArgs) -> Architecture {
    Architecture {
        cell,
        inputs: N_CHANNELS,
        statics: 3,
        hidden: a.hidden,
        layers: a.layers,
        bidirectional: false,
        dropout: 0.0,
        outputs: 18,
        quantiles: 2,
    }
}

pub fn run(a: &RnnBenchArgs) -> anyhow::Result<()> {
    let cell = match a.cell.as_str() {
        "lstm" => Cell::Lstm,
        "gru" => Cell::Gru,
        c => anyhow::bail!("--cell must be lstm or gru, got `{c}`"),
    };
    let device = Default::default();
    let dir = tempfile::tempdir()?;
    let mut result = format!("RESULT bench_rnn cell={} hidden={} layers={} batch={}", cell.name(), a.hidden, a.layers, a.batch);
    println!(
        "| window | fused kernel seq/s (batch {b}) | burn ndarray seq/s | ONNX Runtime seq/s | kernel / ORT | burn / ORT | kernel single seq/s | ORT single seq/s | max abs diff (kernel, burn vs ORT) |",
        b = a.batch
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &steps in &a.input_lens {
        let arch = architecture(cell, a);
        Cpu::seed(&device, 3);
        let net: Network<Cpu> = arch.init(&device);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        let n = a.batch;
        let x: Vec<f32> = (0..n * steps * N_CHANNELS).map(|_| rng.random_range(-1.0..1.0)).collect();
        let s: Vec<f32> = (0..n * 3).map(|_| rng.random_range(0.0..1.0)).collect();
        let xt = Tensor::<Cpu, 3>::from_data(TensorData::new(x.clone(), [n, steps, N_CHANNELS]), &device);
        let st = Tensor::<Cpu, 2>::from_data(TensorData::new(s.clone(), [n, 3]), &device);
        let out = values(&net.forward(xt.clone(), st.clone()));
        let batch_s = best_of(|| drop(net.forward(xt.clone(), st.clone()).into_data()), a.reps);
        let x1 = xt.clone().slice([0..1, 0..steps, 0..N_CHANNELS]);
        let s1 = st.clone().slice([0..1, 0..3]);
        let single_s = best_of(|| drop(net.forward(x1.clone(), s1.clone()).into_data()), a.reps * 20);

        let fast = FastNet::from_network(&net)?;
        let mut scratch = Scratch::default();
        let mut fout = Vec::new();
        fast.forward(&x, &s, n, steps, &mut scratch, &mut fout);
        let kernel_s = best_of(|| fast.forward(&x, &s, n, steps, &mut scratch, &mut fout), a.reps);
        let (xs1, ss1) = (&x[..steps * N_CHANNELS], &s[..3]);
        let kernel_single_s = best_of(|| fast.forward(xs1, ss1, 1, steps, &mut scratch, &mut fout), a.reps * 20);
        fast.forward(&x, &s, n, steps, &mut scratch, &mut fout);
        let kernel_out = fout.clone();

        let wpath = dir.path().join(format!("w{steps}.json"));
        std::fs::write(&wpath, serde_json::to_vec(&weights_json(&net, cell, a.hidden, steps, &arch))?)?;
        let (xp, sp, op) = (dir.path().join("x.f32"), dir.path().join("s.f32"), dir.path().join("o.f32"));
        f32_file(&xp, &x)?;
        f32_file(&sp, &s)?;
        f32_file(&op, &out)?;
        let script = &crate::bench::python_reference("rnn_onnx.py");
        let o = Command::new(&a.python)
            .arg(script)
            .args([&wpath, &xp, &sp, &op])
            .args([a.batch.to_string(), a.reps.to_string()])
            .env("OMP_NUM_THREADS", "1")
            .output()
            .map_err(|e| anyhow::anyhow!("running {}: {e}", a.python.display()))?;
        anyhow::ensure!(o.status.success(), "rnn_onnx.py failed: {}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(o.stdout.trim_ascii())?;
        let ort_batch = r["seq_per_s_batch"].as_f64().unwrap_or(f64::NAN);
        let ort_single = r["seq_per_s_single"].as_f64().unwrap_or(f64::NAN);
        let diff = r["max_abs_diff"].as_f64().unwrap_or(f64::NAN);
        let kdiff = f64::from(kernel_out.iter().zip(&out).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max)) + diff;
        let burn_batch = n as f64 / batch_s;
        let kernel_batch = n as f64 / kernel_s;
        let ratio = kernel_batch / ort_batch;
        let burn_ratio = burn_batch / ort_batch;
        let single_ratio = (1.0 / kernel_single_s) / ort_single;
        println!(
            "| {steps} | {kernel_batch:.0} | {burn_batch:.0} | {ort_batch:.0} | {ratio:.3} | {burn_ratio:.3} | {:.0} | {ort_single:.0} | {kdiff:.1e}, {diff:.1e} |",
            1.0 / kernel_single_s
        );
        let _ = single_s;
        anyhow::ensure!(kdiff < 1e-3, "ONNX Runtime, burn and the kernel disagree by {kdiff} on the same weights and inputs");
        result.push_str(&format!(
            " len{steps}_kernel_seq_s={kernel_batch:.0} len{steps}_burn_seq_s={burn_batch:.0} len{steps}_ort_seq_s={ort_batch:.0} len{steps}_ratio={ratio:.3} len{steps}_burn_ratio={burn_ratio:.3} len{steps}_single_ratio={single_ratio:.3}"
        ));
        if steps == a.input_lens[0] {
            result.push_str(&format!(" onnxruntime={}", r["onnxruntime"].as_str().unwrap_or("?")));
        }
    }
    // Carried state: one step per event, a micro-batch of events of distinct entities at once.
    let arch = architecture(cell, a);
    let net: Network<Cpu> = arch.init(&device);
    let fast = FastNet::from_network(&net)?;
    let n = a.batch;
    let xs = vec![0.1f32; n * N_CHANNELS];
    let ss = vec![0.5f32; n * 3];
    let mut states: Vec<Vec<_>> = (0..n).map(|_| fast.zero_state()).collect();
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let step_s = best_of(
        || {
            let mut refs: Vec<&mut Vec<_>> = states.iter_mut().collect();
            fast.step(&xs, &ss, &mut refs, &mut scratch, &mut out);
        },
        a.reps * 4,
    );
    let events = n as f64 / step_s;
    let mut one: Vec<Vec<_>> = vec![fast.zero_state()];
    let single_step_s = best_of(
        || {
            let mut refs: Vec<&mut Vec<_>> = one.iter_mut().collect();
            fast.step(&xs[..N_CHANNELS], &ss[..3], &mut refs, &mut scratch, &mut out);
        },
        a.reps * 400,
    );
    println!(
        "\ncarried state (fused kernel): {events:.0} events/s in batches of {n} entities, {:.0} events/s one at a time",
        1.0 / single_step_s
    );
    result.push_str(&format!(" carried_events_s={events:.0} carried_single_events_s={:.0}", 1.0 / single_step_s));
    println!("{result}");
    Ok(())
}

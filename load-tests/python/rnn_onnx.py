"""Reference side of `headroom-train bench-rnn`: the same recurrent network (architecture and
weights, exported by the Rust side) built as an ONNX graph from ONNX's own LSTM / GRU
operators and run by ONNX Runtime on one thread, on the same input windows.

Usage: rnn_onnx.py WEIGHTS.json INPUTS.f32 STATICS.f32 BURN_OUT.f32 BATCH REPS
Prints one JSON object: sequences/s at the batch size and for single sequences, and the
largest absolute difference between ONNX Runtime's outputs and burn's.
"""
import json
import sys

from benchutil import best_of
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

wpath, xpath, spath, opath, batch, reps = sys.argv[1:7]
batch, reps = int(batch), int(reps)
w = json.load(open(wpath))
cell, hidden, steps, inputs = w["cell"], w["hidden"], w["steps"], w["inputs"]
nq, outputs, statics = w["quantiles"], w["outputs"], w["statics"]
x_all = np.fromfile(xpath, dtype=np.float32).reshape(-1, steps, inputs)
s_all = np.fromfile(spath, dtype=np.float32).reshape(-1, statics)
burn_out = np.fromfile(opath, dtype=np.float32).reshape(-1, outputs)

def arr(name, a):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)

inits, nodes = [], []
# X arrives batch-first; ONNX's recurrent operators read [steps, batch, inputs].
nodes.append(helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0, 2]))
layer_in = "x_t"
for k, layer in enumerate(w["layers"]):
    g = 4 if cell == "lstm" else 3
    # Rust keeps [in, gates*H] (x @ W); ONNX wants [dirs, gates*H, in]. Gate orders agree.
    W = np.asarray(layer["wx"], dtype=np.float32).reshape(-1, g * hidden).T[None]
    R = np.asarray(layer["wh"], dtype=np.float32).reshape(hidden, g * hidden).T[None]
    B = np.concatenate([layer["bx"], layer["bh"]]).astype(np.float32)[None]
    inits += [arr(f"W{k}", W), arr(f"R{k}", R), arr(f"B{k}", B)]
    if cell == "lstm":
        nodes.append(helper.make_node("LSTM", [layer_in, f"W{k}", f"R{k}", f"B{k}"], [f"Y{k}", f"Yh{k}"], hidden_size=hidden))
    else:
        nodes.append(helper.make_node("GRU", [layer_in, f"W{k}", f"R{k}", f"B{k}"], [f"Y{k}", f"Yh{k}"], hidden_size=hidden, linear_before_reset=1))
    # Y: [steps, dirs=1, batch, H] -> [steps, batch, H]
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), f"ax1_{k}"))
    nodes.append(helper.make_node("Squeeze", [f"Y{k}", f"ax1_{k}"], [f"Ys{k}"]))
    layer_in = f"Ys{k}"
last = len(w["layers"]) - 1
inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), "ax0"))
nodes.append(helper.make_node("Squeeze", [f"Yh{last}", "ax0"], ["h"]))
nodes.append(helper.make_node("Concat", ["h", "statics"], ["z"], axis=1))
inits += [arr("H1", w["head1_w"]), arr("b1", w["head1_b"]), arr("H2", w["head2_w"]), arr("b2", w["head2_b"])]
nodes.append(helper.make_node("Gemm", ["z", "H1", "b1"], ["z1"]))
nodes.append(helper.make_node("Relu", ["z1"], ["z1r"]))
nodes.append(helper.make_node("Gemm", ["z1r", "H2", "b2"], ["raw"]))
# Non-crossing quantiles: per group of nq, the first output, then cumulative softplus steps.
groups = outputs // nq
inits += [
    numpy_helper.from_array(np.array([0, groups, nq], dtype=np.int64), "shape3"),
    numpy_helper.from_array(np.array([0, outputs], dtype=np.int64), "shape2"),
    numpy_helper.from_array(np.array([0], dtype=np.int64), "s0"),
    numpy_helper.from_array(np.array([1], dtype=np.int64), "s1"),
    numpy_helper.from_array(np.array([nq], dtype=np.int64), "sq"),
    numpy_helper.from_array(np.array([2], dtype=np.int64), "a2"),
    numpy_helper.from_array(np.array(2, dtype=np.int64), "a2s"),
]
nodes += [
    helper.make_node("Reshape", ["raw", "shape3"], ["r3"]),
    helper.make_node("Slice", ["r3", "s0", "s1", "a2"], ["base"]),
    helper.make_node("Slice", ["r3", "s1", "sq", "a2"], ["rest"]),
    helper.make_node("Softplus", ["rest"], ["sp"]),
    helper.make_node("CumSum", ["sp", "a2s"], ["cs"]),
    helper.make_node("Add", ["cs", "base"], ["upper"]),
    helper.make_node("Concat", ["base", "upper"], ["q3"], axis=2),
    helper.make_node("Reshape", ["q3", "shape2"], ["y"]),
]
graph = helper.make_graph(
    nodes,
    "headroom_rnn",
    [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, steps, inputs]),
        helper.make_tensor_value_info("statics", TensorProto.FLOAT, [None, statics]),
    ],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, outputs])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
onnx.checker.check_model(model)
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

x = np.ascontiguousarray(x_all[:batch])
s = np.ascontiguousarray(s_all[:batch])
y = sess.run(["y"], {"x": x, "statics": s})[0]
max_abs_diff = float(np.max(np.abs(y - burn_out[:batch])))

batch_s = best_of(lambda: sess.run(["y"], {"x": x, "statics": s}), reps)
x1, s1 = np.ascontiguousarray(x_all[:1]), np.ascontiguousarray(s_all[:1])
single_s = best_of(lambda: sess.run(["y"], {"x": x1, "statics": s1}), reps * 20)
print(json.dumps({
    "seq_per_s_batch": batch / batch_s,
    "seq_per_s_single": 1.0 / single_s,
    "max_abs_diff": max_abs_diff,
    "onnxruntime": ort.__version__,
}))

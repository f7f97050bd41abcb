"""Reference side of `headroom-train bench-train`: the Python xgboost package's xgb.train on the
same rows, labels, weights and parameters (same libxgboost underneath), in the same run.

Usage: xgb_train.py DIR   (DIR holds x.f32, y.f32, w.f32, params.json, check.f32)
Prints one JSON object: seconds to build the DMatrix and to train, the xgboost version, and the
predictions' sum on the check rows (to compare with headroom's model).
"""
import json
import sys
import time

import numpy as np
import xgboost as xgb

d = sys.argv[1]
p = json.load(open(f"{d}/params.json"))
n_cols = p.pop("n_cols")
rounds = p.pop("rounds")
t = time.perf_counter()
x = np.fromfile(f"{d}/x.f32", dtype=np.float32).reshape(-1, n_cols)
y = np.fromfile(f"{d}/y.f32", dtype=np.float32)
w = np.fromfile(f"{d}/w.f32", dtype=np.float32)
load_s = time.perf_counter() - t
t = time.perf_counter()
dm = xgb.DMatrix(x, label=y, weight=w, missing=np.nan)
dmatrix_s = time.perf_counter() - t
t = time.perf_counter()
booster = xgb.train(p, dm, num_boost_round=rounds)
train_s = time.perf_counter() - t
check = np.fromfile(f"{d}/check.f32", dtype=np.float32).reshape(-1, n_cols)
pred = booster.inplace_predict(check)
print(json.dumps({
    "xgboost": xgb.__version__,
    "load_s": load_s,
    "dmatrix_s": dmatrix_s,
    "train_s": train_s,
    "checksum": float(np.asarray(pred, dtype=np.float64).sum()),
}))

"""Reference side of `headroom-train bench-predict`: the Python xgboost package's
Booster.inplace_predict on the same model file and rows (same libxgboost underneath).

Usage: xgb_predict.py MODEL ROWS.f32 N_COLS BATCH REPS THREADS
Prints one JSON object: microseconds per row at the batch size, and per single-row call.
"""
import json
import sys

from benchutil import best_of
import numpy as np
import xgboost as xgb

model, rows_path, n_cols, batch, reps, threads = sys.argv[1:7]
n_cols, batch, reps, threads = int(n_cols), int(batch), int(reps), int(threads)
rows = np.fromfile(rows_path, dtype=np.float32).reshape(-1, n_cols)
b = xgb.Booster(model_file=model)
b.set_param({"nthread": threads})
x = np.ascontiguousarray(rows[:batch])

batch_s = best_of(lambda: b.inplace_predict(x), reps)
one = np.ascontiguousarray(rows[:1])
single_s = best_of(lambda: b.inplace_predict(one), reps * 20)
checksum = float(np.asarray(b.inplace_predict(x), dtype=np.float64).sum())
print(json.dumps({
    "us_per_row_batch": batch_s * 1e6 / batch,
    "us_single_row": single_s * 1e6,
    "checksum": checksum,
    "xgboost": xgb.__version__,
}))

"""Trains the anomaly model: an Isolation Forest over window features read from a Delta table
that a Stratus pipeline wrote, exported to ONNX, checked against scikit-learn, with a manifest.

Usage:
  train_anomaly.py --table URI --out DIR [--features a,b,...] [--key k1,k2] [--time window_end]
                   [--name metrics_anomaly] [--seed 7] [--trees 100] [--register REGISTRY]

URI is a local path or s3://bucket/table; S3 settings come from the AWS_* environment variables
(AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP).
Only the newest revision of each (key, window) is used. The last 20 % of the rows by time are
held back: the ONNX model must score them as scikit-learn does (max |diff| <= 1e-4) or nothing
is written. The ONNX graph's `anomaly_score` output is scikit-learn's -score_samples: the
original paper's score 2^(-E[h(x)]/c(n)) in (0, 1], about 0.5 for ordinary rows and towards 1
for rows that are easy to isolate.

--register runs `stratus models register DIR --registry REGISTRY` (the stratus binary is
$STRATUS_BIN, else `stratus` on PATH).
"""

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.ensemble import IsolationForest

from publish import input_distribution, publish

PARITY_TOLERANCE = 1e-4


def storage_options() -> dict:
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def read_table(uri: str, columns: list, key: list, time: str):
    table = DeltaTable(uri, storage_options=storage_options() if "://" in uri else None)
    data = table.to_pyarrow_table()
    missing = [c for c in columns + key + [time] if c not in data.column_names]
    if missing:
        sys.exit(f"{uri}: no column(s) {', '.join(missing)}; columns: {', '.join(data.column_names)}")
    if "revision" in data.column_names:
        # The newest revision of each (key, window) only.
        order = pc.sort_indices(data, [(c, "ascending") for c in key + [time]] + [("revision", "descending")])
        data = data.take(order)
        ids = [data.column(c).to_pylist() for c in key + [time]]
        seen, keep = set(), []
        for i, k in enumerate(zip(*ids)):
            if k not in seen:
                seen.add(k)
                keep.append(i)
        data = data.take(pa.array(keep))
    data = data.take(pc.sort_indices(data, [(time, "ascending")] + [(c, "ascending") for c in key]))
    return table.version(), data


def with_anomaly_score(model_onnx, offset: float):
    """Appends anomaly_score = -(scores + offset) = -score_samples to the skl2onnx graph."""
    graph = model_onnx.graph
    graph.initializer.append(numpy_helper.from_array(np.array([offset], dtype=np.float32), "stratus_offset"))
    graph.node.append(helper.make_node("Add", ["scores", "stratus_offset"], ["stratus_shifted"]))
    graph.node.append(helper.make_node("Neg", ["stratus_shifted"], ["anomaly_score"]))
    graph.output.append(helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, [None, 1]))
    onnx.checker.check_model(model_onnx)
    return model_onnx


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--features", default="mean,min,max,p95,mean_robust_z,p95_robust_z")
    p.add_argument("--key", default="resource_id,metric")
    p.add_argument("--time", default="window_end")
    p.add_argument("--name", default="metrics_anomaly")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--trees", type=int, default=100)
    p.add_argument("--register")
    a = p.parse_args()
    features = [f for f in a.features.split(",") if f]
    key = [k for k in a.key.split(",") if k]

    version, data = read_table(a.table, features, key, a.time)
    x = np.column_stack([data.column(f).to_numpy(zero_copy_only=False).astype(np.float64) for f in features])
    complete = np.all(np.isfinite(x), axis=1)
    times = data.column(a.time).to_pylist()
    x = x[complete].astype(np.float32)
    times = [t for t, c in zip(times, complete) if c]
    if len(x) < 50:
        sys.exit(f"{a.table}: only {len(x)} complete rows of {', '.join(features)}; need at least 50")
    split = int(len(x) * 0.8)
    train, held = x[:split], x[split:]

    model = IsolationForest(n_estimators=a.trees, random_state=a.seed).fit(train)
    onx = to_onnx(model, train[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    onx = with_anomaly_score(onx, float(model.offset_))
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["anomaly_score"], {session.get_inputs()[0].name: held})[0].ravel()
    want = -model.score_samples(held)
    parity = float(np.max(np.abs(got - want)))
    if parity > PARITY_TOLERANCE:
        sys.exit(f"ONNX and scikit-learn disagree on held-back rows: max |diff| {parity:.3g} > {PARITY_TOLERANCE}")

    def iso(t):
        return t.isoformat() if hasattr(t, "isoformat") else str(t)

    manifest = {
        "name": a.name,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [{"name": f, "type": "float32"} for f in features],
        "outputs": [
            {"name": "anomaly_score", "description": "-score_samples: (0, 1], higher is more anomalous"},
            {"name": "scores", "description": "decision_function: below 0 is an outlier"},
            {"name": "label", "description": "-1 outlier, 1 inlier"},
        ],
        "score_output": "anomaly_score",
        "training": {
            "table": a.table,
            "delta_version": version,
            "time_range": [iso(times[0]), iso(times[split - 1])],
            "rows": int(split),
        },
        "metrics": {
            "parity_max_abs_diff": parity,
            "held_back_rows": int(len(held)),
            "held_back_mean_score": float(np.mean(want)),
            "held_back_share_above_0_6": float(np.mean(want > 0.6)),
        },
        "input_distribution": input_distribution(train, features),
        "details": {
            "algorithm": "IsolationForest",
            "n_estimators": a.trees,
            "random_state": a.seed,
            "offset": float(model.offset_),
        },
    }
    print(f"{a.name}: trained on {split} rows of {a.table} (Delta v{version}); parity {parity:.2g}; written to {a.out}")
    publish(a.out, onx, manifest, a.register)

if __name__ == "__main__":
    main()

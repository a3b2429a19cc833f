"""Trains a forecast model: gradient-boosted quantile regressors over the features
`stratus evaluate forecast --write-training-rows` computes, conformalised, merged into one ONNX
graph with outputs q025, q10, q50, q90 and q975, checked against scikit-learn, with a manifest.

Usage:
  train_forecast.py --rows ROWS.csv --out DIR --name NAME [--source WHAT] [--seed 7]
                    [--register REGISTRY]

ROWS.csv holds `series,origin,<features...>,target` for origins in the training range only;
the target is the change of ln(y + c) from the origin to origin + horizon (one model serves
every horizon: `horizon_hours` is a feature). Rows are split by origin time: the first 80 %
train the quantile models, the last 20 % calibrate them (conformalised quantile regression,
per horizon: each interval is widened or narrowed by the quantile of its conformity scores at
that horizon; a horizon not seen in calibration gets the pooled adjustment). The ONNX graph's
outputs must equal scikit-learn's (plus the calibration) within 1e-4 on the calibration rows,
or nothing is written.
"""

import argparse
import csv
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingRegressor

from publish import input_distribution, publish

QUANTILES = [("q025", 0.025), ("q10", 0.1), ("q50", 0.5), ("q90", 0.9), ("q975", 0.975)]
PARITY_TOLERANCE = 1e-4


def read_rows(path: Path):
    with open(path) as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    features = header[2:-1]
    origin = np.array([int(r[1]) for r in rows], dtype=np.int64)
    x = np.array([[float(v) for v in r[2:-1]] for r in rows], dtype=np.float32)
    y = np.array([float(r[-1]) for r in rows], dtype=np.float64)
    return features, origin, x, y


def conformal(lo, hi, y, level):
    """CQR: the (1 - alpha)(1 + 1/n) quantile of max(lo - y, y - hi)."""
    scores = np.maximum(lo - y, y - hi)
    n = len(scores)
    q = min(1.0, level * (1 + 1 / n))
    return float(np.quantile(scores, q, method="higher"))


def merged_graph(models, n_features, adjust, horizons):
    """One graph: input X, output per quantile = model(X) + the adjustment for X's horizon.

    `adjust[name]` is (pooled, {horizon: value}); the horizon is X's first column.
    """
    nodes, inits, outputs = [], [], []
    opsets = {"": 17}
    inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), "horizon_index"))
    nodes.append(helper.make_node("Gather", ["X", "horizon_index"], ["horizon_column"], axis=1))
    nodes.append(helper.make_node("Reshape", ["horizon_column", "flat_shape"], ["horizon"]))
    for h in horizons:
        inits.append(numpy_helper.from_array(np.array([h], dtype=np.float32), f"h_{h:g}"))
        nodes.append(helper.make_node("Equal", ["horizon", f"h_{h:g}"], [f"is_h_{h:g}"]))
    for (name, _), model in zip(QUANTILES, models):
        part = to_onnx(model, np.zeros((1, n_features), dtype=np.float32), target_opset={"": 17, "ai.onnx.ml": 3})
        for o in part.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
        prefix = f"{name}_"
        part = onnx.compose.add_prefix(part, prefix)
        g = part.graph
        inits.extend(g.initializer)
        nodes.append(helper.make_node("Identity", ["X"], [g.input[0].name]))
        nodes.extend(g.node)
        pooled, per = adjust[name]
        # Where(h == h1, a1, Where(h == h2, a2, … pooled)).
        current = f"{prefix}adjust_pooled"
        inits.append(numpy_helper.from_array(np.array([pooled], dtype=np.float32), current))
        for h in horizons:
            value = f"{prefix}adjust_{h:g}"
            inits.append(numpy_helper.from_array(np.array([per.get(h, pooled)], dtype=np.float32), value))
            chosen = f"{prefix}adjust_upto_{h:g}"
            nodes.append(helper.make_node("Where", [f"is_h_{h:g}", value, current], [chosen]))
            current = chosen
        nodes.append(helper.make_node("Reshape", [g.output[0].name, "flat_shape"], [f"{prefix}flat"]))
        nodes.append(helper.make_node("Add", [f"{prefix}flat", current], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None]))
    inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat_shape"))
    graph = helper.make_graph(
        nodes,
        "stratus_forecast",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, n_features])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--source", default="", help="what the rows were computed from, for the manifest")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--trees", type=int, default=200)
    p.add_argument("--register")
    a = p.parse_args()

    features, origin, x, y = read_rows(a.rows)
    if len(y) < 200:
        sys.exit(f"{a.rows}: only {len(y)} training rows; need at least 200")
    order = np.argsort(origin, kind="stable")
    origin, x, y = origin[order], x[order], y[order]
    cut = int(len(y) * 0.8)
    models = []
    for _, q in QUANTILES:
        m = GradientBoostingRegressor(
            loss="quantile", alpha=q, n_estimators=a.trees, max_depth=3, learning_rate=0.05,
            subsample=0.8, min_samples_leaf=20, random_state=a.seed,
        ).fit(x[:cut], y[:cut])
        models.append(m)
    calib = {name: m.predict(x[cut:]) for (name, _), m in zip(QUANTILES, models)}
    yc, hc = y[cut:], x[cut:, 0]
    horizons = sorted({float(h) for h in x[:, 0]})

    def adjustments(lo, hi, level):
        pooled = conformal(calib[lo], calib[hi], yc, level)
        per = {}
        for h in horizons:
            sel = hc == h
            if sel.sum() >= 30:
                per[h] = conformal(calib[lo][sel], calib[hi][sel], yc[sel], level)
        return pooled, per

    a95, a95h = adjustments("q025", "q975", 0.95)
    a80, a80h = adjustments("q10", "q90", 0.80)
    adjust = {
        "q025": (-a95, {h: -v for h, v in a95h.items()}),
        "q10": (-a80, {h: -v for h, v in a80h.items()}),
        "q50": (0.0, {}),
        "q90": (a80, a80h),
        "q975": (a95, a95h),
    }

    def shift(name):
        pooled, per = adjust[name]
        return np.array([per.get(float(h), pooled) for h in hc])

    onx = merged_graph(models, x.shape[1], adjust, horizons)
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run([n for n, _ in QUANTILES], {"X": x[cut:]})
    want = {n: calib[n] + shift(n) for n, _ in QUANTILES}
    parity = max(float(np.max(np.abs(g - want[n]))) for g, (n, _) in zip(got, QUANTILES))
    if parity > PARITY_TOLERANCE:
        sys.exit(f"ONNX and scikit-learn disagree on calibration rows: max |diff| {parity:.3g}")
    cover = lambda lo, hi: float(np.mean((yc >= lo) & (yc <= hi)))
    iso = lambda us: dt.datetime.fromtimestamp(us / 1e6, dt.timezone.utc).isoformat()
    manifest = {
        "name": a.name,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [{"name": f, "type": "float32"} for f in features],
        "outputs": [{"name": n, "description": f"{q:g} quantile of ln(y+c) change to origin + horizon"} for n, q in QUANTILES],
        "score_output": "q50",
        "training": {
            "table": a.source or str(a.rows),
            "delta_version": -1,
            "time_range": [iso(int(origin[0])), iso(int(origin[-1]))],
            "rows": int(len(y)),
        },
        "metrics": {
            "parity_max_abs_diff": parity,
            "calibration_rows": int(len(yc)),
            "conformal_adjust_80": a80,
            "conformal_adjust_95": a95,
            **{f"conformal_adjust_80_h{h:g}": v for h, v in a80h.items()},
            **{f"conformal_adjust_95_h{h:g}": v for h, v in a95h.items()},
            "calibration_coverage_80": cover(want["q10"], want["q90"]),
            "calibration_coverage_95": cover(want["q025"], want["q975"]),
        },
        "input_distribution": input_distribution(x[:cut], features),
        "details": {
            "algorithm": "GradientBoostingRegressor(loss=quantile), conformalised (CQR)",
            "n_estimators": a.trees,
            "max_depth": 3,
            "learning_rate": 0.05,
            "random_state": a.seed,
        },
    }
    print(f"{a.name}: {len(y)} rows ({cut} train, {len(yc)} calibration); CQR adjust per horizon 80 % {a80h}, 95 % {a95h}; parity {parity:.2g}")
    publish(a.out, onx, manifest, a.register)

if __name__ == "__main__":
    main()

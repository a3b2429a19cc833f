"""Records the training distribution of a registered anomaly model's inputs, for a version
trained before the trainers recorded one: registers the same ONNX model as the next version,
its manifest the old one plus `input_distribution`, so a score stage can watch its inputs'
drift (src/score/drift.rs).

The rows binned are the model's training rows as `train_anomaly.py` took them — the first
`training.rows` complete rows by time of its training table — read from `--table` (the table
`scripts/train` rebuilds from the same seeded data) or from the manifest's `training.table`.

Usage:
  record_distribution.py --version-dir REGISTRY/NAME/VERSION --out DIR [--table URI]
                         [--key resource_id,metric] [--time window_end] [--register REGISTRY]
"""

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import onnx

from publish import input_distribution, publish
from train_anomaly import read_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--table")
    p.add_argument("--key", default="resource_id,metric")
    p.add_argument("--time", default="window_end")
    p.add_argument("--register")
    a = p.parse_args()
    manifest = json.loads((a.version_dir / "manifest.json").read_text())
    model = onnx.load(str(a.version_dir / "model.onnx"))
    features = [f["name"] for f in manifest["inputs"]]
    training = manifest["training"]
    table = a.table or training["table"]
    version, data = read_table(table, features, [k for k in a.key.split(",") if k], a.time)
    x = np.column_stack([data.column(f).to_numpy(zero_copy_only=False).astype(np.float64) for f in features])
    complete = np.all(np.isfinite(x), axis=1)
    times = [t for t, c in zip(data.column(a.time).to_pylist(), complete) if c]
    x = x[complete].astype(np.float32)
    rows = int(training["rows"])
    if len(x) < rows:
        sys.exit(f"{table}: {len(x)} complete rows, fewer than the {rows} the model was trained on")
    last = times[rows - 1]
    last = last.isoformat() if hasattr(last, "isoformat") else str(last)
    if last != training["time_range"][1]:
        sys.exit(f"{table}: its training rows end at {last}, the model's at {training['time_range'][1]}: not the same rows")
    source = f"{manifest['name']}@{manifest['version']}"
    manifest.pop("version", None)
    manifest["created_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    manifest["input_distribution"] = input_distribution(x[:rows], features)
    manifest.setdefault("details", {})["input_distribution_recorded"] = (
        f"the model of {source}, unchanged; its inputs binned over the first {rows} complete rows "
        f"of {table} (Delta v{version}), {training['time_range'][0]} to {last}"
    )
    print(f"{source}: input distribution recorded from {rows} rows of {table} (Delta v{version})")
    publish(a.out, model, manifest, a.register)


if __name__ == "__main__":
    main()

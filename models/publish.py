"""What every trainer does last: write DIR/model.onnx and DIR/manifest.json (the layout
`stratus models register` reads) and, when asked, register them. The manifest records the
library versions that produced the model, and `input_distribution` gives it what a score stage
watches the inputs' drift against."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import skl2onnx
import sklearn


def publish(out: Path, onnx_model, manifest: dict, register: str | None) -> None:
    manifest.setdefault("details", {}).update(
        scikit_learn=sklearn.__version__,
        skl2onnx=skl2onnx.__version__,
        onnxruntime=onnxruntime.__version__,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(onnx_model.SerializeToString())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if register:
        stratus = os.environ.get("STRATUS_BIN", "stratus")
        subprocess.run([stratus, "models", "register", str(out), "--registry", register], check=True)


def input_distribution(x, names: list, bins: int = 10) -> list:
    """Each input's training distribution, for the drift a score stage watches
    (src/score/drift.rs): interior edges at its deciles (equal ones merged) and the share of the
    rows in each right-closed bin, as numpy.searchsorted(edges, v, side="left") places a value
    and as Stratus bins the rows it scores. `x` holds the rows as the model is fed them."""
    out = []
    for j, name in enumerate(names):
        col = np.asarray(x[:, j], dtype=np.float64)
        col = col[np.isfinite(col)]
        edges = np.unique(np.quantile(col, np.arange(1, bins) / bins))
        counts = np.bincount(np.searchsorted(edges, col, side="left"), minlength=len(edges) + 1)
        out.append({
            "name": name,
            "edges": [float(e) for e in edges],
            "shares": [float(c) / len(col) for c in counts],
        })
    return out

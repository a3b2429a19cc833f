"""What every trainer does last: write DIR/model.onnx and DIR/manifest.json (the layout
`stratus models register` reads) and, when asked, register them. The manifest records the
library versions that produced the model."""

import json
import os
import subprocess
from pathlib import Path

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

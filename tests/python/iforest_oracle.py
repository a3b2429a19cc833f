"""Trains a small, seeded IsolationForest, exports it to ONNX with skl2onnx, and writes the
held-out rows and scikit-learn's scores for them: the oracle the Rust ONNX test compares to.

Usage: iforest_oracle.py OUT_DIR
Writes OUT_DIR/iforest.onnx and OUT_DIR/expected.csv (features..., decision_function).
"""

import sys
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.ensemble import IsolationForest

FEATURES = 6


def main(out: Path) -> None:
    rng = np.random.default_rng(20261128)
    train = rng.normal(size=(2_000, FEATURES)).astype(np.float32)
    model = IsolationForest(n_estimators=50, random_state=7).fit(train)
    held_out = np.vstack(
        [
            rng.normal(size=(400, FEATURES)),
            rng.normal(loc=4.0, size=(100, FEATURES)),  # clear outliers
        ]
    ).astype(np.float32)
    onx = to_onnx(model, train[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    out.mkdir(parents=True, exist_ok=True)
    (out / "iforest.onnx").write_bytes(onx.SerializeToString())
    scores = model.decision_function(held_out)
    with open(out / "expected.csv", "w") as f:
        for row, s in zip(held_out, scores):
            f.write(",".join(repr(float(v)) for v in row) + f",{float(s)!r}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

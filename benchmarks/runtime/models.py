"""Train the two benchmark models of issue 6 and save them for every server.

Data: `make_classification(n_samples=5000, n_features=20, n_informative=10,
random_state=0)`. Light: `LogisticRegression(max_iter=1000)`. Heavy:
`RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0)`. The peers
and the bare baseline load the same joblib file; modelship-runtime loads an MLflow
sklearn model directory written by `mlflow.sklearn.save_model` with its defaults.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import joblib
from servers import ModelFiles
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

N_FEATURES = 20
BATCH_ROWS = 100
_TRUSTED_TREE = ["sklearn.tree._tree.Tree"]


def _estimators() -> dict[str, Any]:
    return {
        "light": LogisticRegression(max_iter=1000),
        "heavy": RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0),
    }


def train(outdir: Path) -> tuple[dict[str, ModelFiles], list[list[float]]]:
    """Fit and save both models; return them and the first BATCH_ROWS rows of the data."""
    X, y = make_classification(
        n_samples=5000, n_features=N_FEATURES, n_informative=10, random_state=0
    )
    outdir.mkdir(parents=True, exist_ok=True)
    files: dict[str, ModelFiles] = {}
    for name, est in _estimators().items():
        est.fit(X, y)
        joblib_path = outdir / f"{name}.joblib"
        joblib.dump(est, joblib_path)
        files[name] = ModelFiles(name, joblib_path, _save_mlflow(est, outdir / name), N_FEATURES)
    rows: list[list[float]] = X[:BATCH_ROWS].tolist()
    return files, rows


def _save_mlflow(est: Any, path: Path) -> Path | None:
    try:
        import mlflow.sklearn
    except ImportError:
        return None
    if path.exists():
        shutil.rmtree(path)
    # the default (skops) format records the types a loader must trust: for the forest,
    # the tree node storage, which we created ourselves
    trusted = _TRUSTED_TREE if hasattr(est, "estimators_") else None
    mlflow.sklearn.save_model(est, str(path), skops_trusted_types=trusted)
    return path

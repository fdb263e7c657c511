"""What an MLmodel file says about a model's inputs and its pyfunc prediction method.

MLflow records a model signature in MLmodel as JSON strings: a column-based signature
names every input (``[{"type": "double", "name": "petal_len", "required": true}, ...]``),
a tensor-based one names none. The named columns let requests send rows as objects
(KServe V1 ``instances`` of dicts, MLflow's ``dataframe_records`` and ``dataframe_split``,
CSV with a header) and fix the order the estimator takes them in. The ``python_function``
flavour's ``predict_fn`` (``mlflow.sklearn.save_model(..., pyfunc_predict_fn=...)``) is
what ``mlflow models serve`` calls on ``/invocations``; the runtime honours it there.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UntrustedArtifact
from .trust import inside

logger = logging.getLogger(__name__)

MLMODEL = "MLmodel"


@dataclass(frozen=True)
class MLmodelInputs:
    """Input column names of the signature (None: no column-based signature) and the
    pyfunc ``predict_fn``."""

    columns: list[str] | None
    predict_fn: str
    types: list[str] | None = None
    """The MLflow type of each input column (``double``, ``long``, ``string``, ...) of a
    column-based signature, named or not; None for a tensor-based one or none."""


def _specs(inputs: object) -> list[Any] | None:
    """The column specs of a ``signature.inputs`` value (JSON text or already a list);
    None when it is not a non-empty list."""
    if isinstance(inputs, str):
        try:
            inputs = json.loads(inputs)
        except ValueError:
            return None
    if not isinstance(inputs, list) or not inputs:
        return None
    return inputs


def signature_columns(inputs: object) -> list[str] | None:
    """Column names of an MLmodel ``signature.inputs`` value (a JSON string or a list of
    column specs); None when it is absent, tensor-based or names no columns."""
    specs = _specs(inputs)
    if specs is None:
        return None
    names: list[str] = []
    for spec in specs:
        if not isinstance(spec, dict) or spec.get("type") == "tensor":
            return None
        name = spec.get("name")
        if type(name) is int:  # a pandas frame's unnamed columns 0, 1, ...: "0", "1", ...
            name = str(name)
        if not isinstance(name, str) or not name:
            return None
        names.append(name)
    if len(set(names)) != len(names):
        return None
    return names


def signature_types(inputs: object) -> list[str] | None:
    """The MLflow type of each column of an MLmodel ``signature.inputs`` value (a JSON
    string or a list of column specs), named or not; None when it is absent or
    tensor-based."""
    specs = _specs(inputs)
    if specs is None:
        return None
    types: list[str] = []
    for spec in specs:
        kind = spec.get("type") if isinstance(spec, dict) else None
        if not isinstance(kind, str) or kind == "tensor":
            return None
        types.append(kind)
    return types


def read_inputs(model_dir: Path) -> MLmodelInputs:
    """The signature's input columns and the pyfunc ``predict_fn`` of a model directory
    (no MLmodel, or one that cannot be read: no columns and ``predict``)."""
    if not (model_dir / MLMODEL).is_file():
        return MLmodelInputs(None, "predict")
    try:
        path = inside(model_dir, MLMODEL, MLMODEL)  # the artifact is untrusted input
    except UntrustedArtifact:
        return MLmodelInputs(None, "predict")
    try:
        spec: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return MLmodelInputs(None, "predict")
    if not isinstance(spec, dict):
        return MLmodelInputs(None, "predict")
    signature = spec.get("signature")
    raw = signature.get("inputs") if isinstance(signature, dict) else None
    flavors = spec.get("flavors")
    pyfunc = flavors.get("python_function") if isinstance(flavors, dict) else None
    predict_fn = pyfunc.get("predict_fn") if isinstance(pyfunc, dict) else None
    return MLmodelInputs(signature_columns(raw),
                         predict_fn if isinstance(predict_fn, str) else "predict",
                         signature_types(raw))


def choose_columns(signature: list[str] | None, fitted: list[str] | None,
                   n_features: int | None) -> tuple[list[str] | None, str | None]:
    """The names requests may give features by, in the order the estimator takes them,
    and a warning when the signature cannot be used: the signature's columns, unless the
    estimator was fitted with names (``feature_names_in_``), whose order is what the
    positions of a row mean (the same names in another order: the estimator's order)."""
    if signature is None:
        return fitted, None
    if n_features is not None and len(signature) != n_features:
        return fitted, (f"the MLmodel signature names {len(signature)} inputs but the "
                        f"estimator takes {n_features} features")
    if fitted is None or fitted == signature:
        return signature, None
    if set(fitted) == set(signature):
        return fitted, None
    return fitted, (f"the MLmodel signature names the inputs {signature} but the estimator "
                    f"was fitted on {fitted}: requests name features as the estimator does")

"""The model contract every served model implements, and the metadata it reports.

One model per process. Loading is async (the heavy part runs in a thread) so the app can
await it in its lifespan; predicting is a plain synchronous call on a float64 matrix,
because the data plane runs it on its own worker thread, one (micro-)batch at a time.
Everything a request needs to be validated against (feature count, whether NaN is
accepted, class labels) is read once at load and kept here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """Predictions for the rows of one call: labels (or values) and class probabilities."""

    labels: list[Any]
    probabilities: list[list[float]] | None

    def slice(self, start: int, stop: int) -> Prediction:
        """The predictions of rows ``start:stop``."""
        probs = None if self.probabilities is None else self.probabilities[start:stop]
        return Prediction(self.labels[start:stop], probs)


@dataclass
class ModelInfo:
    """What a model says about itself once loaded."""

    name: str
    version: str
    flavor: str = "sklearn"
    estimator: str = ""
    n_features: int | None = None
    feature_names: list[str] | None = None
    classes: list[Any] | None = None
    has_proba: bool = False
    allow_nan: bool = False
    label_datatype: str = "FP64"
    input_columns: list[str] | None = None
    """Names requests may give the features by, in the order the model takes them: the
    MLmodel signature's input columns, or the estimator's ``feature_names_in_`` when it
    was fitted with names (see :func:`modelship_runtime.signature.choose_columns`)."""
    input_kinds: list[str] | None = None
    """The kind of value each input column takes (``number``, ``string``, ``bool``,
    ``any``) when not all are numbers; None: a float64 matrix (:mod:`.typed`)."""
    multi_output: bool = False
    """A classifier of several outputs (MultiOutputClassifier): rows of labels, no
    probabilities."""
    predict_fn: str = "predict"
    """The MLmodel pyfunc ``predict_fn``: what ``/invocations`` answers by default."""
    extra: dict[str, Any] = field(default_factory=dict)
    uri: str | None = None
    """The ``models:/`` URI it was pulled from, when known."""
    run_id: str | None = None
    """The MLflow run that logged it (registry metadata, else the MLmodel's ``run_id``)."""
    artifact_sha256: str | None = None
    """SHA-256 of the serialized estimator file: tells two artifacts apart that a
    re-registered name and version would otherwise confuse."""


class Model:
    """Base of served models: ``load`` once, then ``predict`` many times."""

    def __init__(self, name: str, version: str) -> None:
        self.info = ModelInfo(name=name, version=version)
        self.ready = False

    @property
    def name(self) -> str:
        """Registered model name."""
        return self.info.name

    @property
    def version(self) -> str:
        """Registered model version."""
        return self.info.version

    async def load(self) -> None:
        """Load the model (in a thread) and mark it ready."""
        await asyncio.to_thread(self.load_sync)
        self.ready = True

    def load_sync(self) -> None:
        """Load the model; fill ``self.info``. Subclasses implement this."""
        raise NotImplementedError

    def predict(self, rows: np.ndarray) -> Prediction:
        """Predict a 2-D float64 matrix of already validated rows."""
        raise NotImplementedError

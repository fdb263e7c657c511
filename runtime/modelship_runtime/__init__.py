"""The modelship runtime: a lean inference server for versioned MLflow scikit-learn models.

The public surface is small on purpose: the app factory and its settings (to embed or
test the server), the model contract (to serve something other than scikit-learn), the
error base and ``pull``. Everything else is an implementation detail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the real names for type checkers; at run time they load lazily
    from .app import create_app
    from .errors import ModelshipError
    from .model import Model, ModelInfo, Prediction
    from .settings import RuntimeSettings
    from .sklearn import SKLearnModel

__version__ = "0.1.0"

__all__ = [
    "Model",
    "ModelInfo",
    "ModelshipError",
    "Prediction",
    "RuntimeSettings",
    "SKLearnModel",
    "__version__",
    "create_app",
]


def __getattr__(name: str) -> object:
    # Lazy: `modelship-runtime pull` must not import FastAPI or scikit-learn, and serving
    # must not import MLflow; importing the package itself stays cheap.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "RuntimeSettings":
        from .settings import RuntimeSettings

        return RuntimeSettings
    if name in ("Model", "ModelInfo", "Prediction"):
        from . import model

        return getattr(model, name)
    if name == "SKLearnModel":
        from .sklearn import SKLearnModel

        return SKLearnModel
    if name == "ModelshipError":
        from .errors import ModelshipError

        return ModelshipError
    raise AttributeError(f"module 'modelship_runtime' has no attribute {name!r}")

"""The public surface of ``modelship_runtime`` is exactly what ``__all__`` says."""

from __future__ import annotations

import modelship_runtime


def test_all_exports_resolve() -> None:
    for name in modelship_runtime.__all__:
        assert getattr(modelship_runtime, name) is not None, name


def test_exported_names() -> None:
    assert set(modelship_runtime.__all__) == {
        "Model", "ModelInfo", "ModelshipError", "Prediction", "RuntimeSettings",
        "SKLearnModel", "__version__", "create_app",
    }
    public = {n for n in dir(modelship_runtime) if not n.startswith("_")}
    assert public <= set(modelship_runtime.__all__) | {
        "annotations", "TYPE_CHECKING", "agreement", "app", "cache", "dataplane", "drain",
        "binary", "endpoints", "errors", "grpc_lifecycle", "grpc_server", "grpc_wire",
        "httpclient",
        "logging", "metrics",
        "model", "protocols", "pull",
        "settings",
        "shadow", "shadow_sender", "sklearn", "fastpath", "invocations", "signature", "auth",
        "ratelimit", "redact", "trust", "bounds", "codings", "guard", "mlflow_rest", "skops_import",
        "typed"}


def test_exports_are_defined_in_the_package() -> None:
    for name in modelship_runtime.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(modelship_runtime, name)
        assert obj.__module__.startswith("modelship_runtime."), name

"""Fixtures of the packaging tests: each artifact made once per session (see
artifacts.py), kubernetes-validate's schema files parsed once, and the real MLflow server
and runtime the documentation and demo tests talk to (demo_parts.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import k8scheck
from artifacts import OVERLAYS, REPO, VALUE_SETS, kustomize_build, render_chart, render_examples

if TYPE_CHECKING:
    from demo_parts import MlflowServer, Runtime


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """The chart rendered with each of VALUE_SETS."""
    pytest.importorskip("helm_python", reason="helm-python-sdk not installed (make setup)")
    return {name: render_chart(values) for name, values in VALUE_SETS.items()}


@pytest.fixture(scope="session")
def built() -> dict[str, list[dict[str, Any]]]:
    """kustomize/base and each overlay, built by `kubectl kustomize`."""
    paths = {"base": REPO / "kustomize" / "base"}
    paths.update({o: REPO / "kustomize" / "overlays" / o for o in OVERLAYS})
    return {name: kustomize_build(path) for name, path in paths.items()}


@pytest.fixture(scope="session")
def examples_rendered() -> list[dict[str, Any]]:
    """`modelship render` of every example, parsed."""
    return render_examples()


@pytest.fixture(scope="module", autouse=True)
def _cached_schemas() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        k8scheck.cache_schemas(mp)
        yield


@pytest.fixture(scope="session")
def demo_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow server holding what `make demo` registers (iris-classifier 1 and 2)."""
    if not (Path(sys.executable).parent / "mlflow").exists():
        pytest.skip("the mlflow CLI is missing (pip install mlflow; make setup installs it)")
    import demo_parts

    server = demo_parts.demo_registry(tmp_path_factory.mktemp("demo-mlflow"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def iris_runtime(demo_mlflow: MlflowServer, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Runtime]:
    """`modelship-runtime serve --model-uri models:/iris-classifier/2`, as a pod runs it."""
    import demo_parts

    runtime = demo_parts.runtime(demo_mlflow, "2",
                                 tmp_path_factory.mktemp("iris-runtime") / "runtime.log")
    try:
        yield runtime
    finally:
        runtime.stop()

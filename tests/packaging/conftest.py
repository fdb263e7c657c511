"""Fixtures of the packaging tests: each artifact made once per session (see
artifacts.py), and kubernetes-validate's schema files parsed once."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import k8scheck
from artifacts import OVERLAYS, REPO, VALUE_SETS, kustomize_build, render_chart, render_examples


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

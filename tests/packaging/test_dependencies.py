"""Each image's extra declares every third-party module its package imports.

The operator image installs requirements/operator.lock, made from the base dependencies
and the `operator` extra only (the runtime image likewise): a module the code imports
that only another extra brings, or that arrives only as some dependency's dependency,
is missing from the image (or leaves with that dependency's next release), and the
process fails at import. Imports are read from the source with ast and mapped to the
distributions installed here that provide them.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from artifacts import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PACKAGES = {"operator": "modelship_operator", "runtime": "modelship_runtime"}


def imports(folder: Path) -> dict[str, str]:
    """Top-level module -> where it is first imported (path:line), for every absolute import."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                where = f"{path.relative_to(folder.parent)}:{node.lineno}"
                found.setdefault(name.split(".")[0], where)
    return found


def declared(extra: str) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"][extra]]
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def undeclared(folder: Path, own: str, allowed: set[str]) -> list[str]:
    """What `folder` imports that no distribution in `allowed` provides."""
    providers = packages_distributions()
    problems = []
    for module, where in imports(folder).items():
        if module in sys.stdlib_module_names or module in ("__future__", own):
            continue
        if module in PACKAGES.values():
            problems.append(f"{where}: {module} is another image's package")
            continue
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(f"{where}: {module} is provided by nothing installed here")
        elif not dists & allowed:
            problems.append(f"{where}: {module} ({', '.join(sorted(dists))}) is not declared")
    return problems


@pytest.mark.parametrize("extra", sorted(PACKAGES))
def test_every_import_is_declared_in_the_images_extra(extra: str) -> None:
    package = PACKAGES[extra]
    folder = REPO / extra / package
    assert len(imports(folder)) > 5
    assert undeclared(folder, package, declared(extra)) == []


def test_an_import_only_another_extra_brings_is_caught(tmp_path: Path) -> None:
    (tmp_path / "analysis.py").write_text(
        "from prometheus_client.parser import text_string_to_metric_families\n"
        "import requests\nimport json\nfrom modelship_runtime import metrics\n")
    without = declared("operator") - {"prometheus-client", "requests"}
    problems = undeclared(tmp_path, "modelship_operator", without)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "prometheus_client (prometheus-client) is not declared",
        "requests (requests) is not declared",
        "modelship_runtime is another image's package",
    ]

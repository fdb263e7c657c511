"""Hostile model artifacts against the real console script: each is refused at start with
exit 8 and one line on stderr, and none of them gets to run its payload or read a byte
outside the model directory.

The attacks: a skops file whose MLmodel lists ``os.system``, ``builtins.exec`` or
``builtins.eval`` as trusted and whose schema calls them at load (skops'
ConstructorFromReduceNode calls the named type with arguments from the file); a pickle
while pickles are not allowed; an MLmodel whose ``pickled_model`` is ``../..``, an
absolute path, or a symlink out; an MLmodel that is itself a symlink out; and the same
through ``pull`` from a real MLflow registry. The processes run concurrently, so the
module costs about one start-up of wall time.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from helpers import clean_env, free_port

RUNTIME = str(Path(sys.executable).parent / "modelship-runtime")
EXIT_UNTRUSTED = 8


def _str_node(text: str) -> dict[str, Any]:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(text), "is_json": True, "__id__": id(text)}


def hostile_skops(module: str, name: str, argument: str) -> bytes:
    """A skops file whose loading calls ``module.name(argument)``."""
    import skops

    schema = {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
              "content": {"__class__": "tuple", "__module__": "builtins",
                          "__loader__": "TupleNode", "content": [_str_node(argument)],
                          "__id__": 1},
              "__id__": 2, "protocol": 2, "_skops_version": skops.__version__}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("schema.json", json.dumps(schema))
    return buf.getvalue()


def mlmodel(directory: Path, pickled_model: str, fmt: str = "skops",
            trusted: list[str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    flavor: dict[str, Any] = {"pickled_model": pickled_model, "serialization_format": fmt,
                              "sklearn_version": "1.9.1", "code": None}
    if trusted is not None:
        flavor["skops_trusted_types"] = trusted
    (directory / "MLmodel").write_text(yaml.safe_dump({"flavors": {"sklearn": flavor},
                                                       "run_id": "r1"}))
    return directory


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory outside every model directory, holding a secret and a valid model."""
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("outside")
    (root / "secret.txt").write_text("not for the runtime\n")
    import skops.io

    est = LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0], [0.5, 0.2], [0.1, 0.9]],
                                   [0, 1, 1, 0])
    skops.io.dump(est, root / "model.skops")
    return root


def run_all(cases: dict[str, tuple[list[str], dict[str, str]]], cwd: Path,
            timeout: float = 120) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run every case concurrently; their results by name (a process still running at
    the deadline, e.g. one serving what it should have refused, is killed: code -9)."""
    procs = {name: subprocess.Popen([RUNTIME, *args], cwd=cwd, env=clean_env(**env),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (args, env) in cases.items()}
    deadline = time.monotonic() + timeout
    out = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        out[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return out


def refused(r: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert r.returncode == EXIT_UNTRUSTED, r.stdout + r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("modelship-runtime: model refused: "), r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def serve_args(model_dir: Path) -> list[str]:
    return ["serve", "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port",
            str(free_port())]


PAYLOADS = {
    "os-system": ("os", "system", "touch {marker}"),
    "exec": ("builtins", "exec", "open({marker!r}, 'w').write('pwned')"),
    "eval": ("builtins", "eval", "open({marker!r}, 'w').write('pwned')"),
}
ASKED = ["os.system", "posix.system", "builtins.exec", "builtins.eval"]


def hostile_dir(root: Path, name: str, marker: Path, *, with_mlmodel: bool = True) -> Path:
    module, func, template = PAYLOADS[name]
    d = mlmodel(root, "model.skops", trusted=ASKED) if with_mlmodel else root
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.skops").write_bytes(hostile_skops(module, func,
                                                  template.format(marker=str(marker))))
    return d


def pickle_dir(root: Path, marker: Path) -> Path:
    import pickle

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return os.system, (f"touch {marker}",)

    d = mlmodel(root, "model.pkl", fmt="cloudpickle")
    (d / "model.pkl").write_bytes(pickle.dumps(Payload()))
    return d


def test_hostile_artifacts_are_refused_by_the_console_script(tmp_path: Path,
                                                             outside: Path) -> None:
    """One real ``serve`` per attack, all at once: exit 8, one line, no payload run."""
    markers = {n: tmp_path / f"marker-{n}" for n in ("os-system", "exec", "pickle")}
    symlinked = mlmodel(tmp_path / "symlink", "model.skops")
    (symlinked / "model.skops").symlink_to(outside / "model.skops")
    cases = {
        "os-system": serve_args(hostile_dir(tmp_path / "os", "os-system",
                                            markers["os-system"])),
        "exec": serve_args(hostile_dir(tmp_path / "exec", "exec", markers["exec"])),
        "pickle": serve_args(pickle_dir(tmp_path / "pickle", markers["pickle"])),
        "dotdot": serve_args(mlmodel(tmp_path / "dotdot", "../../..")),
        "absolute": serve_args(mlmodel(tmp_path / "absolute", str(outside / "model.skops"))),
        "symlink": serve_args(symlinked),
    }
    results = run_all({n: (args, {"MODELSHIP_ALLOW_PICKLE": "false"} if n == "pickle"
                           else {}) for n, args in cases.items()}, tmp_path)
    assert {n: m.exists() for n, m in markers.items()} == dict.fromkeys(markers, False)
    refused(results["os-system"], "needs types this runtime does not trust", "os.system",
            "MODELSHIP_TRUSTED_TYPES", "skops_trusted_types are not used")
    refused(results["exec"], "builtins.exec", "MODELSHIP_TRUSTED_TYPES")
    refused(results["pickle"], "serialized with cloudpickle", "MODELSHIP_ALLOW_PICKLE=true")
    refused(results["dotdot"], "pickled_model '../../..' leaves the model directory")
    refused(results["absolute"], "is an absolute path")
    refused(results["symlink"], "pickled_model 'model.skops' leaves the model directory")


def _variants(tmp_path: Path, outside: Path, marker: Path) -> dict[str, Path]:
    depth = "../" * len(tmp_path.parts)
    mlmodel_link = tmp_path / "mlmodel-link"
    mlmodel_link.mkdir()
    (outside / "MLmodel").write_text(yaml.safe_dump(
        {"flavors": {"sklearn": {"pickled_model": "model.skops",
                                 "serialization_format": "skops"}}}))
    (mlmodel_link / "MLmodel").symlink_to(outside / "MLmodel")
    plain_link = tmp_path / "plain-link"
    plain_link.mkdir()
    (plain_link / "model.skops").symlink_to(outside / "model.skops")
    dir_link = mlmodel(tmp_path / "dir-link", "data/model.skops")
    (dir_link / "data").symlink_to(outside)
    return {
        "eval": hostile_dir(tmp_path / "eval", "eval", marker),
        "plain-skops": hostile_dir(tmp_path / "plain", "os-system", marker,
                                   with_mlmodel=False),
        "dotdot-deep": mlmodel(tmp_path / "deep", f"{depth}{str(outside)[1:]}/model.skops"),
        "dotdot-inner": mlmodel(tmp_path / "inner", "data/../../outside/model.skops"),
        "home": mlmodel(tmp_path / "home", "~/model.skops"),
        "mlmodel-symlink": mlmodel_link,
        "plain-symlink": plain_link,
        "directory-symlink": dir_link,
    }


@pytest.mark.parametrize("variant", ["eval", "plain-skops", "dotdot-deep", "dotdot-inner",
                                     "home", "mlmodel-symlink", "plain-symlink",
                                     "directory-symlink"])
def test_more_hostile_artifacts_are_refused(tmp_path: Path, outside: Path,
                                            variant: str) -> None:
    """The same refusals in process, for more shapes of the same attacks."""
    from modelship_runtime.errors import UntrustedArtifact
    from modelship_runtime.sklearn import SKLearnModel

    marker = tmp_path / "marker"
    model_dir = _variants(tmp_path, outside, marker)[variant]
    model = SKLearnModel("m", "1", model_dir, allow_pickle=True)
    with pytest.raises(UntrustedArtifact) as caught:
        model.load_sync()
    assert "\n" not in caught.value.message
    assert not marker.exists() and not model.ready


def test_types_are_trusted_by_the_runtime_settings_only(tmp_path: Path) -> None:
    """An estimator holding a function skops does not trust by default loads only when
    MODELSHIP_TRUSTED_TYPES names it; the MLmodel's own list changes nothing."""
    import operator

    import numpy as np
    from modelship_runtime.errors import UntrustedArtifact
    from modelship_runtime.sklearn import SKLearnModel
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    est = make_pipeline(FunctionTransformer(operator.neg), LogisticRegression()).fit(
        X, (X[:, 0] > 0).astype(int))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn

        mlflow.sklearn.save_model(est, tmp_path / "m", serialization_format="skops",
                                  skops_trusted_types=["_operator.neg"], pip_requirements=[])
    with pytest.raises(UntrustedArtifact, match=r"_operator\.neg.*MODELSHIP_TRUSTED_TYPES"):
        SKLearnModel("m", "1", tmp_path / "m", allow_pickle=True).load_sync()
    model = SKLearnModel("m", "1", tmp_path / "m", allow_pickle=True,
                         trusted_types=["_operator.neg"])
    model.load_sync()
    assert model.predict(X[:5]).labels == est.predict(X[:5]).tolist()
    assert model.info.run_id is None and model.info.artifact_sha256 is not None


def test_scikit_learn_types_are_trusted_without_the_mlmodel_list(
        local_models: Any, tmp_path: Path) -> None:
    """A forest's Tree is scikit-learn's own type: trusted with or without the MLmodel."""
    import shutil

    from modelship_runtime.sklearn import SKLearnModel

    copy = tmp_path / "rf"
    shutil.copytree(local_models.rf_dir, copy)
    spec = yaml.safe_load((copy / "MLmodel").read_text())
    spec["flavors"]["sklearn"]["skops_trusted_types"] = None
    (copy / "MLmodel").write_text(yaml.safe_dump(spec))
    model = SKLearnModel("m", "1", copy, allow_pickle=False)
    model.load_sync()
    assert model.predict(local_models.X[:5]).labels == \
        local_models.rf.predict(local_models.X[:5]).tolist()


def test_pull_refuses_an_mlmodel_naming_a_path_outside(registry: Any, tmp_path: Path,
                                                       outside: Path) -> None:
    """A registered artifact whose MLmodel points out of the model directory: ``pull``
    exits 8 with one line and keeps nothing; so does ``serve --model-uri``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow

        src = mlmodel(tmp_path / "src", "../../../../../../../../etc/passwd")
        mlflow.set_tracking_uri(registry.uri)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(src), artifact_path="evil")
        mv = mlflow.register_model(f"runs:/{run.info.run_id}/evil", "ms-evil",
                                   await_registration_for=0)
    dest = tmp_path / "dest"
    uri = f"models:/ms-evil/{mv.version}"
    results = run_all({
        "pull": (["pull", "--model-uri", uri, "--dest", str(dest)],
                 {"MLFLOW_TRACKING_URI": registry.uri}),
        "serve": (["serve", "--model-uri", uri, "--host", "127.0.0.1", "--port",
                   str(free_port())],
                  {"MLFLOW_TRACKING_URI": registry.uri, "TMPDIR": str(tmp_path)}),
    }, tmp_path)
    for r in results.values():
        assert r.returncode == EXIT_UNTRUSTED, r.stdout + r.stderr
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "untrusted" in r.stderr and "leaves the model directory" in r.stderr, r.stderr
    assert not dest.exists() or sorted(p.name for p in dest.iterdir()) == []


class HostileRegistry(BaseHTTPRequestHandler):
    """The REST calls a pull makes, answered as a hostile MLflow server would: version 1
    of ``evil`` lists an MLmodel and a file whose path leaves the download directory."""

    listed = ""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        body: Any
        if url.path == "/api/2.0/mlflow/model-versions/get":
            body = {"model_version": {"name": "evil", "version": "1", "status": "READY",
                                      "source": "mlflow-artifacts:/m", "run_id": "r1"}}
        elif url.path == "/api/2.0/mlflow/registered-models/get":
            body = {"registered_model": {"name": "evil"}}
        elif url.path == "/api/2.0/mlflow/model-versions/get-download-uri":
            body = {"artifact_uri": "mlflow-artifacts:/m"}
        elif url.path == "/api/2.0/mlflow-artifacts/artifacts" and query.get("path") == ["m"]:
            body = {"files": [{"path": "MLmodel", "is_dir": False, "file_size": 5},
                              {"path": self.listed, "is_dir": False, "file_size": 5}]}
        elif url.path.startswith("/api/2.0/mlflow-artifacts/artifacts/"):
            return self._send(200, b"owned")
        else:
            return self._send(404, json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST",
                                               "message": url.path}).encode())
        self._send(200, json.dumps(body).encode())

    def _send(self, code: int, data: bytes) -> None:
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hostile_registries(tmp_path: Path) -> Iterator[dict[str, str]]:
    """One hostile registry per listed path, by name: its tracking URI."""
    listed = {"dotdot": "sub/../../../escape.txt", "absolute": str(tmp_path / "abs-escape.txt")}
    servers = []
    for name, path in listed.items():
        handler = type(f"Hostile_{name}", (HostileRegistry,), {"listed": path})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        yield {name: f"http://127.0.0.1:{s.server_address[1]}"
               for name, s in zip(listed, servers, strict=True)}
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_pull_refuses_a_registry_listing_paths_out_of_the_destination(
        hostile_registries: dict[str, str], tmp_path: Path) -> None:
    """``..`` and an absolute path: exit 8 at once (no retries),
    one line, nothing written outside ``--dest`` and nothing kept in it."""
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    results = run_all({name: (["pull", "--model-uri", "models:/evil/1", "--dest",
                               str(work / name)],
                              {"MLFLOW_TRACKING_URI": uri, "MODELSHIP_PULL_ATTEMPTS": "5",
                               "MODELSHIP_PULL_BACKOFF_SECONDS": "30"})
                       for name, uri in hostile_registries.items()}, work, timeout=100)
    for name, r in results.items():
        assert r.returncode == EXIT_UNTRUSTED, (name, r.stdout + r.stderr)
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("modelship-runtime: pull failed: untrusted: the registry "
                                   "at http://127.0.0.1:"), r.stderr
        assert "lists a path outside the download directory" in r.stderr, r.stderr
        assert sorted(p.name for p in (work / name).iterdir()) == [], name
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*escape*")) == []


def test_the_default_trust_is_scikit_learn_classes_and_numpy_types_only() -> None:
    import sys as _sys

    from modelship_runtime.trust import split_types

    asked = ["sklearn.tree._tree.Tree", "sklearn.neighbors._kd_tree.KDTree",
             "numpy.dtype", "numpy.float64", "numpy.log1p",
             "numpy.memmap", "numpy.load", "numpy.lib.npyio.NpzFile", "sklearn.conftest.x",
             "sklearn.utils._testing.TempMemmap", "sklearn.base.clone", "os.system",
             "builtins.exec", "scipy.special.expit", "mypkg.Thing", "sklearn", "sklearn.Nope"]
    trusted, refused = split_types(asked, ["mypkg.Thing"])
    assert trusted == ["sklearn.tree._tree.Tree", "sklearn.neighbors._kd_tree.KDTree",
                       "numpy.dtype", "numpy.float64", "numpy.log1p", "mypkg.Thing"]
    assert "sklearn.conftest" not in _sys.modules  # refused without being imported
    assert refused == [n for n in asked if n not in trusted]

"""What a serving process imports: the cold start is mostly imports, so the serve path must
not import what serving does not use. Not timed: it checks which modules are loaded once
`serve` answered its first prediction, in a subprocess running the console script's own
``main``. pandas is absent from the image (tests/packaging/test_images.py); here, where the
development venv has it, it is made unimportable as in the image, and any attempt to import
it other than scikit-learn's own optional probe fails the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port

PROBE = r'''
import gc, importlib.abc, json, os, signal, socket, sys, threading, time, traceback

attempts = []
grpc_threads = []

class Image(importlib.abc.MetaPathFinder):
    """pandas (and pyarrow) are not installed in the image: make them absent here too,
    recording who asked; and record the thread that imports the gRPC server."""

    def find_spec(self, name, path, target=None):
        if name == "modelship_runtime.grpc_server":
            grpc_threads.append(threading.current_thread().name)
        if name.split(".")[0] in ("pandas", "pyarrow"):
            caller = [f for f in traceback.extract_stack() if "importlib" not in f.filename]
            attempts.append(f"{name} <- {caller[-2].filename}:{caller[-2].lineno}")
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Image())
port, out, body = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
request = (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
readyz = b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"

def until_200(request, deadline):
    status = b""
    while time.monotonic() < deadline and not status.startswith(b"HTTP/1.1 200"):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(request)
                status = s.recv(64)
        except OSError:
            time.sleep(0.05)
    return status.decode(errors="replace")[:12]

def first_prediction():
    deadline = time.monotonic() + 120
    status = until_200(request, deadline)
    modules = sorted(sys.modules)  # at the first answer
    ready = until_200(readyz, deadline)  # every listener up (gRPC, when on)
    with open(out, "w") as f:
        json.dump({"status": status, "gc": gc.isenabled(), "modules": modules,
                   "attempts": attempts, "ready": ready, "grpc_threads": grpc_threads}, f)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=first_prediction, daemon=True).start()
from modelship_runtime.__main__ import main
sys.exit(main(["serve", "--model-dir", sys.argv[4], "--host", "127.0.0.1",
               "--port", str(port)]))
'''

#: Never imported by a serving process: MLflow (the pull speaks REST, and only when
#: pulling), the pull's HTTP client (urllib.request itself comes with prometheus_client),
#: HTTP client libraries the runtime does not use, dataframe and plotting libraries.
FORBIDDEN = ("mlflow", "modelship_runtime.mlflow_rest", "requests", "urllib3", "httpx",
             "pandas", "pyarrow", "polars", "matplotlib")


def _serve_once(model_dir: Path, row: list[Any], tmp_path: Path,
                grpc_port: int = 0) -> dict[str, Any]:
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "PYTHONPATH", "HOME", "TMPDIR", "LANG")}
    env["MODELSHIP_DRAIN_SECONDS"] = "0"
    # 0 unless given: the default 8081 is shared by parallel test runs
    env["MODELSHIP_GRPC_PORT"] = str(grpc_port)
    r = subprocess.run([sys.executable, "-c", PROBE, str(free_port()), str(out),
                        json.dumps({"features": row}), str(model_dir)],
                       capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


@pytest.mark.parametrize("which", ["lr", "rf"])
def test_serving_imports_neither_mlflow_nor_pandas_nor_the_pull_client(
        local_models: Any, tmp_path: Path, which: str) -> None:
    model_dir = local_models.lr_dir if which == "lr" else local_models.rf_dir
    result = _serve_once(model_dir, local_models.X[0].tolist(), tmp_path)
    assert result["status"] == "HTTP/1.1 200", result["status"]
    modules = set(result["modules"])
    assert "modelship_runtime.app" in modules and "sklearn" in modules  # it did serve
    assert result["gc"] is True  # off while starting, on again once serving
    loaded = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN or m in FORBIDDEN)
    assert loaded == []
    # scikit-learn probes for pandas once (sklearn.utils.fixes: try: import pandas);
    # nothing else may ask for it
    others = [a for a in result["attempts"] if "sklearn/utils/fixes.py:" not in a]
    assert others == [], others


def test_a_pipeline_fitted_on_a_dataframe_of_strings_is_served_without_pandas(
        tmp_path: Path) -> None:
    """A ColumnTransformer selecting columns by name (OneHotEncoder on strings) needs a
    DataFrame in scikit-learn, and a pipeline set to pass DataFrames between its steps
    needs pandas to make them; the runtime serves it without pandas (:mod:`typed`)."""
    import warnings

    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = pd.DataFrame({"color": ["red", "blue", "green", "red"] * 5,
                          "size": [float(i % 7) for i in range(20)]})
    encode = ColumnTransformer([("cat", OneHotEncoder(sparse_output=False), ["color"]),
                                ("num", StandardScaler(), ["size"])])
    est = Pipeline([("ct", encode), ("lr", LogisticRegression())]).set_output(
        transform="pandas")
    est.fit(frame, frame["size"] > 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn
        from mlflow.models import infer_signature

        mlflow.sklearn.save_model(est, tmp_path / "m", pip_requirements=[],
                                  signature=infer_signature(frame, est.predict(frame)))
    result = _serve_once(tmp_path / "m", ["red", 5.0], tmp_path)
    assert result["status"] == "HTTP/1.1 200", result["status"]
    loaded = sorted(m for m in result["modules"] if m.split(".")[0] in FORBIDDEN)
    assert loaded == []
    # scikit-learn's own optional probes (fixes.py; ColumnTransformer's check of its
    # transformers' output) find no pandas and go on; nothing of the runtime asks
    others = [a for a in result["attempts"] if "/sklearn/" not in a]
    assert others == [], others


def test_grpc_is_imported_off_the_loop_and_readiness_waits_for_it(
        local_models: Any, tmp_path: Path) -> None:
    """With gRPC on, the gRPC server's module (protobuf, the generated module, hpack) is
    imported on a worker thread after HTTP answers (the loop answers meanwhile), and
    /readyz says ready only once it listens (test_grpc.py)."""
    result = _serve_once(local_models.lr_dir, local_models.X[0].tolist(), tmp_path,
                         grpc_port=free_port())
    assert (result["status"], result["ready"]) == ("HTTP/1.1 200", "HTTP/1.1 200")
    assert result["grpc_threads"], "the gRPC server was never imported"
    assert "MainThread" not in result["grpc_threads"], result["grpc_threads"]


SKOPS_TRUST = '''
import json
from modelship_runtime.skops_import import import_skops_io

import_skops_io()
import sys
skipped = "sklearn.datasets" not in sys.modules  # all_estimators() would import it
from skops.io import _trusted_types
from skops.io._utils import get_type_name
from sklearn.utils import all_estimators
from modelship_runtime.trust import split_types

names = sorted({get_type_name(c) for _, c in all_estimators()})
trusted, refused = split_types(names, [])
print(json.dumps({"skops_list": _trusted_types.SKLEARN_ESTIMATOR_TYPE_NAMES, "skipped": skipped,
                  "estimators": len(names), "trusted": len(trusted), "refused": refused}))
'''


def test_skops_imported_without_its_estimator_list_trusts_what_skops_would() -> None:
    """skops.io is imported without its call of all_estimators() (:mod:`skops_import`);
    every estimator that list holds is still trusted, by the runtime's own rule."""
    r = subprocess.run([sys.executable, "-c", SKOPS_TRUST], capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["skops_list"] == [] and result["skipped"]
    assert result["estimators"] > 150  # scikit-learn has about 200
    assert (result["refused"], result["trusted"]) == ([], result["estimators"])
